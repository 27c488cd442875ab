"""The auditor's arithmetic and its reading of the lake, without services.

`audit_partition` is checked against a plain-Python reference on random inputs (hypothesis); `audit` is run on
lakes written by the real pipeline from the in-memory source, with the Kafka side (kafka_admin) answered from
the same in-memory topic. The same behaviours against the real broker and S3 are in
tests/integration/test_verify.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections import Counter
from contextlib import contextmanager

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kingest import config as config_module
from kingest import kafka_admin
from kingest import verify as verify_module
from kingest.batcher import Record
from kingest.cli import app
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource
from kingest.verify import Offsets, audit, audit_partition, render

TP = ("orders", 0)


def offsets(values) -> pa.Array:
    return pa.array(list(values), pa.int64())


# ---------------------------------------------------------------------------------------------- arithmetic


def test_gaps_in_kafka_are_not_missing_and_ranges_span_them():
    # Kafka holds 0-99 and 101-199 (a transaction marker at 100); the lake lacks 40-59 and 95-110.
    expected = [*range(100), *range(101, 200)]
    lake = [o for o in expected if not (40 <= o <= 59 or 95 <= o <= 110)]
    result = audit_partition(TP, 0, 200, 200, offsets(expected), offsets(lake))
    assert result.missing == Offsets(35, [(40, 59), (95, 110)])  # 20 + 15 (100 is not a record)
    assert result.duplicated.count == result.unexpected.count == 0
    assert (result.expected, result.audited, result.rows, result.not_consumed) == (199, 199, 164, 0)


def test_only_offsets_below_the_committed_position_are_missing():
    result = audit_partition(TP, 0, 1000, 600, offsets(range(1000)), offsets(range(400)))
    assert result.missing == Offsets(200, [(400, 599)])
    assert result.not_consumed == 400  # 600-999: lag, not loss
    nothing_saved = audit_partition(TP, 0, 1000, None, offsets(range(1000)), offsets(()))
    assert nothing_saved.missing.count == 0 and nothing_saved.not_consumed == 1000


def test_duplicates_unexpected_and_expired():
    expected = [o for o in range(50, 300) if o not in (120, 121)]  # retention at 50; aborted 120-121
    lake = [*range(0, 300), *range(200, 210), 250, 250, 120, 121]
    result = audit_partition(TP, 50, 300, 300, offsets(expected), offsets(lake))
    assert result.duplicated == Offsets(13, [(120, 121), (200, 209), (250, 250)])
    assert result.extra_rows == 14
    assert result.unexpected == Offsets(2, [(120, 121)])
    assert result.expired == 50
    assert result.missing.count == 0


def test_offsets_past_the_log_end_are_unexpected():
    result = audit_partition(TP, 0, 10, 10, offsets(range(10)), offsets(range(15)))
    assert result.unexpected == Offsets(5, [(10, 14)])


def test_latest_reset_audits_from_the_first_offset_in_the_lake():
    result = audit_partition(TP, 0, 100, 100, offsets(range(100)), offsets(range(70, 100)), from_lake_start=True)
    assert result.audited_from == 70 and result.missing.count == 0
    result = audit_partition(TP, 0, 100, 100, offsets(range(100)), offsets(range(70, 100)))
    assert result.missing == Offsets(70, [(0, 69)])


def test_ranges_are_capped_but_counts_are_complete(monkeypatch):
    expected = range(0, 10_000)
    lake = range(0, 10_000, 2)  # every odd offset missing: 5000 ranges
    result = audit_partition(TP, 0, 10_000, 10_000, offsets(expected), offsets(lake))
    assert result.missing.count == 5000
    assert len(result.missing.ranges) == verify_module.RANGES_LIMIT and result.missing.truncated
    assert result.missing.ranges[:2] == [(1, 1), (3, 3)]


def _runs(values: list[int], universe: list[int]) -> list[tuple[int, int]]:
    """Reference: maximal runs of `values` over the sorted `universe`, by walking it."""
    wanted, out = set(values), []
    for i, o in enumerate(universe):
        if o in wanted:
            if out and universe[i - 1] == out[-1][1] and universe[i - 1] in wanted:
                out[-1] = (out[-1][0], o)
            else:
                out.append((o, o))
    return out


@settings(max_examples=100, deadline=None)
@given(
    kafka=st.lists(st.booleans(), min_size=0, max_size=120),
    copies=st.lists(st.integers(0, 3), min_size=0, max_size=140),
    log_start=st.integers(0, 20),
    committed=st.one_of(st.none(), st.integers(0, 140)),
)
def test_audit_matches_a_plain_python_reference(kafka, copies, log_start, committed):
    expected = [o for o, held in enumerate(kafka) if held and o >= log_start]
    lake = [o for o, n in enumerate(copies) for _ in range(n)]
    log_end = len(kafka)
    result = audit_partition(TP, log_start, log_end, committed, offsets(expected), offsets(lake))

    counts = Counter(lake)
    position = log_start if committed is None else committed
    owed = [o for o in expected if o < position]
    universe = sorted(set(expected) | set(lake))
    missing = [o for o in owed if o not in counts]
    duplicated = [o for o, n in counts.items() if n > 1]
    unexpected = [o for o in counts if o not in set(expected) and o >= log_start]
    assert result.missing == Offsets(len(missing), _runs(missing, owed))
    assert result.duplicated == Offsets(len(duplicated), _runs(duplicated, universe))
    assert result.unexpected == Offsets(len(unexpected), _runs(unexpected, universe))
    assert result.extra_rows == sum(n - 1 for n in counts.values() if n > 1)
    assert result.expired == sum(1 for o in counts if o < log_start)
    assert result.not_consumed == sum(1 for o in expected if o >= max(position, log_start))
    assert result.rows == len(lake)


# ---------------------------------------------------------------------------------------------- the lake side


def memory_topic(partitions: int = 3, records: int = 600, skip: tuple[int, ...] = ()) -> dict[str, list[list[Record]]]:
    """A topic whose offsets leave out `skip` (as transaction markers would)."""
    return {
        "orders": [
            [
                Record("orders", p, o, 1_700_000_000_000 + o, None, json.dumps({"id": o}).encode(), [])
                for o in range(records)
                if o not in skip
            ]
            for p in range(partitions)
        ]
    }


def make_config(url: str, semantics: str, on_error: str = "fail") -> config_module.Config:
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
records: {{format: json, on_error: {on_error}}}
lake: {{path: "{url}"}}
batch: {{max_records: 200}}
semantics: {semantics}
"""
    )


