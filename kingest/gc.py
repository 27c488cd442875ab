"""`kingest gc --retain DURATION`: remove what no manifest version names and nothing can still commit.

What is collected, once older than the retention (a reader that listed a file a moment ago can still read it):

- **uncommitted files** (exactly-once lakes): data and dead-letter files that the latest manifest state does not
  name and that no writer can still commit: files of crashed or fenced attempts, files a rewind took out;
- **stale attempts**: files announced by a pending record older than the retention whose version was never
  committed (the writer crashed, or has been frozen that long): gc first commits a version of its own for the
  partition (same offset, same files), which settles the record and fences that writer for good;
- **settled pending records** whose files are all named or gone;
- **retired files**: the inputs of a compaction (``kingest compact``), counted from the compaction's retire note,
  not from the file's own age, and then the note;
- **interrupted writes**: the hidden ``.<name>.<id>.tmp`` files a local write or manifest create leaves when the
  process dies half-way (any semantics), once an hour old at least (a write in progress holds one).

Only this pipeline's files: one that no record of it names is collected only when its footer says it is this
pipeline's, written exactly-once (topic folders may be shared by pipelines; the manifest folder is not).

Why a pause of any length cannot make it delete a committed file: it lists the files first, then reads the
pending records, then loads the manifest states. A listed file committed before the states are loaded is named
by them. One committed after was announced by a pending record before it was written (so before the listing),
for a version above the loaded state's: that record is only ever deleted once its version exists, after the
loading, so it was read, and it protects the file. Files of unreadable records are never collected.

Left alone: manifest versions below the latest checkpoint. Deleting a version would free its name, and a writer
paused with a state that old could then create it again (the exclusive create that fences it would succeed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import layout
from .config import Config
from .errors import ManifestConflict
from .lake import Lake
from .layout import topic_partition_of
from .manifest import ManifestStore, new_writer_id
from .offsets import offset_store
from .reader import footer_lineage

DEFAULT_RETAIN = "7d"
TMP_FLOOR = 3600.0  # a hidden .tmp file is an interrupted write only once this old, whatever the retention


@dataclass(frozen=True)
class Garbage:
    path: str
    size: int
    age: float  # seconds since it was last modified
    kind: str  # uncommitted, stale attempt, retired, interrupted write, settled record, retire note


@dataclass
class Plan:
    lake: str
    retain: float
    collect: list[Garbage] = field(default_factory=list)  # older than the retention: gc removes these
    young: list[Garbage] = field(default_factory=list)  # garbage, but younger than the retention: kept for now
    protected: int = 0  # files not named by the manifest that a writer may still commit (pending, kept)
    stale: list[tuple[str, int]] = field(default_factory=list)  # partitions with an attempt older than retain
    unreadable_records: list[str] = field(default_factory=list)  # their partitions' files are left alone
    foreign: int = 0  # files of the topic folders that are not this pipeline's (another pipeline's): left alone

    @property
    def bytes(self) -> int:
        return sum(g.size for g in self.collect)

    def summary(self) -> dict[str, float | int]:
        """What `kingest status` shows: reclaimable now, and once older than the retention."""
        return {
            "retain_seconds": self.retain,
            "files": len(self.collect),
            "bytes": self.bytes,
            "later_files": len(self.young),
            "later_bytes": sum(g.size for g in self.young),
        }

    def to_json(self) -> dict[str, object]:
        return {
            "lake": self.lake,
            "retain_seconds": self.retain,
            "files": len(self.collect),
            "bytes": self.bytes,
            "collect": [g.__dict__ for g in self.collect],
            "younger_than_retention": {"files": len(self.young), "bytes": sum(g.size for g in self.young)},
            "protected_pending": self.protected,
            "not_this_pipelines": self.foreign,
            "unreadable_records": self.unreadable_records,
        }


def _partition(rel: str) -> tuple[str, int] | None:
    """The topic-partition of a kingest data or dead-letter file (by its name and folder); None for any other
    file, which gc never touches."""
    name = layout.data_file(rel)
    return (name.topic, name.partition) if name is not None else layout.dead_letter_file(rel)


def _is_tmp(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def plan(config: Config, lake: Lake, retain: float, now: float | None = None) -> Plan:
    """What gc would remove now (reads only)."""
    now = time.time() if now is None else now
    out = Plan(lake.display(), retain)
    topics = list(config.kafka.topics)
    folders = tuple(f"{layout.topic_folder(t)}/" for t in topics) + tuple(
        f"{layout.DEAD_LETTER_FOLDER}/{layout.topic_folder(t)}/" for t in topics
    )
    store = offset_store(config, lake)
    manifests = ManifestStore(lake, config.pipeline) if store.names_files else None
    # 1. The files, listed first (see the module docstring for why this order).
    # (One listing of the lake: the topics' folders, and this pipeline's manifest folder for the records' ages.)
    kept = folders + ((f"{manifests.prefix}/",) if manifests is not None else ())
    listed = {rel: sz_mt for rel, sz_mt in lake.find_dated("").items() if rel.startswith(kept)}

    def sort(rel: str, kind: str, age: float | None = None) -> None:
        size, modified = listed[rel]
        garbage = Garbage(rel, size, max(0.0, now - modified if age is None else age), kind)
        (out.collect if garbage.age >= retain else out.young).append(garbage)

    for rel in sorted(listed):
        if _is_tmp(rel):
            # a write in progress has its .tmp file for milliseconds; never less than TMP_FLOOR, whatever --retain
            size, modified = listed[rel]
            if now - modified >= TMP_FLOOR:
                sort(rel, "interrupted write")
    if manifests is None:
        return out
    # 2. The pending records, then 3. the states.
    tps = sorted(set(manifests.partitions()) | {tp for tp in map(_partition, listed) if tp})
    tps = [tp for tp in tps if tp[0] in topics]
    records = {tp: manifests.pending_records(*tp) for tp in tps}
    states = manifests.load_many(tps)
    named = {path for state in states.values() for path in state.files}
    protected: set[str] = set()
    stale: set[str] = set()
    blocked: set[tuple[str, int]] = set()
    settled: list[tuple[str, list[str]]] = []
    for tp, found in records.items():
        for rel, version, paths in found:
            if paths is None:
                out.unreadable_records.append(rel)
                blocked.add(tp)
            elif version > states[tp].version:
                size, modified = listed.get(rel, (0, now))
                if now - modified >= retain:
                    # An attempt older than the retention, never committed nor settled: its writer crashed (or
                    # is frozen for that long). gc settles it by committing a version first (see collect).
                    if tp not in out.stale:
                        out.stale.append(tp)
                    stale.update(paths)
                    settled.append((rel, paths))
                else:
                    protected.update(paths)  # its writer may still commit them
            else:
                settled.append((rel, paths))
    # 4. The retire notes of compactions, read after the states: a compaction that committed before them wrote
    # its note before that, so a file it took out is never mistaken for an uncommitted one (whose age would be
    # its own, not the time it left the table).
    retiring: dict[str, float] = {}  # file -> since when it is out (the age of its note)
    notes: list[tuple[str, list[str]]] = []
    for tp in tps:
        for rel, version, paths in manifests.retired_notes(*tp):
            if paths is None:
                out.unreadable_records.append(rel)
                blocked.add(tp)
                continue
            if version > states[tp].version:
                continue  # its compaction has not committed (as far as the states say): its inputs are named
            age = now - listed.get(rel, (0, now))[1]
            for path in paths:
                retiring[path] = min(retiring.get(path, age), age)
            notes.append((rel, paths))
    candidates = [
        rel
        for rel in sorted(listed)
        if (part := _partition(rel)) is not None and part[0] in topics and rel not in named and part not in blocked
    ]
    out.protected = sum(1 for rel in candidates if rel in protected)
    # A file no record of this pipeline names may be another pipeline's (the topic folders are shared; the
    # manifest folder is not), or this one's from before a change of semantics: only its footer can say.
    announced = protected | stale | {p for _, paths in settled for p in paths} | set(retiring)
    unknown = [rel for rel in candidates if rel not in announced]
    lineage = footer_lineage(lake, unknown)
    ours = {
        rel
        for rel, meta in lineage.items()
        if meta.get("kingest.pipeline") == config.pipeline and meta.get("kingest.semantics") == "exactly-once"
    }
    out.foreign = len(unknown) - len(ours)
    for rel in candidates:
        if rel in protected:
            continue  # a writer may still commit it (the states may be older than its commit, too)
        if rel in retiring:
            sort(rel, "retired", age=retiring[rel])
        elif rel in unknown and rel not in ours:
            continue  # not this pipeline's: left alone
        else:
            sort(rel, "stale attempt" if rel in stale else "uncommitted")
    leaving = {g.path for g in out.collect}
    for rel, paths in settled:
        if rel in listed and all(p in named or p not in listed or p in leaving for p in paths):
            sort(rel, "settled record")
    for rel, paths in notes:
        if rel in listed and all(p in named or p not in listed or p in leaving for p in paths):
            sort(rel, "retire note")
    return out


def collect(config: Config, lake: Lake, found: Plan) -> int:
    """Remove the files of a plan (records last: a crash in between leaves them to find their files again).

    A partition with a stale attempt first gets a version of its own (operation ``gc``, same offset, same
    files), by exclusive create: that settles the attempt's record, and fences its writer should it ever
    resume (its commit needs the version just taken). Then recovery at that version removes what it settled
    and does not name: the plan's view of such a partition may be out of date (its writer may have committed
    the version since the plan read the state), so the plan's list is not used there. When another writer
    commits first, the partition is left for the next gc. Returns the number of files and records removed."""
    garbage = list(found.collect)
    removed = 0
    if found.stale:
        manifests = ManifestStore(lake, config.pipeline)
        owner = f"gc-{new_writer_id()}"
        stale = set(found.stale)
        # What the plan saw of these partitions may be out of date (a writer may have committed the "stale"
        # version since): after the fence, recovery at the new state decides what goes, not the plan.
        # (Files of settled or missing records, "uncommitted", can never be committed: the plan's word stands.)
        garbage = [
            g
            for g in garbage
            if g.kind not in ("stale attempt", "settled record") or _partition_of_any(g.path) not in stale
        ]
        for tp in found.stale:
            state = manifests.load(*tp)
            try:
                fenced = manifests.commit(state, operation="gc", owner=owner, next_offset=state.next_offset)
            except ManifestConflict:
                continue  # a writer committed meanwhile: the next gc looks again
            removed += len(manifests.recover(fenced))
    records = ("settled record", "retire note")
    lake.delete([g.path for g in garbage if g.kind not in records])
    lake.delete([g.path for g in garbage if g.kind in records])
    return removed + len(garbage)


def _partition_of_any(rel: str) -> tuple[str, int] | None:
    """A data file's, dead letter's or pending record's topic-partition (by its folders or its name)."""
    return _partition(rel) or topic_partition_of(rel)
