"""Kafka security against the dev broker's SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; user
`kingest`): the right password ingests; a wrong one, or a security protocol that does not match the listener,
is a clear error naming what to fix, exit 2, without waiting for the bootstrap timeout, never showing the
password. The password reaches the config through ${VAR}, as a user would pass it.

TLS (SSL, mutual TLS, SASL_SSL) and its mistakes: test_tls.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import patient_bootstrap

from .support import duplicates, folder_offsets, kingest, missing, write_config

pytestmark = pytest.mark.integration

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PASSWORD_VAR = "KT_BROKER_PW"  # a name that does not look secret: the config, not the name, must hide it


def sasl_config(path: Path, *, bootstrap: str, topic: str, mechanism: str, user: str, lake: Path, **kafka: Any) -> Path:
    return write_config(
        path,
        bootstrap=bootstrap,
        topic=topic,
        lake=str(lake),
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": "${" + PASSWORD_VAR + "}",
            **kafka,
        },
        batch={"max_records": 1000, "max_age": "2s"},
        semantics="exactly-once",
    )


def with_password(password: str) -> dict[str, Any]:
    """kingest() options: the broker password in the environment the config names. The timeout is a safety net
    for a hang, not a measure: a bootstrap that waited out its timeout would also end with another message ("no
    Kafka broker answered"), which the tests reject."""
    return {"env": {PASSWORD_VAR: password}, "timeout": 120}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_run_over_sasl_with_the_right_password(
    kafka_sasl: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path, mechanism: str
) -> None:
    topic = topic_factory(partitions=3, name="sasl-run")
    for partition in range(3):
        produce(topic, [f'{{"n": {i}}}' for i in range(40)], partition=partition)
    lake = tmp_path / "lake"
    config = sasl_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_sasl["bootstrap"],
        topic=topic,
        mechanism=mechanism,
        user=kafka_sasl["username"],
        lake=lake,
    )
    done = kingest("run", "-c", str(config), "--until-caught-up", **with_password(kafka_sasl["password"]))
    assert done.returncode == 0, done.stderr
    assert "done: 120 records" in done.stdout
    seen = folder_offsets(str(lake))
    assert duplicates(seen) == {} and missing(seen, {p: list(range(40)) for p in range(3)}) == {}
    assert kafka_sasl["password"] not in done.stdout + done.stderr


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_is_a_clear_error_without_waiting(
    kafka_sasl: dict[str, Any], topic_factory: Any, tmp_path: Path, mechanism: str
) -> None:
    topic = topic_factory(partitions=1, name="sasl-wrong")
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = sasl_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_sasl["bootstrap"],
        topic=topic,
        mechanism=mechanism,
        user=kafka_sasl["username"],
        lake=tmp_path / "lake",
        # If kingest waited for the client's bootstrap to give up, the test would time out (kafka-python: ten
        # minutes) or fail on the message ("no Kafka broker answered").
        **patient_bootstrap(),
    )
    done = kingest("run", "-c", str(config), "--until-caught-up", **with_password(wrong))
    assert done.returncode == 2, done.stderr
    assert (
        f"Error: Kafka at {kafka_sasl['bootstrap']}: authentication failed (SASL {mechanism}, user "
        f"'{kafka_sasl['username']}')" in done.stderr
    )
    assert "Check kafka.sasl_plain_username and kafka.sasl_plain_password" in done.stderr
    assert "Traceback" not in done.stderr
    assert wrong not in done.stdout + done.stderr
    assert not (tmp_path / "lake").exists() or not list((tmp_path / "lake").rglob("*.parquet"))


@pytest.mark.parametrize("command", [["status"], ["verify"], ["check"]])
def test_wrong_password_in_the_inspection_commands(
    kafka_sasl: dict[str, Any], topic_factory: Any, tmp_path: Path, command: list[str]
) -> None:
    """status, verify and check connect with their own clients: the same clear error, not a timeout."""
    topic = topic_factory(partitions=1, name="sasl-inspect")
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = sasl_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_sasl["bootstrap"],
        topic=topic,
        mechanism="SCRAM-SHA-256",
        user=kafka_sasl["username"],
        lake=tmp_path / "lake",
    )
    done = kingest(*command, "-c", str(config), **with_password(wrong))
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert f"authentication failed (SASL SCRAM-SHA-256, user '{kafka_sasl['username']}')" in out
    assert "Traceback" not in out and wrong not in out


def test_sasl_against_a_plaintext_listener(
    kafka_bootstrap: str, kafka_sasl: dict[str, Any], topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1, name="sasl-mismatch")
    config = sasl_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_bootstrap,
        topic=topic,
        mechanism="PLAIN",
        user=kafka_sasl["username"],
        lake=tmp_path / "lake",
        **patient_bootstrap(),
    )
    done = kingest("run", "-c", str(config), "--until-caught-up", **with_password(kafka_sasl["password"]))
    assert done.returncode == 2, done.stderr
    assert f"Kafka at {kafka_bootstrap} does not expect SASL (kafka.security_protocol is SASL_PLAINTEXT)" in (
        done.stderr
    )
    assert "Check that kafka.security_protocol" in done.stderr


def test_plaintext_against_a_sasl_listener(kafka_sasl: dict[str, Any], topic_factory: Any, tmp_path: Path) -> None:
    topic = topic_factory(partitions=1, name="plain-mismatch")
    config = write_config(
        tmp_path / "k.yaml",
        pipeline="plain-mismatch",
        bootstrap=kafka_sasl["bootstrap"],
        topic=topic,
        lake=str(tmp_path / "lake"),
        kafka=patient_bootstrap(),
    )
    done = kingest("run", "-c", str(config), "--until-caught-up", **with_password("unused"))
    assert done.returncode == 2, done.stderr
    assert (
        f"Kafka at {kafka_sasl['bootstrap']} closes the connection before answering "
        "(kafka.security_protocol is PLAINTEXT)" in done.stderr
    )
