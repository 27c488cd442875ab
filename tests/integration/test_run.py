"""`kingest run` against the real broker and the real S3 server: what issue 3 promises users."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import duckdb
import pytest

from .support import LakeView, committed, kingest, read_config, start_run, write_config

pytestmark = pytest.mark.integration

SEMANTICS = ["at-most-once", "at-least-once", "exactly-once"]
PARTITIONS = 3
PER_PARTITION = 700


def events(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps(
            {"order_id": i, "customer": f"c{i % 17}", "amount": round(i * 1.25, 2), "items": [{"sku": "a"}]}
        ).encode()
        for i in range(start, start + n)
    ]


def produce_evenly(produce, topic: str, per_partition: int, start: int = 0) -> None:
    for p in range(PARTITIONS):
        produce(topic, events(per_partition, start), partition=p)


def offsets_in_folder(lake_url: str, storage_options: dict | None) -> dict[int, list[int]]:
    """An independent read of the dataset folder, as a pyarrow user would do it."""
    table = LakeView(lake_url, storage_options).folder_table(["kafka_partition", "kafka_offset", "partition"])
    assert table is not None, f"no data file in {lake_url}"
    out: dict[int, list[int]] = {}
    for p, o, hive_p in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
        assert int(hive_p) == p  # the hive folder agrees with the row
        out.setdefault(p, []).append(o)
    return {p: sorted(v) for p, v in out.items()}


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("semantics", SEMANTICS)
def test_every_offset_lands_exactly_once(
    semantics, where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    lake = str(tmp_path / "lake") if where == "local" else s3_prefix
    options = s3_storage_options if where == "s3" else None
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics=semantics,
        bootstrap=kafka_bootstrap,
        storage_options=options,
    )

    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    assert f"{PARTITIONS * PER_PARTITION} records" in result.stdout
    expected = {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}
    assert offsets_in_folder(lake, options) == expected

    group = read_config(config)["pipeline"]
    assert committed(kafka_bootstrap, f"kingest-{group}", topic) == {p: PER_PARTITION for p in range(PARTITIONS)}

    if where == "local":  # DuckDB reads the lake with no configuration
        rows = duckdb.sql(
            f"select kafka_partition, count(*), count(distinct kafka_offset), min(kafka_offset), max(kafka_offset), "
            f"sum(amount) from read_parquet('{lake}/**/*.parquet', hive_partitioning=true) group by 1 order by 1"
        ).fetchall()
        total = sum(round(i * 1.25, 2) for i in range(PER_PARTITION))
        assert rows == [
            (p, PER_PARTITION, PER_PARTITION, 0, PER_PARTITION - 1, pytest.approx(total)) for p in range(PARTITIONS)
        ]

    # A second run with nothing new writes nothing and changes no offsets.
    if where == "local":
        before = sorted(str(p.relative_to(lake)) for p in Path(lake).rglob("*") if p.is_file())
    again = kingest("run", "-c", str(config), "--until-caught-up")
    assert again.returncode == 0, again.stderr
    assert "done: 0 records" in again.stdout
    assert committed(kafka_bootstrap, f"kingest-{group}", topic) == {p: PER_PARTITION for p in range(PARTITIONS)}
    assert offsets_in_folder(lake, options) == expected
    if where == "local":
        assert sorted(str(p.relative_to(lake)) for p in Path(lake).rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_sigterm_mid_run_then_restart_ends_with_every_offset_once(
    semantics, tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, 3000)
    lake = str(tmp_path / "lake")
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics=semantics,
        bootstrap=kafka_bootstrap,
        batch={"max_records": 100},
    )
    process = start_run(config)
    # Stop it once some files have landed and while plenty is left to consume.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(Path(lake).rglob("*.parquet"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "done:" in out
    landed = sum(len(v) for v in offsets_in_folder(lake, None).values())
    assert 0 < landed

    produce_evenly(produce, topic, 200, start=3000)
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    assert offsets_in_folder(lake, None) == {p: list(range(3200)) for p in range(PARTITIONS)}


def test_age_flush_fires_with_no_new_records(tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=1)
    produce(topic, events(5), partition=0)
    lake = str(tmp_path / "lake")
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics="at-least-once",
        bootstrap=kafka_bootstrap,
        batch={"max_records": 100_000, "max_age": "1s"},
    )
    process = start_run(config)
    try:
        # No --until-caught-up and no new records: only the age rule can write these 5 records.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(Path(lake).rglob("*.parquet")):
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        assert offsets_in_folder(lake, None) == {0: [0, 1, 2, 3, 4]}
        group = read_config(config)["pipeline"]
        deadline = time.monotonic() + 10
        while committed(kafka_bootstrap, f"kingest-{group}", topic)[0] != 5:
            assert time.monotonic() < deadline, "the age flush wrote but did not commit"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_bad_json_stops_the_run_naming_the_record_and_commits_nothing_past_it(
    semantics, tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    produce(topic, events(40), partition=0)
    produce(topic, [b'{"order_id": 40, "amount": '], partition=0)  # offset 40: truncated JSON
    produce(topic, events(10, start=41), partition=0)
    lake = str(tmp_path / "lake")
    config = write_config(
        tmp_path / "kingest.yaml", topic=topic, lake=lake, semantics=semantics, bootstrap=kafka_bootstrap
    )
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 1
    assert f"record {topic}[0]@40 cannot be decoded: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    group = read_config(config)["pipeline"]
    assert committed(kafka_bootstrap, f"kingest-{group}", topic)[0] == 40
    assert offsets_in_folder(lake, None) == {0: list(range(40))}
    # Running again stops at the same record: nothing past it is ever committed.
    again = kingest("run", "-c", str(config), "--until-caught-up")
    assert again.returncode == 1 and f"{topic}[0]@40" in again.stderr
    assert offsets_in_folder(lake, None) == {0: list(range(40))}


def test_missing_topic_is_a_clear_error(tmp_path, kafka_bootstrap):
    missing = f"no-such-topic-{uuid.uuid4().hex[:6]}"
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=missing,
        lake=str(tmp_path / "lake"),
        semantics="at-least-once",
        bootstrap=kafka_bootstrap,
    )
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 2
    assert f"topic(s) {missing} not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_bucket_fails_before_anything_is_consumed(
    tmp_path, kafka_bootstrap, topic_factory, produce, s3_storage_options
):
    topic = topic_factory(partitions=1)
    produce(topic, events(10), partition=0)
    config = write_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x",
        semantics="at-least-once",
        bootstrap=kafka_bootstrap,
        storage_options=s3_storage_options,
    )
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 2
    assert "is not writable" in result.stderr and "bucket" in result.stderr
    assert "Traceback" not in result.stderr
    assert s3_storage_options["secret"] not in result.stderr + result.stdout
    group = read_config(config)["pipeline"]
    assert committed(kafka_bootstrap, f"kingest-{group}", topic)[0] is None


def test_unwritable_local_path_fails_before_anything_is_consumed(tmp_path, kafka_bootstrap, topic_factory, produce):
    if os.geteuid() == 0:
        blocked = tmp_path / "a-file"  # root ignores permissions: use a path under a regular file instead
        blocked.write_text("not a folder")
        lake = str(blocked / "lake")
    else:
        blocked = tmp_path / "read-only"
        blocked.mkdir(mode=0o500)
        lake = str(blocked / "lake")
    topic = topic_factory(partitions=1)
    produce(topic, events(10), partition=0)
    config = write_config(
        tmp_path / "kingest.yaml", topic=topic, lake=lake, semantics="exactly-once", bootstrap=kafka_bootstrap
    )
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 2
    assert f"the lake at {lake} is not writable" in result.stderr
    assert "Traceback" not in result.stderr
    group = read_config(config)["pipeline"]
    assert committed(kafka_bootstrap, f"kingest-{group}", topic)[0] is None
