"""Observability of a real run: the Prometheus endpoint (`--metrics-port`), scraped while `kingest run` works
against the real broker, and `--log-format json`, where every line on stderr is a JSON object and the summary
is one JSON object on stdout."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import Instance, kingest, wait_for, write_config

pytestmark = pytest.mark.integration


def metrics_config(path: Path, bootstrap: str, topic: str, lake: Path) -> Path:
    return write_config(
        path,
        pipeline=f"metrics-{uuid.uuid4().hex[:8]}",
        bootstrap=bootstrap,
        topic=topic,
        lake=str(lake),
        batch={"max_records": 100, "max_age": "1s"},
        semantics="at-least-once",
    )


def scrape(url: str) -> dict[str, float]:
    """Every sample of the endpoint, keyed `name` or `name{label="value",...}` (labels sorted), parsed with
    prometheus_client's own parser, so the exposition format is checked too."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def visible_parquet(lake: Path) -> list[Path]:
    return [p for p in lake.rglob("*.parquet") if not any(q.startswith((".", "_")) for q in p.relative_to(lake).parts)]


def test_metrics_endpoint_during_a_run(kafka_bootstrap: str, topic_factory: Any, produce: Any, tmp_path: Path) -> None:
    topic = topic_factory(partitions=3, name="metrics")
    for partition in range(3):
        produce(topic, [json.dumps({"n": i}) for i in range(200)], partition=partition)
    lake = tmp_path / "lake"
    config = metrics_config(tmp_path / "k.yaml", kafka_bootstrap, topic, lake)
    run = Instance("run", config, tmp_path, args=("--metrics-port", "0")).start()
    try:
        url = wait_for(
            lambda: (m := re.search(r"metrics: (http://\S+/metrics)", run.log())) and m.group(1),
            "the endpoint is announced",
            60,
            watch=[run],
        )
        assert url.startswith("http://127.0.0.1:")  # loopback unless --metrics-host says otherwise

        def caught_up() -> dict[str, float] | None:
            got = scrape(url)
            lags = [got.get(f'kingest_consumer_lag_records{{partition="{p}",topic="{topic}"}}') for p in range(3)]
            written = got.get("kingest_records_written_total") == 600 and got.get("kingest_commits_total", 0) >= 1
            return got if written and lags == [0, 0, 0] else None

        metrics = wait_for(caught_up, "600 records are written and committed, and the lag is 0", 60, watch=[run])
        files = visible_parquet(lake)
        assert metrics["kingest_records_consumed_total"] == 600
        assert metrics["kingest_files_written_total"] == len(files) >= 6
        assert metrics["kingest_bytes_written_total"] == sum(f.stat().st_size for f in files)
        assert metrics["kingest_flush_duration_seconds_count"] >= 1
        assert metrics["kingest_flush_duration_seconds_sum"] > 0
        assert metrics['kingest_rebalances_total{event="assigned"}'] >= 1
        assert metrics['kingest_errors_total{error="LakeRetry"}'] == 0
        assert metrics['kingest_errors_total{error="SourceRetry"}'] == 0
        assert metrics["kingest_kafka_connected"] == 1
        info = [k for k in metrics if k.startswith("kingest_info{")]
        assert len(info) == 1 and 'semantics="at-least-once"' in info[0] and 'pipeline="metrics-' in info[0]
        assert metrics["process_resident_memory_bytes"] > 0

        for partition in range(3):
            produce(topic, [json.dumps({"n": i}) for i in range(200, 250)], partition=partition)
        metrics = wait_for(
            lambda: (got := scrape(url)).get("kingest_records_written_total") == 750 and got,
            "the next 150 records are counted",
            60,
            watch=[run],
        )
        assert metrics["kingest_records_consumed_total"] == 750
        code = run.stop(timeout=60)
    finally:
        run.kill()
    assert code == 0, run.log()
    assert "done: 750 records" in run.out()
    with pytest.raises(OSError):  # the endpoint goes away with the run
        scrape(url)


def test_metrics_port_taken_is_a_clear_error_before_consuming(
    kafka_bootstrap: str, topic_factory: Any, produce: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1, name="metrics-port")
    produce(topic, [json.dumps({"n": i}) for i in range(10)], partition=0)
    lake = tmp_path / "lake"
    config = metrics_config(tmp_path / "k.yaml", kafka_bootstrap, topic, lake)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = kingest("run", "-c", str(config), "--until-caught-up", "--metrics-port", str(port), timeout=120)
    assert done.returncode == 2
    assert f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "--metrics-port" in done.stderr and "Traceback" not in done.stderr
    assert visible_parquet(lake) == []


# --------------------------------------------------------------------------------------------- JSON logs


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_json_logs_of_a_run(
    kafka_bootstrap: str, topic_factory: Any, produce: Any, tmp_path: Path, verbose: bool
) -> None:
    topic = topic_factory(partitions=2, name="json-logs")
    for partition in range(2):
        produce(topic, [json.dumps({"n": i}) for i in range(25)], partition=partition)
    config = metrics_config(tmp_path / "k.yaml", kafka_bootstrap, topic, tmp_path / "lake")
    args = ["run", "-c", str(config), "--until-caught-up", "--log-format", "json", "--metrics-port", "0"]
    done = kingest(*args, *(["--verbose"] if verbose else []), timeout=120)
    assert done.returncode == 0, done.stderr
    logs = json_lines(done.stderr)  # every line on stderr is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in logs)
    assert any(line["message"].startswith("kingest at-least-once: ") for line in logs)
    assert any(line["message"].startswith("metrics: http://127.0.0.1:") for line in logs)
    progress = [line for line in logs if line.get("event") == "progress"]
    assert progress and 0 < progress[-1]["written"] <= 50  # logged at the first flush, then every 10 s
    if verbose:  # kafka-python's own lines are JSON too
        assert any(line["logger"].startswith("kafka.") for line in logs)
    summary = json_lines(done.stdout)
    assert len(summary) == 1 and summary[0]["event"] == "summary"
    assert summary[0]["records"] == 50 and summary[0]["consumed"] == 50 and summary[0]["files"] >= 2
    summary_logs = [line for line in logs if line.get("event") == "summary"]  # and as a log line on stderr
    assert len(summary_logs) == 1 and summary_logs[0].items() >= summary[0].items()


def test_json_logs_of_an_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = metrics_config(tmp_path / "k.yaml", kafka_bootstrap, f"missing-{uuid.uuid4().hex[:8]}", tmp_path / "l")
    done = kingest("run", "-c", str(config), "--log-format", "json", timeout=120)
    assert done.returncode == 2
    logs = json_lines(done.stderr)
    error = logs[-1]
    assert error["level"] == "error" and error["exit_code"] == 2
    assert "not found" in error["message"] and "kafka.topics" in error["hint"]
    assert done.stdout == ""
