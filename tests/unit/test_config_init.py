"""`kingest init`: a commented starter config that loads as written, never replacing a file by accident, and
that agrees with the config model. (tests/integration/test_check.py shows the same file passing `kingest check`
and running.)"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kingest import config
from kingest.cli import app

runner = CliRunner()


def test_init_writes_a_commented_config_that_loads_with_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert "wrote kingest.yaml" in result.output and "kingest check -c kingest.yaml" in result.output
    text = (tmp_path / "kingest.yaml").read_text()
    loaded = config.load("kingest.yaml")
    assert loaded.pipeline == "orders" and loaded.kafka.topics == ("orders",)
    assert loaded.kafka.bootstrap_servers == ("localhost:9092",) and loaded.lake.path == "./lake/orders"
    assert loaded.semantics == "at-least-once" and loaded.records.on_error == "fail"
    assert loaded.batch == config.BatchConfig()  # the starter spells out the defaults
    # commented: every section and the optional settings worth knowing are explained in place
    for needle in ("# kingest pipeline config", "on_error: fail", "# schema:", "# security_protocol:",
                   "# partition_by:", "docs/configuration.md", "${VAR}"):  # fmt: skip
        assert needle in text


def test_init_refuses_to_replace_a_file_unless_forced(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("pipeline: precious\n")
    refused = runner.invoke(app, ["init", str(path)])
    assert refused.exit_code == 2
    assert f"Error: {path} already exists; not overwriting it" in refused.output
    assert "Pass --force to replace it" in refused.output
    assert path.read_text() == "pipeline: precious\n"
    forced = runner.invoke(app, ["init", str(path), "--force", "--pipeline", "fresh"])
    assert forced.exit_code == 0, forced.output
    assert config.load(path).pipeline == "fresh"


def test_init_options_fill_the_config_quoting_what_needs_it(tmp_path: Path):
    path = tmp_path / "k.yaml"
    result = runner.invoke(
        app,
        ["init", str(path), "--pipeline", "payments", "--topic", "pay.v1", "--topic", "123", "--topic", "null",
         "--bootstrap-servers", "k1:9092,k2:9092", "--lake", "s3://bucket/lake #1", "--format", "string",
         "--semantics", "exactly-once"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = config.load(path)
    assert loaded.pipeline == "payments" and loaded.kafka.topics == ("pay.v1", "123", "null")
    assert loaded.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert loaded.lake.path == "s3://bucket/lake #1"
    assert loaded.records.format == "string" and loaded.semantics == "exactly-once"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pipeline", "two words"],
            "the options given make an invalid config: `pipeline` = 'two words' is not valid",
        ),
        (["--format", "xml"], "`records.format` = 'xml' is not valid: use one of raw, string, json"),
    ],
)
def test_init_with_bad_options_writes_nothing(tmp_path: Path, args: list[str], message: str):
    path = tmp_path / "k.yaml"
    result = runner.invoke(app, ["init", str(path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not path.exists()


@pytest.mark.parametrize("where", ["folder", "missing parent"])
def test_init_to_a_path_it_cannot_write_is_a_clear_error(tmp_path: Path, where: str):
    path = tmp_path if where == "folder" else tmp_path / "nope" / "k.yaml"
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    expected = f"{path} is a folder" if where == "folder" else f"cannot write {path}: No such file or directory"
    assert expected in result.output


# ---------------------------------------------------------------------------------------------- the model

# The keys the starter leaves to docs/configuration.md: every other key of the model is in it, set or commented
# out. A key added to the model fails the test below until it is added to the template or to this set.
LEFT_TO_THE_DOCS = {
    "kafka.group_instance_id", "kafka.client_id", "kafka.ssl_certfile", "kafka.ssl_keyfile", "kafka.ssl_password",
    "kafka.ssl_check_hostname", "kafka.session_timeout_ms", "kafka.max_poll_interval_ms",
    "kafka.heartbeat_interval_ms", "kafka.request_timeout_ms", "kafka.fetch_min_bytes", "kafka.fetch_max_wait_ms",
    "kafka.fetch_max_bytes", "kafka.max_partition_fetch_bytes", "kafka.max_poll_records", "kafka.check_crcs",
}  # fmt: skip
# The keys the starter shows with an example (or the value of an `init` option) rather than with their default.
EXAMPLES = {
    "pipeline", "kafka.bootstrap_servers", "kafka.topics", "kafka.group_id", "kafka.security_protocol",
    "kafka.sasl_mechanism", "kafka.sasl_plain_username", "kafka.sasl_plain_password", "kafka.ssl_cafile",
    "records.schema", "records.schema_file", "lake.path", "lake.partition_by",
}  # fmt: skip

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<hash># )?(?P<key>[a-z_]+):(?P<value>[^#]*?)\s*(?:# (?P<note>.*))?$")


def template_keys(text: str) -> dict[str, tuple[str, str]]:
    """Every key the starter sets or shows commented out: dotted name -> (the value shown, the comments about
    it: the comment lines just above it, its own, and those of the example lines nested under it)."""
    found: dict[str, tuple[str, list[str]]] = {}
    section, last, above = "", "", []
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match and len(match["indent"]) in (0, 2):
            if not match["indent"] and not match["hash"] and not match["value"]:  # a section: kafka, records...
                section, last, above = match["key"], "", []
                continue
            name = match["key"] if not match["indent"] else f"{section}.{match['key']}"
            last = name
            found[name] = (match["value"].strip(), [*above, match["note"] or ""])
            above = []
        elif re.match(r"^ *#  +", line) and last:  # an example nested under the last key: its comment is the key's
            nested = re.match(r"^ *# +\S.*?\s# (.*)$", line)
            found[last][1].append(nested[1] if nested else "")
        elif line.lstrip().startswith("#"):
            above.append(line.lstrip("# "))
        else:
            above = []
    # a list of values, `a | b | c`, with the remarks in parentheses taken out
    return {name: (value, re.sub(r"\s*\([^()]*\)", "", " ".join(notes))) for name, (value, notes) in found.items()}


def test_the_starter_agrees_with_the_model(tmp_path: Path):
    """Every key the template shows is a key of the model, with the model's default (unless it is an example) and,
    where it lists the valid values, all of them; every key of the model is in it or left to the docs on purpose."""
    result = runner.invoke(app, ["init", str(tmp_path / "k.yaml")])  # the CLI's own defaults for the options
    assert result.exit_code == 0, result.output
    shown = template_keys((tmp_path / "k.yaml").read_text())
    model = {name: (f, key) for name, f, key in config.keys()}
    assert set(shown) <= set(model), "keys in the template that the model does not have"
    assert set(model) - set(shown) == LEFT_TO_THE_DOCS, "each key is in the template or left to the docs"
    for name, (value, notes) in shown.items():
        f, key = model[name]
        choices = config.SCHEMA_TYPES if name == "records.schema" else key.choices
        for listed in re.findall(r"[\w-]+(?: \| [\w-]+)+", notes):
            assert listed.split(" | ") == list(choices), f"{name}: the template lists {listed}"
        if not value:
            continue
        parsed = key.parse(yaml.safe_load(value))  # examples, too, must be valid values
        if name not in EXAMPLES:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            assert parsed == default, f"{name}: the template shows {value}, the default is {default!r}"
