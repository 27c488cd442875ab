"""Runs the benchmark's contenders, from a process that stays small, and measures each with os.wait4.

Why a process of its own: Linux reports a child's peak RSS (``ru_maxrss``) as at least the RSS of the process
it was forked from (the child starts on a copy of the parent's memory, and exec records its high-water mark).
bench.py grows (producing, reading lakes back with pyarrow), so its children would inherit its size. This
spawner is started first, while bench.py is small, imports nothing beyond the standard library, and runs every
contender: their peak RSS is their own.

Protocol: one JSON object per line on stdin ({argv, env, cwd, timeout, stdout, stderr}: the last two are file
paths), one JSON object per line on stdout ({wall_s, user_s, sys_s, maxrss_kb, returncode, load1}).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    with open(job["stdout"], "wb") as out, open(job["stderr"], "wb") as err:
        load1 = os.getloadavg()[0]
        started = time.monotonic()
        process = subprocess.Popen(
            job["argv"], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=job["env"], cwd=job["cwd"]
        )
        killer = threading.Timer(job["timeout"], _kill, (process.pid,))
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "maxrss_kb": usage.ru_maxrss,  # KiB on Linux
        "returncode": process.returncode,
        "load1": load1,
    }


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
