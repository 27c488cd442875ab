"""Reading the lake back (for verify and status): the one module besides the encoder that imports pyarrow.

Only the offset columns are read, so auditing millions of records reads a small part of each file.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .lake import Lake

OFFSET_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset"]


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


def read_rows_before(lake: Lake, path: str, offset: int) -> pa.Table:
    """Every column of one lake file, keeping the rows whose ``kafka_offset`` is below ``offset`` (rewind
    rewrites the file that straddles its target with these). The file's own schema, metadata included."""
    with lake.fs.open(lake.full(path), "rb") as handle:
        table = pq.ParquetFile(handle).read()
    return table.filter(pc.less(table.column("kafka_offset"), offset))
