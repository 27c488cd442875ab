"""`kingest verify`: prove the delivery guarantee by auditing the lake against the topic.

A record's identity is (topic, partition, offset). For every partition of the pipeline's topics the audit
gathers, in this order (so that a pipeline running meanwhile cannot make a record look missing):

1. ``committed``: how far the pipeline has saved its progress. Exactly-once: the offsets manifest's
   ``next_offset``; the other semantics: the consumer group's committed offset. None: nothing saved yet.
2. ``present``: the offsets in the lake, read from the offset columns only. Exactly-once: the files the
   manifest names (a named file that is gone is reported); the other semantics: every Parquet file a reader of
   the dataset folder sees.
3. ``expected``: the offsets Kafka holds in [log start, log end), read with the pipeline's isolation level.
   Transaction markers, aborted records (under read_committed) and compacted records are absent: a gap in the
   offsets is not a loss.

and classifies:

- ``missing``: expected offsets below ``committed`` that are not in the lake. Offsets at or after it have not
  been consumed yet (``not_consumed``, the lag): they are not counted as missing.
- ``duplicated``: offsets present more than once (``extra_rows``: the copies beyond the first).
- ``unexpected``: offsets in the lake that the topic does not hold (at or above its log start): an aborted
  transaction's records, records of a deleted and re-created topic, records compaction removed since.
- ``expired``: offsets below the log start (retention deleted them from Kafka). Neither expected nor wrong.

The guarantee holds when: at-most-once, nothing duplicated; at-least-once, nothing missing; exactly-once,
neither, and every file the manifest names exists. Unexpected offsets break every guarantee.

With ``kafka.auto_offset_reset: latest`` a pipeline never meant to read what preceded its start: the audit of
a partition then starts at the lowest offset in the lake.

The arithmetic is Arrow compute over whole offset arrays (sort, unique, value counts, membership, run
boundaries), never a Python loop per offset: classifying a million offsets takes well under a second.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import kafka_admin, layout, reader
from .config import Config
from .deadletter import dead_letter_files, is_dead_letter
from .errors import KingestError, StateError
from .lake import Lake
from .offsets import TableOffsets, offset_store, open_table
from .types import TopicPartition

log = logging.getLogger("kingest.verify")

_EMPTY = pa.array([], pa.int64())
RANGES_LIMIT = 1000  # ranges listed per partition and kind; the counts are always complete

GUARANTEES = {
    "at-most-once": "no record duplicated",
    "at-least-once": "no record missing",
    "exactly-once": "no record missing, none duplicated",
}


@dataclass
class Offsets:
    """A set of offsets: how many, and as ranges of consecutive offsets [first, last] (inclusive)."""

    count: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False  # more ranges than RANGES_LIMIT: only the first ones are listed

    def describe(self, limit: int = 5) -> str:
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges[:limit])
        more = len(self.ranges) - limit
        if more > 0 or self.truncated:
            shown += ", ..." if self.truncated else f", and {more} more range(s)"
        return shown


@dataclass
class PartitionAudit:
    topic: str
    partition: int
    log_start: int  # Kafka's first offset (retention)
    log_end: int  # Kafka's log end offset (under read_committed: the last stable offset)
    committed: int | None  # where the pipeline resumes (manifest or consumer group); None: nothing saved
    audited_from: int  # the first offset the audit holds the lake to (the log start, unless `latest`)
    expected: int  # records Kafka holds in [log_start, log_end)
    audited: int  # of those, the ones below `committed`, which the lake must hold (per the semantics)
    rows: int  # rows of the lake's data files for this partition (copies counted)
    dead_letters: int  # rows of its dead-letter files (delivered, to the dead-letter folder)
    distinct: int  # distinct offsets in the lake
    missing: Offsets
    duplicated: Offsets
    extra_rows: int  # rows beyond the first copy of each duplicated offset
    unexpected: Offsets
    expired: int  # offsets in the lake below the log start
    not_consumed: int  # records at or after `committed`: not consumed (or not saved) yet, not missing

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass
class Report:
    pipeline: str
    semantics: str
    lake: str
    isolation_level: str
    source: str  # "manifest" (exactly-once), "Delta table" (lake.format: delta) or "folder"
    partitions: list[PartitionAudit]
    files_read: int
    missing_files: list[str]  # exactly-once: named by the manifest, absent from the lake
    orphan_files: list[str]  # exactly-once: visible in the folder, not named by the manifest
    skip_bad_records: bool = False  # records.on_error: skip (skipped records are nowhere in the lake)
    seconds: float = 0.0

    @property
    def guarantee(self) -> str:
        return GUARANTEES[self.semantics]

    def total(self, name: str) -> int:
        values = [getattr(p, name) for p in self.partitions]
        return sum(v.count if isinstance(v, Offsets) else v for v in values)

    @property
    def violations(self) -> list[str]:
        """What breaks the guarantee, one sentence each (empty: the guarantee holds)."""
        out = []
        if self.semantics in ("at-least-once", "exactly-once"):
            out += [
                f"{p.name}: {p.missing.count} missing ({p.missing.describe()})"
                for p in self.partitions
                if p.missing.count
            ]
        if self.semantics in ("at-most-once", "exactly-once"):
            out += [
                f"{p.name}: {p.duplicated.count} duplicated ({p.duplicated.describe()})"
                for p in self.partitions
                if p.duplicated.count
            ]
        out += [
            f"{p.name}: {p.unexpected.count} offset(s) in the lake that the topic does not hold "
            f"({p.unexpected.describe()})"
            for p in self.partitions
            if p.unexpected.count
        ]
        if self.missing_files:
            out.append(
                f"{len(self.missing_files)} file(s) named by the offsets manifest are gone from the lake: "
                + ", ".join(self.missing_files[:3])
                + (", ..." if len(self.missing_files) > 3 else "")
            )
        return out

    @property
    def holds(self) -> bool:
        return not self.violations

    @property
    def notes(self) -> list[str]:
        """Facts that are not violations but that a reader could take for one."""
        out = []
        for p in self.partitions:
            if p.not_consumed:
                where = "nothing saved yet" if p.committed is None else f"saved up to offset {p.committed}"
                out.append(
                    f"{p.name}: the pipeline has not consumed up to {p.log_end} yet ({where}): "
                    f"{p.not_consumed} record(s) at or after it are lag, not counted as missing"
                )
            if p.missing.count and self.semantics == "at-most-once":
                out.append(f"{p.name}: {p.missing.count} missing, which at-most-once allows ({p.missing.describe()})")
            if p.duplicated.count and self.semantics == "at-least-once":
                out.append(
                    f"{p.name}: {p.duplicated.count} duplicated, which at-least-once allows ({p.duplicated.describe()})"
                )
            if p.expired:
                out.append(f"{p.name}: {p.expired} offset(s) in the lake are below the log start (expired in Kafka)")
        if self.total("dead_letters"):
            out.append(
                f"{self.total('dead_letters')} undecodable record(s) are in the dead-letter folder (_dead_letters/): "
                "delivered there, so not missing"
            )
        if self.skip_bad_records and self.total("missing"):
            out.append(
                "records.on_error is skip: records skipped as undecodable are in neither the data nor the dead "
                "letters, so they count as missing (see the run's log for their offsets)"
            )
        if self.orphan_files:
            out.append(
                f"{len(self.orphan_files)} file(s) in the dataset folder are not named by the offsets manifest "
                "(left by an interrupted run): readers of the folder see their rows until the next `kingest run` "
                f"recovers the partition (first: {self.orphan_files[0]})"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        parts = []
        for p in self.partitions:
            entry = asdict(p)
            for kind in ("missing", "duplicated", "unexpected"):
                entry[kind] = {
                    "count": getattr(p, kind).count,
                    "ranges": [list(r) for r in getattr(p, kind).ranges],
                    "ranges_truncated": getattr(p, kind).truncated,
                }
            parts.append(entry)
        return {
            "pipeline": self.pipeline,
            "semantics": self.semantics,
            "guarantee": self.guarantee,
            "holds": self.holds,
            "lake": self.lake,
            "isolation_level": self.isolation_level,
            "source": self.source,
            "totals": {
                "expected": self.total("expected"),
                "audited": self.total("audited"),
                "rows": self.total("rows"),
                "dead_letters": self.total("dead_letters"),
                "missing": self.total("missing"),
                "duplicated": self.total("duplicated"),
                "extra_rows": self.total("extra_rows"),
                "unexpected": self.total("unexpected"),
                "expired": self.total("expired"),
                "not_consumed": self.total("not_consumed"),
            },
            "files_read": self.files_read,
            "missing_files": self.missing_files,
            "orphan_files": self.orphan_files,
            "partitions": parts,
            "violations": self.violations,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------------------------------------- the audit


def audit(config: Config, *, lake: Lake | None = None) -> Report:
    """Audit the pipeline's lake against its topics (see the module docstring)."""
    import time

    started = time.monotonic()
    lake = lake or Lake(config.lake.path, config.lake.storage_options, retry_seconds=30.0)
    # fsspec shares filesystem instances, with their listing caches, across a process: an audit must see the
    # store as it is now, not as an earlier listing in this process saw it.
    lake.fs.invalidate_cache()
    store = offset_store(config, lake)
    where = ", ".join(config.kafka.bootstrap_servers)
    try:
        with kafka_admin.inspection_consumer(config) as consumer:
            tps = kafka_admin.topic_partitions(consumer, config.kafka.topics, where)
            # 1. How far the pipeline saved its progress, read before the lake (see the module docstring).
            missing_files: list[str] = []
            orphans: list[str] = []
            table = None
            if config.lake.format == "delta":
                table = store.table if isinstance(store, TableOffsets) else open_table(config)
            with table.pinned() if table is not None else contextlib.nullcontext():
                # (a Delta table: its txns, files and rows read at one version, the one the positions come from)
                positions = store.positions(tps)
                committed = {tp: position.next_offset for tp, position in positions.items()}
                if table is not None:
                    # 2. The table's live rows; a file its log names that storage lacks is a missing file.
                    paths, letter_paths = [], []
                    in_table = table.files_by_partition() if table.exists() else {}
                    in_table = {tp: files for tp, files in in_table.items() if tp[0] in config.kafka.topics}
                    stored = set(lake.find("")) if in_table else set()
                    missing_files = sorted(p for files in in_table.values() for p in files if p not in stored)
                    present = table.offsets_in_files(
                        {tp: [p for p in files if p in stored] for tp, files in in_table.items()}
                    )
                    files_read = sum(len(files) for files in in_table.values()) - len(missing_files)
                    dead_letters = {}
            if table is None and store.names_files:
                entries = {path: entry for p in positions.values() for path, entry in (p.files or {}).items()}
                named = [p for p, entry in entries.items() if not is_dead_letter(entry)]
                named_letters = [p for p, entry in entries.items() if is_dead_letter(entry)]
                # 2. The lake: the files the manifest names (and what else a folder reader would see).
                visible = _visible(lake, config.kafka.topics)
                letters = _dead_letters(lake, config.kafka.topics)
                missing_files = sorted(
                    [p for p in named if p not in visible] + [p for p in named_letters if p not in letters]
                )
                paths = [p for p in named if p in visible]
                letter_paths = [p for p in named_letters if p in letters]
                orphans = sorted(set(visible) - set(named))
            elif table is None:
                paths = sorted(_visible(lake, config.kafka.topics))
                letter_paths = sorted(_dead_letters(lake, config.kafka.topics))
            if table is None:
                present = _read_offsets(lake, paths)
                dead_letters = _read_offsets(lake, letter_paths)
                files_read = len(paths) + len(letter_paths)
            # 3. What Kafka holds, now (its log end is at or past every committed offset read above).
            bounds = kafka_admin.log_offsets(consumer, tps)
            expected = kafka_admin.scan_offsets(consumer, bounds)
    except KingestError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] == "kafka":
            raise kafka_admin.setup_error(exc, config) from None
        raise

    latest = config.kafka.auto_offset_reset == "latest"
    audits = []
    for tp in sorted(set(tps) | {tp for tp in [*present, *dead_letters] if tp[0] in config.kafka.topics}):
        start, end = bounds.get(tp, (0, 0))
        audits.append(
            audit_partition(
                tp,
                start,
                end,
                committed.get(tp),
                pa.array(expected.get(tp, ()), pa.int64()),
                present.get(tp, _EMPTY),
                dead_letters.get(tp, _EMPTY),
                from_lake_start=latest,
            )
        )
    return Report(
        pipeline=config.pipeline,
        semantics=config.semantics,
        lake=lake.display(),
        isolation_level=config.kafka.isolation_level,
        source="Delta table" if config.lake.format == "delta" else "manifest" if store.names_files else "folder",
        partitions=audits,
        files_read=files_read,
        missing_files=missing_files,
        orphan_files=orphans,
        skip_bad_records=config.records.on_error == "skip",
        seconds=time.monotonic() - started,
    )


