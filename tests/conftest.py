"""Shared fixtures: the real Kafka broker, S3 server and schema registry of services/devservices.py, used lazily.

Only tests that ask for kafka_bootstrap / s3_* / registry_url fixtures touch the services, so pure unit tests
start nothing. A service that already answers (`make up`, or `make test`, which starts them before pytest) is used
as is; otherwise the first test needing it starts it through devservices and it is stopped at the end of the session.

Environment: KINGEST_KAFKA_BOOTSTRAP (default 127.0.0.1:$KINGEST_KAFKA_PORT or 9092), KINGEST_S3_ENDPOINT
(default http://127.0.0.1:$KINGEST_S3_PORT or 8333), KINGEST_S3_ACCESS_KEY / _SECRET_KEY / _BUCKET,
KINGEST_REGISTRY_URL (default http://127.0.0.1:$KINGEST_REGISTRY_PORT or 8081), and the devservices variables.
When KINGEST_KAFKA_BOOTSTRAP, KINGEST_S3_ENDPOINT or KINGEST_REGISTRY_URL is set, that service is not started.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVSERVICES_PATH = ROOT / "services" / "devservices.py"
KAFKA_CLIENTS = ("kafka-python", "confluent")
_chosen = {"client": "kafka-python"}


# --------------------------------------------------------------------------------------------- Kafka client


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka-client",
        choices=KAFKA_CLIENTS,
        default="kafka-python",
        help="the consumer library the pipelines under test use (kafka.client in every config the tests write)",
    )


def pytest_configure(config: pytest.Config) -> None:
    client = config.getoption("--kafka-client")
    if client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        raise pytest.UsageError("--kafka-client confluent: confluent-kafka is not installed (pip install -e '.[dev]')")
    _chosen["client"] = client


def pytest_report_header(config: pytest.Config) -> str:
    return f"kafka.client: {_chosen['client']}"


def kafka_client() -> str:
    """The `kafka.client` every pipeline config written by a test carries (pytest --kafka-client)."""
    return _chosen["client"]


def patient_bootstrap() -> dict[str, Any]:
    """kafka: settings under which a client that failed to recognise rejected credentials would wait minutes
    before giving up, so that a test of the fast, clear error cannot pass by timing out. kafka-python: its
    bootstrap timeout (a consumer passthrough). confluent: none (kingest gives up after min(15 s,
    request_timeout_ms) with "no Kafka broker answered", which such tests reject)."""
    if kafka_client() == "kafka-python":
        return {"consumer": {"bootstrap_timeout_ms": 600_000}}
    return {}


def load_devservices() -> ModuleType:
    """services/devservices.py is a script, not a package module: import it by path (once)."""
    name = "kingest_devservices"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEVSERVICES_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def devservices() -> ModuleType:
    return load_devservices()


def _start(devservices: ModuleType, service: str) -> list[str]:
    try:
        return devservices.up(service)
    except devservices.SetupError as e:
        pytest.fail(f"could not start the dev {service} service: {e}", pytrace=False)


# --------------------------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(devservices: ModuleType) -> Iterator[str]:
    """host:port of a Kafka broker that answers metadata requests (started for the session if needed)."""
    explicit = os.environ.get("KINGEST_KAFKA_BOOTSTRAP")
    bootstrap = explicit or f"127.0.0.1:{os.environ.get('KINGEST_KAFKA_PORT') or 9092}"
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if devservices.kafka_metadata(host, int(port)) is not None:
        yield bootstrap
        return
    if explicit:
        pytest.fail(f"KINGEST_KAFKA_BOOTSTRAP={explicit} does not answer Kafka requests", pytrace=False)
    started = _start(devservices, "kafka")
    try:
        yield bootstrap
    finally:
        if started:
            devservices.down("kafka")


@pytest.fixture(scope="session")
def kafka_sasl(kafka_bootstrap: str, devservices: ModuleType) -> dict[str, Any]:
    """The dev broker's SASL_PLAINTEXT listener: bootstrap, username, password (PLAIN and SCRAM-SHA-256/512)."""
    kafka = devservices.Kafka()
    if not _port_open(kafka.sasl_port):
        pytest.skip(f"no SASL listener on 127.0.0.1:{kafka.sasl_port} (not the devservices broker?)")
    return {
        "bootstrap": f"127.0.0.1:{kafka.sasl_port}",
        "username": kafka.sasl_user,
        "password": kafka.sasl_password,
    }


