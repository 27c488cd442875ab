"""Bad records and schemas through `kingest run`, against the real broker and S3 server: `records.on_error`
(skip, dead-letter, fail) under each semantics, dead letters written exactly once under exactly-once across a
crash, declared schemas coerced, inferred schemas evolving, lineage in every file's footer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kingest.deadletter import count_dead_letters, dead_letters_in_state
from kingest.lake import Lake
from kingest.manifest import ManifestStore

from .support import LakeView, by_partition, committed, kingest, merge, read_config, write_config

pytestmark = pytest.mark.integration

SEMANTICS = ["at-most-once", "at-least-once", "exactly-once"]
PER_PARTITION = 12
# Offset -> the bad value there (the same in each partition) and the start of the reason given for it.
BAD = {
    3: (b"{not json", "not valid JSON ("),
    6: (b"[1, 2]", "a JSON array, not an object"),
    9: (b'{"n": "nine"}', "type conflict: field `n` is a number in earlier records, a string in this one"),
    10: (b'{"n": "\xff\xfe"}', "not valid UTF-8"),
}


def values_for(partition: int) -> list[bytes]:
    return [BAD[i][0] if i in BAD else json.dumps({"n": i, "p": partition}).encode() for i in range(PER_PARTITION)]


def small_batch_config(path: Path, **overrides: Any) -> dict[str, Any]:
    """write_config with batches of 5 records (a few files per partition); returns the config written."""
    write_config(path, **merge({"batch": {"max_records": 5, "max_bytes": "1MiB", "max_age": "1s"}}, overrides))
    return read_config(path)


def dataset(url: str, storage_options: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> ds.Dataset:
    """The dataset folder at url, as a pyarrow user reads it (hive partition columns included)."""
    found = LakeView(url, storage_options).folder_dataset(schema=schema)
    assert found is not None, f"no data file in {url}"
    return found


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.parquet")}


GOOD = [i for i in range(PER_PARTITION) if i not in BAD]


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("on_error", ["skip", "dead-letter"])
def test_bad_records_are_settled_with_their_batch_and_the_run_goes_on(
    on_error, semantics, tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=2)
    for p in range(2):
        produce(topic, values_for(p), partition=p, key=f"key-{p}", headers=[("trace", f"t{p}".encode())])
    lake = tmp_path / "lake"
    config = tmp_path / "kingest.yaml"
    doc = small_batch_config(config, topic=topic, lake=str(lake), bootstrap=kafka_bootstrap,
                       records={"on_error": on_error}, semantics=semantics)  # fmt: skip

    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    verb = "skipped" if on_error == "skip" else "dead-lettered"
    assert "16 records in" in result.stdout and f"8 bad records {verb}" in result.stdout

    # The dataset folder holds every good record once, and no bad one.
    data = dataset(str(lake)).to_table(columns=["kafka_partition", "kafka_offset", "n", "p"])
    assert by_partition(data) == {0: GOOD, 1: GOOD}
    pairs = zip(data.column("p").to_pylist(), data.column("n").to_pylist(), strict=True)
    assert sorted(pairs) == [(p, n) for p in (0, 1) for n in GOOD]

    dead_folder = lake / "_dead_letters"
    if on_error == "skip":
        assert not dead_folder.exists()
        assert f"skipped bad record {topic}[0]@3: not valid JSON (" in result.stderr
        assert f"skipped bad record {topic}[1]@9: type conflict: field `n`" in result.stderr
    else:
        dead = dataset(str(dead_folder)).to_table()
        assert by_partition(dead) == {0: sorted(BAD), 1: sorted(BAD)}
        for row in dead.to_pylist():
            value, reason = BAD[row["kafka_offset"]]
            assert row["value"] == value  # the raw bytes, as produced
            assert row["error"].startswith(reason)
            assert row["kafka_key"] == f"key-{row['kafka_partition']}".encode()
            assert row["kafka_headers"] == [{"key": "trace", "value": f"t{row['kafka_partition']}".encode()}]
            assert row["kafka_topic"] == topic and row["kafka_timestamp"] is not None
        counts = count_dead_letters(Lake(str(lake)), [topic])
        assert counts == {(topic, 0): 4, (topic, 1): 4}

    # Offsets were saved past the bad records: the run is not stuck on them.
    if semantics == "exactly-once":
        store = ManifestStore(Lake(str(lake)), doc["pipeline"])
        for p in range(2):
            state = store.load(topic, p)
            assert state.next_offset == PER_PARTITION
            assert dead_letters_in_state(state) == (4 if on_error == "dead-letter" else 0)
    else:
        assert committed(kafka_bootstrap, f"kingest-{doc['pipeline']}", topic, 2) == {0: 12, 1: 12}

    # A second run finds nothing new: no file is added, none is written again.
    before = files_in(lake)
    again = kingest("run", "-c", str(config), "--until-caught-up")
    assert again.returncode == 0, again.stderr
    assert "done: 0 records in 0 files" in again.stdout
    assert files_in(lake) == before


def test_exactly_once_writes_each_dead_letter_once_across_a_crash(
    tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    """The dead-letter file is committed by the same manifest version as its batch's data: killed after the
    write and before that commit, the restarted run removes it with the data and writes both again, once."""
    topic = topic_factory(partitions=2)
    for p in range(2):
        produce(topic, values_for(p), partition=p)
    config = tmp_path / "kingest.yaml"
    doc = small_batch_config(
        config, topic=topic, lake=s3_prefix, bootstrap=kafka_bootstrap, semantics="exactly-once",
        records={"on_error": "dead-letter"}, storage_options=s3_storage_options,
        batch={"max_records": 100},
        kafka={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},  # the killed member leaves the group soon
    )  # fmt: skip
    crashed = kingest("run", "-c", str(config), "--until-caught-up", env={"KINGEST_CRASH_AT": "after-write"})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL: the data and dead letters of a batch are written
    lake = Lake(s3_prefix, s3_storage_options)
    # ... but not committed: one batch's 4, or both partitions' (their lanes write side by side)
    assert sum(count_dead_letters(lake, [topic]).values()) in (4, 8)

    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    lake = Lake(s3_prefix, s3_storage_options)
    data = dataset(s3_prefix, s3_storage_options).to_table(columns=["kafka_partition", "kafka_offset"])
    assert by_partition(data) == {0: GOOD, 1: GOOD}
    # Every dead-letter file in the store is one the manifest committed, and each bad record is in one of them.
    store = ManifestStore(lake, doc["pipeline"])
    named = {path for p in range(2) for path, entry in store.load(topic, p).files.items() if entry.get("kind")}
    assert count_dead_letters(lake, [topic]) == {(topic, 0): 4, (topic, 1): 4}
    assert count_dead_letters(lake, [topic], committed=named) == {(topic, 0): 4, (topic, 1): 4}
    dead = dataset(f"{s3_prefix}/_dead_letters", s3_storage_options).to_table()
    assert by_partition(dead) == {0: sorted(BAD), 1: sorted(BAD)}


def test_declared_schema_coerces_values_and_files_carry_schema_and_lineage(
    tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=1)
    produce(
        topic,
        [
            b'{"id": 1, "amount": 2.5, "at": "2024-05-01T10:00:00Z", "paid": true, "note": "as declared"}',
            b'{"id": "2", "amount": "3.75", "at": "2024-05-01T12:00:00.5+02:00", "paid": "false", "note": 7}',
            b'{"id": 3.0, "amount": 4, "at": 1714557600000, "extra": {"dropped": true}}',
            b'{"id": "four", "amount": 1}',  # cannot be an int64: a bad record
            b'{"id": 5, "at": "not a time"}',  # cannot be a timestamp: a bad record
        ],
        partition=0,
    )
    config = tmp_path / "kingest.yaml"
    doc = small_batch_config(
        config, topic=topic, lake=s3_prefix, bootstrap=kafka_bootstrap, semantics="at-least-once",
        records={"on_error": "dead-letter",
                 "schema": {"id": "int64", "amount": "float64", "at": "timestamp", "paid": "bool", "note": "string"}},
        storage_options=s3_storage_options,
    )  # fmt: skip
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr

    table = dataset(s3_prefix, s3_storage_options).to_table().sort_by("kafka_offset")
    utc = pa.timestamp("us", tz="UTC")
    assert table.schema.field("id").type == pa.int64() and table.schema.field("at").type == utc
    assert table.schema.field("amount").type == pa.float64() and table.schema.field("paid").type == pa.bool_()
    assert "extra" not in table.column_names
    assert table.select(["id", "amount", "paid", "note"]).to_pylist() == [
        {"id": 1, "amount": 2.5, "paid": True, "note": "as declared"},
        {"id": 2, "amount": 3.75, "paid": False, "note": "7"},
        {"id": 3, "amount": 4.0, "paid": None, "note": None},
    ]
    stamps = table.column("at").cast(pa.int64()).to_pylist()  # microseconds since the epoch, UTC
    assert stamps == [1714557600_000000, 1714557600_500000, 1714557600_000000]

    dead = dataset(f"{s3_prefix}/_dead_letters", s3_storage_options).to_table().sort_by("kafka_offset")
    assert dead.column("error").to_pylist() == [
        'field `id` = "four" cannot be converted to int64',
        'field `at` = "not a time" cannot be converted to timestamp',
    ]

    # Each file records its own schema (Arrow's, in the footer) and where its rows came from.
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options, skip_instance_cache=True)
    [path] = [p for p in fs.find(s3_prefix.removeprefix("s3://")) if p.endswith(".parquet") and "/topic=" in p
              and "_dead_letters" not in p]  # fmt: skip
    footer = pq.read_metadata(io.BytesIO(fs.cat_file(path)))
    meta = {k.decode(): v.decode() for k, v in footer.metadata.items() if k.startswith(b"kingest.")}
    assert meta == {
        "kingest.version": meta["kingest.version"], "kingest.kind": "data", "kingest.topic": topic,
        "kingest.partition": "0", "kingest.first_offset": "0", "kingest.last_offset": "2", "kingest.rows": "3",
        "kingest.pipeline": doc["pipeline"], "kingest.semantics": "at-least-once",
    }  # fmt: skip
    assert b"ARROW:schema" in footer.metadata
    assert footer.schema.to_arrow_schema().field("at").type == utc


def test_inferred_schema_evolves_new_fields_and_widening_readable_as_one_dataset(
    tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    produce(topic, [json.dumps({"id": i, "amount": i}).encode() for i in range(5)], partition=0)
    produce(topic, [json.dumps({"id": i, "amount": i + 0.5, "coupon": f"c{i}"}).encode() for i in range(5, 10)],
            partition=0)  # fmt: skip
    lake = tmp_path / "lake"
    small_batch_config(tmp_path / "kingest.yaml", topic=topic, lake=str(lake), bootstrap=kafka_bootstrap)
    result = kingest("run", "-c", str(tmp_path / "kingest.yaml"), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    files = sorted(lake.rglob("*.parquet"))
    assert len(files) == 2  # max_records 5: one file per batch
    first, second = (pq.read_schema(f) for f in files)
    assert "coupon" not in first.names and first.field("amount").type == pa.int64()
    assert second.field("coupon").type == pa.string() and second.field("amount").type == pa.float64()

    # Readers that unify the files' schemas see one table (docs/configuration.md shows how).
    unified = pa.unify_schemas([first, second], promote_options="permissive")
    table = dataset(str(lake), schema=unified).to_table().sort_by("kafka_offset")
    assert table.column("coupon").to_pylist() == [None] * 5 + [f"c{i}" for i in range(5, 10)]
    assert table.column("amount").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.5, 6.5, 7.5, 8.5, 9.5]
    rows = duckdb.sql(
        f"select count(*), count(coupon), sum(amount) from read_parquet('{lake}/**/*.parquet', union_by_name=true)"
    ).fetchall()
    assert rows == [(10, 5, 10 + 37.5)]


def test_on_error_fail_names_the_field_that_cannot_be_coerced_and_commits_nothing_past_it(
    tmp_path, kafka_bootstrap, topic_factory, produce
):
    topic = topic_factory(partitions=1)
    produce(topic, [b'{"n": 0}', b'{"n": "1"}', b'{"n": 2}', b'{"n": "three"}', b'{"n": 4}'], partition=0)
    config = tmp_path / "kingest.yaml"
    doc = small_batch_config(config, topic=topic, lake=str(tmp_path / "lake"), bootstrap=kafka_bootstrap,
                       records={"schema": {"n": "int64"}})  # fmt: skip
    result = kingest("run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 1
    assert f'record {topic}[0]@3 cannot be decoded: field `n` = "three" cannot be converted to int64' in result.stderr
    assert "records.on_error: skip" in result.stderr and "Traceback" not in result.stderr
    data = dataset(str(tmp_path / "lake")).to_table(columns=["kafka_offset", "n"])
    assert sorted(data.to_pylist(), key=lambda r: r["kafka_offset"]) == [{"kafka_offset": i, "n": i} for i in range(3)]
    assert committed(kafka_bootstrap, f"kingest-{doc['pipeline']}", topic, 1) == {0: 3}
