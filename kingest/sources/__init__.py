"""Where records come from: the Source protocol the pipeline reads through, and the one place the consumer
library is chosen (``kafka.client``). One module per client, each the only one importing its library:

    kafka_python.py   kafka-python (pure Python, always installed)
    confluent.py      confluent-kafka (librdkafka; the ``fast`` extra)
    memory.py         an in-memory topic set and group, for fast unit tests
    common.py         what both clients share: the commit retry, the connection watch, the error messages

Topic-partitions are plain ``(topic, partition)`` tuples (kingest.types.TopicPartition) everywhere outside the
client modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from kingest.batcher import Columns
from kingest.config import KafkaConfig
from kingest.types import TopicPartition

from .common import Listener
from .memory import MemorySource


class Source(Protocol):
    """What the pipeline needs from Kafka."""

    # How many partitions' batches the pipeline encodes at once next to this source: pyarrow's JSON reader and
    # Parquet writer release the GIL, so each can use a core of its own, if the source leaves one free.
    encoders: int

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None: ...
    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any] | Columns]: ...

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """Commit these explicit offsets to the consumer group, the same way with every client.

        ``wait=True`` (at-most-once, at-least-once: the group is the source of truth): synchronous, retried
        through a broker outage until the broker answers; raises CommitFailed when the group refuses (a
        rebalance: another member owns the partitions now).
        ``wait=False`` (exactly-once: the group's offsets only feed lag tools): best effort, sent without waiting
        out an outage; a failure is logged, never raised."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, tp: TopicPartition) -> None: ...
    def seek_to_end(self, tp: TopicPartition) -> None: ...
    def seek_to_committed(self, tps: Iterable[TopicPartition]) -> None:
        """Resume these newly assigned partitions from the group's committed offsets (or the reset policy where
        none is committed), whatever position this consumer held before the rebalance."""
        ...

    def position(self, tp: TopicPartition) -> int: ...
    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log end offsets, asked of the broker; SourceUnavailable when it does not answer within
        request_timeout_ms."""
        ...

    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, tps: Iterable[TopicPartition]) -> None: ...
    def resume(self, tps: Iterable[TopicPartition]) -> None: ...
    def lag(self, tp: TopicPartition) -> int | None: ...
    def close(self) -> None: ...


def make_source(config: KafkaConfig) -> Source:
    """The one place the consumer library is chosen (``kafka.client``)."""
    if config.client == "confluent":
        from .confluent import ConfluentSource

        return ConfluentSource(config)
    from .kafka_python import KafkaSource

    return KafkaSource(config)


__all__ = ["Listener", "MemorySource", "Source", "make_source"]
