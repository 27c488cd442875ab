"""The Kafka side: kafka-python's consumer in a group, with manual, synchronous commits of explicit offsets.
The one module that imports kafka-python. ``MemorySource`` is an in-memory stand-in for fast unit tests.

Topic-partitions are plain ``(topic, partition)`` tuples everywhere outside this module (kafka-python's
TopicPartition is a namedtuple, so the two compare and hash alike).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .batcher import Record, TopicPartition
from .config import KafkaConfig
from .errors import CommitFailed, SetupError, SourceUnavailable, TopicNotFound

log = logging.getLogger("kingest.source")

Listener = Callable[[list[TopicPartition]], None]


class Source(Protocol):
    """What the pipeline needs from Kafka."""

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None: ...
    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any]]: ...
    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, tp: TopicPartition) -> None: ...
    def seek_to_end(self, tp: TopicPartition) -> None: ...
    def position(self, tp: TopicPartition) -> int: ...
    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, tps: Iterable[TopicPartition]) -> None: ...
    def highwater(self, tp: TopicPartition) -> int | None: ...
    def close(self) -> None: ...


def _tp(tp: TopicPartition) -> Any:
    from kafka import TopicPartition as KafkaTP

    return KafkaTP(tp[0], tp[1])


class KafkaSource:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.consumer: Any = None

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None:
        import kafka
        from kafka import errors as kafka_errors

        settings = self.config.consumer_settings()
        settings["enable_auto_commit"] = False
        settings.setdefault("bootstrap_timeout_ms", min(15000, self.config.request_timeout_ms))
        where = ", ".join(self.config.bootstrap_servers)
        try:
            self.consumer = kafka.KafkaConsumer(**settings)
        except (kafka_errors.KafkaTimeoutError, *_no_brokers(kafka_errors)):
            raise SourceUnavailable(
                f"no Kafka broker answered at {where}",
                "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
            ) from None
        except (kafka_errors.KafkaConfigurationError, TypeError, ValueError, AssertionError) as exc:
            raise SetupError(f"Kafka consumer settings rejected: {exc}", "Check the kafka: section.") from None
        except kafka_errors.KafkaError as exc:
            raise SourceUnavailable(f"cannot connect to Kafka at {where}: {_kafka_reason(exc)}") from None
        try:
            existing = self.consumer.topics()
        except kafka_errors.KafkaError as exc:
            self.close()
            raise SourceUnavailable(f"cannot read topic metadata from {where}: {_kafka_reason(exc)}") from None
        missing = [t for t in self.config.topics if t not in existing]
        if missing:
            self.close()
            raise TopicNotFound(
                f"topic(s) {', '.join(missing)} not found on {where}",
                "Create the topic, or fix kafka.topics in the config.",
            )

        net = self.consumer._net  # kafka-python's IO loop, to wait on without blocking it

        async def in_worker(callback: Listener, partitions: Any) -> None:
            # kafka-python 3 runs rebalance listeners on its IO thread, where a blocking consumer call (commit,
            # end_offsets) would deadlock; and blocking there would also stop heartbeats. So the work runs on a
            # worker thread while this coroutine yields to the loop. The main thread is inside poll() meanwhile,
            # so the pipeline's state is not touched concurrently.
            tps = sorted((tp.topic, tp.partition) for tp in partitions)
            failure: list[BaseException] = []

            def work() -> None:
                try:
                    callback(tps)
                except BaseException as exc:  # re-raised from poll() by kafka-python
                    failure.append(exc)

            worker = threading.Thread(target=work, name="kingest-rebalance", daemon=True)
            worker.start()
            while worker.is_alive():
                await net.sleep(0.01)
            if failure:
                raise failure[0]

        class Rebalance(kafka.AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await in_worker(on_revoked, revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                await in_worker(on_assigned, assigned)

            async def on_partitions_lost(self, lost: Any) -> None:
                # Already owned by another member: nothing may be committed for them.
                await in_worker(on_lost, lost)

        self.consumer.subscribe(list(self.config.topics), listener=Rebalance())

    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any]]:
        from kafka import errors as kafka_errors

        try:
            return self.consumer.poll(timeout_ms=int(timeout * 1000))
        except kafka_errors.KafkaError as exc:
            if getattr(exc, "retriable", False):
                log.warning("poll failed, retrying: %s", _kafka_reason(exc))
                return {}
            raise SourceUnavailable(f"reading from Kafka failed: {_kafka_reason(exc)}") from None

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka import OffsetAndMetadata
        from kafka import errors as kafka_errors

        if not offsets:
            return
        try:
            self.consumer.commit({_tp(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except kafka_errors.KafkaError as exc:
            raise CommitFailed(
                f"Kafka refused the offset commit for {_tps(offsets)}: {_kafka_reason(exc)}",
                "Usually a rebalance: another instance now owns the partition. The records are consumed again.",
            ) from None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(_tp(tp), offset)

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.consumer.seek_to_beginning(_tp(tp))

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.consumer.seek_to_end(_tp(tp))

    def position(self, tp: TopicPartition) -> int:
        return int(self.consumer.position(_tp(tp)))

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        got = self.consumer.end_offsets([_tp(tp) for tp in tps])
        return {(tp.topic, tp.partition): int(o) for tp, o in got.items()}

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def highwater(self, tp: TopicPartition) -> int | None:
        """The log end offset last reported by a fetch (no request sent): for the lag display."""
        value = self.consumer.highwater(_tp(tp))
        return None if value is None else int(value)

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self.consumer.pause(*[_tp(tp) for tp in tps])

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as exc:  # closing is best effort: the group notices a lost member anyway
                log.debug("closing the consumer: %s", exc)
            self.consumer = None


def _kafka_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tps(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(offsets))


class MemorySource:
    """An in-memory topic set and consumer group, for unit tests of the pipeline without a broker.

    One member that is assigned every partition at open; committed offsets survive across instances that
    share the same ``group`` dict, as they would in Kafka."""

    def __init__(
        self,
        topics: dict[str, list[list[Record]]],
        group: dict[TopicPartition, int] | None = None,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
    ) -> None:
        self.topics = topics
        self.group = {} if group is None else group
        self.reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self._revoke: Listener | None = None

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None:
        tps = [(t, p) for t, parts in self.topics.items() for p in range(len(parts))]
        for tp in tps:
            self.positions[tp] = self.group.get(tp, self._reset_offset(tp))
        self._revoke = on_revoked
        on_assigned(tps)

    def _reset_offset(self, tp: TopicPartition) -> int:
        log_ = self.topics[tp[0]][tp[1]]
        if self.reset == "earliest" or not log_:
            return log_[0].offset if log_ else 0
        return log_[-1].offset + 1

    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any]]:
        out: dict[TopicPartition, Sequence[Any]] = {}
        budget = self.max_poll_records
        for tp, position in self.positions.items():
            if tp in self.paused or budget <= 0:
                continue
            records = [r for r in self.topics[tp[0]][tp[1]] if r.offset >= position][:budget]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
                budget -= len(records)
        if not out:
            time.sleep(timeout)  # like Kafka: an empty poll waits for its timeout
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.group.update(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        log_ = self.topics[tp[0]][tp[1]]
        self.positions[tp] = log_[0].offset if log_ else 0

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.positions[tp] = self.end_offsets([tp])[tp]

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: (self.topics[tp[0]][tp[1]][-1].offset + 1 if self.topics[tp[0]][tp[1]] else 0) for tp in tps}

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.update(tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.end_offsets([tp])[tp]

    def close(self) -> None:
        self._revoke = None


def _no_brokers(kafka_errors: Any) -> tuple[type[BaseException], ...]:
    """kafka-python 2 raised NoBrokersAvailable when bootstrap failed; 3.x raises KafkaTimeoutError."""
    error = getattr(kafka_errors, "NoBrokersAvailable", None)
    return (error,) if error is not None else ()
