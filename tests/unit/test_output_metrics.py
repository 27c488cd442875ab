"""The metrics endpoint over the in-memory source (fast, no services): exact values, a partition held back so
that the lag is known, the flush histogram, errors and rebalances. The same endpoint is scraped during real
runs in tests/integration/test_metrics.py."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kingest import config as config_module
from kingest.batcher import Record
from kingest.metrics import Metrics
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource


def make_config(lake: str) -> config_module.Config:
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
lake: {{path: "{lake}"}}
batch: {{max_records: 40, max_age: 0.2s}}
semantics: exactly-once
"""
    )


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class HeldBack(MemorySource):
    """Partition 1 is never polled (as if its leader were slow): its lag stays at its 100 records."""

    def poll(self, timeout: float) -> Any:
        self.paused.add(("orders", 1))
        return super().poll(timeout)


def test_endpoint_reports_the_pipeline_exactly(tmp_path: Any) -> None:
    records = {
        "orders": [
            [Record("orders", p, o, 1_700_000_000_000, None, json.dumps({"o": o}).encode(), []) for o in range(100)]
            for p in range(2)
        ]
    }
    source = HeldBack(records)
    pipeline = Pipeline(make_config(str(tmp_path / "lake")), source=source)
    metrics = Metrics(pipeline)
    url = metrics.serve("127.0.0.1", 0)
    pipeline.on_progress = metrics.chained(lambda stats: None)
    worker = threading.Thread(target=pipeline.run)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            got = scrape(url)
            lag = got.get('kingest_consumer_lag_records{partition="0",topic="orders"}')
            # Scrapes run beside the pipeline: wait until the flush is saved whole (written, then committed).
            saved = got["kingest_commits_total"] == 3 and got["kingest_flush_duration_seconds_count"] >= 1
            if lag == 0 and got["kingest_records_written_total"] == 100 and saved:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
    finally:
        pipeline.request_stop()
        worker.join(30)
        metrics.close()
    assert got['kingest_consumer_lag_records{partition="1",topic="orders"}'] == 100
    assert got["kingest_records_consumed_total"] == 100
    assert got["kingest_records_written_total"] == 100
    assert got["kingest_files_written_total"] == 3  # 40 + 40 + 20
    assert got["kingest_bytes_written_total"] == pipeline.stats.bytes > 0
    assert got["kingest_commits_total"] == 3  # one manifest version per file here
    assert got["kingest_flush_duration_seconds_count"] == pipeline.stats.flushes >= 1
    assert got['kingest_flush_duration_seconds_bucket{le="+Inf"}'] == pipeline.stats.flushes
    assert got['kingest_rebalances_total{event="assigned"}'] == 1
    assert got['kingest_rebalances_total{event="lost"}'] == 0
    assert got['kingest_errors_total{error="LakeRetry"}'] == 0
    assert got['kingest_info{pipeline="orders",semantics="exactly-once",version="0.1.0"}'] == 1
    assert "kingest_kafka_connected" not in got  # the in-memory source has no connection to watch
