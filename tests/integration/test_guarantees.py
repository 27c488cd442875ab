"""The delivery guarantees under real kills, against the real broker and the real S3 server.

Each test runs `python -m kingest run` in a subprocess, kills it (SIGKILL through KINGEST_CRASH_AT, or
os.kill at a random moment), starts it again with --until-caught-up, then checks the lake twice: with
`kingest verify` and with an independent read of the dataset folder (pyarrow, see support/lake.py).
docs/guarantees.md lists the crash points and what each semantics must leave.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from .support import (
    PARTITIONS,
    Instance,
    crash_config,
    duplicates,
    folder_offsets,
    kingest,
    merge,
    missing,
    private_producer,
    produce_evenly,
    read_config,
    run_until_caught_up,
    start_run,
    verify,
    write_config,
)

pytestmark = pytest.mark.integration

PER_PARTITION = 1000  # 3000 records; batches of 200 and polls of 150: each point is passed many times

# Every crash point that applies to each semantics, with later passes (":n") so that the crash lands after
# some batches were saved. mid-manifest:1..3 are the claims of the 3 partitions at assignment; :5 a batch commit.
CRASHES = [
    ("at-most-once", "after-poll:2"),
    ("at-most-once", "after-commit:1"),
    ("at-most-once", "after-commit:3"),
    ("at-most-once", "mid-write:2"),
    ("at-least-once", "after-poll:3"),
    ("at-least-once", "mid-write:1"),
    ("at-least-once", "after-write:1"),
    ("at-least-once", "after-write:3"),
    ("exactly-once", "after-poll:2"),
    ("exactly-once", "mid-write:1"),
    ("exactly-once", "mid-write:4"),
    ("exactly-once", "after-write:2"),
    ("exactly-once", "after-write:5"),
    ("exactly-once", "mid-manifest:1"),
    ("exactly-once", "mid-manifest:5"),
]
# On S3: every exactly-once point (one variant each) and a representative subset of the others.
S3_CRASHES = [
    ("exactly-once", "after-poll:2"),
    ("exactly-once", "mid-write:4"),
    ("exactly-once", "after-write:2"),
    ("exactly-once", "mid-manifest:1"),
    ("exactly-once", "mid-manifest:5"),
    ("at-most-once", "after-commit:3"),
    ("at-least-once", "mid-write:1"),
    ("at-least-once", "after-write:3"),
]


def audit(config: Path) -> dict[str, Any]:
    """The verify report, in-process (faster than a process when only the report matters)."""
    from kingest import config as config_module
    from kingest.verify import audit

    return audit(config_module.load(config)).to_dict()


def check_guarantee(semantics: str, config: Path, lake: str, options: dict | None, per_partition: int) -> dict:
    """verify exits 0 and the dataset folder, read independently, keeps the semantics' promise."""
    code, report = verify(config)
    assert code == 0, report["violations"]
    totals = report["totals"]
    assert totals["expected"] == PARTITIONS * per_partition
    assert totals["unexpected"] == 0 and totals["not_consumed"] == 0
    expected = {p: list(range(per_partition)) for p in range(PARTITIONS)}
    seen = folder_offsets(lake, options)
    assert all(0 <= o < per_partition for c in seen.values() for o in c), "an offset the topic does not hold"
    if semantics in ("at-most-once", "exactly-once"):
        assert totals["duplicated"] == 0
        assert duplicates(seen) == {}
    if semantics in ("at-least-once", "exactly-once"):
        assert totals["missing"] == 0
        assert missing(seen, expected) == {}
    if semantics == "exactly-once":
        # The dataset folder itself, not only the manifest, holds each offset once after recovery.
        assert seen == {p: list(range(per_partition)) for p in range(PARTITIONS)}
        assert report["orphan_files"] == [] and report["missing_files"] == []
    return report


