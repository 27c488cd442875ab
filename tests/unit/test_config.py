"""The config loader's promises beyond the bad-input table (tests/integration/test_bad_inputs.py): the issue's
example works as written, YAML features work or fail clearly, environment values keep YAML typing and stay
hidden, and docs/configuration.md documents every key there is (its table is the model's, kingest/config.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kingest import config
from kingest.config import RESERVED_COLUMNS, BatchConfig, KafkaConfig, LakeConfig, RecordsConfig
from kingest.encoder import METADATA_NAMES
from kingest.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

EXAMPLE = """\
pipeline: orders              # names the default consumer group (kingest-orders) and the manifest folder
kafka:
  bootstrap_servers: localhost:9092
  topics: [orders]
records:
  format: json                # raw | string | json
lake:
  path: ./lake/orders         # or s3://bucket/prefix
  storage_options: {}         # passed to fsspec/s3fs: endpoint_url, key, secret, ...
batch:
  max_records: 10000
  max_bytes: 64MiB
  max_age: 10s
semantics: at-least-once
"""


def error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "k.yaml")
    return caught.value.message


def test_the_issue_example_works_as_written():
    loaded = config.parse(EXAMPLE, "k.yaml")
    assert loaded.kafka.group_id == "kingest-orders" and loaded.kafka.topics == ("orders",)
    assert loaded.batch == BatchConfig(max_records=10000, max_bytes=64 * 2**20, max_age=10.0)
    assert loaded.records.on_error == "fail" and loaded.records.schema is None
    assert loaded.lake.compression == "zstd"


def test_anchors_aliases_and_merge_keys():
    loaded = config.parse(
        "pipeline: p\n"
        "kafka:\n  bootstrap_servers: &hosts localhost:9092\n  topics: [t]\n  client_id: *hosts\n"
        "lake:\n  path: s3://b/p\n  storage_options:\n    <<: {endpoint_url: 'http://e', key: base}\n    key: mine\n",
        "k.yaml",
    )
    assert loaded.kafka.client_id == "localhost:9092"
    assert dict(loaded.lake.storage_options) == {"endpoint_url": "http://e", "key": "mine"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pipeline: &a [*a]\n", "k.yaml:1: `pipeline[0]` refers to itself (a recursive YAML alias)"),
        ("pipeline: p\nbatch: {max_age: !!timestamp nope}\n", "k.yaml:2: `batch.max_age` = 'nope' cannot be read"),
        ("pipeline: !!python/object:os.system x\n", "k.yaml:1: `pipeline` = 'x' cannot be read: could not determine"),
        ("? [a, b]\n: 1\n", "k.yaml:1: a key must be a plain name, not a list or mapping"),
        ("pipeline: p\npipeline: q\n", "k.yaml:2: `pipeline` is given twice"),
        ("<<: 5\n", "k.yaml:1: `the config`: expected a mapping or list of mappings for merging"),
        ("[" * 3000 + "]" * 3000, "k.yaml: not valid YAML: nested too deeply"),
    ],
)
def test_yaml_features_fail_with_the_line(text: str, expected: str):
    assert error(text).startswith(expected)


def test_an_alias_bomb_is_refused_not_expanded():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
    )
    assert "the config is too large" in error(bomb)


def test_environment_values_keep_yaml_typing_and_are_never_echoed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KINGEST_T_RECORDS", "250")
    monkeypatch.setenv("KINGEST_T_AGE", "soon-ish")
    monkeypatch.delenv("KINGEST_T_UNSET", raising=False)
    base = "pipeline: p\nkafka: {bootstrap_servers: h:1, topics: [t]}\nlake: {path: x}\n"
    loaded = config.parse(
        base + "batch: {max_records: '${KINGEST_T_RECORDS}', max_bytes: '${KINGEST_T_UNSET:-1KiB}'}\n"
    )
    assert loaded.batch.max_records == 250 and loaded.batch.max_bytes == 1024
    message = error(base + "batch: {max_age: '${KINGEST_T_AGE}'}\n")
    assert "`batch.max_age` = (value hidden: it is a secret or comes from the environment)" in message
    assert "soon-ish" not in message


def test_compress_min_bytes_takes_a_size_or_zero():
    base = "pipeline: p\nkafka: {bootstrap_servers: h:1, topics: [t]}\n"
    assert config.parse(base + "lake: {path: x}\n").lake.compress_min_bytes == 64 * 1024
    assert config.parse(base + "lake: {path: x, compress_min_bytes: 0}\n").lake.compress_min_bytes == 0
    assert config.parse(base + "lake: {path: x, compress_min_bytes: 1MiB}\n").lake.compress_min_bytes == 2**20
    message = error(base + "lake: {path: x, compress_min_bytes: -1}\n")
    assert "`lake.compress_min_bytes` = -1" in message and "must be 0 or more" in message
    message = error(base + "lake: {path: x, compress_min_bytes: 0.4}\n")
    assert "`lake.compress_min_bytes` = 0.4" in message and "less than a byte" in message
    message = error(base + "lake: {path: x, compress_min_bytes: small}\n")
    assert "`lake.compress_min_bytes` = 'small'" in message and "a size such as 64MiB" in message


@pytest.mark.parametrize(
    "lake",
    [
        "{path: x, storage_options: 'key=AKIA-sentinel secret=hunter2-sentinel'}",
        "{path: x, storage_options: [hunter2-sentinel]}",
    ],
)
def test_storage_options_are_never_echoed_even_when_mistyped(lake: str):
    message = error(f"pipeline: p\nkafka: {{bootstrap_servers: h:1, topics: [t]}}\nlake: {lake}\n")
    assert "`lake.storage_options` = (value hidden" in message and "sentinel" not in message


def test_kingest_columns_are_reserved_in_declared_schemas():
    assert set(RESERVED_COLUMNS) == METADATA_NAMES  # config.py cannot import the encoder (pyarrow) to ask it


# ---------------------------------------------------------------------------------------------- docs


def documented_keys() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Every key", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.M))


def test_every_config_key_is_documented_and_nothing_else():
    def fields(cls: type, prefix: str) -> set[str]:
        return {f"{prefix}.{f.name}" for f in dataclasses.fields(cls)}

    keys = {"pipeline", "semantics"}
    keys |= fields(KafkaConfig, "kafka") | fields(RecordsConfig, "records") | fields(LakeConfig, "lake")
    keys |= fields(BatchConfig, "batch")
    assert documented_keys() == keys


def test_documented_defaults_are_the_real_ones():
    """The default column for the keys whose default is a plain value."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| ([^|]+) \|", text, flags=re.M))
    loaded = config.parse("pipeline: p\nkafka: {bootstrap_servers: h:1, topics: [t]}\nlake: {path: x}\n")
    for section, cls in (("kafka", KafkaConfig), ("records", RecordsConfig), ("lake", LakeConfig),
                         ("batch", BatchConfig)):  # fmt: skip
        for f in dataclasses.fields(cls):
            shown = rows[f"{section}.{f.name}"].strip()
            if shown == "(required)":
                continue
            value = getattr(getattr(loaded, section), f.name)
            if isinstance(value, bool):
                assert shown == f"`{str(value).lower()}`", f.name
            elif isinstance(value, int) and section != "batch" and f.name != "compress_min_bytes":  # sizes: below
                assert shown == f"`{value}`", f.name
            elif isinstance(value, str) and f.name != "group_id":
                assert shown == f"`{value}`", f.name
            elif value is None:
                assert shown.startswith("(none"), f.name
    assert rows["batch.max_records"].strip() == f"`{BatchConfig.max_records}`"
    assert config.parse_size(rows["batch.max_bytes"].strip("` ")) == BatchConfig.max_bytes
    assert config.parse_size(rows["lake.compress_min_bytes"].strip("` ")) == LakeConfig.compress_min_bytes == 65536
    assert config.parse_duration(rows["batch.max_age"].strip("` ")) == BatchConfig.max_age
    assert rows["semantics"].strip() == f"`{loaded.semantics}`"


def test_the_docs_table_is_generated_from_the_model():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert config.with_reference_table(text) == text, "docs/configuration.md's table of every key is stale: `make docs`"


@pytest.mark.parametrize("cls", [config.Config, *config.SECTIONS.values()], ids=lambda cls: cls.__name__)
def test_every_key_is_declared_once_with_its_doc_and_default(cls: type):
    """A field added to the model without setting() (no doc, no parser, no default the docs show) fails here."""
    not_keys = {"source_path", *config.SECTIONS} if cls is config.Config else set()
    for f in dataclasses.fields(cls):
        if f.name in not_keys:
            continue
        assert config._KEY in f.metadata, f"{cls.__name__}.{f.name} is not declared with setting()"
        key: config.Key = f.metadata[config._KEY]
        assert key.doc.strip() and "\n" not in key.doc and key.doc.endswith((".", ")")), f.name
        assert key.shown_default, f.name
        for choice in key.choices:  # the one line names every value of a closed set
            assert f"`{choice}`" in key.doc, f"{f.name}: `{choice}` is not in its doc"
