"""Measuring: a contender (contenders.py) run as a process of its own, timed, its CPU and peak RSS taken.

``Spawner`` runs each process through benchmarks/spawner.py (wall time, and user+sys CPU and peak RSS from
os.wait4); ``Measurer.run_one`` builds a contender's command (and, for kingest, its config and lake), runs it,
reads what it reported and checks that it read the whole topic. The result is a ``Run``, which summary.py
turns into figures. A contender with ``delay_ms`` writes to S3 through a latency proxy (services/latency_proxy.py,
a thread of this process) that also counts its requests. Imports only the standard library at load (kingest,
pyarrow and fsspec when used).
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contenders import Contender

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MB = 1_000_000


class BenchError(Exception):
    pass


@dataclass
class Run:
    """One measured process."""

    name: str
    rep: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    returncode: int
    load1: float  # 1-minute load average when it started
    records: int | None = None  # as the contender reported it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class Spawner:
    """Runs each contender through benchmarks/spawner.py, started while this process is still small: a child's
    peak RSS (ru_maxrss) counts the process it was forked from, and this one grows (see spawner.py)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "spawner.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def measure(self, argv: list[str], env: dict[str, str], timeout: float, cwd: Path) -> tuple[Run, str, str]:
        """Run ``argv`` to its end: wall time, and user+sys CPU and peak RSS of that process from os.wait4."""
        assert self.process.stdin is not None and self.process.stdout is not None
        with tempfile.TemporaryDirectory(prefix="kingest-bench-run-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            job = {
                "argv": argv,
                "env": env,
                "cwd": str(cwd),
                "timeout": timeout,
                "stdout": str(out),
                "stderr": str(err),
            }
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
            if not reply:
                raise BenchError("benchmarks/spawner.py stopped")
            got = json.loads(reply)
            stdout = out.read_text(errors="replace")
            stderr = err.read_text(errors="replace")
        run = Run(
            "",
            0,
            got["wall_s"],
            got["user_s"],
            got["sys_s"],
            got["maxrss_kb"] * 1024 / MB,
            got["returncode"],
            got["load1"],
        )
        return run, stdout, stderr

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


@dataclass(frozen=True)
class S3Place:
    """Where the S3 contenders' lakes go: the dev S3 server, under one prefix per bench run."""

    endpoint: str
    key: str
    secret: str
    prefix: str  # bucket/bench-<tag>

    def storage_options(self, secret: str) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": secret}

    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem("s3", **self.storage_options(self.secret))


