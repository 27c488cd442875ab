"""`kingest rewind` without services: plans, the exactly-once manifest rewind and its crash safety, the group
rewind of the other semantics, refusals and errors, on lakes written by the real pipeline from the in-memory
source (Kafka answered by the in-memory fake of tests/unit/test_status.py). Against the real broker and S3,
with real SIGKILLs: tests/integration/test_rewind.py.
"""

from __future__ import annotations

import io
from collections import Counter

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kingest import crash
from kingest.batcher import Record
from kingest.cli import app
from kingest.errors import ManifestConflict
from kingest.kafka_admin import GroupMember
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.reader import read_offsets, visible_files
from kingest.rewind import BadTarget, GroupActive, RewindConflict, Target, apply_rewind, parse_timestamp, plan_rewind
from kingest.verify import audit

from .test_status import BASE_TS, ingest, install_fake_kafka, make_config, memory_topic, new_url


@pytest.fixture
def fake_kafka(monkeypatch):
    return install_fake_kafka(monkeypatch)


def folder_offsets(lake: Lake) -> dict[int, Counter[int]]:
    """What a reader of the dataset folder sees: per partition, how many times each offset is there."""
    table = read_offsets(lake, visible_files(lake))
    out: dict[int, Counter[int]] = {}
    for p, o in zip(table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True):
        out.setdefault(p, Counter())[o] += 1
    return out


def snapshot(lake: Lake) -> dict[str, bytes | None]:
    """Every object of the lake (data and state) with its content."""
    return {rel: lake.read(rel) for rel in sorted(lake.find())}


def files_of(lake: Lake, partition: int) -> list[str]:
    return sorted(f for f in visible_files(lake) if f"partition={partition}/" in f)


# ---------------------------------------------------------------------------------------------- targets


def test_exactly_one_target_is_required():
    with pytest.raises(BadTarget, match="give exactly one target"):
        Target.parse()
    with pytest.raises(BadTarget, match=r"\(got --to-offset, --to-latest\)"):
        Target.parse(to_offset=3, to_latest=True)
    assert Target.parse(to_offset=0) == Target("offset", offset=0, text="offset 0")
    assert Target.parse(to_earliest=True).kind == "earliest"


def test_timestamps_are_iso_8601_and_utc_unless_told():
    assert parse_timestamp("2023-11-14T22:13:20Z") == BASE_TS
    assert parse_timestamp("2023-11-14T22:13:20") == BASE_TS
    assert parse_timestamp("2023-11-14T23:13:20.500+01:00") == BASE_TS + 500
    with pytest.raises(BadTarget, match="is not an ISO 8601 date and time"):
        parse_timestamp("yesterday")


def test_targets_resolve_per_partition(fake_kafka):
    fake_kafka["topics"]["orders"][1] = memory_topic(records=80, start=20)[1]  # retention removed 0-19
    config = make_config(new_url(), "at-least-once")
    at = {p.partition: p.after for p in plan_rewind(config, Target.parse(to_earliest=True)).partitions}
    assert at == {0: 0, 1: 20, 2: 0}
    at = {p.partition: p.after for p in plan_rewind(config, Target.parse(to_latest=True)).partitions}
    assert at == {0: 100, 1: 100, 2: 100}
    # Record o has the timestamp BASE_TS + o seconds: 37.5 s after BASE_TS is offset 38.
    plan = plan_rewind(config, Target.parse(to_timestamp="2023-11-14T22:13:57.500Z"))
    assert [p.after for p in plan.partitions] == [38, 38, 38]
    late = plan_rewind(config, Target.parse(to_timestamp="2030-01-01T00:00:00Z"))
    assert [(p.after, p.note) for p in late.partitions] == [(100, "no record at or after that time: the log end")] * 3


