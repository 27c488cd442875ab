"""`kingest compact`: small files merged in one manifest version; every offset stays in the lake once."""

from __future__ import annotations

import json
import os
import threading
import time

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kingest import crash
from kingest.cli import app
from kingest.compact import compact
from kingest.gc import collect, plan
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource
from tests.unit.test_pipeline_memory import lake_offsets, make_config, topic

EVERY = {p: list(range(1000)) for p in range(2)}


def _run(url: str, records: int = 1000, source: MemorySource | None = None, **batch: object) -> Pipeline:
    config = make_config(url, "exactly-once", **({"max_records": 100} | batch))
    pipeline = Pipeline(
        config, source=source or MemorySource(topic(partitions=2, records=records), {}), until_caught_up=True
    )
    pipeline.run()
    return pipeline


def _named(store: ManifestStore) -> list[str]:
    return sorted(p for tp in store.partitions() for p in store.load(*tp).files)


def _folder(lake: Lake) -> list[str]:
    return sorted(p for p in lake.find() if p.endswith(".parquet") and not p.startswith("_"))


def test_compact_merges_a_partitions_files_in_one_version_and_the_folder_keeps_each_offset_once(tmp_path):
    url = str(tmp_path / "lake")
    pipeline = _run(url)
    lake, store = Lake(url), ManifestStore(Lake(url), "orders")
    before = {tp: store.load(*tp) for tp in store.partitions()}
    assert all(len(s.files) == 10 for s in before.values())

    results = compact(pipeline.config, lake, 1 << 20)
    assert sorted(r.tp for r in results) == [("orders", 0), ("orders", 1)]
    for r in results:
        state = store.load(*r.tp)
        assert state.version == before[r.tp].version + 1 and r.version == state.version
        assert state.next_offset == 1000 and len(state.files) == 1 and len(r.inputs) == 10
        [(path, entry)] = state.files.items()
        assert (entry["first_offset"], entry["last_offset"], entry["rows"]) == (0, 999, 1000)
        meta = pq.read_schema(lake.full(path)).metadata
        assert meta[b"kingest.first_offset"] == b"0" and meta[b"kingest.last_offset"] == b"999"
        assert sorted(r.deleted) == sorted(r.inputs)
    assert lake_offsets(lake, _named(store)) == EVERY
    assert lake_offsets(lake, _folder(lake)) == EVERY  # a reader of the folder: each offset once
    assert len(_folder(lake)) == 2
    assert compact(pipeline.config, lake, 1 << 20) == []  # nothing left to merge


def test_a_run_after_compaction_goes_on_and_a_small_target_makes_several_files(tmp_path):
    url = str(tmp_path / "lake")
    pipeline = _run(url)
    lake, store = Lake(url), ManifestStore(Lake(url), "orders")
    size = max(int(e["bytes"]) for tp in store.partitions() for e in store.load(*tp).files.values())
    compact(pipeline.config, lake, 4 * size)  # runs of at most 4 files, none of a file over half the target
    assert all(2 <= len(store.load(*tp).files) <= 5 for tp in store.partitions())
    _run(url, records=1500)  # the same topic, 500 more records a partition
    assert lake_offsets(lake, _folder(lake)) == {p: list(range(1500)) for p in range(2)}


def test_a_writer_that_loses_its_commit_to_a_compaction_resumes_on_top_of_it(tmp_path):
    """The compaction takes the version the writer was about to commit: the writer is not fenced (a compaction
    claims nothing), it consumes the batch again and commits after it; every offset lands once."""
    url = str(tmp_path / "lake")
    first = _run(url, records=500)
    lake, store = Lake(url), ManifestStore(Lake(url), "orders")
    done: list[object] = []
    once = threading.Lock()

    def compact_once() -> None:
        # once (the compaction passes the same point itself, and the run's lanes pass it side by side)
        if once.acquire(blocking=False):
            done.append(compact(first.config, Lake(url), 1 << 20))

    with crash.at("after-write", compact_once):  # between the writer's write and its manifest commit
        second = _run(url, records=1000)
    assert done and done[0]
    assert second.fenced == {} and second.stats.fenced == 0
    assert lake_offsets(lake, _named(store)) == EVERY
    assert lake_offsets(lake, _folder(lake)) == EVERY
    ops = [
        json.loads(lake.read(store.version_path("orders", 0, v)))["operation"]
        for v in range(1, store.load("orders", 0).version + 1)
    ]
    assert "compact" in ops and ops[-1] == "write"


