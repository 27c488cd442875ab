"""Avro and JSON Schema records (records.format: avro | json-schema): what a batch of wire-format records becomes.

An in-memory registry stands in for the real one here (fast, every case); tests/integration/test_schema_registry.py
runs the same paths against Apicurio Registry and the real broker."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import struct
import uuid
from typing import Any, cast

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kingest.avro import AvroSchema, AvroSchemaError
from kingest.config import parse
from kingest.encoder import Encoder
from kingest.errors import ConfigError
from kingest.registry import RegisteredSchema, Registry, RegistryUnavailable
from tests.unit.test_encoder import make_batch

UTC = dt.UTC


class FakeRegistry:
    """Schemas by id, as Registry.schema gives them."""

    shown = "http://registry.test"

    def __init__(self, schemas: dict[int, Any], kind: str = "AVRO") -> None:
        self.schemas = {i: RegisteredSchema(i, kind, json.dumps(s)) for i, s in schemas.items()}
        self.asked: list[int] = []

    def schema(self, schema_id: int) -> RegisteredSchema | None:
        self.asked.append(schema_id)
        return self.schemas.get(schema_id)

    def subjects(self, schema_id: int) -> tuple[str, ...]:
        return ("t-value",) if schema_id in self.schemas else ()


def record(fields: list[dict[str, Any]], name: str = "Order") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "shop", "fields": fields}


def avro(schema: Any, value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def wire(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + payload


def decode(encoder: Encoder, values: list[bytes | None]) -> tuple[pa.Table, dict[int, str]]:
    decoded = encoder.decode(make_batch(values))
    return decoded.table, {r.offset: r.reason for r in decoded.rejected}


def value_rows(table: pa.Table) -> list[dict[str, Any]]:
    names = [c for c in table.column_names if not c.startswith("kafka_") or c == "kafka_offset"]
    return table.select(names).to_pylist()


RICH = record(
    [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": record([{"name": "name", "type": "string"}], "Customer")},
        {"name": "amount", "type": "double"},
        {"name": "qty", "type": "int"},
        {"name": "ratio", "type": "float"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "raw", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "flag", "type": "boolean"},
    ]
)
NOW = dt.datetime(2026, 12, 6, 12, 30, 15, 123000, tzinfo=UTC)


def rich(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "customer": {"name": f"c{i}"},
        "amount": i * 1.5,
        "qty": i,
        "ratio": 0.5,
        "note": None if i % 3 else f"note {i}",
        "tags": ["a", "b"][: i % 3],
        "status": "PAID" if i % 2 else "NEW",
        "ts": NOW,
        "ts_us": NOW,
        "day": dt.date(2026, 12, 6),
        "price": decimal.Decimal("12.34"),
        "uid": str(uuid.UUID(int=i)),
        "raw": bytes([i % 256]),
        "digest": b"abcd",
        "flag": i % 2 == 0,
    }


# ------------------------------------------------------------------------------------------ types, both paths


def test_the_bulk_reader_and_fastavro_give_the_same_table_with_arrow_types_for_the_logical_types():
    schema = AvroSchema(json.dumps(RICH), "schema id 1")
    assert schema.bulk is not None  # this schema is one the bulk reader takes
    payloads = [avro(RICH, rich(i)) for i in range(300)]
    bulk, bad = schema.decode(payloads)
    slow, slow_bad = schema._fastavro(payloads)
    assert bad == {} and slow_bad == {}
    assert bulk.equals(slow)
    types = {f.name: f.type for f in bulk.schema}
    assert types["qty"] == pa.int32() and types["ratio"] == pa.float32()
    assert types["ts"] == pa.timestamp("ms", tz="UTC") and types["ts_us"] == pa.timestamp("us", tz="UTC")
    assert types["day"] == pa.date32() and types["price"] == pa.decimal128(10, 2)
    assert types["uid"] == pa.string() and types["status"] == pa.string() and types["digest"] == pa.binary()
    row = bulk.slice(7, 1).to_pylist()[0]
    assert row["customer"] == {"name": "c7"} and row["status"] == "PAID" and row["tags"] == ["a"]
    assert row["ts"] == NOW and row["price"] == decimal.Decimal("12.34") and row["uid"] == str(uuid.UUID(int=7))


def test_a_nullable_nested_record_is_a_nullable_struct_on_both_paths():
    address = record([{"name": "city", "type": "string"}], "Address")
    schema_json = record([{"name": "id", "type": "long"}, {"name": "address", "type": ["null", address]}])
    schema = AvroSchema(schema_json, "schema id 6")
    values = [{"id": 1, "address": {"city": "Oslo"}}, {"id": 2, "address": None}]
    payloads = [avro(schema_json, v) for v in values]
    bulk, bad = schema.decode(payloads)
    slow, slow_bad = schema._fastavro(payloads)
    assert bad == {} and slow_bad == {} and bulk.equals(slow)
    assert bulk.to_pylist() == values


def test_maps_unions_of_several_types_and_nested_enums_are_decoded_by_fastavro():
    inner = record([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}], "Inner")
    schema_json = record(
        [
            {"name": "m", "type": {"type": "map", "values": "long"}},
            {"name": "u", "type": ["null", "string", "long", record([{"name": "z", "type": "int"}], "Z")]},
            {"name": "inner", "type": inner},
        ]
    )
    schema = AvroSchema(schema_json, "schema id 2")
    assert schema.bulk is None
    values = [
        {"m": {"a": 1}, "u": "text", "inner": {"e": "Y"}},
        {"m": {}, "u": 5, "inner": {"e": "X"}},
        {"m": {"b": 2, "c": 3}, "u": None, "inner": {"e": "X"}},
        {"m": {}, "u": {"z": 9}, "inner": {"e": "X"}},
    ]
    table, bad = schema.decode([avro(schema_json, v) for v in values])
    assert bad == {}
    assert table.schema.field("m").type == pa.map_(pa.string(), pa.int64())
    assert table.column("u").to_pylist() == [
        {"member0": "text", "member1": None, "member2": None},
        {"member0": None, "member1": 5, "member2": None},
        None,
        {"member0": None, "member1": None, "member2": {"z": 9}},
    ]
    assert table.column("m").to_pylist()[2] == [("b", 2), ("c", 3)]
    assert table.column("inner").to_pylist()[0] == {"e": "Y"}


def test_a_malformed_payload_is_a_bad_record_and_never_shifts_its_neighbours():
    schema_json = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])
    schema = AvroSchema(schema_json, "schema id 3")
    payloads = [avro(schema_json, {"a": i, "b": f"x{i}"}) for i in range(6)]
    payloads[2] = payloads[2][:-2]  # truncated
    payloads[4] = payloads[4] + b"\x02"  # a byte too many: Avro readers ignore trailing bytes
    table, bad = schema.decode(payloads)
    assert set(bad) == {2} and "not valid Avro for schema id 3" in bad[2]
    assert table.to_pylist() == [{"a": i, "b": f"x{i}"} for i in (0, 1, 3, 4, 5)]


def test_a_payload_with_a_byte_too_many_never_shifts_the_records_after_it():
    schema_json = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])
    schema = AvroSchema(schema_json, "schema id 3")
    payloads = [avro(schema_json, {"a": i, "b": f"x{i}"}) for i in range(6)]
    payloads[2] = payloads[2] + b"\x02"  # read alone, the extra byte is ignored; framed, it would shift the rest
    table, bad = schema.decode(payloads)
    assert bad == {} and table.to_pylist() == [{"a": i, "b": f"x{i}"} for i in range(6)]


def test_a_recursive_schema_is_refused_with_its_reason():
    with pytest.raises(AvroSchemaError, match="refers to itself"):
        AvroSchema(record([{"name": "next", "type": ["null", "shop.Order"]}]), "schema id 4")


def test_a_schema_that_is_not_a_record_becomes_one_value_column():
    schema = AvroSchema('"string"', "schema id 5")
    table, bad = schema.decode([avro("string", "hello"), avro("string", "")])
    assert bad == {} and table.to_pylist() == [{"value": "hello"}, {"value": ""}]


# ------------------------------------------------------------------------------------------- the wire format


def test_records_of_several_schema_ids_become_one_table_in_offset_order_new_fields_null():
    v1 = record([{"name": "id", "type": "long"}, {"name": "qty", "type": "int"}])
    v2 = record(
        [
            {"name": "id", "type": "long"},
            {"name": "qty", "type": "long"},  # int -> long: a promotion Avro allows
            {"name": "note", "type": ["null", "string"], "default": None},
        ]
    )
    registry = FakeRegistry({1: v1, 2: v2})
    encoder = Encoder("avro", registry=registry)  # type: ignore[arg-type]
    values: list[bytes | None] = [
        wire(1, avro(v1, {"id": 0, "qty": 1})),
        wire(2, avro(v2, {"id": 1, "qty": 2, "note": "new"})),
        None,  # a tombstone: a row, value columns null
        wire(1, avro(v1, {"id": 3, "qty": 4})),
    ]
    table, bad = decode(encoder, values)
    assert bad == {}
    assert value_rows(table) == [
        {"kafka_offset": 100, "id": 0, "qty": 1, "note": None},
        {"kafka_offset": 102, "id": 1, "qty": 2, "note": "new"},
        {"kafka_offset": 104, "id": None, "qty": None, "note": None},
        {"kafka_offset": 106, "id": 3, "qty": 4, "note": None},
    ]
    assert table.schema.field("qty").type == pa.int64()
    assert sorted(set(registry.asked)) == [1, 2] and len(registry.asked) == 2  # each id asked once
    (file,) = encoder.encode_batch(make_batch(values)).files
    footer = pq.read_schema(pa.BufferReader(file.data)).metadata
    assert json.loads(footer[b"kingest.schema_ids"]) == [1, 2]
    assert json.loads(footer[b"kingest.schema_subjects"]) == ["t-value"]


def test_wire_format_batches_are_read_in_bulk_with_their_headers_and_match_fastavro(monkeypatch):
    registry = FakeRegistry({3: RICH})
    values: list[bytes | None] = [wire(3, avro(RICH, rich(i))) for i in range(50)]
    slow_table, slow_bad = decode(Encoder("avro", registry=registry), values)  # type: ignore[arg-type]

    def refused(self: AvroSchema, payloads: Any) -> Any:
        raise AssertionError("a clean batch in the wire format fell back to fastavro")

    monkeypatch.setattr(AvroSchema, "_fastavro", refused)
    table, bad = decode(Encoder("avro", registry=registry), values)  # type: ignore[arg-type]
    assert bad == {} == slow_bad
    assert table.equals(slow_table) and value_rows(table)[7]["customer"] == {"name": "c7"}


def test_a_wire_format_payload_a_byte_short_or_long_never_shifts_its_neighbours():
    schema_json = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])
    encoder = Encoder("avro", registry=FakeRegistry({5: schema_json}), on_error="skip")  # type: ignore[arg-type]
    values: list[bytes | None] = [wire(5, avro(schema_json, {"a": i, "b": f"x{i}"})) for i in range(8)]
    values[2] = cast(bytes, values[2])[:-1]  # truncated
    values[4] = cast(bytes, values[4]) + b"\x02"  # a byte too many: read alone, it is ignored
    values[6] = b""  # empty
    table, bad = decode(encoder, values)
    assert set(bad) == {104, 112}
    assert "not valid Avro for schema id 5" in bad[104] and "an empty value, 0 bytes" in bad[112]
    assert value_rows(table) == [
        {"kafka_offset": 100 + 2 * i, "a": i, "b": f"x{i}"} for i in range(8) if i not in (2, 6)
    ]


def test_a_payload_that_forges_the_next_framed_record_never_replaces_it():
    """The bulk read frames each record between its index and a mark; a payload that carries its own record, a mark
    (the one kingest once used for every read), the next index and header and a record of its choosing must not
    push the real next record out of the block: the table is what fastavro reads record by record."""
    from kingest.avro import _long

    schema_json = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])
    encoder = Encoder("avro", registry=FakeRegistry({5: schema_json}))  # type: ignore[arg-type]
    old_mark = b"\x8e\x15kq\xd2\x03\x9b\x7f"
    forged = (
        avro(schema_json, {"a": 0, "b": "x0"})
        + old_mark
        + _long(1)
        + wire(5, avro(schema_json, {"a": 666, "b": "EVIL"}))
    )
    values: list[bytes | None] = [wire(5, forged), wire(5, avro(schema_json, {"a": 1, "b": "x1"}))]
    table, bad = decode(encoder, values)
    assert bad == {}  # fastavro ignores what follows a record, as Avro readers do
    assert [(r["a"], r["b"]) for r in value_rows(table)] == [(0, "x0"), (1, "x1")]


@pytest.mark.parametrize("ids", [3, 49])  # a kernel per id, and one pass for many ids
def test_the_wire_format_groups_are_those_a_plain_loop_finds_in_order_of_first_appearance(ids):
    import random

    from kingest.decode import _wire_groups

    rng = random.Random(ids)
    values: list[bytes | None] = [
        None if i % 97 == 0 else b"\x07abc" if i % 13 == 0 else wire(rng.randrange(1, ids + 1), b"x")
        for i in range(3000)
    ]
    expected: dict[int, list[int]] = {}
    for i, value in enumerate(values):
        if value is not None and value[0] == 0:
            expected.setdefault(int.from_bytes(value[1:5], "big"), []).append(i)
    groups, tombstones, bad = _wire_groups(pa.array(values, pa.large_binary()))
    assert [(k, list(v)) for k, v in groups.items()] == list(expected.items())
    assert tombstones == [i for i in range(3000) if i % 97 == 0]
    assert sorted(bad) == [i for i in range(3000) if i % 13 == 0 and i % 97]
    assert "first byte 0x07, 4 bytes" in bad[13]


def test_bad_wire_format_unknown_ids_other_schema_types_and_incompatible_changes_are_bad_records():
    v1 = record([{"name": "amount", "type": "double"}])
    changed = record([{"name": "amount", "type": "string"}])
    registry = FakeRegistry({1: v1, 7: changed})
    registry.schemas[9] = RegisteredSchema(9, "JSON", '{"type": "object"}')
    encoder = Encoder("avro", registry=registry, on_error="skip")  # type: ignore[arg-type]
    values: list[bytes | None] = [
        wire(1, avro(v1, {"amount": 1.5})),
        b'{"amount": 2}',  # plain JSON: no magic byte
        wire(42, b"\x02"),  # an id the registry does not know
        wire(9, b"{}"),  # a JSON Schema id
        wire(7, avro(changed, {"amount": "three"})),  # double -> string
        b"\x00\x00",  # too short for a header
        wire(1, avro(v1, {"amount": 6.5})),
    ]
    table, bad = decode(encoder, values)
    assert value_rows(table) == [{"kafka_offset": 100, "amount": 1.5}, {"kafka_offset": 112, "amount": 6.5}]
    assert "not in the Confluent wire format" in bad[102] and "0x7b" in bad[102]
    assert bad[104] == "schema id 42 is not in the schema registry at http://registry.test"
    assert "is a JSON schema, not AVRO" in bad[106] and "json-schema" in bad[106]
    assert "schema id 7 does not fit the topic's columns" in bad[108]
    assert "not in the Confluent wire format" in bad[110]
    # fail: the files stop before the first bad record, which is the error
    failing = Encoder("avro", registry=registry)  # type: ignore[arg-type]
    encoded = failing.encode_batch(make_batch(values))
    assert encoded.error is not None and encoded.error.offset == 102
    assert [r["kafka_offset"] for f in encoded.files for r in pq.read_table(pa.BufferReader(f.data)).to_pylist()] == [
        100
    ]


def test_the_topic_keeps_the_columns_it_had_when_a_later_batch_has_fewer_fields():
    v2 = record([{"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"], "default": None}])
    v1 = record([{"name": "id", "type": "long"}])
    encoder = Encoder("avro", registry=FakeRegistry({1: v1, 2: v2}))  # type: ignore[arg-type]
    decode(encoder, [wire(2, avro(v2, {"id": 1, "note": "n"}))])
    table, _ = decode(encoder, [wire(1, avro(v1, {"id": 2}))])
    assert value_rows(table) == [{"kafka_offset": 100, "id": 2, "note": None}]


def test_a_schema_file_decodes_plain_avro_values(tmp_path):
    schema_json = record([{"name": "id", "type": "long"}])
    path = tmp_path / "order.avsc"
    path.write_text(json.dumps(schema_json))
    from kingest.avro import load_schema_file

    encoder = Encoder("avro", schema_file=load_schema_file(str(path)), on_error="skip")
    table, bad = decode(encoder, [avro(schema_json, {"id": 5}), b"\x80", None])
    assert value_rows(table) == [{"kafka_offset": 100, "id": 5}, {"kafka_offset": 104, "id": None}]
    assert "not valid Avro for the schema file" in bad[102]


# ---------------------------------------------------------------------------------------------- json-schema


def test_json_schema_records_take_the_types_their_schema_declares():
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "amount": {"type": "number"},
            "who": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
    registry = FakeRegistry({3: schema}, kind="JSON")
    encoder = Encoder("json-schema", registry=registry, on_error="skip")  # type: ignore[arg-type]
    values: list[bytes | None] = [
        wire(3, b'{"id": 1, "amount": 2, "who": {"name": "a"}}'),  # amount written as an integer
        b'{"id": 2}',
        wire(3, b"not json"),
        wire(5, b'{"id": 3}'),
    ]
    table, bad = decode(encoder, values)
    assert value_rows(table) == [{"kafka_offset": 100, "id": 1, "amount": 2.0, "who": {"name": "a"}}]
    assert table.schema.field("amount").type == pa.float64()
    assert set(bad) == {102, 104, 106} and "not valid JSON" in bad[104]


# -------------------------------------------------------------------------------------------------- config


def config_text(records: str) -> str:
    return f"pipeline: p\nkafka: {{bootstrap_servers: 'h:9092', topics: [t]}}\nlake: {{path: /tmp/l}}\n{records}"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ("records: {format: avro}", "needs `records.schema_registry` or `records.schema_file`"),
        ("records: {format: json-schema}", "needs `records.schema_registry`"),
        ("records: {format: json, schema_registry: {url: 'http://r'}}", "applies only to `records.format` (or"),
        ("records: {format: avro, schema_registry: {url: 'ftp://r'}}", "http:// or https://"),
        ("records: {format: avro, schema_registry: {url: 'http://r', uri: x}}", "unknown key `uri`"),
        ("records: {format: avro, schema_file: /nonexistent.avsc}", "does not exist"),
        ("records: {format: json, schema_file: /nonexistent.avsc}", "applies only to `records.format: avro`"),
    ],
)
def test_schema_settings_that_do_not_fit_are_refused_with_the_key(records, message):
    with pytest.raises(ConfigError, match="records") as err:
        parse(config_text(records))
    assert message in str(err.value)


def test_the_registry_password_is_never_in_a_message(monkeypatch):
    monkeypatch.setenv("REG_AUTH", "reader:s3cr3t-pw-value")
    text = "records: {format: avro, schema_registry: {url: 'ftp://r', basic_auth: '${REG_AUTH}'}}"
    with pytest.raises(ConfigError) as err:
        parse(config_text(text))
    assert "s3cr3t" not in str(err.value)
    text = "records: {format: avro, schema_registry: {url: 'http://r', basic_auth: '${REG_AUTH}'}}"
    config = parse(config_text(text))
    assert "s3cr3t-pw-value" in config.secrets()
    assert "s3cr3t" not in repr(config)


# -------------------------------------------------------------------------------------------------- registry


def test_a_registry_that_does_not_answer_is_waited_for_then_named():
    slept: list[float] = []
    registry = Registry("http://127.0.0.1:9/apis/ccompat/v7", retry_seconds=2.0, timeout=0.5, sleep=slept.append)
    with pytest.raises(RegistryUnavailable, match=r"the schema registry at http://127.0.0.1:9/apis/ccompat/v7"):
        registry.schema(1)
    assert slept  # it waited before giving up


def test_credentials_in_the_url_go_to_the_header_never_into_messages():
    registry = Registry("http://reader:pw-in-url@127.0.0.1:9/x/", retry_seconds=0.1, timeout=0.2, sleep=lambda s: None)
    assert registry.basic_auth == "reader:pw-in-url"
    assert registry.shown == "http://127.0.0.1:9/x"
    with pytest.raises(RegistryUnavailable) as err:
        registry.schema(1)
    assert "pw-in-url" not in str(err.value)


# ------------------------------------------------------------------------------------------------- protobuf

ORDER_PROTO = """
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

