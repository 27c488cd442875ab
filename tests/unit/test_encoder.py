"""The encoder's promises: one decoding pass gives the good rows and the bad records (offset and reason); JSON
schemas are inferred per topic (new fields, widening, conflicts) or declared (coerced per column); every file
carries its schema and lineage; `records.on_error` decides what a batch becomes."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kingest.batcher import Batch
from kingest.encoder import Encoder
from kingest.parquet import file_codec

UTC = dt.UTC


def make_batch(values: list[bytes | None], topic: str = "t", partition: int = 0, first: int = 100) -> Batch:
    n = len(values)
    return Batch(
        topic,
        partition,
        offsets=list(range(first, first + 2 * n, 2)),  # sparse offsets: rows must follow offsets, not positions
        timestamps=[1_700_000_000_000 + i for i in range(n)],
        keys=[f"k{i}".encode() for i in range(n)],
        values=list(values),
        headers=[[("h", b"v")] if i % 2 else [] for i in range(n)],
    )


def rows(encoder: Encoder, values: list[bytes | None], **kw: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The decoded rows (offset + value columns) and the rejected records (offset -> reason)."""
    decoded = encoder.decode(make_batch(values, **kw))
    value_columns = [c for c in decoded.table.column_names if c not in {"kafka_topic", "kafka_partition"}]
    table = decoded.table.select(value_columns).drop_columns(["kafka_timestamp", "kafka_key", "kafka_headers"])
    return table.to_pylist(), {r.offset: r.reason for r in decoded.rejected}


# ---------------------------------------------------------------------------------------------- bad records


def test_json_bad_records_are_found_in_one_pass_with_their_offsets_and_reasons():
    values = [
        b'{"a": 1}',
        b"not json",
        b"",
        b"[1, 2]",
        b"null",
        b'{"a": 2}',
        b'{"a": "\xff"}',  # invalid UTF-8 inside a string: pyarrow alone would store it
        b'{"kafka_offset": 5}',
        b'{"a": 3}',
    ]
    got, bad = rows(Encoder("json"), values)
    assert got == [{"kafka_offset": 100, "a": 1}, {"kafka_offset": 110, "a": 2}, {"kafka_offset": 116, "a": 3}]
    assert bad[102].startswith("not valid JSON (Expecting value")
    assert bad[104] == "an empty value, not JSON"
    assert bad[106] == "a JSON array, not an object"
    assert bad[108] == "a JSON null, not an object"
    assert bad[112] == "not valid UTF-8"
    assert "collides with kingest's metadata column" in bad[114]
    assert len(bad) == 6


def test_two_objects_in_one_value_cannot_shift_rows_against_offsets():
    """A value holding two JSON objects and an empty value: as plain newline-delimited JSON the row count
    would still match the record count, with every row after them one offset off."""
    values = [b'{"a": 1}', b'{"a": 2} {"a": 3}', b'{"a": 4}', b"", b'{"a": 5}']
    got, bad = rows(Encoder("json"), values)
    assert got == [{"kafka_offset": 100, "a": 1}, {"kafka_offset": 104, "a": 4}, {"kafka_offset": 108, "a": 5}]
    assert set(bad) == {102, 106}
    assert "Extra data" in bad[102]


def test_pretty_printed_json_and_tombstones_are_good_records():
    values = [b'{\n  "a": 1,\n  "b": "x"\n}', None, b'{"a": 2}']
    got, bad = rows(Encoder("json"), values)
    assert bad == {}
    assert got == [
        {"kafka_offset": 100, "a": 1, "b": "x"},
        {"kafka_offset": 102, "a": None, "b": None},
        {"kafka_offset": 104, "a": 2, "b": None},
    ]


def test_string_format_rejects_only_invalid_utf8_and_raw_rejects_nothing():
    values = [b"caf\xc3\xa9", b"\xff\xfe", None, b"ok"]
    got, bad = rows(Encoder("string"), values)
    assert got == [
        {"kafka_offset": 100, "value": "café"},
        {"kafka_offset": 104, "value": None},
        {"kafka_offset": 106, "value": "ok"},
    ]
    assert bad == {102: "not valid UTF-8"}
    got, bad = rows(Encoder("raw"), values)
    assert [r["value"] for r in got] == values and bad == {}


