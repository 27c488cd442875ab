"""The lake's S3 requests against the dev S3 server, through each client (obstore for the save path when the
settings allow it, s3fs otherwise: kingest/lake.py ``_direct_s3``): the same outcomes, the same errors. A run's
save path on S3 is covered by the runs, crash points and outages of the other tests; this pins what each
request does and says."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest

from kingest.errors import LakeUnavailable, SetupError
from kingest.lake import Lake

pytestmark = pytest.mark.integration


@pytest.fixture(params=["obstore", "s3fs"])
def client(request, monkeypatch) -> str:
    if request.param == "s3fs":
        monkeypatch.setenv("KINGEST_S3_CLIENT", "s3fs")
    return request.param


def open_lake(url: str, options: dict[str, Any], client: str, **kwargs: Any) -> Lake:
    lake = Lake(url, options, **kwargs)
    assert (lake._direct is not None) == (client == "obstore"), "the dev server's settings pick obstore"
    return lake


def test_put_create_read_and_their_errors_are_the_same_through_either_client(client, s3_prefix, s3_storage_options):
    lake = open_lake(s3_prefix, s3_storage_options, client)
    assert lake.probe() is True  # writable, and exclusive create is enforced
    lake.put("a/b.json", b"one")
    lake.put("a/b.json", b"two")  # replace
    assert lake.read("a/b.json") == b"two"
    assert lake.read("a/missing.json") is None
    assert lake.create("a/c.json", b"first") is True
    assert lake.create("a/c.json", b"second") is False  # taken: the first stays
    assert lake.read("a/c.json") == b"first"
    assert lake.listdir("a") == {"b.json": 3, "c.json": 5}  # s3fs lists what obstore wrote
    lake.delete(["a/b.json", "a/c.json"])
    assert not {"b.json", "c.json"} & set(lake.listdir("a"))


def test_wrong_credentials_are_refused_at_once_with_the_stores_message(client, s3_prefix, s3_storage_options):
    lake = open_lake(s3_prefix, {**s3_storage_options, "secret": "not-the-secret"}, client)
    with pytest.raises(SetupError) as raised:
        lake.probe()
    assert "The request signature we calculated does not match the signature you provided" in raised.value.message
    assert "not-the-secret" not in str(raised.value.message) + str(raised.value.hint)


def test_a_store_that_does_not_answer_is_retried_then_named(client, s3_storage_options):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    options = {**s3_storage_options, "endpoint_url": f"http://127.0.0.1:{port}"}
    lake = open_lake(f"s3://kingest/lake-{uuid.uuid4().hex[:8]}", options, client, retry_seconds=1.0)
    with pytest.raises(LakeUnavailable) as raised:
        lake.put("x.json", b"{}")
    assert "did not answer for" in raised.value.message
