"""Reading the lake back (for verify and status): the one module besides the encoder that imports pyarrow.

Only the offset columns are read, so auditing millions of records reads a small part of each file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import layout
from .lake import Lake
from .types import TopicPartition

if TYPE_CHECKING:
    from .manifest import ManifestStore

log = logging.getLogger("kingest.reader")

OFFSET_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset"]
_READERS = 16  # footers read at once


def visible_files(lake: Lake) -> dict[str, int]:
    """Parquet files a reader of the dataset folder sees (no path part starting with `_` or `.`), with sizes."""
    return {
        rel: size
        for rel, size in lake.find().items()
        if rel.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in rel.split("/"))
    }


def read_offsets(lake: Lake, paths: Iterable[str]) -> pa.Table:
    """The (kafka_topic, kafka_partition, kafka_offset) of every row of the given lake files."""
    full = [lake.full(p) for p in paths]
    if not full:
        return pa.table(
            {
                "kafka_topic": pa.array([], pa.string()),
                "kafka_partition": pa.array([], pa.int32()),
                "kafka_offset": pa.array([], pa.int64()),
            }
        )
    dataset = ds.dataset(full, filesystem=lake.fs, format="parquet")
    return dataset.to_table(columns=OFFSET_COLUMNS)


def offsets_by_partition(table: pa.Table) -> dict[tuple[str, int], pa.Array]:
    """Split an offsets table per topic-partition: each value is the sorted int64 offsets (duplicates kept)."""
    out: dict[tuple[str, int], pa.Array] = {}
    if table.num_rows == 0:
        return out
    keys = table.select(["kafka_topic", "kafka_partition"]).group_by(["kafka_topic", "kafka_partition"]).aggregate([])
    for topic, partition in zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True):
        mask = pc.and_(
            pc.equal(table.column("kafka_topic"), topic), pc.equal(table.column("kafka_partition"), partition)
        )
        offsets = table.filter(mask).column("kafka_offset").combine_chunks()
        out[(topic, partition)] = pc.array_take(offsets, pc.sort_indices(offsets))
    return out


def file_rows(lake: Lake, path: str) -> int:
    """Row count from a Parquet footer (one small read)."""
    with lake.fs.open(lake.full(path), "rb") as handle:
        return int(pq.ParquetFile(handle).metadata.num_rows)


def footer_lineage(lake: Lake, paths: Iterable[str]) -> dict[str, dict[str, str]]:
    """The ``kingest.*`` keys of each file's Parquet footer (pipeline, semantics, offsets...), read side by side;
    a file that is gone or not Parquet is left out."""

    def one(path: str) -> tuple[str, dict[str, str] | None]:
        try:
            with lake.fs.open(lake.full(path), "rb") as handle:
                meta = pq.ParquetFile(handle).schema_arrow.metadata or {}
        except (OSError, ValueError, pa.ArrowException):
            return path, None
        return path, {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"kingest.")}

    paths = list(paths)
    if not paths:
        return {}
    with ThreadPoolExecutor(min(16, len(paths))) as pool:
        return {path: meta for path, meta in pool.map(one, paths) if meta is not None}


def read_rows_before(lake: Lake, path: str, offset: int) -> pa.Table:
    """Every column of one lake file, keeping the rows whose ``kafka_offset`` is below ``offset`` (rewind
    rewrites the file that straddles its target with these). The file's own schema, metadata included."""
    with lake.fs.open(lake.full(path), "rb") as handle:
        table = pq.ParquetFile(handle).read()
    return table.filter(pc.less(table.column("kafka_offset"), offset))


def read_merged(lake: Lake, paths: Iterable[str]) -> pa.Table:
    """Every row of several lake files of one partition as one table in offset order (kingest compact), with
    every file's columns: a column a file lacks is null there, numbers widen as the encoder widens them. The
    files' own metadata is dropped (the merged file gets its own)."""
    tables = []
    for path in paths:
        with lake.fs.open(lake.full(path), "rb") as handle:
            tables.append(pq.ParquetFile(handle).read().replace_schema_metadata(None))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.take(pc.sort_indices(table, sort_keys=[("kafka_offset", "ascending")]))


def lake_schemas(lake: Lake, topics: Iterable[str], manifests: ManifestStore | None = None) -> dict[str, pa.Schema]:
    """The columns each topic's data files have now, for a run to start from: per partition, the Arrow schema
    in the footer of its newest data file (highest offsets; under exactly-once, of the files the offsets
    manifest names, where it names any), unified per topic as the encoder unifies batches. Reads the footers
    only (one small read per partition, concurrently). A topic with no data file yet is left out."""
    wanted = set(topics)
    newest: dict[TopicPartition, tuple[int, str]] = {}
    if manifests is not None:
        # An uncommitted file (a crashed attempt's) is not part of the lake: its schema must not count.
        tps = [tp for tp in manifests.partitions() if tp[0] in wanted]
        with ThreadPoolExecutor(max(1, min(_READERS, len(tps)))) as pool:
            states = list(pool.map(lambda tp: manifests.load(*tp), tps))
        for state in states:
            for path, entry in state.files.items():
                if entry.get("kind", "data") == "data":
                    newest[state.tp] = max(newest.get(state.tp, (-1, "")), (int(entry["last_offset"]), path))
    named = set(newest)
    for rel in visible_files(lake):
        name = layout.data_file(rel)
        if name is not None and name.topic in wanted and name.tp not in named:
            newest[name.tp] = max(newest.get(name.tp, (-1, "")), (name.last_offset, rel))

    def schema(rel: str) -> pa.Schema | None:
        try:
            with lake.fs.open(lake.full(rel), "rb") as handle:
                return pq.ParquetFile(handle).schema_arrow
        except FileNotFoundError:  # deleted since listed (a recovery)
            return None

    tps = sorted(newest)
    if not tps:
        return {}
    with ThreadPoolExecutor(min(_READERS, len(tps))) as pool:
        found = list(pool.map(schema, [newest[tp][1] for tp in tps]))
    out: dict[str, pa.Schema] = {}
    for tp, s in zip(tps, found, strict=True):
        if s is None:
            continue
        if tp[0] not in out:
            out[tp[0]] = s
            continue
        try:
            out[tp[0]] = pa.unify_schemas([out[tp[0]], s], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            # A lake written before runs started from its schema may already disagree with itself.
            log.warning(
                "%s: the columns of %s disagree with the topic's other files (%s); not learned",
                tp[0],
                newest[tp][1],
                exc,
            )
    return out
