"""The benchmark's dataset: realistic JSON events, deterministic for a seed, produced once to a fresh topic.

Each value is one JSON object of about ``value_size`` bytes (UTF-8, compact), shaped like an e-commerce event:
nested objects (customer, address with coordinates, order, session), an array of item objects, ISO 8601
timestamps, integers, floats, booleans, nulls, a few non-ASCII strings, and a free-text ``note`` that brings the
value to its size. Small values (the wide topics' ~200 B) keep the event's core only: ids, type, timestamp,
currency, total, paid. Keys are customer ids; records are spread evenly over the partitions (record i goes to
partition i % partitions), with no headers.

The same records as Avro (``AvroFramer``), for the Avro contenders: each JSON value written with an Avro schema
that describes it (``avro_schema``) in the Confluent wire format (byte 0, the schema's 4-byte big-endian id in the
registry, the Avro binary payload). Two versions of the schema, as a topic whose producer was upgraded part-way:
version 1 has no ``customer.lifetime_orders`` (the records of the first half of the topic are written with it and
lose that field), version 2 adds it as nullable with default null (a BACKWARD-compatible change). Both are
registered under ``<topic>-value`` through the registry's Confluent REST API (``register_schema``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
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


# ------------------------------------------------------------------------------------------------- Avro

AVRO_NAMESPACE = "kingest.bench"
AVRO_VERSIONS = (1, 2)
# Whether the nested records that a value may lack (customer.address, its geo, session) are nullable records,
# ["null", record], as a producer would declare them (False: records whose fields are all nullable, a missing one
# written as a record of nulls).
NULLABLE_RECORDS = True


def avro_schema(version: int, nullable_records: bool = NULLABLE_RECORDS) -> dict[str, Any]:
    """The Avro schema of the dataset's values (record ``kingest.bench.OrderEvent``), field for field as the JSON
    has them (integers long, floats double, the timestamp a string, as the JSON path reads them). Every field that
    ``event`` may leave out (to fit a value size, or by chance: coordinates, tags, the note) is nullable with
    default null (but see NULLABLE_RECORDS). Version 2 adds ``customer.lifetime_orders`` (nullable, default null:
    a BACKWARD-compatible change)."""

    def optional(name: str, kind: Any) -> dict[str, Any]:
        return {"name": name, "type": ["null", kind], "default": None}

    def field(name: str, kind: Any) -> dict[str, Any]:  # a field of a record that may be missing as a whole
        return {"name": name, "type": kind} if nullable_records else optional(name, kind)

    def record_field(name: str, kind: dict[str, Any]) -> dict[str, Any]:  # a record that a value may lack
        return optional(name, kind) if nullable_records else {"name": name, "type": kind}

    geo = {"type": "record", "name": "Geo", "fields": [field("lat", "double"), field("lon", "double")]}
    address = {
        "type": "record",
        "name": "Address",
        "fields": [
            field("street", "string"),
            field("city", "string"),
            field("country", "string"),
            record_field("geo", geo),
        ],
    }
    customer_fields = [
        {"name": "id", "type": "string"},
        optional("name", "string"),
        optional("tier", "string"),
        *([optional("lifetime_orders", "long")] if version >= 2 else []),
        record_field("address", address),
    ]
    item = {
        "type": "record",
        "name": "Item",
        "fields": [
            {"name": "sku", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "qty", "type": "long"},
            {"name": "unit_price", "type": "double"},
        ],
    }
    order = {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "currency", "type": "string"},
            {"name": "total", "type": "double"},
            {"name": "paid", "type": "boolean"},
            optional("coupon", "string"),
            optional("items", {"type": "array", "items": item}),
        ],
    }
    session = {
        "type": "record",
        "name": "Session",
        "fields": [field("channel", "string"), optional("user_agent", "string")],
    }
    return {
        "type": "record",
        "name": "OrderEvent",
        "namespace": AVRO_NAMESPACE,
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "type", "type": "string"},
            {"name": "occurred_at", "type": "string"},
            {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": customer_fields}},
            {"name": "order", "type": order},
            record_field("session", session),
            optional("tags", {"type": "array", "items": "string"}),
            optional("note", "string"),
        ],
    }


class AvroFramer:
    """Turns record ``i``'s JSON value into the same record in the Confluent wire format: written with schema
    version 1 (no ``customer.lifetime_orders``) before record ``switch``, version 2 from there on. ``ids``: the
    registry's id of each version."""

    def __init__(self, ids: dict[int, int], switch: int, nullable_records: bool = NULLABLE_RECORDS) -> None:
        import fastavro

        self.switch = switch
        self.nullable_records = nullable_records
        self.writers = {
            v: (b"\x00" + ids[v].to_bytes(4, "big"), fastavro.parse_schema(avro_schema(v, nullable_records)))
            for v in AVRO_VERSIONS
        }
        self._write = fastavro.schemaless_writer

    def __call__(self, i: int, value: bytes) -> bytes:
        header, schema = self.writers[1 if i < self.switch else 2]
        record = json.loads(value)
        if not self.nullable_records:  # a missing nested record: one of nulls (see NULLABLE_RECORDS)
            address = record["customer"].setdefault("address", {})
            address.setdefault("geo", {})
            record.setdefault("session", {})
        out = io.BytesIO()
        out.write(header)
        self._write(out, schema, record)
        return out.getvalue()


def _registry_call(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def register_schema(ccompat: str, subject: str, schema: dict[str, Any]) -> int:
    """Register ``schema`` (Avro) under ``subject`` through the Confluent REST API; its id (global, never 1 by
    assumption: the dev registry is shared)."""
    path = f"{ccompat}/subjects/{urllib.parse.quote(subject, safe='')}/versions"
    return int(_registry_call(path, "POST", {"schema": json.dumps(schema), "schemaType": "AVRO"})["id"])


def delete_subjects(ccompat: str, subjects: list[str]) -> None:
    """Best effort: the bench's subjects, soft-deleted then for good (the registry is shared)."""
    for subject in subjects:
        path = f"{ccompat}/subjects/{urllib.parse.quote(subject, safe='')}"
        for suffix in ("", "?permanent=true"):
            try:
                _registry_call(path + suffix, "DELETE")
            except OSError as exc:
                print(f"  (deleting subject {subject}{suffix}: {exc})")
                break


# ------------------------------------------------------------------------------------------------ Kafka


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
    frame: Callable[[int, bytes], bytes] | None = None,
) -> Produced:
    """Create ``topic`` and produce the dataset to it with a batched kafka-python producer (uncompressed).
    ``batch_records``: each partition's records in record batches of exactly that many (the producer is flushed
    after each round of ``batch_records`` a partition; the last batch may be smaller), so that a consumer that
    fetches one record batch a partition at a time gets them in those steps. ``frame``: what record ``i``'s JSON
    value is sent as (an ``AvroFramer``); the same keys and partitions."""
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
            if frame is not None:
                value = frame(i, value)
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
