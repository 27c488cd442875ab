"""TLS settings checked before any connection (kingest/sources/tls.py, kingest/lake.py): what a user gets for a
file that is not there or not what it should be, without a broker or a store. The handshakes themselves are
tested against the dev services' TLS listeners (tests/integration/test_tls.py)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------------------------- diagnose
# tls.diagnose against small local servers on free ports (the dev broker's listeners are the integration tests'):
# it names a cause only on positive evidence, and finds nothing when a server merely closes the connection.


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dev CA of services/devservices.py (DevTLS), made in a folder of its own."""
    from tests.conftest import load_devservices

    devservices = load_devservices()
    home = tmp_path_factory.mktemp("pki")
    saved = os.environ.get("KINGEST_DEV_DIR")
    os.environ["KINGEST_DEV_DIR"] = str(home)
    try:
        made = devservices.DevTLS()
        made.ensure()
    finally:
        if saved is None:
            os.environ.pop("KINGEST_DEV_DIR")
        else:
            os.environ["KINGEST_DEV_DIR"] = saved
    return made


class Server:
    """One listening socket on 127.0.0.1 served by a thread: ``tls`` (a certificate name of the dev CA) or plain;
    ``answer``: reply to a Kafka request with a response header; ``close``: close each connection at once."""

    def __init__(self, pki: Any, tls: str | None, answer: bool = True, close: bool = False, mutual: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(pki.path(f"{tls}.pem"), pki.path(f"{tls}.key"))
            if mutual:
                self.ctx.verify_mode = ssl.CERT_REQUIRED
                self.ctx.load_verify_locations(pki.ca)
        self.answer, self.close = answer, close
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.close:
                    conn.close()
                    continue
                if self.ctx is not None:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                conn.settimeout(5)
                if conn.recv(4096) and self.answer:
                    conn.sendall(struct.pack(">ii", 4, 1))
                conn.recv(1)
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self.sock.close()


def diagnosed(pki: Any, server: Server, timeout: float = 5, **settings: Any) -> tls.Finding | None:
    settings.setdefault("ssl_cafile", str(pki.ca))
    try:
        return tls.diagnose(config(**settings), ("127.0.0.1", server.port), timeout=timeout)
    finally:
        server.stop()


def test_diagnose_names_each_refused_certificate(pki: Any) -> None:
    found = diagnosed(pki, Server(pki, "server"), ssl_cafile=str(pki.path("other-ca.pem")))
    assert found is not None and found.cause == "unknown-ca"
    found = diagnosed(pki, Server(pki, "expired"))
    assert found is not None and found.cause == "expired"
    found = diagnosed(pki, Server(pki, "wrong-host"))
    assert found is not None and found.cause == "wrong-host"
    found = diagnosed(pki, Server(pki, "server", mutual=True))
    assert found is not None and found.cause == "no-client-cert"


def test_diagnose_finds_nothing_when_all_is_well(pki: Any) -> None:
    assert diagnosed(pki, Server(pki, "server")) is None
    assert diagnosed(pki, Server(pki, "wrong-host"), ssl_check_hostname=False) is None
    client = {"ssl_certfile": str(pki.path("client.pem")), "ssl_keyfile": str(pki.path("client-plain.key"))}
    assert diagnosed(pki, Server(pki, "server", mutual=True), **client) is None


def test_diagnose_needs_evidence_that_a_listener_is_not_tls(pki: Any) -> None:
    """A plaintext Kafka listener answers ApiVersions: "not TLS". A server that closes every connection (a broker
    going away, a proxy in front of a stopped one) proves nothing: no verdict, the clients go on waiting."""
    found = diagnosed(pki, Server(pki, None))
    assert found is not None and found.cause == "not-tls"
    assert diagnosed(pki, Server(pki, None, close=True)) is None
    assert diagnosed(pki, Server(pki, None, answer=False), timeout=0.5) is None


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("broker:9093", [("broker", 9093)]),
        ("broker", [("broker", 9092)]),
        ("SSL://broker:9093", [("broker", 9093)]),
        ("[::1]:9093", [("::1", 9093)]),
        ("::1", [("::1", 9092)]),
        ("broker:port", []),
    ],
)
def test_bootstrap_servers_are_parsed_as_the_clients_do(entry: str, parsed: list[tuple[str, int]]) -> None:
    assert tls.servers(_with_servers(entry)) == parsed


def _with_servers(entry: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=(entry,), topics=("t",), group_id="g", security_protocol="SSL")


def test_a_ca_directory_is_for_librdkafka_only(files: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="is a directory: kafka-python takes one PEM file"):
        tls.check_files(config(ssl_cafile=str(tmp_path)))
    tls.check_files(config(ssl_cafile=str(tmp_path), client="confluent"))
