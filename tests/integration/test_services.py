"""The dev services themselves: the real Kafka broker, S3 server and schema registry behave as kingest's tests
assume.

Also checks services/devservices.py's messages for a bad set-up (those tests start no service).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVSERVICES = ROOT / "services" / "devservices.py"


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0, **config: Any) -> list[Any]:
    """Read every partition of topic from the beginning until `expected` records arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **config)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------- Kafka


@pytest.mark.integration
def test_kafka_round_trip_values_keys_headers(kafka_bootstrap: str, topic_factory: Any, produce: Any) -> None:
    topic = topic_factory(partitions=3, name="roundtrip")
    sent: dict[tuple[int, int], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = {}
    for p in range(3):
        headers = [("source", b"test"), ("partition", str(p).encode())]
        values = [f"p{p}-v{i}".encode() for i in range(5)] + [None]  # None: a tombstone
        key = f"key-{p}".encode()
        positions = produce(topic, values, partition=p, key=key, headers=headers)
        assert [part for part, _ in positions] == [p] * len(values)
        assert [off for _, off in positions] == list(range(len(values)))  # a fresh topic starts at 0
        for pos, v in zip(positions, values, strict=True):
            sent[pos] = (key, v, headers)
    keyed = produce(topic, ["by-key"] * 4, key="customer-42")  # no partition: the key picks one
    assert len({part for part, _ in keyed}) == 1
    for pos in keyed:
        sent[pos] = (b"customer-42", b"by-key", [])

    records = consume_all(kafka_bootstrap, topic, len(sent))
    got = {(r.partition, r.offset): (r.key, r.value, [(k, bytes(v)) for k, v in r.headers]) for r in records}
    assert got == sent


@pytest.mark.integration
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_listener(kafka_sasl: dict[str, Any], topic_factory: Any, mechanism: str) -> None:
    from kafka import KafkaProducer

    topic = topic_factory(partitions=1, name="sasl")
    producer = KafkaProducer(
        bootstrap_servers=kafka_sasl["bootstrap"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username=kafka_sasl["username"],
        sasl_plain_password=kafka_sasl["password"],
        bootstrap_timeout_ms=10_000,
    )
    try:
        md = producer.send(topic, b"over sasl").get(timeout=10)
    finally:
        producer.close()
    assert (md.partition, md.offset) == (0, 0)


@pytest.mark.integration
def test_kafka_sasl_wrong_password_refused(kafka_sasl: dict[str, Any]) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # kafka-python 3.0.12 reports a failed SASL authentication as a bootstrap timeout, not an auth error
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=kafka_sasl["bootstrap"],
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username=kafka_sasl["username"],
            sasl_plain_password="wrong-password",
            bootstrap_timeout_ms=3000,
        )


@pytest.mark.integration
def test_kafka_tool_consumer_groups(kafka_bootstrap: str, topic_factory: Any, produce: Any) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = topic_factory(partitions=1, name="groups")
    produce(topic, [b"a", b"b", b"c"])
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    finally:
        consumer.close()

    run = [sys.executable, str(DEVSERVICES), "kafka-tool", "consumer-groups", "--bootstrap-server", kafka_bootstrap]
    listed = subprocess.run([*run, "--list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert group in listed.stdout.split()
    assert " INFO " not in listed.stdout  # tool logging goes to stderr at WARN

    described = subprocess.run([*run, "--describe", "--group", group], capture_output=True, text=True, timeout=120)
    assert described.returncode == 0, described.stderr
    row = next(line.split() for line in described.stdout.splitlines() if topic in line)
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert row[1:6] == [topic, "0", "2", "3", "1"]


# --------------------------------------------------------------------------------------------- S3


@pytest.mark.integration
def test_s3_write_read_list_delete(s3_fs: Any, s3_prefix: str) -> None:
    path = f"{s3_prefix}/dir/object.bin"
    data = os.urandom(100_000)
    s3_fs.pipe_file(path, data)
    assert s3_fs.cat_file(path) == data
    assert s3_fs.info(path)["size"] == len(data)
    listed = s3_fs.ls(f"{s3_prefix}/dir", detail=False, refresh=True)
    assert [p.rsplit("/", 1)[1] for p in listed] == ["object.bin"]
    s3_fs.rm(path)
    assert not s3_fs.exists(path)
    # SeaweedFS keeps the emptied "folder" for a while (its EmptyFolderCleaner is asynchronous), so a listing
    # may still show dir/ as a directory; no object may be left.
    left = s3_fs.ls(s3_prefix, detail=True, refresh=True)
    assert [e["name"] for e in left if e["type"] != "directory"] == []


@pytest.mark.integration
def test_s3_exclusive_create(s3_fs: Any, s3_prefix: str) -> None:
    """mode="create" sends If-None-Match: * and the server enforces it: the manifest commit relies on it."""
    path = f"{s3_prefix}/manifest/00000001.json"
    s3_fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(OSError) as excinfo:
        s3_fs.pipe_file(path, b"second", mode="create")
    assert not isinstance(excinfo.value, PermissionError | FileNotFoundError)
    assert s3_fs.cat_file(path) == b"first"


@pytest.mark.integration
def test_s3_wrong_secret_refused(s3_storage_options: dict[str, Any], s3_bucket: str) -> None:
    import fsspec

    good = fsspec.filesystem("s3", skip_instance_cache=True, **s3_storage_options)
    good.ls(s3_bucket, refresh=True)  # the right secret works

    bad = fsspec.filesystem("s3", skip_instance_cache=True, **{**s3_storage_options, "secret": "wrong-secret"})
    with pytest.raises(PermissionError):
        bad.ls(s3_bucket, refresh=True)
    with pytest.raises(PermissionError):
        bad.pipe_file(f"{s3_bucket}/test-refused-{uuid.uuid4().hex}", b"x")

    anon = fsspec.filesystem("s3", anon=True, skip_instance_cache=True, endpoint_url=s3_storage_options["endpoint_url"])
    with pytest.raises(PermissionError):
        anon.ls(s3_bucket, refresh=True)


# --------------------------------------------------------------------------------------------- schema registry


def _ccompat(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the registry's Confluent-compatible API: (HTTP status, JSON answer)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/apis/ccompat/v7{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.integration
def test_registry_register_fetch_and_backward_compatibility(registry_url: str) -> None:
    """Confluent's API: an id per distinct schema, global across subjects; BACKWARD refuses a new field without
    a default (409) and takes one with a default."""
    assert _ccompat(registry_url, "GET", "/config") == (200, {"compatibilityLevel": "BACKWARD"})
    subject, other = (f"test-{uuid.uuid4().hex}-value" for _ in range(2))
    fields: list[dict[str, Any]] = [{"name": "a", "type": "long"}]
    record = {"type": "record", "name": f"r{uuid.uuid4().hex}", "fields": fields}  # new content, a new id
    schema = json.dumps(record)

    status, body = _ccompat(registry_url, "POST", f"/subjects/{subject}/versions", {"schema": schema})
    assert status == 200, body
    schema_id = body["id"]
    assert _ccompat(registry_url, "GET", f"/schemas/ids/{schema_id}") == (
        200,
        {"schema": schema, "schemaType": "AVRO", "references": []},
    )
    for again in (subject, other):  # the same schema again, and under another subject: the same id
        assert _ccompat(registry_url, "POST", f"/subjects/{again}/versions", {"schema": schema}) == (
            200,
            {"id": schema_id},
        )

    no_default = json.dumps({**record, "fields": [*fields, {"name": "b", "type": "string"}]})
    status, body = _ccompat(registry_url, "POST", f"/subjects/{subject}/versions", {"schema": no_default})
    assert (status, body["error_code"]) == (409, 409), body
    with_default = json.dumps({**record, "fields": [*fields, {"name": "b", "type": "string", "default": ""}]})
    status, body = _ccompat(registry_url, "POST", f"/subjects/{subject}/versions", {"schema": with_default})
    assert status == 200 and body["id"] != schema_id, body
    assert _ccompat(registry_url, "GET", f"/subjects/{subject}/versions") == (200, [1, 2])


@pytest.mark.integration
def test_registry_in_status_and_env(registry_url: str) -> None:
    if os.environ.get("KINGEST_REGISTRY_URL"):
        pytest.skip("KINGEST_REGISTRY_URL is set: not the devservices registry")
    status = _devservices(["status"], {})
    assert "registry: up (pid " in status.stdout and "compatibility BACKWARD" in status.stdout, status.stdout
    env = _devservices(["env"], {})
    assert f"export KINGEST_REGISTRY_URL='{registry_url}'" in env.stdout.splitlines()


# --------------------------------------------------------------------------------------------- bad set-up


def _listen_on_free_port(lo: int = 20000, hi: int = 30000) -> socket.socket:
    """A listening socket on 127.0.0.1 in [lo, hi) (low enough that port + 10000 is still a valid port)."""
    for _ in range(200):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", random.randrange(lo, hi)))
        except OSError:
            s.close()
            continue
        s.listen()
        return s
    raise RuntimeError("no free port found")


def _free_with_grpc_port() -> int:
    """A free port whose weed gRPC port (+ 10000) is free too, both below Linux's ephemeral range (32768 and up,
    where this machine's own client connections take ports: one of them once sat on a gRPC port the test had
    not checked, and devservices rightly named that port instead)."""
    for _ in range(200):
        with _listen_on_free_port(12000, 22000) as s:
            port = s.getsockname()[1]
            try:
                with socket.socket() as grpc:
                    grpc.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def _devservices(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEVSERVICES), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_kafka_port_taken(tmp_path: Path) -> None:
    with _listen_on_free_port() as taken:
        port = taken.getsockname()[1]
        out = _devservices(["up", "kafka"], {"KINGEST_DEV_DIR": str(tmp_path), "KINGEST_KAFKA_PORT": str(port)})
    assert out.returncode == 1
    message = out.stdout + out.stderr
    assert f"port {port}" in message and "KINGEST_KAFKA_PORT" in message
    assert "Traceback" not in message
    assert not (tmp_path / "kafka" / "kafka.pid").exists()


def test_up_registry_port_taken(tmp_path: Path) -> None:
    with _listen_on_free_port() as taken:
        port = taken.getsockname()[1]
        out = _devservices(["up", "registry"], {"KINGEST_DEV_DIR": str(tmp_path), "KINGEST_REGISTRY_PORT": str(port)})
    assert out.returncode == 1
    message = out.stdout + out.stderr
    assert f"port {port}" in message and "KINGEST_REGISTRY_PORT" in message
    assert "Traceback" not in message
    assert not (tmp_path / "registry" / "registry.pid").exists()
    assert not (tmp_path / "apicurio").exists()  # the port is checked before anything is fetched


def test_up_s3_grpc_port_taken(tmp_path: Path) -> None:
    """weed opens gRPC ports at HTTP port + 10000: those are checked too, and the message says which variable."""
    names = ["KINGEST_S3_PORT", "KINGEST_S3_MASTER_PORT", "KINGEST_S3_VOLUME_PORT", "KINGEST_S3_FILER_PORT"]
    env = {"KINGEST_DEV_DIR": str(tmp_path)}
    for name in names:  # free ports for the others, so only the one we occupy is in the way
        env[name] = str(_free_with_grpc_port())
    with _listen_on_free_port(30000, 40000) as taken:
        port = taken.getsockname()[1]
        env["KINGEST_S3_ADMIN_PORT"] = str(port - 10000)
        out = _devservices(["up", "s3"], env)
    assert out.returncode == 1
    message = out.stdout + out.stderr
    assert f"port {port}" in message and "KINGEST_S3_ADMIN_PORT + 10000" in message
    assert "Traceback" not in message


def test_up_kafka_without_java(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    names = ["PORT", "CONTROLLER_PORT", "SASL_PORT", "SSL_PORT", "MTLS_PORT", "SASL_SSL_PORT"]
    names += ["SSL_WRONG_HOST_PORT", "SSL_EXPIRED_PORT"]
    ports = [_listen_on_free_port() for _ in names]
    numbers = [str(s.getsockname()[1]) for s in ports]
    for s in ports:
        s.close()
    env = {
        "PATH": str(tmp_path / "bin"),  # no java, no mvn
        "KINGEST_DEV_DIR": str(tmp_path / "dev"),
        **{f"KINGEST_KAFKA_{name}": number for name, number in zip(names, numbers, strict=True)},
    }
    out = _devservices(["up", "kafka"], env)
    assert out.returncode == 1
    message = out.stdout + out.stderr
    assert "`java` nor `mvn` is on PATH" in message and "JDK 17" in message
    assert "Traceback" not in message


def test_kafka_tool_without_java(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    out = _devservices(["kafka-tool", "topics", "--list"], {"PATH": str(tmp_path / "bin")})
    assert out.returncode == 1
    assert "JDK 17" in out.stderr and "Traceback" not in out.stderr
