"""TLS to Kafka and S3 against the dev services' real TLS listeners (services/devservices.py: a private CA made
with openssl at `make up`; the broker's SSL, mutual-TLS and SASL_SSL listeners, two listeners serving a
certificate a client must refuse; S3 over HTTPS). Run with each Kafka client (`make test` runs the file twice).

What a user relies on: each supported setup ingests every record once; each mistake they can make (a CA that
did not sign the broker's certificate, an expired or wrong-host certificate, no client certificate where one is
required, a wrong key password, TLS against a plain listener) is a clear message naming the setting or the file
and the cause, exit code 2, no traceback, no secret, nothing written to the lake; and it comes at once: the
clients' bootstrap is made to wait ten minutes (patient_bootstrap), so that a message reached by timing out
cannot pass. Secrets reach the config through ${VAR} under names that do not look secret.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import patient_bootstrap

from .support import duplicates, folder_offsets, kingest, missing, write_config

pytestmark = pytest.mark.integration

PASSWORD_VAR = "KT_TLS_PW"  # the key's or the SASL password: the config, not the variable's name, must hide it
RECORDS = 40


def tls_config(path: Path, *, bootstrap: str, topic: str, lake: str | Path, **kafka: Any) -> Path:
    return write_config(
        path,
        bootstrap=bootstrap,
        topic=topic,
        lake=str(lake),
        kafka={"security_protocol": "SSL", **kafka},
        batch={"max_records": 1000, "max_age": "2s"},
        semantics="exactly-once",
    )


def filled_topic(topic_factory: Any, produce: Any, name: str) -> str:
    topic = topic_factory(partitions=2, name=name)
    for partition in range(2):
        produce(topic, [f'{{"n": {i}}}' for i in range(RECORDS)], partition=partition)
    return topic


def assert_every_record_once(lake: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    """An independent read of the lake's folder (pyarrow, not kingest): each offset of both partitions once."""
    seen = folder_offsets(str(lake), storage_options)
    assert duplicates(seen) == {}
    assert missing(seen, {p: list(range(RECORDS)) for p in range(2)}) == {}


def run(config: Path, secret: str | None = None) -> Any:
    env = {PASSWORD_VAR: secret} if secret is not None else {}
    done = kingest("run", "-c", str(config), "--until-caught-up", env=env, timeout=120)
    if secret:
        assert secret not in done.stdout + done.stderr
    return done


# --------------------------------------------------------------------------------------------- what works


def test_ssl_with_the_ca_only(kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path) -> None:
    topic = filled_topic(topic_factory, produce, "tls-ca")
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml", bootstrap=kafka_tls["ssl"], topic=topic, lake=lake, ssl_cafile=kafka_tls["ca"]
    )
    done = run(config)
    assert done.returncode == 0, done.stderr
    assert f"done: {2 * RECORDS} records" in done.stdout
    assert_every_record_once(lake)
    check = kingest("check", "-c", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tls: TLSv1." in check.stdout and "issued by kingest dev CA" in check.stdout
    assert "host name checked" in check.stdout and "no client certificate" in check.stdout


def test_mutual_tls_with_a_password_protected_key(
    kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path
) -> None:
    topic = filled_topic(topic_factory, produce, "tls-mutual")
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_tls["mtls"],
        topic=topic,
        lake=lake,
        ssl_cafile=kafka_tls["ca"],
        ssl_certfile=kafka_tls["client_cert"],
        ssl_keyfile=kafka_tls["client_key"],
        ssl_password="${" + PASSWORD_VAR + "}",
    )
    done = run(config, kafka_tls["key_password"])
    assert done.returncode == 0, done.stderr
    assert_every_record_once(lake)
    for command in ("status", "verify", "check"):  # their own Kafka clients carry the certificate too
        out = kingest(command, "-c", str(config), env={PASSWORD_VAR: kafka_tls["key_password"]})
        assert out.returncode == 0, f"{command}: {out.stdout}{out.stderr}"
        assert kafka_tls["key_password"] not in out.stdout + out.stderr


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_sasl_over_tls(
    kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path, mechanism: str
) -> None:
    topic = filled_topic(topic_factory, produce, "tls-sasl")
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_tls["sasl_ssl"],
        topic=topic,
        lake=lake,
        security_protocol="SASL_SSL",
        ssl_cafile=kafka_tls["ca"],
        sasl_mechanism=mechanism,
        sasl_plain_username=kafka_tls["username"],
        sasl_plain_password="${" + PASSWORD_VAR + "}",
    )
    done = run(config, kafka_tls["password"])
    assert done.returncode == 0, done.stderr
    assert_every_record_once(lake)


