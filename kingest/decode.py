"""Raw record values as Arrow columns: the batch's good records as a table, and its bad records with why.

Decoding happens per batch, never per record. One pass gives the good rows *and* the bad records (each with
its offset and the reason), so that ``records.on_error`` (fail, skip, dead-letter) can settle both at once:

- raw: the value bytes, never bad.
- string: one UTF-8 validation of the whole column; only when it fails are the bad rows located.
- json: the batch's values are wrapped as ``{"v":<value>}`` lines and read by pyarrow's JSON reader in one call.
  The wrapper makes each record exactly one row (a value holding two objects, or an empty value, cannot shift
  the rows against the offsets). When the read fails, the batch is halved and each half read again, down to
  the single records that fail on their own: O(bad * log n) reader calls over slices, never a Python loop over
  the records, and the records before a bad one keep the column types they set ("first seen wins").

Schemas (json):

- declared (``records.schema``): read with the declared types; values of another JSON type are coerced per
  column (kingest/coerce.py). Undeclared fields are dropped.
- inferred: each topic's columns are remembered across batches, starting from the columns the lake already
  has (``learn``), so that a record gets the same outcome whichever run reads it. A new field becomes a new
  nullable column in later files; an int column that receives a fraction widens to float64
  (``pa.unify_schemas``, permissive); any other change of type (a number where a string was) makes the
  record bad. JSON strings stay strings: pyarrow's inference of ISO timestamps is undone (declare
  ``timestamp`` to get timestamps).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .avro import AvroSchema, AvroSchemaError
from .batcher import Batch
from .coerce import ARROW_ERRORS, coerce, convert, no_columns
from .coerce import cast as cast_to
from .errors import BadRecord, KingestError
from .protobuf import ProtobufSchema, ProtobufSchemaError, split_indexes
from .registry import RegisteredSchema, Registry

KAFKA_TIMESTAMP = pa.timestamp("ms", tz="UTC")  # Kafka record timestamps are milliseconds
HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
METADATA_FIELDS = [
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp", KAFKA_TIMESTAMP),
    pa.field("kafka_key", pa.binary()),
    pa.field("kafka_headers", HEADERS_TYPE),
]
METADATA_NAMES = {f.name for f in METADATA_FIELDS}
KEY_COLUMN = "kafka_key_decoded"  # records.key_format: the decoded key, before the value columns
DEAD_LETTER_FIELDS = METADATA_FIELDS + [pa.field("value", pa.binary()), pa.field("error", pa.string())]


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be decoded, and why."""

    topic: str
    partition: int
    offset: int
    reason: str

    def error(self) -> BadRecord:
        return BadRecord(self.topic, self.partition, self.offset, self.reason)


@dataclass(frozen=True)
class Decoded:
    """A batch decoded in one pass: the good records as a table (metadata columns, then the value columns, in
    offset order) and the bad ones."""

    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)

    def before(self, offset: int) -> pa.Table:
        """The good records below ``offset``."""
        return self.table.filter(pc.less(self.table.column("kafka_offset"), offset))


