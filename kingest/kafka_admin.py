"""Inspecting Kafka outside the poll loop (verify, status, rewind): log offsets, the records' offsets, the
consumer group. With ``source.py``, the only module that imports kafka-python.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .batcher import TopicPartition
from .config import Config
from .errors import SetupError, SourceUnavailable, TopicNotFound


def _connection_settings(config: Config) -> dict[str, Any]:
    """The consumer settings that say how to reach the cluster (security included), without group ones."""
    settings = config.kafka.consumer_settings()
    keep = {
        "bootstrap_servers",
        "client_id",
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "request_timeout_ms",
    }
    out = {k: v for k, v in settings.items() if k in keep}
    out.setdefault("bootstrap_timeout_ms", min(15000, config.kafka.request_timeout_ms))
    return out


def _where(config: Config) -> str:
    return ", ".join(config.kafka.bootstrap_servers)


@contextmanager
def inspection_consumer(config: Config, **extra: Any) -> Iterator[Any]:
    """A consumer with no group (nothing it does can move the pipeline's committed offsets)."""
    import kafka
    from kafka import errors as kafka_errors

    try:
        consumer = kafka.KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level=config.kafka.isolation_level,
            **_connection_settings(config),
            **extra,
        )
    except kafka_errors.NoBrokersAvailable:
        raise SourceUnavailable(
            f"no Kafka broker answered at {_where(config)}",
            "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
        ) from None
    except kafka_errors.KafkaError as exc:
        raise SourceUnavailable(f"cannot connect to Kafka at {_where(config)}: {exc}") from None
    try:
        yield consumer
    finally:
        consumer.close(autocommit=False)


@contextmanager
def admin_client(config: Config) -> Iterator[Any]:
    from kafka import KafkaAdminClient
    from kafka import errors as kafka_errors

    try:
        admin = KafkaAdminClient(**_connection_settings(config))
    except kafka_errors.NoBrokersAvailable:
        raise SourceUnavailable(
            f"no Kafka broker answered at {_where(config)}",
            "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
        ) from None
    except kafka_errors.KafkaError as exc:
        raise SourceUnavailable(f"cannot connect to Kafka at {_where(config)}: {exc}") from None
    try:
        yield admin
    finally:
        admin.close()


def topic_partitions(consumer: Any, topics: Iterable[str], where: str = "") -> list[TopicPartition]:
    """Every partition of the topics; TopicNotFound names a missing one."""
    out: list[TopicPartition] = []
    existing = consumer.topics()
    for topic in topics:
        if topic not in existing:
            raise TopicNotFound(f"topic {topic} not found" + (f" on {where}" if where else ""))
        out += [(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    return out


def log_offsets(consumer: Any, tps: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
    """(log start offset, log end offset) of each partition. Under read_committed the end is the last stable
    offset, as a consumer of the pipeline sees it."""
    from kafka import TopicPartition as KafkaTP

    ktps = [KafkaTP(t, p) for t, p in tps]
    starts = consumer.beginning_offsets(ktps)
    ends = consumer.end_offsets(ktps)
    return {(tp.topic, tp.partition): (int(starts[tp]), int(ends[tp])) for tp in ktps}


def scan_offsets(
    consumer: Any, bounds: dict[TopicPartition, tuple[int, int]], poll_timeout: float = 1.0
) -> dict[TopicPartition, list[int]]:
    """The offsets of the records really present in each partition between its bounds [start, end): what a
    consumer with the pipeline's isolation level reads there. Gaps (transaction markers, aborted records
    under read_committed, compaction) are absent, and so are not counted as missing by the auditor."""
    from kafka import TopicPartition as KafkaTP

    todo = {tp: b for tp, b in bounds.items() if b[1] > b[0]}
    found: dict[TopicPartition, list[int]] = {tp: [] for tp in bounds}
    if not todo:
        return found
    ktps = [KafkaTP(t, p) for t, p in todo]
    consumer.assign(ktps)
    for ktp in ktps:
        consumer.seek(ktp, todo[(ktp.topic, ktp.partition)][0])
    remaining = set(todo)
    idle = 0
    while remaining:
        polled = consumer.poll(timeout_ms=int(poll_timeout * 1000), max_records=100_000)
        if not polled:
            # Positions can pass the end without a record (markers): check them before waiting again.
            for tp in list(remaining):
                if consumer.position(KafkaTP(*tp)) >= todo[tp][1]:
                    remaining.discard(tp)
            idle += 1
            if idle > 30 and remaining:
                raise SourceUnavailable(f"reading {sorted(remaining)} stalled before their end offsets")
            continue
        idle = 0
        for ktp, records in polled.items():
            tp = (ktp.topic, ktp.partition)
            end = todo[tp][1]
            found[tp].extend(r.offset for r in records if r.offset < end)
            if consumer.position(ktp) >= end:
                remaining.discard(tp)
                consumer.pause(ktp)
    return found


def setup_error(exc: BaseException, config: Config) -> SetupError:
    return SourceUnavailable(f"Kafka at {_where(config)}: {type(exc).__name__}: {exc}")
