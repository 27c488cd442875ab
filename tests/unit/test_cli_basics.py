"""The command line's promises that need no services: help for every command, version, light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kingest import __version__
from kingest.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kingest {__version__}"


def test_every_command_has_help_text():
    commands = app.registered_commands
    assert {c.name or c.callback.__name__ for c in commands} >= {"run"}
    for command in commands:
        name = command.name or command.callback.__name__
        assert command.callback.__doc__, f"`kingest {name}` has no help text"
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert command.callback.__doc__.split("\n")[0].strip()[:40] in " ".join(result.output.split())


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help_does_not_import_heavy_libraries(args):
    code = (
        "import sys\nfrom kingest.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('kafka', 'pyarrow', 'fsspec', 's3fs', 'botocore') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_missing_config_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KINGEST_CONFIG", raising=False)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2
    assert "config file kingest.yaml not found" in result.output
    assert "kingest init" in result.output
    assert "Traceback" not in result.output


def test_importing_kingest_leaves_arrows_memory_pool_alone_and_the_cli_chooses_jemalloc():
    """A program that embeds kingest keeps its own process settings; the CLI picks jemalloc before pyarrow."""
    code = (
        "import os, sys; import kingest; assert 'ARROW_DEFAULT_MEMORY_POOL' not in os.environ; "
        "sys.argv = ['kingest', 'status', '-c', '/nonexistent/kingest.yaml']; from kingest.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "jemalloc"


def test_kingest_check_reports_kafkas_errors_as_kafka_and_a_bug_as_a_bug(monkeypatch):
    """Before: any exception while reading topics became "Kafka at ...: ...", a bug included."""
    from contextlib import contextmanager

    from kafka import errors as kafka_errors

    from kingest import check, kafka_admin
    from kingest import config as config_module

    config = config_module.parse(
        'pipeline: p\nkafka: {bootstrap_servers: "h:9092", topics: [t]}\nlake: {path: /tmp/x}\n'
    )

    def consumer_raising(error: BaseException):  # type: ignore[no-untyped-def]
        class Consumer:
            def topics(self):  # type: ignore[no-untyped-def]
                raise error

        @contextmanager
        def inspection(config, **extra):  # type: ignore[no-untyped-def]
            yield Consumer()

        return inspection

    monkeypatch.setattr(kafka_admin, "inspection_consumer", consumer_raising(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        list(check._kafka_checks(config))
    monkeypatch.setattr(kafka_admin, "inspection_consumer", consumer_raising(kafka_errors.KafkaTimeoutError("slow")))
    [kafka, _] = list(check._kafka_checks(config))
    assert kafka.name == "kafka" and not kafka.ok and "h:9092" in kafka.detail
