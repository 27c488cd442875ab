"""`kingest status` against the real broker and the real S3 server: its offsets are the ones Kafka's own tools
report for the same group and topic, and what it says of the lake is what is in the lake.
(A run that is active, and the member it names: tests/integration/test_rewind.py, with the refusal.)
"""

from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient, TopicPartition

from kingest import config as config_module
from tests.unit.test_status import FIELDS  # the JSON field names users rely on, listed once

from .support import kingest
from .test_rewind import (
    PARTITIONS,
    folder_rows,
    group_of,
    lake_fs,
    lake_url,
    options,
    produce_all,
    rewind_config,
    tool_describe,
    tool_log_offsets,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("semantics, where", [("exactly-once", "s3"), ("at-least-once", "local")])
def test_status_offsets_are_kafkas_and_lake_figures_are_the_lakes(
    semantics, where, tmp_path, kafka_bootstrap, topic_factory, produce, s3_prefix, s3_storage_options
):
    topic = topic_factory(partitions=PARTITIONS)
    produce_all(produce, topic, n=60)
    url, so = lake_url(where, tmp_path, s3_prefix), options(where, s3_storage_options)
    config_path = rewind_config(
        tmp_path / "k.yaml", topic=topic, lake=url, semantics=semantics, bootstrap=kafka_bootstrap, storage_options=so
    )
    assert kingest("run", "-c", str(config_path), "--until-caught-up").returncode == 0
    produce_all(produce, topic, n=15, start=60)  # not consumed yet: 15 of lag per partition
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.delete_records({TopicPartition(topic, 2): 5})  # retention moved partition 2's log start
    admin.close()

    result = kingest("status", "-c", str(config_path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = {p["partition"]: p for p in doc["partitions"]}
    assert sorted(rows) == list(range(PARTITIONS)) and all(set(p) == FIELDS for p in doc["partitions"])

    # Offsets: what Kafka's consumer-groups and get-offsets tools report for the same group and topic.
    theirs = tool_describe(kafka_bootstrap, group_of(config_path))
    starts = tool_log_offsets(kafka_bootstrap, topic, "-2")
    assert starts == {0: 0, 1: 0, 2: 5}
    for p, row in rows.items():
        tool = theirs[(topic, p)]
        assert row["committed_offset"] == int(tool["CURRENT-OFFSET"]) == 60
        assert row["log_end_offset"] == int(tool["LOG-END-OFFSET"]) == 75
        assert row["log_start_offset"] == starts[p]
        assert row["lag"] == int(tool["LAG"]) == 15
        assert row["manifest_offset"] == (60 if semantics == "exactly-once" else None)
        assert (row["last_commit_at"] is not None) == (semantics == "exactly-once")
        assert row["assigned_to"] is None
    assert (doc["group"]["state"], doc["group"]["members"]) == ("Empty", [])
    assert doc["group"]["group_id"] == group_of(config_path)

    # The lake: files, rows and bytes per partition are what an independent listing and read find there.
    fs, root = lake_fs(url, so)
    sizes = {path: info["size"] for path, info in fs.find(root, detail=True).items() if path.endswith(".parquet")}
    for p, row in rows.items():
        mine = {path: size for path, size in sizes.items() if f"/partition={p}/" in path and "/_" not in path}
        assert row["files"] == len(mine) == 2  # 0-39, 40-59
        assert row["bytes"] == sum(mine.values())
        assert row["rows"] == sum(1 for r in folder_rows(url, so) if r["kafka_partition"] == p) == 60
    assert doc["totals"] == {
        "lag": 45,
        "files": 6,
        "rows": 180,
        "bytes": sum(r["bytes"] for r in rows.values()),
        "dead_letters": 0,
    }

    # The table for people says the same, and nothing secret is printed in either form.
    table = kingest("status", "-c", str(config_path))
    assert table.returncode == 0, table.stderr
    assert ": Empty, no active member: no " in table.stdout
    lines = [line for line in table.stdout.splitlines() if f"│ {topic} " in line]
    assert len(lines) == PARTITIONS and all(" 75 " in line and " 15 " in line for line in lines)
    secrets = config_module.load(config_path).secrets()
    assert (secrets != []) == (where == "s3")
    for output in (result.stdout, result.stderr, table.stdout, table.stderr):
        assert not any(secret in output for secret in secrets)


def test_status_on_s3_prints_names_as_they_are(tmp_path, kafka_bootstrap, topic_factory, s3_prefix, s3_storage_options):
    topic = topic_factory(partitions=1)
    config_path = rewind_config(
        tmp_path / "k.yaml",
        topic=topic,
        lake=s3_prefix,
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        storage_options=s3_storage_options,
    )
    result = kingest("status", "-c", str(config_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["group"]["group_id"] == group_of(config_path)
