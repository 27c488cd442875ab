"""lake.format: delta against the real broker and the real S3 server: each semantics lands its records in a Delta
table, exactly-once keeps each partition's offset in the table's own commits (txn), and holds under real kills
and a writer frozen between staging its files and committing them. Every check reads the table back
independently (support/delta.py replays the Delta log with fsspec and json) and runs `kingest verify`."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from .support import (
    PARTITIONS,
    DeltaView,
    Instance,
    crash_config,
    duplicates,
    end_offsets,
    group_members,
    kingest,
    missing,
    missing_and_duplicated,
    produce_evenly,
    produce_spread,
    read_config,
    run_until_caught_up,
    scale_config,
    verify,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

PER_PARTITION = 600


def delta_config(path: Path, **overrides: Any) -> Path:
    return crash_config(path, **overrides)


def app_id(config: Path, topic: str, partition: int) -> str:
    return f"kingest-{read_config(config)['pipeline']}-{topic}-{partition}"


def check_table(semantics: str, config: Path, lake: str, options: dict | None, per_partition: int) -> None:
    """The table, read independently, and verify both keep the semantics' promise over every record produced."""
    view = DeltaView(lake, options)
    log = view.log()
    seen = view.offsets(log)
    expected = {p: list(range(per_partition)) for p in range(PARTITIONS)}
    assert all(0 <= o < per_partition for offsets in seen.values() for o in offsets), "an offset the topic lacks"
    if semantics in ("at-most-once", "exactly-once"):
        assert duplicates(seen) == {}
    if semantics in ("at-least-once", "exactly-once"):
        assert missing(seen, expected) == {}
    if semantics == "exactly-once":
        assert seen == expected
        topic = read_config(config)["kafka"]["topics"][0]
        # The offsets live in the table: each partition's txn is the offset after its last row.
        assert {p: log.txns.get(app_id(config, topic, p)) for p in range(PARTITIONS)} == dict.fromkeys(
            range(PARTITIONS), per_partition
        )
    else:  # appends set the txns too, unchecked (what gc's fence needs), never past what the topic holds
        assert all(v <= per_partition for v in log.txns.values())
    code, report = verify(config)
    assert code == 0, report["violations"]
    assert report["source"] == "Delta table"
    totals = report["totals"]
    assert totals["expected"] == PARTITIONS * per_partition
    if semantics == "exactly-once":
        assert totals["duplicated"] == 0 and totals["missing"] == 0


@pytest.mark.parametrize(
    ("semantics", "where"),
    [("at-most-once", "local"), ("at-least-once", "local"), ("exactly-once", "local"), ("exactly-once", "s3")],
)
def test_each_semantics_lands_every_record_in_a_delta_table(
    semantics, where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=PARTITIONS)
    lake, options = (str(tmp_path / "table"), None) if where == "local" else (s3_prefix, s3_storage_options)
    config = delta_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake={"path": lake, "format": "delta", **({"storage_options": options} if options else {})},
        semantics=semantics,
        bootstrap=kafka_bootstrap,
    )
    half = PER_PARTITION // 2
    produce_evenly(produce, topic, half)
    first = run_until_caught_up(config)
    assert first.returncode == 0, first.stderr
    # A second run resumes where the first stopped (exactly-once: from the table's txns, not the group).
    produce_evenly(produce, topic, PER_PARTITION - half, start=half)
    second = run_until_caught_up(config)
    assert second.returncode == 0, second.stderr
    check_table(semantics, config, lake, options, PER_PARTITION)
    status = json.loads(kingest("status", "-c", str(config), "--json", cwd=tmp_path).stdout)
    rows = {p["partition"]: p for p in status["partitions"]}
    assert {p: rows[p]["rows"] for p in range(PARTITIONS)} == dict.fromkeys(range(PARTITIONS), PER_PARTITION) or (
        semantics == "at-least-once"  # duplicates allowed
    )
    if semantics == "exactly-once":
        assert {p: rows[p]["manifest_offset"] for p in range(PARTITIONS)} == dict.fromkeys(
            range(PARTITIONS), PER_PARTITION
        )


