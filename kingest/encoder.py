"""Turn a Batch of raw records into Parquet files: the one module that imports pyarrow for writing.

Decoding happens per batch, never per record: for json, the batch's values are joined with newlines and
read by pyarrow's JSON reader in one call. Only when that fails does the slow path look at records one by
one, to name the bad record (topic, partition, offset) exactly.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from . import __version__
from .batcher import Batch
from .errors import BadRecord

HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
METADATA_FIELDS = [
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
    pa.field("kafka_key", pa.binary()),
    pa.field("kafka_headers", HEADERS_TYPE),
]
METADATA_NAMES = {f.name for f in METADATA_FIELDS}
DECLARED_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "date": pa.date32(),
    "binary": pa.binary(),
}
ROW_GROUP_ROWS = 1_000_000  # one row group per file unless the batch is huge
_ROW_IN_ERROR = re.compile(r"in row (\d+)")


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

    def entry(self) -> dict[str, Any]:
        """How the offsets manifest names this file."""
        return {
            "path": self.path,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "rows": self.rows,
            "bytes": len(self.data),
        }


def file_name(topic: str, partition: int, first_offset: int, last_offset: int, tag: str | None = None) -> str:
    """Zero-padded so that names sort in offset order. ``tag`` (exactly-once: the writer's id) keeps two
    writers that cut the same batch from ever writing the same name."""
    suffix = f"-{tag}" if tag else ""
    return f"{topic}-{partition}-{first_offset:020d}-{last_offset:020d}{suffix}.parquet"


class Encoder:
    """Encodes batches for one pipeline. For inferred json schemas it remembers the columns seen so far,
    so that every file of the lake agrees on each column's type (new fields become new nullable columns)."""

    def __init__(
        self,
        record_format: str,
        *,
        schema: Mapping[str, str] | None = None,
        compression: str = "zstd",
        partition_by: Sequence[str] = (),
        lineage: Mapping[str, str] | None = None,
        file_tag: str | None = None,
    ) -> None:
        self.file_tag = file_tag
        self.format = record_format
        self.declared = (
            pa.schema([pa.field(name, DECLARED_TYPES[kind]) for name, kind in schema.items()]) if schema else None
        )
        self.known: pa.Schema = self.declared or pa.schema([])
        self.compression = None if compression == "none" else compression
        self.partition_by = tuple(partition_by)
        self.lineage = dict(lineage or {})

    # -------------------------------------------------------------------------------------- decoding

    def decode(self, batch: Batch) -> pa.Table:
        """The batch as an Arrow table: metadata columns, then the value column(s). Raises BadRecord."""
        if self.format == "raw":
            value_columns = [pa.array(batch.values, pa.binary())]
            value_names = ["value"]
        elif self.format == "string":
            value_columns = [self._strings(batch)]
            value_names = ["value"]
        else:
            values = self._json(batch)
            value_columns = list(values.columns)
            value_names = values.column_names
        n = len(batch)
        metadata = [
            pa.array([batch.topic] * n, pa.string()) if n else pa.array([], pa.string()),
            pa.array([batch.partition] * n, pa.int32()),
            pa.array(batch.offsets, pa.int64()),
            pa.array(batch.timestamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            pa.array(batch.keys, pa.binary()),
            self._headers(batch.headers),
        ]
        schema = pa.schema(
            METADATA_FIELDS + [pa.field(name, col.type) for name, col in zip(value_names, value_columns, strict=True)]
        )
        return pa.Table.from_arrays(metadata + value_columns, schema=schema)

    @staticmethod
    def _headers(headers: list[Any]) -> pa.Array:
        if not any(headers):
            # The common case, no headers at all: build the empty lists without touching each record.
            offsets = pa.array([0] * (len(headers) + 1), pa.int32())
            empty = pa.array([], HEADERS_TYPE.value_type)
            return pa.ListArray.from_arrays(offsets, empty, type=HEADERS_TYPE)
        return pa.array([list(h) if h else [] for h in headers], HEADERS_TYPE)

    @staticmethod
    def _strings(batch: Batch) -> pa.Array:
        binary = pa.array(batch.values, pa.binary())
        try:
            return binary.cast(pa.string())
        except pa.ArrowInvalid:
            for offset, value in zip(batch.offsets, batch.values, strict=True):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BadRecord(batch.topic, batch.partition, offset, f"not valid UTF-8 ({exc.reason})") from None
            raise

    def _json(self, batch: Batch) -> pa.Table:
        # A tombstone (null value) becomes a row whose value columns are all null.
        values = cast(list[bytes], batch.values)
        if None in values:
            values = [b"{}" if v is None else v for v in values]
        try:
            table = self._read_json(b"\n".join(values), self.known)
            if table.num_rows != len(values):  # blank values vanish from newline-delimited JSON
                raise pa.ArrowInvalid("row count differs from record count")
            return self._remember(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return self._json_slow(batch, values)

    def _read_json(self, data: bytes, known: pa.Schema) -> pa.Table:
        declared = self.declared is not None
        parse = pa_json.ParseOptions(
            explicit_schema=known if len(known) else None,
            unexpected_field_behavior="ignore" if declared else "infer",
        )
        # One block for the whole batch, so that type inference sees all of it at once.
        read = pa_json.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
        return pa_json.read_json(io.BytesIO(data), read_options=read, parse_options=parse)

    def _json_slow(self, batch: Batch, values: list[bytes]) -> pa.Table:
        """Find what the fast path could not read: a bad record (raised), or values that only need
        re-serialising (pretty-printed JSON spanning lines), or a column whose type widens (int to float)."""
        objects = []
        for offset, value in zip(batch.offsets, values, strict=True):
            try:
                obj = json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRecord(batch.topic, batch.partition, offset, f"not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise BadRecord(
                    batch.topic, batch.partition, offset, f"a JSON {type(obj).__name__}, not an object"
                ) from None
            objects.append(obj)
        compact = b"\n".join(json.dumps(o, separators=(",", ":")).encode() for o in objects)
        try:
            return self._remember(self._read_json(compact, self.known))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            error = str(exc)
        if self.declared is None:
            try:  # infer this batch on its own, then unify with what the lake already has
                return self._remember(self._read_json(compact, pa.schema([])))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                error = str(exc)
        row = _conflicting_row(objects, self.known, error)
        reason = error.removeprefix("JSON parse error: ").removeprefix("Unable to merge: ")
        raise BadRecord(batch.topic, batch.partition, batch.offsets[row], f"type conflict: {reason}") from None

    def _remember(self, table: pa.Table) -> pa.Table:
        """Reconcile a decoded table with the columns known so far (new fields become new nullable
        columns, ints widen to floats); a field whose type cannot be reconciled raises ArrowTypeError."""
        for name in table.column_names:
            if name in METADATA_NAMES:
                raise pa.ArrowTypeError(f"Field {name} collides with kingest's metadata column of that name")
        if self.declared is not None:
            return table.select([f.name for f in self.declared]).cast(self.declared)
        unified = pa.unify_schemas([self.known, table.schema], promote_options="permissive")
        # Columns still null everywhere teach nothing about their type: they stay out of `known`.
        self.known = pa.schema([f for f in unified if not pa.types.is_null(f.type)])
        columns = [
            table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in unified
        ]
        return pa.Table.from_arrays(columns, names=unified.names)

    # -------------------------------------------------------------------------------------- files

    def encode(self, batch: Batch) -> list[EncodedFile]:
        """The batch as Parquet files, one per output partition (one in all without `partition_by`)."""
        table = self.decode(batch)
        return self.encode_table(batch.topic, batch.partition, table)

    def encode_table(self, topic: str, partition: int, table: pa.Table) -> list[EncodedFile]:
        base = f"topic={topic}"
        if not self.partition_by:
            return [self._file(f"{base}/partition={partition}", topic, partition, table)]
        stamps = table.column("kafka_timestamp")
        keys = (
            pc.strftime(stamps, format="%Y-%m-%d")
            if self.partition_by == ("date",)
            else pc.strftime(stamps, format="%Y-%m-%d/%H")
        )
        files = []
        for key in pc.unique(keys).to_pylist():
            part = table.filter(pc.equal(keys, key))
            folder = f"{base}/date={key}" if "/" not in key else f"{base}/date={key.split('/')[0]}/hour={key[-2:]}"
            files.append(self._file(folder, topic, partition, part))
        return files

    def _file(self, folder: str, topic: str, partition: int, table: pa.Table) -> EncodedFile:
        offsets = table.column("kafka_offset")
        first, last = pc.min(offsets).as_py(), pc.max(offsets).as_py()
        metadata = {
            "kingest.version": __version__,
            "kingest.topic": topic,
            "kingest.partition": str(partition),
            "kingest.first_offset": str(first),
            "kingest.last_offset": str(last),
            "kingest.rows": str(table.num_rows),
            **self.lineage,
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=self.compression, row_group_size=ROW_GROUP_ROWS)
        return EncodedFile(
            path=f"{folder}/{file_name(topic, partition, first, last, self.file_tag)}",
            data=sink.getvalue(),
            topic=topic,
            partition=partition,
            first_offset=first,
            last_offset=last,
            rows=table.num_rows,
        )


def _conflicting_row(objects: list[dict[str, Any]], known: pa.Schema, error: str) -> int:
    """The index of the first record whose value disagrees with the column type the lake already has."""
    match = _ROW_IN_ERROR.search(error)
    if match and int(match.group(1)) < len(objects):
        return int(match.group(1))
    for name in re.findall(r"Field (\S+) ", error) + re.findall(r"Column\(/([^)/]+)", error):
        if name in METADATA_NAMES:
            return next(i for i, o in enumerate(objects) if name in o)
        if name in known.names:
            expected = known.field(name).type
            for i, obj in enumerate(objects):
                if obj.get(name) is not None and not _json_fits(obj[name], expected):
                    return i
    return 0


def _json_fits(value: Any, arrow_type: pa.DataType) -> bool:
    if pa.types.is_boolean(arrow_type):
        return isinstance(value, bool)
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if pa.types.is_string(arrow_type) or pa.types.is_timestamp(arrow_type):
        return isinstance(value, str)
    if pa.types.is_struct(arrow_type):
        return isinstance(value, dict)
    if pa.types.is_list(arrow_type):
        return isinstance(value, list)
    return True