@pytest.fixture
def memory_kafka(monkeypatch):
    """Answer kafka_admin from an in-memory topic and group: {"topic": ..., "group": ...}."""
    state: dict = {}

    @contextmanager
    def inspection_consumer(config, **extra):
        yield None

    def log_offsets(consumer, tps):
        out = {}
        for t, p in tps:
            log = state["topic"][t][p]
            out[(t, p)] = (log[0].offset, log[-1].offset + 1) if log else (0, 0)
        return out

    def scan_offsets(consumer, bounds):
        return {
            tp: [r.offset for r in state["topic"][tp[0]][tp[1]] if b[0] <= r.offset < b[1]] for tp, b in bounds.items()
        }

    monkeypatch.setattr(kafka_admin, "inspection_consumer", inspection_consumer)
    monkeypatch.setattr(
        kafka_admin,
        "topic_partitions",
        lambda c, topics, where="": [(t, p) for t in topics for p in range(len(state["topic"][t]))],
    )
    monkeypatch.setattr(kafka_admin, "log_offsets", log_offsets)
    monkeypatch.setattr(kafka_admin, "scan_offsets", scan_offsets)
    monkeypatch.setattr(kafka_admin, "committed_offsets", lambda c, tps: {tp: state["group"].get(tp) for tp in tps})
    return state


