"""Deterministic interleavings of the save path, each a bug found once (issue 12): a writer is held at an exact
line (kingest.crash.at) while another writer takes its turn, or the source answers a commit the way a slow or
rebalancing broker does. The pipeline, the manifest and the lake are the real code; the source is in memory.
Each test asserts the guarantee on an independent read of the lake, never a log line."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pyarrow.dataset as ds
import pytest

from kingest import config as config_module
from kingest import crash
from kingest.batcher import Record
from kingest.errors import CommitFailed
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource

TOPIC = "orders"


def make_config(url: str, semantics: str = "exactly-once", max_records: int = 100) -> config_module.Config:
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [{TOPIC}]}}
lake: {{path: "{url}"}}
batch: {{max_records: {max_records}}}
semantics: {semantics}
"""
    )


def topic(records: int, partitions: int = 1) -> dict[str, list[list[Record]]]:
    def record(p: int, o: int) -> Record:
        return Record(TOPIC, p, o, 1_700_000_000_000 + o, None, json.dumps({"id": o}).encode(), [])

    return {TOPIC: [[record(p, o) for o in range(records)] for p in range(partitions)]}


def offsets_in(lake: Lake, paths: list[str]) -> list[int]:
    if not paths:
        return []
    table = ds.dataset([lake.full(p) for p in paths], filesystem=lake.fs, format="parquet").to_table(
        columns=["kafka_offset"]
    )
    return sorted(table.column(0).to_pylist())


def manifest_offsets(lake: Lake, partition: int = 0) -> list[int]:
    """The offsets of the files the latest manifest state names; every one of those files must exist."""
    state = ManifestStore(lake, "orders").load(TOPIC, partition)
    present = set(lake.find(f"topic={TOPIC}/partition={partition}"))
    gone = sorted(set(state.files) - present)
    assert not gone, f"files named by the offsets manifest are gone from the lake: {gone}"
    return offsets_in(lake, list(state.files))


class StopWhenDone(MemorySource):
    """Stops the pipeline once a poll finds nothing and nothing is being encoded (also when every partition was
    fenced, where --until-caught-up would wait for a rebalance that never comes in memory)."""

    pipeline: Pipeline | None = None

    def poll(self, timeout: float) -> dict[Any, Any]:
        polled = super().poll(0)
        if not polled and self.pipeline is not None and self.pipeline._encoding is None:
            self.pipeline.request_stop()
        return polled


def run(url: str, source: StopWhenDone, semantics: str = "exactly-once", max_records: int = 100) -> Pipeline:
    pipeline = Pipeline(make_config(url, semantics, max_records), source=source, lake=Lake(url))
    source.pipeline = pipeline
    pipeline.run()
    return pipeline


def test_a_writer_paused_after_its_claim_never_deletes_a_file_committed_meanwhile():
    """b claims the partition and is paused before its recovery; c claims after it, writes and commits every
    record; b resumes. Before the fix b's recovery read c's pending record against b's own (stale) state and
    deleted a file that c had committed: records lost."""
    url = f"memory://lake-{uuid.uuid4().hex}"
    data = topic(500)
    turns: list[str] = []

    def c_takes_its_turn() -> None:
        if turns:
            return  # only b's first pass: c's own claim goes through this point too
        turns.append("c")
        run(url, StopWhenDone(data, {}))

    with crash.at("after-claim", c_takes_its_turn):
        b = run(url, StopWhenDone(data, {}))

    assert turns == ["c"]
    assert manifest_offsets(Lake(url)) == list(range(500))
    assert b.stats.fenced == 1  # b was the zombie: it committed nothing over c


