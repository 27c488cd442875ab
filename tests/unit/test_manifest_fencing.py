"""Exactly-once fencing in the pipeline, on the in-memory source and a memory:// lake: what the manifest does
when another writer commits for a partition this instance was assigned. Fast; the same situations with real
processes, a real broker and SIGSTOP are in tests/integration/test_scale.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.dataset as ds

from kingest import config as config_module
from kingest.batcher import Record
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource

TOPIC = "orders"


def make_config(url: str, **batch: object) -> config_module.Config:
    batch_yaml = ", ".join(f"{k}: {v}" for k, v in ({"max_records": 100} | batch).items())
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [{TOPIC}]}}
lake: {{path: "{url}"}}
batch: {{{batch_yaml}}}
semantics: exactly-once
"""
    )


def records(first: int, count: int, partition: int = 0) -> list[Record]:
    return [
        Record(TOPIC, partition, o, 1_700_000_000_000 + o, None, json.dumps({"id": o}).encode(), [])
        for o in range(first, first + count)
    ]


class ScriptedSource(MemorySource):
    """A MemorySource that runs ``before_poll`` before its first poll (records arriving, another writer
    committing), and asks the pipeline to stop once a poll finds nothing left."""

    def __init__(self, topics: dict[str, list[list[Record]]], before_poll: Callable[[], None]) -> None:
        super().__init__(topics, {}, max_poll_records=100_000)
        self.before_poll: Callable[[], None] | None = before_poll
        self.pipeline: Pipeline | None = None

    def poll(self, timeout: float) -> dict[Any, Any]:
        if self.before_poll is not None:
            self.before_poll()
            self.before_poll = None
        polled = super().poll(0)
        # Nothing left to poll and nothing being encoded (saving it can move the position back): stop.
        if not polled and self.pipeline is not None and self.pipeline._encoding is None:
            self.pipeline.request_stop()
        return polled


def committed_offsets(lake: Lake, store: ManifestStore, partition: int = 0) -> list[int]:
    state = store.load(TOPIC, partition)
    if not state.files:
        return []
    table = ds.dataset([lake.full(p) for p in state.files], filesystem=lake.fs, format="parquet").to_table(
        columns=["kafka_offset"]
    )
    return sorted(table.column(0).to_pylist())


def run(url: str, source: ScriptedSource, **batch: object) -> Pipeline:
    pipeline = Pipeline(make_config(url, **batch), source=source, lake=Lake(url))
    source.pipeline = pipeline
    pipeline.run()
    return pipeline


def test_a_previous_owners_late_commit_moves_the_new_owner_on_without_a_gap():
    """Assigned while the partition was idle (no claim yet), the new owner polls 1000 records at once (ten
    batches of 100 in one flush). Meanwhile the previous owner, frozen and now resumed, commits 0..149. The
    new owner's claim sees the manifest moved on: it must drop *every* batch of that flush, resume at 150,
    and commit each offset once. (Committing a later batch of the same flush lost 150..199.)"""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    lake = Lake(url)
    store = ManifestStore(lake, "orders")
    log = [[]]  # the partition's log, empty at assignment
    previous_owner = store.claim(TOPIC, 0, "previous")

    def meanwhile() -> None:
        log[0].extend(records(0, 1000))
        store.commit(previous_owner, operation="write", owner="previous", next_offset=150)

    pipeline = run(url, ScriptedSource({TOPIC: log}, meanwhile))
    assert store.load(TOPIC, 0).next_offset == 1000
    assert committed_offsets(lake, store) == list(range(150, 1000))
    assert pipeline.stats.fenced == 0


def test_an_instance_assigned_before_another_claims_is_a_zombie_and_commits_nothing():
    """This instance was assigned the partition (idle: no claim), buffered records, and was frozen; the group
    gave the partition to another instance, which claimed it. Resumed, this instance must not claim on top of
    the rightful owner (that would fence it): it drops its buffer and commits no version."""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    lake = Lake(url)
    store = ManifestStore(lake, "orders")
    log = [[]]

    def meanwhile() -> None:
        log[0].extend(records(0, 300))
        store.claim(TOPIC, 0, "rightful-owner")

    pipeline = run(url, ScriptedSource({TOPIC: log}, meanwhile))
    versions = [json.loads(lake.read(store.version_path(TOPIC, 0, v)) or b"") for v in (1,)]
    assert store.load(TOPIC, 0).version == 1
    assert [v["owner"] for v in versions] == ["rightful-owner"]
    assert pipeline.stats.fenced == 1 and pipeline.stats.written == 0
    assert [p for p in lake.find() if p.endswith(".parquet")] == []


