"""`kingest init`: a commented starter config that loads as written, never replacing a file by accident.
(tests/integration/test_check.py shows the same file passing `kingest check` and running.)"""

from __future__ import annotations

from pathlib import Path

import pytest
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