def ingest(url: str, semantics: str, state: dict, on_error: str = "fail", topic=None, **topic_args) -> Lake:
    state["topic"], state["group"] = topic or memory_topic(**topic_args), {}
    config = make_config(url, semantics, on_error)
    Pipeline(config, source=MemorySource(state["topic"], state["group"]), until_caught_up=True).run()
    return Lake(url)


def data_files(lake: Lake, partition: int) -> list[str]:
    return sorted(p for p in lake.find(f"topic=orders/partition={partition}") if p.endswith(".parquet"))


@pytest.mark.parametrize("semantics", ["at-most-once", "at-least-once", "exactly-once"])
def test_a_complete_run_holds_and_marker_gaps_are_not_missing(semantics, memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    ingest(url, semantics, memory_kafka, skip=(100, 101, 350))
    report = audit(make_config(url, semantics))
    assert report.holds, report.violations
    assert [(p.expected, p.rows, p.missing.count, p.duplicated.count, p.not_consumed) for p in report.partitions] == [
        (597, 597, 0, 0, 0)
    ] * 3
    assert report.source == ("manifest" if semantics == "exactly-once" else "folder")


@pytest.mark.parametrize("semantics", ["at-most-once", "at-least-once"])
def test_folder_lake_deleted_and_copied_files(semantics, memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    lake = ingest(url, semantics, memory_kafka)
    files = data_files(lake, 1)
    assert len(files) == 3  # 0-199, 200-399, 400-599
    lake.delete([files[1]])
    data = lake.read(files[2])
    assert data is not None
    lake.put(files[2].replace(".parquet", "-copy.parquet"), data)

    report = audit(make_config(url, semantics))
    p1 = report.partitions[1]
    assert p1.missing == Offsets(200, [(200, 399)])
    assert p1.duplicated == Offsets(200, [(400, 599)])
    assert not report.holds  # at-most-once: the copy; at-least-once: the deletion
    rendered = " ".join(report.violations)
    assert ("200-399" in rendered) == (semantics == "at-least-once")
    assert ("400-599" in rendered) == (semantics == "at-most-once")


def test_exactly_once_reports_a_named_file_that_is_gone(memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    lake = ingest(url, "exactly-once", memory_kafka)
    gone = data_files(lake, 2)[0]
    lake.delete([gone])
    report = audit(make_config(url, "exactly-once"))
    assert report.missing_files == [gone]
    assert report.partitions[2].missing == Offsets(200, [(0, 199)])
    assert not report.holds
    assert any("named by the offsets manifest are gone" in v and gone in v for v in report.violations)


def test_exactly_once_reads_only_manifest_files_and_notes_orphans(memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    lake = ingest(url, "exactly-once", memory_kafka)
    named = data_files(lake, 0)[0]
    orphan = named.replace(".parquet", "-orphan.parquet")
    data = lake.read(named)
    assert data is not None
    lake.put(orphan, data)  # what a crash between write and manifest commit leaves, until recovery
    report = audit(make_config(url, "exactly-once"))
    assert report.holds
    assert report.partitions[0].duplicated.count == 0
    assert report.orphan_files == [orphan]
    assert any("not named by the offsets manifest" in n for n in report.notes)
    # The same lake read as a folder shows what a dataset reader sees: the orphan's rows twice.
    folder = audit(make_config(url, "at-least-once"))
    assert folder.partitions[0].duplicated == Offsets(200, [(0, 199)])


def test_exactly_once_committed_position_is_the_manifest_not_the_group(memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    lake = ingest(url, "exactly-once", memory_kafka)
    memory_kafka["group"].clear()  # Kafka's committed offsets are for lag tools only
    report = audit(make_config(url, "exactly-once"))
    assert [p.committed for p in report.partitions] == [600, 600, 600]
    assert ManifestStore(lake, "orders").load("orders", 0).next_offset == 600


def test_lag_is_reported_and_not_counted_as_missing(memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    ingest(url, "at-least-once", memory_kafka)
    memory_kafka["topic"] = memory_topic(records=900)  # 300 more per partition, not consumed yet
    report = audit(make_config(url, "at-least-once"))
    assert report.holds
    assert [p.not_consumed for p in report.partitions] == [300, 300, 300]
    assert any("has not consumed up to 900 yet (saved up to offset 600)" in n for n in report.notes)


def test_report_json_and_table(memory_kafka):
    url = f"memory://v-{uuid.uuid4().hex}"
    lake = ingest(url, "at-least-once", memory_kafka)
    lake.delete([data_files(lake, 0)[0]])
    report = audit(make_config(url, "at-least-once"))
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["holds"] is False
    assert doc["totals"]["missing"] == 200
    assert doc["partitions"][0]["missing"] == {"count": 200, "ranges": [[0, 199]], "ranges_truncated": False}

    from rich.console import Console

    console = Console(width=140, record=True, file=io.StringIO())
    console.print(render(report))
    text = console.export_text()
    assert "orders[0] missing: 0-199" in text
    assert "at-least-once VIOLATED" in text


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_dead_letters_are_delivered_and_skipped_records_missing(semantics, memory_kafka):
    topic = memory_topic()
    bad = topic["orders"][1][250]
    topic["orders"][1][250] = bad._replace(value=b"{not json")
    url = f"memory://v-{uuid.uuid4().hex}"
    ingest(url, semantics, memory_kafka, on_error="dead-letter", topic=topic)
    report = audit(make_config(url, semantics, "dead-letter"))
    assert report.holds, report.violations
    assert report.missing_files == []
    assert [(p.rows, p.dead_letters, p.missing.count) for p in report.partitions] == [
        (600, 0, 0),
        (599, 1, 0),
        (600, 0, 0),
    ]
    assert any("dead-letter folder" in n for n in report.notes)

    url = f"memory://v-{uuid.uuid4().hex}"
    ingest(url, semantics, memory_kafka, on_error="skip", topic=topic)
    report = audit(make_config(url, semantics, "skip"))
    assert report.partitions[1].missing == Offsets(1, [(250, 250)])
    assert not report.holds
    assert any("records.on_error is skip" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------- the command


def test_verify_exit_codes_and_json(memory_kafka, tmp_path, monkeypatch):
    lake_dir = tmp_path / "lake"
    ingest(str(lake_dir), "at-least-once", memory_kafka)
    config = tmp_path / "kingest.yaml"
    config.write_text(
        f"pipeline: orders\nkafka: {{bootstrap_servers: 'unused:9092', topics: [orders]}}\n"
        f"lake: {{path: '{lake_dir}'}}\nsemantics: at-least-once\n"
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", "-c", str(config), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["holds"] is True

    lake = Lake(str(lake_dir))
    lake.delete([data_files(lake, 0)[0]])
    broken = runner.invoke(app, ["verify", "-c", str(config)])
    assert broken.exit_code == 1
    assert "missing: 0-199" in broken.output
    # at-most-once allows what at-least-once does not
    allowed = runner.invoke(app, ["verify", "-c", str(config), "--semantics", "at-most-once"])
    assert allowed.exit_code == 0, allowed.output
    assert "at-most-once allows" in allowed.output


def test_verify_unreachable_broker_is_a_clear_error(tmp_path):
    config = tmp_path / "kingest.yaml"
    config.write_text(
        f"pipeline: orders\nkafka: {{bootstrap_servers: '127.0.0.1:1', topics: [orders], request_timeout_ms: 3000}}\n"
        f"lake: {{path: '{tmp_path / 'lake'}'}}\n"
    )
    # A real process: kafka-python leaves the sockets of a failed bootstrap for the garbage collector.
    result = subprocess.run(
        [sys.executable, "-m", "kingest", "verify", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no Kafka broker answered at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
