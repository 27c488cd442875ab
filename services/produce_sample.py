#!/usr/bin/env python3
"""Produce a realistic, deterministic sample of JSON order events into Kafka (for the demo and benchmarks).

    .venv/bin/python services/produce_sample.py --records 20000 --seed 42
    .venv/bin/python services/produce_sample.py --topic orders-big --records 1000000 --value-bytes 1024

Each value is one JSON object:
    {"order_id": "ord-00000000001", "customer_id": "cust-004217", "amount": 123.45, "currency": "EUR",
     "status": "paid", "items": [{"sku": "SKU-01234", "qty": 2, "price": 19.99}, ...],
     "created_at": "2026-01-01T00:00:00.250000+00:00"}
keyed by customer_id (so one customer's orders stay in one partition, in order). The same --seed gives the same
records (values, keys and order); the topic is created with --partitions if it does not exist.
Importable: produce_orders(...) returns the same summary dict that --json prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK"]
STATUSES = ["created", "paid", "shipped", "delivered", "cancelled", "refunded"]
STATUS_WEIGHTS = [10, 40, 25, 20, 3, 2]
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def order_events(records: int, seed: int, value_bytes: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs; deterministic for a seed. value_bytes > 0 pads each value to about that size."""
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
        value = json.dumps(order, separators=(",", ":"))
        if value_bytes > len(value) + 12:
            # pad with a "note" field so the value is about value_bytes long (for throughput benchmarks)
            order["note"] = "x" * (value_bytes - len(value) - 10)
            value = json.dumps(order, separators=(",", ":"))
        yield customer.encode(), value.encode()


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
) -> dict:
    from kafka import KafkaProducer

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
        for key, value in order_events(records, seed, value_bytes):
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
        "records": records,
        "value_bytes_total": nbytes,
        "seconds": round(secs, 3),
        "records_per_s": round(records / secs) if secs > 0 else None,
        "per_partition": {str(p): n for p, n in sorted(per_partition.items())},
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"], default=None)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument(
        "--skip-if-present",
        action="store_true",
        help="do nothing when the topic already holds at least --records records (make demo)",
    )
    args = parser.parse_args(argv)
    try:
        if args.skip_if_present:
            present = records_in_topic(args.bootstrap, args.topic)
            if present is not None and present >= args.records:
                print(f"{args.topic} on {args.bootstrap} already holds {present} records: not producing more")
                return 0
        summary = produce_orders(
            args.bootstrap, args.topic, args.partitions, args.records, args.seed, args.value_bytes, args.compression
        )
    except Exception as e:  # a CLI: one line, not a traceback, for the usual "no broker" case
        print(f"produce_sample: error: {type(e).__name__}: {e} (is Kafka up? `make up`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"produced {summary['records']} order events ({summary['value_bytes_total'] / 1e6:.1f} MB of JSON) "
            f"to {summary['topic']} ({summary['partitions']} partitions) on {summary['bootstrap']} in "
            f"{summary['seconds']}s ({summary['records_per_s']} records/s); per partition: {summary['per_partition']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
