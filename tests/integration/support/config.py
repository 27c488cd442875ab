"""The one writer of pipeline configs for integration tests: a complete config with test defaults, in which a
test overrides only what it is about (nested sections are merged, not replaced)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import kafka_client


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, recursively for mappings (a list or a scalar replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def default_config() -> dict[str, Any]:
    """What a test config holds unless the test says otherwise (a fresh pipeline name each time)."""
    return {
        "pipeline": f"test-{uuid.uuid4().hex[:8]}",
        "kafka": {"client": kafka_client()},
        "records": {"format": "json"},
        "lake": {},
        "batch": {"max_records": 250, "max_bytes": "8MiB", "max_age": "2s"},
        "semantics": "at-least-once",
    }


def write_config(
    path: Path,
    *,
    bootstrap: str | None = None,
    topic: str | None = None,
    lake: str | Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Write a pipeline config to ``path`` and return ``path``.

    bootstrap, topic, lake and storage_options are shortcuts for kafka.bootstrap_servers, kafka.topics,
    lake.path and lake.storage_options; any other keyword is a top-level key (``semantics="exactly-once"``,
    ``batch={"max_age": "1s"}``), merged into the defaults. ``lake`` may also be the whole section (a mapping),
    so that a config read back with read_config can be written again with changes.
    """
    if isinstance(lake, Mapping):
        overrides = merge({"lake": lake}, overrides)
        lake = None
    shortcuts: dict[str, Any] = {"kafka": {}, "lake": {}}
    if bootstrap is not None:
        shortcuts["kafka"]["bootstrap_servers"] = bootstrap
    if topic is not None:
        shortcuts["kafka"]["topics"] = [topic]
    if lake is not None:
        shortcuts["lake"]["path"] = lake
    if storage_options is not None:
        shortcuts["lake"]["storage_options"] = storage_options
    config = merge(merge(default_config(), shortcuts), overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def crash_config(path: Path, **overrides: Any) -> Path:
    """A config for crash tests: small batches and polls, so that a few thousand records pass each crash point
    several times; static group membership and a short session, so that a restarted process takes over its
    killed predecessor's partitions at once instead of waiting out the session timeout."""
    tag = uuid.uuid4().hex[:8]
    preset = {
        "kafka": {
            "group_instance_id": f"kingest-test-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": 150,
        },
        "batch": {"max_records": 200, "max_bytes": "8MiB", "max_age": "30s"},
    }
    return write_config(path, **merge(preset, overrides))


SESSION_TIMEOUT_MS = 6000  # the dev broker's group.min.session.timeout.ms
HEARTBEAT_INTERVAL_MS = 1000


def scale_config(path: Path, **overrides: Any) -> Path:
    """A config for several instances (see Instance): short session timeout, so that a frozen instance is
    noticed within seconds; client_id from the instance's environment."""
    preset = {
        "kafka": {
            "client_id": "${KINGEST_TEST_INSTANCE:-kingest}",
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        },
        "batch": {"max_records": 2000, "max_bytes": "16MiB", "max_age": "2s"},
    }
    return write_config(path, **merge(preset, overrides))
