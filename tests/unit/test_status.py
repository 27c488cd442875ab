"""`kingest status` without services: the figures it reports for lakes written by the real pipeline from the
in-memory source, with the Kafka side (kafka_admin) answered from the same in-memory topic and group. The same
behaviours against the real broker and S3 are in tests/integration/test_status.py.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Any

import pyarrow.compute as pc
import pytest
from rich.console import Console
from typer.testing import CliRunner

from kingest import config as config_module
from kingest import kafka_admin
from kingest.batcher import Record
from kingest.cli import app
from kingest.errors import SetupError, TopicNotFound
from kingest.kafka_admin import GroupInfo, GroupMember
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.reader import read_offsets, visible_files
from kingest.sources import MemorySource
from kingest.status import collect_status, render

FIELDS = {
    "topic",
    "partition",
    "log_start_offset",
    "log_end_offset",
    "committed_offset",
    "manifest_offset",
    "lag",
    "files",
    "rows",
    "bytes",
    "dead_letters",
    "last_commit_at",
    "assigned_to",
}
BASE_TS = 1_700_000_000_000


def memory_topic(partitions: int = 3, records: int = 100, start: int = 0) -> list[list[Record]]:
    """Partition p holds offsets start..start+records-1; record o has the timestamp BASE_TS + o seconds."""
    return [
        [
            Record("orders", p, o, BASE_TS + o * 1000, None, json.dumps({"id": o, "p": p}).encode(), [])
            for o in range(start, start + records)
        ]
        for p in range(partitions)
    ]


def make_config(url: str, semantics: str, max_records: int = 40, extra: str = "") -> config_module.Config:
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
lake: {{path: "{url}"{extra}}}
batch: {{max_records: {max_records}}}
semantics: {semantics}
"""
    )


@pytest.fixture
def fake_kafka(monkeypatch) -> dict[str, Any]:
    return install_fake_kafka(monkeypatch)


def install_fake_kafka(monkeypatch) -> dict[str, Any]:
    """Answer kafka_admin from an in-memory topic set and group: {"topics", "group", "members"}. Setting the
    group's offsets is refused while it has members, as the broker refuses it."""
    state: dict[str, Any] = {"topics": {"orders": memory_topic()}, "group": {}, "members": [], "set_calls": []}

    @contextmanager
    def inspection_consumer(config, **extra):
        yield None

    def topic_partitions(consumer, topics, where=""):
        out = []
        for t in topics:
            if t not in state["topics"]:
                raise TopicNotFound(f"topic {t} not found")
            out += [(t, p) for p in range(len(state["topics"][t]))]
        return out

    def log_offsets(consumer, tps):
        out = {}
        for t, p in tps:
            log = state["topics"][t][p]
            out[(t, p)] = (log[0].offset, log[-1].offset + 1) if log else (0, 0)
        return out

    def offsets_for_times(consumer, tps, timestamp_ms):
        return {
            (t, p): next((r.offset for r in state["topics"][t][p] if r.timestamp >= timestamp_ms), None) for t, p in tps
        }

    def scan_offsets(consumer, bounds, poll_timeout=1.0):
        return {
            tp: [r.offset for r in state["topics"][tp[0]][tp[1]] if b[0] <= r.offset < b[1]] for tp, b in bounds.items()
        }

    def describe_group(config):
        members = tuple(state["members"])
        return GroupInfo(config.kafka.group_id, "Stable" if members else "Empty", members)

    def set_group_offsets(config, offsets):
        if state["members"]:
            raise SetupError("Kafka refused to set the committed offsets (UnknownMemberIdError)")
        state["set_calls"].append(dict(offsets))
        state["group"].update(offsets)

    monkeypatch.setattr(kafka_admin, "inspection_consumer", inspection_consumer)
    monkeypatch.setattr(kafka_admin, "topic_partitions", topic_partitions)
    monkeypatch.setattr(kafka_admin, "log_offsets", log_offsets)
    monkeypatch.setattr(kafka_admin, "offsets_for_times", offsets_for_times)
    monkeypatch.setattr(kafka_admin, "scan_offsets", scan_offsets)  # for kingest verify
    monkeypatch.setattr(kafka_admin, "describe_group", describe_group)
    monkeypatch.setattr(kafka_admin, "committed_offsets", lambda c, tps: {tp: state["group"].get(tp) for tp in tps})
    monkeypatch.setattr(kafka_admin, "set_group_offsets", set_group_offsets)
    return state


