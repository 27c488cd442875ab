"""Crash injection for testing the delivery guarantees: inert unless ``KINGEST_CRASH_AT`` is set.

``KINGEST_CRASH_AT=<point>[:<n>]`` kills the process with SIGKILL at the n-th pass (default 1st) through a
named point. The points, in the order a batch meets them:

- ``after-poll``    records were polled, nothing of them written or committed;
- ``after-commit``  at-most-once: offsets committed to Kafka, the batch not yet written;
- ``mid-write``     a data file is partly written (local disk: a hidden temporary file holds half of it;
                    S3: the upload has not been sent, since a single PUT is atomic);
- ``after-write``   data written, offsets not yet saved (Kafka commit or manifest);
- ``mid-manifest``  exactly-once: the manifest version is being created (local disk: its temporary file is
                    written but not yet linked under its name; S3: the PUT has not been sent).
"""

from __future__ import annotations

import os
import signal

from .errors import ConfigError

POINTS = ("after-poll", "after-commit", "mid-write", "after-write", "mid-manifest")
ENV = "KINGEST_CRASH_AT"

_target: tuple[str, int] | None = None
_passes = 0
_parsed = False


def parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS or (count and (not count.isdigit() or int(count) < 1)):
        raise ConfigError(
            f"{ENV}={value!r} is not valid",
            f"Use <point>[:<n>] with a point among {', '.join(POINTS)} and n >= 1, or unset {ENV}.",
        )
    return name, int(count or 1)


def arm() -> None:
    """Read ``KINGEST_CRASH_AT`` (raises ConfigError when malformed). Called once at the start of a run."""
    global _target, _passes, _parsed
    _target, _passes, _parsed = parse(os.environ.get(ENV)), 0, True


def point(name: str) -> None:
    """A named crash point: SIGKILL this process when it is the armed point's n-th pass."""
    global _passes
    if not _parsed:
        arm()
    if _target is None or _target[0] != name:
        return
    _passes += 1
    if _passes == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