def audit_partition(
    tp: TopicPartition,
    log_start: int,
    log_end: int,
    committed: int | None,
    expected: pa.Array,
    present: pa.Array,
    dead_letters: pa.Array = _EMPTY,
    *,
    from_lake_start: bool = False,
) -> PartitionAudit:
    """Classify one partition's offsets. ``expected``: Kafka's offsets; ``present``: the offsets of the lake's
    data files, ``dead_letters`` those of its dead-letter files (any order, copies kept). A dead letter is
    delivered (to the dead-letter folder): the classification counts both together."""
    expected = _sorted(pc.unique(expected.cast(pa.int64())))
    rows = len(present)
    present = pa.concat_arrays([present.cast(pa.int64()), dead_letters.cast(pa.int64())])
    counted = pc.value_counts(present)
    order = pc.sort_indices(counted.field(0))
    distinct, copies = pc.take(counted.field(0), order), pc.take(counted.field(1), order)

    audited_from = log_start
    if from_lake_start:
        audited_from = distinct[0].as_py() if len(distinct) else (committed if committed is not None else log_end)
    # Nothing saved yet: nothing is owed to the lake, everything Kafka holds is lag.
    position = committed if committed is not None else audited_from
    owed = expected.filter(pc.and_(pc.greater_equal(expected, audited_from), pc.less(expected, position)))
    missing_mask = pc.invert(pc.is_in(owed, value_set=distinct))

    # One ordered universe of every offset seen on either side, so that a run of duplicated or unexpected
    # offsets is broken only by an offset that is fine, not by a gap that neither side has.
    universe = _sorted(pc.unique(pa.concat_arrays([expected, distinct])))
    counts = pc.fill_null(pc.take(copies, pc.index_in(universe, value_set=distinct)), 0)
    unexpected_mask = pc.and_(
        pc.and_(pc.greater(counts, 0), pc.invert(pc.is_in(universe, value_set=expected))),
        pc.greater_equal(universe, log_start),
    )
    extra = pc.sum(pc.subtract(copies, 1)).as_py() if len(copies) else 0

    return PartitionAudit(
        topic=tp[0],
        partition=tp[1],
        log_start=log_start,
        log_end=log_end,
        committed=committed,
        audited_from=audited_from,
        expected=len(expected),
        audited=len(owed),
        rows=rows,
        dead_letters=len(dead_letters),
        distinct=len(distinct),
        missing=_runs(owed, missing_mask),
        duplicated=_runs(universe, pc.greater(counts, 1)),
        extra_rows=int(extra or 0),
        unexpected=_runs(universe, unexpected_mask),
        expired=_count(pc.less(distinct, log_start)),
        not_consumed=_count(pc.greater_equal(expected, max(position, audited_from))),
    )


