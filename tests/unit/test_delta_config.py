"""lake.format: delta in the config and the commands: what is refused, with what message, before anything runs."""

from __future__ import annotations

import sys

import pytest

from kingest import config as config_module
from kingest.errors import ConfigError, SetupError

BASE = """
pipeline: orders
kafka: {{bootstrap_servers: "127.0.0.1:9092", topics: [orders]}}
records: {{format: json{records}}}
lake: {{path: ./lake/orders, format: delta{lake}}}
semantics: exactly-once
"""


def parse(records: str = "", lake: str = "") -> config_module.Config:
    return config_module.parse(BASE.format(records=records, lake=lake))


def test_delta_is_a_lake_format_and_parquet_the_default():
    assert parse().lake.format == "delta"
    assert config_module.parse(BASE.format(records="", lake="").replace(", format: delta", "")).lake.format == "parquet"


def test_an_unknown_format_names_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        config_module.parse(BASE.format(records="", lake="").replace("format: delta", "format: iceberg"))
    assert "parquet" in str(error.value) and "delta" in str(error.value)


def test_partition_by_with_delta_is_taken():
    assert [str(p) for p in parse(lake=", partition_by: [date, hour]").lake.partition_by] == ["date", "hour"]


def test_dead_letters_with_delta_are_refused_with_what_to_do():
    with pytest.raises(ConfigError) as error:
        parse(records=", on_error: dead-letter")
    assert "dead-letter" in error.value.message and "skip" in (error.value.hint or "")


def test_a_missing_deltalake_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    from kingest.offsets import open_table

    monkeypatch.setitem(sys.modules, "deltalake", None)  # import deltalake now raises ImportError
    monkeypatch.delitem(sys.modules, "kingest.delta", raising=False)
    with pytest.raises(SetupError) as error:
        open_table(parse())
    assert "pip install 'kingest[delta]'" in (error.value.hint or "")
