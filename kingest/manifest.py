"""The offsets manifest: exactly-once's source of truth for "how far", kept in the lake beside the data.

Layout, under ``<lake>/_kingest/<pipeline>/`` (the leading underscore hides it from dataset readers)::

    manifest/topic=<t>/partition=<p>/<version:020d>.json      one file per committed version
    checkpoints/topic=<t>/partition=<p>/<version:020d>.json   the whole state at a version (every 25th)
    pending-v2/topic=<t>/partition=<p>/<version:020d>-<writer>.json  data files a writer is about to commit

Each topic-partition has its own sequence of versions, so that instances owning different partitions never
contend. A version is committed by exclusive create of ``<version+1>.json`` (``If-None-Match: *`` on S3,
``link`` on local disk): of two writers racing for one version exactly one wins, and the loser is a zombie for
that partition. A writer claims a partition (commits a ``claim`` version) before touching it, which fences
any earlier owner. The state of a partition is its latest checkpoint plus the versions after it.

Before writing data files a writer records them in a pending record for the version it is about to commit
(``pending-v2/.../<version>-<writer>.json``). Once that version exists, the files either are in it or can never be
committed: recovery deletes only those, so that no pause of any length lets it delete a committed file.

A version holds the next offset to consume and the data files it adds and removes; the format is documented
in docs/manifest.md and carries ``format_version``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import crash
from .errors import KingestError, ManifestConflict, StateError
from .lake import Lake
from .layout import partition_folder, topic_partition_of

if TYPE_CHECKING:
    from .encoder import EncodedFile

log = logging.getLogger("kingest.manifest")

FORMAT_VERSION = 1
CHECKPOINT_EVERY = 25
# Pending records, one per intended version. Not the ``pending/`` folder of kingest before 2026-12, whose
# recovery deleted what any record there named that its own state did not: a writer of that version running
# beside this one would delete files this one committed. Its records (``pending/.../<writer>.json``) are not
# read here; their files are never part of the lake (kingest verify lists them).
PENDING = "pending-v2"
RETIRED = "retired"  # notes of the files a compaction takes out (gc removes them after a retention)
MAINTENANCE = frozenset({"compact", "gc"})  # versions that change no offset and fence no writer's ownership
_NAME_DIGITS = 20


def new_writer_id() -> str:
    """Who is writing: host, pid and a random part (a restarted process is a new writer)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class PartitionState:
    """A topic-partition as the manifest sees it at ``version`` (0: nothing committed yet)."""

    topic: str
    partition: int
    version: int = 0
    next_offset: int | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    owner: str | None = None
    committed_at: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def rows(self) -> int:
        return sum(int(f.get("rows", 0)) for f in self.files.values())

    @property
    def bytes(self) -> int:
        return sum(int(f.get("bytes", 0)) for f in self.files.values())

    def apply(self, doc: dict[str, Any]) -> None:
        self.version = int(doc["version"])
        self.next_offset = doc.get("next_offset")
        for path in doc.get("remove", ()):
            self.files.pop(path, None)
        for entry in doc.get("add", ()):
            self.files[entry["path"]] = entry
        self.owner = doc.get("owner")
        self.committed_at = doc.get("committed_at")
        if doc.get("operation") == "rewind":
            self.history.append(
                {k: doc.get(k) for k in ("version", "committed_at", "previous_next_offset", "next_offset")}
            )

    def copy(self) -> PartitionState:
        return PartitionState(
            self.topic,
            self.partition,
            self.version,
            self.next_offset,
            dict(self.files),
            self.owner,
            self.committed_at,
            list(self.history),
        )


