"""What people and machines see: log set-up, the progress display of `run`, error text, secret scrubbing.

Secrets (passwords, keys) never reach any output: every message goes through ``Scrubber``, which replaces
each secret value of the config with ``***``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO


class Scrubber(logging.Filter):
    """Replaces known secret values in text and in log records."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted(set(self.secrets) | {s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self(record.getMessage())
            record.args = None
        return True


SCRUB = Scrubber()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": SCRUB(record.getMessage()),
        }
        body.update(getattr(record, "fields", {}) or {})
        return json.dumps(body)


def setup_logging(log_format: str = "text", verbose: bool = False, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SCRUB)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kingest").setLevel(logging.DEBUG if verbose else logging.INFO)
    # kafka-python is chatty at INFO and logs reconnect attempts as errors; its failures reach us as exceptions.
    logging.getLogger("kafka").setLevel(logging.CRITICAL if not verbose else logging.INFO)


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
        lag = sum(stats.lag.values()) if stats.lag else None
        line = (
            f"{stats.written:,} records written ({stats.written / secs:,.0f}/s), {stats.files} files, "
            f"{stats.commits} commits" + (f", lag {lag:,}" if lag is not None else "")
        )
        if self.status is not None:
            self.status.update(line)
        elif now - self.last >= self.interval:
            self.last = now
            self.log.info("%s", line)
