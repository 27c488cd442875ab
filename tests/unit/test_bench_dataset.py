"""The benchmark's dataset (benchmarks/dataset.py): valid, realistic JSON objects of about the size asked for,
the same for a seed, that kingest decodes into nested columns without a bad record."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from kingest.batcher import Batch
from kingest.encoder import Encoder

# benchmarks/ is a folder of scripts, not a package: load the module by path (and leave sys.path alone).
_spec = importlib.util.spec_from_file_location(
    "kingest_bench_dataset", Path(__file__).resolve().parents[2] / "benchmarks" / "dataset.py"
)
assert _spec is not None and _spec.loader is not None
dataset = sys.modules["kingest_bench_dataset"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dataset)


@pytest.mark.parametrize("size", [500, 1000, 4000])
def test_values_are_json_objects_of_about_the_size_asked(size: int):
    events = list(dataset.events(2000, size, seed=1))
    values = [json.loads(value) for _, value in events]
    assert all(isinstance(v, dict) for v in values)
    sizes = [len(value) for _, value in events]
    assert size * 0.95 <= statistics.mean(sizes) <= size
    assert max(sizes) <= size
    assert len({v["event_id"] for v in values}) == len(values)
    first = values[0]
    assert isinstance(first["customer"]["address"]["city"], str)
    assert isinstance(first["order"]["items"], list) and isinstance(first["order"]["items"][0]["qty"], int)
    assert isinstance(first["order"]["total"], float) and isinstance(first["order"]["paid"], bool)
    assert any(not v.isascii() for v in (json.dumps(x, ensure_ascii=False) for x in values))


def test_small_values_keep_the_events_core_at_about_200_bytes():
    """The wide topics' values: past the fields that larger values drop, the address, session, items, coupon
    and the customer's name, tier and order count go too."""
    events = list(dataset.events(2000, 200, seed=1))
    values = [json.loads(value) for _, value in events]
    sizes = [len(value) for _, value in events]
    assert 190 <= statistics.mean(sizes) <= 215
    assert max(sizes) <= 240
    assert all(set(v) == {"event_id", "type", "occurred_at", "customer", "order"} for v in values)
    assert all(set(v["order"]) == {"id", "currency", "total", "paid"} for v in values)


def test_the_same_seed_gives_the_same_records():
    assert list(dataset.events(300, 500, seed=7)) == list(dataset.events(300, 500, seed=7))
    assert list(dataset.events(300, 500, seed=7)) != list(dataset.events(300, 500, seed=8))


def test_kingest_decodes_the_dataset_into_nested_columns():
    events = list(dataset.events(1000, 500, seed=3))
    batch = Batch("t", 0, list(range(1000)), [1_700_000_000_000] * 1000, [k for k, _ in events], [v for _, v in events])
    batch.headers = [None] * 1000
    decoded = Encoder("json").decode(batch)
    assert decoded.rejected == []
    assert decoded.table.num_rows == 1000
    assert {"event_id", "customer", "order", "session"} <= set(decoded.table.column_names)
