"""A rebalance while a revocation flush is slow: the run gets its partitions back and loses nothing.

Reported with kafka-python: 32 partitions into S3 behind 20 ms of latency a request, at-least-once. The group
rebalanced right after the first assignment (the leader's metadata changed), the revocation flush took ~1.1 s,
the member rejoined generation 2 as leader, and never took its partitions back: it polled for ever, the group
empty. Here the same rebalance is made to happen on purpose, while records are buffered: the topic gains
partitions (the leader sees the metadata change, as in the report) and every request to the lake waits
``DELAY`` seconds, so that the revocation flush outlasts a poll (kingest polls for at most 1 s). Whether the
client then loses the join it started still depends on which of two threads gets there first (the IO thread
reading the JoinGroup response, the polling thread asking whether a rejoin is needed): about half the time or
more here. So the rebalance is made ``ROUNDS`` times in a run, each with a slow flush.

What is asserted is what a user relies on: every record, of the old and the new partitions, ends up in the
lake (read independently: pyarrow over s3fs, offsets per partition) and the run stops cleanly.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.latency_proxy import LatencyProxy
from tests.conftest import kafka_client, wait_for_topic

from .support import Instance, duplicates, events, folder_offsets, missing, private_producer, write_config

pytestmark = pytest.mark.integration

START = 4  # partitions at first
ROUNDS = 4  # rebalances, a partition added each time
DELAY = 0.3  # seconds each request to the lake waits: a flush of 4 partitions or more (a PUT each) outlasts a poll
FIRST = 150  # records per partition before the first rebalance
LATER = 40  # records per partition (old and new) after each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _consumed(metrics: str) -> int | None:
    """kingest_records_consumed_total from the run's metrics endpoint (None: not serving yet)."""
    try:
        with urllib.request.urlopen(metrics, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("kingest_records_consumed_total "):
            return int(float(line.split()[1]))
    return None


def _wait_consumed(run: Instance, metrics: str, count: int, bound: float) -> int | None:
    """Until the run has polled ``count`` records; gives up after ``bound`` seconds (a liveness bound, not a
    speed requirement: the run is then stopped and the lake tells what it missed)."""
    deadline = time.monotonic() + bound
    seen = None
    while time.monotonic() < deadline and run.alive():
        seen = _consumed(metrics)
        if seen is not None and seen >= count:
            break
        time.sleep(0.2)
    return seen


def test_partitions_come_back_after_a_rebalance_during_a_slow_revocation_flush(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_admin: Any,
    topic_factory: Callable[..., str],
    produce: Callable[..., Any],
    s3_endpoint: str,
    s3_prefix: str,
    s3_storage_options: dict[str, Any],
) -> None:
    from kafka.admin import NewPartitions

    topic = topic_factory(START, name="rebalance")
    for p in range(START):
        produce(topic, events(FIRST, p * FIRST), partition=p)
    proxy = LatencyProxy(s3_endpoint, DELAY).start()
    lake = f"{s3_prefix}/lake"
    # The consumer refreshes its metadata every 0.5 s, so that it sees the new partitions at once.
    refresh = (
        {"metadata_max_age_ms": 500}
        if kafka_client() == "kafka-python"
        else {"topic.metadata.refresh.interval.ms": 500}
    )
    config = write_config(
        tmp_path / "kingest.yaml",
        bootstrap=kafka_bootstrap,
        topic=topic,
        lake=lake,
        storage_options={**s3_storage_options, "endpoint_url": proxy.url},
        kafka={"consumer": refresh},
        # Nothing is due before the rebalance: the records polled wait in the batcher, and the revocation flush
        # has all of them to write.
        batch={"max_records": 100000, "max_bytes": "64MiB", "max_age": "10m"},
        semantics="at-least-once",
    )
    port = _free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    run = Instance("run", config, tmp_path, args=("--metrics-port", str(port), "-v")).start()
    expected = {p: FIRST for p in range(START)}  # records per partition
    try:
        polled = _wait_consumed(run, metrics, sum(expected.values()), bound=60)
        assert polled == sum(expected.values()), f"the run polled {polled} records before the first rebalance"
        for partitions in range(START + 1, START + 1 + ROUNDS):
            # A rebalance, with every record polled so far still buffered: the revocation flush is slow.
            kafka_admin.create_partitions({topic: NewPartitions(total_count=partitions)})
            wait_for_topic(kafka_admin, topic, partitions)
            with private_producer(kafka_bootstrap) as send:  # a new producer: it knows the new partition
                for p in range(partitions):
                    send(topic, events(LATER, 10_000 * p + expected.get(p, 0)), partition=p)
                    expected[p] = expected.get(p, 0) + LATER
            polled = _wait_consumed(run, metrics, sum(expected.values()), bound=30)
            if polled != sum(expected.values()):
                break  # the run is stuck: stop it and let the lake tell
    finally:
        try:
            run.stop(timeout=60)  # a clean stop: what is buffered is written and committed
        except subprocess.TimeoutExpired:
            run.kill()
        proxy.close()

    seen = folder_offsets(lake, s3_storage_options)
    tail = "\n".join(line[:300] for line in run.log().splitlines()[-40:])
    lost = missing(seen, {p: list(range(n)) for p, n in expected.items()})
    assert lost == {}, f"records missing from the lake; the run's log ends:\n{tail}"
    assert duplicates(seen) == {}  # one run, no crash: nothing is written twice
    assert run.process is not None and run.process.returncode == 0, tail
