"""Which S3 client serves the save path's requests (kingest/lake.py ``_direct_s3``): obstore only when the storage
options mean the same to it as to s3fs/botocore; s3fs otherwise. No network: building a client sends nothing.
The requests themselves, and their errors, are tested against the dev S3 server in
tests/integration/test_lake_s3.py."""

from __future__ import annotations

import pytest

from kingest.lake import Lake, _direct_s3

DEV = {"endpoint_url": "http://127.0.0.1:8333", "key": "k", "secret": "s"}
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (*AWS_ENV, "AWS_DEFAULT_REGION", "KINGEST_S3_CLIENT", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "options",
    [
        DEV,
        {**DEV, "token": "t"},
        {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://localhost:9000", "region_name": "eu"}},
        {**DEV, "endpoint_url": "http://minio:9000", "config_kwargs": {"s3": {"addressing_style": "path"}}},
        {**DEV, "config_kwargs": {"max_pool_connections": 64}},
        {"key": "k", "secret": "s", "client_kwargs": {"region_name": "eu-west-1"}},  # AWS itself
    ],
)
def test_obstore_serves_options_both_clients_read_alike(options):
    assert _direct_s3("s3://bucket/lake", options) is not None


@pytest.mark.parametrize(
    "options",
    [
        {**DEV, "endpoint_url": "https://127.0.0.1:8433"},  # over https the two may trust different roots
        {**DEV, "client_kwargs": {"verify": "/ca.pem"}},
        {**DEV, "endpoint_url": "http://minio:9000"},  # a named endpoint: botocore picks the addressing itself
        {**DEV, "s3_additional_kwargs": {"ServerSideEncryption": "aws:kms"}},  # needs botocore
        {**DEV, "requester_pays": True},
        {**DEV, "config_kwargs": {"retries": {"max_attempts": 2}}},
        {"endpoint_url": "http://127.0.0.1:8333"},  # no keys, nothing in the environment: botocore's chain
        {"key": "k", "secret": "s"},  # AWS with no region known: botocore finds the bucket's region
        {**DEV, "key": None},
    ],
)
def test_s3fs_serves_every_other_setting(options):
    assert _direct_s3("s3://bucket/lake", options) is None


def test_credentials_from_the_environment_unless_a_profile_is_named(monkeypatch):
    endpoint_only = {"endpoint_url": "http://127.0.0.1:8333"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert _direct_s3("s3://bucket/lake", endpoint_only) is not None
    monkeypatch.setenv("AWS_PROFILE", "prod")
    assert _direct_s3("s3://bucket/lake", endpoint_only) is None


def test_aws_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert _direct_s3("s3://bucket/lake", {"key": "k", "secret": "s"}) is not None


def test_kingest_s3_client_s3fs_turns_obstore_off(monkeypatch):
    monkeypatch.setenv("KINGEST_S3_CLIENT", "s3fs")
    assert _direct_s3("s3://bucket/lake", DEV) is None
    assert Lake("s3://bucket/lake", DEV)._direct is None


def test_the_bucket_is_the_lakes_and_keys_are_below_it():
    direct = Lake("s3://bucket/some/prefix", DEV, connections=64)._direct
    assert direct is not None and direct.bucket == "bucket"
    assert direct._key("bucket/some/prefix/_kingest/x.json") == "some/prefix/_kingest/x.json"


def _s3_error(status: str, code: str, message: str) -> str:
    return (
        f"Error performing PUT http://s3/bucket/k in 1ms - Server returned non-2xx status code: {status}: "
        f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )


@pytest.mark.parametrize(
    ("error", "create", "expected", "says"),
    [
        # exclusive create of a taken name: 412 only
        ("AlreadyExistsError", True, FileExistsError, "exists"),
        # 409 while another write of the name is in progress (AWS: "retry"), and 409 OperationAborted: retried
        ("AlreadyExistsError:409", True, ConnectionError, "conflicting"),
        ("AlreadyExistsError:409", False, ConnectionError, "conflicting"),
        ("PermissionDeniedError", False, PermissionError, "signature"),
        ("GenericError:ExpiredToken", False, PermissionError, "token has expired"),
        ("InvalidPathError", False, ValueError, "not a valid S3 key"),
        ("GenericError", False, ConnectionError, "error sending request"),
        ("GenericError:500", False, ConnectionError, "internal error"),
    ],
)
def test_obstore_errors_become_the_ones_the_retries_know(error, create, expected, says):
    """What Lake._retry does with them: FileExistsError is a taken name, PermissionError and ValueError are
    raised at once, ConnectionError is retried (an OSError: see lake._is_transient)."""
    from obstore import exceptions

    from kingest.lake import _PERMANENT, _is_transient, _translate

    kind, _, detail = error.partition(":")
    text = {
        "": "HTTP error: error sending request",
        "409": _s3_error("409 Conflict", "ConditionalRequestConflict", "A conflicting operation"),
        "ExpiredToken": _s3_error("400 Bad Request", "ExpiredToken", "The provided token has expired."),
        "500": _s3_error("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    }[detail]
    if kind == "AlreadyExistsError" and not detail:
        text = _s3_error("412 Precondition Failed", "PreconditionFailed", "At least one of the pre-conditions")
    if kind == "PermissionDeniedError":
        text = _s3_error("403 Forbidden", "SignatureDoesNotMatch", "The request signature we calculated")
    translated = _translate(getattr(exceptions, kind)(text), "bucket/k", create=create)
    assert type(translated) is expected
    assert says in str(translated).lower() or says in str(translated)
    retried = not isinstance(translated, _PERMANENT) and _is_transient(translated)  # as Lake._retry decides
    assert retried == (expected is ConnectionError)


def test_a_writer_forgets_its_pending_records_of_a_partition_it_no_longer_holds():
    from kingest.manifest import ManifestStore

    store = ManifestStore(Lake("memory://forget-test"), "p")
    for partition in (0, 1):
        for version in (1, 2):
            store.write_pending("t", partition, "w", [f"f{partition}{version}"], version=version)
    store.forget("t", 0)
    assert sorted(store._written) == [store._pending_rel("t", 1, v, "w") for v in (1, 2)]
