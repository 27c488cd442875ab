"""Running the real `kingest` command from integration tests: one place for the subprocess details."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kingest(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python -m kingest ARGS` to completion, output captured; ``env`` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "kingest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**os.environ, **(env or {})},
    )


def start_run(config: Path | str, *args: str) -> subprocess.Popen[str]:
    """`kingest run -c CONFIG ARGS` in the background (stop it with a signal, then communicate())."""
    return subprocess.Popen(
        [sys.executable, "-m", "kingest", "run", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
