"""No secret ever appears in any output. Secrets reach the config through ${VAR} (the SASL password, the S3
secret, an SSL key password that is passed to kafka-python but unused on a SASL_PLAINTEXT listener), and every
command's stdout and stderr is scanned for them: `run` in text and JSON logs, verbose too, `status`, `check`,
`verify`, `rewind --dry-run`, and the errors (wrong password, wrong S3 secret, unreachable S3, a bad config
value). The environment variables have plain names, so it is the config, not a naming rule, that hides them.
"""

from __future__ import annotations

import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .support import kingest, merge, read_config, write_config

pytestmark = pytest.mark.integration

SASL_VAR, S3_VAR, SSL_VAR = "KT_A", "KT_B", "KT_C"


def secrets_config(path: Path, *, kafka_sasl: dict[str, Any], topic: str, lake: str, s3: dict[str, Any]) -> Path:
    return write_config(
        path,
        pipeline=f"secrets-{uuid.uuid4().hex[:8]}",
        bootstrap=kafka_sasl["bootstrap"],
        topic=topic,
        lake=lake,
        storage_options={"endpoint_url": s3["endpoint_url"], "key": s3["key"], "secret": "${" + S3_VAR + "}"},
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": kafka_sasl["username"],
            "sasl_plain_password": "${" + SASL_VAR + "}",
            "ssl_password": "${" + SSL_VAR + "}",  # unused without SSL: a sentinel the client still receives
        },
        batch={"max_records": 100, "max_age": "2s"},
        semantics="exactly-once",
    )


def assert_clean(done: subprocess.CompletedProcess[str], *secrets: str) -> None:
    output = done.stdout + done.stderr
    for secret in secrets:
        assert secret not in output, f"a secret leaked in `{' '.join(done.args[3:])}`:\n{output}"
    assert "Traceback" not in output, output


@pytest.fixture
def setup(
    kafka_sasl: dict[str, Any],
    topic_factory: Any,
    produce: Any,
    s3_storage_options: dict[str, Any],
    s3_prefix: str,
    tmp_path: Path,
) -> dict[str, Any]:
    topic = topic_factory(partitions=3, name="secrets")
    for partition in range(3):
        produce(topic, [f'{{"n": {i}}}' for i in range(30)], partition=partition)
    config = secrets_config(
        tmp_path / "k.yaml", kafka_sasl=kafka_sasl, topic=topic, lake=s3_prefix, s3=s3_storage_options
    )
    secrets = {
        SASL_VAR: kafka_sasl["password"],
        S3_VAR: s3_storage_options["secret"],
        SSL_VAR: f"sentinel-ssl-{uuid.uuid4().hex}",
    }
    return {"config": config, "secrets": secrets, "s3": s3_storage_options, "kafka_sasl": kafka_sasl}


SUCCESSFUL = [
    ["run", "--until-caught-up"],
    ["run", "--until-caught-up", "--log-format", "json"],
    ["run", "--until-caught-up", "--verbose"],
    ["run", "--until-caught-up", "--verbose", "--log-format", "json"],
    ["status"],
    ["status", "--json"],
    ["check"],
    ["verify"],
    ["verify", "--json"],
    ["rewind", "--to-earliest", "--dry-run"],
]


def test_no_secret_in_the_output_of_any_command(setup: dict[str, Any]) -> None:
    secrets = setup["secrets"]
    for args in SUCCESSFUL:
        done = kingest(*args, "-c", str(setup["config"]), env=secrets)
        assert done.returncode == 0, f"`kingest {' '.join(args)}` failed:\n{done.stdout}{done.stderr}"
        assert_clean(done, *secrets.values())
        if args == SUCCESSFUL[0]:
            assert "done: 90 records" in done.stdout  # the runs did real work over SASL and S3


def test_no_secret_in_errors(setup: dict[str, Any], tmp_path: Path) -> None:
    config, good = setup["config"], setup["secrets"]
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        # (command, secrets, what the error says)
        (["run", "--until-caught-up"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["run", "--until-caught-up", "--verbose"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["run", "--until-caught-up", "--log-format", "json"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["status"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["check"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["verify", "--json"], {**good, SASL_VAR: sentinel}, "authentication failed"),
        (["run", "--until-caught-up"], {**good, S3_VAR: sentinel}, "is not writable"),
        (["run", "--until-caught-up", "--verbose"], {**good, S3_VAR: sentinel}, "is not writable"),
        (["check"], {**good, S3_VAR: sentinel}, "lake"),
    ]
    # An S3 server that does not answer: botocore's errors carry the URL; the secret must not follow.
    unreachable = write_config(
        tmp_path / "unreachable.yaml",
        **merge(read_config(config), {"lake": {"storage_options": {"endpoint_url": "http://127.0.0.1:9"}}}),
    )
    # Side by side (each stops at its error, none writes; the unreachable S3 waits out the probe's 10 s).
    with ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(
            kingest, "run", "--until-caught-up", "--verbose", "-c", str(unreachable), env={**good, S3_VAR: sentinel}
        )
        runs = list(pool.map(lambda case: kingest(*case[0], "-c", str(config), env=case[1]), cases))
        done = waiting.result()
    for (args, _, says), run in zip(cases, runs, strict=True):
        assert run.returncode == 2, f"`kingest {' '.join(args)}`:\n{run.stdout}{run.stderr}"
        assert says in run.stdout + run.stderr
        assert_clean(run, sentinel, *good.values())
    assert done.returncode == 2 and "did not answer" in done.stderr, done.stderr
    assert_clean(done, sentinel, *good.values())

    # A secret in a value the config rejects: the message names the key, not the value.
    bad = write_config(
        tmp_path / "bad.yaml", **merge(read_config(config), {"lake": {"compression": "${" + S3_VAR + "}"}})
    )
    for args in (["run"], ["check"], ["status"]):
        done = kingest(*args, "-c", str(bad), env={**good, S3_VAR: sentinel})
        assert done.returncode == 2 and "lake.compression" in done.stdout + done.stderr
        assert_clean(done, sentinel, *good.values())
