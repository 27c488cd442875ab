"""What people and machines see: log set-up, the progress display of `run`, error text, secret scrubbing.

Secrets (passwords, keys) never reach any output. Three layers, so that one forgotten path is not a leak:

1. ``SCRUB`` knows every secret value: those of the config (``Config.secrets()``, added by the CLI once the
   config is loaded) and those of environment variables whose names say they hold one (``*PASSWORD*``,
   ``*SECRET*``, ``*TOKEN*``, ``*CREDENTIAL*``, ``*PRIVATE_KEY*``; values of 6 characters or more), in their
   plain, URL-encoded and JSON/repr-escaped spellings.
2. Every log record is scrubbed, message and traceback alike, in text and JSON formats; so are Python warnings
   and uncaught exceptions of threads (kafka-python's IO thread, for instance), which are routed to the log.
3. ``install_scrubbing()`` wraps ``sys.stdout`` and ``sys.stderr`` themselves: whatever writes there (Typer,
   rich, a command that forgot to scrub, a traceback) passes through ``SCRUB``.

Log formats: ``text`` (``HH:MM:SS LEVEL logger: message``) for people, ``json`` (one object per line:
``time``, ``level``, ``logger``, ``message`` and event fields) for machines. In JSON mode every line kingest
writes on stderr is such an object, errors included (``report_error``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterable
from typing import Any, TextIO

# Environment variable names that hold secrets (checked case-insensitively, as substrings).
# Not ACCESS_KEY: an access key id is an identifier (and the dev one, `kingest`, would garble every line).
_SECRET_ENV_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE_KEY")
_MIN_ENV_SECRET = 6  # shorter values (`1`, `true`) are flags, not secrets; scrubbing them would garble output
_MIN_SECRET = 3


def _spellings(secret: str) -> set[str]:
    """The ways a secret can be written out: as is, URL-encoded, and escaped inside JSON or a Python repr."""
    out = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    out.add(json.dumps(secret)[1:-1])
    out.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    out.add(repr(secret)[1:-1])
    return {s for s in out if len(s) >= _MIN_SECRET}


class Scrubber(logging.Filter):
    """Replaces known secret values in text and in log records."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self.secrets)
        for secret in secrets:
            if secret and len(str(secret)) >= _MIN_SECRET:
                known |= _spellings(str(secret))
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted(known, key=len, reverse=True)

    def add_environment(self, environ: Any = None) -> None:
        """Treat the values of environment variables named like secrets (AWS_SECRET_ACCESS_KEY,
        KINGEST_KAFKA_SASL_PASSWORD, ...) as secrets, whether or not the config uses them."""
        environ = os.environ if environ is None else environ
        self.add(
            value
            for name, value in environ.items()
            if len(value) >= _MIN_ENV_SECRET and any(word in name.upper() for word in _SECRET_ENV_WORDS)
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for secret in self.secrets:
            raw = secret.encode("utf-8", "surrogateescape")
            if raw in data:
                data = data.replace(raw, b"***")
        return data

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self(record.getMessage())
            record.args = None
        return True


SCRUB = Scrubber()


class _ScrubbedStream:
    """A text stream that scrubs what is written to it and passes everything else to the stream it wraps.
    It has no ``buffer``: writers that look for the binary stream underneath (click does) fall back to
    ``write``, which scrubs."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: Any) -> int:
        if isinstance(text, str):
            return int(self._stream.write(SCRUB(text)) or 0)
        if isinstance(text, bytes | bytearray):
            data = SCRUB.scrub_bytes(bytes(text))
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            return int(self._stream.write(data.decode(encoding, "replace")) or 0)
        return int(self._stream.write(text) or 0)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


def install_scrubbing() -> None:
    """Scrub sys.stdout and sys.stderr from now on (idempotent), and learn the secrets of the environment."""
    SCRUB.add_environment()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ScrubbedStream):
            setattr(sys, name, _ScrubbedStream(stream))


# ---------------------------------------------------------------------------------------------- formats


def _iso(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return SCRUB(value)
    if isinstance(value, dict):
        return {str(k): _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return SCRUB(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, the record's ``fields`` (passed as
    ``extra={"fields": {...}}``) and, when there is one, the exception with its traceback. Values are scrubbed
    before encoding (a secret with quotes or non-ASCII characters would not match once escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": _iso(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": SCRUB(record.getMessage()),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            body.setdefault(str(key), _scrub_value(value))
        if record.exc_info and record.exc_info[0] is not None:
            body["exception"] = SCRUB(self.formatException(record.exc_info))
        elif record.exc_text:
            body["exception"] = SCRUB(record.exc_text)
        return json.dumps(body)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message``, the whole line (traceback included) scrubbed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return SCRUB(super().format(record))


class _QuietKafka(logging.Filter):
    """kafka-python is chatty, and logs each reconnect attempt as an error; its failures reach kingest as
    exceptions, which kingest reports itself. Without --verbose its records are not shown (they are still
    created, at WARNING and above, for kingest's own listeners such as the fail-fast on bad credentials)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "kafka" or record.name.startswith("kafka."))


_state: dict[str, Any] = {"format": "text"}


def log_format() -> str:
    return str(_state["format"])


def setup_logging(log_format: str = "text", verbose: bool = False, stream: TextIO | None = None) -> None:
    _state["format"] = log_format
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SCRUB)
    if not verbose:
        handler.addFilter(_QuietKafka())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kingest").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.WARNING)
    # librdkafka (kafka.client: confluent) says little above DEBUG: with --verbose its consumer-group debug lines
    # are asked for and shown (kingest/sources/confluent.py)
    logging.getLogger("kafka.librdkafka").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Python warnings and exceptions escaping a thread would be printed as plain text: log them instead, so
    # that they are scrubbed and, in JSON mode, JSON.
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("kingest").error(
        "unexpected error in thread %s: %s",
        name,
        args.exc_type.__name__,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------- errors, summary


def report_error(message: str, hint: str | None = None, exit_code: int = 2, retryable: bool = False) -> None:
    """Tell the user what went wrong and how to fix it: ``Error: ...`` lines in text mode, one JSON log object
    (level error, with ``hint``, ``exit_code`` and ``retryable``: whether running again unchanged may succeed)
    in JSON mode. On stderr, scrubbed."""
    if log_format() == "json":
        record = logging.LogRecord("kingest", logging.ERROR, __file__, 0, "%s", (message,), None)
        record.fields = {"hint": hint, "exit_code": exit_code, "retryable": retryable}
        line = JsonFormatter().format(record)
        sys.stderr.write(line + "\n")
    else:
        sys.stderr.write(SCRUB(f"Error: {message}") + "\n")
        if hint:
            sys.stderr.write(SCRUB(f"  {hint}") + "\n")
    sys.stderr.flush()


def report_unexpected(exc: BaseException) -> None:
    """A bug, not a mistake of the user's: show the (scrubbed) traceback, which is what a bug report needs."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if log_format() == "json":
        message = f"unexpected error: {exc!r}"
        record = logging.LogRecord("kingest", logging.CRITICAL, __file__, 0, "%s", (message,), None)
        record.fields = {"exception": text, "exit_code": 1}
        sys.stderr.write(JsonFormatter().format(record) + "\n")
    else:
        sys.stderr.write(SCRUB(f"Error: unexpected {type(exc).__name__} (a bug in kingest; please report it)\n{text}"))
    sys.stderr.flush()


def print_summary(text: str, fields: dict[str, Any]) -> None:
    """The end-of-run summary. Text mode: ``done: <text>`` on stdout. JSON mode: one JSON object on stdout
    (``event: "summary"`` and the fields), and the same as a log line on stderr, so that a consumer of either
    stream gets it."""
    if log_format() == "json":
        body = {"event": "summary", **fields}
        sys.stdout.write(json.dumps(_scrub_value(body)) + "\n")
        logging.getLogger("kingest.run").info("done: %s", text, extra={"fields": body})
    else:
        sys.stdout.write(SCRUB(f"done: {text}") + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress of a run: a live line on a terminal, a log line every ``interval`` seconds otherwise."""

    def __init__(self, live: bool, interval: float = 10.0) -> None:
        self.live = live
        self.interval = interval
        self.last = 0.0
        self.console: Any = None
        self.status: Any = None
        self.log = logging.getLogger("kingest.run")

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status("starting: joining the consumer group")
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def message(self, text: str) -> None:
        if self.console is not None:
            self.console.print(SCRUB(text), markup=False, highlight=False)
        else:
            self.log.info("%s", text)

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        secs = max(stats.seconds, 1e-9)
        lag_by_tp = dict(stats.lag)
        lag = sum(lag_by_tp.values()) if lag_by_tp else None
        line = (
            f"{stats.written:,} records written ({stats.written / secs:,.0f}/s), {stats.files} files, "
            f"{stats.commits} commits" + (f", lag {lag:,}" if lag is not None else "")
        )
        if self.status is not None:
            self.status.update(line)
        elif now - self.last >= self.interval:
            self.last = now
            fields = {"event": "progress", "written": stats.written, "files": stats.files, "commits": stats.commits}
            if lag is not None:
                fields["lag"] = lag
            self.log.info("%s", line, extra={"fields": fields})


def human_size(n: float) -> str:
    """Bytes as a person reads them: 512 B, 3.4 KiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
