"""TLS settings checked before any connection (kingest/sources/tls.py, kingest/lake.py): what a user gets for a
file that is not there or not what it should be, without a broker or a store. The handshakes themselves are
tested against the dev services' TLS listeners (tests/integration/test_tls.py)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from kingest.config import KafkaConfig
from kingest.errors import LakeUnavailable, SetupError
from kingest.lake import Lake, _certificate_refused
from kingest.sources import tls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate with its key in clear and encrypted (password "right-password")."""
    home = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=home, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
            "-days", "30", "-subj", "/CN=unit")  # fmt: skip
    openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "key.pem", "-out", "key.enc.pem",
            "-passout", "pass:right-password")  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other-key.pem", "-out", "other.pem",
            "-days", "30", "-subj", "/CN=other")  # fmt: skip
    (home / "not-pem.txt").write_text("hello\n")
    return {p.stem.replace(".", "_"): str(p) for p in home.iterdir()}


def config(**settings: object) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=("127.0.0.1:1",), topics=("t",), group_id="g", security_protocol="SSL", **settings
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ssl_cafile": "/nope/ca.pem"}, "kafka.ssl_cafile: no file at /nope/ca.pem"),
        ({"ssl_cafile": "{not-pem}"}, "kafka.ssl_cafile ({not-pem}) holds no usable CA certificate"),
        ({"ssl_keyfile": "{key}"}, "kafka.ssl_keyfile is set ({key}) but kafka.ssl_certfile is not"),
        ({"ssl_certfile": "{cert}", "ssl_keyfile": "{key_enc}"}, "kafka.ssl_keyfile ({key_enc}) is encrypted"),
        (
            {"ssl_certfile": "{cert}", "ssl_keyfile": "{key_enc}", "ssl_password": "wrong-password"},
            "kafka.ssl_keyfile ({key_enc}) cannot be decrypted with kafka.ssl_password",
        ),
        (
            {"ssl_certfile": "{other}", "ssl_keyfile": "{key}"},
            "kafka.ssl_keyfile ({key}) is not the key of the certificate in kafka.ssl_certfile ({other})",
        ),
    ],
)
def test_bad_files_are_named(files: dict[str, str], settings: dict[str, str], message: str) -> None:
    names = {"not-pem": files["not-pem"], "key": files["key"], "key_enc": files["key_enc"]}
    names |= {"cert": files["cert"], "other": files["other"]}
    filled = {k: v.format(**names) for k, v in settings.items()}
    with pytest.raises(SetupError) as raised:
        tls.check_files(config(**filled))
    assert message.format(**names) in raised.value.message
    assert "wrong-password" not in raised.value.message


def test_good_files_pass_and_plaintext_checks_nothing(files: dict[str, str]) -> None:
    tls.check_files(
        config(
            ssl_cafile=files["cert"],
            ssl_certfile=files["cert"],
            ssl_keyfile=files["key_enc"],
            ssl_password="right-password",
        )
    )
    tls.check_files(
        KafkaConfig(bootstrap_servers=("h:1",), topics=("t",), group_id="g", ssl_cafile="/nope")
    )  # not used: PLAINTEXT


def test_a_store_certificate_refused_is_not_retried() -> None:
    """botocore's words for a refused certificate (the cause chained): the reason, so that the lake stops at once."""
    reason = "unable to get local issuer certificate"
    cause = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason}")
    outer = OSError("SSL validation failed for https://127.0.0.1:8433/kingest Cannot connect to host")
    outer.__cause__ = cause
    assert _certificate_refused(outer) == "unable to get local issuer certificate"
    assert _certificate_refused(OSError("Connection refused")) is None


def test_a_missing_verify_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"lake.storage_options.client_kwargs.verify: no file at /nope/ca.pem"):
        Lake("s3://bucket/prefix", {"endpoint_url": "https://127.0.0.1:1", "client_kwargs": {"verify": "/nope/ca.pem"}})
    assert issubclass(LakeUnavailable, SetupError)
