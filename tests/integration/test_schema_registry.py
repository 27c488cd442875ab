"""records.format: avro and json-schema against the real broker and the real registry (Apicurio Registry, its
Confluent API): records written by confluent-kafka's own serializers, read back from the lake independently."""

from __future__ import annotations

import json
import struct
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from .support import committed, kingest, write_config

pytestmark = pytest.mark.integration

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
# BACKWARD-compatible: a new field with a default
COUPON = {"name": "coupon", "type": ["null", "string"], "default": None}
ORDER_V2 = {**ORDER_V1, "fields": [*ORDER_V1["fields"], COUPON]}


@pytest.fixture
def ccompat(registry_url: str) -> str:
    return registry_url.rstrip("/") + "/apis/ccompat/v7"


def avro_producer(ccompat: str, schema: dict[str, Any], topic: str, field: str = "value") -> Any:
    """confluent-kafka's AvroSerializer: registers the schema under <topic>-value (or -key) and writes the wire
    format."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(SchemaRegistryClient({"url": ccompat}), json.dumps(schema))
    which = MessageField.KEY if field == "key" else MessageField.VALUE
    return lambda value: serializer(value, SerializationContext(topic, which))


def register(ccompat: str, subject: str, schema: dict[str, Any] | str, kind: str) -> int:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    body = json.dumps({"schema": text, "schemaType": kind}).encode()
    request = urllib.request.Request(
        f"{ccompat}/subjects/{subject}/versions",
        data=body,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read())["id"])


def land(tmp_path: Path, topic: str, bootstrap: str, records: dict[str, Any]) -> list[dict[str, Any]]:
    """`kingest run --until-caught-up` of ``topic`` into a fresh local lake: the rows it holds then."""
    config = registry_config(tmp_path, topic, tmp_path / "lake", bootstrap, records)
    done = kingest("run", "-c", str(config), "--until-caught-up")
    assert done.returncode == 0, done.stderr
    return lake_rows(tmp_path / "lake")


def lake_rows(lake: Path) -> list[dict[str, Any]]:
    """An independent read of the lake folder, as a pyarrow user would do it: the files' schemas unified (a later
    schema version's new field is a column of the later files only)."""
    files = sorted(str(f) for f in lake.rglob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        return []
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    table = ds.dataset(files, schema=schema, format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: r["kafka_offset"])


def registry_config(tmp_path: Path, topic: str, lake: Path, bootstrap: str, records: dict[str, Any], **kw: Any) -> Path:
    return write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=str(lake),
        bootstrap=bootstrap,
        records=records,
        batch={"max_records": 500, "max_age": "1s"},
        **kw,
    )


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_avro_records_of_two_schema_versions_land_typed_each_offset_once(
    semantics, tmp_path, kafka_bootstrap, ccompat, topic_factory, produce
):
    import datetime as dt
    import decimal

    topic = topic_factory(partitions=1)
    v1, v2 = avro_producer(ccompat, ORDER_V1, topic), avro_producer(ccompat, ORDER_V2, topic)
    when = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)

    def order(i: int, **extra: Any) -> dict[str, Any]:
        amount = decimal.Decimal(i) / 4
        return {"order_id": i, "amount": amount, "status": "PAID" if i % 2 else "NEW", "placed_at": when, **extra}

    values: list[bytes | None] = [v1(order(i)) for i in range(600)]
    values.append(None)  # a tombstone
    values += [v2(order(i, coupon=f"C{i}" if i % 3 else None)) for i in range(601, 1200)]
    values.append(b'{"order_id": 1200}')  # plain JSON: not the wire format, a bad record
    values += [v2(order(1201, coupon="last"))]
    key_schema = {"type": "record", "name": "OrderKey", "fields": [{"name": "shop", "type": "string"}]}
    key = avro_producer(ccompat, key_schema, topic, "key")({"shop": "north"})
    produce(topic, values, partition=0, key=key)  # a key: a tombstone needs one

    lake = tmp_path / "lake"
    config = registry_config(
        tmp_path,
        topic,
        lake,
        kafka_bootstrap,
        {"format": "avro", "key_format": "avro", "on_error": "skip", "schema_registry": {"url": ccompat}},
        semantics=semantics,
    )
    done = kingest("run", "-c", str(config), "--until-caught-up")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    rows = lake_rows(lake)
    assert [r["kafka_offset"] for r in rows] == [o for o in range(1202) if o != 1200]  # each once, the bad one out
    by_offset = {r["kafka_offset"]: r for r in rows}
    assert by_offset[3] == {**by_offset[3], "order_id": 3, "amount": decimal.Decimal("0.75"), "status": "PAID"}
    assert by_offset[3]["placed_at"] == when and by_offset[3]["coupon"] is None  # v1: the new field is null
    assert by_offset[602]["coupon"] == "C602" and by_offset[1201]["coupon"] == "last"
    assert by_offset[600]["order_id"] is None  # the tombstone: a row, its value columns null
    assert {r["kafka_key_decoded"]["shop"] for r in rows} == {"north"}  # records.key_format: avro
    footers = [pq.read_metadata(f).metadata for f in lake.rglob("*.parquet")]
    ids = sorted({i for m in footers for i in json.loads(m[b"kingest.schema_ids"])})
    assert len(ids) == 2  # the two versions' ids, named in the footers
    assert f"{topic}-value" in {s for m in footers for s in json.loads(m.get(b"kingest.schema_subjects", b"[]"))}
    if semantics == "at-least-once":
        assert committed(kafka_bootstrap, f"kingest-{_pipeline(config)}", topic, 1) == {0: 1202}


