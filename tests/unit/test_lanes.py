"""A flush's partitions are saved side by side (lake.max_concurrency), each partition's own steps in order."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid

import pytest

from kingest.lake import Lake
from kingest.lanes import Lanes
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource
from tests.unit.test_pipeline_memory import SEMANTICS, lake_offsets, make_config, topic

_PARTITION = re.compile(r"partition=(\d+)")


def test_lanes_return_results_in_order_and_raise_only_once_every_call_ended():
    lanes = Lanes(4)
    ended: list[int] = []

    def call(i: int) -> int:
        if i == 0:
            raise ValueError("first")
        time.sleep(0.05)
        ended.append(i)
        return i * 10

    assert lanes.map(lambda i: i * 10, range(6)) == [0, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="first"):
        lanes.map(call, range(4))
    assert sorted(ended) == [1, 2, 3]  # the calls that did not fail had all ended when the error was raised
    lanes.shutdown()


class WatchedLake(Lake):
    """A lake that counts the writes in flight and records each partition's operations in order. While
    ``meet`` is set, a write waits (up to 10 s) for a write of another partition to be in flight too."""

    def __init__(self, url: str, meet: bool) -> None:
        super().__init__(url)
        self.meet = meet
        self.lock = threading.Condition()
        self.in_flight: dict[int, int] = {}
        self.most = 0
        self.met = False
        self.tried = False
        self.first: int | None = None  # the partition of the first data write: it goes on, others wait for it
        self.ops: dict[int, list[tuple[str, str]]] = {}

    def _watch(self, op: str, rel: str, call):
        match = _PARTITION.search(rel)
        if match is None or rel.startswith("_kingest/") and "/checkpoints/" in rel:
            return call()
        p = int(match.group(1))
        with self.lock:
            if self.first is None and not rel.startswith("_kingest/"):
                self.first = p
            self.ops.setdefault(p, []).append((op, rel))
            self.in_flight[p] = self.in_flight.get(p, 0) + 1
            together = sum(1 for n in self.in_flight.values() if n)
            self.most = max(self.most, together)
            self.met = self.met or together > 1
            self.lock.notify_all()
            if self.meet and not self.tried and self.first not in (None, p) and not rel.startswith("_kingest/"):
                self.tried = True
                self.lock.wait_for(lambda: self.met, timeout=10)
        try:
            return call()
        finally:
            with self.lock:
                self.in_flight[p] -= 1

    def put(self, rel, data, **kw):
        return self._watch("put", rel, lambda: super(WatchedLake, self).put(rel, data, **kw))

    def create(self, rel, data, **kw):
        return self._watch("create", rel, lambda: super(WatchedLake, self).create(rel, data, **kw))


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_a_flushs_partitions_are_saved_side_by_side_each_in_its_own_order(semantics):
    url = f"memory://lake-{uuid.uuid4().hex}"
    lake = WatchedLake(url, meet=True)
    config = make_config(url, semantics, max_records=100_000)
    group: dict = {}
    Pipeline(config, source=MemorySource(topic(partitions=8), group), lake=lake, until_caught_up=True).run()
    assert lake.met and lake.most > 1, "no two partitions were ever written at the same time"
    assert lake.most <= config.lake.max_concurrency
    assert lake_offsets(Lake(url)) == {p: list(range(1000)) for p in range(8)}  # each offset once
    assert group == {("orders", p): 1000 for p in range(8)}
    if semantics == "exactly-once":
        store = ManifestStore(Lake(url), "orders")
        for p in range(8):
            # per partition: announce, write, commit, version after version
            steps = [("a" if "/pending" in rel else "c" if "_kingest" in rel else "w") for _, rel in lake.ops[p]]
            assert steps[0] == "c"  # the claim
            batches = "".join(steps[1:])
            assert re.fullmatch(r"(aw+c)+", batches), batches
            assert store.load("orders", p).next_offset == 1000


def test_max_concurrency_1_saves_one_partition_after_another():
    url = f"memory://lake-{uuid.uuid4().hex}"
    lake = WatchedLake(url, meet=False)
    config = make_config(url, "exactly-once", max_records=100_000)
    config = dataclasses.replace(config, lake=dataclasses.replace(config.lake, max_concurrency=1))
    Pipeline(config, source=MemorySource(topic(partitions=4), {}), lake=lake, until_caught_up=True).run()
    assert lake.most == 1
    assert lake_offsets(Lake(url)) == {p: list(range(1000)) for p in range(4)}


def test_the_s3_connection_pool_is_as_large_as_the_lanes_unless_the_user_set_it():
    options = {"endpoint_url": "http://127.0.0.1:1", "key": "k", "secret": "s"}
    assert Lake("s3://b/p", options, connections=32).fs.config_kwargs == {"max_pool_connections": 32}
    mine = options | {"config_kwargs": {"max_pool_connections": 5, "read_timeout": 9}}
    assert Lake("s3://b/p", mine, connections=32).fs.config_kwargs == {"max_pool_connections": 5, "read_timeout": 9}
    assert mine["config_kwargs"] == {"max_pool_connections": 5, "read_timeout": 9}  # the user's dict is untouched