class _PieceFailed(Exception):
    """A slice of a batch could not be read as a whole (the reason is Arrow's message; ``field``: the top-level
    field whose type conflicts, when the message names one)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field


class Decoder:
    """Decodes batches for one pipeline. For inferred json schemas it remembers, per topic, the columns seen so
    far, so that the files of a topic agree on each column's type."""

    def __init__(
        self,
        record_format: str,
        declared: pa.Schema | None = None,
        *,
        registry: Registry | None = None,
        schema_file: AvroSchema | None = None,
        key_format: str = "raw",
    ) -> None:
        self.format = record_format
        # records.key_format: the keys are decoded by a decoder of their own (its own columns per topic)
        self.key_decoder = Decoder(key_format, registry=registry) if key_format != "raw" else None
        self.declared = declared
        self.known: dict[str, pa.Schema] = {}  # inferred json, avro: the columns of each topic so far
        self._known_lock = threading.Lock()
        self.registry = registry
        self.schema_file = schema_file
        self._schemas: dict[int, AvroSchema | ProtobufSchema | str] = {}  # by id, or why it cannot be used
        self._seeded: set[tuple[str, int]] = set()  # json-schema: (topic, id) whose columns were learnt
        self._seed_lock = threading.Lock()

    @property
    def infers_schema(self) -> bool:
        """Whether the columns come from the records or their writer schemas (json without ``records.schema``,
        avro, json-schema): then a topic's columns so far decide a field's type."""
        return (self.format == "json" and self.declared is None) or self.format in ("avro", "json-schema", "protobuf")

    def learn(self, topic: str, schema: pa.Schema) -> None:
        """Start from ``schema`` for ``topic`` (the columns of a file the lake holds, metadata columns and all):
        its value columns become known, as if this decoder had read the records that made it."""
        values = [f for f in schema if f.name not in METADATA_NAMES and not pa.types.is_null(f.type)]
        key = next((f for f in values if f.name == KEY_COLUMN), None)
        values = [f for f in values if f.name != KEY_COLUMN]
        if key is not None and self.key_decoder is not None and pa.types.is_struct(key.type):
            self.key_decoder.learn(topic, pa.schema(list(key.type)))
        with self._known_lock:
            known = self.known.get(topic, pa.schema([]))
            unified = pa.unify_schemas([known, pa.schema(values)], promote_options="permissive")
            self.known[topic] = pa.schema([f for f in unified if not pa.types.is_null(f.type)])

    def decode(self, batch: Batch) -> Decoded:
        """The batch as an Arrow table of its good records, and the records that cannot be decoded."""
        n = len(batch)
        values, bad = self._values(batch)
        if self.key_decoder is not None:
            values, bad = self._with_keys(batch, values, bad)
        metadata = [
            pa.array([batch.topic] * n, pa.string()),
            pa.array([batch.partition] * n, pa.int32()),
            pa.array(batch.offsets, pa.int64()),
            pa.array(batch.timestamps, pa.int64()).cast(KAFKA_TIMESTAMP),
            pa.array(batch.keys, pa.binary()),
            _headers(batch.headers),
        ]
        rejected = [Rejected(batch.topic, batch.partition, batch.offsets[i], bad[i]) for i in sorted(bad)]
        if bad:
            keep = pa.array([i for i in range(n) if i not in bad], pa.int64())
            metadata = [column.take(keep) for column in metadata]
        columns = metadata + list(values.columns)
        schema = pa.schema(
            METADATA_FIELDS + [pa.field(f.name, f.type) for f in values.schema], metadata=values.schema.metadata
        )
        return Decoded(pa.Table.from_arrays(columns, schema=schema), rejected)

    def _values(self, batch: Batch) -> tuple[pa.Table, dict[int, str]]:
        """The value columns of the good records (one row each, in order) and the reasons of the bad ones."""
        n = len(batch)
        bad: dict[int, str] = {}
        if self.format == "raw":
            return pa.table({"value": pa.array(batch.values, pa.binary())}), bad
        if self.format == "string":
            strings, invalid = convert(pa.array(batch.values, pa.binary()), pa.string(), cast_to(pa.string()))
            bad = dict.fromkeys(invalid, "not valid UTF-8")
            values = pa.table({"value": strings})
            if bad:  # the bad rows are still there, as nulls
                values = values.take(pa.array([i for i in range(n) if i not in bad], pa.int64()))
            return values, bad
        if self.format == "avro":
            return self._avro(batch)
        if self.format == "json-schema":
            return self._json_schema(batch)
        if self.format == "protobuf":
            return self._protobuf(batch)
        return self._json(batch)

    def _with_keys(self, batch: Batch, values: pa.Table, bad: dict[int, str]) -> tuple[pa.Table, dict[int, str]]:
        """``records.key_format``: the keys decoded as the values are, as one column ``kafka_key_decoded`` (a
        struct of the key's fields, or the key's text) before the value columns. A record whose key cannot be
        decoded is a bad record too."""
        assert self.key_decoder is not None
        n = len(batch)
        keys, key_bad = self.key_decoder._values(replace(batch, values=batch.keys))
        if KEY_COLUMN in values.column_names:
            reason = f"the value has a field `{KEY_COLUMN}`, the column of the decoded key (records.key_format)"
            return values.slice(0, 0), {**dict.fromkeys(range(n), reason), **bad}
        both = {**{i: f"key: {reason}" for i, reason in key_bad.items()}, **bad}
        value_rows = [i for i in range(n) if i not in bad]
        key_rows = [i for i in range(n) if i not in key_bad]
        if len(both) > len(bad):
            values = _drop_rows(values, {j: None for j, i in enumerate(value_rows) if i in key_bad})
        if len(both) > len(key_bad):
            keys = _drop_rows(keys, {j: None for j, i in enumerate(key_rows) if i in bad})
        if self.key_decoder.format == "string":
            column: pa.Array = keys.column("value").combine_chunks()
        elif keys.num_columns == 0:
            column = pa.nulls(keys.num_rows)
        else:
            column = pa.StructArray.from_arrays([c.combine_chunks() for c in keys.columns], fields=list(keys.schema))
        metadata = dict(values.schema.metadata or {})
        for name, value in (keys.schema.metadata or {}).items():
            metadata[name.replace(b"kingest.schema", b"kingest.key_schema")] = value
        table = pa.Table.from_arrays([column, *values.columns], names=[KEY_COLUMN, *values.column_names])
        return table.replace_schema_metadata(metadata or None), both

    # ------------------------------------------------------------------------------ schema registry formats

    def _framed(self, values: Sequence[bytes | None]) -> tuple[dict[int, list[int]], list[int], dict[int, str]]:
        """The records in the Confluent wire format (byte 0, a 4-byte big-endian schema id, the payload), grouped
        by schema id; the tombstones (null values); and the records not in that format, with why."""
        groups, tombstones, bad = _wire_groups(pa.array(values, pa.large_binary()))
        return {schema_id: list(rows) for schema_id, rows in groups.items()}, tombstones, bad

    def _registered(self, schema_id: int, kind: str) -> RegisteredSchema | str:
        """The registry's schema ``schema_id``, or why a record that names it is bad."""
        assert self.registry is not None
        found = self.registry.schema(schema_id)
        if found is None:
            return f"schema id {schema_id} is not in the schema registry at {self.registry.shown}"
        if found.type != kind:
            fmt = {"AVRO": "avro", "JSON": "json-schema", "PROTOBUF": "protobuf"}.get(found.type, found.type)
            return (
                f"schema id {schema_id} is a {found.type} schema, not {kind}: the topic's records are "
                f"records.format: {fmt}"
            )
        return found

    def _avro_schema(self, schema_id: int) -> AvroSchema | str:
        if schema_id not in self._schemas:
            found = self._registered(schema_id, "AVRO")
            if isinstance(found, str):
                return found  # not cached: the id may be registered later
            try:
                self._schemas[schema_id] = AvroSchema(found.text, f"schema id {schema_id}")
            except AvroSchemaError as exc:
                self._schemas[schema_id] = str(exc)
            except Exception as exc:  # a schema kingest cannot turn into columns: its records are bad, not a crash
                self._schemas[schema_id] = f"schema id {schema_id} cannot be read: {type(exc).__name__}: {exc}"
        return cast("AvroSchema | str", self._schemas[schema_id])

    def _avro(self, batch: Batch) -> tuple[pa.Table, dict[int, str]]:
        """Avro values: grouped by writer schema, each group decoded in bulk (avro.py), the groups' columns
        unified with the topic's so far (new fields nullable), back in offset order. The values go into Arrow
        once and stay there: no Python code per record."""
        values = pa.array(batch.values, pa.large_binary())
        n = len(values)
        groups: dict[int, Sequence[int]]
        if self.schema_file is not None:
            tombstones = pc.indices_nonzero(values.is_null()).to_pylist() if values.null_count else []
            if not tombstones:
                groups = {-1: range(n)}
            else:
                groups = {-1: pc.indices_nonzero(values.is_valid()).to_pylist()} if len(tombstones) < n else {}
            bad: dict[int, str] = {}
        else:
            groups, tombstones, bad = _wire_groups(values)
        parts: list[tuple[str, Sequence[int], pa.Table, dict[int, str]]] = []
        ids: list[int] = []
        for schema_id, rows in groups.items():
            schema = self.schema_file if schema_id == -1 else self._avro_schema(schema_id)
            if isinstance(schema, str) or schema is None:
                bad.update(dict.fromkeys(rows, str(schema)))
                continue
            group = values if len(rows) == n else values.take(pa.array(rows, pa.int64()))
            table, rejected = schema.decode_array(group, skip=0 if schema_id == -1 else 5)
            parts.append((schema.name, rows, table, rejected))
            if schema_id != -1:
                ids.append(schema_id)
        return self._assemble(batch.topic, parts, tombstones, bad, ids)

    def _protobuf_schema(self, schema_id: int) -> ProtobufSchema | str:
        if schema_id not in self._schemas:
            found = self._registered(schema_id, "PROTOBUF")
            if isinstance(found, str):
                return found
            assert self.registry is not None
            try:
                files = [*self.registry.references(found), (f"schema_{schema_id}.proto", found.text)]
                self._schemas[schema_id] = ProtobufSchema(files, f"schema id {schema_id}")
            except ProtobufSchemaError as exc:
                self._schemas[schema_id] = str(exc)
            except KingestError:
                raise  # the registry: unreachable, refusing
            except Exception as exc:  # a schema kingest cannot turn into columns: its records are bad, not a crash
                self._schemas[schema_id] = f"schema id {schema_id} cannot be read: {type(exc).__name__}: {exc}"
        return cast("ProtobufSchema | str", self._schemas[schema_id])

    def _protobuf(self, batch: Batch) -> tuple[pa.Table, dict[int, str]]:
        """Protobuf values: grouped by schema id and message type (the message indexes after the id), each
        group decoded by its generated class, then unified and put back in offset order as Avro's are."""
        values = batch.values
        groups, tombstones, bad = self._framed(values)
        parts: list[tuple[str, Sequence[int], pa.Table, dict[int, str]]] = []
        ids: list[int] = []
        for schema_id, rows in groups.items():
            schema = self._protobuf_schema(schema_id)
            if isinstance(schema, str):
                bad.update(dict.fromkeys(rows, schema))
                continue
            ids.append(schema_id)
            by_type: dict[tuple[int, ...], list[tuple[int, int]]] = {}
            for i in rows:
                split = split_indexes(cast(bytes, values[i])[5:])
                if split is None:
                    bad[i] = f"the message indexes after schema id {schema_id} do not parse"
                    continue
                by_type.setdefault(split[0], []).append((i, 5 + split[1]))
            for indexes, members in by_type.items():
                message = schema.message(indexes)
                if isinstance(message, str):
                    bad.update(dict.fromkeys((i for i, _ in members), message))
                    continue
                table, rejected = message.decode([cast(bytes, values[i])[start:] for i, start in members])
                parts.append((f"schema id {schema_id} ({message.name})", [i for i, _ in members], table, rejected))
        return self._assemble(batch.topic, parts, tombstones, bad, ids)

    def _assemble(
        self,
        topic: str,
        parts: list[tuple[str, Sequence[int], pa.Table, dict[int, str]]],
        tombstones: list[int],
        bad: dict[int, str],
        ids: list[int],
    ) -> tuple[pa.Table, dict[int, str]]:
        """One table from the decoded groups (``(name, rows, table, rejected)``: the table holds ``rows`` but the
        rejected ones, by index into ``rows``), unified with the topic's columns so far, in offset order; a
        group whose columns do not fit the topic's is a group of bad records."""
        pieces: list[pa.Table] = []
        order: list[int] = []
        for name, rows, table, rejected in parts:
            bad.update({rows[j]: reason for j, reason in rejected.items()})
            good = [rows[j] for j in range(len(rows)) if j not in rejected] if rejected else rows
            try:
                table = self._remember(topic, table)
            except ARROW_ERRORS as exc:
                reason = f"{name} does not fit the topic's columns: {_arrow_reason(exc)}"
                bad.update(dict.fromkeys(good, reason))
                continue
            pieces.append(table)
            order.extend(good)
        if tombstones:  # a tombstone is a row whose value columns are all null, as with json
            pieces.append(no_columns(len(tombstones)))
            order += tombstones
        table = self._concat(topic, pieces)
        if len(pieces) > 1:
            permutation = pc.sort_indices(pa.array(order, pa.int64()))
            table = table.take(permutation) if table.num_columns else no_columns(table.num_rows)
        return self._with_schema_ids(topic, table, ids), bad

    def _json_schema(self, batch: Batch) -> tuple[pa.Table, dict[int, str]]:
        """JSON Schema values: the wire-format header checked and taken off, the registry's schema teaching the
        topic's column types (integer int64, number float64...), then the json path on the payloads."""
        groups, tombstones, bad = self._framed(batch.values)
        keep: list[int] = sorted(tombstones)
        ids: list[int] = []
        for schema_id, rows in groups.items():
            found = self._registered(schema_id, "JSON")
            if isinstance(found, str):
                bad.update(dict.fromkeys(rows, found))
                continue
            key = (batch.topic, schema_id)
            with self._seed_lock:  # every thread waits for the columns to be learnt before reading its records
                if key not in self._seeded:
                    with contextlib.suppress(*ARROW_ERRORS, ValueError, TypeError, KeyError, AttributeError):
                        self.learn(batch.topic, json_schema_columns(json.loads(found.text)))
                    self._seeded.add(key)
            keep += rows
            ids.append(schema_id)
        keep.sort()
        payloads = [None if batch.values[i] is None else cast(bytes, batch.values[i])[5:] for i in keep]
        table, rejected = self._json(replace(batch, values=payloads))
        bad.update({keep[j]: reason for j, reason in rejected.items()})
        return self._with_schema_ids(batch.topic, table, ids), bad

    def _with_schema_ids(self, topic: str, table: pa.Table, ids: list[int]) -> pa.Table:
        """The Parquet footer names the schema ids (and their subjects) the file's records were written with. An
        id that several subjects share is named with the topic's own subjects (``<topic>-value``,
        ``<topic>-<record>``) when it has any."""
        if not ids or self.registry is None:
            return table
        subjects: set[str] = set()
        for schema_id in ids:
            held = self.registry.subjects(schema_id)
            own = [s for s in held if s.startswith(f"{topic}-")]
            subjects.update(own or held)
        metadata = {
            **(table.schema.metadata or {}),
            b"kingest.schema_ids": json.dumps(sorted(ids)).encode(),
            b"kingest.schema_registry": self.registry.shown.encode(),
        }
        if subjects:
            metadata[b"kingest.schema_subjects"] = json.dumps(sorted(subjects)).encode()
        return table.replace_schema_metadata(metadata)

    def prepare(self, batches: Sequence[Batch]) -> None:
        """Read the values of several small batches of one topic (a flush of a wide topic: one small batch a
        partition) in one JSON read, and hand each batch its rows (``Batch.prepared``), when that gives each batch
        exactly what its own read would: every value an object of the fields and types already known (or
        declared), read as those types (never the fallback read that infers every type again: it would take
        values another batch's own read keeps or rejects differently), nothing new, nothing rejected. A read has
        a fixed cost (~0.3 ms) whatever its size. Otherwise nothing is prepared, the topic's known columns stay
        as they were, and each batch is read on its own."""
        if self.format != "json" or len(batches) < 2 or sum(b.nbytes for b in batches) > PREPARE_MAX_BYTES:
            return  # (large batches: the fixed cost is nothing to them, and their reads run side by side)
        topic = batches[0].topic
        with self._known_lock:
            before = self.known.get(topic)
        if self.declared is None and not before:
            return  # a topic's first records: each batch infers in offset order (a field's first type wins)
        values = _as_objects([v for b in batches for v in b.values])
        try:
            table, rejected = self._read(topic, _wrap(values), len(values), again=False)
        except _PieceFailed:
            return
        finally:
            if self.declared is None:
                with self._known_lock:
                    learned = self.known.get(topic)
                    self.known[topic] = before  # whatever this read learned, the batches' own reads learn it
        if rejected:
            return
        if self.declared is None:
            assert before is not None and learned is not None
            # One more field, even one only null so far (not known then, but a column of the batches that hold
            # it), or another type: each batch's own read would differ.
            if not learned.equals(before) or table.schema.names != before.names:
                return
        start = 0
        for batch in batches:
            batch.prepared = table.slice(start, len(batch))
            start += len(batch)

    def _json(self, batch: Batch) -> tuple[pa.Table, dict[int, str]]:
        """The value columns of the good records (in order) and the reasons of the bad ones, by index."""
        if batch.prepared is not None:  # (see prepare)
            table, batch.prepared = batch.prepared, None
            return table, {}
        values = _as_objects(batch.values)
        bad: dict[int, str] = {}
        try:
            table, bad = self._read(batch.topic, _wrap(values), len(values))
        except _PieceFailed:
            pass
        else:
            return _drop_rows(table, bad), bad
        # The slow path. One Python pass finds the values that are not JSON objects at all, and re-serialises
        # pretty-printed ones (JSON strings cannot hold a raw newline, so that changes no data). The rest is read
        # again, halving around the records that still fail (type conflicts, values that cannot be coerced).
        rows = []
        objects: dict[int, dict[str, Any]] = {}
        values = list(values)  # never the batch's own list: dead letters keep the raw values
        for i, value in enumerate(values):
            obj = _json_object(value)
            if isinstance(obj, str):
                bad[i] = obj
                continue
            objects[i] = obj
            if b"\n" in value:
                values[i] = json.dumps(obj, separators=(",", ":")).encode()
            rows.append(i)
        pieces: list[pa.Table] = []
        if rows and self.declared is None:
            rows = self._settle_conflicts(batch.topic, values, rows, objects, pieces, bad)
        if rows:
            self._json_rows(batch.topic, values, rows, pieces, bad)
        return self._concat(batch.topic, pieces), bad

    def _settle_conflicts(
        self,
        topic: str,
        values: list[bytes],
        rows: list[int],
        objects: dict[int, dict[str, Any]],
        pieces: list[pa.Table],
        bad: dict[int, str],
    ) -> list[int]:
        """Type conflicts of top-level fields, each found in one Python pass over the decoded objects rather than
        by halving (a producer that changed a field's type makes every later record conflict). Returns the rows
        still to read (none when they were read here)."""
        for _ in range(16):
            try:
                table, rejected = self._read(topic, _wrap([values[i] for i in rows]), len(rows))
            except _PieceFailed as failure:
                name = failure.field
                if name is None:
                    return rows
                known = self.known.get(topic)
                if known is not None and name in known.names:
                    expected = _kind_of_type(known.field(name).type)
                else:  # first seen wins
                    expected = next(
                        (_json_kind(objects[i][name]) for i in rows if objects[i].get(name) is not None), None
                    )
                conflicting = [
                    i for i in rows if objects[i].get(name) is not None and not _same_kind(objects[i][name], expected)
                ]
                if expected is None or not conflicting:
                    return rows
                for i in conflicting:
                    found = _json_kind(objects[i][name])
                    bad[i] = (
                        f"type conflict: field `{name}` is {_a(expected)} in earlier records, {_a(found)} in this one"
                    )
                drop = set(conflicting)
                rows = [i for i in rows if i not in drop]
                if not rows:
                    return rows
                continue
            bad.update({rows[i]: reason for i, reason in rejected.items()})
            pieces.append(_drop_rows(table, rejected))
            return []
        return rows

    def _json_rows(
        self,
        topic: str,
        values: list[bytes],
        rows: list[int],
        pieces: list[pa.Table],
        bad: dict[int, str],
    ) -> None:
        """Read ``rows`` in one call; when that fails, each half on its own, down to the single bad records."""
        try:
            table, rejected = self._read(topic, _wrap([values[i] for i in rows]), len(rows))
        except _PieceFailed as failure:
            if len(rows) > 1:
                mid = len(rows) // 2
                self._json_rows(topic, values, rows[:mid], pieces, bad)
                self._json_rows(topic, values, rows[mid:], pieces, bad)
                return
            read = self._read_single(topic, values[rows[0]], str(failure))
            if isinstance(read, str):
                bad[rows[0]] = read
                return
            table, rejected = read
        bad.update({rows[i]: reason for i, reason in rejected.items()})
        pieces.append(_drop_rows(table, rejected))

    def _read_single(self, topic: str, value: bytes, reason: str) -> tuple[pa.Table, dict[int, str]] | str:
        """A record that cannot be read on its own: why not, or its row when it only needed re-serialising
        (valid JSON the reader does not take as written: odd whitespace, a byte order mark...)."""
        why = _not_an_object(value)
        if why is not None:
            return why
        compact = _compact(value)
        if compact == value:
            return reason
        try:
            return self._read(topic, _wrap([compact]), 1)
        except _PieceFailed as again:
            return str(again)

    def _read(self, topic: str, data: bytes, n: int, again: bool = True) -> tuple[pa.Table, dict[int, str]]:
        """Read ``n`` wrapped values: their value columns (one row each) and the rows rejected by coercion. First
        as the declared or known types; when that fails, again inferring every type (``again=False``: fail)."""
        if self.declared is not None:
            try:
                # The fast path: every value already of its declared JSON type.
                table, rejected = _unwrap(_read_json(data, pa.schema([("v", pa.struct(self.declared))]), "ignore"), n)
                return table.select(self.declared.names), rejected
            except ARROW_ERRORS as exc:
                if not again:
                    raise _PieceFailed(_arrow_reason(exc)) from None
            try:
                table, rejected = _unwrap(_read_json_untimed(data, None), n)
            except ARROW_ERRORS as exc:
                raise _PieceFailed(_arrow_reason(exc)) from None
            return coerce(table, self.declared, rejected)
        known = self.known.get(topic)
        try:
            try:
                read = _read_json_untimed(data, pa.schema([("v", pa.struct(known))]) if known else None)
            except ARROW_ERRORS:
                if not known or not again:
                    raise
                read = _read_json_untimed(data, None)  # on its own: a column may widen (int to float)
            table, rejected = _unwrap(read, n)
            return self._remember(topic, table), rejected
        except ARROW_ERRORS as exc:
            raise _PieceFailed("type conflict: " + _arrow_reason(exc), _conflict_field(str(exc))) from None

    def _remember(self, topic: str, table: pa.Table) -> pa.Table:
        """Reconcile a decoded table with the topic's columns so far (new fields become new nullable columns,
        ints widen to floats); a field whose type cannot be reconciled raises ArrowTypeError."""
        for name in table.column_names:
            if name in METADATA_NAMES:
                raise pa.ArrowTypeError(f"field {name} collides with kingest's metadata column of that name")
        table = _without_empty_objects(table)
        with self._known_lock:  # batches of one flush are encoded on several threads
            known = self.known.get(topic, pa.schema([]))
            unified = pa.unify_schemas([known, table.schema], promote_options="permissive")
            # Columns still null everywhere teach nothing about their type: they stay out of `known`.
            self.known[topic] = pa.schema([f for f in unified if not pa.types.is_null(f.type)])
        return _conform(table, unified)

    def _concat(self, topic: str, pieces: list[pa.Table]) -> pa.Table:
        """One table from the pieces of a batch, in the columns and types of the last (widest) of them."""
        if self.declared is not None:
            return pa.concat_tables(pieces) if pieces else self.declared.empty_table()
        if not pieces:
            return no_columns(0)
        if len(pieces) == 1:
            return pieces[0]
        unified = pa.unify_schemas([p.schema for p in pieces], promote_options="permissive")
        if len(unified) == 0:
            return no_columns(sum(p.num_rows for p in pieces))
        return pa.concat_tables([_conform(p, unified) for p in pieces])