def test_out_of_range_targets_name_the_valid_range(fake_kafka):
    fake_kafka["topics"]["orders"][1] = memory_topic(records=80, start=20)[1]
    config = make_config(new_url(), "exactly-once")
    with pytest.raises(BadTarget) as error:
        plan_rewind(config, Target.parse(to_offset=10))
    assert str(error.value) == (
        "offset 10 is outside the valid range (log start offset..log end offset) of orders[1] (20..100)"
    )
    with pytest.raises(
        BadTarget, match=r"offset 101 is outside .* orders\[0\] \(0\.\.100\), orders\[1\] \(20\.\.100\)"
    ):
        plan_rewind(config, Target.parse(to_offset=101))
    with pytest.raises(BadTarget, match=r"offset -1 is outside"):
        plan_rewind(config, Target.parse(to_offset=-1), partition=0)
    with pytest.raises(BadTarget, match="topic orders has no partition 3") as error:
        plan_rewind(config, Target.parse(to_offset=1), partition=3)
    assert error.value.hint == "Its partitions: 0, 1, 2."
    with pytest.raises(BadTarget, match="--topic payments is not a topic of pipeline orders"):
        plan_rewind(config, Target.parse(to_offset=1), topic="payments")


# ---------------------------------------------------------------------------------------------- exactly-once


def test_exactly_once_plan_names_the_files_and_changes_nothing(fake_kafka):
    config = make_config(new_url(), "exactly-once")  # files of 40 records: 0-39, 40-79, 80-99
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    before = snapshot(lake)
    group_before = dict(fake_kafka["group"])

    plan = plan_rewind(config, Target.parse(to_offset=50), partition=1)
    assert [(p.partition, p.before, p.after) for p in plan.partitions] == [(1, 100, 50)]
    [p1] = plan.partitions
    assert [(f.first_offset, f.last_offset) for f in p1.drop] == [(80, 99)]
    assert [(f.first_offset, f.last_offset) for f in p1.rewrite] == [(40, 79)]
    text = "\n".join(plan.describe())
    assert "orders[1]: manifest offset 100 -> 50 (valid 0..100)" in text
    assert "drops 1 file(s) wholly at or after offset 50 from the lake:" in text
    assert "rewrites 1 file(s) straddling offset 50 to keep only the offsets below it:" in text
    assert p1.drop[0].path in text and p1.rewrite[0].path in text

    assert snapshot(lake) == before
    assert fake_kafka["group"] == group_before


