"""`kingest verify` catches what it should, on lakes written by `kingest run` against the real broker, on
local disk and on S3: a deleted committed file (exit 1, the exact missing range), a copied file (exit 1 where
duplicates break the guarantee, the exact duplicated range), a file the exactly-once manifest names but that
is gone, and lag that must not be taken for loss.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .support import (
    PARTITIONS,
    LakeView,
    crash_config,
    duplicates,
    folder_offsets,
    kingest,
    produce_evenly,
    run_until_caught_up,
    verify,
)

pytestmark = pytest.mark.integration

PER_PARTITION = 600


class LakeFiles(LakeView):
    """The lake's files, to damage (fsspec, not kingest's Lake)."""

    def data_files(self, partition: int) -> list[str]:
        """The partition's visible Parquet files, relative to the lake, in offset order."""
        root = self.fs._strip_protocol(self.root)
        rels = [p[len(root) + 1 :] for p in self.fs.find(root) if p.endswith(".parquet")]
        return sorted(
            r
            for r in rels
            if r.startswith("topic=") and f"/partition={partition}/" in r and not r.split("/")[-1].startswith(".")
        )

    def offset_range(self, rel: str) -> tuple[int, int, int]:
        with self.fs.open(f"{self.root}/{rel}", "rb") as handle:
            offsets = pq.read_table(handle, columns=["kafka_offset"]).column(0).to_pylist()
        assert offsets == list(range(offsets[0], offsets[-1] + 1))  # one contiguous run
        return offsets[0], offsets[-1], len(offsets)

    def delete(self, rel: str) -> None:
        self.fs.rm(f"{self.root}/{rel}")

    def copy(self, rel: str, suffix: str) -> str:
        target = rel.replace(".parquet", f"{suffix}.parquet")
        self.fs.copy(f"{self.root}/{rel}", f"{self.root}/{target}")
        return target


@pytest.fixture(params=["local", "s3"])
def lake_and_options(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "lake"), None
    return request.getfixturevalue("s3_prefix"), request.getfixturevalue("s3_storage_options")


def ingest(tmp_path, kafka_bootstrap, topic_factory, produce, lake, options, semantics) -> Path:
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, PER_PARTITION)
    config = crash_config(
        tmp_path / "kingest.yaml",
        topic=topic,
        lake=lake,
        semantics=semantics,
        bootstrap=kafka_bootstrap,
        storage_options=options,
    )
    done = run_until_caught_up(config)
    assert done.returncode == 0, done.stderr
    code, report = verify(config)
    assert code == 0, report["violations"]
    assert report["totals"]["rows"] == PARTITIONS * PER_PARTITION
    return config


def test_folder_lake_copied_then_deleted_file(tmp_path, kafka_bootstrap, topic_factory, produce, lake_and_options):
    lake, options = lake_and_options
    config = ingest(tmp_path, kafka_bootstrap, topic_factory, produce, lake, options, "at-least-once")
    files = LakeFiles(lake, options)

    # A copied file: duplicates, which at-least-once allows and at-most-once does not.
    copied = files.data_files(0)[-1]
    first, last, count = files.offset_range(copied)
    files.copy(copied, "-copy")
    code, report = verify(config)
    assert code == 0
    assert report["partitions"][0]["duplicated"] == {
        "count": count,
        "ranges": [[first, last]],
        "ranges_truncated": False,
    }
    assert report["partitions"][0]["extra_rows"] == count
    code, report = verify(config, "--semantics", "at-most-once")
    assert code == 1
    assert report["violations"] == [f"{report['partitions'][0]['topic']}[0]: {count} duplicated ({first}-{last})"]

    # A deleted file: missing, which at-least-once does not allow.
    deleted = files.data_files(2)[1]
    d_first, d_last, d_count = files.offset_range(deleted)
    files.delete(deleted)
    code, report = verify(config)
    assert code == 1
    part = report["partitions"][2]
    assert part["missing"] == {"count": d_count, "ranges": [[d_first, d_last]], "ranges_truncated": False}
    assert report["totals"]["missing"] == d_count
    # The same, for people: exit 1 and the range in the table's detail lines.
    text = kingest("verify", "-c", str(config))
    assert text.returncode == 1
    assert f"[2] missing: {d_first}-{d_last}" in text.stdout
    assert "at-least-once VIOLATED" in text.stdout


def test_exactly_once_named_file_gone_and_orphan(tmp_path, kafka_bootstrap, topic_factory, produce, lake_and_options):
    lake, options = lake_and_options
    config = ingest(tmp_path, kafka_bootstrap, topic_factory, produce, lake, options, "exactly-once")
    files = LakeFiles(lake, options)

    # A file in the folder that the manifest does not name: not part of the lake, but noted, since a reader of
    # the folder sees its rows.
    named = files.data_files(1)[0]
    first, last, count = files.offset_range(named)
    orphan = files.copy(named, "-orphan")
    code, report = verify(config)
    assert code == 0
    assert report["orphan_files"] == [orphan]
    assert report["totals"]["duplicated"] == 0
    assert len(duplicates(folder_offsets(lake, options)).get(1, [])) == count  # what the note warns about
    files.delete(orphan)

    # A file the manifest names, gone: its offsets are missing and the file is named.
    files.delete(named)
    code, report = verify(config)
    assert code == 1
    assert report["missing_files"] == [named]
    assert report["partitions"][1]["missing"] == {"count": count, "ranges": [[first, last]], "ranges_truncated": False}
    text = kingest("verify", "-c", str(config))
    assert text.returncode == 1
    assert "named by the offsets manifest are gone from the lake" in text.stdout
    assert "exactly-once VIOLATED" in text.stdout


@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_lag_is_not_loss(semantics, tmp_path, kafka_bootstrap, topic_factory, produce):
    lake = str(tmp_path / "lake")
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, 300)
    config = crash_config(
        tmp_path / "kingest.yaml", topic=topic, lake=lake, semantics=semantics, bootstrap=kafka_bootstrap
    )
    assert run_until_caught_up(config).returncode == 0
    produce_evenly(produce, topic, 50, start=300)  # produced after the run: not consumed yet

    code, report = verify(config)
    assert code == 0, report["violations"]
    for p in report["partitions"]:
        assert (p["committed"], p["log_end"], p["not_consumed"], p["missing"]["count"]) == (300, 350, 50, 0)
    assert any("has not consumed up to 350 yet (saved up to offset 300)" in n for n in report["notes"])


def test_verify_errors_are_clear(tmp_path, kafka_bootstrap, topic_factory, produce):
    missing_topic = crash_config(
        tmp_path / "missing.yaml",
        topic="no-such-topic-kingest",
        lake=str(tmp_path / "lake"),
        semantics="at-least-once",
        bootstrap=kafka_bootstrap,
    )
    done = kingest("verify", "-c", str(missing_topic))
    assert done.returncode == 2
    assert "topic no-such-topic-kingest not found" in done.stderr
    assert "Traceback" not in done.stderr

    lake = str(tmp_path / "lake2")
    config = ingest(tmp_path, kafka_bootstrap, topic_factory, produce, lake, None, "at-least-once")
    broken = LakeFiles(lake, None).data_files(0)[0]
    Path(lake, broken).write_bytes(b"not parquet")
    done = kingest("verify", "-c", str(config))
    assert done.returncode == 2
    assert "cannot read the offset columns of the lake" in done.stderr
    assert "Traceback" not in done.stderr