class ManifestStore:
    def __init__(self, lake: Lake, pipeline: str) -> None:
        self.lake = lake
        self.pipeline = pipeline
        self.prefix = f"_kingest/{pipeline}"
        # The pending records this store wrote and has not deleted yet: path -> the files it names. A record is
        # never rewritten once written (one per version and writer), so recovery takes what it names from here
        # rather than reading it back: a checkpoint's recovery otherwise reads ~24 records of the owner's own.
        self._written: dict[str, list[str]] = {}

    def _folder(self, kind: str, topic: str, partition: int) -> str:
        return f"{self.prefix}/{kind}/{partition_folder(topic, partition)}"

    def version_path(self, topic: str, partition: int, version: int) -> str:
        return f"{self._folder('manifest', topic, partition)}/{version:0{_NAME_DIGITS}d}.json"

    # ------------------------------------------------------------------------------------------ reading

    def load(self, topic: str, partition: int, *, since: PartitionState | None = None) -> PartitionState:
        """The latest committed state of a topic-partition. ``since``: a state of it that this process loaded or
        committed earlier; then only the versions after it are read (one listing when nothing was committed
        since), not the latest checkpoint: a version never changes once committed, so ``since`` plus the
        versions after it is the state a full load would give."""
        versions = _numbered(self.lake.listdir(self._folder("manifest", topic, partition)))
        state = PartitionState(topic, partition)
        if not versions:
            return state
        latest = versions[-1]
        if since is not None and since.tp == (topic, partition) and 0 < since.version <= latest:
            after = [v for v in versions if v > since.version]
            if after == list(range(since.version + 1, latest + 1)):
                state = since.copy()
                rels = [self.version_path(topic, partition, v) for v in after]
                contents = self.lake.read_many(rels)
                for rel in rels:
                    state.apply(self._parse(rel, contents.get(rel)))
                return state
        checkpoints = [
            v for v in _numbered(self.lake.listdir(self._folder("checkpoints", topic, partition))) if v <= latest
        ]
        if checkpoints:
            rel = f"{self._folder('checkpoints', topic, partition)}/{checkpoints[-1]:0{_NAME_DIGITS}d}.json"
            doc = self._parse(rel, self.lake.read(rel))
            state.version = int(doc["version"])
            state.next_offset = doc.get("next_offset")
            state.files = {e["path"]: e for e in doc.get("files", [])}
            state.owner = doc.get("owner")
            state.committed_at = doc.get("committed_at")
            state.history = list(doc.get("history", []))
        wanted = [v for v in versions if v > state.version]
        if wanted and wanted != list(range(state.version + 1, latest + 1)):
            missing = sorted(set(range(state.version + 1, latest + 1)) - set(wanted))
            raise StateError(
                f"offsets manifest of {topic}[{partition}] is missing version(s) {missing[:5]} "
                f"under {self.lake.display(self._folder('manifest', topic, partition))}",
                "Restore the missing files from a backup; kingest will not guess the partition's state.",
            )
        rels = [self.version_path(topic, partition, v) for v in wanted]
        contents = self.lake.read_many(rels)
        for rel in rels:
            state.apply(self._parse(rel, contents.get(rel)))
        return state

    def load_many(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], PartitionState]:
        return {(t, p): self.load(t, p) for t, p in tps}

    def partitions(self) -> list[tuple[str, int]]:
        """Every topic-partition that has a manifest."""
        found = set()
        for rel in self.lake.find(f"{self.prefix}/manifest"):
            tp = topic_partition_of(rel)
            if tp is not None:
                found.add(tp)
        return sorted(found)

    def _parse(self, rel: str, data: bytes | None) -> dict[str, Any]:
        where = self.lake.display(rel)
        if data is None:
            raise StateError(f"offsets manifest file {where} vanished while being read", "Run the command again.")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(
                f"offsets manifest file {where} is corrupted (not JSON: {exc})",
                "Restore it from a backup. Do not delete it: the exactly-once state depends on it.",
            ) from None
        if not isinstance(doc, dict) or "format_version" not in doc or "version" not in doc:
            raise StateError(f"offsets manifest file {where} is not a kingest manifest (no format_version)")
        if doc["format_version"] != FORMAT_VERSION:
            raise StateError(
                f"offsets manifest file {where} has format_version {doc['format_version']}; "
                f"this kingest reads format_version {FORMAT_VERSION}",
                "Upgrade kingest to the version that wrote this lake.",
            )
        return doc

    # ------------------------------------------------------------------------------------------ writing

    def commit(
        self,
        state: PartitionState,
        *,
        operation: str,
        owner: str,
        next_offset: int | None,
        add: Sequence[dict[str, Any]] = (),
        remove: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> PartitionState:
        """Commit version ``state.version + 1``. Raises ManifestConflict when another writer took it."""
        version = state.version + 1
        doc = {
            "format": "kingest-manifest",
            "format_version": FORMAT_VERSION,
            "pipeline": self.pipeline,
            "topic": state.topic,
            "partition": state.partition,
            "version": version,
            "operation": operation,
            "next_offset": next_offset,
            "add": list(add),
            "remove": list(remove),
            "owner": owner,
            "committed_at": now_iso(),
            **(extra or {}),
        }
        data = json.dumps(doc, indent=1).encode()
        rel = self.version_path(state.topic, state.partition, version)
        if not self.lake.create(rel, data, crash_point="mid-manifest"):
            raise ManifestConflict(state.topic, state.partition, version)
        new = state.copy()
        new.apply(doc)
        if version % CHECKPOINT_EVERY == 0:
            # Housekeeping after the commit: derived data and clean-up, which a later checkpoint, claim or
            # rewind redoes. Its failure must not look like a failed commit (the version exists).
            try:
                self._checkpoint(new)
                # A long-lived owner never claims again: settle the pending records here too, so that they do
                # not pile up (one per version) between rebalances.
                self.recover(new)
            except KingestError as exc:
                log.warning(
                    "%s[%d]: version %d committed; its checkpoint or clean-up failed: %s", *new.tp, version, exc
                )
        return new

    def _checkpoint(self, state: PartitionState) -> None:
        """The whole state at this version, so that loading reads at most CHECKPOINT_EVERY versions. Derived
        data: written by plain replace, and a crash before it only makes the next load read more versions."""
        doc = {
            "format": "kingest-manifest-checkpoint",
            "format_version": FORMAT_VERSION,
            "pipeline": self.pipeline,
            "topic": state.topic,
            "partition": state.partition,
            "version": state.version,
            "next_offset": state.next_offset,
            "files": list(state.files.values()),
            "owner": state.owner,
            "committed_at": state.committed_at,
            "history": state.history,
        }
        rel = f"{self._folder('checkpoints', state.topic, state.partition)}/{state.version:0{_NAME_DIGITS}d}.json"
        self.lake.put(rel, json.dumps(doc).encode())

    def claim(
        self, topic: str, partition: int, owner: str, attempts: int = 5, *, since: PartitionState | None = None
    ) -> PartitionState:
        """Take ownership of a partition: commit a ``claim`` version on top of the latest state. This fences
        every earlier owner: their next commit would need the version just taken.

        ``since`` is the state this writer loaded when the group assigned it the partition. A claim by another
        writer committed after it means the group assigned the partition to that writer later: this writer is
        the zombie, and gets ManifestConflict rather than fence the rightful owner. Plain writes after it are
        the last commits of the previous owner (frozen, or slow to let go): valid, and this claim goes on top
        of them and fences it."""
        state = since
        for _ in range(attempts):
            state = self.load(topic, partition, since=since)
            if since is not None and self.claimed_by_other(state, since.version, owner):
                raise ManifestConflict(topic, partition, since.version + 1)
            try:
                return self.commit(state, operation="claim", owner=owner, next_offset=state.next_offset)
            except ManifestConflict:
                continue  # another writer committed meanwhile: look again at what it was
        version = state.version if state is not None else 0
        raise ManifestConflict(topic, partition, version + 1)

    def claimed_by_other(self, state: PartitionState, after: int, owner: str) -> bool:
        """Whether a writer other than ``owner`` committed a claim in versions ``after``+1 .. ``state.version``."""
        if state.version <= after:
            return False
        rels = [self.version_path(state.topic, state.partition, v) for v in range(after + 1, state.version + 1)]
        for rel, data in self.lake.read_many(rels).items():
            doc = self._parse(rel, data)
            if doc.get("operation") == "claim" and doc.get("owner") != owner:
                return True
        return False

    # ------------------------------------------------------------------------------------------ recovery

    def retired_rel(self, topic: str, partition: int, version: int, owner: str) -> str:
        return f"{self._folder(RETIRED, topic, partition)}/{version:0{_NAME_DIGITS}d}-{owner}.json"

    def retired_notes(self, topic: str, partition: int) -> list[tuple[str, int, list[str] | None]]:
        """The partition's notes of retired files (see ``save``): path, version, files (None: unreadable)."""
        return self.pending_records(topic, partition, kind=RETIRED)

    def only_maintenance(self, topic: str, partition: int, after: int, upto: int) -> bool:
        """Whether versions ``after``+1 .. ``upto`` are all compactions and gc fences: versions that move no
        offset and take no partition from its owner (a writer that lost its commit to one resumes on top)."""
        if upto <= after:
            return True
        rels = [self.version_path(topic, partition, v) for v in range(after + 1, upto + 1)]
        docs = self.lake.read_many(rels)
        return len(docs) == len(rels) and all(
            self._parse(rel, data).get("operation") in MAINTENANCE for rel, data in docs.items()
        )

    def _pending_rel(self, topic: str, partition: int, version: int, owner: str) -> str:
        return f"{self._folder(PENDING, topic, partition)}/{version:0{_NAME_DIGITS}d}-{owner}.json"

    def write_pending(self, topic: str, partition: int, owner: str, paths: Sequence[str], *, version: int) -> None:
        """Record, before writing them, the data files this writer is about to commit as ``version``, so that
        recovery can find them if that commit never happens. One record per intended version, never rewritten:
        what recovery decides from it stays true whenever it acts (see ``recover``)."""
        body = {
            "format_version": FORMAT_VERSION,
            "owner": owner,
            "version": version,
            "paths": list(paths),
            "written_at": now_iso(),
        }
        rel = self._pending_rel(topic, partition, version, owner)
        self.lake.put(rel, json.dumps(body).encode())
        self._written[rel] = list(paths)

    def forget(self, topic: str, partition: int) -> None:
        """This writer no longer holds the partition (revoked, lost, fenced): drop what it remembers of its own
        pending records there (the records stay in the lake, for whoever recovers them next), so that memory
        does not grow with rebalances."""
        folder = f"{self._folder(PENDING, topic, partition)}/"
        for rel in [r for r in list(self._written) if r.startswith(folder)]:
            self._written.pop(rel, None)

    def _settled_records(self, state: PartitionState) -> tuple[list[str], list[str]]:
        """The pending records that ``state`` settles, and the files they announced that ``state`` does not name.

        A record announces files for one version ``t``, and only its writer, committing exactly ``t``, can ever
        add them (data file names are never reused). Once version ``t`` exists the outcome is decided for good:
        either ``t`` added the files, or they can never be added. So a record with ``t <= state.version`` is
        settled, and its files that ``state`` does not name are garbage (never committed, or taken out by a
        later rewind). Both facts are permanent: a writer acting on them after a pause of any length, with a
        state other writers have long moved past, still deletes nothing that is or can become committed.
        Records of later versions (a writer that may still commit) are left alone, and so are records this
        kingest cannot read (a newer format, or a name it does not know): their files wait for ``kingest gc``."""
        records: list[str] = []
        garbage: list[str] = []
        found = self.pending_records(state.topic, state.partition, up_to=state.version)
        # The inputs of a compaction that keeps them (retire notes) wait for gc's retention, though the settled
        # records of the writers that wrote them name them too. Read after the records: a compaction that took
        # such a file out before they were listed wrote its note before that.
        retiring: set[str] = set()
        if found:
            for _, _, paths in self.retired_notes(state.topic, state.partition):
                retiring.update(paths or ())
        for rel, _, paths in found:
            if paths is None:
                log.warning("pending record %s is not readable by this kingest; left in place", self.lake.display(rel))
                continue
            records.append(rel)
            garbage += [p for p in paths if p not in state.files and p not in garbage and p not in retiring]
        return records, garbage

    def pending_records(
        self, topic: str, partition: int, up_to: int | None = None, *, kind: str = PENDING
    ) -> list[tuple[str, int, list[str] | None]]:
        """The partition's pending records (of versions up to ``up_to``, or all): path, version, and the files it
        names (None when this kingest cannot read it: a newer format, or damaged)."""
        folder = self._folder(kind, topic, partition)
        wanted = {
            f"{folder}/{name}": int(name[:_NAME_DIGITS])
            for name in self.lake.listdir(folder)
            if name.endswith(".json")
            and name[:_NAME_DIGITS].isdigit()
            and (up_to is None or int(name[:_NAME_DIGITS]) <= up_to)
        }
        out: list[tuple[str, int, list[str] | None]] = []
        known = {rel: self._written[rel] for rel in wanted if rel in self._written} if kind == PENDING else {}
        for rel, named in known.items():
            out.append((rel, wanted[rel], list(named)))
        for rel, data in self.lake.read_many(r for r in wanted if r not in known).items():
            try:
                doc = json.loads(data)
                paths = doc["paths"] if doc.get("format_version") == FORMAT_VERSION else None
            except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
                paths = None
            out.append(
                (rel, wanted[rel], [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else None)
            )
        return sorted(out, key=lambda found: found[0])

    def recover(self, state: PartitionState) -> list[str]:
        """Delete the data files of settled pending records (see ``_settled_records``) that ``state`` does not
        name, then the records. Safe whoever calls it, whenever, with any committed state of the partition:
        a pause between reading and deleting changes nothing it relies on. Returns what was removed."""
        records, garbage = self._settled_records(state)
        self.lake.delete(garbage)
        self.lake.delete(records)  # after the files: a crash in between leaves the record to find them again
        for rel in records:
            self._written.pop(rel, None)
        return garbage

    def pending_files(self, state: PartitionState) -> list[str]:
        """What ``recover`` would delete at ``state``: files of an interrupted or fenced writer, or files a
        crashed rewind meant to delete. Reads only."""
        return self._settled_records(state)[1]

    def rewind(
        self,
        state: PartitionState,
        *,
        owner: str,
        next_offset: int,
        write: Sequence[EncodedFile] = (),
        remove: Sequence[str] = (),
    ) -> tuple[PartitionState, list[str]]:
        """Commit a ``rewind`` version on top of ``state``: the partition resumes at ``next_offset``, the files
        ``remove`` leave the lake and the files ``write`` (rewritten copies of straddling files) join it.
        Returns the new state and the data files deleted. Raises ManifestConflict when ``state`` is not the
        latest any more (a writer committed since): then nothing of this rewind remains.

        Ordered so that a crash at any line leaves the lake consistent once recovered:
        1. a pending record for the version about to be committed names the new files *and* the removed ones;
        2. the new files are written (not yet part of the lake);
        3. the version is committed by exclusive create. It fences every other writer: their next commit needs
           a version this one took;
        4. recovery at the new version: the record is settled now, and its files the new state does not name
           are the removed ones (had the commit lost the race, they would be the new files). If this crashes
           before step 4, the next claim (``kingest run``), rewind or checkpoint does it.
        """
        new = self.save(
            state,
            operation="rewind",
            owner=owner,
            next_offset=next_offset,
            files=write,
            remove=remove,
            extra={"previous_next_offset": state.next_offset},
        )
        crash.point("after-commit")
        return new, self.recover(new)

    def save(
        self,
        state: PartitionState,
        *,
        operation: str,
        owner: str,
        next_offset: int | None,
        files: Sequence[EncodedFile],
        remove: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
        write: Callable[[Sequence[EncodedFile]], None] | None = None,
        retire: Sequence[str] = (),
    ) -> PartitionState:
        """Add ``files`` (and take ``remove`` out) in version ``state.version + 1``, in the one order that a crash
        or a pause at any line cannot break (a batch of ``kingest run`` and a rewind alike):

        1. announce: a pending record for that version names the files to add and to remove;
        2. write the files (``write``: the caller's way, else plain puts): not part of the lake yet;
        3. commit the version by exclusive create: now they are.

        ``retire``: files taken out too, but not deleted by recovery: a compaction's inputs, which readers that
        listed them may still be reading. A note names them before the commit; ``kingest gc`` deletes them once
        the note is older than its retention.

        Raises ManifestConflict when another writer took the version: the files were never committed, and their
        names carry this writer's tag, so they are deleted here (with the record)."""
        version = state.version + 1
        added = [f.path for f in files]
        removed = [p for p in remove if p not in added]
        if retire:
            note = {"format_version": FORMAT_VERSION, "owner": owner, "version": version, "paths": list(retire)}
            self.lake.put(self.retired_rel(state.topic, state.partition, version, owner), json.dumps(note).encode())
        self.write_pending(state.topic, state.partition, owner, added + removed, version=version)
        if write is not None:
            write(files)
        else:
            for f in files:
                self.lake.put(f.path, f.data)
        crash.point("after-write")
        try:
            return self.commit(
                state,
                operation=operation,
                owner=owner,
                next_offset=next_offset,
                add=[f.entry() for f in files],
                remove=[*remove, *(p for p in retire if p not in remove)],
                extra=extra,
            )
        except ManifestConflict:
            self.lake.delete(added)
            pending = self._pending_rel(state.topic, state.partition, version, owner)
            self.lake.delete([pending])
            self._written.pop(pending, None)
            if retire:
                self.lake.delete([self.retired_rel(state.topic, state.partition, version, owner)])
            raise


def _numbered(names: Iterable[str]) -> list[int]:
    return sorted(int(n[:_NAME_DIGITS]) for n in names if n.endswith(".json") and n[:_NAME_DIGITS].isdigit())
