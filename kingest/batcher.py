"""Per topic-partition buffers of raw records, and the rules that say when one is due.

The hot path: for every polled chunk, extend a few Python lists with the records' raw fields. Nothing is
decoded here; the encoder turns a whole buffer into Arrow columns at once.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from .types import TopicPartition

# The Python memory a buffered record holds beyond its key and value bytes: the headers of the two bytes objects
# (2 x 33 B), the offset and timestamp ints (28 + 32 B), five list slots (40 B), allocator rounding and list
# growth. Measured with tracemalloc on records polled by kafka-python 3 (CPython 3.11, 64-bit): 173 B; it was
# 229 B while the buffer also kept kafka-python's empty headers list of every record (see _columns).
# Counting it makes `batch.max_bytes` bound the memory the buffers really hold, not only the payload: with
# 500-byte values the payload alone undercounts by a third.
RECORD_OVERHEAD = 176
_FIELDS = ("offset", "timestamp", "key", "value", "headers")  # what the buffer keeps of a record


class Record(NamedTuple):
    """The fields kingest reads from a consumed record (kafka-python's ConsumerRecord has them all)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Columns:
    """A polled chunk of one topic-partition already split into the five lists a Batch keeps (offsets,
    timestamps, keys, values, headers; empty headers as None), in offset order. A source that can build these
    in C loops (kingest/sources/confluent.py) hands them over instead of record objects, and extending a batch is
    then five list extends."""

    __slots__ = ("offsets", "timestamps", "keys", "values", "headers")

    def __init__(
        self,
        offsets: list[int],
        timestamps: list[int],
        keys: list[bytes | None],
        values: list[bytes | None],
        headers: list[Any],
    ) -> None:
        self.offsets = offsets
        self.timestamps = timestamps
        self.keys = keys
        self.values = values
        self.headers = headers

    def __len__(self) -> int:
        return len(self.offsets)

    def after(self, offset: int) -> Columns:
        """The records past ``offset``."""
        cut = bisect.bisect_right(self.offsets, offset)
        return Columns(
            self.offsets[cut:], self.timestamps[cut:], self.keys[cut:], self.values[cut:], self.headers[cut:]
        )

    def extend(self, other: Columns) -> None:
        self.offsets += other.offsets
        self.timestamps += other.timestamps
        self.keys += other.keys
        self.values += other.values
        self.headers += other.headers


@dataclass
class Batch:
    """Raw records of one topic-partition, in offset order, not yet written."""

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    nbytes: int = 0
    started: float | None = None  # monotonic time of the first append
    # The value columns, when a read of the whole flush's batches of the topic made them (Decoder.prepare): the
    # decoder takes them instead of reading the values again. Never copied (init=False: not by replace() either).
    prepared: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def first_offset(self) -> int:
        return self.offsets[0]

    @property
    def last_offset(self) -> int:
        return self.offsets[-1]

    @property
    def next_offset(self) -> int:
        """The offset to resume from once this batch is saved."""
        return self.offsets[-1] + 1

    def extend(self, records: Sequence[Any] | Columns) -> None:
        """Append a polled chunk: records, or Columns. Offsets at or below the last one held are replays and are
        refused."""
        if not records:
            return
        if isinstance(records, Columns):
            self._extend_columns(records)
            return
        if self.offsets and records[0].offset <= self.offsets[-1]:
            last = self.offsets[-1]
            records = [r for r in records if r.offset > last]
            if not records:
                return
        if self.started is None:
            self.started = time.monotonic()
        offsets, timestamps, keys, values, headers = _columns(records)
        self.offsets.extend(offsets)
        self.timestamps.extend(timestamps)
        self.keys.extend(keys)
        self.values.extend(values)
        self.headers.extend(headers)
        self.nbytes += _nbytes(keys, values)

    def _extend_columns(self, columns: Columns) -> None:
        if self.offsets and columns.offsets[0] <= self.offsets[-1]:
            columns = columns.after(self.offsets[-1])
            if not columns:
                return
        if self.started is None:
            self.started = time.monotonic()
        self.offsets += columns.offsets
        self.timestamps += columns.timestamps
        self.keys += columns.keys
        self.values += columns.values
        self.headers += columns.headers
        self.nbytes += _nbytes(columns.keys, columns.values)

    def take_before(self, offset: int) -> Batch:
        """Split off the records below ``offset`` as a new batch (used to save the good part of a batch)."""
        cut = bisect.bisect_left(self.offsets, offset)
        head = Batch(
            self.topic,
            self.partition,
            self.offsets[:cut],
            self.timestamps[:cut],
            self.keys[:cut],
            self.values[:cut],
            self.headers[:cut],
            started=self.started,
        )
        head.nbytes = _nbytes(head.keys, head.values)
        return head

    def age(self, now: float) -> float:
        return 0.0 if self.started is None else now - self.started


class Batcher:
    """Holds one Batch per topic-partition and decides which are due to be flushed.

    A batch is due when it holds ``max_records`` records, or when its oldest record is ``max_age`` old
    (checked on every loop turn, so it fires even when no new records arrive). ``max_bytes`` bounds the
    memory of all buffers together: when the sum reaches it, every non-empty batch is due. ``weight``: what a
    byte of a topic's records counts against it (1 by default; see Pipeline._weight).
    """

    def __init__(
        self, max_records: int, max_bytes: int, max_age: float, weight: Callable[[str], float] | None = None
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.weight = weight or (lambda topic: 1.0)
        self.batches: dict[TopicPartition, Batch] = {}

    def add(self, tp: TopicPartition, records: Sequence[Any] | Columns) -> None:
        batch = self.batches.get(tp)
        if batch is None:
            batch = self.batches[tp] = Batch(tp[0], tp[1])
        batch.extend(records)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.batches.values())

    @property
    def load(self) -> float:
        """What the buffers count against ``max_bytes``: their bytes, weighed by topic."""
        return self.weighed(self.batches.values())

    def weighed(self, batches: Iterable[Batch]) -> float:
        return sum(b.nbytes * self.weight(b.topic) for b in batches)

    def due(self, now: float | None = None, everything: bool = False) -> list[TopicPartition]:
        now = time.monotonic() if now is None else now
        nonempty = [tp for tp, b in self.batches.items() if len(b)]
        if everything or self.load >= self.max_bytes:
            return nonempty
        return [
            tp
            for tp in nonempty
            if len(self.batches[tp]) >= self.max_records or self.batches[tp].age(now) >= self.max_age
        ]

    def seconds_until_due(self, now: float | None = None) -> float:
        """How long the poll may block before the oldest batch becomes due by age."""
        now = time.monotonic() if now is None else now
        ages = [b.age(now) for b in self.batches.values() if len(b)]
        return max(0.0, self.max_age - max(ages)) if ages else self.max_age

    def pop(self, tps: Iterable[TopicPartition]) -> list[Batch]:
        return [self.batches.pop(tp) for tp in tps if tp in self.batches and len(self.batches[tp])]

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.batches.pop(tp, None)

    def split(self, batch: Batch) -> list[Batch]:
        """Cut a batch polled past ``max_records`` into batches of at most ``max_records``."""
        if len(batch) <= self.max_records:
            return [batch]
        parts = []
        for start in range(0, len(batch), self.max_records):
            end = start + self.max_records
            part = Batch(
                batch.topic,
                batch.partition,
                batch.offsets[start:end],
                batch.timestamps[start:end],
                batch.keys[start:end],
                batch.values[start:end],
                batch.headers[start:end],
                started=batch.started,
            )
            part.nbytes = _nbytes(part.keys, part.values)
            parts.append(part)
        return parts


def _columns(records: Sequence[Any]) -> list[list[Any]]:
    """The offsets, timestamps, keys, values and headers of a polled chunk, as five lists, in C loops (``map``
    with ``attrgetter``). Empty headers become None: kafka-python gives every record a list of its own, which
    would cost 72 bytes a record to keep (the encoder writes None and [] alike, as an empty list).

    This is the only per-record Python work of the pipeline: about 0.1 µs a record here, against about 9 µs of
    CPU a record for a bare kafka-python poll loop (the bench dataset, see docs/performance.md)."""
    offsets, timestamps, keys, values, headers = [list(map(attrgetter(name), records)) for name in _FIELDS]
    headers = [h or None for h in headers] if any(headers) else [None] * len(headers)
    return [offsets, timestamps, keys, values, headers]


def _nbytes(keys: Sequence[bytes | None], values: Sequence[bytes | None]) -> int:
    """What buffering these records costs in memory (see RECORD_OVERHEAD), without a Python loop."""
    return sum(map(len, filter(None, keys))) + sum(map(len, filter(None, values))) + RECORD_OVERHEAD * len(values)
