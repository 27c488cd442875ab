"""Hypothesis fuzzing of the record decoders (raw, string, json inferred and declared): whatever the bytes,
`Encoder.decode` returns the good rows and the bad records, nothing else escapes, and every offset of the batch
is accounted for exactly once, in order. `encode_batch` turns the result into Parquet that reads back."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kingest.batcher import Batch
from kingest.config import SCHEMA_TYPES
from kingest.encoder import Encoder

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01", "123", "1.5", "true", "kafka_offset"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c", "kafka_offset", "é", ""]) | st.text(max_size=4), children,
                        max_size=4),
    ),
    max_leaves=12,
)  # fmt: skip
raw_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, indent=1).encode()),  # pretty-printed: values with newlines
    st.sampled_from([b"", b" ", b"\n", b"{}", b'{"a":1}{"a":2}', b'{"a":1}\n{"a":2}', b"null", b"\xef\xbb\xbf{}",
                     b'{"v":1}}\n{"v":', b'1}\n{"v":2', b'{"a":NaN}', b'{"a":"\\ud800"}', b'{"a":1,"a":2}']),
)  # fmt: skip
schemas = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(SCHEMA_TYPES), min_size=1)


def make_batch(values: list[bytes | None], first: int = 0, partition: int = 0) -> Batch:
    n = len(values)
    return Batch(
        "t",
        partition,
        offsets=list(range(first, first + 3 * n, 3)),
        timestamps=[1_700_000_000_000] * n,
        keys=[None] * n,
        values=values,
        headers=[[]] * n,
    )


def check_accounting(encoder: Encoder, values: list[bytes | None]) -> None:
    batch = make_batch(values)
    decoded = encoder.decode(batch)
    good = decoded.table.column("kafka_offset").to_pylist()
    bad = [r.offset for r in decoded.rejected]
    assert good == sorted(good) and bad == sorted(bad)
    assert sorted(good + bad) == batch.offsets  # every record once: a row or a bad record
    assert all(r.reason for r in decoded.rejected)
    decoded.table.validate(full=True)  # valid UTF-8, consistent buffers
    result = encoder.encode_batch(batch)
    written = []
    for f in result.files:
        table = pq.read_table(io.BytesIO(f.data))
        assert table.num_rows == f.rows
        written += table.column("kafka_offset").to_pylist()
    if encoder.on_error == "dead-letter":
        assert sorted(written) == batch.offsets


@FUZZ
@given(st.lists(raw_values, max_size=12), st.sampled_from(["raw", "string", "json"]))
def test_any_bytes_in_any_format(values: list[bytes | None], record_format: str) -> None:
    check_accounting(Encoder(record_format, on_error="dead-letter"), values)


@FUZZ
@given(st.lists(st.lists(raw_values, max_size=8), min_size=1, max_size=3))
def test_json_inferred_across_batches(batches: list[list[bytes | None]]) -> None:
    """The same encoder across batches: the topic's columns evolve, conflicts stay bad records."""
    encoder = Encoder("json", on_error="dead-letter")
    for values in batches:
        check_accounting(encoder, values)


@FUZZ
@given(schemas, st.lists(raw_values, max_size=10))
def test_json_declared(schema: dict[str, str], values: list[bytes | None]) -> None:
    check_accounting(Encoder("json", schema=schema, on_error="dead-letter"), values)


@FUZZ
@given(st.lists(json_values.filter(lambda v: isinstance(v, dict)), max_size=10), st.sampled_from(["skip", "fail"]))
def test_json_objects_under_other_policies(objects: list[dict[str, Any]], on_error: str) -> None:
    check_accounting(Encoder("json", on_error=on_error), [json.dumps(o).encode() for o in objects])


consistent_records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "i": st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "s": st.none() | st.text(max_size=10),
            "b": st.none() | st.booleans(),
            "f": st.none() | st.floats(allow_nan=False, allow_infinity=False).map(lambda x: x if x % 1 else x + 0.5),
            "o": st.none() | st.fixed_dictionaries({"x": st.integers(-5, 5)}),
            "l": st.none() | st.lists(st.text(max_size=3), max_size=3),
        },
    ),
    max_size=10,
)


@FUZZ
@given(consistent_records)
def test_json_objects_of_consistent_types_round_trip(records: list[dict[str, Any]]) -> None:
    """The fast path loses nothing: objects whose fields keep their types come back as they went in."""
    decoded = Encoder("json").decode(make_batch([json.dumps(r).encode() for r in records]))
    assert decoded.rejected == []
    got = decoded.table.drop_columns([c for c in decoded.table.column_names if c.startswith("kafka_")]).to_pylist()
    for sent, row in zip(records, got, strict=True):
        for key in ("i", "s", "b", "o", "l"):
            assert row.get(key) == sent.get(key)
        if sent.get("f") is not None:
            assert math.isclose(row["f"], sent["f"], rel_tol=0, abs_tol=0) or row["f"] == sent["f"]