def json_schema_columns(schema: Mapping[str, Any]) -> pa.Schema:
    """The columns a JSON Schema's ``properties`` give (integer int64, number float64, string, boolean, object a
    struct, array a list); a property of another or no type is left to inference."""
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        t = _json_schema_type(prop)
        if t is not None:
            out.append(pa.field(str(name), t))
    return pa.schema(out)


def _json_schema_type(prop: Any) -> pa.DataType | None:
    if not isinstance(prop, Mapping):
        return None
    kind = prop.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "object":
        columns = json_schema_columns(prop)
        return pa.struct(list(columns)) if len(columns) else None
    if kind == "array":
        item = _json_schema_type(prop.get("items"))
        return pa.list_(item) if item is not None else None
    return {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}.get(
        kind if isinstance(kind, str) else ""
    )


_WIRE_MAGIC = pa.scalar(b"\x00", pa.large_binary())
_FEW_IDS = 8  # up to this many schema ids in a batch, each group is found by a kernel over the whole batch


def _wire_groups(values: pa.Array) -> tuple[dict[int, Sequence[int]], list[int], dict[int, str]]:
    """``Decoder._framed`` on an Arrow binary array, in Arrow compute: the rows of each schema id (``range`` when
    it is all of them), the tombstones, and the values not in the Confluent wire format, with why."""
    n = len(values)
    heads = pc.binary_slice(values, 0, 5)
    long_enough = pc.greater_equal(pc.binary_length(values), 5)
    framed = pc.and_(long_enough, pc.equal(pc.binary_slice(values, 0, 1), _WIRE_MAGIC))
    tombstones = pc.indices_nonzero(values.is_null()).to_pylist() if values.null_count else []
    bad: dict[int, str] = {}
    unframed = pc.invert(pc.fill_null(framed, True))
    if pc.any(unframed).as_py():
        for i in pc.indices_nonzero(unframed).to_pylist():
            value = values[i].as_py()
            first = f"first byte 0x{value[0]:02x}" if value else "an empty value"
            bad[i] = (
                "not in the Confluent wire format (byte 0, then a 4-byte schema id): "
                f"{first}, {len(value)} bytes; was it written without the registry's serializer?"
            )
    good = pc.fill_null(framed, False)
    distinct = pc.unique(heads.filter(good)).to_pylist()
    groups: dict[int, Sequence[int]] = {}
    if len(distinct) == 1 and not tombstones and not bad:
        groups[int.from_bytes(distinct[0][1:5], "big")] = range(n)
    elif len(distinct) <= _FEW_IDS:  # a kernel over the batch per id
        for head in distinct:
            rows = pc.indices_nonzero(pc.and_(good, pc.equal(heads, pa.scalar(head, pa.large_binary()))))
            groups[int.from_bytes(head[1:5], "big")] = rows.to_pylist()
    else:  # many ids (garbage that starts with byte 0?): one pass, not a pass per id
        rows = pc.indices_nonzero(good).to_pylist()
        codes = heads.filter(good).dictionary_encode().indices.to_pylist()
        by_code: list[list[int]] = [[] for _ in distinct]
        for row, code in zip(rows, codes, strict=True):
            by_code[code].append(row)
        groups = {int.from_bytes(head[1:5], "big"): members for head, members in zip(distinct, by_code, strict=True)}
    return groups, tombstones, bad


