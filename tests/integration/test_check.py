"""`kingest check` against the real broker and S3 server: one line per check, exit 0 only when all pass; the
probe object is removed; a store without exclusive create is refused for exactly-once. And `kingest init`
writes a config that passes `check` as written once pointed at real services."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import kafka_client

from .support import kingest, write_config

pytestmark = pytest.mark.integration


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``{check name: its line}`` for the lines that start with a mark."""
    out = {}
    for line in result.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ ", "! "):
            name = line[2:].split(":", 1)[0]
            out[name] = line
    return out


@pytest.mark.parametrize("store", ["local", "s3"])
def test_everything_passes_and_the_probe_object_is_removed(store, tmp_path, request, kafka_bootstrap, topic_factory):
    topics = [topic_factory(partitions=2), topic_factory(partitions=1)]
    if store == "s3":
        lake, options = request.getfixturevalue("s3_prefix"), request.getfixturevalue("s3_storage_options")
    else:
        lake, options = str(tmp_path / "lake"), {}
    config = write_config(
        tmp_path / "k.yaml", bootstrap=kafka_bootstrap, kafka={"topics": topics}, lake=lake, semantics="exactly-once",
        storage_options=options,
    )  # fmt: skip
    result = kingest("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    got = lines(result)
    client = ["kafka client"] if kafka_client() == "confluent" else []  # librdkafka accepts the settings
    assert list(got) == ["config", *client, "kafka", f"topic {topics[0]}", f"topic {topics[1]}", "lake",
                         "exclusive create", "offsets manifest"]  # fmt: skip
    assert all(line.startswith("✓ ") for line in got.values())
    if client:
        assert "accepts the consumer settings" in got["kafka client"]
    assert got[f"topic {topics[0]}"].endswith("exists, 2 partitions")
    assert "exactly-once is safe" in got["exclusive create"]
    assert "Traceback" not in result.stderr
    if store == "s3":
        import fsspec

        fs = fsspec.filesystem("s3", **options, skip_instance_cache=True)
        found = fs.find(lake.removeprefix("s3://"), detail=True)
        left = [name for name, info in found.items() if info["type"] == "file"]  # SeaweedFS keeps empty folders
    else:
        left = [str(p) for p in Path(lake).rglob("*") if p.is_file()]
    assert left == []  # the probe object was written and removed


def test_each_failing_check_is_reported_and_the_others_still_run(tmp_path, kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=1)
    config = write_config(
        tmp_path / "k.yaml", bootstrap=kafka_bootstrap, kafka={"topics": [topic, "kingest-no-such-topic"]},
        lake=str(tmp_path / "lake"), semantics="at-least-once",
    )  # fmt: skip
    result = kingest("check", "-c", str(config))
    assert result.returncode == 2
    got = lines(result)
    assert got[f"topic {topic}"].startswith("✓ ")
    assert got["topic kingest-no-such-topic"].startswith("✗ topic kingest-no-such-topic: topic kingest-no-such-topic")
    assert "Create the topic, or fix kafka.topics" in result.stdout
    assert got["lake"].startswith("✓ ") and "offsets manifest" not in got  # not exactly-once: no manifest check


# A store that accepts a second "exclusive" create of the same name (fsspec's memory store, with the create
# mode ignored): what an S3-compatible store without If-None-Match support does.
NO_EXCLUSIVE_CREATE = textwrap.dedent(
    """
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class NoExclusiveCreate(MemoryFileSystem):
        protocol = "nocreate"

        def pipe_file(self, path, value, mode="overwrite", **kwargs):
            return super().pipe_file(path, value, **kwargs)

    fsspec.register_implementation("nocreate", NoExclusiveCreate)
    """
)


@pytest.mark.parametrize("semantics", ["exactly-once", "at-least-once"])
def test_a_store_without_exclusive_create_is_refused_for_exactly_once(semantics, tmp_path, kafka_bootstrap,
                                                                    topic_factory):  # fmt: skip
    topic = topic_factory(partitions=1)
    config = write_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_bootstrap,
        topic=topic,
        lake="nocreate://lake",
        semantics=semantics,
    )
    checked = kingest("check", "-c", str(config), prelude=NO_EXCLUSIVE_CREATE)
    line = lines(checked)["exclusive create"]
    assert "does not enforce exclusive create: exactly-once would be unsafe there" in line
    ran = kingest("run", "-c", str(config), "--until-caught-up", prelude=NO_EXCLUSIVE_CREATE)
    if semantics == "exactly-once":
        assert checked.returncode == 2 and line.startswith("✗ ")
        assert "If-None-Match" in checked.stdout
        assert ran.returncode == 2
        assert "does not enforce exclusive create; exactly-once would be unsafe there" in ran.stderr
    else:
        assert checked.returncode == 0 and line.startswith("! ") and line.endswith("(fine for at-least-once)")
        assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in checked.stderr + ran.stderr


def test_the_starter_config_from_init_passes_check_once_pointed_at_real_services(tmp_path, kafka_bootstrap,
                                                                                 topic_factory, produce):  # fmt: skip
    topic = topic_factory(partitions=2)
    produce(topic, [json.dumps({"n": i}) for i in range(5)], partition=0)
    made = kingest(
        "init", "--pipeline", "starter", "--topic", topic, "--bootstrap-servers", kafka_bootstrap,
        "--lake", str(tmp_path / "lake"), "--semantics", "exactly-once", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "wrote kingest.yaml" in made.stdout
    checked = kingest("check", cwd=tmp_path)  # ./kingest.yaml by default
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(line.startswith("✓ ") for line in lines(checked).values())
    ran = kingest("run", "--until-caught-up", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "done: 5 records in 1 files" in ran.stdout


def test_a_corrupted_manifest_fails_check(tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=1)
    produce(topic, [b'{"n": 1}'], partition=0)
    config = write_config(
        tmp_path / "k.yaml", bootstrap=kafka_bootstrap, topic=topic, lake=str(tmp_path / "lake"),
        semantics="exactly-once",
    )  # fmt: skip
    assert kingest("run", "-c", str(config), "--until-caught-up").returncode == 0
    assert kingest("check", "-c", str(config)).returncode == 0
    [version] = sorted((tmp_path / "lake").glob(f"_kingest/*/manifest/topic={topic}/partition=0/*.json"))[-1:]
    version.write_bytes(b"\x00garbage")
    checked = kingest("check", "-c", str(config))
    assert checked.returncode == 2
    assert lines(checked)["offsets manifest"].startswith(f"✗ offsets manifest: offsets manifest file {tmp_path}")
    assert "is corrupted" in checked.stdout and "Restore it from a backup" in checked.stdout