class SlowBroker(StopWhenDone):
    """A broker that does not answer every other commit in time (frozen, overloaded): CommitFailed, as both
    sources raise it for a commit that does not wait (exactly-once's lag-only commit)."""

    def __init__(self, *args: Any, fail_every: int = 2, wait_too: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fail_every = fail_every
        self.wait_too = wait_too

    def commit(self, offsets: dict[Any, int], wait: bool = True) -> None:
        self.calls += 1
        if (not wait or self.wait_too) and self.calls % self.fail_every == 0:
            raise CommitFailed("could not commit the offsets to Kafka: KafkaTimeoutError (simulated)")
        super().commit(offsets, wait)


def test_exactly_once_loses_nothing_when_the_lag_only_kafka_commit_times_out():
    """Before the fix a CommitFailed of the lag-only commit dropped the records buffered for the partition
    without seeking back; the next batch started past them and the manifest committed over the gap."""
    url = f"memory://lake-{uuid.uuid4().hex}"
    data = topic(3000, partitions=2)
    source = SlowBroker(data, {}, max_poll_records=50)
    run(url, source, max_records=100)
    lake = Lake(url)
    assert source.calls > 2
    for p in range(2):
        assert manifest_offsets(lake, p) == list(range(3000))


@pytest.mark.parametrize("semantics", ["at-least-once", "at-most-once"])
def test_a_refused_group_commit_skips_nothing_when_the_partitions_stay(semantics):
    """A commit refused (a rebalance that handed the partitions straight back, a generation that moved) drops
    what is buffered: the consumer must go back to the first record not saved, or the next commit skips the
    dropped ones although nothing crashed."""
    url = f"memory://lake-{uuid.uuid4().hex}"
    data, group = topic(3000), {}
    source = SlowBroker(data, group, fail_every=3, wait_too=True, max_poll_records=50)
    run(url, source, semantics=semantics, max_records=100)
    lake = Lake(url)
    found = offsets_in(lake, [p for p in lake.find() if p.endswith(".parquet")])
    assert source.calls > 3
    if semantics == "at-least-once":
        assert set(found) == set(range(3000))  # nothing missing
    else:
        assert len(found) == len(set(found))  # nothing twice
        assert set(found) == set(range(3000))  # and, with no crash, nothing missing either


class HandedBack(StopWhenDone):
    """The group takes the partition away (lost: the session expired) and hands it straight back, keeping the
    consumer's position as kafka-python 3 does for a partition in both assignments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls = 0

    def poll(self, timeout: float) -> dict[Any, Any]:
        self.polls += 1
        if self.polls == 6 and self.pipeline is not None:
            tps = sorted(self.positions)
            self.pipeline._on_lost(tps)
            self.pipeline._on_assigned(tps)
        return super().poll(timeout)


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_a_partition_lost_and_handed_back_resumes_where_its_offsets_were_saved(semantics):
    url = f"memory://lake-{uuid.uuid4().hex}"
    data, group = topic(3000), {}
    source = HandedBack(data, group, max_poll_records=50)
    run(url, source, semantics=semantics, max_records=400)
    lake = Lake(url)
    if semantics == "exactly-once":
        assert manifest_offsets(lake) == list(range(3000))
    else:
        assert set(offsets_in(lake, [p for p in lake.find() if p.endswith(".parquet")])) == set(range(3000))


def test_a_partition_fenced_while_the_group_still_assigns_it_is_taken_back():
    """Another version lands between this owner's claim and its commit (here a rewind to the same offset; the
    same happens when a zombie claims and dies): the commit loses, the partition is fenced. No rebalance will
    ever come to hand it back, so the run takes it back itself a session timeout later, from the manifest."""
    url = f"memory://lake-{uuid.uuid4().hex}"
    config = make_config(url)
    config = replace(config, kafka=replace(config.kafka, session_timeout_ms=100))
    source = MemorySource(topic(500), {}, max_poll_records=50)
    pipeline = Pipeline(config, source=source, lake=Lake(url), until_caught_up=True)
    raced: list[int] = []

    def a_rewind_commits_meanwhile() -> None:
        if raced:
            return  # the rewind's own pass through this point
        store = ManifestStore(Lake(url), "orders")
        state = store.load(TOPIC, 0)
        raced.append(state.version + 1)
        store.rewind(state, owner="rewind-x", next_offset=state.next_offset or 0)

    with crash.at("after-write", a_rewind_commits_meanwhile):
        pipeline.run()

    assert raced and pipeline.stats.fenced == 1
    assert manifest_offsets(Lake(url)) == list(range(500))