def dead_letter_table(batch: Batch, rejected: Sequence[Rejected]) -> pa.Table:
    """The raw bad records of a batch (key, value as bytes, headers, timestamp, topic, partition, offset) and
    their error text: the rows of a dead-letter file."""
    index = {offset: i for i, offset in enumerate(batch.offsets)}
    rows = [index[r.offset] for r in rejected]
    return pa.Table.from_arrays(
        [
            pa.array([batch.topic] * len(rows), pa.string()),
            pa.array([batch.partition] * len(rows), pa.int32()),
            pa.array([batch.offsets[i] for i in rows], pa.int64()),
            pa.array([batch.timestamps[i] for i in rows], pa.int64()).cast(KAFKA_TIMESTAMP),
            pa.array([batch.keys[i] for i in rows], pa.binary()),
            _headers([batch.headers[i] for i in rows]),
            pa.array([batch.values[i] for i in rows], pa.binary()),
            pa.array([r.reason for r in rejected], pa.string()),
        ],
        schema=pa.schema(DEAD_LETTER_FIELDS),
    )


# ------------------------------------------------------------------------------------------ json helpers


# Decoder.prepare reads a flush's batches of a topic in one read up to this many bytes of values in all.
PREPARE_MAX_BYTES = 4 << 20


def _as_objects(values: list[bytes | None]) -> list[bytes]:
    """A tombstone (null value) read as ``{}``: a row whose value columns are all null."""
    return cast(list[bytes], [b"{}" if v is None else v for v in values] if None in values else values)


