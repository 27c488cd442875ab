"""Faults during a run: the broker stopped and started again, the S3 server stopped and started again, a write
that fails after part of the data reached the store.

The broker and S3 tests stop a server in the middle of a run, so they run their OWN servers (a second KRaft
broker, a second `weed mini`: the `private_kafka` and `private_s3` fixtures of tests/integration/conftest.py,
see private_services.py): the shared dev services, which other tests and engineers use, are never touched.

Each run is a real `python -m kingest run` process; the lake is read back independently (pyarrow, see
support/lake.py) and checked against the offsets in the topic, per semantics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .private_services import PrivateService
from .support import (
    LakeView,
    covers,
    dense,
    duplicates,
    end_offsets,
    folder_offsets,
    kingest,
    missing,
    process_env,
    run_until_caught_up,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 3


# --------------------------------------------------------------------------------------------- helpers


def create_topic(bootstrap: str, partitions: int = PARTITIONS) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"faults-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kingest-tests")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        deadline = time.monotonic() + 30
        while True:
            desc = admin.describe_topics([topic])[0]
            parts = desc.get("partitions") or []
            if len(parts) == partitions and all(p.get("leader_id", -1) >= 0 for p in parts):
                return topic
            assert time.monotonic() < deadline, f"topic {topic} has no leaders: {desc}"
            time.sleep(0.05)
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, per_partition: int, start: int) -> None:
    """per_partition JSON records into each partition (values numbered from start), flushed."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, client_id="kingest-tests")
    try:
        for partition in range(PARTITIONS):
            for i in range(start, start + per_partition):
                producer.send(topic, json.dumps({"n": i, "p": partition}).encode(), partition=partition)
        producer.flush(timeout=60)
    finally:
        producer.close()


