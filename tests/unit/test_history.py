"""A pipeline's cost does not grow with its history: the lake requests of a run, a status-style load and a gc
plan are the same after 50 manifest versions as after 1,000 (checkpoints bound what is read). Counted, not
timed: the count is what makes the time flat on a store that answers each request in 20 ms."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from kingest.gc import plan
from kingest.lake import Lake
from kingest.manifest import CHECKPOINT_EVERY, ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource
from tests.unit.test_pipeline_memory import make_config, topic

# Counted per object: read_many and delete make one request an object on S3.
OPS = ("put", "create", "read", "read_many", "listdir", "find", "find_dated", "delete")


class CountingLake(Lake):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if name in OPS:
            calls = super().__getattribute__("calls")

            def counted(*args, **kwargs):
                if name in ("read_many", "delete"):  # one request an object on S3
                    args = (list(args[0]), *args[1:])
                    calls[name] += len(args[0])
                else:
                    calls[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def _lake_with_history(versions: int) -> tuple[str, object]:
    """A partition of 1,000 records whose manifest has ``versions`` versions (a long-running pipeline's)."""
    url = f"memory://history-{uuid.uuid4().hex}"
    config = make_config(url, "exactly-once", max_records=1000)
    data = topic(partitions=1, records=1000)
    Pipeline(config, source=MemorySource(data, {}), until_caught_up=True).run()
    store = ManifestStore(Lake(url), "orders")
    state = store.load("orders", 0)
    while state.version < versions:
        state = store.commit(state, operation="write", owner="history", next_offset=state.next_offset)
    return url, config


def _costs(versions: int) -> Counter[str]:
    url, config = _lake_with_history(versions)
    lake = CountingLake(url)
    store = ManifestStore(lake, "orders")
    store.load("orders", 0)
    plan(config, lake, retain=0.0)
    data = topic(partitions=1, records=1200)  # 200 new records, two batches
    Pipeline(
        make_config(url, "exactly-once", max_records=100),
        source=MemorySource(data, {}),
        lake=lake,
        until_caught_up=True,
    ).run()
    assert store.load("orders", 0).next_offset == 1200
    return lake.calls


@pytest.mark.parametrize("longer", [500, 1000])
def test_a_runs_lake_requests_do_not_grow_with_the_manifests_history(longer):
    assert longer % CHECKPOINT_EVERY == 50 % CHECKPOINT_EVERY  # the same place between two checkpoints
    short, long = _costs(50), _costs(longer)
    assert long == short, f"after {longer} versions: {dict(long)}; after 50: {dict(short)}"