CRASHES = [
    ("exactly-once", "after-poll:2"),
    ("exactly-once", "mid-write:1"),
    ("exactly-once", "mid-write:4"),
    ("exactly-once", "after-write:1"),
    ("exactly-once", "after-write:4"),
    ("at-least-once", "after-write:2"),
    ("at-most-once", "after-commit:2"),
]


def crash_then_recover(semantics, crash, tmp_path, bootstrap, topic, lake, options) -> None:
    config = delta_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake={"path": lake, "format": "delta", **({"storage_options": options} if options else {})},
        semantics=semantics,
        bootstrap=bootstrap,
    )
    first = run_until_caught_up(config, crash=crash)
    assert first.returncode == -signal.SIGKILL, f"not killed at {crash} (exit {first.returncode}): {first.stderr}"
    view = DeltaView(lake, options)
    if semantics == "exactly-once":
        # Right after the kill the table holds each offset at most once, and nothing past its txns.
        log = view.log()
        seen = view.offsets(log)
        assert duplicates(seen) == {}
        for p, offsets in seen.items():
            txn = log.txns.get(app_id(config, topic, p))
            assert txn is not None and offsets == list(range(txn)), f"partition {p}: rows beyond the txn {txn}"
        if crash.startswith("after-write"):
            assert view.untracked(log), "after-write should leave staged files that no commit names"
    second = run_until_caught_up(config)
    assert second.returncode == 0, second.stderr
    check_table(semantics, config, lake, options, PER_PARTITION)
    if crash.startswith("after-commit"):
        assert sum(len(v) for v in view.offsets().values()) < PARTITIONS * PER_PARTITION, "nothing was lost"


