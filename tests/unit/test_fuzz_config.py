"""Hypothesis fuzzing of the config loader: whatever the text, `config.parse` returns a Config or raises
ConfigError (the documented error, which the CLI prints without a traceback). Nothing else may escape."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kingest import config
from kingest.config import Config
from kingest.errors import ConfigError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "pipeline": "orders",
    "kafka": {"bootstrap_servers": "localhost:9092", "topics": ["orders"], "group_id": "g"},
    "records": {"format": "json", "on_error": "skip", "schema": {"id": "int64", "at": "timestamp"}},
    "lake": {"path": "./lake/orders", "storage_options": {}, "compression": "zstd", "partition_by": ["date"]},
    "batch": {"max_records": 10000, "max_bytes": "64MiB", "max_age": "10s"},
    "semantics": "at-least-once",
}

KEYS = [
    "pipeline", "kafka", "records", "lake", "batch", "semantics", "bootstrap_servers", "topics", "group_id",
    "format", "schema", "on_error", "path", "storage_options", "max_records", "max_bytes", "max_age",
    "security_protocol", "sasl_mechanism", "consumer", "partition_by", "compression", "auto_offset_reset",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["64MiB", "10s", "500ms", "-1", "0", "1e400", "${KINGEST_FUZZ_UNSET}", "${KINGEST_FUZZ_SET}",
                     "${KINGEST_FUZZ_UNSET:-7}", "${KINGEST_FUZZ_UNSET:-2001-13-45}", "${X:-[1}", "json", "skip",
                     "exactly-once", "2001-12-14", "~", "!!binary", "date", "s3://", "memory://x"]),
)  # fmt: skip
structures = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)

YAML_BITS = [
    "pipeline: orders\n", "kafka:\n", "  topics: [a, b]\n", "  bootstrap_servers: x:1\n", "lake:\n", "  path: /x\n",
    "records: {format: json}\n", "batch:\n", "  max_bytes: 1KiB\n", "- item\n", "  - nested\n", "key: value\n",
    "&anchor ", "*anchor ", "!!python/object:os.system ", "!!binary ", "!!timestamp ", "!!int ", "!!float ",
    "? complex\n", ": value\n", "'quoted\n", '"dq\\x\n', "{", "}", "[", "]", ",", ":", "#", "\t", "\x00", "%YAML 1.1\n",
    "---\n", "...\n", "|\n  block\n", ">\n  folded\n", "${KINGEST_FUZZ_UNSET}", "<<: *anchor\n", "2001-13-45\n",
    "a: &r [*r]\n", "0x1F", "1e999", ".nan", "~", "\ufeff", "\u2028",
]  # fmt: skip


def parse_only_config_error(text: str) -> Config | None:
    try:
        return config.parse(text, "fuzz.yaml")
    except ConfigError as error:
        assert error.message.strip()
        assert "Traceback" not in error.message
        return None


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KINGEST_FUZZ_UNSET", raising=False)
    monkeypatch.setenv("KINGEST_FUZZ_SET", "2001-13-45")


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    parse_only_config_error(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_BITS), max_size=25))
def test_yaml_ish_text(bits: list[str]) -> None:
    parse_only_config_error("".join(bits))


@FUZZ
@given(structures)
def test_random_structures(doc: Any) -> None:
    parse_only_config_error(yaml.safe_dump(doc, allow_unicode=True))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


@FUZZ
@given(st.data())
def test_valid_config_with_one_value_replaced(data: st.DataObject) -> None:
    """Deep coverage: a valid config with one value somewhere replaced by anything."""
    doc = copy.deepcopy(VALID)
    path = data.draw(st.sampled_from(_paths(doc)))
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = data.draw(structures)
    parse_only_config_error(yaml.safe_dump(doc, allow_unicode=True))


def test_the_valid_config_parses() -> None:
    """The fuzzed mutations start from a config that works (or the test above would prove little)."""
    loaded = config.parse(yaml.safe_dump(VALID), "valid.yaml")
    assert loaded.records.on_error == "skip"
    assert os.environ.get("KINGEST_FUZZ_UNSET") is None