@pytest.fixture(scope="session")
def kafka_tls(kafka_bootstrap: str, devservices: ModuleType) -> dict[str, Any]:
    """The dev broker's TLS listeners and the dev CA's files (services/devservices.py DevTLS): bootstraps "ssl"
    (server certificate only), "mtls" (client certificate required), "sasl_ssl" (the SASL users), "wrong_host"
    and "expired" (certificates a client must refuse); files "ca", "other_ca", "client_cert", "client_key"
    (encrypted with "key_password"); "username"/"password" for SASL_SSL."""
    kafka = devservices.Kafka()
    if not _port_open(kafka.ssl_port):
        if kafka.running_pid() is not None:
            pytest.fail(f"the dev broker runs without its SSL listener on 127.0.0.1:{kafka.ssl_port}", pytrace=False)
        pytest.skip(f"no SSL listener on 127.0.0.1:{kafka.ssl_port} (not the devservices broker)")
    tls = kafka.tls
    return {
        "ssl": f"127.0.0.1:{kafka.ssl_port}",
        "mtls": f"127.0.0.1:{kafka.mtls_port}",
        "sasl_ssl": f"127.0.0.1:{kafka.sasl_ssl_port}",
        "wrong_host": f"127.0.0.1:{kafka.wrong_host_port}",
        "expired": f"127.0.0.1:{kafka.expired_port}",
        "ca": str(tls.ca),
        "other_ca": str(tls.path("other-ca.pem")),
        "client_cert": str(tls.path("client.pem")),
        "client_key": str(tls.path("client.key")),
        "key_password": tls.key_password,
        "username": kafka.sasl_user,
        "password": kafka.sasl_password,
    }


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="kingest-tests")
    try:
        yield admin
    finally:
        admin.close()