def test_metadata_columns_follow_the_good_rows():
    decoded = Encoder("json").decode(make_batch([b'{"a": 1}', b"bad", b'{"a": 2}', b'{"a": 3}'], partition=4))
    table = decoded.table
    assert table.column_names[:6] == [
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "kafka_key",
        "kafka_headers",
    ]
    assert table.column("kafka_offset").to_pylist() == [100, 104, 106]
    assert table.column("kafka_key").to_pylist() == [b"k0", b"k2", b"k3"]
    assert table.column("kafka_headers").to_pylist() == [[], [], [{"key": "h", "value": b"v"}]]
    assert table.column("kafka_partition").to_pylist() == [4, 4, 4]
    assert table.column("kafka_timestamp")[1].as_py() == dt.datetime.fromtimestamp(1_700_000_000.002, UTC)


# ---------------------------------------------------------------------------------------------- inferred


def test_inferred_schema_new_field_becomes_a_nullable_column_in_later_batches():
    encoder = Encoder("json")
    first, _ = rows(encoder, [b'{"a": 1}'])
    later, bad = rows(encoder, [b'{"a": 2, "b": "new"}', b'{"a": 3}'])
    assert first == [{"kafka_offset": 100, "a": 1}]
    assert bad == {} and later == [{"kafka_offset": 100, "a": 2, "b": "new"}, {"kafka_offset": 102, "a": 3, "b": None}]
    # and the column stays in the files after it, null where a record lacks it
    after, _ = rows(encoder, [b'{"a": 4}'])
    assert after == [{"kafka_offset": 100, "a": 4, "b": None}]


def test_inferred_ints_widen_to_floats_and_other_changes_of_type_are_bad_records():
    encoder = Encoder("json")
    rows(encoder, [b'{"n": 1, "s": "x", "o": {"k": 1}}'])
    got, bad = rows(encoder, [b'{"n": 2.5}', b'{"n": "three"}', b'{"s": 4}', b'{"o": [1]}', b'{"n": 5}'])
    assert [r["n"] for r in got] == [2.5, 5.0]
    assert bad == {
        102: "type conflict: field `n` is a number in earlier records, a string in this one",
        104: "type conflict: field `s` is a string in earlier records, a number in this one",
        106: "type conflict: field `o` is an object in earlier records, an array in this one",
    }


def test_an_int_beyond_2_53_widens_to_the_nearest_float_whether_a_batch_is_read_whole_or_in_pieces():
    """The JSON reader puts 9007199254740993 in a float column as 9007199254740992.0. A batch read in pieces (one
    bad record sends it down the slow path, and _concat widens the pieces' columns) must give the same rows, not
    a crash (an ArrowInvalid from the cast once escaped records.on_error)."""
    values = [b'{"t": 9007199254740993}', b"{}", b'{"t": 1.5, "s": [1]}']
    whole, _ = rows(Encoder("json"), values)
    pieces, bad = rows(Encoder("json", on_error="skip"), [b'{"kafka_offset": 1}', *values], first=98)
    assert bad == {98: "type conflict: field kafka_offset collides with kingest's metadata column of that name"}
    expected = [
        {"kafka_offset": 100, "t": 9007199254740992.0, "s": None},
        {"kafka_offset": 102, "t": None, "s": None},
        {"kafka_offset": 104, "t": 1.5, "s": [1]},
    ]
    assert whole == expected and pieces == expected


def test_inferred_type_conflicts_inside_a_batch_first_seen_wins():
    values = [b'{"x": 1}'] * 3 + [b'{"x": "one"}'] * 3 + [b'{"x": 2}']
    got, bad = rows(Encoder("json"), values)
    assert [r["x"] for r in got] == [1, 1, 1, 2]
    assert sorted(bad) == [106, 108, 110]


def test_a_producer_switching_a_field_type_rejects_every_later_record():
    """The realistic conflict: every record after the switch conflicts. Found per field in one pass."""
    encoder = Encoder("json")
    values = [json.dumps({"id": i, "amount": i}).encode() for i in range(500)]
    values += [json.dumps({"id": i, "amount": f"{i}.00"}).encode() for i in range(500, 1000)]
    decoded = encoder.decode(make_batch(values, first=0))
    assert decoded.table.column("kafka_offset").to_pylist() == list(range(0, 1000, 2))
    assert [r.offset for r in decoded.rejected] == list(range(1000, 2000, 2))


def test_nested_conflicts_are_bad_records_too():
    encoder = Encoder("json")
    got, bad = rows(encoder, [b'{"o": {"k": 1}}', b'{"o": {"k": "s"}}', b'{"o": {"k": 2, "j": true}}'])
    assert [r["o"] for r in got] == [{"k": 1, "j": None}, {"k": 2, "j": True}]
    assert list(bad) == [102] and bad[102].startswith("type conflict")