def crash_then_recover(semantics, crash, tmp_path, bootstrap, topic, lake, options) -> None:
    config = crash_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics=semantics,
        bootstrap=bootstrap,
        storage_options=options,
    )
    first = run_until_caught_up(config, crash=crash)
    assert first.returncode == -signal.SIGKILL, f"not killed at {crash} (exit {first.returncode}): {first.stderr}"

    # The guarantee holds at every moment, not only after recovery: audited right after the kill.
    report = audit(config)
    assert report["holds"], report["violations"]
    if semantics == "exactly-once" and crash.startswith("after-write"):
        # The killed attempt left a data file the manifest does not name, visible in the folder until recovery.
        assert report["orphan_files"], "after-write should leave an uncommitted file behind"

    second = run_until_caught_up(config)
    assert second.returncode == 0, second.stderr
    report = check_guarantee(semantics, config, lake, options, PER_PARTITION)
    if crash.startswith("after-commit"):
        # At-most-once really lost the flush in flight: the crash landed between commit and write.
        assert report["totals"]["missing"] > 0


@pytest.mark.parametrize(("semantics", "crash"), CRASHES, ids=[f"{s}-{c}" for s, c in CRASHES])
def test_crash_point_local(semantics, crash, tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    crash_then_recover(semantics, crash, tmp_path, kafka_bootstrap, topic, str(tmp_path / "lake"), None)


@pytest.mark.parametrize(("semantics", "crash"), S3_CRASHES, ids=[f"{s}-{c}" for s, c in S3_CRASHES])
def test_crash_point_s3(
    semantics, crash, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    crash_then_recover(semantics, crash, tmp_path, kafka_bootstrap, topic, s3_prefix, s3_storage_options)


# ---------------------------------------------------------------------------------------------- clean stop


class Producer(threading.Thread):
    """Keeps producing records (to every partition, in turn) until stopped: data still arriving."""

    def __init__(self, bootstrap: str, topic: str, start: int, chunk: int = 50) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.next, self.chunk = bootstrap, topic, start, chunk
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with private_producer(self.bootstrap) as produce:
                while not self.stopping.is_set():
                    produce_evenly(produce, self.topic, self.chunk, start=self.next)
                    self.next += self.chunk
                    time.sleep(0.05)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> int:
        """Stop and return the number of records now in each partition."""
        self.stopping.set()
        self.join(timeout=60)
        assert self.error is None, self.error
        return self.next


@pytest.mark.parametrize("semantics", ["at-most-once", "at-least-once", "exactly-once"])
def test_clean_sigterm_loses_and_duplicates_nothing(semantics, tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, 2000)  # a backlog
    lake = str(tmp_path / "lake")
    config = crash_config(
        tmp_path / "kingest.yaml", topic=topic, lake=lake, semantics=semantics, bootstrap=kafka_bootstrap
    )
    producer = Producer(kafka_bootstrap, topic, start=2000)
    producer.start()
    process = start_run(config)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(Path(lake).rglob("*.parquet"))) < 4:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # mid-run: records buffered, backlog left, records arriving
        out, err = process.communicate(timeout=60)
    finally:
        per_partition = producer.stop()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "done:" in out
    landed = sum(len(offsets) for offsets in folder_offsets(lake).values())
    assert 0 < landed < PARTITIONS * per_partition  # stopped mid-way indeed

    code, report = verify(config)
    assert code == 0, report["violations"]
    # A clean stop saved exactly what it wrote, whatever the semantics: nothing below the committed position
    # is missing, even for at-most-once.
    assert report["totals"]["missing"] == 0 and report["totals"]["duplicated"] == 0

    again = run_until_caught_up(config)
    assert again.returncode == 0, again.stderr
    report = check_guarantee(semantics, config, lake, None, per_partition)
    assert report["totals"]["missing"] == 0 and report["totals"]["duplicated"] == 0
    assert missing(folder_offsets(lake), {p: list(range(per_partition)) for p in range(PARTITIONS)}) == {}


# ---------------------------------------------------------------------------------------------- soak


@pytest.mark.slow
@pytest.mark.soak
def test_exactly_once_soak_under_random_kills(tmp_path, kafka_bootstrap, topic_factory):
    """50,000 records produced while the pipeline runs; at least 10 SIGKILLs at random moments, each followed
    by a restart; then each offset exactly once, by verify and by DuckDB over the folder."""
    total, kills_wanted = 50_000, 10
    per_partition = total // PARTITIONS + 1  # 16,667 per partition: 50,001 records
    topic = topic_factory(partitions=PARTITIONS)
    lake = str(tmp_path / "lake")
    config = crash_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        kafka={"max_poll_records": 500},
        batch={"max_records": 500, "max_age": "1s"},
    )
    produced = threading.Event()

    def produce_slowly() -> None:
        with private_producer(kafka_bootstrap) as own:
            for start in range(0, per_partition, 500):
                produce_evenly(own, topic, min(500, per_partition - start), start=start)
                time.sleep(0.1)
        produced.set()

    feeder = threading.Thread(target=produce_slowly, daemon=True)
    feeder.start()
    rng = random.Random(os.environ.get("KINGEST_SOAK_SEED", "4"))
    kills = 0
    run = Instance("soak", config, tmp_path)
    while kills < kills_wanted or feeder.is_alive():
        run.start()
        time.sleep(rng.uniform(0.5, 3.0))  # a random moment: joining, claiming, polling, writing, committing
        if run.alive():
            os.kill(run.pid, signal.SIGKILL)
            kills += 1
        assert run.process is not None
        code = run.process.wait(timeout=60)
        assert code == -signal.SIGKILL, f"the run stopped by itself: {run.log()}"
    feeder.join(timeout=120)
    assert produced.is_set(), "the producer thread failed"
    assert kills >= kills_wanted

    final = run_until_caught_up(config)
    assert final.returncode == 0, final.stderr
    check_guarantee("exactly-once", config, lake, None, per_partition)
    rows = duckdb.sql(
        f"select count(*), count(distinct (kafka_partition, kafka_offset)) "
        f"from read_parquet('{lake}/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert rows == [(PARTITIONS * per_partition, PARTITIONS * per_partition)]


# ---------------------------------------------------------------------------------------------- transactions


def produce_transactions(bootstrap: str, topic: str, outcomes: list[str], per_partition: int) -> None:
    """One transaction per outcome ("commit" or "abort"), each writing `per_partition` records to every
    partition; each value says which."""
    import uuid

    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"kingest-test-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        for number, outcome in enumerate(outcomes):
            producer.begin_transaction()
            for p in range(PARTITIONS):
                for i in range(per_partition):
                    value = json.dumps({"txn": number, "outcome": outcome, "i": i}).encode()
                    producer.send(topic, value=value, partition=p)
            producer.flush()  # in the log before the marker: kafka-python drops unsent records on abort
            if outcome == "commit":
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close()


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_transactional_input_read_committed(semantics, tmp_path, kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=PARTITIONS)
    outcomes = ["commit", "abort", "commit", "commit", "abort", "commit"]
    produce_transactions(kafka_bootstrap, topic, outcomes, per_partition=150)
    lake = str(tmp_path / "lake")
    config = crash_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics=semantics,
        bootstrap=kafka_bootstrap,
        kafka={"isolation_level": "read_committed"},
    )
    assert run_until_caught_up(config).returncode == 0

    rows = duckdb.sql(
        f"select outcome, count(*) from read_parquet('{lake}/**/*.parquet', hive_partitioning=true) group by 1"
    ).fetchall()
    assert rows == [("commit", 4 * 150 * PARTITIONS)]  # no aborted record landed

    code, report = verify(config)
    assert code == 0, report["violations"]
    for p in report["partitions"]:
        # 6 transactions of 150 records and their 6 markers: offsets 0..905, of which 600 are records.
        assert (p["log_start"], p["log_end"], p["expected"]) == (0, 6 * 151, 600)
        assert p["missing"]["count"] == 0 and p["unexpected"]["count"] == 0 and p["not_consumed"] == 0
        assert p["rows"] == 600