def wait_for_topic(admin: Any, name: str, partitions: int, timeout: float = 30.0) -> None:
    """Until metadata shows every partition of the topic with a leader."""
    deadline = time.monotonic() + timeout
    while True:
        desc = admin.describe_topics([name])[0]
        parts = desc.get("partitions") or []
        if (
            desc.get("error_code") == 0
            and len(parts) == partitions
            and all(p.get("error_code") == 0 and p.get("leader_id", -1) >= 0 for p in parts)
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {desc}")
        time.sleep(0.05)


@pytest.fixture
def topic_factory(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """topic_factory(partitions=3, name=None, **configs) -> a fresh topic name (uuid suffix), ready to use.

    The topics are deleted when the test ends.
    """
    from kafka.admin import NewTopic

    created: list[str] = []

    def make(partitions: int = 3, name: str | None = None, **configs: str) -> str:
        topic = f"test-{name or 'topic'}-{uuid.uuid4().hex[:12]}"
        new = NewTopic(topic, num_partitions=partitions, replication_factor=1, topic_configs=configs or None)
        kafka_admin.create_topics([new])
        created.append(topic)
        wait_for_topic(kafka_admin, topic, partitions)
        return topic

    yield make
    if created:
        try:
            kafka_admin.delete_topics(created)
        except Exception:  # cleanup only: a leftover test topic is harmless
            pass


@pytest.fixture
def kafka_producer(kafka_bootstrap: str, topic_factory: Any) -> Iterator[Any]:
    """A KafkaProducer for one test (acks=all). Per test, not per session: a long-lived producer keeps
    refreshing metadata for the topics it wrote to and logs an ERROR for each one topic_factory deletes.
    It depends on topic_factory so that it is closed before the test's topics are deleted."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, client_id="kingest-tests", acks="all", linger_ms=2)
    try:
        yield producer
    finally:
        producer.close()


Headers = list[tuple[str, bytes]]


@pytest.fixture
def produce(kafka_producer: Any) -> Callable[..., list[tuple[int, int]]]:
    """produce(topic, values, partition=None, key=None, headers=None) -> [(partition, offset), ...].

    values: bytes, str (UTF-8) or None (a tombstone); key: bytes/str/None, the same for every value;
    headers: [(name, bytes)]. Flushes before returning, so the records are in the log.
    """

    def send(
        topic: str,
        values: Iterable[bytes | str | None],
        partition: int | None = None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> list[tuple[int, int]]:
        k = key.encode() if isinstance(key, str) else key
        futures = [
            kafka_producer.send(
                topic,
                value=v.encode() if isinstance(v, str) else v,
                key=k,
                partition=partition,
                headers=list(headers) if headers else None,
            )
            for v in values
        ]
        kafka_producer.flush()
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]

    return send


# --------------------------------------------------------------------------------------------- S3


def _s3_settings(devservices: ModuleType) -> dict[str, Any]:
    s3 = devservices.S3()
    return {
        "endpoint": os.environ.get("KINGEST_S3_ENDPOINT") or s3.endpoint,
        "key": s3.access_key,
        "secret": s3.secret_key,
        "bucket": s3.bucket,
        "explicit": bool(os.environ.get("KINGEST_S3_ENDPOINT")),
    }


@pytest.fixture(scope="session")
def s3_endpoint(devservices: ModuleType) -> Iterator[str]:
    """http://host:port of an S3 server that accepts the dev credentials and has the dev bucket."""
    cfg = _s3_settings(devservices)
    if cfg["explicit"]:
        yield cfg["endpoint"]  # someone else's S3: trust it, the tests will tell
        return
    s3 = devservices.S3()
    status = devservices.s3_bucket_status(s3.port, cfg["key"], cfg["secret"], cfg["bucket"])
    if status == 200:
        yield cfg["endpoint"]
        return
    if status is not None and s3.running_pid() is None:
        pytest.fail(
            f"something answers on {cfg['endpoint']} (HTTP {status} for bucket {cfg['bucket']}) but it is not "
            "the devservices S3 server with the dev credentials; stop it or set KINGEST_S3_PORT",
            pytrace=False,
        )
    started = _start(devservices, "s3")
    try:
        yield cfg["endpoint"]
    finally:
        if started:
            devservices.down("s3")


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str, devservices: ModuleType) -> str:
    return _s3_settings(devservices)["bucket"]


@pytest.fixture(scope="session")
def s3_storage_options(s3_endpoint: str, devservices: ModuleType) -> dict[str, Any]:
    """fsspec/s3fs storage options: fsspec.filesystem("s3", **opts) or pd/pyarrow `storage_options=opts`.

    s3fs 2026.9 takes endpoint_url as a top-level argument (it also accepts client_kwargs={"endpoint_url": ...}).
    """
    cfg = _s3_settings(devservices)
    return {"key": cfg["key"], "secret": cfg["secret"], "endpoint_url": s3_endpoint}


@pytest.fixture(scope="session")
def s3_https(s3_endpoint: str, devservices: ModuleType) -> dict[str, Any]:
    """The dev S3 server's HTTPS endpoint (the dev CA's certificate) and the CA file: "endpoint", "ca", "key",
    "secret", "bucket"."""
    s3 = devservices.S3()
    if _s3_settings(devservices)["explicit"] or not _port_open(s3.https_port):
        pytest.skip(f"no S3 HTTPS endpoint on 127.0.0.1:{s3.https_port} (not the devservices S3 server?)")
    cfg = _s3_settings(devservices)
    return {"endpoint": s3.https_endpoint, "ca": str(s3.tls.ca), **{k: cfg[k] for k in ("key", "secret", "bucket")}}


@pytest.fixture
def s3_fs(s3_storage_options: dict[str, Any]) -> Any:
    import fsspec

    return fsspec.filesystem("s3", **s3_storage_options)


@pytest.fixture
def s3_prefix(s3_bucket: str, s3_fs: Any) -> Iterator[str]:
    """A fresh, empty s3://<bucket>/test-<uuid> URL (no trailing slash); removed after the test."""
    url = f"s3://{s3_bucket}/test-{uuid.uuid4().hex}"
    yield url
    try:
        s3_fs.rm(url, recursive=True)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------- schema registry


@pytest.fixture(scope="session")
def registry_url(devservices: ModuleType) -> Iterator[str]:
    """http://host:port of a schema registry (Apicurio Registry) whose Confluent-compatible API is
    <url>/apis/ccompat/v7, with global compatibility BACKWARD (started for the session if needed).

    A reused registry keeps what earlier runs registered, and schema ids are global across subjects: use fresh
    subject names (a uuid) and take ids from the answers, never assume 1."""
    explicit = os.environ.get("KINGEST_REGISTRY_URL")
    if explicit:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{explicit.rstrip('/')}/apis/ccompat/v7/subjects", timeout=5):
                pass
        except OSError as e:
            pytest.fail(f"KINGEST_REGISTRY_URL={explicit} does not answer the Confluent API: {e}", pytrace=False)
        yield explicit.rstrip("/")  # someone else's registry: trust it, the tests will tell
        return
    # also when it runs already: `up` reuses it and sets the global compatibility again
    started = _start(devservices, "registry")
    try:
        yield devservices.Registry().url
    finally:
        if started:
            devservices.down("registry")
