"""`kingest rewind`: move a pipeline's position so that the next `kingest run` replays from there (or skips
ahead), keeping the promise of its semantics.

    plan_rewind  ─► resolve the target per partition (offset, timestamp, earliest, latest), check it lies in
                    [log start, log end], refuse while the consumer group has active members, and list what
                    changes: offsets before and after, lake files affected. Changes nothing.
    apply_rewind ─► exactly-once: per partition, one manifest version (operation ``rewind``) that retracts the
                    data at and after the target: files wholly past it leave the lake, a file straddling it is
                    rewritten to keep only the earlier offsets (ManifestStore.rewind orders this for crashes).
                    Then the group's committed offsets follow, for lag tools.
                    at-least-once / at-most-once: the group's committed offsets are the position; they are set.
                    The files already written stay: the replay writes their records again.

Like Kafka's own `consumer-groups --reset-offsets`, a rewind refuses while the group has active members: a
running pipeline would overwrite the group offsets at its next commit, and under exactly-once its next commit
would be fenced by the rewind's version.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import kafka_admin
from .config import Config
from .errors import BadTarget, GroupActive, KingestError, ManifestConflict, RewindConflict
from .kafka_admin import GroupInfo
from .lake import Lake
from .manifest import ManifestStore, PartitionState, new_writer_id
from .offsets import offset_store, open_table
from .status import LakeFile, lake_files
from .types import TopicPartition


@dataclass(frozen=True)
class Target:
    """Where to rewind to, as the user said it."""

    kind: str  # offset | timestamp | earliest | latest
    offset: int | None = None
    timestamp_ms: int | None = None
    text: str = ""

    @classmethod
    def parse(
        cls,
        to_offset: int | None = None,
        to_timestamp: str | None = None,
        to_earliest: bool = False,
        to_latest: bool = False,
    ) -> Target:
        given = [
            name
            for name, value in (
                ("--to-offset", to_offset is not None),
                ("--to-timestamp", to_timestamp is not None),
                ("--to-earliest", to_earliest),
                ("--to-latest", to_latest),
            )
            if value
        ]
        if len(given) != 1:
            raise BadTarget(
                "give exactly one target: --to-offset N, --to-timestamp ISO8601, --to-earliest or --to-latest"
                + (f" (got {', '.join(given)})" if given else ""),
                "For example: kingest rewind --to-timestamp 2026-11-28T09:00:00Z --dry-run",
            )
        if to_offset is not None:
            return cls("offset", offset=to_offset, text=f"offset {to_offset}")
        if to_timestamp is not None:
            return cls("timestamp", timestamp_ms=parse_timestamp(to_timestamp), text=f"timestamp {to_timestamp}")
        return cls("earliest", text="the log start") if to_earliest else cls("latest", text="the log end")


def parse_timestamp(text: str) -> int:
    """ISO 8601 to milliseconds since the epoch. Without a UTC offset the time is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadTarget(
            f"--to-timestamp {text!r} is not an ISO 8601 date and time",
            "Use a form such as 2026-11-28T09:30:00Z, 2026-11-28T10:30:00+01:00 or 2026-11-28 (midnight UTC).",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass
class PartitionPlan:
    topic: str
    partition: int
    log_start_offset: int
    log_end_offset: int
    committed_offset: int | None  # the group's, now
    before: int | None  # the position that counts for the semantics (manifest or group), now
    after: int  # the target
    note: str | None = None  # how the target was resolved, when that needs saying
    drop: list[LakeFile] = field(default_factory=list)  # exactly-once: files wholly at or after the target
    rewrite: list[LakeFile] = field(default_factory=list)  # exactly-once: files straddling the target
    leftovers: list[str] = field(default_factory=list)  # exactly-once: uncommitted files recovery will delete
    replayed: list[LakeFile] = field(default_factory=list)  # otherwise: files holding records written again
    state: PartitionState | None = None  # exactly-once: the manifest state the rewind commits on top of
    retracts: bool = False  # exactly-once: the rewind takes the data at and after the target out of the lake

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)

    @property
    def changes(self) -> bool:
        if self.state is not None or self.retracts:
            return self.after != self.before or bool(self.drop or self.rewrite or self.leftovers)
        return self.after != self.committed_offset