def test_sasl_over_tls_with_a_wrong_password_is_a_credentials_error(kafka_tls: dict[str, Any], tmp_path: Path) -> None:
    """The TLS handshake succeeds, the SASL exchange fails: the message is about the password, not TLS."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = tls_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_tls["sasl_ssl"],
        topic="never-read",
        lake=tmp_path / "lake",
        security_protocol="SASL_SSL",
        ssl_cafile=kafka_tls["ca"],
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username=kafka_tls["username"],
        sasl_plain_password="${" + PASSWORD_VAR + "}",
        **patient_bootstrap(),
    )
    done = run(config, wrong)
    assert done.returncode == 2, done.stderr
    assert "authentication failed (SASL SCRAM-SHA-256, user 'kingest')" in done.stderr
    assert "Traceback" not in done.stderr


def test_hostname_checking_off_accepts_a_certificate_for_another_host(
    kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path
) -> None:
    """The same listener is refused with the check on (test_tls_mistakes, "wrong host")."""
    topic = filled_topic(topic_factory, produce, "tls-nohost")
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml",
        bootstrap=kafka_tls["wrong_host"],
        topic=topic,
        lake=lake,
        ssl_cafile=kafka_tls["ca"],
        ssl_check_hostname=False,
    )
    done = run(config)
    assert done.returncode == 0, done.stderr
    assert_every_record_once(lake)
    check = kingest("check", "-c", str(config))
    assert "host name NOT checked (kafka.ssl_check_hostname: false)" in check.stdout
    assert "certificate for wrong-host.invalid" in check.stdout


def test_one_broker_with_a_refused_certificate_among_good_ones(
    kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path
) -> None:
    """The client moves on to the next bootstrap server (kafka-python picks one at random, librdkafka tries
    them all): a refusal by one of them must not stop the run. The wrong-host listener's certificate is refused
    with the host name checked."""
    topic = filled_topic(topic_factory, produce, "tls-one-bad")
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml",
        bootstrap=f"{kafka_tls['wrong_host']},{kafka_tls['ssl']}",
        topic=topic,
        lake=lake,
        ssl_cafile=kafka_tls["ca"],
    )
    for _ in range(3):  # either server first
        done = run(config)
        assert done.returncode == 0, done.stderr
    assert_every_record_once(lake)


def test_hostname_checking_with_a_host_name(
    kafka_tls: dict[str, Any], topic_factory: Any, produce: Any, tmp_path: Path
) -> None:
    """localhost (a DNS name in the certificate) as well as 127.0.0.1 (an IP address in it)."""
    topic = filled_topic(topic_factory, produce, "tls-localhost")
    lake = tmp_path / "lake"
    port = kafka_tls["ssl"].rpartition(":")[2]
    config = tls_config(
        tmp_path / "k.yaml", bootstrap=f"localhost:{port}", topic=topic, lake=lake, ssl_cafile=kafka_tls["ca"]
    )
    done = run(config)
    assert done.returncode == 0, done.stderr
    assert_every_record_once(lake)


# --------------------------------------------------------------------------------------------- mistakes

# (listener, kafka settings, what the message must say, what the hint must say); {ca}, {other_ca}, {cert},
# {key} are the dev CA's files, {bootstrap} the listener's address; ${KT_TLS_PW} is a wrong password, ${KT_KEY_PW}
# the key's
MISTAKES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "unknown CA": (
        "ssl",
        {"ssl_cafile": "{other_ca}"},
        "Kafka at {bootstrap}: the broker's TLS certificate is not signed by a CA in kafka.ssl_cafile ({other_ca}): "
        "unable to get local issuer certificate",
        "Set kafka.ssl_cafile to the CA certificate (PEM) that signed the brokers' certificates.",
    ),
    "no CA file (the system's CAs)": (
        "ssl",
        {},
        "the broker's TLS certificate is not signed by a CA in the system's CA certificates",
        "Set kafka.ssl_cafile",
    ),
    "expired certificate": (
        "expired",
        {"ssl_cafile": "{ca}"},
        "Kafka at {bootstrap}: the broker's TLS certificate has expired",
        "The broker needs a new certificate",
    ),
    "wrong host": (
        "wrong_host",
        {"ssl_cafile": "{ca}"},
        "Kafka at {bootstrap}: the broker's TLS certificate is not for 127.0.0.1 (IP address mismatch",
        "kafka.ssl_check_hostname: false turns the check off",
    ),
    "missing client certificate": (
        "mtls",
        {"ssl_cafile": "{ca}"},
        "Kafka at {bootstrap} requires a client certificate (mutual TLS) and kafka.ssl_certfile is not set",
        "Set kafka.ssl_certfile and kafka.ssl_keyfile",
    ),
    "client certificate of a CA the broker does not trust": (
        "mtls",
        {"ssl_cafile": "{ca}", "ssl_certfile": "{stranger_cert}", "ssl_keyfile": "{stranger_key}"},
        "Kafka at {bootstrap} refused the client certificate in kafka.ssl_certfile ({stranger_cert}): the broker "
        "answered the TLS alert",
        "The broker must trust the CA that signed the client certificate",
    ),
    "wrong key password": (
        "mtls",
        {"ssl_cafile": "{ca}", "ssl_certfile": "{cert}", "ssl_keyfile": "{key}", "ssl_password": "${KT_TLS_PW}"},
        "kafka.ssl_keyfile ({key}) cannot be decrypted with kafka.ssl_password",
        "Check kafka.ssl_password",
    ),
    "encrypted key without a password": (
        "mtls",
        {"ssl_cafile": "{ca}", "ssl_certfile": "{cert}", "ssl_keyfile": "{key}"},
        "kafka.ssl_keyfile ({key}) is encrypted and kafka.ssl_password is not set",
        "Set kafka.ssl_password",
    ),
    "key of another certificate": (
        "mtls",
        {"ssl_cafile": "{ca}", "ssl_certfile": "{ca}", "ssl_keyfile": "{key}", "ssl_password": "${KT_KEY_PW}"},
        "kafka.ssl_keyfile ({key}) is not the key of the certificate in kafka.ssl_certfile ({ca})",
        "Point kafka.ssl_keyfile at the private key",
    ),
    "CA file missing": (
        "ssl",
        {"ssl_cafile": "{missing}"},
        "kafka.ssl_cafile: no file at {missing}",
        "Set kafka.ssl_cafile to the path of a PEM file",
    ),
    "TLS against a plain listener": (
        "plain",
        {"ssl_cafile": "{ca}"},
        "Kafka at {bootstrap} does not answer TLS (kafka.security_protocol is SSL)",
        "Check that kafka.security_protocol",
    ),
}


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed client certificate and its key (not encrypted): no CA the broker trusts signed it."""
    home = tmp_path_factory.mktemp("stranger")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "30", "-subj", "/CN=stranger"],
        cwd=home, check=True, capture_output=True,
    )  # fmt: skip
    return {"stranger_cert": str(home / "cert.pem"), "stranger_key": str(home / "key.pem")}


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_tls_mistakes(
    kafka_tls: dict[str, Any],
    kafka_bootstrap: str,
    stranger: dict[str, str],
    tmp_path: Path,
    mistake: str,
    command: str,
) -> None:
    listener, settings, message, hint = MISTAKES[mistake]
    bootstrap = kafka_bootstrap if listener == "plain" else kafka_tls[listener]
    names = {
        "ca": kafka_tls["ca"],
        "other_ca": kafka_tls["other_ca"],
        "cert": kafka_tls["client_cert"],
        "key": kafka_tls["client_key"],
        "missing": str(tmp_path / "no-such-ca.pem"),
        "bootstrap": bootstrap,
        **stranger,
    }
    kafka = {k: v.format(**names) if "{" in v and "${" not in v else v for k, v in settings.items()}
    lake = tmp_path / "lake"
    config = tls_config(
        tmp_path / "k.yaml", bootstrap=bootstrap, topic="never-read", lake=lake, **kafka, **patient_bootstrap()
    )
    secret = f"wrong-{uuid.uuid4().hex}"
    args = ["run", "-c", str(config), "--until-caught-up"] if command == "run" else ["check", "-c", str(config)]
    done = kingest(*args, env={PASSWORD_VAR: secret, "KT_KEY_PW": kafka_tls["key_password"]}, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert message.format(**names) in out
    assert hint in out
    assert "Traceback" not in out and secret not in out and kafka_tls["key_password"] not in out
    assert "no Kafka broker answered" not in out  # the fast path, not the bootstrap timeout
    assert not lake.exists() or not list(lake.rglob("*.parquet"))


# --------------------------------------------------------------------------------------------- S3 over HTTPS


def s3_config(
    path: Path, s3_https: dict[str, Any], bootstrap: str, prefix: str, topic: str, **client_kwargs: Any
) -> Path:
    options: dict[str, Any] = {k: s3_https[k] for k in ("key", "secret")}
    options["endpoint_url"] = s3_https["endpoint"]
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return write_config(
        path,
        bootstrap=bootstrap,
        topic=topic,
        lake=f"s3://{s3_https['bucket']}/{prefix}",
        storage_options=options,
        batch={"max_records": 1000, "max_age": "2s"},
        semantics="exactly-once",
    )


def test_s3_over_https_with_a_private_ca(
    kafka_bootstrap: str,
    s3_https: dict[str, Any],
    s3_storage_options: dict[str, Any],
    topic_factory: Any,
    produce: Any,
    tmp_path: Path,
) -> None:
    topic = filled_topic(topic_factory, produce, "tls-s3")
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    config = s3_config(tmp_path / "k.yaml", s3_https, kafka_bootstrap, prefix, topic, verify=s3_https["ca"])
    done = run(config)
    assert done.returncode == 0, done.stderr
    # read back through the plain-HTTP endpoint: the same bucket, another reader than kingest's
    assert_every_record_once(f"s3://{s3_https['bucket']}/{prefix}", s3_storage_options)
    check = kingest("check", "-c", str(config))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("verify", "message", "hint"),
    [
        (None, "is refused: unable to get local issuer certificate", "client_kwargs: {verify: /path/to/ca.pem}"),
        ("other_ca", "is refused: unable to get local issuer certificate", "client_kwargs: {verify: /path/to/ca.pem}"),
        ("missing", "lake.storage_options.client_kwargs.verify: no file at", "Set it to the CA certificate (PEM)"),
    ],
)
def test_s3_over_https_mistakes(
    kafka_bootstrap: str, kafka_tls: dict[str, Any], s3_https: dict[str, Any], tmp_path: Path,
    verify: str | None, message: str, hint: str,
) -> None:  # fmt: skip
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    files = {"other_ca": kafka_tls["other_ca"], "missing": str(tmp_path / "no-such-ca.pem")}
    kwargs = {"verify": files[verify]} if verify else {}
    config = s3_config(tmp_path / "k.yaml", s3_https, kafka_bootstrap, prefix, "never-read", **kwargs)
    done = run(config)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert message in out and hint in out
    assert "Traceback" not in out and s3_https["secret"] not in out
    assert "did not answer" not in out  # said at once, not after the store's retries