def rows(table: Any) -> list[str]:
    """The table's values, column by column, as Arrow prints them: NaN equals NaN there (not in Table.equals),
    and a date Python cannot hold prints too."""
    return [column.to_string(window=10**6, container_window=10**6) for column in table.columns]


def decode_flush(encoder: Encoder, flush: list[list[bytes | None]], prepare: bool) -> list[Any]:
    """Each batch of a flush (one a partition) decoded, after Encoder.prepare or not: its table or its rejects."""
    batches = [make_batch(values, partition=p) for p, values in enumerate(flush)]
    if prepare:
        encoder.prepare(batches)
    out = []
    for batch in batches:
        decoded = encoder.decode(batch)
        out.append((decoded.table, [(r.offset, r.reason) for r in decoded.rejected]))
    return out


@FUZZ
@given(
    st.lists(st.lists(raw_values, max_size=6), min_size=1, max_size=3),
    st.lists(st.lists(consistent_records.map(lambda rs: [json.dumps(r).encode() for r in rs]) | st.lists(raw_values,
             max_size=5)), min_size=2, max_size=4),
    st.none() | schemas,
)  # fmt: skip
def test_a_flush_prepared_in_one_read_decodes_as_each_batch_on_its_own(
    history: list[list[bytes | None]], flushes: list[list[list[bytes]]], schema: dict[str, str] | None
) -> None:
    """Encoder.prepare reads a flush's batches of a topic in one JSON read where that changes nothing: every
    batch's table, its bad records and the topic's columns learned are those of the batches read one by one, in
    the same order (as kingest did before), flush after flush, whatever the values."""
    flushes = [[list(values) for values in flush] for flush in flushes]
    one_by_one = Encoder("json", schema=schema, on_error="dead-letter")
    prepared = Encoder("json", schema=schema, on_error="dead-letter")
    for values in history:  # the topic's columns so far
        one_by_one.decode(make_batch(values))
        prepared.decode(make_batch(values))
    for flush in flushes:
        expected = decode_flush(one_by_one, flush, prepare=False)
        got = decode_flush(prepared, flush, prepare=True)
        for (want_table, want_bad), (got_table, got_bad) in zip(expected, got, strict=True):
            assert got_bad == want_bad
            assert got_table.schema.equals(want_table.schema, check_metadata=True)
            assert rows(got_table) == rows(want_table)
        assert prepared.decoder.known == one_by_one.decoder.known


@pytest.mark.parametrize(
    "flush",
    [
        # A known int field holding {} fails the read of the known columns, and a read inferring every type
        # again would take 9007199254740993 (not a double) as 9007199254740992.0: its own read rejects it.
        [[b'{"g": {}, "f": 9007199254740993}'], [b'{"f": 1.5}']],
        # ...and would read -0 as 0.0, where its own read keeps -0.0.
        [[b'{"g": {}}'], [b'{"f": -0}']],
    ],
)
def test_a_flush_that_fails_the_read_of_the_known_columns_is_read_batch_by_batch(flush) -> None:
    """Found by a review: prepare once read a flush that way (through the fallback of _read)."""
    one_by_one, prepared = Encoder("json", on_error="dead-letter"), Encoder("json", on_error="dead-letter")
    for encoder in (one_by_one, prepared):
        encoder.decode(make_batch([b'{"g": 1, "f": 1.5}']))
    expected = decode_flush(one_by_one, flush, prepare=False)
    got = decode_flush(prepared, flush, prepare=True)
    assert [(rows(t), bad) for t, bad in got] == [(rows(t), bad) for t, bad in expected]


def test_a_flush_of_known_columns_is_read_once() -> None:
    """The case prepare is for: a wide topic's flush, one small batch a partition, of the columns known."""
    encoder = Encoder("json")
    encoder.decode(make_batch([b'{"a": 1, "b": "x"}']))
    batches = [make_batch([b'{"a": %d, "b": "y"}' % i for i in range(3)], partition=p) for p in range(4)]
    encoder.prepare(batches)
    assert all(b.prepared is not None and b.prepared.num_rows == 3 for b in batches)
    tables = [encoder.decode(b).table for b in batches]
    assert all(b.prepared is None for b in batches)  # taken, not kept
    assert [t.column("a").to_pylist() for t in tables] == [[0, 1, 2]] * 4
    known = encoder.decoder.known["t"]
    # What one batch's own read would see differently leaves every batch to its own read, and the topic's known
    # columns as they were: a new field; a field null so far (a column of that batch only, not yet known); a
    # type that widens (int to float).
    for odd in (b'{"a": 1, "b": "y", "c": true}', b'{"a": 1, "b": "y", "z": null}', b'{"a": 1.5, "b": "y"}'):
        batches = [make_batch([b'{"a": 1, "b": "y"}'], partition=p) for p in range(3)]
        batches[1] = make_batch([odd], partition=1)
        encoder.prepare(batches)
        assert all(b.prepared is None for b in batches), odd
        assert encoder.decoder.known["t"].equals(known), odd
    assert encoder.decode(batches[0]).table.column_names == encoder.decode(batches[2]).table.column_names
