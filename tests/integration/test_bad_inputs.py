"""The table of bad inputs (docs/configuration.md, "Bad inputs"): each one, given to `kingest run` and to
`kingest check`, gets a clear message naming the problem, exit code 2, and never a traceback.

`run` is a real process (subprocess) wherever it gets past the config, since it installs signal handlers and
talks to the services; config mistakes and `check` run in-process with Typer's CliRunner."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kingest.cli import app

from .support import default_config, kingest, merge

runner = CliRunner()


@dataclass
class Env:
    """What a case may use to build its config (the services are only started by the cases that need them)."""

    tmp: Path
    request: pytest.FixtureRequest
    secrets: list[str] = field(default_factory=list)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def config(self, **overrides: Any) -> dict[str, Any]:
        base = merge(
            default_config(),
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:9092", "topics": ["orders"]},
                "lake": {"path": str(self.tmp / "lake")},
                "batch": {"max_records": 100, "max_bytes": "1MiB", "max_age": "1s"},
            },
        )
        for dotted, value in overrides.items():
            target = base
            *parents, last = dotted.split("__")
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = value
        return base

    def write(self, doc: dict[str, Any] | str) -> Path:
        path = self.tmp / "kingest.yaml"
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    def with_services(self, **overrides: Any) -> dict[str, Any]:
        topic = self.fixture("topic_factory")(partitions=1)
        return self.config(kafka__bootstrap_servers=self.fixture("kafka_bootstrap"), kafka__topics=[topic], **overrides)

    def s3(self, path: str, **options: Any) -> dict[str, Any]:
        storage = {**self.fixture("s3_storage_options"), **options}
        return self.with_services(lake__path=path, lake__storage_options=storage)


def free_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def corrupted_manifest(env: Env) -> Path:
    """An exactly-once lake whose latest manifest version of partition 0 is not JSON any more."""
    doc = env.with_services(semantics="exactly-once")
    topic = doc["kafka"]["topics"][0]
    env.fixture("produce")(topic, [json.dumps({"n": i}) for i in range(3)], partition=0)
    path = env.write(doc)
    first = kingest("run", "-c", str(path), "--until-caught-up", timeout=60)
    assert first.returncode == 0, first.stderr
    folder = Path(doc["lake"]["path"]) / "_kingest" / doc["pipeline"] / "manifest" / f"topic={topic}" / "partition=0"
    latest = sorted(folder.iterdir())[-1]
    latest.write_text('{"format_version": 1, "version": ')  # a torn write, or someone's editor
    return path


def unwritable_path(env: Env) -> Path:
    (env.tmp / "a-file").write_text("not a folder")
    return env.write(env.with_services(lake__path=str(env.tmp / "a-file" / "lake")))


def wrong_s3_credentials(env: Env) -> Path:
    secret = f"wrong-secret-{uuid.uuid4().hex}"
    env.secrets.append(secret)
    prefix = env.fixture("s3_prefix")
    return env.write(env.s3(prefix, secret=secret))


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Env], Path]
    expect: str  # in the output of both commands
    config_only: bool = True  # the mistake is in the config: caught before any service is asked
    slow: bool = False
    line_of: str | None = None  # the message cites the config line holding this text


CASES = [
    Case(
        "malformed YAML",
        lambda env: env.write("pipeline: orders\nkafka:\n  topics: [orders\nlake: {path: x}\n"),
        "kingest.yaml: not valid YAML at line 4, column 5",
    ),
    Case(
        "unknown key",
        lambda env: env.write(env.config(batch__max_recods=5)),
        "unknown key `batch.max_recods`. Did you mean `max_records`?",
        line_of="max_recods",
    ),
    Case(
        "unknown section",
        lambda env: env.write(env.config(sematics="exactly-once")),
        "unknown key `sematics`. Did you mean `semantics`?",
    ),
    Case(
        "wrong type (number expected)",
        lambda env: env.write(env.config(batch__max_records="lots")),
        "`batch.max_records` = 'lots' is not valid: a whole number >= 1",
        line_of="max_records",
    ),
    Case(
        "wrong type (list expected)",
        lambda env: env.write(env.config(kafka__topics={"orders": 1})),
        "`kafka.topics` = {'orders': 1} is not valid: a list of topic names",
    ),
    Case(
        "wrong value (choice)",
        lambda env: env.write(env.config(records__on_error="ignore")),
        "`records.on_error` = 'ignore' is not valid: use one of fail, skip, dead-letter",
    ),
    Case(
        "bad duration",
        lambda env: env.write(env.config(batch__max_age="10 parsecs")),
        "`batch.max_age` = '10 parsecs' is not valid: a duration such as 500ms, 10s, 5m or 1h",
        line_of="max_age",
    ),
    Case(
        "bad size",
        lambda env: env.write(env.config(batch__max_bytes="64 MiBs")),
        "`batch.max_bytes` = '64 MiBs' is not valid: a size such as 64MiB, 500KB or 1048576 (bytes)",
    ),
    Case(
        "unknown schema type",
        lambda env: env.write(env.config(records__schema={"id": "integer"})),
        "`records.schema.id` = 'integer' is not valid: use one of string, int8, int16, int32, int64, float32, "
        "float64, bool, timestamp, date, binary",
        line_of="integer",
    ),
    Case(
        "schema field named like a kingest column",
        lambda env: env.write(env.config(records__schema={"kafka_offset": "int64"})),
        "`records.schema.kafka_offset`: kafka_offset is the name of a column kingest adds to every row",
    ),
    Case(
        "missing environment variable",
        lambda env: env.write(env.config(lake__storage_options={"secret": "${KINGEST_TEST_NOT_SET}"})),
        "`lake.storage_options.secret` uses ${KINGEST_TEST_NOT_SET} but the environment variable "
        "KINGEST_TEST_NOT_SET is not set",
    ),
    Case(
        "missing config file",
        lambda env: env.tmp / "nowhere.yaml",
        "nowhere.yaml not found",
    ),
    Case(
        "unreachable broker",
        lambda env: env.write(env.config(kafka__bootstrap_servers=f"127.0.0.1:{free_port()}")),
        "no Kafka broker answered at 127.0.0.1:",
        config_only=False,
        slow=True,  # kafka-python's bootstrap timeout: 15 s per command
    ),
    Case(
        "missing topic",
        lambda env: env.write(
            env.config(kafka__bootstrap_servers=env.fixture("kafka_bootstrap"), kafka__topics=["kingest-no-such-topic"])
        ),  # fmt: skip
        "kingest-no-such-topic not found on",
        config_only=False,
    ),
    Case(
        "unknown librdkafka property (kafka.client: confluent)",
        lambda env: env.write(env.with_services(kafka__client="confluent", kafka__consumer={"fetch_min_bytes": 1})),
        'Kafka consumer settings rejected by librdkafka: No such configuration property: "fetch_min_bytes" '
        "Check the kafka: section. With kafka.client: confluent, kafka.consumer takes librdkafka properties",
        config_only=False,
    ),
    Case(
        "missing bucket",
        lambda env: env.write(env.s3(f"s3://kingest-missing-{uuid.uuid4().hex[:12]}/lake")),
        "does not exist Create the bucket first, or fix the bucket name in lake.path.",
        config_only=False,
    ),
    Case(
        "S3 endpoint that does not answer",
        lambda env: env.write(env.s3("s3://kingest/lake", endpoint_url=f"http://127.0.0.1:{free_port()}")),
        "did not answer for",
        config_only=False,
        slow=True,  # the lake's retries with backoff: 10 s per command
    ),
    Case(
        "wrong S3 credentials",
        wrong_s3_credentials,
        "is not writable: The request signature we calculated does not match the signature you provided",
        config_only=False,
    ),
    Case(
        "unwritable local path",
        unwritable_path,
        "is not writable: [Errno 20] Not a directory",
        config_only=False,
    ),
    Case(
        "corrupted manifest (exactly-once)",
        corrupted_manifest,
        "is corrupted (not JSON: Expecting value",
        config_only=False,
    ),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.name,
            marks=[m for m, on in ((pytest.mark.integration, not c.config_only), (pytest.mark.slow, c.slow)) if on],
        )
        for c in CASES
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_2(case: Case, tmp_path: Path, request: pytest.FixtureRequest):
    env = Env(tmp_path, request)
    path = case.make(env)

    # Past the config, real processes: `run` installs signal handlers, and a client that fails to connect may
    # leave sockets to the garbage collector. 30 s is the promise for an unreachable broker: a command that takes
    # longer fails the test (the subprocess timeout).
    commands = (["run", "-c", str(path), "--until-caught-up"], ["check", "-c", str(path)])
    if case.config_only:
        outputs = [(r.output, r.exit_code) for r in (runner.invoke(app, command) for command in commands)]
    else:
        # Side by side: neither writes anything (each must stop at the bad input), and the slow cases wait out a
        # timeout in each.
        with ThreadPoolExecutor(2) as pool:
            processes = list(pool.map(lambda command: kingest(*command, timeout=30), commands))
        outputs = [(p.stdout + p.stderr, p.returncode) for p in processes]
    (run_out, run_code), (check_out, check_code) = outputs

    for out, code in outputs:
        assert code == 2, out
        assert " ".join(case.expect.split()) in " ".join(out.split()), out
        assert "Traceback" not in out
        for secret in env.secrets:
            assert secret not in out
        if case.line_of is not None:
            line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if case.line_of in text)
            assert f"kingest.yaml:{line}: " in out
    assert "✗" in check_out
    if case.config_only:  # nothing past the config was tried
        assert check_out.count("✗") == 1 and "✓" not in check_out
