"""The benchmark's dataset: realistic JSON events, deterministic for a seed, produced once to a fresh topic.

Each value is one JSON object of about ``value_size`` bytes (UTF-8, compact), shaped like an e-commerce event:
nested objects (customer, address with coordinates, order, session), an array of item objects, ISO 8601
timestamps, integers, floats, booleans, nulls, a few non-ASCII strings, and a free-text ``note`` that brings the
value to its size. Small values (the wide topics' ~200 B) keep the event's core only: ids, type, timestamp,
currency, total, paid. Keys are customer ids; records are spread evenly over the partitions (record i goes to
partition i % partitions), with no headers.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

EPOCH = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
EVENT_TYPES = ["order.created", "order.paid", "order.shipped", "order.delivered", "order.cancelled"]
EVENT_WEIGHTS = [30, 30, 20, 15, 5]
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Björn", "Zoë", "Łukasz", "Anaïs"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Torvalds", "Müller", "Sørensen"]
CITIES = [
    ("Lyon", "FR", 45.76, 4.84),
    ("Zürich", "CH", 47.37, 8.54),
    ("Kraków", "PL", 50.06, 19.94),
    ("Porto", "PT", 41.15, -8.61),
    ("Leeds", "GB", 53.80, -1.55),
    ("Austin", "US", 30.27, -97.74),
    ("São Paulo", "BR", -23.55, -46.63),
    ("Osaka", "JP", 34.69, 135.50),
]
STREETS = ["Rue de la République", "Bahnhofstrasse", "ul. Floriańska", "Rua das Flores", "Briggate", "Congress Ave"]
CURRENCIES = {"FR": "EUR", "CH": "CHF", "PL": "PLN", "PT": "EUR", "GB": "GBP", "US": "USD", "BR": "BRL", "JP": "JPY"}
TIERS = ["standard", "standard", "standard", "silver", "gold", "platinum"]
CATEGORIES = ["books", "garden", "kitchen", "toys", "electronics", "outdoor", "grocery"]
PRODUCTS = ["Cast iron pan", "Garden hose 25m", "Paperback novel", "LED desk lamp", "Trail shoes", "Coffee beans 1kg"]
CHANNELS = ["web", "ios", "android", "pos"]
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 19_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/5.1.0 shop-android/7.42.1",
]
TAGS = ["promo", "first-order", "express", "gift", "b2b", "subscription", "marketplace"]
WORDS = (
    "please leave the parcel with the neighbour at number twelve if nobody answers the door and ring twice "
    "because the bell is quiet the customer asked for recyclable packaging and an invoice with the company name"
).split()


@dataclass(frozen=True)
class Produced:
    topic: str
    records: int
    partitions: int
    key_bytes: int
    value_bytes: int
    seconds: float

    @property
    def nbytes(self) -> int:
        """Key and value bytes: what every contender reads (MB/s are computed from this)."""
        return self.key_bytes + self.value_bytes


def event(i: int, rng: random.Random, customers: int, value_size: int) -> tuple[bytes, bytes]:
    """Record ``i`` as (key, value)."""
    customer = rng.randrange(customers)
    city, country, lat, lon = CITIES[customer % len(CITIES)]
    at = EPOCH + dt.timedelta(milliseconds=i * 7 + rng.randrange(7))
    items: list[dict[str, Any]] = []
    # About 80 bytes an item on a core of about 420: fewer items for small values, so most fit at the first try.
    for _ in range(min(rng.choices((1, 2, 3, 4), weights=(45, 30, 15, 10))[0], max(1, (value_size - 420) // 80))):
        product = rng.randrange(20_000)
        items.append(
            {
                "sku": f"SKU-{product:05d}",
                "name": PRODUCTS[product % len(PRODUCTS)],
                "qty": rng.randint(1, 4),
                "unit_price": round(rng.uniform(1.0, 180.0), 2),
            }
        )
    total = round(sum(item["qty"] * item["unit_price"] for item in items), 2)
    value: dict[str, Any] = {
        "event_id": f"evt-{i:012d}",
        "type": rng.choices(EVENT_TYPES, weights=EVENT_WEIGHTS)[0],
        "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "customer": {
            "id": f"cust-{customer:07d}",
            "name": f"{FIRST[customer % len(FIRST)]} {LAST[customer % len(LAST)]}",
            "tier": TIERS[customer % len(TIERS)],
            "lifetime_orders": customer % 97,
            "address": {
                "street": f"{customer % 180 + 1} {STREETS[customer % len(STREETS)]}",
                "city": city,
                "country": country,
                "geo": {
                    "lat": round(lat + rng.uniform(-0.05, 0.05), 5),
                    "lon": round(lon + rng.uniform(-0.05, 0.05), 5),
                },
            },
        },
        "order": {
            "id": f"ord-{i:010d}",
            "currency": CURRENCIES[country],
            "total": total,
            "paid": rng.random() < 0.8,
            "coupon": "SPRING10" if rng.random() < 0.1 else None,
            "items": items,
        },
        "session": {"channel": rng.choice(CHANNELS)},
        "tags": rng.sample(TAGS, rng.randint(0, 2)),
    }
    if value_size >= 600:  # about 90 bytes
        value["session"]["user_agent"] = rng.choice(USER_AGENTS)
    data = _dump(value)
    # Fit the size: while too large, fewer items, then no user agent, tags or coordinates; then a note fills up.
    # Values of less than ~450 B (the wide topics' ~200 B) also lose the address, the session, the coupon, the
    # items and the customer's name and tier: only past the first four, so larger values are as they were.
    droppable = [
        lambda: len(value["order"]["items"]) > 1 and value["order"]["items"].pop(),
        lambda: value["session"].pop("user_agent", None),
        lambda: value.pop("tags", None),
        lambda: value["customer"]["address"].pop("geo", None),
        lambda: value["customer"].pop("address", None),
        lambda: value.pop("session", None),
        lambda: value["order"].pop("coupon", None),
        lambda: value["order"].pop("items", None),
        lambda: value["customer"].pop("name", None),
        lambda: value["customer"].pop("tier", None),
        lambda: value["customer"].pop("lifetime_orders", None),
    ]
    while len(data) > value_size and droppable:
        if not droppable[0]():
            droppable.pop(0)
            continue
        data = _dump(value)
    room = value_size - len(data) - len(',"note":""')
    if room > 0:
        words: list[str] = []
        length = -1
        while length < room:
            words.append(rng.choice(WORDS))
            length += len(words[-1]) + 1
        data = data[:-1] + b',"note":"' + " ".join(words)[:room].encode() + b'"}'
    return value["customer"]["id"].encode(), data


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def events(records: int, value_size: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    customers = max(100, records // 10)
    for i in range(records):
        yield event(i, rng, customers, value_size)


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 60.0) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kingest-bench")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics([topic])[0]
            parts = described.get("partitions") or []
            if len(parts) == partitions and all(p.get("leader_id", -1) >= 0 for p in parts):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout:.0f}s")
            time.sleep(0.1)
    finally:
        admin.close()


def produce(
    bootstrap: str,
    topic: str,
    records: int,
    partitions: int,
    value_size: int,
    seed: int,
    quiet: bool = False,
    batch_records: int | None = None,
) -> Produced:
    """Create ``topic`` and produce the dataset to it with a batched kafka-python producer (uncompressed).
    ``batch_records``: each partition's records in record batches of exactly that many (the producer is flushed
    after each round of ``batch_records`` a partition; the last batch may be smaller), so that a consumer that
    fetches one record batch a partition at a time gets them in those steps."""
    from kafka import KafkaProducer

    create_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="kingest-bench",
        acks=1,
        linger_ms=50 if batch_records is None else 60_000,  # aligned batches: sent by the flushes only
        delivery_timeout_ms=120_000 if batch_records is None else 200_000,
        batch_size=1 << 20,
        max_request_size=16 << 20,
    )
    rounds = batch_records * partitions if batch_records else 0
    started = time.monotonic()
    key_bytes = value_bytes = 0
    failures: list[BaseException] = []
    try:
        for i, (key, value) in enumerate(events(records, value_size, seed)):
            key_bytes += len(key)
            value_bytes += len(value)
            producer.send(topic, key=key, value=value, partition=i % partitions).add_errback(failures.append)
            if rounds and (i + 1) % rounds == 0:
                producer.flush()
            if not quiet and i and i % 100_000 == 0:
                print(f"  produced {i:,} records ({time.monotonic() - started:.0f}s)", flush=True)
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise RuntimeError(f"{len(failures)} records were not delivered to {topic}; first error: {failures[0]!r}")
    return Produced(topic, records, partitions, key_bytes, value_bytes, time.monotonic() - started)


def delete_topics(bootstrap: str, topics: list[str], groups: list[str]) -> None:
    """Best effort: the bench's topics and the consumer groups its contenders left."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kingest-bench")
    try:
        if groups:
            try:
                admin.delete_groups(groups)
            except Exception as exc:  # a group that never committed does not exist: nothing to delete
                print(f"  (deleting consumer groups: {exc})")
        admin.delete_topics(topics)
    finally:
        admin.close()
