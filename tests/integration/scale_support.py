"""Helpers for the scale-out tests: `kingest run` instances as real processes, and audits of the lake that
do not go through kingest's own reading code (the manifest is replayed from its JSON files here)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from tests.conftest import kafka_client

SESSION_TIMEOUT_MS = 6000  # the dev broker's group.min.session.timeout.ms
HEARTBEAT_INTERVAL_MS = 1000


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
) -> dict[str, Any]:
    """A pipeline config for several instances: short session timeout, so that a frozen instance is noticed
    within seconds; client_id (and optionally group_instance_id) from the instance's environment."""
    config = {
        "pipeline": f"scale-{uuid.uuid4().hex[:8]}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "client_id": "${KINGEST_TEST_INSTANCE:-kingest}",
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            "client": kafka_client(),
            **(kafka or {}),
        },
        "records": {"format": "json"},
        "lake": {"path": lake, "storage_options": storage_options or {}},
        "batch": {"max_records": 2000, "max_bytes": "16MiB", "max_age": "2s", **batch},
        "semantics": semantics,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def events(start: int, count: int) -> list[bytes]:
    return [
        json.dumps({"n": i, "customer": f"c{i % 97}", "amount": i * 0.25}).encode() for i in range(start, start + count)
    ]


def produce_spread(produce: Callable[..., Any], topic: str, start: int, count: int, partitions: int) -> None:
    """``count`` records numbered from ``start``, spread evenly over the partitions."""
    values = events(start, count)
    for p in range(partitions):
        produce(topic, values[p::partitions], partition=p)


@dataclass
class Instance:
    """One `python -m kingest run` process; its output goes to a log file (a pipe could fill and block it)."""

    name: str
    config: Path
    workdir: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> Instance:
        self.starts += 1
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kingest", "run", "-c", str(self.config), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KINGEST_TEST_INSTANCE": self.name, **self.env},
            cwd=self.workdir,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a clean stop: flush and commit), then the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process would not see the SIGTERM
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)

    def metric(self, name: str) -> float:
        """One series (`name` or `name{label="value"}`) from the Prometheus endpoint of the instance's latest
        start (started with --metrics-port 0); 0 while it is not up yet."""
        import urllib.request

        url = re.search(r"metrics: (http://\S+/metrics)", self.log_path.read_text(errors="replace"))
        if url is None:
            return 0.0
        try:
            with urllib.request.urlopen(url.group(1), timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.workdir.glob(f"{self.name}-*.log"))
        )


def kingest(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A one-off command (verify, a final run) as an instance of its own."""
    return subprocess.run(
        [sys.executable, "-m", "kingest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "KINGEST_TEST_INSTANCE": "one-off"},
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90.0, every: float = 0.25) -> Any:
    """Poll until ``condition()`` is truthy and return it. A deadline, not a speed assertion: it only keeps a
    broken run from hanging the suite."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout:.0f}s for: {what}")
        time.sleep(every)


# ---------------------------------------------------------------------------------------------- Kafka side


def end_offsets(kafka_bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        got = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return {tp.partition: int(o) for tp, o in got.items()}


def group_offsets(kafka_admin: Any, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets, read by Kafka's admin API (not through kingest)."""
    got = kafka_admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: int(meta.offset) for tp, meta in got.items() if tp.topic == topic and meta.offset >= 0}


def group_members(kafka_admin: Any, group: str) -> tuple[str, dict[str, set[int]]]:
    """The group's state and, per member client_id, its assigned partitions."""
    got = kafka_admin.describe_groups([group]).get(group) or {}
    members: dict[str, set[int]] = {}
    for member in got.get("members") or []:
        assignment = member.get("member_assignment")
        assigned = assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
        members[str(member.get("client_id"))] = {int(p) for a in assigned for p in a.get("partitions", [])}
    return str(got.get("group_state") or "Dead"), members


# ---------------------------------------------------------------------------------------------- lake side


class LakeView:
    """The lake read with plain fsspec, JSON and pyarrow: the manifest replayed from its version files."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def history(self, pipeline: str, topic: str, partition: int) -> list[dict[str, Any]]:
        """Every committed manifest version of a partition, in order."""
        folder = f"{self.root}/_kingest/{pipeline}/manifest/topic={topic}/partition={partition}"
        try:
            names = sorted(p for p in self.fs.ls(folder, detail=False, refresh=True) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        docs = [json.loads(self.fs.cat_file(n)) for n in names]
        assert [d["version"] for d in docs] == list(range(1, len(docs) + 1)), f"versions of {folder} have gaps"
        return docs

    def manifest_files(self, pipeline: str, topic: str, partition: int) -> tuple[int | None, list[str]]:
        """(next_offset, data files) of the partition's latest version, by replaying every version."""
        files: dict[str, dict[str, Any]] = {}
        next_offset = None
        for doc in self.history(pipeline, topic, partition):
            for path in doc.get("remove", []):
                files.pop(path, None)
            for entry in doc.get("add", []):
                files[entry["path"]] = entry
            next_offset = doc.get("next_offset")
        return next_offset, sorted(files)

    def offsets(self, paths: list[str]) -> dict[int, list[int]]:
        """kafka_partition -> sorted offsets (duplicates kept) of the rows of these files."""
        if not paths:
            return {}
        table = ds.dataset(paths, filesystem=self.fs, format="parquet").to_table(
            columns=["kafka_partition", "kafka_offset"]
        )
        return _by_partition(table)

    def folder_offsets(self) -> dict[int, list[int]]:
        """What a reader of the dataset folder sees (pyarrow skips names starting with _ or .)."""
        dataset = ds.dataset(self.root, filesystem=self.fs, format="parquet", partitioning="hive")
        return _by_partition(dataset.to_table(columns=["kafka_partition", "kafka_offset"]))

    def manifest_offsets(self, pipeline: str, topic: str, partitions: int) -> dict[int, list[int]]:
        paths = []
        for p in range(partitions):
            paths += [f"{self.root}/{rel}" for rel in self.manifest_files(pipeline, topic, p)[1]]
        return self.offsets(paths)


def _by_partition(table: Any) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    if table.num_rows == 0:
        return out
    for p in pc.unique(table.column("kafka_partition")).to_pylist():
        mask = pc.equal(table.column("kafka_partition"), p)
        out[int(p)] = sorted(table.filter(mask).column("kafka_offset").to_pylist())
    return out


def missing_and_duplicated(found: dict[int, list[int]], ends: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition, how many offsets of [0, end) are absent, and how many rows are extra copies."""
    missing, duplicated = {}, {}
    for p, end in ends.items():
        offsets = found.get(p, [])
        unique = set(offsets)
        missing[p] = len(set(range(end)) - unique)
        duplicated[p] = len(offsets) - len(unique)
    return missing, duplicated


def writes_without_latest_claim(history: list[dict[str, Any]]) -> list[int]:
    """Versions whose writer did not hold the partition's latest claim: a fencing failure (a zombie's commit,
    or a writer that never claimed). Empty when every write follows its writer's own claim."""
    bad, claimant = [], None
    for doc in history:
        if doc["operation"] == "claim":
            claimant = doc["owner"]
        elif doc["operation"] == "write" and doc["owner"] != claimant:
            bad.append(doc["version"])
    return bad