@pytest.mark.parametrize(("semantics", "crash"), CRASHES, ids=[f"{s}-{c}" for s, c in CRASHES])
def test_crash_point_delta_local(semantics, crash, tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    crash_then_recover(semantics, crash, tmp_path, kafka_bootstrap, topic, str(tmp_path / "table"), None)


@pytest.mark.parametrize("crash", ["after-write:2", "mid-write:3"])
def test_crash_point_delta_s3(crash, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    crash_then_recover("exactly-once", crash, tmp_path, kafka_bootstrap, topic, s3_prefix, s3_storage_options)


RECORDS = 3_000


@pytest.mark.parametrize("first", ["owner", "zombie"])
def test_a_writer_frozen_between_staging_and_commit_keeps_every_offset_once(
    first: str, tmp_path: Path, kafka_bootstrap: str, kafka_admin, topic_factory, produce
) -> None:
    """b stages its flush and freezes before the commit (a GC pause, a stalled VM); the group gives the partition
    to a, which stages the same records and stops before its commit too. Then one of them commits first:
    ``owner`` (a): b wakes on a txn that moved, its commit is refused, it resumes from the table;
    ``zombie`` (b): its commit lands (nothing of those records was committed), a's is refused, a resumes from b's
    txn. Either way each offset once, and the txn at the end of the log."""
    topic = topic_factory(partitions=1, name="delta-frozen")
    config_path = tmp_path / "kingest.yaml"
    lake = str(tmp_path / "table")
    scale_config(
        config_path,
        topic=topic,
        lake={"path": lake, "format": "delta"},
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        batch={"max_age": "1s"},
    )
    group = f"kingest-{read_config(config_path)['pipeline']}"
    produce_spread(produce, topic, 0, RECORDS, 1)
    release_a, release_b = tmp_path / "release-a", tmp_path / "release-b"
    b = Instance(
        "b", config_path, tmp_path, env={"KINGEST_PAUSE_AT": "after-write", "KINGEST_PAUSE_FILE": str(release_b)}
    )
    a = Instance(
        "a", config_path, tmp_path, env={"KINGEST_PAUSE_AT": "after-write", "KINGEST_PAUSE_FILE": str(release_a)}
    )
    view = DeltaView(lake)
    txn = f"kingest-{read_config(config_path)['pipeline']}-{topic}-0"

    def rows() -> int:
        return sum(map(len, view.offsets().values()))

    try:
        b.start()
        wait_for(lambda: Path(f"{release_b}.paused").exists(), "b stages a flush and stops before its commit")
        b.send(signal.SIGSTOP)  # and stops heartbeating: the group moves on without it
        a.start()

        def a_alone() -> bool:
            state, members = group_members(kafka_admin, group)
            return state == "Stable" and set(members) == {"a"}

        wait_for(a_alone, "the group gives the partition to a", timeout=90)
        wait_for(lambda: Path(f"{release_a}.paused").exists(), "a stages the same records, stops before its commit")
        loser = b if first == "owner" else a
        if first == "owner":
            release_a.touch()
            wait_for(lambda: view.log().txns.get(txn) == RECORDS, "a commits every record", timeout=60)
            b.send(signal.SIGCONT)
            release_b.touch()  # b commits now, on the txn it read before a's commit
        else:
            b.send(signal.SIGCONT)
            release_b.touch()
            wait_for(lambda: view.log().txns.get(txn) == RECORDS, "b commits every record", timeout=60)
            release_a.touch()  # a commits now, on the txn it read before b's commit

        def settled() -> bool:  # refused (the right outcome) or committed on top of the other's rows (a loss of it)
            return "moved to" in loser.log() or rows() > RECORDS

        wait_for(settled, "the second commit is settled", timeout=60)
        assert a.stop() == 0
        assert b.stop() == 0
    except BaseException:
        print(a.logs(), b.logs())
        raise
    finally:
        a.kill()
        b.kill()
    ends = end_offsets(kafka_bootstrap, topic, 1)
    log = view.log()
    assert missing_and_duplicated(view.offsets(log), ends) == ({0: 0}, {0: 0})
    assert log.txns[txn] == RECORDS
    assert "moved to" in loser.log(), loser.logs()
    code, report = verify(config_path)
    assert code == 0 and report["totals"]["duplicated"] == 0 and report["totals"]["missing"] == 0


def exactly_once_table(tmp_path: Path, bootstrap: str, topic: str, lake: str, options: dict | None, **over) -> Path:
    return delta_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake={"path": lake, "format": "delta", **({"storage_options": options} if options else {})},
        semantics="exactly-once",
        bootstrap=bootstrap,
        **over,
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_rewind_of_a_delta_table_takes_the_rows_out_and_the_replay_lands_each_offset_once(
    where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=PARTITIONS)
    lake, options = (str(tmp_path / "table"), None) if where == "local" else (s3_prefix, s3_storage_options)
    # No static membership (crash_config's): a rewind waits for the group to be empty, as Kafka's own reset does.
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake={"path": lake, "format": "delta", **({"storage_options": options} if options else {})},
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        batch={"max_records": 200, "max_bytes": "8MiB", "max_age": "30s"},
    )
    produce_evenly(produce, topic, PER_PARTITION)
    assert run_until_caught_up(config).returncode == 0
    target = 250  # inside a file of 200-record batches: that file is cut at the target
    done = kingest("rewind", "-c", str(config), "--to-offset", str(target), "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "taken out of the table" in done.stdout
    view = DeltaView(lake, options)
    log = view.log()
    assert view.offsets(log) == {p: list(range(target)) for p in range(PARTITIONS)}
    assert {p: log.txns[app_id(config, topic, p)] for p in range(PARTITIONS)} == dict.fromkeys(
        range(PARTITIONS), target
    )
    assert run_until_caught_up(config).returncode == 0
    check_table("exactly-once", config, lake, options, PER_PARTITION)


def test_compact_merges_small_files_and_keeps_every_offset_and_txn(tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=PARTITIONS)
    lake = str(tmp_path / "table")
    config = exactly_once_table(
        tmp_path, kafka_bootstrap, topic, lake, None, batch={"max_records": 50, "max_bytes": "8MiB", "max_age": "30s"}
    )
    produce_evenly(produce, topic, PER_PARTITION)
    assert run_until_caught_up(config).returncode == 0
    view = DeltaView(lake)
    before = view.log()
    assert len(before.files) >= PARTITIONS * (PER_PARTITION // 50)
    done = kingest("compact", "-c", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    after = view.log()
    assert len(after.files) == PARTITIONS, "each partition's small files become one"
    assert after.txns == before.txns
    assert after.operations[-1] == "OPTIMIZE"
    check_table("exactly-once", config, lake, None, PER_PARTITION)
    # The replaced files stay in storage for older versions: a reader at the version before sees the same rows.
    produce_evenly(produce, topic, 100, start=PER_PARTITION)
    assert run_until_caught_up(config).returncode == 0
    check_table("exactly-once", config, lake, None, PER_PARTITION + 100)


def test_gc_removes_the_untracked_files_of_a_crashed_writer_once_older_than_the_retention(
    tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=PARTITIONS)
    lake = str(tmp_path / "table")
    config = exactly_once_table(tmp_path, kafka_bootstrap, topic, lake, None)
    produce_evenly(produce, topic, PER_PARTITION)
    assert run_until_caught_up(config, crash="after-write:2").returncode == -signal.SIGKILL
    assert run_until_caught_up(config).returncode == 0
    view = DeltaView(lake)
    untracked = view.untracked()
    assert untracked, "the killed writer's staged files are in storage, named by no commit"

    def gc(*args: str) -> dict[str, Any]:
        done = kingest("gc", "-c", str(config), "--json", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    assert gc("--retain", "1h")["removed"] == 0, "younger than the retention: kept"
    old = __import__("time").time() - 2 * 3600
    for rel in untracked:
        __import__("os").utime(f"{lake}/{rel}", (old, old))
    planned = gc("--retain", "1h", "--dry-run")
    assert sorted(g["path"] for g in planned["collect"]) == untracked
    assert gc("--retain", "1h")["removed"] == len(untracked)
    assert view.untracked() == []
    check_table("exactly-once", config, lake, None, PER_PARTITION)
    short = kingest("gc", "-c", str(config), "--retain", "30m", cwd=tmp_path)
    assert short.returncode == 2 and "below 1h" in short.stdout + short.stderr
    assert "Traceback" not in short.stderr


def test_partition_by_date_and_hour_become_partition_columns_of_the_table(
    tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=PARTITIONS)
    lake = str(tmp_path / "table")
    config = exactly_once_table(tmp_path, kafka_bootstrap, topic, lake, None)
    data = read_config(config)
    data["lake"]["partition_by"] = ["date", "hour"]
    config.write_text(__import__("yaml").safe_dump(data))
    produce_evenly(produce, topic, PER_PARTITION)
    assert run_until_caught_up(config).returncode == 0
    view = DeltaView(lake)
    log = view.log()
    import datetime

    import pyarrow.parquet as pq

    for path, add in log.files.items():
        values = add["partitionValues"]
        assert set(values) == {"kafka_topic", "kafka_partition", "date", "hour"}
        assert path.startswith(
            f"kafka_topic={topic}/kafka_partition={values['kafka_partition']}/date={values['date']}/"
        )
        with view.fs.open(f"{view.root}/{path}", "rb") as f:
            stamps = pq.read_table(f, columns=["kafka_timestamp"]).column("kafka_timestamp").to_pylist()
        utc = {
            (s.astimezone(datetime.UTC).strftime("%Y-%m-%d"), s.astimezone(datetime.UTC).strftime("%H")) for s in stamps
        }
        assert utc == {(values["date"], values["hour"])}, path
    check_table("exactly-once", config, lake, None, PER_PARTITION)
    # A run on the table it made: the partition columns are the table's, not fields it expects in the records
    # (they were, and every record of a second run was refused as one whose field collides with them).
    produce_evenly(produce, topic, PER_PARTITION, start=PER_PARTITION)
    again = run_until_caught_up(config)
    assert again.returncode == 0, again.stderr
    check_table("exactly-once", config, lake, None, 2 * PER_PARTITION)
