"""Fixtures of the integration tests that need servers of their own (see private_services.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from .private_services import PrivateService, free_ports, shared_jars


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[PrivateService]:
    """A second single-node KRaft broker on free ports, for a test that stops or freezes it. `kafka_bootstrap`
    first: the shared broker (and so its jars) exists before this one is made."""
    home = tmp_path_factory.mktemp("private-kafka")
    (home / "jars").symlink_to(shared_jars(), target_is_directory=True)
    plain, controller, sasl, *tls = free_ports(8)
    names = ("SSL", "MTLS", "SASL_SSL", "SSL_WRONG_HOST", "SSL_EXPIRED")
    broker = PrivateService(
        "kafka",
        home,
        {
            "KINGEST_KAFKA_PORT": str(plain),
            "KINGEST_KAFKA_CONTROLLER_PORT": str(controller),
            "KINGEST_KAFKA_SASL_PORT": str(sasl),
            **{f"KINGEST_KAFKA_{name}_PORT": str(port) for name, port in zip(names, tls, strict=True)},
        },
    )
    broker.bootstrap = f"127.0.0.1:{plain}"
    broker.up()
    try:
        yield broker
    finally:
        try:
            broker.thaw()  # a test that failed mid-freeze must not leave a stopped JVM behind
        except (OSError, ValueError):
            pass
        broker.down()
        shutil.rmtree(home / "kafka", ignore_errors=True)


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateService]:
    """A second `weed mini` S3 server on free ports, with its own bucket and credentials."""
    home = tmp_path_factory.mktemp("private-s3")
    s3, master, volume, filer, admin, https = free_ports(6, grpc=True)
    server = PrivateService(
        "s3",
        home,
        {
            "KINGEST_S3_PORT": str(s3),
            "KINGEST_S3_MASTER_PORT": str(master),
            "KINGEST_S3_VOLUME_PORT": str(volume),
            "KINGEST_S3_FILER_PORT": str(filer),
            "KINGEST_S3_ADMIN_PORT": str(admin),
            "KINGEST_S3_HTTPS_PORT": str(https),
            "KINGEST_S3_ACCESS_KEY": "faults",
            "KINGEST_S3_SECRET_KEY": "faults-secret-key",
            "KINGEST_S3_BUCKET": "faults",
        },
    )
    server.storage_options = {
        "endpoint_url": f"http://127.0.0.1:{s3}",
        "key": "faults",
        "secret": "faults-secret-key",
    }
    server.up()
    try:
        yield server
    finally:
        server.down()
        shutil.rmtree(home / "s3", ignore_errors=True)
