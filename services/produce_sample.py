#!/usr/bin/env python3
"""Produce a realistic, deterministic sample of order events into Kafka, as JSON or Avro (for the demo and benchmarks).

    .venv/bin/python services/produce_sample.py --records 20000 --seed 42
    .venv/bin/python services/produce_sample.py --topic orders-big --records 1000000 --value-bytes 1024
    .venv/bin/python services/produce_sample.py --topic orders-avro --format avro --registry URL

Each value is one JSON object:
    {"order_id": "ord-00000000001", "customer_id": "cust-004217", "amount": 123.45, "currency": "EUR",
     "status": "paid", "items": [{"sku": "SKU-01234", "qty": 2, "price": 19.99}, ...],
     "created_at": "2026-01-01T00:00:00.250000+00:00"}
keyed by customer_id (so one customer's orders stay in one partition, in order). The same --seed gives the same
records (values, keys and order); the topic is created with --partitions if it does not exist.

--format avro writes the same orders as Avro in the Confluent wire format (byte 0, the 4-byte big-endian schema id,
the Avro binary) with ORDER_SCHEMA, registered under <topic>-value in the schema registry at --registry (the
Confluent REST API: for Apicurio, http://host:port/apis/ccompat/v7); amount and price are decimals, currency and
status enums, created_at a timestamp-millis. It needs fastavro (the avro or dev extra) and nothing else but
kafka-python: the registry is reached with urllib.
Importable: produce_orders(...) returns the same summary dict that --json prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import io
import json
import os
import random
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK"]
STATUSES = ["created", "paid", "shipped", "delivered", "cancelled", "refunded"]
STATUS_WEIGHTS = [10, 40, 25, 20, 3, 2]
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def orders(records: int, seed: int) -> Iterator[tuple[str, dict[str, Any], dt.datetime]]:
    """(customer id, order, created_at) triples; deterministic for a seed. The order's created_at is ISO 8601 text
    (as JSON carries it); the datetime is the same instant, a whole millisecond."""
    rng = random.Random(seed)
    customers = max(10, records // 20)
    t = EPOCH
    for i in range(records):
        customer = f"cust-{rng.randrange(customers):06d}"
        items: list[dict[str, Any]] = []
        total = 0.0
        for _ in range(rng.choices((1, 2, 3, 4, 5), weights=(40, 30, 15, 10, 5))[0]):
            qty, price = rng.randint(1, 5), round(rng.uniform(0.5, 250.0), 2)
            items.append({"sku": f"SKU-{rng.randrange(50_000):05d}", "qty": qty, "price": price})
            total += qty * price
        t += dt.timedelta(milliseconds=rng.randint(1, 500))
        order = {
            "order_id": f"ord-{i:011d}",
            "customer_id": customer,
            "amount": round(total, 2),
            "currency": rng.choice(CURRENCIES),
            "status": rng.choices(STATUSES, weights=STATUS_WEIGHTS)[0],
            "items": items,
            "created_at": t.isoformat(timespec="microseconds"),
        }
        yield customer, order, t


def order_events(records: int, seed: int, value_bytes: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) pairs; deterministic for a seed. value_bytes > 0 pads each value to about that size."""
    for customer, order, _ in orders(records, seed):
        value = json.dumps(order, separators=(",", ":"))
        if value_bytes > len(value) + 12:
            # pad with a "note" field so the value is about value_bytes long (for throughput benchmarks)
            order["note"] = "x" * (value_bytes - len(value) - 10)
            value = json.dumps(order, separators=(",", ":"))
        yield customer.encode(), value.encode()


# ------------------------------------------------------------------------------------------------------ Avro


def _decimal(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


# The sample orders as Avro: what JSON cannot carry is typed here (exact decimals, enums, a timestamp).
ORDER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "kingest.sample",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": _decimal(12, 2)},
        {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": CURRENCIES}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": STATUSES}},
        {
            "name": "items",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Item",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "qty", "type": "int"},
                        {"name": "price", "type": _decimal(9, 2)},
                    ],
                },
            },
        },
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
CENT = decimal.Decimal("0.01")