def test_a_writer_fenced_by_a_claim_deletes_its_files_and_pauses_the_partition():
    """The usual zombie: it holds a claim, another writer claims on top; its next commit conflicts. Its data
    file must not stay in the dataset folder, and it must stop fetching the partition."""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    lake = Lake(url)
    store = ManifestStore(lake, "orders")
    log = [records(0, 50)]  # something to consume at assignment: the instance claims at once
    source = ScriptedSource({TOPIC: log}, lambda: store.claim(TOPIC, 0, "rightful-owner"))

    pipeline = run(url, source, max_records=10_000, max_age="1h")
    assert pipeline.stats.fenced == 1
    assert [p for p in lake.find() if p.endswith(".parquet")] == []
    assert (TOPIC, 0) in source.paused
    history = [json.loads(lake.read(store.version_path(TOPIC, 0, v)) or b"") for v in (1, 2)]
    assert [(d["operation"], d["owner"]) for d in history] == [("claim", pipeline.writer), ("claim", "rightful-owner")]
    assert store.load(TOPIC, 0).version == 2


def test_a_fenced_partition_fetches_again_when_the_group_hands_it_back():
    """kafka-python keeps a partition's paused flag when a rebalance gives it back to the same member."""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    source = MemorySource({TOPIC: [records(0, 10)]}, {})
    pipeline = Pipeline(make_config(url), source=source, lake=Lake(url))
    source.open(pipeline._on_assigned, pipeline._on_revoked, pipeline._on_lost)
    source.pause([(TOPIC, 0)])
    pipeline.fenced[(TOPIC, 0)] = 0.0
    pipeline._on_assigned([(TOPIC, 0)])
    assert source.paused == set() and pipeline.fenced == {}


def test_claims_at_assignment_only_when_there_is_something_to_consume():
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    lake = Lake(url)
    store = ManifestStore(lake, "orders")
    topics = {TOPIC: [records(0, 10, partition=0), []]}
    pipeline = Pipeline(make_config(url), source=MemorySource(topics, {}), lake=lake)
    pipeline.source.open(pipeline._on_assigned, pipeline._on_revoked, pipeline._on_lost)
    assert store.load(TOPIC, 0).owner == pipeline.writer  # claimed: a zombie of a previous owner is fenced
    assert store.load(TOPIC, 1).version == 0  # idle: nothing written


def test_an_owner_handed_its_partition_back_claims_again_and_a_zombie_assigned_in_between_is_fenced():
    """Writer A owns the partition; the group revokes it and gives it to Z, which (the partition idle) does not
    claim, then pauses; records arrive and the group hands the partition back to A. A must claim again: had it
    written on without a claim (to spare requests), Z, resuming, would take A's write for a previous owner's last
    commit, claim on top and fence A, the rightful owner, for a session timeout (an independent review's case)."""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    log = records(0, 10)
    topics = {TOPIC: [log]}
    tp = (TOPIC, 0)
    a = Pipeline(make_config(url, max_records=10), source=MemorySource(topics, {}), lake=Lake(url))
    z = Pipeline(make_config(url, max_records=10), source=MemorySource(topics, {}), lake=Lake(url))
    store = ManifestStore(Lake(url), "orders")

    def step(p: Pipeline) -> None:  # one poll, and a flush of what is due, saved before returning
        for t, polled in p.source.poll(0).items():
            if polled and t not in p.fenced:
                p.batcher.add(t, polled)
        p._flush(p.batcher.due(everything=True), wait=True)

    a.source.open(a._on_assigned, a._on_revoked, a._on_lost)
    step(a)  # A claims (v1) and writes 0..9 (v2)
    a._on_revoked([tp])
    z.source.open(z._on_assigned, z._on_revoked, z._on_lost)  # idle for Z: no claim
    log.extend(records(10, 10))
    a._on_assigned([tp])  # handed back to A
    step(a)
    step(z)  # Z, a zombie now, resumes with what it polled
    log.extend(records(20, 10))
    step(a)
    assert tp not in a.fenced and tp in z.fenced
    assert store.load(*tp).next_offset == 30 and committed_offsets(Lake(url), store) == list(range(30))