def test_inferred_json_strings_stay_strings():
    """pyarrow infers ISO-looking strings as timestamps: kingest keeps the text (declare `timestamp` for that)."""
    encoder = Encoder("json")
    got, _ = rows(encoder, [b'{"t": "2024-01-01T00:00:00Z", "d": "2024-01-02"}'])
    assert got == [{"kafka_offset": 100, "t": "2024-01-01T00:00:00Z", "d": "2024-01-02"}]
    got, bad = rows(encoder, [b'{"t": "yesterday", "d": "2024-01-03"}'])
    assert bad == {} and got[0]["t"] == "yesterday"


def test_each_topic_has_its_own_columns():
    encoder = Encoder("json")
    rows(encoder, [b'{"a": 1}'], topic="one")
    got, bad = rows(encoder, [b'{"a": "text", "b": 2}'], topic="two")
    assert bad == {} and got == [{"kafka_offset": 100, "a": "text", "b": 2}]


# ---------------------------------------------------------------------------------------------- declared

DECLARED = {
    "s": "string",
    "i": "int64",
    "small": "int8",
    "f": "float64",
    "b": "bool",
    "t": "timestamp",
    "d": "date",
    "raw": "binary",
}


@pytest.mark.parametrize(
    ("field", "json_value", "expected"),
    [
        ("s", '"text"', "text"),
        ("s", "5", "5"),
        ("s", "5.5", "5.5"),
        ("s", "true", "true"),
        ("i", "7", 7),
        ("i", '"123"', 123),
        ("i", "2.0", 2),
        ("small", '"-5"', -5),
        ("f", "1", 1.0),
        ("f", '"1.5"', 1.5),
        ("b", "true", True),
        ("b", '"false"', False),
        ("t", '"2024-01-01T10:00:00Z"', dt.datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("t", '"2024-01-01T12:00:00.250+02:00"', dt.datetime(2024, 1, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("t", '"2024-01-01T10:00:00.123456+00:00"', dt.datetime(2024, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("t", '"2024-01-01 10:00:00"', dt.datetime(2024, 1, 1, 10, tzinfo=UTC)),  # no zone: UTC
        ("t", "1704103200000", dt.datetime(2024, 1, 1, 10, tzinfo=UTC)),  # a number: epoch milliseconds
        ("d", '"2024-02-29"', dt.date(2024, 2, 29)),
        ("raw", '"bytes"', b"bytes"),
        ("i", "null", None),
    ],
)
def test_declared_values_are_coerced_to_the_declared_type(field: str, json_value: str, expected: Any):
    value = f'{{"{field}": {json_value}}}'.encode()
    for values in ([value], [value, b'{"i": "1", "s": 2}']):  # on its own, and in a batch that needs coercion
        got, bad = rows(Encoder("json", schema=DECLARED), values)
        assert bad == {}
        assert got[0][field] == expected


@pytest.mark.parametrize(
    ("field", "json_value", "shown", "type_name"),
    [
        ("i", '"twelve"', '"twelve"', "int64"),
        ("i", "1.5", "1.5", "int64"),
        ("small", "300", "300", "int8"),
        ("i", "true", "true", "int64"),
        ("i", '{"x": 1}', '{"x": 1}', "int64"),
        ("s", "[1, 2]", "[1, 2]", "string"),
        ("b", "1", "1", "bool"),
        ("t", '"not a time"', '"not a time"', "timestamp"),
        ("d", '"2023-02-30"', '"2023-02-30"', "date"),
    ],
)
def test_a_value_that_cannot_be_coerced_makes_a_bad_record(field: str, json_value: str, shown: str, type_name: str):
    values = [b'{"i": 1}', f'{{"{field}": {json_value}}}'.encode(), b'{"i": "2"}']
    got, bad = rows(Encoder("json", schema=DECLARED), values)
    assert [r["i"] for r in got] == [1, 2]
    assert bad == {102: f"field `{field}` = {shown} cannot be converted to {type_name}"}


def test_declared_schema_keeps_declared_columns_only_in_declared_order():
    got, bad = rows(Encoder("json", schema={"b": "string", "a": "int32"}), [b'{"a": 1, "z": {"deep": 1}}'])
    assert bad == {} and got == [{"kafka_offset": 100, "b": None, "a": 1}]


# ---------------------------------------------------------------------------------------------- files


def read_file(data: bytes) -> tuple[pa.Table, dict[bytes, bytes]]:
    table = pq.read_table(io.BytesIO(data))
    return table, pq.read_metadata(io.BytesIO(data)).metadata


def test_each_file_records_its_schema_and_lineage_in_the_parquet_footer():
    encoder = Encoder(
        "json",
        lineage={"kingest.pipeline": "orders", "kingest.semantics": "exactly-once"},
        file_tag="abc123",
    )
    batch = make_batch([b'{"a": 1, "b": "x"}', b'{"a": 2}'], topic="orders", partition=3, first=40)
    [file] = encoder.encode_batch(batch).files
    table, metadata = read_file(file.data)
    assert file.path == "topic=orders/partition=3/orders-3-00000000000000000040-00000000000000000042-abc123-0.parquet"
    # The same offsets cut again by the same writer (after a rewind) get a new name: names are never reused.
    [again] = encoder.encode_batch(batch).files
    assert again.path != file.path
    assert {k: metadata[k.encode()].decode() for k in [
        "kingest.topic", "kingest.partition", "kingest.first_offset", "kingest.last_offset", "kingest.rows",
        "kingest.pipeline", "kingest.semantics", "kingest.kind",
    ]} == {
        "kingest.topic": "orders", "kingest.partition": "3", "kingest.first_offset": "40",
        "kingest.last_offset": "42", "kingest.rows": "2", "kingest.pipeline": "orders",
        "kingest.semantics": "exactly-once", "kingest.kind": "data",
    }  # fmt: skip
    # The Arrow schema itself is in the footer: a reader gets the exact types back, not just Parquet's.
    assert b"ARROW:schema" in metadata
    assert table.schema.field("kafka_timestamp").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("a").type == pa.int64() and table.schema.field("b").type == pa.string()
    assert table.column("kafka_offset").to_pylist() == [40, 42]


def codecs(data: bytes) -> set[str]:
    """The codecs of a Parquet file's column chunks."""
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    return {
        metadata.row_group(g).column(c).compression
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
    }


def test_a_file_smaller_than_compress_min_bytes_is_written_uncompressed():
    """lake.compress_min_bytes: a small file is written without a codec (its pages are too small to gain from
    one); a large one with lake.compression; 0 compresses every file. Either way the file reads back the same."""
    small = make_batch([b'{"a": 1, "b": "x"}', b'{"a": 2, "b": "y"}'])
    large = make_batch([json.dumps({"a": i, "b": f"text {i % 7}" * 20}).encode() for i in range(1000)])
    encoder = Encoder("json", compression="zstd", compress_min_bytes=64 * 1024)
    [small_file] = encoder.encode_batch(small).files
    [large_file] = encoder.encode_batch(large).files
    assert codecs(small_file.data) == {"UNCOMPRESSED"}
    assert codecs(large_file.data) == {"ZSTD"}
    assert read_file(small_file.data)[0].column("a").to_pylist() == [1, 2]
    assert read_file(large_file.data)[0].column("a").to_pylist() == list(range(1000))

    [every] = Encoder("json", compression="snappy", compress_min_bytes=0).encode_batch(small).files
    assert codecs(every.data) == {"SNAPPY"}
    [none] = Encoder("json", compression="none", compress_min_bytes=64 * 1024).encode_batch(large).files
    assert codecs(none.data) == {"UNCOMPRESSED"}


def test_a_slice_of_a_large_table_counts_its_own_rows_for_compress_min_bytes():
    """A flush's batches can be slices of one read of the flush (Decoder.prepare): a batch's size is its own rows,
    not the buffers of the whole read."""
    whole = pa.table({"a": list(range(100_000)), "b": ["some text"] * 100_000})
    assert file_codec(whole, "zstd", 64 * 1024) == "zstd"
    assert file_codec(whole.slice(500, 60), "zstd", 64 * 1024) is None
    assert file_codec(whole.slice(500, 60), "zstd", 0) == "zstd"


def test_on_error_fail_settles_the_records_before_the_bad_one_and_names_it():
    encoder = Encoder("json", on_error="fail")
    batch = make_batch([b'{"a": 1}', b'{"a": 2}', b"{oops", b'{"a": 4}'], topic="t", partition=1)
    result = encoder.encode_batch(batch)
    assert result.error is not None
    assert str(result.error).startswith("record t[1]@104 cannot be decoded: not valid JSON")
    assert result.batch.offsets == [100, 102] and result.batch.next_offset == 103
    [file] = result.files
    assert read_file(file.data)[0].column("kafka_offset").to_pylist() == [100, 102]
    first_bad = encoder.encode_batch(make_batch([b"{oops", b'{"a": 1}']))
    assert first_bad.files == [] and len(first_bad.batch) == 0


def test_on_error_skip_settles_the_whole_batch_without_the_bad_records():
    result = Encoder("json", on_error="skip").encode_batch(make_batch([b'{"a": 1}', b"{oops", b'{"a": 3}']))
    assert result.error is None and result.batch.next_offset == 105
    assert [r.offset for r in result.rejected] == [102]
    [file] = result.files
    assert file.kind == "data" and read_file(file.data)[0].column("kafka_offset").to_pylist() == [100, 104]
    all_bad = Encoder("json", on_error="skip").encode_batch(make_batch([b"x", b"y"]))
    assert all_bad.files == [] and all_bad.batch.next_offset == 103 and len(all_bad.rejected) == 2


def test_on_error_dead_letter_adds_a_file_of_the_raw_bad_records():
    encoder = Encoder("json", on_error="dead-letter", lineage={"kingest.pipeline": "p"}, file_tag="w1")
    batch = make_batch([b'{"a": 1}', b"{oops", b'{"a": 3}', b"\xff"], topic="t", partition=2)
    result = encoder.encode_batch(batch)
    data, dead = result.files
    assert data.kind == "data" and dead.kind == "dead-letter"
    assert dead.path == "_dead_letters/topic=t/partition=2/t-2-00000000000000000102-00000000000000000106-w1-1.parquet"
    assert dead.entry()["kind"] == "dead-letter" and "kind" not in data.entry()
    table, metadata = read_file(dead.data)
    assert metadata[b"kingest.kind"] == b"dead-letter" and metadata[b"kingest.pipeline"] == b"p"
    assert table.to_pylist() == [
        {
            "kafka_topic": "t",
            "kafka_partition": 2,
            "kafka_offset": 102,
            "kafka_timestamp": dt.datetime.fromtimestamp(1_700_000_000.001, UTC),
            "kafka_key": b"k1",
            "kafka_headers": [{"key": "h", "value": b"v"}],
            "value": b"{oops",
            "error": result.rejected[0].reason,
        },
        {
            "kafka_topic": "t",
            "kafka_partition": 2,
            "kafka_offset": 106,
            "kafka_timestamp": dt.datetime.fromtimestamp(1_700_000_000.003, UTC),
            "kafka_key": b"k3",
            "kafka_headers": [{"key": "h", "value": b"v"}],
            "value": b"\xff",
            "error": "not valid UTF-8",
        },
    ]
    assert batch.values[1] == b"{oops"  # the batch's raw values are never rewritten


def test_partitioned_files_split_by_record_timestamp_and_skip_empty_output():
    encoder = Encoder("json", partition_by=("date",))
    batch = make_batch([b'{"a": 1}', b'{"a": 2}'])
    batch.timestamps = [1_700_000_000_000, 1_700_000_000_000 + 86_400_000]
    files = encoder.encode_batch(batch).files
    assert [f.path.split("/")[1] for f in files] == ["date=2023-11-14", "date=2023-11-15"]
    assert Encoder("json").encode_table("t", 0, Encoder("json").decode(make_batch([b"bad"])).table) == []


def test_empty_objects_are_null_columns_until_they_have_fields():
    """Parquet cannot store an object with no fields: a field only ever seen as {} is written as nulls."""
    encoder = Encoder("json")
    [first] = encoder.encode_batch(make_batch([b'{"meta": {}, "deep": {"inner": {}}, "a": 1}'])).files
    table = read_file(first.data)[0]
    assert table.column("meta").null_count == 1 and table.column("deep").to_pylist() == [{"inner": None}]
    [later] = encoder.encode_batch(make_batch([b'{"meta": {"k": "v"}, "a": 2}'])).files
    assert read_file(later.data)[0].column("meta").to_pylist() == [{"k": "v"}]


def test_a_topic_starts_from_the_schema_it_learned():
    """A run starts from the lake's columns (Encoder.learn): a field the lake holds as a number rejects a string,
    even as the first record of the run, and new fields still join."""
    [file] = Encoder("json").encode_batch(make_batch([b'{"amount": 5}'])).files
    encoder = Encoder("json")
    encoder.learn({"t": pq.read_schema(io.BytesIO(file.data))})  # metadata columns and all
    got, bad = rows(encoder, [b'{"amount": "5.5 EUR"}', b'{"amount": 6, "new": true}'])
    assert bad == {100: "type conflict: field `amount` is a number in earlier records, a string in this one"}
    assert got == [{"kafka_offset": 102, "amount": 6, "new": True}]
    got, bad = rows(encoder, [b'{"amount": "x"}'], topic="other")  # another topic learned nothing
    assert bad == {} and got == [{"kafka_offset": 100, "amount": "x"}]
