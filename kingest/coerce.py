"""Values as the JSON reader gave them, coerced to the types ``records.schema`` declares, per column, vectorised.

A JSON value of another type than declared is converted with pyarrow casts ("123" to int64, 5 to "5", ISO 8601
strings to timestamps, integers to timestamps as epoch milliseconds); a value that cannot be converted (1.5 to
int64, "twelve" to int64, an object to anything but itself) makes its record bad, and only its record: the rows
that fail are found by halving, never by a Python loop over the values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", tz="UTC")  # declared `timestamp`: microseconds, as Python, Spark and most ISO strings
DECLARED_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
    "date": pa.date32(),
    "binary": pa.binary(),
}
ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_MILLIS = pa.timestamp("ms", tz="UTC")
_HAS_ZONE = r"(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"


def declared_schema(schema: Mapping[str, str]) -> pa.Schema:
    """``records.schema`` (field name to type name, as validated by config.py) as an Arrow schema."""
    return pa.schema([pa.field(name, DECLARED_TYPES[kind]) for name, kind in schema.items()])


def coerce(table: pa.Table, declared: pa.Schema, rejected: dict[int, str]) -> tuple[pa.Table, dict[int, str]]:
    """The declared columns, cast from the types the reader inferred; a value that cannot be converted rejects
    its row (its reason is added to ``rejected``, by row index, unless the row is rejected already)."""
    columns = []
    for target in declared:
        if target.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name).combine_chunks()
        converted, failed = convert(column, target.type, coercion(column.type, target.type))
        columns.append(converted)
        for i in failed:
            if i not in rejected:
                shown = _shown(column[i].as_py())
                rejected[i] = f"field `{target.name}` = {shown} cannot be converted to {_type_name(target.type)}"
    return pa.Table.from_arrays(columns, schema=declared), rejected


class _Refused(Exception):
    """A source type that never converts to the target type (an object to an int): every non-null row is bad."""


def cast(target: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    return lambda array: array.cast(target)


def coercion(source: pa.DataType, target: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    """How values the JSON reader gave as ``source`` become ``target`` (a declared type), vectorised."""
    if source == target or pa.types.is_null(source):
        return cast(target)
    nested = pa.types.is_struct(source) or pa.types.is_list(source) or pa.types.is_large_list(source)
    number = pa.types.is_integer(source) or pa.types.is_floating(source)
    boolean = pa.types.is_boolean(source)
    if nested:
        return _refuse
    if pa.types.is_string(target):
        return cast(target)  # numbers and booleans as their JSON text
    if pa.types.is_string(source):
        if pa.types.is_timestamp(target):
            return _iso_to_timestamp
        return cast(target)  # "123" to int64, "1.5" to float64, "true" to bool, "2024-01-01" to date
    if pa.types.is_timestamp(target):
        return _epoch_millis if pa.types.is_integer(source) else _refuse  # integers: epoch milliseconds
    if number and (pa.types.is_integer(target) or pa.types.is_floating(target)):
        return cast(target)  # safe casts: 1.5 to int64 or 300 to int8 fail, per row
    if boolean and pa.types.is_boolean(target):
        return cast(target)
    return _refuse


def _refuse(array: pa.Array) -> pa.Array:
    raise _Refused


def _iso_to_timestamp(strings: pa.Array) -> pa.Array:
    """ISO 8601 strings to UTC timestamps: with a zone offset (Z, +02:00) as given; without one, as UTC. Up to
    microseconds as is; nanosecond strings are truncated to microseconds."""
    zoned = pc.match_substring_regex(strings, _HAS_ZONE)
    none = pa.scalar(None, pa.string())

    def parse(unit: str) -> pa.Array:
        with_zone = pc.if_else(zoned, strings, none).cast(pa.timestamp(unit, tz="UTC"))
        naive = pc.if_else(zoned, none, strings).cast(pa.timestamp(unit)).cast(pa.timestamp(unit, tz="UTC"))
        return pc.if_else(zoned, with_zone, naive)

    try:
        return parse("us")
    except pa.ArrowInvalid:
        return parse("ns").cast(TIMESTAMP, safe=False)


def _epoch_millis(numbers: pa.Array) -> pa.Array:
    return numbers.cast(pa.int64()).cast(_MILLIS).cast(TIMESTAMP)


def convert(
    array: pa.Array, target: pa.DataType, convert_all: Callable[[pa.Array], pa.Array]
) -> tuple[pa.Array, list[int]]:
    """``convert_all`` over the whole array. Where it fails, the rows that make it fail are found by halving (one
    vectorised call per slice, O(bad * log n) calls) and become nulls; their indices are returned."""
    try:
        return convert_all(array), []
    except _Refused:
        return pa.nulls(len(array), target), pc.indices_nonzero(pc.is_valid(array)).to_pylist()
    except ARROW_ERRORS:
        if len(array) <= 1:
            return pa.nulls(len(array), target), list(range(len(array)))
    mid = len(array) // 2
    left, left_bad = convert(array.slice(0, mid), target, convert_all)
    right, right_bad = convert(array.slice(mid), target, convert_all)
    return pa.concat_arrays([left, right]), left_bad + [mid + i for i in right_bad]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(t: pa.DataType) -> str:
    names = {str(v): k for k, v in DECLARED_TYPES.items()}
    return names.get(str(t), str(t))


def no_columns(rows: int) -> pa.Table:
    """A table of ``rows`` rows and no columns (records that are all ``{}``, or of a schema with no fields).
    Arrow keeps the row count of such a table only when it is made this way, and concat or take lose it."""
    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


FIT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError)


def table_of_rows(
    rows: list[Any], positions: list[int], build: Callable[[list[Any]], pa.Table], name: str, bad: dict[int, str]
) -> pa.Table:
    """``build(rows)``: records decoded one by one (Avro's fastavro path, Protobuf), as a table. A value its
    column cannot hold (an int beyond 32 bits, a decimal beyond its precision) makes its record bad
    (``bad[position]``, ``positions`` giving each row's place in the batch), found row by row only when the
    whole fails."""
    try:
        return build(rows)
    except FIT_ERRORS:
        pass
    kept = []
    for position, row in zip(positions, rows, strict=True):
        try:
            build([row])
        except FIT_ERRORS as exc:
            bad[position] = f"not valid for {name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
            continue
        kept.append(row)
    return build(kept)