message Order {
  int64 id = 1;
  string customer = 2;
  double amount = 3;
  enum Status { NEW = 0; PAID = 1; }
  Status status = 4;
  repeated string tags = 5;
  map<string, int32> counts = 6;
  google.protobuf.Timestamp placed_at = 7;
  optional string note = 8;
  Item first_item = 9;
  google.protobuf.StringValue coupon = 10;
  oneof payment { string card = 11; string iban = 12; }
  message Item { string sku = 1; uint32 qty = 2; }
}

message Refund { int64 order_id = 1; }
"""


def protobuf_wire(schema_id: int, indexes: list[int], message: Any) -> bytes:
    from kingest.avro import _long  # Protobuf's message indexes are zig-zag varints, as Avro's longs

    head = b"\x00" if indexes == [0] else _long(len(indexes)) + b"".join(_long(i) for i in indexes)
    return wire(schema_id, head + message.SerializeToString())


def test_protobuf_records_of_two_message_types_become_typed_columns():
    from kingest.protobuf import ProtobufSchema

    registry = FakeRegistry({}, kind="PROTOBUF")
    registry.schemas[4] = RegisteredSchema(4, "PROTOBUF", ORDER_PROTO)
    registry.references = lambda schema: []  # type: ignore[attr-defined]
    order_type = ProtobufSchema([("o.proto", ORDER_PROTO)], "t").message((0,))
    refund_type = ProtobufSchema([("o.proto", ORDER_PROTO)], "t").message((1,))
    assert not isinstance(order_type, str) and not isinstance(refund_type, str)
    placed = dt.datetime.fromtimestamp(1_765_000_000.123, UTC)
    paid = order_type.cls(
        id=7, customer="ann", amount=12.5, status=1, tags=["a", "b"], placed_at=placed, note="n", card="4111"
    )
    paid.counts["x"] = 2
    paid.first_item.sku = "sku-1"
    paid.coupon.value = "SAVE"
    bare = order_type.cls(id=8)
    encoder = Encoder("protobuf", registry=registry, on_error="skip")  # type: ignore[arg-type]
    values: list[bytes | None] = [
        protobuf_wire(4, [0], paid),
        protobuf_wire(4, [1], refund_type.cls(order_id=7)),
        protobuf_wire(4, [0], bare),
        wire(4, b"\x00\xff\xff"),  # not a valid message
        protobuf_wire(4, [5], bare),  # no message at index 5
    ]
    table, bad = decode(encoder, values)
    rows = {r["kafka_offset"]: r for r in value_rows(table)}
    assert set(rows) == {100, 102, 104} and set(bad) == {106, 108}
    assert "no message" not in bad[106] and "not a valid shop.Order message" in bad[106]
    assert "message index [5] is not in schema id 4" == bad[108]
    first = rows[100]
    assert first["id"] == 7 and first["status"] == "PAID" and first["tags"] == ["a", "b"]
    assert first["counts"] == [("x", 2)] and first["first_item"] == {"sku": "sku-1", "qty": 0}
    assert first["placed_at"] == placed
    assert first["note"] == "n" and first["coupon"] == "SAVE" and first["card"] == "4111" and first["iban"] is None
    assert rows[102]["order_id"] == 7 and rows[102]["id"] is None  # the other type: its own columns
    unset = rows[104]
    assert unset["id"] == 8 and unset["customer"] == "" and unset["status"] == "NEW"  # proto3 defaults
    assert unset["note"] is None and unset["first_item"] is None and unset["placed_at"] is None
    types = {f.name: f.type for f in table.schema}
    assert types["placed_at"] == pa.timestamp("us", tz="UTC") and types["counts"] == pa.map_(pa.string(), pa.int32())
    assert types["first_item"] == pa.struct([("sku", pa.string()), ("qty", pa.uint32())])


def test_protobuf_schemas_as_base64_descriptors_and_the_ones_that_cannot_be_used():
    import base64

    from kingest.protobuf import ProtobufSchema, ProtobufSchemaError, split_indexes

    compiled = ProtobufSchema([("o.proto", ORDER_PROTO)], "t")
    from google.protobuf import descriptor_pb2

    file_proto = descriptor_pb2.FileDescriptorProto()
    compiled.file.CopyToProto(file_proto)
    text = base64.b64encode(file_proto.SerializeToString()).decode()
    from_descriptor = ProtobufSchema([("o.proto", text)], "t2")  # its imports are Google's well-known types
    assert list(from_descriptor.file.message_types_by_name) == ["Order", "Refund"]
    with pytest.raises(ProtobufSchemaError, match="does not compile"):
        ProtobufSchema([("bad.proto", 'syntax = "proto3"; message X { int64 = 1; }')], "schema id 9")
    recursive = ProtobufSchema([("r.proto", 'syntax = "proto3"; message Node { Node next = 1; }')], "schema id 10")
    assert "contains itself" in str(recursive.message((0,)))
    assert split_indexes(b"\x00rest") == ((0,), 1)
    assert split_indexes(b"\x04\x02\x00rest") == ((1, 0), 3)
    assert split_indexes(b"\x04\x02") is None
    for name in ("/tmp/kingest-escape.proto", "../escape.proto", "a/../../escape.proto"):
        with pytest.raises(ProtobufSchemaError, match="not a relative import path"):
            ProtobufSchema([(name, 'syntax = "proto3"; message R { int64 a = 1; }'), ("m.proto", "x")], "schema id 11")


def test_a_registry_that_refuses_the_credentials_stops_at_once_and_one_that_fails_is_waited_for():
    import http.server
    import threading

    from kingest.errors import SetupError

    answers = {"/refuse/schemas/ids/1": 401, "/busy/schemas/ids/1": 503}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            self.send_response(answers.get(self.path, 404))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message": "no", "error_code": 40101}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        slept: list[float] = []
        refusing = Registry(f"{base}/refuse", basic_auth="u:secret-pw-1", retry_seconds=30, sleep=slept.append)
        with pytest.raises(SetupError, match="refused kingest's request") as err:
            refusing.schema(1)
        assert not isinstance(err.value, RegistryUnavailable) and slept == [] and "secret-pw-1" not in str(err.value)
        busy = Registry(f"{base}/busy", retry_seconds=1.0, sleep=slept.append)
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            busy.schema(1)
        assert len(slept) >= 2 and seen.count("/busy/schemas/ids/1") == len(slept) + 1
    finally:
        server.shutdown()


def test_a_payload_that_makes_the_bulk_reader_panic_is_a_bad_record_and_the_rest_land():
    from kingest.avro import _long

    schema_json = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])
    schema = AvroSchema(schema_json, "schema id 3")
    payloads = [avro(schema_json, {"a": i, "b": "x" * 40}) for i in range(4)]
    payloads[1] = _long(1) + _long(1000) + b"ab"  # a string of 1000 bytes, 2 there: polars panics on it
    table, bad = schema.decode(payloads)
    assert set(bad) == {1} and table.column("a").to_pylist() == [0, 2, 3]


def test_values_their_columns_cannot_hold_are_bad_records_on_both_paths():
    from kingest.avro import _long

    schema_json = record(
        [
            {"name": "i", "type": "int"},
            {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
        ]
    )
    schema = AvroSchema(schema_json, "schema id 8")
    assert schema.bulk is not None
    good = avro(schema_json, {"i": 7, "d": decimal.Decimal("12.34")})
    too_big_int = _long(2**40 + 7) + _long(2) + (1234).to_bytes(2, "big")  # an int varint beyond 32 bits
    too_wide_decimal = _long(7) + _long(8) + (10**15).to_bytes(8, "big")  # 15 digits in a decimal(4, 2)
    for corrupt in (too_big_int, too_wide_decimal):  # each alone: the bulk read must not let it through
        table, bad = schema.decode([good, corrupt, good])
        assert set(bad) == {1} and table.column("i").to_pylist() == [7, 7]
        assert table.column("d").to_pylist() == [decimal.Decimal("12.34")] * 2


def test_a_record_with_no_fields_beside_another_type_keeps_every_row_in_place():
    heartbeat = record([], "Heartbeat")
    order = record([{"name": "id", "type": "long"}])
    encoder = Encoder("avro", registry=FakeRegistry({1: heartbeat, 2: order}))  # type: ignore[arg-type]
    values: list[bytes | None] = [wire(2, avro(order, {"id": 1})), wire(1, b""), wire(2, avro(order, {"id": 3}))]
    table, bad = decode(encoder, values)
    assert bad == {} and value_rows(table) == [
        {"kafka_offset": 100, "id": 1},
        {"kafka_offset": 102, "id": None},
        {"kafka_offset": 104, "id": 3},
    ]


def test_an_unknown_id_is_asked_again_once_registered():
    schema_json = record([{"name": "id", "type": "long"}])
    registry = FakeRegistry({})
    encoder = Encoder("avro", registry=registry, on_error="skip")  # type: ignore[arg-type]
    value = wire(5, avro(schema_json, {"id": 1}))
    _, bad = decode(encoder, [value])
    assert "schema id 5 is not in the schema registry" in bad[100]
    registry.schemas[5] = RegisteredSchema(5, "AVRO", json.dumps(schema_json))
    table, bad = decode(encoder, [value])
    assert bad == {} and value_rows(table) == [{"kafka_offset": 100, "id": 1}]


# ------------------------------------------------------------------------------------------------------ keys


def test_keys_decoded_as_asked_become_one_column_and_a_bad_key_makes_a_bad_record():
    from kingest.batcher import Batch

    key_schema = record([{"name": "customer_id", "type": "long"}], "Key")
    value_schema = record([{"name": "amount", "type": "double"}])
    registry = FakeRegistry({1: key_schema, 2: value_schema})
    encoder = Encoder("avro", registry=registry, key_format="avro", on_error="skip")  # type: ignore[arg-type]
    keys = [wire(1, avro(key_schema, {"customer_id": 7})), b"not avro", wire(1, avro(key_schema, {"customer_id": 9}))]
    values = [wire(2, avro(value_schema, {"amount": float(i)})) for i in range(3)]
    values[2] = b"bad value"
    batch = Batch(
        "t", 0, offsets=[0, 1, 2], timestamps=[0, 0, 0], keys=list(keys), values=list(values), headers=[[]] * 3
    )
    decoded = encoder.decode(batch)
    assert decoded.table.column_names[6:] == ["kafka_key_decoded", "amount"]
    assert decoded.table.select(["kafka_offset", "kafka_key_decoded", "amount"]).to_pylist() == [
        {"kafka_offset": 0, "kafka_key_decoded": {"customer_id": 7}, "amount": 0.0}
    ]
    assert decoded.table.column("kafka_key").to_pylist() == [keys[0]]  # the bytes stay
    reasons = {r.offset: r.reason for r in decoded.rejected}
    assert reasons[1].startswith("key: not in the Confluent wire format") and "key" not in reasons[2][:4]
    assert json.loads(decoded.table.schema.metadata[b"kingest.key_schema_ids"]) == [1]
    assert json.loads(decoded.table.schema.metadata[b"kingest.schema_ids"]) == [2]
    strings = Encoder("json", key_format="string")
    table = strings.decode(make_batch([b'{"a": 1}', b'{"a": 2}'])).table
    assert table.select(["kafka_key_decoded", "a"]).to_pylist() == [
        {"kafka_key_decoded": "k0", "a": 1},
        {"kafka_key_decoded": "k1", "a": 2},
    ]


def test_null_keys_beside_a_bad_value_keep_the_rows_aligned():
    from kingest.batcher import Batch

    schema_json = record([{"name": "id", "type": "long"}])
    registry = FakeRegistry({1: schema_json})
    encoder = Encoder("avro", registry=registry, key_format="avro", on_error="skip")  # type: ignore[arg-type]
    values = [wire(1, avro(schema_json, {"id": 0})), b"bad", wire(1, avro(schema_json, {"id": 2}))]
    batch = Batch("t", 0, offsets=[0, 1, 2], timestamps=[0] * 3, keys=[None] * 3, values=list(values), headers=[[]] * 3)
    decoded = encoder.decode(batch)
    assert decoded.table.select(["kafka_offset", "id"]).to_pylist() == [
        {"kafka_offset": 0, "id": 0},
        {"kafka_offset": 2, "id": 2},
    ]
    assert [r.offset for r in decoded.rejected] == [1]


def test_key_format_from_the_registry_needs_one():
    with pytest.raises(ConfigError, match="`records.key_format: avro` needs `records.schema_registry`"):
        parse(config_text("records: {format: json, key_format: avro}"))
    config = parse(config_text("records: {format: json, key_format: avro, schema_registry: http://r}"))
    assert config.records.key_format == "avro" and config.records.schema_registry is not None