@dataclass
class RewindPlan:
    pipeline: str
    semantics: str
    group_id: str
    lake: str
    target: Target
    partitions: list[PartitionPlan]
    offset_name: str = "group offset"  # how the store's position is called (offsets.OffsetStore.offset_name)
    names_files: bool = False  # the store names the lake's files: a rewind retracts them there

    @property
    def changes(self) -> bool:
        return any(p.changes for p in self.partitions)

    def describe(self) -> list[str]:
        """The plan for a person: per partition the offset before and after, and the lake files affected."""
        names_files = self.names_files
        where = self.offset_name
        lines = [
            f"rewind of pipeline {self.pipeline} ({self.semantics}) to {self.target.text}; "
            f"group {self.group_id}, lake {self.lake}"
        ]
        for p in self.partitions:
            head = f"{p.topic}[{p.partition}]: {where} {_show(p.before)} -> {p.after} "
            head += f"(valid {p.log_start_offset}..{p.log_end_offset})"
            if p.note:
                head += f"; {p.note}"
            if not p.changes:
                lines.append(f"{head}: unchanged")
                continue
            lines.append(head)
            if p.before is not None and p.after > p.before:
                lines.append(f"  skips offsets {p.before}..{p.after - 1}: they will not be written to the lake")
            if names_files:
                lines += _files("  drops {n} file(s) wholly at or after offset {o} from the lake:", p.drop, p.after)
                lines += _files(
                    "  rewrites {n} file(s) straddling offset {o} to keep only the offsets below it:",
                    p.rewrite,
                    p.after,
                )
                if p.leftovers:
                    lines.append(f"  deletes {len(p.leftovers)} uncommitted file(s) left by an interrupted writer")
                    lines += [f"    {path}" for path in p.leftovers]
                if p.drop or p.rewrite:
                    lines.append(f"  the next run writes the offsets from {p.after} again, once each")
            elif p.replayed:
                lines.append(
                    f"  the replay will write again the records at offsets {p.after} and above that are already "
                    f"in the lake: they will be DUPLICATED ({self.semantics} removes no file). They are in:"
                )
                lines += [f"    {f.path} (offsets {f.first_offset}..{f.last_offset})" for f in p.replayed]
        return lines


@dataclass
class RewindResult:
    rewound: list[TopicPartition] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # rewritten files added to the lake
    deleted: list[str] = field(default_factory=list)  # files deleted from the lake
    warnings: list[str] = field(default_factory=list)


def _show(offset: int | None) -> str:
    return "none" if offset is None else str(offset)


def _files(heading: str, files: list[LakeFile], offset: int) -> list[str]:
    if not files:
        return []
    lines = [heading.format(n=len(files), o=offset)]
    return lines + [f"    {f.path} (offsets {f.first_offset}..{f.last_offset})" for f in files]


def refuse_if_active(group: GroupInfo) -> None:
    if group.members:
        raise GroupActive(
            f"consumer group {group.group_id} has {len(group.members)} active member(s) ({group.state}): "
            + "; ".join(m.describe() for m in group.members),
            "Stop every `kingest run` of this pipeline first (Ctrl-C or SIGTERM stops one cleanly), then rewind.",
        )


# ---------------------------------------------------------------------------------------------- planning