def _wrap(values: Sequence[bytes]) -> bytes:
    """One ``{"v":<value>}`` line per value, between two ``{"v":{}}`` lines that let a single join write the
    first line's opening and the last line's closing: the hot path's one copy of the data."""
    return b'}\n{"v":'.join([b'{"v":{}', *values, b"{}}"])


def _read_json(data: bytes, schema: pa.Schema | None, unexpected: str = "infer") -> pa.Table:
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected)
    # One block for the whole batch, so that type inference sees all of it at once.
    read = pa_json.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
    # pa.BufferReader (zero copy), not io.BytesIO: the read then never takes the GIL (see Encoder._file).
    return _check_utf8(pa_json.read_json(pa.BufferReader(data), read_options=read, parse_options=parse), data)


def _read_json_untimed(data: bytes, schema: pa.Schema | None) -> pa.Table:
    """Read with inference of the fields ``schema`` does not fix, keeping JSON strings as strings: pyarrow infers
    ISO-looking strings as timestamps, which would change their text and clash with later non-ISO strings."""
    table = _read_json(data, schema)
    if _has_timestamp(table.schema):
        table = _read_json(data, _untimed(table.schema))
    return table


def _unwrap(table: pa.Table, n: int) -> tuple[pa.Table, dict[int, str]]:
    """The wrapped records' fields as columns. A record that is JSON ``null`` is rejected; one that is not an
    object, or a row count that differs from the record count, fails the read."""
    if table.num_rows != n + 2:  # (the two rows around the values)
        raise pa.ArrowInvalid(f"{table.num_rows - 2} JSON values in {n} records")
    if "v" not in table.column_names or not pa.types.is_struct(table.schema.field("v").type):
        raise pa.ArrowInvalid("a JSON value that is not an object")
    column = table.column("v").slice(1, n).combine_chunks()
    rejected: dict[int, str] = {}
    if column.null_count:
        nulls = pc.indices_nonzero(pc.is_null(column)).to_pylist()
        rejected = dict.fromkeys(nulls, "a JSON null, not an object")
    if column.type.num_fields == 0:
        return no_columns(n), rejected
    return pa.Table.from_arrays(column.flatten(), schema=pa.schema(list(column.type))), rejected


