"""The Kafka side of integration tests, through kafka-python's own clients (never through kingest): records
to produce, and the offsets and members the broker reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PARTITIONS = 3  # the partitions of a test topic unless a test needs another number


def events(n: int, start: int = 0) -> list[bytes]:
    """``n`` JSON records numbered from ``start``: {"order_id": i, "amount": i * 1.25}."""
    return [json.dumps({"order_id": i, "amount": round(i * 1.25, 2)}).encode() for i in range(start, start + n)]


def produce_evenly(
    produce: Callable[..., Any], topic: str, per_partition: int, start: int = 0, partitions: int = PARTITIONS
) -> None:
    """The same ``per_partition`` records (numbered from ``start``) into each partition."""
    for p in range(partitions):
        produce(topic, events(per_partition, start), partition=p)


def produce_spread(produce: Callable[..., Any], topic: str, start: int, count: int, partitions: int) -> None:
    """``count`` records numbered from ``start``, spread evenly over the partitions."""
    values = events(count, start)
    for p in range(partitions):
        produce(topic, values[p::partitions], partition=p)


@contextmanager
def private_producer(bootstrap: str) -> Iterator[Callable[..., None]]:
    """A `produce(topic, values, partition=...)` with its own KafkaProducer, closed on exit: for a background
    thread, which then shares no client with the test's thread."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def produce(topic: str, values: list[bytes], partition: int | None = None) -> None:
        futures = [producer.send(topic, value=v, partition=partition) for v in values]
        producer.flush()
        for future in futures:
            future.get(timeout=30)

    try:
        yield produce
    finally:
        producer.close()


def end_offsets(kafka_bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        got = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return {tp.partition: int(o) for tp, o in got.items()}


def group_offsets(kafka_admin: Any, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets, read by Kafka's admin API (not through kingest)."""
    got = kafka_admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: int(meta.offset) for tp, meta in got.items() if tp.topic == topic and meta.offset >= 0}


def group_members(kafka_admin: Any, group: str) -> tuple[str, dict[str, set[int]]]:
    """The group's state and, per member client_id, its assigned partitions."""
    got = kafka_admin.describe_groups([group]).get(group) or {}
    members: dict[str, set[int]] = {}
    for member in got.get("members") or []:
        assignment = member.get("member_assignment")
        assigned = assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
        members[str(member.get("client_id"))] = {int(p) for a in assigned for p in a.get("partitions", [])}
    return str(got.get("group_state") or "Dead"), members


def committed(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int | None]:
    """The group's committed offset of each partition (None: nothing committed), as a group member sees it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)
