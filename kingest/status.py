"""`kingest status`: where every topic-partition of a pipeline stands, whether a run is active or not.

Per topic-partition: the log's start and end offsets, the consumer group's committed offset, the manifest's
next offset (exactly-once), the lag behind the log end, and what the lake holds (files, rows, bytes). Also the
group's state and members, so that "is a `kingest run` active, and where?" has an answer.

Where each figure comes from:

- log offsets: ListOffsets through a consumer with no group and the pipeline's isolation level (under
  read_committed the end is the last stable offset: what the pipeline can reach);
- committed offsets: OffsetFetch for the group (it carries no commit time, so ``last_commit_at`` is null for
  at-least-once and at-most-once);
- exactly-once: the manifest's latest state (its next offset, the files it names with their rows and bytes,
  the time of its latest version). The position that counts, and so the lag, is the manifest's;
- otherwise: the lake listing (Parquet files a reader of the dataset folder sees; names carry topic,
  partition and offsets) and each file's footer for its rows. The position that counts is the group's.

Nothing secret is reported: no storage_options, no consumer settings, no credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import gc, kafka_admin, layout
from .config import Config, parse_duration
from .deadletter import count_dead_letters, dead_letters_in_state, is_dead_letter
from .kafka_admin import GroupInfo
from .lake import Lake
from .offsets import Position, offset_store, open_table
from .output import human_size
from .types import TopicPartition

_FOOTER_READERS = 16


@dataclass(frozen=True)
class LakeFile:
    """A data file of the lake, with the offsets its name carries."""

    path: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    bytes: int
    rows: int | None = None


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    log_start_offset: int
    log_end_offset: int
    committed_offset: int | None  # the consumer group's
    manifest_offset: int | None  # exactly-once: the manifest's next offset; None otherwise
    lag: int | None  # log end minus the position that counts for the semantics; None when there is none yet
    files: int  # data files (dead-letter files are counted in dead_letters, not here)
    rows: int
    bytes: int
    dead_letters: int  # bad records set aside under records.on_error: dead-letter
    last_commit_at: str | None  # exactly-once: the manifest's latest version; None otherwise (Kafka keeps none)
    assigned_to: str | None  # the group member consuming the partition now, if any


@dataclass
class StatusReport:
    pipeline: str
    semantics: str
    group: GroupInfo
    lake: str
    partitions: list[PartitionStatus]
    gc: dict[str, float | int] | None = None  # what `kingest gc` would reclaim (gc.Plan.summary)
    # the store that holds the position, when it is not the group (offsets.OffsetStore): its column in the table
    # (each partition's manifest_offset, last_commit_at)
    store_column: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.group.members)

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "semantics": self.semantics,
            "lake": self.lake,
            "group": {
                "group_id": self.group.group_id,
                "state": self.group.state,
                "members": [
                    {
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "host": m.host,
                        "group_instance_id": m.group_instance_id,
                        "partitions": [{"topic": t, "partition": p} for t, p in m.partitions],
                    }
                    for m in self.group.members
                ],
            },
            "gc": self.gc,
            "partitions": [asdict(p) for p in self.partitions],
            "totals": {
                "lag": sum(p.lag or 0 for p in self.partitions),
                "files": sum(p.files for p in self.partitions),
                "rows": sum(p.rows for p in self.partitions),
                "bytes": sum(p.bytes for p in self.partitions),
                "dead_letters": sum(p.dead_letters for p in self.partitions),
            },
        }


# ---------------------------------------------------------------------------------------------- the lake


def lake_files(lake: Lake, topics: Iterable[str]) -> dict[TopicPartition, list[LakeFile]]:
    """The Parquet files a reader of the dataset folder sees, per topic-partition, in offset order. Found by
    listing ``topic=<t>/`` (whatever the layout below it) and reading the offsets from the file names."""
    from .reader import visible_files

    wanted = set(topics)
    out: dict[TopicPartition, list[LakeFile]] = {}
    for rel, size in visible_files(lake).items():
        name = layout.data_file(rel)
        if name is None or name.topic not in wanted:
            continue  # not a kingest file name: not ours to count
        lake_file = LakeFile(rel, name.topic, name.partition, name.first_offset, name.last_offset, size)
        out.setdefault(name.tp, []).append(lake_file)
    for files in out.values():
        files.sort(key=lambda f: (f.first_offset, f.last_offset, f.path))
    return out


def with_rows(lake: Lake, files: list[LakeFile]) -> list[LakeFile]:
    """The files with their row counts, from their Parquet footers (read concurrently: one small read each)."""
    from .reader import file_rows

    def rows(f: LakeFile) -> LakeFile:
        try:
            return replace(f, rows=file_rows(lake, f.path))
        except FileNotFoundError:  # deleted since listed (a recovery): counts as nothing
            return replace(f, rows=0, bytes=0)

    if not files:
        return []
    with ThreadPoolExecutor(min(_FOOTER_READERS, len(files))) as pool:
        return list(pool.map(rows, files))


# ---------------------------------------------------------------------------------------------- status


def collect_status(config: Config, lake: Lake | None = None) -> StatusReport:
    """Read Kafka (log offsets, the group) and the lake (manifest or files); change nothing anywhere."""
    with kafka_admin.inspection_consumer(config) as consumer:
        tps = kafka_admin.topic_partitions(consumer, config.kafka.topics, ", ".join(config.kafka.bootstrap_servers))
        bounds = kafka_admin.log_offsets(consumer, tps)
    group = kafka_admin.describe_group(config)
    committed = kafka_admin.committed_offsets(config, tps)
    lake = lake or Lake(config.lake.path, config.lake.storage_options)
    holders = {tp: f"{m.client_id}@{m.host}" for m in group.members for tp in m.partitions}

    partitions = []
    store = offset_store(config, lake)
    if store.names_files or config.lake.format == "delta":
        if store.names_files:
            positions = store.positions(tps)
        else:  # a Delta table under the group's offsets: the table names the files, the group holds the position
            table = open_table(config)
            named = table.files_by_partition() if table.exists() else {}
            positions = {tp: Position(committed.get(tp), named.get(tp, {})) for tp in tps}
        for tp in tps:
            position = positions[tp]
            entries = (position.files or {}).values()
            data = [e for e in entries if not is_dead_letter(e)]
            own = position.next_offset if store.names_files else None
            partitions.append(
                _row(tp, bounds[tp], committed.get(tp), own, position.next_offset, holders.get(tp))
                | {"files": len(data), "rows": sum(int(e.get("rows", 0)) for e in data)}
                | {"bytes": sum(int(e.get("bytes", 0)) for e in data), "dead_letters": dead_letters_in_state(position)}
                | {"last_commit_at": position.committed_at}
            )
    else:
        found = lake_files(lake, config.kafka.topics)
        counted = with_rows(lake, [f for tp in tps for f in found.get(tp, [])])
        by_tp: dict[TopicPartition, list[LakeFile]] = {}
        for f in counted:
            by_tp.setdefault((f.topic, f.partition), []).append(f)
        dead = count_dead_letters(lake, config.kafka.topics)
        for tp in tps:
            files = by_tp.get(tp, [])
            partitions.append(
                _row(tp, bounds[tp], committed.get(tp), None, committed.get(tp), holders.get(tp))
                | {"files": len(files), "rows": sum(f.rows or 0 for f in files), "bytes": sum(f.bytes for f in files)}
                | {"dead_letters": dead.get(tp, 0), "last_commit_at": None}
            )
    if config.lake.format == "delta":
        from .tableops import gc_plan

        garbage = gc_plan(config, lake, parse_duration(gc.DEFAULT_RETAIN))
    else:
        garbage = gc.plan(config, lake, parse_duration(gc.DEFAULT_RETAIN))
    return StatusReport(
        pipeline=config.pipeline,
        semantics=config.semantics,
        group=group,
        lake=lake.display(),
        partitions=[PartitionStatus(**row) for row in partitions],
        gc=garbage.summary(),
        store_column=store.column if store.names_files else None,
    )


def _row(
    tp: TopicPartition,
    bounds: tuple[int, int],
    committed: int | None,
    manifest: int | None,
    position: int | None,
    holder: str | None,
) -> dict[str, Any]:
    start, end = bounds
    return {
        "topic": tp[0],
        "partition": tp[1],
        "log_start_offset": start,
        "log_end_offset": end,
        "committed_offset": committed,
        "manifest_offset": manifest,
        # The position may trail the log start (retention deleted records never read): those are behind too,
        # but unreachable; the lag counts what is still there to read.
        "lag": None if position is None else max(0, end - max(position, start)),
        "assigned_to": holder,
    }


# ---------------------------------------------------------------------------------------------- display


def render(report: StatusReport) -> list[Any]:
    """The report as rich renderables: a heading, the group, the partitions table."""
    from rich.table import Table
    from rich.text import Text

    group = report.group
    if group.members:
        running = f"{len(group.members)} member(s): a `kingest run` is active"
    else:
        running = "no active member: no `kingest run` is consuming"
    heading = Text(
        f"pipeline {report.pipeline} ({report.semantics}) -> {report.lake}\n"
        f"group {group.group_id}: {group.state}, {running}"
    )
    out: list[Any] = [heading]
    if group.members:
        members = Table("client id", "host", "member id", "partitions", box=None, pad_edge=False)
        for m in group.members:
            members.add_row(m.client_id, m.host, m.member_id, _ranges(m.partitions))
        out.append(members)

    store = report.store_column  # the position that counts, beside the group's, and when the store last changed
    table = Table(title=None, show_footer=True)
    totals = report.to_json()["totals"]
    table.add_column("topic", footer="total")
    table.add_column("partition", justify="right")
    table.add_column("log start", justify="right")
    table.add_column("log end", justify="right")
    table.add_column("committed", justify="right")
    if store:
        table.add_column(store, justify="right")
    table.add_column("lag", justify="right", footer=f"{totals['lag']:,}")
    table.add_column("files", justify="right", footer=f"{totals['files']:,}")
    table.add_column("rows", justify="right", footer=f"{totals['rows']:,}")
    table.add_column("bytes", justify="right", footer=human_size(totals["bytes"]))
    dead_letters = totals["dead_letters"] > 0
    if dead_letters:
        table.add_column("dead letters", justify="right", footer=f"{totals['dead_letters']:,}")
    if store:
        table.add_column("last commit")
    if group.members:
        table.add_column("consumed by")
    for p in report.partitions:
        cells = [
            p.topic,
            str(p.partition),
            f"{p.log_start_offset:,}",
            f"{p.log_end_offset:,}",
            _opt(p.committed_offset),
        ]
        if store:
            cells.append(_opt(p.manifest_offset))
        cells += [_opt(p.lag), f"{p.files:,}", f"{p.rows:,}", human_size(p.bytes)]
        if dead_letters:
            cells.append(f"{p.dead_letters:,}")
        if store:
            cells.append(p.last_commit_at or "-")
        if group.members:
            cells.append(p.assigned_to or "-")
        table.add_row(*cells)
    out.append(table)
    if report.gc and (report.gc["files"] or report.gc["later_files"]):
        g = report.gc
        line = f"gc: {g['files']:,} file(s), {human_size(g['bytes'])} to reclaim now (`kingest gc`)"
        if g["later_files"]:
            line += f"; {g['later_files']:,} more ({human_size(g['later_bytes'])}) once older than {gc.DEFAULT_RETAIN}"
        out.append(Text(line))
    return out


def _opt(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ranges(tps: Iterable[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in tps:
        by_topic.setdefault(topic, []).append(partition)
    return ", ".join(f"{t}[{','.join(map(str, sorted(ps)))}]" for t, ps in sorted(by_topic.items()))