def _drop_rows(table: pa.Table, rows: Mapping[int, Any]) -> pa.Table:
    if not rows:
        return table
    if table.num_columns == 0:
        return no_columns(table.num_rows - len(rows))
    return table.take(pa.array([i for i in range(table.num_rows) if i not in rows], pa.int64()))


def _check_utf8(table: pa.Table, data: bytes) -> pa.Table:
    """pyarrow's JSON reader lets invalid UTF-8 through: into string values (caught by a full validation, a few
    ms per 100k rows) and into field names (where it becomes U+FFFD: then the data itself is checked)."""
    try:
        table.validate(full=True)
        if "\ufffd" in str(table.schema):
            data.decode("utf-8")
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise pa.ArrowInvalid("not valid UTF-8") from None
    return table


def _without_empty_objects(table: pa.Table) -> pa.Table:
    """Fields that only ever held ``{}`` are objects with no fields (``struct<>``), which Parquet cannot store.
    Like a field that is always null, they teach nothing about their type: they become null columns (and
    objects again, in later files, once a record gives them fields)."""
    if not any(_has_empty_struct(f.type) for f in table.schema):
        return table
    columns = [_drop_empty_structs(table.column(i).combine_chunks()) for i in range(table.num_columns)]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _has_empty_struct(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(_has_empty_struct(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_empty_struct(t.value_type)
    return False


def _drop_empty_structs(array: pa.Array) -> pa.Array:
    t = array.type
    if not _has_empty_struct(t):
        return array
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return pa.nulls(len(array))
        children = [_drop_empty_structs(child) for child in array.flatten()]
        return pa.StructArray.from_arrays(
            children, fields=[f.with_type(c.type) for f, c in zip(t, children, strict=True)], mask=array.is_null()
        )
    values = _drop_empty_structs(array.values)
    return pa.ListArray.from_arrays(array.offsets, values, mask=array.is_null())


def _has_timestamp(schema: pa.Schema | pa.DataType) -> bool:
    types = [f.type for f in schema] if isinstance(schema, pa.Schema) else [schema]
    for t in types:
        if pa.types.is_timestamp(t):
            return True
        if pa.types.is_struct(t) and _has_timestamp(pa.schema(list(t))):
            return True
        if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _has_timestamp(t.value_type):
            return True
    return False


def _untimed_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_untimed_type(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_untimed_type(t.value_type)))
    return t


def _untimed(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(_untimed_type(f.type)) for f in schema])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in the columns and types of ``schema`` (a permissive unification of it with others: nulls and
    missing fields become typed nulls, ints widen to floats)."""
    if len(schema) == 0:
        return no_columns(table.num_rows)
    columns = [
        _widen(table.column(f.name), f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _widen(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """An int widened to a float takes the nearest float, as the JSON reader does with 9007199254740993 in a float
    column: one read of a batch and a read of it in pieces (the slow path, then _concat) agree, and neither fails."""
    if column.type == to:
        return column
    return pc.cast(column, options=pc.CastOptions(to, allow_float_truncate=True))


def _compact(value: bytes) -> bytes:
    try:
        return json.dumps(json.loads(value), separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        return value


def _json_object(value: bytes) -> dict[str, Any] | str:
    """The value as a JSON object, or why it is not one."""
    if not value.strip():
        return "an empty value, not JSON"
    try:
        obj = json.loads(value)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return f"a JSON {_json_kind(obj)}, not an object"
    return obj


def _not_an_object(value: bytes) -> str | None:
    """Why a value is not a JSON object, or None when it is one."""
    obj = _json_object(value)
    return obj if isinstance(obj, str) else None


def _conflict_field(message: str) -> str | None:
    """The top-level field a reader or merge error names (``Column(/v/amount) changed from number to string``,
    ``Field amount has incompatible types``)."""
    match = re.search(r"Column\(/v/([^/)]+)", message) or re.search(r"Field (\S+) has incompatible types", message)
    return match.group(1) if match else None


def _kind_of_type(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_struct(t):
        return "object"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "array"
    return None


def _same_kind(value: Any, kind: str | None) -> bool:
    return _json_kind(value) == kind


def _a(kind: str | None) -> str:
    return f"an {kind}" if kind and kind[0] in "aeiou" else f"a {kind}"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _arrow_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in ("JSON parse error: ", "Unable to merge: "):
        text = text.removeprefix(prefix)
    text = re.sub(r"Column\(/v/", "Column(/", text)
    text = re.sub(r" in row \d+", "", text)
    merge = re.fullmatch(r"Field (\S+) has incompatible types: (.+) vs (.+)", text)
    if merge:
        name, before, now = merge.groups()
        return f"field `{name}` is {before} in earlier records of the topic, {now} in this one"
    return text


def _headers(headers: list[Any]) -> pa.Array:
    if not any(headers):
        # The common case, no headers at all: build the empty lists without touching each record.
        offsets = pa.array([0] * (len(headers) + 1), pa.int32())
        empty = pa.array([], HEADERS_TYPE.value_type)
        return pa.ListArray.from_arrays(offsets, empty, type=HEADERS_TYPE)
    return pa.array([list(h) if h else [] for h in headers], HEADERS_TYPE)
