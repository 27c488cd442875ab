"""Private servers for the tests that stop, start or freeze one: a second KRaft broker, a second `weed mini`,
each started through services/devservices.py with its own KINGEST_DEV_DIR and free ports, so that the shared
dev services, which other tests and engineers use, are never touched. The fixtures that make them
(`private_kafka`, `private_s3`) are in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEVSERVICES = ROOT / "services" / "devservices.py"


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, grpc: bool = False) -> list[int]:
    """`count` free ports (and, for SeaweedFS, each port + 10000 free too), away from the dev services'."""
    found: list[int] = []
    for port in range(21000 + (os.getpid() * 37) % 9000, 45000):
        taken = {*found, *(p + 10000 for p in found)}
        if port in taken or (grpc and port + 10000 in taken):
            continue
        if _free(port) and (not grpc or _free(port + 10000)):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free ports for a private server")


class PrivateService:
    """One devservices service (kafka or s3) with its own data folder and ports, stopped, started or frozen at
    will. `bootstrap` (Kafka) and `storage_options` (S3) are set by the fixture that makes it."""

    bootstrap: str
    storage_options: dict[str, Any]

    def __init__(self, name: str, home: Path, env: dict[str, str]) -> None:
        self.name = name
        self.home = home
        self.env = {**os.environ, "KINGEST_DEV_DIR": str(home), **env}
        for key in ("KINGEST_KAFKA_BOOTSTRAP", "KINGEST_S3_ENDPOINT"):
            self.env.pop(key, None)

    def _devservices(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, str(DEVSERVICES), *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        if done.returncode != 0:
            raise RuntimeError(f"devservices {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def up(self) -> None:
        self._devservices("up", self.name)

    def down(self) -> None:
        self._devservices("down", self.name)

    def pid(self) -> int:
        """The server process (for Kafka, the JVM itself), from devservices' pid file in this private home."""
        state = json.loads((self.home / self.name / f"{self.name}.pid").read_text())
        return int(state["pid"])

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a stalled VM, a long GC pause)."""
        os.kill(self.pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)


def shared_jars() -> Path:
    """The Kafka jars of the shared dev services (fetched once by Maven), so a private broker needs no download."""
    home = Path(os.environ.get("KINGEST_DEV_DIR") or ROOT / ".kingest-dev").resolve()
    return home / "jars"
