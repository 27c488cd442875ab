"""`kingest gc`: what no manifest version names and nothing can still commit goes; nothing else does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kingest.cli import app
from kingest.config import load
from kingest.errors import ManifestConflict
from kingest.gc import collect, plan
from kingest.lake import Lake
from kingest.manifest import ManifestStore, PartitionState
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource
from tests.unit.test_pipeline_memory import lake_offsets, make_config, topic

HOUR = 3600.0


def _age(lake: Lake, rel: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(lake.full(rel), (then, then))


def _lake_after_a_run(tmp_path: Path) -> tuple[Lake, ManifestStore, object]:
    url = str(tmp_path / "lake")
    config = make_config(url, "exactly-once", max_records=400)
    Pipeline(config, source=MemorySource(topic(partitions=2), {}), until_caught_up=True).run()
    lake = Lake(url)
    return lake, ManifestStore(lake, "orders"), config


def _as_pipeline(parquet: bytes, pipeline: str) -> bytes:
    table = pq.read_table(pa.BufferReader(parquet))
    meta = {**table.schema.metadata, b"kingest.pipeline": pipeline.encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    return sink.getvalue().to_pybytes()


def _named(store: ManifestStore) -> list[str]:
    return sorted(p for s in store.load_many([("orders", 0), ("orders", 1)]).values() for p in s.files)


def _plant(lake: Lake, store: ManifestStore, partition: int, version: int, owner: str, name: str) -> str:
    """A writer's attempt: its pending record for ``version``, then its file."""
    rel = f"topic=orders/partition={partition}/{name}"
    store.write_pending("orders", partition, owner, [rel], version=version)
    lake.put(rel, b"PAR1 not really")
    return rel


def test_gc_removes_what_nothing_names_or_can_commit_and_keeps_the_rest(tmp_path):
    lake, store, config = _lake_after_a_run(tmp_path)
    before = lake_offsets(lake, _named(store))
    v0, v1 = store.load("orders", 0).version, store.load("orders", 1).version
    # a crashed attempt whose version another commit took since: settled, never committable
    settled = _plant(lake, store, 0, v0, "w-dead", "orders-0-00000000000000000000-00000000000000000009-dead-1.parquet")
    # a writer saving right now (its version not taken yet): it may still commit its file
    running = _plant(
        lake, store, 0, v0 + 1, "w-run", "orders-0-00000000000000000010-00000000000000000019-run-1.parquet"
    )
    # the same, but two hours old: a crashed writer (or one frozen that long): gc settles it first
    stale = _plant(lake, store, 1, v1 + 1, "w-stale", "orders-1-00000000000000000010-00000000000000000019-st-1.parquet")
    # a file of this pipeline whose record is gone (written after it was settled, then a crash): its footer
    # says whose it is; a file of another pipeline sharing the topic folder is left alone
    committed = lake.read(sorted(store.load("orders", 1).files)[0])
    no_record = "topic=orders/partition=1/orders-1-00000000000000000000-00000000000000000005-gone-1.parquet"
    lake.put(no_record, committed)
    other = "topic=orders/partition=1/orders-1-00000000000000000000-00000000000000000099-audit-1.parquet"
    lake.put(other, _as_pipeline(committed, "audit"))
    tmp = "topic=orders/partition=1/.orders-1-x.parquet.0123456789ab.tmp"
    Path(lake.full(tmp)).write_bytes(b"half")
    foreign = "topic=orders/partition=1/notes.parquet"  # not a kingest name: never touched
    lake.put(foreign, b"x")
    # settled and never committed, but younger than the retention: kept for now (in a partition gc does not settle:
    # settling runs the pipeline's own recovery, which, like a run's claim, removes such files at once)
    young = _plant(lake, store, 0, 1, "w-young", "orders-0-00000000000000000000-00000000000000000001-young-1.parquet")
    for rel in lake.find():
        if "run" not in rel and "young" not in rel:
            _age(lake, rel, 2 * HOUR)

    found = plan(config, lake, retain=HOUR)
    kinds = {g.path: g.kind for g in found.collect}
    assert kinds.pop(settled) == "uncommitted" and kinds.pop(no_record) == "uncommitted"
    assert kinds.pop(stale) == "stale attempt"
    assert kinds.pop(tmp) == "interrupted write"
    # the attempts' records (their files go too), and the pipeline's own records of committed versions
    assert set(kinds.values()) == {"settled record"}
    assert any("w-dead" in rel for rel in kinds) and any("w-stale" in rel for rel in kinds)
    assert [g.path for g in found.young] == [young]
    assert found.protected == 1 and found.stale == [("orders", 1)]

    collect(config, lake, found)
    left = set(lake.find())
    assert running in left and foreign in left and young in left and other in left
    assert found.foreign == 1
    assert settled not in left and no_record not in left and tmp not in left and stale not in left
    for p in (0, 1):
        for rel in store.load("orders", p).files:
            assert rel in left
    assert lake_offsets(lake, _named(store)) == before
    # partition 1 got a version of gc's own (same offset), which fences the stale writer
    after = store.load("orders", 1)
    assert after.version == v1 + 1 and after.next_offset == 1000 and after.owner.startswith("gc-")
    with pytest.raises(ManifestConflict):
        stale_state = PartitionState("orders", 1, version=v1)
        store.commit(stale_state, operation="write", owner="w-stale", next_offset=1020)
    # the running writer commits its version after all: its file is there
    store.commit(store.load("orders", 0), operation="write", owner="w-run", next_offset=1020, add=[])
    assert running in set(lake.find())


def test_gc_command_dry_run_lists_and_removes_nothing_then_removes(tmp_path, monkeypatch):
    lake, store, config = _lake_after_a_run(tmp_path)
    orphan = _plant(lake, store, 0, 1, "w-dead", "orders-0-00000000000000000000-00000000000000000009-dead-1.parquet")
    path = tmp_path / "k.yaml"
    path.write_text(
        f"pipeline: orders\nkafka: {{bootstrap_servers: 'unused:9092', topics: [orders]}}\n"
        f"lake: {{path: '{lake.url}'}}\nsemantics: exactly-once\n"
    )
    load(path)  # a valid config
    runner = CliRunner()
    result = runner.invoke(app, ["gc", "-c", str(path), "--retain", "1h", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove 0 file(s)" in result.output and "younger than 1h kept" in result.output
    for rel in lake.find():
        _age(lake, rel, 2 * HOUR)
    result = runner.invoke(app, ["gc", "-c", str(path), "--retain", "1h", "--dry-run"])
    assert orphan.rsplit("/", 1)[-1] in result.output.replace("\n", "")
    assert orphan in set(lake.find())
    result = runner.invoke(app, ["gc", "-c", str(path), "--retain", "1h", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["removed"] == report["files"] > 1
    assert [g["path"] for g in report["collect"] if g["kind"] == "uncommitted"] == [orphan]
    assert orphan not in set(lake.find())
    for p in (0, 1):
        assert set(store.load("orders", p).files) <= set(lake.find())
    result = runner.invoke(app, ["gc", "-c", str(path), "--retain", "soon"])
    assert result.exit_code == 2 and "--retain 'soon' is not a duration" in result.output
    assert "Traceback" not in result.output
