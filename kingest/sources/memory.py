"""An in-memory topic set and consumer group behind the Source protocol, shipped for fast unit tests of the
pipeline without a broker (the integration tests still run against the real one)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from kingest.batcher import Columns, Record
from kingest.types import TopicPartition

from .common import Listener


class MemorySource:
    """An in-memory topic set and consumer group, for unit tests of the pipeline without a broker.

    One member that is assigned every partition at open; committed offsets survive across instances that
    share the same ``group`` dict, as they would in Kafka."""

    encoders = 2  # the unit tests exercise batches encoded side by side

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

    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any] | Columns]:
        out: dict[TopicPartition, Sequence[Any] | Columns] = {}
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

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        self.commits.append(dict(offsets))
        self.group.update(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        log_ = self.topics[tp[0]][tp[1]]
        self.positions[tp] = log_[0].offset if log_ else 0

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.positions[tp] = self._end(tp)

    def seek_to_committed(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.positions[tp] = self.group.get(tp, self._reset_offset(tp))

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp) for tp in tps}

    def _end(self, tp: TopicPartition) -> int:
        log_ = self.topics[tp[0]][tp[1]]
        return log_[-1].offset + 1 if log_ else 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.update(tps)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.difference_update(tps)

    def lag(self, tp: TopicPartition) -> int | None:
        return max(0, self._end(tp) - self.positions[tp])

    def close(self) -> None:
        self._revoke = None
