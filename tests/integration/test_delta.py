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
    else:
        assert log.txns == {}, "only exactly-once commits txns"
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


def test_commands_not_built_for_delta_refuse_clearly(tmp_path):
    config = write_config(
        tmp_path / "kingest.yaml",
        bootstrap="127.0.0.1:1",
        topic="t",
        lake={"path": str(tmp_path / "table"), "format": "delta"},
        semantics="exactly-once",
    )
    for command in (["rewind", "--to-offset", "0", "--yes"], ["compact"], ["gc"]):
        done = kingest(command[0], "-c", str(config), *command[1:], cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "does not support lake.format: delta yet" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