def test_exactly_once_rewind_retracts_and_the_replay_writes_each_offset_once(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    store = ManifestStore(lake, "orders")
    old = {p: files_of(lake, p) for p in range(3)}
    straddling = old[0][1]  # 40-79
    original = pq.read_table(lake.full(straddling), filesystem=lake.fs)

    plan = plan_rewind(config, Target.parse(to_offset=50))
    result = apply_rewind(config, plan)
    assert sorted(result.rewound) == [("orders", p) for p in range(3)]
    assert fake_kafka["set_calls"] == [{("orders", p): 50 for p in range(3)}]  # the group follows, for lag tools

    # The retraction: 0-49 once each, nothing at or after 50, in the manifest and in the folder alike.
    seen = folder_offsets(lake)
    for p in range(3):
        assert seen[p] == Counter(range(50))
        state = store.load("orders", p)
        assert state.next_offset == 50
        assert state.history[-1]["previous_next_offset"] == 100 and state.history[-1]["next_offset"] == 50
        assert sorted(state.files) == files_of(lake, p)
    # The straddling file was rewritten beside it, under a new name, with its rows below 50 unchanged.
    [rewritten] = [f for f in files_of(lake, 0) if f not in old[0]]
    assert rewritten.rsplit("/", 1)[0] == straddling.rsplit("/", 1)[0]
    assert "-00000000000000000040-00000000000000000049-" in rewritten
    kept = pq.read_table(lake.full(rewritten), filesystem=lake.fs)
    assert kept.equals(original.slice(0, 10).replace_schema_metadata(kept.schema.metadata))
    assert kept.schema.metadata[b"kingest.rewritten_from"] == straddling.encode()
    assert kept.schema.metadata[b"kingest.last_offset"] == b"49"
    assert not store.pending_files(store.load("orders", 0))  # nothing left for recovery

    # The replay: every offset once, and 50-99 from files the new run wrote.
    ingest(config, fake_kafka)
    seen = folder_offsets(lake)
    assert all(seen[p] == Counter(range(100)) for p in range(3))
    report = audit(config)
    assert report.holds, report.violations
    replayed = [f for f in files_of(lake, 2) if f not in old[2]]
    assert {int(f.rsplit("/", 1)[-1].split("-")[2]) for f in replayed} >= {50}
    assert all(int(f.rsplit("/", 1)[-1].split("-")[2]) >= 40 for f in replayed)


def test_exactly_once_rewind_at_a_file_boundary_rewrites_nothing(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    plan = plan_rewind(config, Target.parse(to_offset=40), partition=2)
    [p2] = plan.partitions
    assert (len(p2.drop), len(p2.rewrite)) == (2, 0)
    result = apply_rewind(config, plan)
    assert result.written == [] and len(result.deleted) == 2
    assert folder_offsets(Lake(config.lake.path))[2] == Counter(range(40))


def test_skipping_ahead_says_what_is_skipped(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    fake_kafka["topics"]["orders"] = memory_topic(records=150)
    plan = plan_rewind(config, Target.parse(to_latest=True), partition=0)
    assert "  skips offsets 100..149: they will not be written to the lake" in plan.describe()
    apply_rewind(config, plan)
    ingest(config, fake_kafka)
    seen = folder_offsets(Lake(config.lake.path))
    assert seen[0] == Counter(range(100)) and seen[1] == Counter(range(150))


class Killed(BaseException):
    """Stands for the SIGKILL at a crash point (tests/integration/test_rewind.py kills for real)."""


def kill_at(monkeypatch, point: str) -> None:
    def maybe_kill(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(crash, "point", maybe_kill)


@pytest.mark.parametrize("point", ["after-write", "mid-manifest", "after-commit"])
def test_an_interrupted_rewind_finishes_when_run_again(point, fake_kafka, monkeypatch):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    plan = plan_rewind(config, Target.parse(to_offset=50), partition=0)
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        apply_rewind(config, plan)
    monkeypatch.setattr(crash, "point", lambda name: None)
    store = ManifestStore(lake, "orders")
    assert store.load("orders", 0).next_offset == (50 if point == "after-commit" else 100)
    if point != "mid-manifest":  # what a reader of the folder sees until recovery: leftovers
        assert folder_offsets(lake)[0] not in (Counter(range(100)), Counter(range(50)))

    again = plan_rewind(config, Target.parse(to_offset=50), partition=0)
    [p0] = again.partitions
    assert p0.changes
    if point == "after-commit":  # done but for deleting the files it retracted
        assert (p0.before, p0.after, p0.drop, p0.rewrite, len(p0.leftovers)) == (50, 50, [], [], 2)
        assert "deletes 2 uncommitted file(s) left by an interrupted writer" in "\n".join(again.describe())
    apply_rewind(config, again)
    assert folder_offsets(lake)[0] == Counter(range(50))
    assert not store.pending_files(store.load("orders", 0))
    ingest(config, fake_kafka)
    assert folder_offsets(lake)[0] == Counter(range(100))
    assert audit(config).holds


def test_after_its_commit_an_interrupted_rewind_is_recovered_by_the_next_run(fake_kafka, monkeypatch):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    kill_at(monkeypatch, "after-commit")
    with pytest.raises(Killed):
        apply_rewind(config, plan_rewind(config, Target.parse(to_offset=50), partition=0))
    monkeypatch.setattr(crash, "point", lambda name: None)
    # The run has offsets 50-99 to consume: it claims the partition, and the claim's recovery deletes the files
    # the rewind retracted but had not deleted yet.
    ingest(config, fake_kafka)
    assert folder_offsets(lake)[0] == Counter(range(100))
    assert audit(config).holds


def test_a_writer_committing_since_the_plan_stops_the_rewind_cleanly(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    plan = plan_rewind(config, Target.parse(to_offset=50))
    ManifestStore(lake, "orders").claim("orders", 1, "another-writer")  # a run started meanwhile
    before = snapshot(lake)

    with pytest.raises(RewindConflict, match=r"orders\[1\]: the offsets manifest changed since the plan") as error:
        apply_rewind(config, plan)
    assert "Partitions rewound: orders[0]" in str(error.value)
    after = snapshot(lake)
    # orders[0] was rewound; of orders[1] nothing remains: no rewritten file, no pending record.
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all("partition=0" in k for k in changed)
    assert folder_offsets(lake)[1] == Counter(range(100))


def test_the_conflict_itself_is_what_fences(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    store = ManifestStore(lake, "orders")
    state = store.load("orders", 0)
    store.claim("orders", 0, "someone")
    with pytest.raises(ManifestConflict):
        store.rewind(state, owner="rewind-x", next_offset=10)
    assert store.load("orders", 0).next_offset == 100


# ---------------------------------------------------------------------------------------------- group semantics


@pytest.mark.parametrize("semantics", ["at-least-once", "at-most-once"])
def test_group_rewind_says_the_replay_duplicates_and_does(semantics, fake_kafka):
    config = make_config(new_url(), semantics)
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    before = snapshot(lake)
    plan = plan_rewind(config, Target.parse(to_offset=60), partition=1)
    [p1] = plan.partitions
    assert (p1.before, p1.after) == (100, 60)
    assert [(f.first_offset, f.last_offset) for f in p1.replayed] == [(40, 79), (80, 99)]
    text = "\n".join(plan.describe())
    assert "orders[1]: group offset 100 -> 60 (valid 0..100)" in text
    assert "will be DUPLICATED" in text and all(f.path in text for f in p1.replayed)

    apply_rewind(config, plan)
    assert snapshot(lake) == before  # no file touched
    assert fake_kafka["group"][("orders", 1)] == 60
    ingest(config, fake_kafka)
    seen = folder_offsets(lake)
    assert seen[1] == Counter(range(100)) + Counter(range(60, 100))
    assert seen[0] == seen[2] == Counter(range(100))


# ---------------------------------------------------------------------------------------------- refusals, CLI


def test_active_members_are_refused_by_name(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    fake_kafka["members"] = [GroupMember("kingest-77", "kingest", "10.1.2.3", None, (("orders", 0),))]
    with pytest.raises(GroupActive) as error:
        plan_rewind(config, Target.parse(to_offset=5))
    assert "client kingest on 10.1.2.3 (member kingest-77)" in str(error.value)
    assert "Stop every `kingest run`" in (error.value.hint or "")

    # A run that starts after the plan is caught before anything changes.
    fake_kafka["members"] = []
    plan = plan_rewind(config, Target.parse(to_offset=5))
    fake_kafka["members"] = [GroupMember("kingest-78", "kingest", "10.1.2.4", None, ())]
    before = snapshot(Lake(config.lake.path))
    with pytest.raises(GroupActive, match="10.1.2.4"):
        apply_rewind(config, plan)
    assert snapshot(Lake(config.lake.path)) == before


def write_config(tmp_path, url: str, semantics: str = "exactly-once"):
    path = tmp_path / "kingest.yaml"
    path.write_text(
        f'pipeline: orders\nkafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}\n'
        f'lake: {{path: "{url}"}}\nbatch: {{max_records: 40}}\nsemantics: {semantics}\n'
    )
    return str(path)


def test_cli_dry_run_confirmation_and_errors(fake_kafka, tmp_path):
    url = new_url()
    ingest(make_config(url, "exactly-once"), fake_kafka)
    config = write_config(tmp_path, url)
    lake = Lake(url)
    before = snapshot(lake)
    runner = CliRunner()

    dry = runner.invoke(app, ["rewind", "-c", config, "--to-offset", "50", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "orders[0]: manifest offset 100 -> 50" in dry.stdout and "dry run: nothing was changed." in dry.stdout
    declined = runner.invoke(app, ["rewind", "-c", config, "--to-offset", "50"], input="n\n")
    assert declined.exit_code == 1 and "Apply this rewind? [y/N]" in declined.output
    assert snapshot(lake) == before

    bad = runner.invoke(app, ["rewind", "-c", config, "--to-offset", "500", "--yes"])
    assert bad.exit_code == 2
    assert bad.output.startswith("Error: offset 500 is outside the valid range")
    assert "Traceback" not in bad.output
    none = runner.invoke(app, ["rewind", "-c", config])
    assert none.exit_code == 2 and "give exactly one target" in none.output
    assert snapshot(lake) == before

    done = runner.invoke(app, ["rewind", "-c", config, "--to-offset", "50"], input="y\n")
    assert done.exit_code == 0, done.output
    assert "rewound 3 partition(s); 3 file(s) rewritten, 6 file(s) deleted from the lake." in done.stdout
    again = runner.invoke(app, ["rewind", "-c", config, "--to-offset", "50", "--yes"])
    assert again.exit_code == 0 and "nothing to change." in again.stdout


def test_cli_refusal_names_the_member(fake_kafka, tmp_path):
    url = new_url()
    fake_kafka["members"] = [GroupMember("kingest-9", "kingest", "192.0.2.7", None, (("orders", 0),))]
    result = CliRunner().invoke(app, ["rewind", "-c", write_config(tmp_path, url), "--to-earliest", "--yes"])
    assert result.exit_code == 2
    assert "consumer group kingest-orders has 1 active member(s) (Stable): client kingest on 192.0.2.7" in result.output


def test_exactly_once_rewind_keeps_a_time_partitioned_layout(fake_kafka):
    # Ten minutes between records: 100 records cross midnight, so a batch makes a file per date folder.
    fake_kafka["topics"]["orders"] = [
        [Record("orders", p, o, BASE_TS + o * 600_000, None, b'{"id": %d}' % o, []) for o in range(100)]
        for p in range(3)
    ]
    config = make_config(new_url(), "exactly-once", extra=", partition_by: [date]")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    before = set(visible_files(lake))
    straddling = {f.path for f in plan_rewind(config, Target.parse(to_offset=50)).partitions[0].rewrite}
    assert len(straddling) == 1 and "/date=" in next(iter(straddling))

    apply_rewind(config, plan_rewind(config, Target.parse(to_offset=50)))
    assert folder_offsets(lake) == {p: Counter(range(50)) for p in range(3)}
    [rewritten] = [f for f in visible_files(lake) if f not in before and "orders-0-" in f]
    assert rewritten.rsplit("/", 1)[0] == next(iter(straddling)).rsplit("/", 1)[0]  # the same date folder
    ingest(config, fake_kafka)
    assert folder_offsets(lake) == {p: Counter(range(100)) for p in range(3)}
    table = ds.dataset(lake.full(""), filesystem=lake.fs, format="parquet", partitioning="hive").to_table()
    dates = pc.strftime(table.column("kafka_timestamp"), format="%Y-%m-%d")
    assert pc.all(pc.equal(dates, table.column("date").cast("string"))).as_py()  # each row in its date's folder


def test_a_straddling_dead_letter_file_stays_a_dead_letter_file(fake_kafka):
    fake_kafka["topics"]["orders"] = [
        [
            Record("orders", 0, o, BASE_TS + o, None, b"not json" if o % 10 == 3 else b'{"id": %d}' % o, [])
            for o in range(100)
        ]
    ]
    base = make_config(new_url(), "exactly-once", max_records=1000)
    from kingest import config as config_module

    config = config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
records: {{on_error: dead-letter}}
lake: {{path: "{base.lake.path}"}}
batch: {{max_records: 1000}}
semantics: exactly-once
"""
    )
    ingest(config, fake_kafka)
    apply_rewind(config, plan_rewind(config, Target.parse(to_offset=50)))
    state = ManifestStore(Lake(config.lake.path), "orders").load("orders", 0)
    dead = [e for e in state.files.values() if e.get("kind") == "dead-letter"]
    assert [(e["first_offset"], e["last_offset"], e["rows"]) for e in dead] == [(3, 43, 5)]
    assert all(e["path"].startswith("_dead_letters/") for e in dead)
    # The rewritten file's own footer says so too (what `kingest verify` and a reader of the file see).
    lake = Lake(config.lake.path)
    [footer] = [pq.read_metadata(io.BytesIO(lake.read(e["path"]) or b"")).metadata for e in dead]
    assert footer[b"kingest.kind"] == b"dead-letter"
