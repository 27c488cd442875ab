"""Arrow tables of decoded records as Parquet files, named and placed per kingest/layout.py.

One file per output partition of a batch (``lake.partition_by``: none, date, or date and hour of the record
timestamps), zstd by default (a small file uncompressed: see file_codec), one row group unless huge. Every file
carries its Arrow schema and its lineage (topic, partition, offsets, rows, pipeline, semantics, kind) in the
Parquet footer's key-value metadata.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .deadletter import DEAD_LETTER_KIND
from .layout import dead_letter_folder, file_name, partition_folder, time_folder

ROW_GROUP_ROWS = 1_000_000  # one row group per file unless the batch is huge


def file_codec(table: pa.Table, compression: str, min_bytes: int) -> str | None:
    """The codec of a file of ``table`` (``lake.compression``, ``lake.compress_min_bytes``): none for a table of
    fewer than ``min_bytes`` bytes in memory (the rows it holds, a slice counting its own), whose pages are a few
    hundred bytes each: a codec's fixed cost a page (zstd: ~10 us, two pages a column) then outweighs what it saves."""
    if compression == "none" or (min_bytes and table.nbytes < min_bytes):
        return None
    return compression


@dataclass(frozen=True)
class EncodedFile:
    """One Parquet file ready to write: its path relative to the lake root and its bytes."""

    path: str
    data: bytes
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int
    kind: str = "data"  # or DEAD_LETTER_KIND
    # lake.format: delta: the decoded records, staged at save time against the table's schema (``data`` is empty)
    table: pa.Table | None = field(default=None, repr=False, compare=False)

    def entry(self) -> dict[str, Any]:
        """How the offsets manifest names this file."""
        entry: dict[str, Any] = {
            "path": self.path,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "rows": self.rows,
            "bytes": len(self.data),
        }
        if self.kind != "data":
            entry["kind"] = self.kind
        return entry


class ParquetFiles:
    """Writes the Parquet files of one pipeline (in memory: the pipeline puts their bytes in the lake)."""

    def __init__(
        self,
        *,
        compression: str = "zstd",
        compress_min_bytes: int = 0,
        partition_by: Sequence[str] = (),
        lineage: Mapping[str, str] | None = None,
        file_tag: str | None = None,
    ) -> None:
        self.compression = compression
        self.compress_min_bytes = compress_min_bytes
        self.partition_by = tuple(partition_by)
        self.lineage = dict(lineage or {})
        self.file_tag = file_tag
        # exactly-once: a data file name is used once, ever (recovery relies on it: see ManifestStore.recover).
        # The writer tag alone repeats when one writer cuts the same offsets again (after a rewind).
        self._file_serial = itertools.count()

    def _tag(self) -> str | None:
        return f"{self.file_tag}-{next(self._file_serial)}" if self.file_tag else None

    def data_files(self, topic: str, partition: int, table: pa.Table) -> list[EncodedFile]:
        """A table of records of one topic-partition as data files, one per output partition (none if empty)."""
        if table.num_rows == 0:
            return []
        if not self.partition_by:
            return [self._file(partition_folder(topic, partition), topic, partition, table)]
        stamps = table.column("kafka_timestamp")
        keys = (
            pc.strftime(stamps, format="%Y-%m-%d")
            if self.partition_by == ("date",)
            else pc.strftime(stamps, format="%Y-%m-%d/%H")
        )
        files = []
        for key in pc.unique(keys).to_pylist():
            part = table.filter(pc.equal(keys, key))
            date, _, hour = key.partition("/")
            files.append(self._file(time_folder(topic, date, hour or None), topic, partition, part))
        return files

    def table_file(self, topic: str, partition: int, table: pa.Table) -> list[EncodedFile]:
        """lake.format: delta: the records as they are, to be staged by the table store when saved (its types
        and file names are the table's, known only then)."""
        if table.num_rows == 0:
            return []
        offsets = table.column("kafka_offset")
        first, last = pc.min(offsets).as_py(), pc.max(offsets).as_py()
        return [EncodedFile("", b"", topic, partition, first, last, table.num_rows, table=table)]

    def dead_letter_file(self, topic: str, partition: int, table: pa.Table) -> EncodedFile:
        """A table of bad records (see decode.dead_letter_table) as a file under ``_dead_letters/``."""
        return self._file(dead_letter_folder(topic, partition), topic, partition, table, kind=DEAD_LETTER_KIND)

    def _file(self, folder: str, topic: str, partition: int, table: pa.Table, kind: str = "data") -> EncodedFile:
        offsets = table.column("kafka_offset")
        first, last = pc.min(offsets).as_py(), pc.max(offsets).as_py()
        metadata = {
            "kingest.version": __version__,
            "kingest.kind": kind,
            "kingest.topic": topic,
            "kingest.partition": str(partition),
            "kingest.first_offset": str(first),
            "kingest.last_offset": str(last),
            "kingest.rows": str(table.num_rows),
            **self.lineage,
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        # Arrow's own buffer, not io.BytesIO: pyarrow writes a Python file object holding the GIL, once per page,
        # and this thread would then wait for the polling thread at every write (3x slower while it polls).
        sink = pa.BufferOutputStream()
        codec = file_codec(table, self.compression, self.compress_min_bytes)
        pq.write_table(table, sink, compression=codec, row_group_size=ROW_GROUP_ROWS)
        return EncodedFile(
            path=f"{folder}/{file_name(topic, partition, first, last, self._tag())}",
            data=sink.getvalue().to_pybytes(),
            topic=topic,
            partition=partition,
            first_offset=first,
            last_offset=last,
            rows=table.num_rows,
            kind=kind,
        )