def ingest(config: config_module.Config, state: dict[str, Any]) -> None:
    Pipeline(config, source=MemorySource(state["topics"], state["group"]), until_caught_up=True).run()


def new_url() -> str:
    return f"memory://status-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------- figures


def test_exactly_once_figures_come_from_the_manifest(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    fake_kafka["topics"]["orders"] = memory_topic(records=130)  # 30 more per partition, not consumed yet
    fake_kafka["group"][("orders", 2)] = 7  # the group's offsets are informational: reported, not used

    report = collect_status(config)
    lake = Lake(config.lake.path)
    states = ManifestStore(lake, "orders").load_many([("orders", p) for p in range(3)])
    assert [p.partition for p in report.partitions] == [0, 1, 2]
    for row in report.partitions:
        state = states[("orders", row.partition)]
        assert (row.log_start_offset, row.log_end_offset) == (0, 130)
        assert row.manifest_offset == state.next_offset == 100
        assert row.lag == 30  # behind the manifest, whatever the group says
        assert (row.files, row.rows, row.bytes) == (3, 100, state.bytes)
        assert row.bytes == sum(
            size for path, size in visible_files(lake).items() if f"partition={row.partition}/" in path
        )
        assert row.last_commit_at == state.committed_at is not None
        assert row.assigned_to is None
    assert [p.committed_offset for p in report.partitions] == [100, 100, 7]
    doc = json.loads(json.dumps(report.to_json()))
    assert all(set(p) == FIELDS for p in doc["partitions"])
    assert doc["group"] == {"group_id": "kingest-orders", "state": "Empty", "members": []}
    assert doc["totals"] == {
        "lag": 90,
        "files": 9,
        "rows": 300,
        "bytes": sum(p.bytes for p in report.partitions),
        "dead_letters": 0,
    }


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_dead_letters_are_counted_apart_from_the_data(semantics, fake_kafka):
    def value(p: int, o: int) -> bytes:
        return b"not json" if o % 10 == 3 else json.dumps({"id": o}).encode()

    fake_kafka["topics"]["orders"] = [
        [Record("orders", p, o, BASE_TS + o, None, value(p, o), []) for o in range(50)] for p in range(3)
    ]
    config = make_config(new_url(), semantics, max_records=1000, extra=", storage_options: {}")
    config = config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
records: {{on_error: dead-letter}}
lake: {{path: "{config.lake.path}"}}
batch: {{max_records: 1000}}
semantics: {semantics}
"""
    )
    ingest(config, fake_kafka)
    report = collect_status(config)
    for row in report.partitions:
        assert (row.files, row.rows, row.dead_letters) == (1, 45, 5)
    assert report.to_json()["totals"]["dead_letters"] == 15
    printed = Console(width=200, record=True)
    for part in render(report):
        printed.print(part)
    assert "dead letters" in printed.export_text()


@pytest.mark.parametrize("semantics", ["at-least-once", "at-most-once"])
def test_group_semantics_figures_come_from_the_group_and_the_folder(semantics, fake_kafka):
    config = make_config(new_url(), semantics)
    ingest(config, fake_kafka)
    fake_kafka["group"][("orders", 1)] = 60  # as if rewound: the lag counts from the group's offset
    del fake_kafka["group"][("orders", 2)]  # never committed: no position, no lag

    report = collect_status(config)
    rows = {p.partition: p for p in report.partitions}
    assert [rows[p].committed_offset for p in range(3)] == [100, 60, None]
    assert [rows[p].lag for p in range(3)] == [0, 40, None]
    assert all(p.manifest_offset is None and p.last_commit_at is None for p in report.partitions)
    lake = Lake(config.lake.path)
    offsets = read_offsets(lake, visible_files(lake))
    for p in range(3):
        in_folder = [f for f in visible_files(lake) if f"partition={p}/" in f]
        assert rows[p].files == len(in_folder) == 3
        assert rows[p].rows == pc.sum(pc.equal(offsets.column("kafka_partition"), p)).as_py() == 100
        assert rows[p].bytes == sum(visible_files(lake)[f] for f in in_folder)


def test_status_changes_nothing_and_works_on_an_empty_lake(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    report = collect_status(config)  # nothing ingested yet: no manifest, no folder
    assert [(p.manifest_offset, p.lag, p.files, p.rows, p.last_commit_at) for p in report.partitions] == [
        (None, None, 0, 0, None)
    ] * 3
    assert Lake(config.lake.path).find() == {}


def test_members_are_reported_with_their_partitions(fake_kafka):
    config = make_config(new_url(), "at-least-once")
    ingest(config, fake_kafka)
    fake_kafka["members"] = [
        GroupMember("kingest-1-abc", "kingest", "10.0.0.5", None, (("orders", 0), ("orders", 2))),
        GroupMember("kingest-2-def", "kingest-b", "10.0.0.6", "static-1", (("orders", 1),)),
    ]
    report = collect_status(config)
    assert report.active
    assert [p.assigned_to for p in report.partitions] == ["kingest@10.0.0.5", "kingest-b@10.0.0.6", "kingest@10.0.0.5"]
    doc = report.to_json()
    assert doc["group"]["state"] == "Stable"
    assert doc["group"]["members"][0] == {
        "member_id": "kingest-1-abc",
        "client_id": "kingest",
        "host": "10.0.0.5",
        "group_instance_id": None,
        "partitions": [{"topic": "orders", "partition": 0}, {"topic": "orders", "partition": 2}],
    }
    console = Console(width=200, record=True)
    for part in render(report):
        console.print(part)
    text = console.export_text()
    assert "2 member(s): a `kingest run` is active" in text
    assert "orders[0,2]" in text and "kingest-b@10.0.0.6" in text
    assert report.store_column is None  # the group holds the position: no store column, no last commit
    assert "manifest" not in text and "last commit" not in text


def test_cli_json_table_and_no_secret(fake_kafka, tmp_path, monkeypatch):
    secret = "s3cr3t-" + uuid.uuid4().hex
    config_path = tmp_path / "kingest.yaml"
    url = new_url()
    config_path.write_text(
        f"""
pipeline: orders
kafka:
  bootstrap_servers: "unused:9092"
  topics: [orders]
  security_protocol: SASL_PLAINTEXT
  sasl_mechanism: PLAIN
  sasl_plain_username: kingest
  sasl_plain_password: {secret}
lake:
  path: "{url}"
  storage_options: {{secret: {secret}}}
batch: {{max_records: 40}}
semantics: exactly-once
"""
    )
    ingest(make_config(url, "exactly-once"), fake_kafka)
    runner = CliRunner()
    as_json = runner.invoke(app, ["status", "-c", str(config_path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert [p["manifest_offset"] for p in doc["partitions"]] == [100, 100, 100]
    table = runner.invoke(app, ["status", "-c", str(config_path)])
    assert table.exit_code == 0, table.output
    assert "manifest" in table.stdout and "orders" in table.stdout and "no active member" in table.stdout
    for result in (as_json, table):
        assert secret not in result.output


def test_cli_unknown_topic_is_a_clear_error(fake_kafka, tmp_path):
    config_path = tmp_path / "kingest.yaml"
    config_path.write_text(
        f'pipeline: x\nkafka: {{bootstrap_servers: "unused:9092", topics: [nope]}}\nlake: {{path: "{new_url()}"}}\n'
    )
    result = CliRunner().invoke(app, ["status", "-c", str(config_path)])
    assert result.exit_code == 2
    assert "Error: topic nope not found" in result.output
    assert "Traceback" not in result.output


def test_status_shows_what_gc_would_reclaim(fake_kafka):
    config = make_config(new_url(), "exactly-once")
    ingest(config, fake_kafka)
    lake = Lake(config.lake.path)
    store = ManifestStore(lake, "orders")
    state = store.load("orders", 0)
    orphan = "topic=orders/partition=0/orders-0-00000000000000000000-00000000000000000009-dead-1.parquet"
    store.write_pending("orders", 0, "w-dead", [orphan], version=state.version)  # settled: never committable
    lake.put(orphan, b"x" * 1000)
    report = collect_status(config)
    gc = report.to_json()["gc"]
    # young (the default retention is 7 days): reclaimable later, not now; the pipeline's own settled records too
    assert gc["files"] == 0 and gc["later_files"] >= 2 and gc["later_bytes"] >= 1000
    text = "".join(str(part) for part in render(report) if not hasattr(part, "columns"))
    assert "once older than 7d" in text