def _sorted(values: pa.Array) -> pa.Array:
    return pc.take(values, pc.sort_indices(values))


def _count(mask: pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _runs(universe: pa.Array, mask: pa.Array, limit: int = RANGES_LIMIT) -> Offsets:
    """The maximal runs of ``mask`` over the sorted ``universe``, as [first, last] offset ranges."""
    count = _count(mask)
    if not count:
        return Offsets()
    mask = pc.fill_null(mask, False)
    before = pa.concat_arrays([pa.array([False]), mask.slice(0, len(mask) - 1)])
    after = pa.concat_arrays([mask.slice(1), pa.array([False])])
    starts = pc.indices_nonzero(pc.and_(mask, pc.invert(before)))
    ends = pc.indices_nonzero(pc.and_(mask, pc.invert(after)))
    firsts = pc.take(universe, starts.slice(0, limit)).to_pylist()
    lasts = pc.take(universe, ends.slice(0, limit)).to_pylist()
    return Offsets(count, list(zip(firsts, lasts, strict=True)), truncated=len(starts) > limit)


def _visible(lake: Lake, topics: Iterable[str]) -> dict[str, int]:
    """The Parquet files of the topics that a reader of the dataset folder sees (``topic=<t>/...``)."""
    folders = tuple(f"{layout.topic_folder(t)}/" for t in topics)
    return {rel: size for rel, size in reader.visible_files(lake).items() if rel.startswith(folders)}


def _dead_letters(lake: Lake, topics: Iterable[str]) -> set[str]:
    return {path for paths in dead_letter_files(lake, topics).values() for path in paths}


def _read_offsets(lake: Lake, paths: list[str]) -> dict[TopicPartition, pa.Array]:
    try:
        table = reader.read_offsets(lake, paths)
        return dict(reader.offsets_by_partition(table))
    except (OSError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StateError(
            f"cannot read the offset columns of the lake at {lake.display()}: {text}",
            "A Parquet file of the dataset is unreadable or not written by kingest: move it out of the folder.",
        ) from None


# ---------------------------------------------------------------------------------------------- for people


def render(report: Report) -> Any:
    """The report as rich renderables: a table per partition, the ranges, the notes and the verdict."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    where = {"manifest": "files named by the offsets manifest", "Delta table": "the Delta table's live rows"}.get(
        report.source, "the dataset folder"
    )
    table = Table(
        title=f"kingest verify: {report.pipeline} ({report.semantics}), {report.lake}, {where}",
        title_justify="left",
    )
    table.add_column("partition", no_wrap=True)
    for column in ("in Kafka", "committed", "in lake", "missing", "duplicated", "unexpected", "lag"):
        table.add_column(column, justify="right")
    for p in report.partitions:
        table.add_row(
            p.name,
            f"{p.expected:,}",
            "-" if p.committed is None else f"{p.committed:,}",
            f"{p.rows:,}",
            _cell(p.missing.count, report.semantics != "at-most-once"),
            _cell(p.duplicated.count, report.semantics != "at-least-once"),
            _cell(p.unexpected.count, True),
            f"{p.not_consumed:,}",
        )
    lines: list[Any] = [table]
    for p in report.partitions:
        for kind in ("missing", "duplicated", "unexpected"):
            offsets: Offsets = getattr(p, kind)
            if offsets.count:
                lines.append(Text(f"  {p.name} {kind}: {offsets.describe(limit=10)}"))
    lines += [Text(f"  note: {note}", style="dim") for note in report.notes]
    if report.holds:
        verdict = Text(f"{report.semantics} holds: {report.guarantee}", style="bold green")
    else:
        verdict = Text(f"{report.semantics} VIOLATED ({report.guarantee} was promised):", style="bold red")
        for violation in report.violations:
            verdict.append(f"\n  {violation}", style="red")
    lines.append(verdict)
    return Group(*lines)


def _cell(count: int, counts_against: bool) -> str:
    if not count:
        return "0"
    return f"[red]{count:,}[/]" if counts_against else f"[yellow]{count:,}[/]"