def test_aborted_records_in_the_lake_are_reported(tmp_path, kafka_bootstrap, topic_factory):
    """A pipeline that reads uncommitted data ingests aborted records; audited as read_committed, they are
    offsets the topic does not hold: a violation, with their exact ranges."""
    topic = topic_factory(partitions=PARTITIONS)
    produce_transactions(kafka_bootstrap, topic, ["commit", "abort", "commit"], per_partition=100)
    lake = str(tmp_path / "lake")
    uncommitted = crash_config(
        tmp_path / "uncommitted.yaml",
        topic=topic,
        lake=lake,
        semantics="at-least-once",
        bootstrap=kafka_bootstrap,
        kafka={"isolation_level": "read_uncommitted"},
    )
    assert run_until_caught_up(uncommitted).returncode == 0
    code, report = verify(uncommitted)
    assert code == 0, report["violations"]  # as read_uncommitted sees the topic, every record is there

    audited = write_config(
        tmp_path / "committed.yaml", **merge(read_config(uncommitted), {"kafka": {"isolation_level": "read_committed"}})
    )
    code, report = verify(audited)
    assert code == 1
    for p in report["partitions"]:
        # transaction 2 (aborted) is offsets 101..200 (transaction 1 is 0..99, its marker 100)
        assert p["unexpected"] == {"count": 100, "ranges": [[101, 200]], "ranges_truncated": False}
        assert p["missing"]["count"] == 0
    assert any("does not hold" in v for v in report["violations"])