def plan_rewind(
    config: Config,
    target: Target,
    topic: str | None = None,
    partition: int | None = None,
    lake: Lake | None = None,
) -> RewindPlan:
    """What a rewind would do. Reads Kafka and the lake; changes nothing."""
    if topic is not None and topic not in config.kafka.topics:
        raise BadTarget(
            f"--topic {topic} is not a topic of pipeline {config.pipeline}",
            f"Its topics: {', '.join(config.kafka.topics)}.",
        )
    topics = [topic] if topic is not None else list(config.kafka.topics)
    where = ", ".join(config.kafka.bootstrap_servers)
    with kafka_admin.inspection_consumer(config) as consumer:
        tps = kafka_admin.topic_partitions(consumer, topics, where)
        if partition is not None:
            for name in topics:
                valid = sorted(p for t, p in tps if t == name)
                if partition not in valid:
                    raise BadTarget(
                        f"--partition {partition}: topic {name} has no partition {partition}",
                        f"Its partitions: {_ranges(valid)}.",
                    )
            tps = [tp for tp in tps if tp[1] == partition]
        bounds = kafka_admin.log_offsets(consumer, tps)
        by_time = (
            kafka_admin.offsets_for_times(consumer, tps, target.timestamp_ms) if target.timestamp_ms is not None else {}
        )
    refuse_if_active(kafka_admin.describe_group(config))
    committed = kafka_admin.committed_offsets(config, tps)

    afters: dict[TopicPartition, tuple[int, str | None]] = {}
    wrong = []
    for tp in tps:
        start, end = bounds[tp]
        note = None
        if target.kind == "earliest":
            after = start
        elif target.kind == "latest":
            after = end
        elif target.kind == "timestamp":
            found = by_time.get(tp)
            # As Kafka's own reset does: no record that recent means the log end.
            after, note = (end, "no record at or after that time: the log end") if found is None else (found, None)
        else:
            assert target.offset is not None
            after = target.offset
        if not start <= after <= end:
            wrong.append(f"{tp[0]}[{tp[1]}] ({start}..{end})")
        afters[tp] = (after, note)
    if wrong:
        raise BadTarget(
            f"{target.text} is outside the valid range (log start offset..log end offset) of " + ", ".join(wrong),
            "Pick an offset in that range, or use --to-earliest / --to-latest.",
        )

    lake = lake or Lake(config.lake.path, config.lake.storage_options)
    plans = []
    store = offset_store(config, lake)
    if store.names_files:
        positions = store.positions(tps)
        for tp in tps:
            position = positions[tp]
            after, note = afters[tp]
            files = [_lake_file(tp, entry) for entry in (position.files or {}).values()]
            plans.append(
                PartitionPlan(
                    *tp,
                    *bounds[tp],
                    committed.get(tp),
                    position.next_offset,
                    after,
                    note,
                    drop=sorted((f for f in files if f.first_offset >= after), key=_order),
                    rewrite=sorted((f for f in files if f.first_offset < after <= f.last_offset), key=_order),
                    leftovers=store.uncommitted(position),
                    state=position.state,
                    retracts=True,
                )
            )
    else:
        if config.lake.format == "delta":
            table = open_table(config)
            named = table.files_by_partition() if table.exists() else {}
            files_by_tp = {tp: [_lake_file(tp, e) for e in entries.values()] for tp, entries in named.items()}
        else:
            files_by_tp = lake_files(lake, topics)
        for tp in tps:
            after, note = afters[tp]
            replayed = [f for f in files_by_tp.get(tp, []) if f.last_offset >= after]
            plans.append(
                PartitionPlan(*tp, *bounds[tp], committed.get(tp), committed.get(tp), after, note, replayed=replayed)
            )
    return RewindPlan(
        config.pipeline,
        config.semantics,
        config.kafka.group_id,
        lake.display(),
        target,
        plans,
        offset_name=store.offset_name,
        names_files=store.names_files,
    )


def _lake_file(tp: TopicPartition, entry: dict[str, Any]) -> LakeFile:
    """A file as the manifest names it."""
    return LakeFile(
        path=str(entry["path"]),
        topic=tp[0],
        partition=tp[1],
        first_offset=int(entry["first_offset"]),
        last_offset=int(entry["last_offset"]),
        bytes=int(entry.get("bytes", 0)),
        rows=int(entry.get("rows", 0)),
    )


def _order(f: LakeFile) -> tuple[int, int, str]:
    return (f.first_offset, f.last_offset, f.path)


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 8 else f"{values[0]}..{values[-1]}"