def test_keep_inputs_leaves_them_to_gc_after_its_retention(tmp_path):
    url = str(tmp_path / "lake")
    pipeline = _run(url)
    lake, store = Lake(url), ManifestStore(Lake(url), "orders")
    [r0, r1] = compact(pipeline.config, lake, 1 << 20, keep_inputs=True)
    assert r0.deleted == [] and len(_folder(lake)) == 22  # both the inputs and the merged files
    assert lake_offsets(lake, _named(store)) == EVERY
    found = plan(pipeline.config, lake, retain=3600.0)
    assert found.collect == [] and {g.kind for g in found.young} >= {"retired"}
    old = time.time() - 7200  # the notes are two hours old now (the files' own age does not count)
    for rel in lake.find("_kingest/orders/retired"):
        os.utime(lake.full(f"_kingest/orders/retired/{rel}" if not rel.startswith("_") else rel), (old, old))
    found = plan(pipeline.config, lake, retain=3600.0)
    kinds = sorted({g.kind for g in found.collect})
    assert kinds == ["retire note", "retired"] or kinds == ["retire note", "retired", "settled record"]
    collect(pipeline.config, lake, found)
    assert lake_offsets(lake, _folder(lake)) == EVERY and len(_folder(lake)) == 2
    assert lake.find("_kingest/orders/retired") == {}


def test_compact_command_refuses_a_lake_without_manifest_and_dry_run_changes_nothing(tmp_path):
    url = str(tmp_path / "lake")
    _run(url)
    lake = Lake(url)
    files = _folder(lake)
    path = tmp_path / "k.yaml"
    body = f"pipeline: orders\nkafka: {{bootstrap_servers: 'unused:9092', topics: [orders]}}\nlake: {{path: '{url}'}}\n"
    path.write_text(body + "semantics: exactly-once\n")
    runner = CliRunner()
    result = runner.invoke(app, ["compact", "-c", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "orders[0]: would merge 10 files" in result.output and _folder(lake) == files
    result = runner.invoke(app, ["compact", "-c", str(path), "--target-size", "lots"])
    assert result.exit_code == 2 and "--target-size 'lots' is not a size" in result.output
    path.write_text(body + "semantics: at-least-once\n")
    result = runner.invoke(app, ["compact", "-c", str(path)])
    assert result.exit_code == 2 and "needs the offsets manifest" in result.output
    assert "Traceback" not in result.output and _folder(lake) == files


class _Killed(BaseException):
    """A crash of the compaction, in-process."""


def _kill() -> None:
    raise _Killed


def test_a_compaction_killed_before_its_commit_is_cleaned_up_by_the_next_one(tmp_path):
    """Killed after writing its merged file: a reader of the folder sees that partition twice. The next compact
    settles the crashed attempt (a gc version) and removes its file before merging again."""
    url = str(tmp_path / "lake")
    pipeline = _run(url)
    lake = Lake(url)
    with pytest.raises(_Killed), crash.at("after-write", _kill):
        compact(pipeline.config, lake, 1 << 20)
    seen = lake_offsets(lake, _folder(lake))
    assert any(len(v) > len(set(v)) for v in seen.values())  # the merged file and its inputs, side by side
    compact(pipeline.config, lake, 1 << 20)
    assert lake_offsets(lake, _folder(lake)) == EVERY and len(_folder(lake)) == 2


def test_keep_inputs_are_not_deleted_by_a_runs_recovery(tmp_path):
    url = str(tmp_path / "lake")
    pipeline = _run(url)
    lake = Lake(url)
    [r0, _] = compact(pipeline.config, lake, 1 << 20, keep_inputs=True)
    _run(url, records=1100)  # its claim recovers: the writers' settled records name the inputs too
    assert set(r0.inputs) <= set(lake.find())
