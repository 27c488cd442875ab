"""The batcher's promises: records are buffered per partition in offset order, replays are refused, a batch is
due by records, bytes or age, and `batch.max_bytes` bounds the memory the buffers hold (payload and the Python
objects around it), whatever the records look like."""

from __future__ import annotations

import gc
import io
import tracemalloc
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from kingest.batcher import RECORD_OVERHEAD, Batch, Batcher, Record
from kingest.encoder import Encoder


class ConsumerRecord(NamedTuple):
    """kafka-python's ConsumerRecord: more fields than Record, in another order."""

    topic: str
    partition: int
    leader_epoch: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    checksum: None
    serialized_key_size: int
    serialized_value_size: int
    serialized_header_size: int


def consumer_records(first: int, n: int, value_size: int = 100, headers: bool = False) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(
            "t",
            0,
            0,
            offset,
            1_700_000_000_000 + offset,
            0,
            f"k{offset}".encode(),
            b"v" * value_size,
            [("trace", str(offset).encode())] if headers and offset % 2 else [],
            None,
            0,
            value_size,
            0,
        )
        for offset in range(first, first + n)
    ]


def test_buffers_the_fields_of_kafka_python_records_in_order_and_refuses_replays():
    batcher = Batcher(max_records=1000, max_bytes=1 << 30, max_age=60)
    batcher.add(("t", 0), consumer_records(0, 3, headers=True))
    batcher.add(("t", 0), consumer_records(1, 4, headers=True))  # 1 and 2 again (a replay after a seek), then 3, 4
    batch = batcher.batches[("t", 0)]
    assert batch.offsets == [0, 1, 2, 3, 4]
    assert batch.timestamps == [1_700_000_000_000 + o for o in range(5)]
    assert batch.keys == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert batch.values == [b"v" * 100] * 5
    # Empty headers are not kept (kafka-python gives each record a list of its own); the others are, as given.
    assert batch.headers == [None, [("trace", b"1")], None, [("trace", b"3")], None]


def test_empty_and_present_headers_are_written_as_lists():
    batcher = Batcher(max_records=1000, max_bytes=1 << 30, max_age=60)
    batcher.add(("t", 0), consumer_records(10, 3, headers=True))
    (file,) = Encoder("raw").encode_batch(batcher.pop([("t", 0)])[0]).files
    table = pq.read_table(io.BytesIO(file.data))
    assert table.column("kafka_headers").to_pylist() == [[], [{"key": "trace", "value": b"11"}], []]


def test_null_keys_and_values_count_no_payload():
    batcher = Batcher(max_records=1000, max_bytes=1 << 30, max_age=60)
    records = [Record("t", 0, 0, 1, None, None, []), Record("t", 0, 1, 2, b"key", b"value", [])]
    batcher.add(("t", 0), records)
    assert batcher.nbytes == len(b"key") + len(b"value") + 2 * RECORD_OVERHEAD


def test_the_byte_count_covers_the_memory_the_buffer_really_holds():
    """max_bytes is a memory bound: the count must not fall short of what buffering costs in Python objects,
    nor overshoot it by much (which would write needlessly small files)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        batcher = Batcher(max_records=10**9, max_bytes=1 << 40, max_age=60)
        for i in range(20):
            # As from kafka-python: every record with its own key and value bytes, ints and headers list; the
            # records themselves are dropped after the poll, the buffer keeps what it needs.
            chunk = consumer_records(i * 1000, 1000, value_size=500)
            batcher.add(("t", 0), chunk)
            del chunk
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.85 * held <= batcher.nbytes <= 1.25 * held, (batcher.nbytes, held)


def test_a_batch_is_due_by_records_by_bytes_and_by_age():
    batcher = Batcher(max_records=5, max_bytes=10 * (100 + RECORD_OVERHEAD) + 50, max_age=10)
    batcher.add(("t", 0), consumer_records(0, 5))
    batcher.add(("t", 1), consumer_records(0, 2))
    assert batcher.due(now=0) == [("t", 0)]  # 5 records
    batcher.add(("t", 2), consumer_records(0, 4))  # 11 records in all: over max_bytes, everything is due
    assert batcher.due(now=0) == [("t", 0), ("t", 1), ("t", 2)]
    batcher.pop([("t", 0), ("t", 2)])
    started = batcher.batches[("t", 1)].started
    assert started is not None
    assert batcher.due(now=started + 9) == []
    assert batcher.seconds_until_due(now=started + 9) == 1
    assert batcher.due(now=started + 10) == [("t", 1)]  # by age, without a new record


def test_split_and_take_before_keep_offsets_and_byte_counts():
    batcher = Batcher(max_records=4, max_bytes=1 << 30, max_age=60)
    sparse = [r._replace(offset=r.offset * 3) for r in consumer_records(0, 10)]  # offsets 0, 3, ..., 27
    batcher.add(("t", 0), sparse)
    (batch,) = batcher.pop([("t", 0)])
    parts = batcher.split(batch)
    assert [p.offsets for p in parts] == [[0, 3, 6, 9], [12, 15, 18, 21], [24, 27]]
    assert sum(p.nbytes for p in parts) == batch.nbytes
    head = batch.take_before(13)  # not an offset held: cut before the first offset >= 13
    assert head.offsets == [0, 3, 6, 9, 12]
    assert head.next_offset == 13
    assert head.nbytes == batch.nbytes * 5 // 10


def test_records_of_any_shape_with_the_fields():
    class Plain:
        def __init__(self, offset: int) -> None:
            self.offset, self.timestamp, self.key, self.value, self.headers = offset, 0, None, b"x", ()

    batch = Batch("t", 0)
    records: list[Any] = [Plain(7), Plain(8)]
    batch.extend(records)
    assert batch.offsets == [7, 8]
    assert batch.headers == [None, None]