def avro_order_events(records: int, seed: int, schema_id: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of the same orders as order_events, each value Avro of ORDER_SCHEMA in the Confluent
    wire format: byte 0, the schema id (4 bytes, big-endian), the Avro binary."""
    import fastavro  # only for --format avro: the avro extra (pip install 'kingest[avro]'), or the dev extra

    parsed = fastavro.parse_schema(ORDER_SCHEMA)
    header = b"\x00" + struct.pack(">I", schema_id)
    for customer, order, created_at in orders(records, seed):
        record = {
            **order,
            "amount": decimal.Decimal(str(order["amount"])).quantize(CENT),
            "items": [{**item, "price": decimal.Decimal(str(item["price"])).quantize(CENT)} for item in order["items"]],
            "created_at": created_at,
        }
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, parsed, record)
        yield customer.encode(), out.getvalue()


class SampleError(Exception):
    """A registry that refuses or does not answer, a stale Avro topic: said in one line, as it is."""


def register_schema(registry: str, subject: str, schema: dict[str, Any], timeout: float = 10.0) -> int:
    """Register an Avro schema under subject with the registry's REST API (the Confluent API; for Apicurio, its
    base URL ends in /apis/ccompat/v7); returns its id. Registering a schema the subject holds already returns
    the id it has."""
    body = json.dumps({"schema": json.dumps(schema, separators=(",", ":"))}).encode()
    request = urllib.request.Request(
        f"{registry.rstrip('/')}/subjects/{urllib.parse.quote(subject, safe='')}/versions",
        data=body,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.loads(response.read())["id"])
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read() or b"{}").get("message") or e.reason
        except ValueError:
            detail = e.reason
        raise SampleError(f"the registry at {registry} refused the schema of {subject} ({e.code}: {detail})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SampleError(f"the registry at {registry} does not answer ({reason}; is it up? `make up`)") from None


def first_schema_ids(bootstrap: str, topic: str, timeout: float = 10.0) -> set[int | None]:
    """The schema ids the first record of each non-empty partition names (None: not in the wire format)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="kingest-produce-sample", enable_auto_commit=False, max_poll_records=1
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts, ends = consumer.beginning_offsets(parts), consumer.end_offsets(parts)
        todo = {tp for tp in parts if ends[tp] > starts[tp]}
        consumer.assign(sorted(todo, key=lambda tp: tp.partition))
        for tp in todo:
            consumer.seek(tp, starts[tp])
        ids: set[int | None] = set()
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the first record of {topic} in {timeout:.0f}s")
            for tp, messages in consumer.poll(timeout_ms=500).items():
                if tp in todo and messages:
                    value = messages[0].value
                    wire = value is not None and len(value) >= 5 and value[0] == 0
                    ids.add(struct.unpack(">I", value[1:5])[0] if wire else None)
                    todo.discard(tp)
                    consumer.pause(tp)
        return ids
    finally:
        consumer.close()


def delete_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Delete the topic and wait until the broker no longer lists it."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kingest-produce-sample")
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + timeout
        while topic in admin.list_topics():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} is still listed {timeout:.0f}s after its deletion")
            time.sleep(0.1)
    finally:
        admin.close()


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Create the topic if missing; returns its partition count once metadata shows it."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kingest-produce-sample")
    try:
        if topic not in admin.list_topics():
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            desc = admin.describe_topics([topic])[0]
            parts = desc.get("partitions") or []
            if (
                desc.get("error_code", 0) == 0
                and parts
                and all(p.get("leader_id", -1) >= 0 and p.get("error_code", 0) == 0 for p in parts)
            ):
                return len(parts)
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout:.0f}s")
            time.sleep(0.1)
    finally:
        admin.close()


