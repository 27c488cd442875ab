"""Inspecting Kafka outside the poll loop (verify, status, rewind): log offsets, the records' offsets, the
consumer group. With ``source.py``, the only module that imports kafka-python.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import SetupError, SourceUnavailable, TopicNotFound
from .sources.kafka_python import credential_check
from .types import TopicPartition


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


def _connect(config: Config, settings: dict[str, Any], make: Any) -> Any:
    """Build a kafka-python client, turning its connection failures into kingest's errors."""
    from kafka import errors as kafka_errors

    try:
        with credential_check(settings, config.kafka):  # bad credentials: a clear error within seconds
            return make(**settings)
    except (kafka_errors.KafkaTimeoutError, *_no_brokers(kafka_errors)):
        raise SourceUnavailable(
            f"no Kafka broker answered at {_where(config)}",
            "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
        ) from None
    except kafka_errors.KafkaError as exc:
        raise SourceUnavailable(f"cannot connect to Kafka at {_where(config)}: {exc}") from None


@contextmanager
def inspection_consumer(config: Config, **extra: Any) -> Iterator[Any]:
    """A consumer with no group (nothing it does can move the pipeline's committed offsets)."""
    import kafka

    settings = {**_connection_settings(config), **extra}
    consumer = _connect(
        config,
        settings,
        lambda **s: kafka.KafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level=config.kafka.isolation_level, **s
        ),
    )
    try:
        yield consumer
    finally:
        consumer.close(autocommit=False)


@contextmanager
def admin_client(config: Config) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = _connect(config, _connection_settings(config), KafkaAdminClient)
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


def committed_offsets(config: Config, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The pipeline's consumer group's committed offset of each partition (None: nothing committed)."""
    from kafka import TopicPartition as KafkaTP
    from kafka import errors as kafka_errors

    group = config.kafka.group_id
    wanted = [KafkaTP(t, p) for t, p in tps]
    with admin_client(config) as admin:
        try:
            got = admin.list_group_offsets({group: wanted}).get(group, {})
        except kafka_errors.KafkaError as exc:
            raise SourceUnavailable(
                f"cannot read the committed offsets of consumer group {group} from {_where(config)}: {exc}"
            ) from None
    out: dict[TopicPartition, int | None] = {}
    for ktp in wanted:
        meta = got.get(ktp)
        offset = None if meta is None else int(meta.offset)
        out[(ktp.topic, ktp.partition)] = offset if offset is not None and offset >= 0 else None
    return out


def setup_error(exc: BaseException, config: Config) -> SetupError:
    return SourceUnavailable(f"Kafka at {_where(config)}: {type(exc).__name__}: {exc}")


def _no_brokers(kafka_errors: Any) -> tuple[type[BaseException], ...]:
    """kafka-python 2 raised NoBrokersAvailable when bootstrap failed; 3.x raises KafkaTimeoutError."""
    error = getattr(kafka_errors, "NoBrokersAvailable", None)
    return (error,) if error is not None else ()


# ---------------------------------------------------------------------------------------------- status, rewind


@dataclass(frozen=True)
class GroupMember:
    """A member of the consumer group, as the group coordinator describes it."""

    member_id: str
    client_id: str
    host: str
    group_instance_id: str | None
    partitions: tuple[TopicPartition, ...]

    def describe(self) -> str:
        return f"client {self.client_id} on {self.host} (member {self.member_id})"


@dataclass(frozen=True)
class GroupInfo:
    """The group's state as Kafka names it (Empty, Stable, PreparingRebalance, CompletingRebalance, Dead: Dead
    also when the group does not exist) and its members."""

    group_id: str
    state: str
    members: tuple[GroupMember, ...]


def describe_group(config: Config) -> GroupInfo:
    """The pipeline's consumer group: state and members with their assigned partitions."""
    from kafka import errors as kafka_errors

    group = config.kafka.group_id
    with admin_client(config) as admin:
        try:
            got = admin.describe_groups([group]).get(group) or {}
        except kafka_errors.KafkaError as exc:
            raise SourceUnavailable(f"cannot describe consumer group {group} on {_where(config)}: {exc}") from None
    error = got.get("error")
    if error and "GroupIdNotFound" not in error:
        raise SourceUnavailable(f"cannot describe consumer group {group} on {_where(config)}: {error}")
    members = []
    for member in got.get("members") or []:
        assignment = member.get("member_assignment")
        assigned = assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
        members.append(
            GroupMember(
                member_id=str(member.get("member_id") or ""),
                client_id=str(member.get("client_id") or ""),
                host=str(member.get("client_host") or "").lstrip("/"),
                group_instance_id=member.get("group_instance_id"),
                partitions=tuple(sorted((a["topic"], int(p)) for a in assigned for p in a.get("partitions", []))),
            )
        )
    return GroupInfo(group, str(got.get("group_state") or "Dead"), tuple(members))


def set_group_offsets(config: Config, offsets: dict[TopicPartition, int]) -> None:
    """Set the group's committed offsets, as Kafka's `consumer-groups --reset-offsets --execute` does. The broker
    refuses while the group has active members; the error names the partitions it refused."""
    from kafka import OffsetAndMetadata
    from kafka import TopicPartition as KafkaTP
    from kafka import errors as kafka_errors

    if not offsets:
        return
    group = config.kafka.group_id
    wanted = {KafkaTP(t, p): OffsetAndMetadata(o, "", None) for (t, p), o in offsets.items()}
    with admin_client(config) as admin:
        try:
            results = admin.alter_group_offsets(group, wanted)
        except kafka_errors.KafkaError as exc:
            raise SourceUnavailable(
                f"cannot set the offsets of consumer group {group} on {_where(config)}: {exc}"
            ) from None
    refused = {
        f"{ktp.topic}[{ktp.partition}]": error.__name__
        for ktp, error in results.items()
        if error is not kafka_errors.NoError
    }
    if refused:
        raise SetupError(
            f"Kafka refused to set the committed offsets of consumer group {group}: "
            + ", ".join(f"{tp} ({why})" for tp, why in sorted(refused.items())),
            "The group must have no active member: stop every `kingest run` of this pipeline, then try again.",
        )


def offsets_for_times(
    consumer: Any, tps: Iterable[TopicPartition], timestamp_ms: int
) -> dict[TopicPartition, int | None]:
    """The earliest offset of each partition whose record timestamp is at or after ``timestamp_ms`` (Kafka's
    ListOffsets by timestamp). None where no record is that recent."""
    from kafka import TopicPartition as KafkaTP

    found = consumer.offsets_for_times({KafkaTP(t, p): timestamp_ms for t, p in tps})
    return {(ktp.topic, ktp.partition): (None if got is None else int(got.offset)) for ktp, got in found.items()}
