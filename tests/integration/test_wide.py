"""Wide topics on a far-away object store: what a PUT costs in round trips."""

from __future__ import annotations

import pytest

from kingest.lake import EXPECT_CONTINUE_FROM, Lake
from services.latency_proxy import LatencyProxy

pytestmark = pytest.mark.integration


def test_a_small_put_is_one_round_trip_and_a_large_one_asks_first(s3_prefix, s3_storage_options):
    """botocore asks before every PUT body (Expect: 100-continue): two round trips. kingest keeps that for large
    bodies only: a pending record or a manifest version (a few hundred bytes) costs one, on S3 20-50 ms."""
    with LatencyProxy(s3_storage_options["endpoint_url"], delay=0.0) as proxy:
        lake = Lake(s3_prefix, s3_storage_options | {"endpoint_url": proxy.url, "skip_instance_cache": True})
        for i in range(5):
            lake.put(f"small-{i}", b"x" * 500)
        assert lake.create("version-1", b"{}")  # exclusive create: If-None-Match, one round trip too
        small = proxy.requests
        lake.put("large", b"x" * EXPECT_CONTINUE_FROM)
        large = proxy.requests - small
        assert lake.read("small-3") == b"x" * 500 and len(lake.read("large") or b"") == EXPECT_CONTINUE_FROM
    assert small == 6, f"{small} round trips for 6 small PUTs"
    assert large == 2  # the head, then the body after the server's go-ahead


def test_many_objects_are_deleted_in_one_request(s3_prefix, s3_storage_options):
    with LatencyProxy(s3_storage_options["endpoint_url"], delay=0.0) as proxy:
        lake = Lake(s3_prefix, s3_storage_options | {"endpoint_url": proxy.url, "skip_instance_cache": True})
        for i in range(30):
            lake.put(f"records/{i:02d}.json", b"{}")
        before = proxy.http_requests
        lake.delete([f"records/{i:02d}.json" for i in range(30)] + ["records/never-there.json"])
        deleting = proxy.http_requests - before
        assert not [rel for rel in lake.find("records") if rel.endswith(".json")]  # (SeaweedFS keeps the folder)
    assert deleting == 1
