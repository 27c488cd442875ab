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


def test_a_partition_handed_back_with_nothing_committed_since_is_not_claimed_again():
    """kafka-python's first rebalance often revokes every partition and hands the same ones back: an owner whose
    last version is still the latest keeps the partition without a new claim (one listing instead of a load, a
    claim and a recovery: ~680 requests on a 32-partition topic on S3). Once another writer committed, it
    claims as usual, and the records are committed once either way."""
    url = f"memory://fencing-{uuid.uuid4().hex[:12]}"
    lake = Lake(url)
    store = ManifestStore(lake, "orders")
    log = [records(0, 30)]
    pipeline = Pipeline(make_config(url, max_records=10), source=MemorySource({TOPIC: log}, {}), lake=lake)
    source = pipeline.source
    source.open(pipeline._on_assigned, pipeline._on_revoked, pipeline._on_lost)
    tp = (TOPIC, 0)
    assert store.load(*tp).version == 1  # the claim at assignment

    pipeline._on_revoked([tp])
    pipeline._on_assigned([tp])
    assert store.load(*tp).version == 1  # handed straight back: no second claim
    assert pipeline.owned[tp].version == 1 and pipeline.loaded[tp].version == 1

    pipeline._flush([tp], wait=True)  # nothing buffered yet: a no-op
    pipeline._on_revoked([tp])
    other = store.claim(TOPIC, 0, "someone-else")  # meanwhile another writer took it
    store.commit(other, operation="write", owner="someone-else", next_offset=0)
    pipeline._on_assigned([tp])
    state = store.load(*tp)
    assert [state.version, state.owner] == [4, pipeline.writer]  # claimed on top of the other writer's versions
    pipeline.until_caught_up = True
    pipeline.run()
    assert committed_offsets(lake, store) == list(range(30))
