"""Running the real `kingest` command from integration tests: to completion (`kingest`), in the background
(`Instance`), and waiting on what a background run does (`wait_for`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Variables that arm a test hook in kingest: never inherited from the test process, only passed on purpose.
_HOOKS = ("KINGEST_CRASH_AT", "KINGEST_PAUSE_AT", "KINGEST_PAUSE_FILE")


def process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without kingest's test hooks, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k not in _HOOKS}, **(env or {})}


def kingest(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 180,
    input: str | None = None,
    prelude: str = "",
) -> subprocess.CompletedProcess[str]:
    """`python -m kingest ARGS` to completion, output captured; ``env`` adds to this process's environment
    (e.g. ``{"KINGEST_CRASH_AT": "mid-write:2"}``); ``prelude``: Python code the process runs before the
    command (e.g. a monkeypatch of the library)."""
    command = ["-c", f"{prelude}\nfrom kingest.cli import main\nmain()\n"] if prelude else ["-m", "kingest"]
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=cwd,
        env=process_env(env),
    )


def run_until_caught_up(config: Path, crash: str | None = None, **options: Any) -> subprocess.CompletedProcess[str]:
    """`kingest run -c CONFIG --until-caught-up`, optionally killed at a crash point (KINGEST_CRASH_AT)."""
    env = {**options.pop("env", {}), **({"KINGEST_CRASH_AT": crash} if crash else {})}
    return kingest("run", "-c", str(config), "--until-caught-up", env=env, **options)


def start_run(config: Path | str, *args: str) -> subprocess.Popen[str]:
    """`kingest run -c CONFIG ARGS` in the background, stdout and stderr piped: for a short run stopped with a
    signal, then communicate(). A long run, or several: use Instance (a pipe could fill and block it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kingest", "run", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=process_env(),
    )


@dataclass
class Instance:
    """One `python -m kingest run` process in the background. Its stderr and stdout go to files, one pair per
    start (a pipe could fill and block it): `{name}-{start}.log` and `.out` in ``workdir``. KINGEST_TEST_INSTANCE
    is its name (scale_config's client_id)."""

    name: str
    config: Path
    workdir: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> Instance:
        self.starts += 1
        with self.log_path.open("wb") as log, self.log_path.with_suffix(".out").open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kingest", "run", "-c", str(self.config), *self.args],
                stdout=out,
                stderr=log,
                env=process_env({"KINGEST_TEST_INSTANCE": self.name, **self.env}),
                cwd=self.workdir,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a clean stop: flush and commit), then the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process would not see the SIGTERM
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)

    def metric(self, name: str) -> float:
        """One series (`name` or `name{label="value"}`) from the Prometheus endpoint of the instance's latest
        start (started with --metrics-port 0); 0 while it is not up yet."""
        url = re.search(r"metrics: (http://\S+/metrics)", self.log())
        if url is None:
            return 0.0
        try:
            with urllib.request.urlopen(url.group(1), timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def log(self) -> str:
        """The stderr of the latest start (its log)."""
        return self.log_path.read_text(errors="replace")

    def out(self) -> str:
        """The stdout of the latest start (its summary)."""
        return self.log_path.with_suffix(".out").read_text(errors="replace")

    def logs(self) -> str:
        """The output of every start, each under its file name."""
        files = sorted([*self.workdir.glob(f"{self.name}-*.log"), *self.workdir.glob(f"{self.name}-*.out")])
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in files)


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 90.0,
    every: float = 0.25,
    watch: Iterable[Instance] = (),
) -> Any:
    """Poll until ``condition()`` is truthy and return it. A deadline, not a speed assertion: it only keeps a
    broken run from hanging the suite. Each instance in ``watch`` must stay up meanwhile (its log is shown if
    it exits, or at the deadline)."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for instance in watched:
            assert instance.alive(), f"kingest exited while waiting for {what}:\n{instance.log()[-3000:]}"
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {i.name}:\n{i.log()[-3000:]}" for i in watched)
            raise AssertionError(f"gave up waiting after {timeout:.0f}s for: {what}{logs}")
        time.sleep(every)


def verify(config: Path, *extra: str, **options: Any) -> tuple[int, dict[str, Any]]:
    """`kingest verify -c CONFIG --json EXTRA`: (exit code, report); exit 0 or 1 (the guarantee holds or not),
    anything else fails the test."""
    done = kingest("verify", "-c", str(config), "--json", *extra, **options)
    assert done.returncode in (0, 1), f"verify failed (exit {done.returncode}): {done.stdout}{done.stderr}"
    return done.returncode, json.loads(done.stdout)