# ---------------------------------------------------------------------------------------------- applying


def apply_rewind(config: Config, plan: RewindPlan, lake: Lake | None = None) -> RewindResult:
    """Carry the plan out. Checks again that the group has no active member: a run may have started while the
    plan was read. Under exactly-once, a writer that committed since the plan makes the rewind stop there."""
    from .encoder import rewriting_encoder
    from .reader import read_rows_before

    refuse_if_active(kafka_admin.describe_group(config))
    changed = [p for p in plan.partitions if p.changes]
    result = RewindResult()
    if not changed:
        return result
    lake = lake or Lake(config.lake.path, config.lake.storage_options)

    if plan.names_files and config.lake.format == "delta":
        # One commit per partition: its rows at and after the target deleted (delta-rs rewrites a file straddling
        # it) and its txn set to the target, if the txn is still the one the plan read (else RewindConflict).
        table = open_table(config)
        for p in changed:
            try:
                table.rewind(p.tp, p.after, expected=p.before)
            except RewindConflict as exc:
                rewound = ", ".join(f"{t}[{n}]" for t, n in result.rewound) or "none"
                raise RewindConflict(f"{exc.message}. Partitions rewound: {rewound}", exc.hint) from None
            result.rewound.append(p.tp)
            # Taken out of the table (a file straddling the target is replaced by one holding the rows below it);
            # they stay in storage for readers of older versions until `kingest gc`.
            result.deleted += [f.path for f in p.drop + p.rewrite]
            result.written += [f.path for f in p.rewrite]
        try:
            kafka_admin.set_group_offsets(config, {p.tp: p.after for p in changed})
        except KingestError as exc:
            result.warnings.append(f"the table is rewound, but the group's committed offsets are not: {exc}")
    elif plan.names_files:
        store = ManifestStore(lake, config.pipeline)
        owner = f"rewind-{new_writer_id()}"
        for p in changed:
            assert p.state is not None
            write = []
            for f in p.rewrite:
                # The rewritten file keeps the original's folder (whatever the layout that wrote it) and gets a
                # new name (the offsets it keeps, and this rewind's tag): it never replaces a file in place.
                encoder = rewriting_encoder(config, owner, rewritten_from=f.path)
                kept = read_rows_before(lake, f.path, p.after)
                # The encoder writes the file's metadata anew (offsets, rows, lineage). The old metadata goes:
                # its bytes keys would not replace the encoder's str keys of the same names.
                kind = p.state.files.get(f.path, {}).get("kind", "data")  # a dead-letter file stays one
                [encoded] = encoder.encode_table(p.topic, p.partition, kept.replace_schema_metadata(None), kind=kind)
                folder = f.path.rsplit("/", 1)[0]
                write.append(replace(encoded, path=f"{folder}/{encoded.path.rsplit('/', 1)[-1]}"))
            try:
                _, deleted = store.rewind(
                    p.state,
                    owner=owner,
                    next_offset=p.after,
                    write=write,
                    remove=[f.path for f in p.drop + p.rewrite],
                )
            except ManifestConflict:
                done = ", ".join(f"{t}[{n}]" for t, n in result.rewound) or "none"
                raise RewindConflict(
                    f"{p.topic}[{p.partition}]: the offsets manifest changed since the plan (another writer "
                    f"committed: a run started?); this partition was not rewound. Partitions rewound: {done}",
                    "Stop every `kingest run` of this pipeline and run the rewind again.",
                ) from None
            result.rewound.append(p.tp)
            result.written += [f.path for f in write]
            result.deleted += deleted
        # The manifest is the truth; the group's offsets only feed lag tools. A failure here is a warning.
        try:
            kafka_admin.set_group_offsets(config, {p.tp: p.after for p in changed})
        except KingestError as exc:
            result.warnings.append(f"the manifest is rewound, but the group's committed offsets are not: {exc}")
    else:
        kafka_admin.set_group_offsets(config, {p.tp: p.after for p in changed})
        result.rewound = [p.tp for p in changed]
    return result
