"""kingest/output.py: secret scrubbing on every path to the user, and the two log formats (no services)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from kingest import output
from kingest.output import SCRUB, JsonFormatter, Scrubber, TextFormatter

SECRET = 'p@ss/w"rd+é-0123456789'


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    """SCRUB, the log format, the root handlers and the hooks are process-wide: restore them after each test."""
    saved = (list(SCRUB.secrets), output._state["format"], threading.excepthook, sys.stdout, sys.stderr)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    SCRUB.secrets, output._state["format"], threading.excepthook, sys.stdout, sys.stderr = saved
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)


def test_scrubber_replaces_every_spelling_of_a_secret() -> None:
    scrub = Scrubber([SECRET])
    from urllib.parse import quote, quote_plus

    for spelling in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET), json.dumps(SECRET)[1:-1], repr(SECRET)[1:-1]):
        assert scrub(f"before {spelling} after") == "before *** after"
    assert SECRET.encode() not in scrub.scrub_bytes(b"x " + SECRET.encode() + b" y")


def test_scrubber_replaces_the_longest_secret_first_and_ignores_tiny_values() -> None:
    scrub = Scrubber(["abc", "abcdef", "", "ab"])
    assert scrub("abcdef abc ab") == "*** *** ab"


def test_environment_secrets_by_name_only_when_long_enough() -> None:
    scrub = Scrubber()
    scrub.add_environment(
        {
            "MY_DB_PASSWORD": "hunter2-long",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
            "SOME_TOKEN": "true",
            "AWS_ACCESS_KEY_ID": "kingest",
            "HOME": "/root",
        }
    )
    assert scrub("hunter2-long wJalrXUtnFEMI true kingest /root") == "*** *** true kingest /root"


def record(message: str, *args: Any, exc: BaseException | None = None, **fields: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("kingest.test", logging.WARNING, __file__, 1, message, args, exc_info)
    if fields:
        rec.fields = fields
    return rec


def raised(message: str) -> BaseException:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


def test_json_formatter_scrubs_message_fields_and_traceback() -> None:
    SCRUB.add([SECRET])
    line = JsonFormatter().format(
        record("connecting with %s", SECRET, exc=raised(f"bad {SECRET}"), hint=f"use {SECRET}", count=3)
    )
    body = json.loads(line)
    assert SECRET not in json.dumps(body, ensure_ascii=False) and SECRET not in line
    assert body["message"] == "connecting with ***" and body["hint"] == "use ***" and body["count"] == 3
    assert body["level"] == "warning" and body["logger"] == "kingest.test" and body["time"].endswith("Z")
    assert "RuntimeError: bad ***" in body["exception"]


def test_text_formatter_scrubs_the_traceback() -> None:
    SCRUB.add([SECRET])
    line = TextFormatter().format(record("boom", exc=raised(f"secret is {SECRET}")))
    assert SECRET not in line and "RuntimeError: secret is ***" in line


def test_every_log_line_is_json_in_json_mode_warnings_and_thread_errors_included() -> None:
    stream = io.StringIO()
    output.setup_logging("json", verbose=False, stream=stream)
    SCRUB.add([SECRET])
    logging.getLogger("kingest.run").info("hello %s", SECRET)
    logging.getLogger("kafka.net").warning("kafka-python noise")  # hidden without --verbose
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"careful with {SECRET}", UserWarning, stacklevel=1)

    def fail() -> None:
        raise ValueError(f"thread saw {SECRET}")

    worker = threading.Thread(target=fail)
    worker.start()
    worker.join()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["kingest.run", "py.warnings", "kingest"]
    assert "ValueError: thread saw ***" in lines[2]["exception"]
    assert SECRET not in stream.getvalue()


def test_verbose_shows_kafka_python() -> None:
    stream = io.StringIO()
    output.setup_logging("text", verbose=True, stream=stream)
    logging.getLogger("kafka.net").warning("reconnecting")
    assert "WARNING kafka.net: reconnecting" in stream.getvalue()


def test_report_error_in_both_formats(capsys: pytest.CaptureFixture[str]) -> None:
    SCRUB.add([SECRET])
    output._state["format"] = "text"
    output.report_error(f"cannot log in with {SECRET}", "Check the password.", 2)
    assert capsys.readouterr().err == "Error: cannot log in with ***\n  Check the password.\n"
    output._state["format"] = "json"
    output.report_error(f"cannot log in with {SECRET}", "Check the password.", 2)
    body = json.loads(capsys.readouterr().err)
    assert body["level"] == "error" and body["message"] == "cannot log in with ***"
    assert body["hint"] == "Check the password." and body["exit_code"] == 2


def test_summary_is_text_or_one_json_object_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    output._state["format"] = "text"
    output.print_summary("3 records", {"records": 3})
    assert capsys.readouterr().out == "done: 3 records\n"
    output.setup_logging("json", stream=io.StringIO())
    output.print_summary("3 records", {"records": 3})
    assert json.loads(capsys.readouterr().out) == {"event": "summary", "records": 3}


def test_scrubbed_streams_catch_what_bypasses_the_logger() -> None:
    target = io.StringIO()
    sys.stdout = target
    SCRUB.add([SECRET])
    output.install_scrubbing()
    output.install_scrubbing()  # idempotent: not wrapped twice
    print(f"raw print of {SECRET}")
    sys.stdout.write(f"bytes too: {SECRET}".encode())  # type: ignore[arg-type]
    assert not hasattr(sys.stdout, "buffer")  # click cannot go around the wrapper to the binary stream
    assert target.getvalue() == "raw print of ***\nbytes too: ***"


def test_cli_shows_a_scrubbed_traceback_for_a_bug(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """An unexpected exception is a bug: its traceback helps, but it passes through the scrubber too."""
    from kingest import cli

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(f"token={SECRET}")

    monkeypatch.setattr(cli, "load_config", broken)
    monkeypatch.setenv("KT_SOMETHING_PASSWORD", SECRET)  # learnt from the environment at start
    result = CliRunner().invoke(cli.app, ["run", "-c", str(tmp_path / "k.yaml")])
    assert result.exit_code == 1
    assert "Error: unexpected KeyError (a bug in kingest; please report it)" in result.output
    assert "Traceback" in result.output and "token=***" in result.output
    assert SECRET not in result.output