def _pipeline(config: Path) -> str:
    from .support import read_config

    return str(read_config(config)["pipeline"])


def test_an_unknown_schema_id_stops_the_run_before_it_and_commits_nothing_past_it(
    tmp_path, kafka_bootstrap, ccompat, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    v1 = avro_producer(ccompat, ORDER_V1, topic)
    import datetime as dt

    good = v1({"order_id": 1, "amount": b"\x01", "status": "NEW", "placed_at": dt.datetime.now(dt.UTC)})
    unknown = b"\x00" + struct.pack(">I", 987_654_321) + good[5:]
    produce(topic, [good, good, unknown, good], partition=0)
    lake = tmp_path / "lake"
    config = registry_config(
        tmp_path, topic, lake, kafka_bootstrap, {"format": "avro", "schema_registry": {"url": ccompat}}
    )
    done = kingest("run", "-c", str(config), "--until-caught-up")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"record {topic}[0]@2 cannot be decoded" in done.stderr
    assert "schema id 987654321 is not in the schema registry" in done.stderr
    assert [r["kafka_offset"] for r in lake_rows(lake)] == [0, 1]
    assert committed(kafka_bootstrap, f"kingest-{_pipeline(config)}", topic, 1) == {0: 2}


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_a_registry_that_does_not_answer_is_named_and_nothing_is_committed(
    semantics, tmp_path, kafka_bootstrap, ccompat, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    record = avro_producer(ccompat, ORDER_V1, topic)
    import datetime as dt

    produce(topic, [record({"order_id": 1, "amount": b"\x01", "status": "NEW", "placed_at": dt.datetime.now(dt.UTC)})])
    lake = tmp_path / "lake"
    down = "http://127.0.0.1:9/apis/ccompat/v7"  # nothing listens on port 9
    records = {"format": "avro", "schema_registry": {"url": down, "retry_seconds": "2s", "basic_auth": "u:pw-xyz-123"}}
    config = registry_config(tmp_path, topic, lake, kafka_bootstrap, records, semantics=semantics)
    done = kingest("run", "-c", str(config), "--until-caught-up")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "pw-xyz-123" not in done.stdout + done.stderr
    assert f"the schema registry at {down} did not answer" in done.stderr
    assert not list(lake.rglob("*.parquet"))
    assert committed(kafka_bootstrap, f"kingest-{_pipeline(config)}", topic, 1) == {0: None}


def test_json_schema_records_land_with_the_types_of_their_schema(
    tmp_path, kafka_bootstrap, ccompat, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "price": {"type": "number"}}}
    schema_id = register(ccompat, f"{topic}-value", schema, "JSON")
    header = b"\x00" + struct.pack(">I", schema_id)
    produce(topic, [header + json.dumps({"id": i, "price": i}).encode() for i in range(50)], partition=0)
    rows = land(tmp_path, topic, kafka_bootstrap, {"format": "json-schema", "schema_registry": {"url": ccompat}})
    assert [(r["id"], r["price"]) for r in rows] == [(i, float(i)) for i in range(50)]
    assert all(isinstance(r["price"], float) for r in rows)  # "number": float64, though written as integers


def test_check_reaches_the_registry_and_resolves_each_topics_subject(tmp_path, kafka_bootstrap, ccompat, topic_factory):
    topic, other = topic_factory(partitions=1), topic_factory(partitions=1)
    schema_id = register(ccompat, f"{topic}-value", {**ORDER_V1, "name": f"O{uuid.uuid4().hex[:6]}"}, "AVRO")
    config = write_config(
        tmp_path / "kingest.yaml",
        lake=str(tmp_path / "lake"),
        bootstrap=kafka_bootstrap,
        kafka={"topics": [topic, other]},
        records={"format": "avro", "schema_registry": {"url": ccompat}},
    )
    done = kingest("check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"latest schema id {schema_id} (AVRO)" in done.stdout
    assert f"no subject {other}-value yet" in done.stdout
    wrong = write_config(
        tmp_path / "wrong.yaml",
        lake=str(tmp_path / "lake"),
        bootstrap=kafka_bootstrap,
        kafka={"topics": [topic]},
        records={"format": "json-schema", "schema_registry": {"url": ccompat}},
    )
    done = kingest("check", "-c", str(wrong))
    assert done.returncode != 0 and "is AVRO, not JSON" in done.stdout + done.stderr


PAYMENT_PROTO = """
syntax = "proto3";
package pay;
import "google/protobuf/timestamp.proto";

message Payment {
  int64 id = 1;
  double amount = 2;
  enum Method { CARD = 0; TRANSFER = 1; }
  Method method = 3;
  google.protobuf.Timestamp at = 4;
  map<string, string> labels = 5;
}
"""


def generated_module(tmp_path: Path, proto: str) -> Any:
    """The protoc-generated Python module of ``proto``, as a producer application would have it."""
    import importlib.util

    from grpc_tools import protoc

    (tmp_path / "payment.proto").write_text(proto)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"-I{include}", f"--python_out={tmp_path}", "payment.proto"]) == 0
    spec = importlib.util.spec_from_file_location(f"payment_pb2_{uuid.uuid4().hex}", tmp_path / "payment_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("registered_as", ["descriptor", "proto text"])
def test_protobuf_records_land_typed_whether_the_schema_is_a_descriptor_or_proto_text(
    registered_as, tmp_path, kafka_bootstrap, ccompat, topic_factory, produce
):
    import datetime as dt

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = topic_factory(partitions=1)
    module = generated_module(tmp_path, PAYMENT_PROTO)
    at = dt.datetime(2026, 12, 6, 9, 30, tzinfo=dt.UTC)
    messages = []
    for i in range(40):
        message = module.Payment(id=i, amount=i / 2, method=i % 2, at=at)
        message.labels["shop"] = f"s{i % 3}"
        messages.append(message)
    if registered_as == "descriptor":  # what confluent-kafka's serializer registers: a base64 FileDescriptorProto
        serializer = ProtobufSerializer(
            module.Payment, SchemaRegistryClient({"url": ccompat}), {"use.deprecated.format": False}
        )
        values = [serializer(m, SerializationContext(topic, MessageField.VALUE)) for m in messages]
    else:  # .proto text, registered by hand as the Java serializers and most tools do
        schema_id = register(ccompat, f"{topic}-value", PAYMENT_PROTO, "PROTOBUF")
        values = [b"\x00" + struct.pack(">I", schema_id) + b"\x00" + m.SerializeToString() for m in messages]
    produce(topic, values, partition=0)
    rows = land(tmp_path, topic, kafka_bootstrap, {"format": "protobuf", "schema_registry": {"url": ccompat}})
    assert [r["kafka_offset"] for r in rows] == list(range(40))
    assert [(r["id"], r["amount"], r["method"]) for r in rows[:2]] == [(0, 0.0, "CARD"), (1, 0.5, "TRANSFER")]
    assert rows[5]["at"] == at and rows[5]["labels"] == [("shop", "s2")]


def produce_sample() -> Any:
    """services/produce_sample.py (make demo's producer), imported from its path."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "services" / "produce_sample.py"
    spec = importlib.util.spec_from_file_location("kingest_produce_sample", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_sample_as_avro_lands_as_typed_columns(tmp_path, kafka_bootstrap, ccompat, topic_factory):
    import datetime as dt
    import decimal

    sample = produce_sample()
    topic = topic_factory(partitions=3)
    summary = sample.produce_orders(kafka_bootstrap, topic, records=300, value_format="avro", registry=ccompat)
    assert summary["subject"] == f"{topic}-value" and summary["records"] == 300
    lake = tmp_path / "lake"
    records = {"format": "avro", "schema_registry": {"url": ccompat}}
    config = registry_config(tmp_path, topic, lake, kafka_bootstrap, records, semantics="exactly-once")
    done = kingest("run", "-c", str(config), "--until-caught-up")
    assert done.returncode == 0, done.stderr

    files = [f for f in lake.rglob("*.parquet") if not f.name.startswith((".", "_"))]
    schema = pq.read_schema(files[0])
    assert schema.field("amount").type == pa.decimal128(12, 2)
    assert schema.field("created_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("status").type == pa.string()  # an enum
    assert schema.field("items").type.value_type.field("price").type == pa.decimal128(9, 2)
    assert {json.loads(pq.read_metadata(f).metadata[b"kingest.schema_ids"])[0] for f in files} == {summary["schema_id"]}
    # the same orders as the JSON sample, typed
    rows = {r["order_id"]: r for r in lake_rows(lake)}
    assert len(rows) == 300
    for _, order, created_at in sample.orders(300, 42):
        row = rows[order["order_id"]]
        assert row["amount"] == decimal.Decimal(str(order["amount"])).quantize(decimal.Decimal("0.01"))
        assert (row["currency"], row["status"], row["customer_id"]) == (
            order["currency"],
            order["status"],
            order["customer_id"],
        )
        assert row["created_at"] == created_at and created_at.tzinfo == dt.UTC
        assert [(i["sku"], i["qty"], float(i["price"])) for i in row["items"]] == [
            (i["sku"], i["qty"], i["price"]) for i in order["items"]
        ]


def test_the_sample_producer_skips_a_fresh_avro_topic_and_recreates_a_stale_one(
    kafka_bootstrap, ccompat, topic_factory, produce, capsys
):
    sample = produce_sample()
    topic = topic_factory(partitions=1)
    produce(topic, [b'{"order_id": "ord-1"}'], partition=0)  # not the wire format: as stale as a forgotten id
    args = ["--bootstrap", kafka_bootstrap, "--topic", topic, "--partitions", "1", "--records", "50"]
    args += ["--format", "avro", "--registry", ccompat, "--skip-if-present"]

    assert sample.main(args) == 1
    assert "records name schema id none (not the wire format)" in capsys.readouterr().err
    assert sample.main([*args, "--recreate-stale"]) == 0
    out = capsys.readouterr().out
    assert "deleting the topic and producing it again" in out and "produced 50 order events" in out
    assert sample.main([*args, "--recreate-stale"]) == 0
    assert f"{topic} on {kafka_bootstrap} already holds 50 records: not producing more" in capsys.readouterr().out
    assert sample.records_in_topic(kafka_bootstrap, topic) == 50