class Run:
    """A `kingest run` process (without --until-caught-up in ``args``: it runs until SIGTERM), stderr kept in a
    file; ``env`` adds to the environment (a pause point), without this process's test hooks."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.err_path = config.with_suffix(".stderr")
        self.out_path = config.with_suffix(".stdout")
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kingest", "run", "-c", str(config), "--metrics-port", "0", *args],
                stdout=out,
                stderr=err,
                env=process_env(env),
            )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def metric(self, name: str) -> float:
        """One series (`name` or `name{label="value"}`) from the run's Prometheus endpoint (0 while it is not
        up yet)."""
        url = re.search(r"metrics: (http://\S+/metrics)", self.stderr)
        if url is None:
            return 0.0
        try:
            with urllib.request.urlopen(url.group(1), timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def stop(self, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"kingest did not stop within {timeout}s of SIGTERM:\n{self.stderr[-3000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, runs: list[Run] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not condition():
        for run in runs:
            assert run.process.poll() is None, f"kingest exited ({run.process.returncode}) while {what}:\n{run.stderr}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.config.name}:\n{r.stderr[-3000:]}" for r in runs)
            raise AssertionError(f"timed out after {timeout}s waiting until {what}\n{logs}")
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------- broker down


SEMANTICS = ["at-most-once", "at-least-once", "exactly-once"]


SESSION_TIMEOUT_MS = 10_000  # the private broker's group.min.session.timeout.ms is 6 s
MAX_AGE_S = 3


def test_broker_stopped_and_started_during_a_run(private_kafka: PrivateService, tmp_path: Path) -> None:
    """One broker outage seen by three runs at once, one per semantics. The broker stops while every run holds a
    polled batch, and stays down until each run has had to save that batch against a dead broker (at-most-once:
    commit first; at-least-once: write, then commit; exactly-once: write and manifest, Kafka offsets on the side)
    and for longer than the group's session timeout, so that every member's session expires during the outage.
    Then the broker comes back: every run must resume on its own, and its lake (read independently) must hold
    what its semantics promises without a crash: every offset (exactly-once: once; at-most-once: never twice).
    What the runs log about the outage is printed for diagnosis only."""
    bootstrap = private_kafka.bootstrap
    topic = create_topic(bootstrap)
    produce(bootstrap, topic, 100, start=0)
    lakes: dict[str, str] = {}
    runs: dict[str, Run] = {}
    for semantics in SEMANTICS:
        lakes[semantics] = str(tmp_path / f"lake-{semantics}")
        config = write_config(
            tmp_path / f"{semantics}.yaml",
            pipeline=f"bounce-{semantics}-{uuid.uuid4().hex[:6]}",
            kafka={
                "bootstrap_servers": bootstrap,
                "topics": [topic],
                "session_timeout_ms": SESSION_TIMEOUT_MS,
                "heartbeat_interval_ms": 1000,
            },
            records={"format": "json"},
            lake={"path": lakes[semantics]},
            # Flushed by age only, so that the second batch is still buffered when the broker stops.
            batch={"max_records": 100_000, "max_age": f"{MAX_AGE_S}s"},
            semantics=semantics,
        )
        runs[semantics] = Run(config)
    every = list(runs.values())
    try:
        wait_until(
            lambda: all(covers(folder_offsets(lake), {p: 100 for p in range(PARTITIONS)}) for lake in lakes.values()),
            90,
            "the first records are in every lake",
            every,
        )

        produce(bootstrap, topic, 100, start=100)
        wait_until(
            lambda: all(r.metric("kingest_records_consumed_total") >= 600 for r in every),
            30,
            "every run has polled the second batch",
            every,
        )
        private_kafka.down()  # returns once the broker process is gone
        # The scenario, not a speed check: every buffered batch falls due while the broker is down (its commit
        # or write is attempted against a dead broker), and every member's session expires before it is back.
        time.sleep(max(2 * MAX_AGE_S, 2 * SESSION_TIMEOUT_MS / 1000))
        for run in every:
            assert run.process.poll() is None, f"kingest exited during the outage:\n{run.stderr[-3000:]}"
        private_kafka.up()

        produce(bootstrap, topic, 100, start=200)
        ends = end_offsets(bootstrap, topic)
        assert ends == {p: 300 for p in range(PARTITIONS)}
        # Progress: each run resumes by itself (a rejoin may wait for the broker to expire the old member).
        wait_until(
            lambda: all(covers(folder_offsets(lake), ends) for lake in lakes.values()),
            180,
            "the records produced after the outage are in every lake",
            every,
        )
        codes = {s: r.stop() for s, r in runs.items()}
    finally:
        for run in every:
            run.kill()
        for semantics, run in runs.items():  # shown by pytest when the test fails
            print(f"--- {semantics}:\n{run.stderr[-3000:]}")
    assert codes == {s: 0 for s in SEMANTICS}, {s: runs[s].stderr[-2000:] for s in SEMANTICS}

    expected = dense(ends)
    exactly = folder_offsets(lakes["exactly-once"])
    assert duplicates(exactly) == {} and missing(exactly, expected) == {}
    assert missing(folder_offsets(lakes["at-least-once"]), expected) == {}
    # An outage is not a crash: at-most-once loses nothing either (the commit before the write waits for the
    # broker, or is refused because the group moved on, and then the batch is not written but consumed again),
    # and never writes a record twice.
    at_most = folder_offsets(lakes["at-most-once"])
    assert duplicates(at_most) == {} and missing(at_most, expected) == {}


def test_a_broker_frozen_when_partitions_are_assigned_does_not_stop_the_run(
    private_kafka: PrivateService, tmp_path: Path
) -> None:
    """A broker that freezes just as a run is assigned its partitions, for longer than the request timeout: the
    run cannot read their log end offsets (exactly-once wants them to decide on a claim, --until-caught-up for
    its targets). It must go on (exactly-once: claim at once; ask for the targets again) and, once the broker is
    back, stop caught up with every offset in its lake: exit 0, not "reading the log offsets ... failed". Both
    runs are held at the `after-assign` point while the broker is frozen, so the freeze lands there."""
    bootstrap = private_kafka.bootstrap
    topic = create_topic(bootstrap)
    produce(bootstrap, topic, 50, start=0)
    runs: dict[str, tuple[Run, Path, str]] = {}
    for semantics in ("at-least-once", "exactly-once"):
        lake = str(tmp_path / f"lake-{semantics}")
        config = write_config(
            tmp_path / f"{semantics}.yaml",
            pipeline=f"assign-freeze-{semantics}-{uuid.uuid4().hex[:6]}",
            kafka={
                "bootstrap_servers": bootstrap,
                "topics": [topic],
                "request_timeout_ms": 3000,
                # well past the freeze below, and the wait for the other run to be assigned: no rebalance
                "session_timeout_ms": 30_000,
                "heartbeat_interval_ms": 1000,
            },
            records={"format": "json"},
            lake={"path": lake},
            semantics=semantics,
        )
        hold = tmp_path / f"hold-{semantics}"
        env = {"KINGEST_PAUSE_AT": "after-assign", "KINGEST_PAUSE_FILE": str(hold)}
        runs[semantics] = (Run(config, "--until-caught-up", env=env), hold, lake)
    every = [run for run, _, _ in runs.values()]
    try:
        paused = [Path(f"{hold}.paused") for _, hold, _ in runs.values()]
        wait_until(lambda: all(p.exists() for p in paused), 90, "both runs are assigned their partitions", every)
        private_kafka.freeze()
        try:
            for _, hold, _ in runs.values():
                hold.touch()
            # Frozen for two request timeouts (each run's first ask of the log end offsets fails), and less than
            # the session timeout (no rebalance).
            time.sleep(7)
        finally:
            private_kafka.thaw()
        for semantics, (run, _, _) in runs.items():
            code = run.process.wait(timeout=120)
            assert code == 0, f"{semantics} exited {code}:\n{run.stderr[-3000:]}"
    finally:
        for run in every:
            run.kill()
    for semantics, (run, _, lake) in runs.items():
        # The failed ask happened (else the test proved nothing), and the run went on.
        assert "reading the log offsets" in run.stderr and "going on without them" in run.stderr
        found = folder_offsets(lake)
        assert missing(found, dense({p: 50 for p in range(PARTITIONS)})) == {}, semantics
        assert duplicates(found) == {}, semantics


# --------------------------------------------------------------------------------------------- S3 down


def test_s3_stopped_and_started_during_a_run(
    private_s3: PrivateService, kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """The S3 server stops while a batch is being written: the write is retried with backoff (counted by the
    LakeRetry metric) until the server is back; then exactly-once still holds every offset once, and
    at-least-once misses none. The lake is read back from the server with pyarrow, and `kingest verify` audits
    it too. What the runs log about the outage is printed for diagnosis only."""
    options = private_s3.storage_options
    topic = topic_factory(PARTITIONS, name="s3-bounce")
    produce(kafka_bootstrap, topic, 100, start=0)
    lakes = {s: f"s3://faults/{s}-{uuid.uuid4().hex[:8]}" for s in ("at-least-once", "exactly-once")}
    configs: dict[str, Path] = {}
    runs: dict[str, Run] = {}
    for semantics, lake in lakes.items():
        configs[semantics] = write_config(
            tmp_path / f"{semantics}.yaml",
            pipeline=f"s3-bounce-{uuid.uuid4().hex[:6]}",
            kafka={"bootstrap_servers": kafka_bootstrap, "topics": [topic]},
            records={"format": "json"},
            lake={"path": lake, "storage_options": options},
            batch={"max_records": 100_000, "max_age": "2s"},
            semantics=semantics,
        )
        runs[semantics] = Run(configs[semantics])
    every = list(runs.values())
    try:
        wait_until(
            lambda: all(
                covers(folder_offsets(lake, options), {p: 100 for p in range(PARTITIONS)}) for lake in lakes.values()
            ),
            90,
            "the first records are in every lake",
            every,
        )
        produce(kafka_bootstrap, topic, 100, start=100)
        wait_until(
            lambda: all(r.metric("kingest_records_consumed_total") >= 600 for r in every),
            30,
            "every run has polled the second batch",
            every,
        )
        private_s3.down()
        wait_until(
            lambda: all(r.metric('kingest_errors_total{error="LakeRetry"}') >= 2 for r in every),
            60,
            "every run has retried a write twice",
            every,
        )
        private_s3.up()
        produce(kafka_bootstrap, topic, 100, start=200)
        ends = {p: 300 for p in range(PARTITIONS)}

        def landed(lake: str) -> bool:
            try:
                return covers(folder_offsets(lake, options), ends)
            except OSError:  # the server, just started again, answers InternalError for a moment: kingest retries
                return False  # it as well (lake.py); the lake is read again once the runs have stopped, below

        wait_until(  # progress after the outage (the retry backoff may be several seconds by now)
            lambda: all(landed(lake) for lake in lakes.values()),
            180,
            "every record is in every lake",
            every,
        )
        codes = {s: r.stop() for s, r in runs.items()}
    finally:
        for run in every:
            run.kill()
        for semantics, run in runs.items():  # shown by pytest when the test fails
            print(f"--- {semantics}:\n{run.stderr[-3000:]}")
    assert codes == {s: 0 for s in lakes}, {s: runs[s].stderr[-2000:] for s in lakes}

    expected = dense(ends)
    exactly = folder_offsets(lakes["exactly-once"], options)
    assert duplicates(exactly) == {} and missing(exactly, expected) == {}
    assert missing(folder_offsets(lakes["at-least-once"], options), expected) == {}
    done = kingest("verify", "-c", str(configs["exactly-once"]), "--json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------- partial writes


def manifest_files(lake: Path) -> set[str]:
    """Data files the offsets manifest counts in the lake (see LakeView.counted_files)."""
    return LakeView(str(lake)).counted_files()


def visible_parquet(lake: Path) -> set[str]:
    """Parquet files a reader of the dataset folder sees: no path part starts with `_` or `.`."""
    return set(LakeView(str(lake)).visible_files())


def exactly_once_config(tmp_path: Path, bootstrap: str, topic: str, lake: str, **lake_extra: Any) -> Path:
    tag = uuid.uuid4().hex[:6]
    return write_config(
        tmp_path / "exactly-once.yaml",
        pipeline=f"partial-{tag}",
        # Static membership and a short session: a run after a killed one gets the partitions at once.
        kafka={
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_instance_id": f"kingest-test-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        records={"format": "json"},
        lake={"path": lake, **lake_extra},
        batch={"max_records": 50, "max_age": "30s"},
        semantics="exactly-once",
    )


def test_local_write_killed_half_way_is_never_counted(kafka_bootstrap: str, topic_factory: Any, tmp_path: Path) -> None:
    """SIGKILL with half of a Parquet file on disk (fsynced): the half file is there, hidden, and neither a
    reader of the folder nor the manifest counts it; the next run still writes every offset exactly once."""
    topic = topic_factory(PARTITIONS, name="partial-local")
    produce(kafka_bootstrap, topic, 100, start=0)
    lake = tmp_path / "lake"
    # One partition after another: this test counts the files before the half one (the save lanes' side by side
    # writes are the crash tests' subject, tests/integration/test_guarantees.py)
    config = exactly_once_config(tmp_path, kafka_bootstrap, topic, str(lake), max_concurrency=1)

    crashed = run_until_caught_up(config, crash="mid-write:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    halves = [p for p in lake.rglob(".*.tmp")]
    assert len(halves) == 1 and halves[0].stat().st_size > 0  # part of the data did reach the disk
    final_name = halves[0].name[1:].rsplit(".", 2)[0]  # .<name>.<random>.tmp
    assert final_name.endswith(".parquet")
    assert not (halves[0].parent / final_name).exists()
    assert visible_parquet(lake) == manifest_files(lake)  # the two files before it, committed
    assert len(visible_parquet(lake)) == 2
    seen = folder_offsets(str(lake))  # pyarrow reads the folder without tripping on the half file
    assert sum(len(offsets) for offsets in seen.values()) == 100 and duplicates(seen) == {}

    done = run_until_caught_up(config)
    assert done.returncode == 0, done.stderr
    assert visible_parquet(lake) == manifest_files(lake)
    seen = folder_offsets(str(lake))
    expected = dense({p: 100 for p in range(PARTITIONS)})
    assert duplicates(seen) == {} and missing(seen, expected) == {}


def test_local_write_failing_half_way_leaves_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up in the middle of a Parquet file (ENOSPC at its fsync): the run stops with a clear
    error that says the disk is full and exit 1 (a run stopped part-way), no traceback; the half file is
    removed; what the folder shows is what the manifest counts; a run after the disk is freed writes every
    offset exactly once."""
    import errno

    from typer.testing import CliRunner

    from kingest.cli import app

    topic = topic_factory(PARTITIONS, name="partial-enospc")
    produce(kafka_bootstrap, topic, 100, start=0)
    lake = tmp_path / "lake"
    config = exactly_once_config(tmp_path, kafka_bootstrap, topic, str(lake), max_concurrency=1)  # (as above)

    real_fsync = os.fsync
    data_files: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(".tmp") and ".parquet." in target:
            if target not in data_files:
                data_files.append(target)
            if data_files.index(target) == 1:  # the second data file: bytes written, then the disk is full
                assert os.path.getsize(target) > 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("kingest.lake.os.fsync", fsync)
    result = CliRunner().invoke(app, ["run", "-c", str(config), "--until-caught-up"])
    assert result.exit_code == 1, result.output
    assert "is full ([Errno 28] No space left on device)" in result.output
    assert "Traceback" not in result.output
    assert len(data_files) == 2 and not os.path.exists(data_files[1])  # the half file is gone
    assert list(lake.rglob("*.tmp")) == []
    assert visible_parquet(lake) == manifest_files(lake) and len(visible_parquet(lake)) == 1

    monkeypatch.setattr("kingest.lake.os.fsync", real_fsync)
    done = run_until_caught_up(config)
    assert done.returncode == 0, done.stderr
    seen = folder_offsets(str(lake))
    expected = dense({p: 100 for p in range(PARTITIONS)})
    assert duplicates(seen) == {} and missing(seen, expected) == {}
    assert visible_parquet(lake) == manifest_files(lake)