class Measurer:
    """Runs contenders, one process each, and checks what each read. ``groups`` collects the consumer groups
    the runs used (bench.py deletes them with the topics)."""

    def __init__(
        self,
        spawner: Spawner,
        bootstrap: str,
        tag: str,
        work: Path,
        s3: S3Place,
        env: dict[str, str],
        kingest_env: dict[str, str],
        registry: str = "",
    ) -> None:
        self.spawner = spawner
        self.bootstrap = bootstrap
        self.tag = tag
        self.work = work
        self.s3 = s3
        self.env = env
        self.kingest_env = kingest_env  # env plus --env: for the kingest contenders only
        self.registry = registry  # the schema registry's Confluent API, for records.format: avro
        self.groups: list[str] = []
        self.proxies: dict[float, Any] = {}  # delay_ms -> a LatencyProxy in front of the S3 server (started once)

    def proxy(self, delay_ms: float) -> Any:
        """The latency proxy adding ``delay_ms`` to each request to the S3 server (services/latency_proxy.py),
        on a thread of this process: started the first time it is asked for, stopped by close()."""
        if delay_ms not in self.proxies:
            spec = importlib.util.spec_from_file_location("latency_proxy", ROOT / "services" / "latency_proxy.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.proxies[delay_ms] = module.LatencyProxy(self.s3.endpoint, delay=delay_ms / 1000).start()
        return self.proxies[delay_ms]

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies.clear()

    def run_one(self, c: Contender, rep: int, topic: str, expected: int) -> Run:
        """Run contender ``c`` over ``topic`` (``expected`` records) as repetition ``rep``."""
        group = f"kingest-bench-{self.tag}-{c.name.replace(':', '-')}-{rep}"
        # a guard against a hang only: a far-away store (delay_ms) may take ~0.2 s a commit, 1,024 in a row
        timeout = 120 + expected / 1000 + (expected / 100 if c.delay_ms else 0)
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        if c.kind == "java":
            self.groups.append(group)
            argv = java_command(self.bootstrap, topic, expected, group)
        elif c.kind == "bare":
            self.groups.append(group)
            argv = [sys.executable, str(HERE / "bare_consumer.py"), "--bootstrap", self.bootstrap]
            argv += ["--topic", topic, "--group", group, "--client", c.client]
        else:
            argv, cleanup = self.kingest_command(c, topic, group)
        env = self.kingest_env if c.kind == "kingest" else self.env
        proxy = self.proxy(c.delay_ms) if c.lake == "s3" and c.delay_ms else None
        before = (proxy.requests, proxy.http_requests, _own_cpu()) if proxy is not None else (0, 0, 0.0)
        kinds_before = dict(proxy.kinds) if proxy is not None else {}
        run, stdout, stderr = self.spawner.measure(argv, env, timeout, ROOT)
        run.name, run.rep = c.name, rep
        proxied = {}
        if proxy is not None:
            # This process only waits for the spawner meanwhile: its CPU is the proxy's thread.
            proxied = {
                "proxy_round_trips": proxy.requests - before[0],  # delayed turns: a PUT with 100-continue pays two
                "proxy_requests": proxy.http_requests - before[1],
                "proxy_cpu_s": round(_own_cpu() - before[2], 3),
                # which requests: "PUT manifest", "GET pending-v2", "LIST", "PUT data"... (latency_proxy.request_kind)
                "proxy_kinds": {
                    k: n - kinds_before.get(k, 0) for k, n in sorted(proxy.kinds.items()) if n > kinds_before.get(k, 0)
                },
            }
        try:
            if run.returncode != 0:
                raise BenchError(f"{c.name} exited with {run.returncode}:\n{tail(stderr)}")
            if c.kind == "java":
                run.extra = parse_java(stdout)
                run.records = int(run.extra["data.consumed.in.nMsg"])
            elif c.kind == "bare":
                reported = json.loads(stdout.strip().splitlines()[-1])
                run.records, run.extra = reported.pop("records"), reported
            else:
                summary = json.loads(stdout.strip().splitlines()[-1])
                run.records = summary["records"]
                reported = ("files", "bytes", "commits", "flushes", "seconds")
                run.extra = {k: summary[k] for k in reported if k in summary} | proxied
                if c.lake == "local":
                    run.extra["rows_in_lake"] = count_rows(self.work / group)
                    if run.extra["rows_in_lake"] != expected:
                        raise BenchError(f"{c.name}: the lake holds {run.extra['rows_in_lake']} rows, not {expected}")
            if run.records != expected:
                raise BenchError(f"{c.name} read {run.records} records, not {expected}")
        finally:
            cleanup()
        return run

    def lake(self, c: Contender, group: str) -> tuple[str, dict[str, Any]]:
        """A kingest contender's lake path and storage options: the one place a `lake` kind becomes a place."""
        if c.lake == "s3":
            options = self.s3.storage_options("${KINGEST_BENCH_S3_SECRET}")
            if c.delay_ms:  # through the latency proxy (the lake is deleted afterwards without it)
                options["endpoint_url"] = self.proxy(c.delay_ms).url
            return f"s3://{self.s3.prefix}/{group}", options
        return str(self.work / group), {}

    def kingest_command(self, c: Contender, topic: str, group: str) -> tuple[list[str], Callable[[], None]]:
        self.groups.append(f"kingest-{group}")
        lake_path, options = self.lake(c, group)
        config = c.kingest_config(
            pipeline=group,
            bootstrap=self.bootstrap,
            topic=topic,
            lake_path=lake_path,
            storage_options=options,
            registry=self.registry,
        )
        config_path = self.work / f"{group}.yaml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML

        def cleanup() -> None:
            config_path.unlink(missing_ok=True)
            if c.lake == "local":
                shutil.rmtree(lake_path, ignore_errors=True)
            else:
                try:
                    self.s3.fs().rm(lake_path.removeprefix("s3://"), recursive=True)
                except FileNotFoundError:
                    pass

        argv = [sys.executable, "-m", "kingest", "run", "-c", str(config_path), "--until-caught-up"]
        return argv + ["--log-format", "json"], cleanup


def measure_help(spawner: Spawner, env: dict[str, str], runs: int = 10) -> list[float]:
    """Wall seconds of `kingest --help`, ``runs`` times."""
    script = Path(sys.executable).parent / "kingest"
    argv = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "kingest", "--help"]
    times = []
    for _ in range(runs):
        run, _, stderr = spawner.measure(argv, env, 30, ROOT)
        if run.returncode != 0:
            raise BenchError(f"kingest --help exited with {run.returncode}: {tail(stderr)}")
        times.append(round(run.wall_s, 4))
    return times


def java_command(bootstrap: str, topic: str, records: int, group: str) -> list[str]:
    """Kafka's consumer perf test with kingest's consumer settings where the two clients share them."""
    settings = consumer_settings(bootstrap)
    argv = [sys.executable, str(ROOT / "services" / "devservices.py"), "kafka-tool", "consumer-perf-test"]
    argv += ["--bootstrap-server", bootstrap, "--topic", topic, "--num-records", str(records), "--group", group]
    argv += ["--timeout", "60000", "--fetch-size", str(settings["max_partition_fetch_bytes"])]
    for key, value in {
        "fetch.min.bytes": settings["fetch_min_bytes"],
        "fetch.max.bytes": settings["fetch_max_bytes"],
        "fetch.max.wait.ms": settings["fetch_max_wait_ms"],
        "max.poll.records": settings["max_poll_records"],
        "isolation.level": settings["isolation_level"],
        "check.crcs": str(settings["check_crcs"]).lower(),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
    }.items():
        argv += ["--command-property", f"{key}={value}"]
    return argv


def parse_java(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if line.startswith("start.time"))
    keys = [k.strip() for k in lines[header].split(",")]
    values = [v.strip() for v in lines[header + 1].split(",")]
    return dict(zip(keys, values, strict=True))


def consumer_settings(bootstrap: str) -> dict[str, Any]:
    """The consumer settings kingest runs with by default (the bare loop uses the same)."""
    from kingest.config import KafkaConfig

    settings = KafkaConfig(bootstrap_servers=(bootstrap,), topics=("t",), group_id="g").consumer_settings()
    keep = ("fetch_min_bytes", "fetch_max_wait_ms", "fetch_max_bytes", "max_partition_fetch_bytes")
    return {k: settings[k] for k in (*keep, "max_poll_records", "check_crcs", "isolation_level")}


def count_rows(path: Path) -> int:
    import pyarrow.dataset as ds

    if not path.exists():
        return 0
    return ds.dataset(str(path), format="parquet", partitioning="hive").count_rows()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
