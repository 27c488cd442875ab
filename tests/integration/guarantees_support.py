"""Helpers for the guarantee tests (test_guarantees.py, test_verify.py): configs, real `kingest` processes,
and an independent read of the lake (DuckDB on local disk, pyarrow + s3fs on S3), sharing nothing with
kingest's own reader.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import yaml

from tests.conftest import kafka_client

PARTITIONS = 3


def write_config(
    path: Path,
    *,
    topic: str,
    lake: str,
    semantics: str,
    bootstrap: str,
    storage_options: dict[str, Any] | None = None,
    kafka: dict[str, Any] | None = None,
    **batch: Any,
) -> Path:
    """A pipeline config for crash tests: small batches and polls, so that a few thousand records pass each
    crash point several times; static group membership and a short session, so that a restarted process takes
    over its killed predecessor's partitions at once instead of waiting out the session timeout."""
    tag = uuid.uuid4().hex[:8]
    config = {
        "pipeline": f"g-{tag}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_instance_id": f"kingest-test-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": 150,
            "client": kafka_client(),
            **(kafka or {}),
        },
        "records": {"format": "json"},
        "lake": {"path": lake, "storage_options": storage_options or {}},
        "batch": {"max_records": 200, "max_bytes": "8MiB", "max_age": "30s", **batch},
        "semantics": semantics,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def kingest(*args: str, crash: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m kingest ARGS` in a real process (optionally armed with KINGEST_CRASH_AT)."""
    env = {k: v for k, v in os.environ.items() if k != "KINGEST_CRASH_AT"}
    if crash:
        env["KINGEST_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "kingest", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def run_until_caught_up(config: Path, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    return kingest("run", "-c", str(config), "--until-caught-up", crash=crash)


def audit(config: Path) -> dict[str, Any]:
    """The verify report, in-process (faster than a process when only the report matters)."""
    from kingest import config as config_module
    from kingest.verify import audit

    return audit(config_module.load(config)).to_dict()


def verify(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """`kingest verify --json`, through the command (Typer's CliRunner, in-process): (exit code, report)."""
    from typer.testing import CliRunner

    from kingest.cli import app

    handlers = logging.getLogger().handlers[:]
    try:
        done = CliRunner().invoke(app, ["verify", "-c", str(config), "--json", *extra])
    finally:
        logging.getLogger().handlers[:] = handlers  # verify pointed them at the runner's closed streams
    assert done.exit_code in (0, 1), f"verify failed (exit {done.exit_code}): {done.output}"
    return done.exit_code, json.loads(done.stdout)


def events(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"order_id": i, "amount": round(i * 1.25, 2)}).encode() for i in range(start, start + n)]


@contextmanager
def private_producer(bootstrap: str) -> Iterator[Any]:
    """A `produce(topic, values, partition=...)` with its own KafkaProducer, closed on exit: for a background
    thread, which then shares no client with the test's thread."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def produce(topic: str, values: list[bytes], partition: int | None = None) -> None:
        futures = [producer.send(topic, value=v, partition=partition) for v in values]
        producer.flush()
        for future in futures:
            future.get(timeout=30)

    try:
        yield produce
    finally:
        producer.close()


def produce_evenly(produce: Any, topic: str, per_partition: int, start: int = 0) -> None:
    for p in range(PARTITIONS):
        produce(topic, events(per_partition, start), partition=p)


def folder_offsets(lake: str, storage_options: dict[str, Any] | None = None) -> dict[int, Counter[int]]:
    """Every (partition, offset) a reader of the dataset folder sees, with its number of copies: DuckDB over
    the local folder, pyarrow.dataset over s3fs for S3 (hidden `_`/`.` paths skipped by both, as by Spark)."""
    if lake.startswith("s3://"):
        import s3fs

        # No listings cache: a reader polling a folder being written must not open a file it listed through a
        # fresh listing and then test it against a stale cached one (FileNotFoundError mid-run).
        fs = s3fs.S3FileSystem(**(storage_options or {}), skip_instance_cache=True, use_listings_cache=False)
        if not fs.exists(lake):
            return {}
        table = ds.dataset(lake.removeprefix("s3://"), filesystem=fs, format="parquet").to_table(
            columns=["kafka_partition", "kafka_offset"]
        )
        rows = zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)
    else:
        if not list(Path(lake).rglob("*.parquet")):
            return {}
        rows = duckdb.sql(
            f"select kafka_partition, kafka_offset from read_parquet('{lake}/**/*.parquet', hive_partitioning=true)"
        ).fetchall()
    out: dict[int, Counter[int]] = {}
    for partition, offset in rows:
        out.setdefault(partition, Counter())[offset] += 1
    return out


def duplicates(seen: dict[int, Counter[int]]) -> dict[int, list[int]]:
    return {p: sorted(o for o, n in c.items() if n > 1) for p, c in seen.items() if any(n > 1 for n in c.values())}


def missing(seen: dict[int, Counter[int]], expected: dict[int, list[int]]) -> dict[int, list[int]]:
    out = {p: [o for o in offsets if o not in seen.get(p, Counter())] for p, offsets in expected.items()}
    return {p: v for p, v in out.items() if v}