class CuttingProxy:
    """A TCP proxy in front of an S3 server that cuts the first `cuts` PUTs of Parquet files half-way through
    their body: the server has received part of the object when the connection drops. Before the client even
    learns of the cut (so before any retry), it asks the server whether the object exists."""

    def __init__(self, upstream: str, exists: Callable[[str], bool], cuts: int = 1) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.exists = exists
        self.remaining = cuts
        self.cut: list[tuple[str, int, int, bool]] = []  # (key, bytes sent, bytes of the object, visible after)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _pipe_back(upstream: socket.socket, client: socket.socket, cutting: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            # A cut closes the upstream side: the client must not hear of it before the check (see _serve)
            for s in (upstream,) if cutting.is_set() else (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        cutting = threading.Event()
        threading.Thread(target=self._pipe_back, args=(upstream, client, cutting), daemon=True).start()
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                head += b"\r\n\r\n"
                method, target = head.split(b" ", 2)[:2]
                headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                length = int(next((v for k, v in headers.items() if k.strip().lower() == b"content-length"), b"0"))
                assert b"chunked" not in head.lower(), "chunked uploads are not handled by this proxy"
                key = urllib.parse.unquote(target.split(b"?")[0].decode()).lstrip("/")
                with self.lock:
                    cut = method == b"PUT" and key.endswith(".parquet") and self.remaining > 0
                    if cut:
                        self.remaining -= 1
                # The head goes on at once: botocore sends `Expect: 100-continue` and waits for the server's
                # go-ahead before sending the body.
                upstream.sendall(head)
                allowed = length // 2 if cut else length
                sent = 0
                while sent < allowed:
                    if not buffer:
                        buffer = client.recv(65536)
                        if not buffer:
                            return
                    chunk, buffer = buffer[: allowed - sent], buffer[allowed - sent :]
                    upstream.sendall(chunk)
                    sent += len(chunk)
                if cut:
                    cutting.set()
                    upstream.close()  # the server got the headers and half of the object, then lost us
                    time.sleep(0.5)
                    self.cut.append((key, sent, length, self.exists(key)))
                    return
        except OSError:
            return
        finally:
            client.close()


def test_s3_put_cut_half_way_is_never_counted(
    kafka_bootstrap: str, topic_factory: Any, s3_storage_options: dict[str, Any], s3_prefix: str, tmp_path: Path
) -> None:
    """The connection drops after half of a Parquet object reached the S3 server: the server keeps nothing
    (a single PUT is atomic), the write is retried, and the lake ends with every offset exactly once, each file
    complete and counted by the manifest."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)

    def exists(key: str) -> bool:
        fs.invalidate_cache()
        return bool(fs.exists(key))

    proxy = CuttingProxy(s3_storage_options["endpoint_url"], exists, cuts=2)
    try:
        topic = topic_factory(PARTITIONS, name="partial-s3")
        produce(kafka_bootstrap, topic, 100, start=0)
        options = {**s3_storage_options, "endpoint_url": proxy.url}
        config = exactly_once_config(tmp_path, kafka_bootstrap, topic, s3_prefix, storage_options=options)
        done = run_until_caught_up(config)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert len(proxy.cut) == 2, proxy.cut
    for key, sent, size, visible in proxy.cut:
        assert 0 < sent < size and not visible, (key, sent, size)

    seen = folder_offsets(s3_prefix, s3_storage_options)
    expected = dense({p: 100 for p in range(PARTITIONS)})
    assert duplicates(seen) == {} and missing(seen, expected) == {}
    # Every file the manifest counts is whole (pyarrow read it above) and every data file is counted.
    bucket_prefix = s3_prefix.removeprefix("s3://")
    versions = sorted(fs.glob(f"{bucket_prefix}/_kingest/*/manifest/topic=*/partition=*/*.json"))
    counted = {entry["path"] for v in versions for entry in json.loads(fs.cat_file(v)).get("add", [])}
    data = {
        p[len(bucket_prefix) + 1 :] for p in fs.find(bucket_prefix) if p.endswith(".parquet") and "/_kingest/" not in p
    }
    assert data == counted and {key.split("/", 2)[2] for key, *_ in proxy.cut} <= counted