# ---------------------------------------------------------------------------------------------- gc


def _exactly_once(tmp_path: Path, bootstrap: str, topic: str, lake: str, options: dict | None) -> Path:
    return crash_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics="exactly-once",
        bootstrap=bootstrap,
        storage_options=options,
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_gc_removes_a_crashed_attempts_file_and_nothing_committed(
    where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    """A run killed between its write and its commit leaves a file no manifest version names; `kingest gc`
    removes it (no run needed), and the lake still holds every committed offset, then every offset once."""
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    lake, options = (str(tmp_path / "lake"), None) if where == "local" else (s3_prefix, s3_storage_options)
    config = _exactly_once(tmp_path, kafka_bootstrap, topic, lake, options)
    first = run_until_caught_up(config, crash="after-write:2")
    assert first.returncode == -signal.SIGKILL, first.stderr
    orphans = audit(config)["orphan_files"]
    assert orphans, "after-write should leave an uncommitted file behind"
    time.sleep(1.1)
    dry = kingest("gc", "-c", str(config), "--retain", "1s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    # the killed attempt's version was never taken: a stale attempt, which gc settles with a version of its own
    assert sorted(g["path"] for g in planned["collect"] if g["kind"] == "stale attempt") == sorted(orphans)
    assert audit(config)["orphan_files"] == orphans  # a dry run changes nothing
    done = kingest("gc", "-c", str(config), "--retain", "1s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed "), done.stdout
    report = audit(config)
    assert report["holds"] and report["orphan_files"] == [] and report["missing_files"] == []
    second = run_until_caught_up(config)
    assert second.returncode == 0, second.stderr
    check_guarantee("exactly-once", config, lake, options, PER_PARTITION)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_compact_while_a_run_writes_keeps_every_offset_once(
    where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    """`kingest compact` several times while `kingest run` writes the same partitions, records still arriving:
    the run is never fenced by it, and the lake (the manifest and, independently, the folder) ends with every
    offset once, in fewer files."""
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, 1000)
    lake, options = (str(tmp_path / "lake"), None) if where == "local" else (s3_prefix, s3_storage_options)
    config = _exactly_once(tmp_path, kafka_bootstrap, topic, lake, options)
    producer = Producer(kafka_bootstrap, topic, start=1000, chunk=10)
    producer.start()
    run = Instance("run", config, tmp_path).start()
    merged = 0
    try:
        for _ in range(3):
            time.sleep(0.5)
            result = kingest("compact", "-c", str(config), "--json")
            assert result.returncode == 0, result.stderr
            merged += sum(len(p["inputs"]) for p in json.loads(result.stdout)["partitions"] if p["version"])
    finally:
        per_partition = producer.stop()
        assert run.stop() == 0, run.log()
    assert merged > 0, "nothing was compacted"
    assert "fenced" not in run.log() and "another writer" not in run.log()
    again = run_until_caught_up(config)
    assert again.returncode == 0, again.stderr
    check_guarantee("exactly-once", config, lake, options, per_partition)
