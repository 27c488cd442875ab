"""Crash and pause injection for testing the delivery guarantees: inert unless an environment variable or a test
sets it up.

``KINGEST_CRASH_AT=<point>[:<n>]`` kills the process with SIGKILL at the n-th pass (default 1st) through a
named point. ``KINGEST_PAUSE_AT=<point>[:<n>]`` with ``KINGEST_PAUSE_FILE=<path>`` stops there instead: the
process writes its pid to ``<path>.paused`` and waits, as a process frozen by a GC pause, a stalled VM or
SIGSTOP would, until ``<path>`` exists (a test then makes other writers move on meanwhile, and releases it).
In-process tests use ``at(point, action)``. The points, in the order a batch meets them:

- ``after-assign``  partitions were assigned; their manifests and log end offsets not read yet (a Delta table's
                    offsets are);
- ``after-poll``    records were polled, nothing of them written or committed;
- ``after-claim``   exactly-once: a ``claim`` version was committed for a partition; recovery of the files of
                    earlier writers has not run yet;
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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import ConfigError

POINTS = ("after-assign", "after-poll", "after-claim", "after-commit", "mid-write", "after-write", "mid-manifest")
ENV = "KINGEST_CRASH_AT"
PAUSE_ENV = "KINGEST_PAUSE_AT"
PAUSE_FILE_ENV = "KINGEST_PAUSE_FILE"

_target: tuple[str, int] | None = None
_pause: tuple[str, int] | None = None
_pause_file: str | None = None
_passes: dict[str, int] = {}
_parsed = False
_actions: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()


def parse(value: str | None, env: str = ENV) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS or (count and (not count.isdigit() or int(count) < 1)):
        raise ConfigError(
            f"{env}={value!r} is not valid",
            f"Use <point>[:<n>] with a point among {', '.join(POINTS)} and n >= 1, or unset {env}.",
        )
    return name, int(count or 1)


def arm() -> None:
    """Read the environment (raises ConfigError when malformed). Called once at the start of a run."""
    global _target, _pause, _pause_file, _parsed
    _target = parse(os.environ.get(ENV))
    _pause = parse(os.environ.get(PAUSE_ENV), PAUSE_ENV)
    _pause_file = os.environ.get(PAUSE_FILE_ENV) or None
    if _pause is not None and _pause_file is None:
        raise ConfigError(f"{PAUSE_ENV} is set but {PAUSE_FILE_ENV} is not", f"Set {PAUSE_FILE_ENV} to a path.")
    _passes.clear()
    _parsed = True


@contextmanager
def at(name: str, action: Callable[[], None]) -> Iterator[None]:
    """In-process tests: run ``action`` on every pass through point ``name`` while the block runs (another
    writer's whole turn, say: a deterministic interleaving)."""
    assert name in POINTS, name
    _actions[name] = action
    try:
        yield
    finally:
        _actions.pop(name, None)


def point(name: str) -> None:
    """A named point: SIGKILL this process, or pause it, when it is the armed point's n-th pass."""
    if not _parsed:
        arm()
    action = _actions.get(name)
    if action is not None:
        action()
    if _target is None and _pause is None:
        return
    with _lock:  # the save lanes pass points from several threads: each pass counted once
        passes = _passes[name] = _passes.get(name, 0) + 1
    if _target == (name, passes):
        os.kill(os.getpid(), signal.SIGKILL)
    if _pause == (name, passes) and _pause_file is not None:
        with open(f"{_pause_file}.paused", "w") as handle:
            handle.write(str(os.getpid()))
        while not os.path.exists(_pause_file):
            time.sleep(0.01)