def records_in_topic(bootstrap: str, topic: str) -> int | None:
    """How many records the topic holds (end minus start offsets); None if it does not exist."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="kingest-produce-sample")
    try:
        if topic not in consumer.topics():
            return None
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        return sum(ends[tp] - starts[tp] for tp in parts)
    finally:
        consumer.close()


def produce_orders(
    bootstrap: str = "127.0.0.1:9092",
    topic: str = "orders",
    partitions: int = 3,
    records: int = 20_000,
    seed: int = 42,
    value_bytes: int = 0,
    compression: str | None = None,
    value_format: str = "json",
    registry: str | None = None,
) -> dict:
    """value_format "avro" registers ORDER_SCHEMA under <topic>-value at registry (the Confluent API's base URL)."""
    from kafka import KafkaProducer

    schema: dict[str, Any] = {}
    if value_format == "avro":
        if registry is None:
            raise ValueError("value_format avro needs the schema registry's URL")
        subject = f"{topic}-value"
        schema_id = register_schema(registry, subject, ORDER_SCHEMA)
        events = avro_order_events(records, seed, schema_id)
        schema = {"schema_id": schema_id, "subject": subject, "registry": registry}
    elif value_format == "json":
        events = order_events(records, seed, value_bytes)
    else:
        raise ValueError(f"value_format is json or avro, not {value_format!r}")
    actual_partitions = ensure_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="kingest-produce-sample",
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        compression_type=compression,
    )
    per_partition: Counter[int] = Counter()
    nbytes = 0
    t0 = time.monotonic()
    errors: list[BaseException] = []

    def delivered(md: Any) -> None:  # runs on the producer's I/O thread
        per_partition[md.partition] += 1

    try:
        for key, value in events:
            nbytes += len(value)
            producer.send(topic, key=key, value=value).add_callback(delivered).add_errback(errors.append)
        producer.flush()
    finally:
        producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {records} records were not delivered; first error: {errors[0]!r}")
    secs = time.monotonic() - t0
    return {
        "bootstrap": bootstrap,
        "topic": topic,
        "partitions": actual_partitions,
        "format": value_format,
        **schema,
        "records": records,
        "value_bytes_total": nbytes,
        "seconds": round(secs, 3),
        "records_per_s": round(records / secs) if secs > 0 else None,
        "per_partition": {str(p): n for p, n in sorted(per_partition.items())},
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    default_registry = (
        os.environ.get("KINGEST_REGISTRY_URL") or f"http://127.0.0.1:{os.environ.get('KINGEST_REGISTRY_PORT') or 8081}"
    ).rstrip("/")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KINGEST_KAFKA_BOOTSTRAP")
        or f"127.0.0.1:{os.environ.get('KINGEST_KAFKA_PORT') or 9092}",
        help="Kafka bootstrap servers (default $KINGEST_KAFKA_BOOTSTRAP or 127.0.0.1:$KINGEST_KAFKA_PORT/9092)",
    )
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--partitions", type=int, default=3, help="when creating the topic (default 3)")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--value-bytes", type=int, default=0, help="pad each JSON value to about this many bytes (default: no pad)"
    )
    parser.add_argument(
        "--format",
        choices=["json", "avro"],
        default="json",
        help="json (default), or avro: the Confluent wire format, the schema registered at --registry",
    )
    parser.add_argument(
        "--registry",
        default=f"{default_registry}/apis/ccompat/v7",
        help="--format avro: the schema registry's Confluent API (default $KINGEST_REGISTRY_URL/apis/ccompat/v7, "
        "else http://127.0.0.1:$KINGEST_REGISTRY_PORT (or 8081)/apis/ccompat/v7)",
    )
    parser.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"], default=None)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument(
        "--skip-if-present",
        action="store_true",
        help="do nothing when the topic already holds at least --records records (make demo); with --format avro, "
        "records written with the id the registry gives the sample schema now (else see --recreate-stale)",
    )
    parser.add_argument(
        "--recreate-stale",
        action="store_true",
        help="--format avro: when the topic's records name another schema id than the registry gives the sample "
        "schema now (the dev registry keeps its schemas in memory: a restart forgets them), delete the topic and "
        "produce it again instead of failing (make demo)",
    )
    args = parser.parse_args(argv)
    if args.value_bytes and args.format != "json":
        parser.error("--value-bytes pads JSON values: not with --format avro")
    try:
        present = None
        if args.skip_if_present or args.recreate_stale:
            present = records_in_topic(args.bootstrap, args.topic)
        if present and args.format == "avro":
            if not _fresh_avro(args):
                present = None
        if args.skip_if_present and present is not None and present >= args.records:
            print(f"{args.topic} on {args.bootstrap} already holds {present} records: not producing more")
            return 0
        summary = produce_orders(
            args.bootstrap,
            args.topic,
            args.partitions,
            args.records,
            args.seed,
            args.value_bytes,
            args.compression,
            args.format,
            args.registry,
        )
    except SampleError as e:
        print(f"produce_sample: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a CLI: one line, not a traceback, for the usual "no broker" case
        print(f"produce_sample: error: {type(e).__name__}: {e} (is Kafka up? `make up`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        written = f"{summary['value_bytes_total'] / 1e6:.1f} MB of JSON"
        if args.format == "avro":
            written = f"{summary['value_bytes_total'] / 1e6:.1f} MB of Avro, schema id {summary['schema_id']}"
        print(
            f"produced {summary['records']} order events ({written}) "
            f"to {summary['topic']} ({summary['partitions']} partitions) on {summary['bootstrap']} in "
            f"{summary['seconds']}s ({summary['records_per_s']} records/s); per partition: {summary['per_partition']}"
        )
    return 0


def _fresh_avro(args: argparse.Namespace) -> bool:
    """Whether the (non-empty) topic's records name the id the registry gives the sample schema now. If not: with
    --recreate-stale the topic is deleted (False: produce it again), else SampleError."""
    subject = f"{args.topic}-value"
    schema_id = register_schema(args.registry, subject, ORDER_SCHEMA)
    found = first_schema_ids(args.bootstrap, args.topic)
    if found == {schema_id}:
        return True
    named = ", ".join(
        "none (not the wire format)" if i is None else str(i) for i in sorted(found, key=lambda i: i or -1)
    )
    why = (
        f"{args.topic}'s records name schema id {named}, but the sample schema is id {schema_id} under {subject} "
        "now (the dev registry keeps its schemas in memory: a restart forgets them)"
    )
    if not args.recreate_stale:
        raise SampleError(f"{why}: --recreate-stale deletes the topic and produces it again, or use another --topic")
    print(f"{why}: deleting the topic and producing it again")
    delete_topic(args.bootstrap, args.topic)
    return False


if __name__ == "__main__":
    sys.exit(main())
