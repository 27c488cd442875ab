#!/usr/bin/env python3
"""kingest's throughput, side by side with the bare kafka-python consumer and Kafka's own Java consumer.

    .venv/bin/python benchmarks/bench.py                 # 500,000 JSON records of ~500 B over 6 partitions, 3 reps
    .venv/bin/python benchmarks/bench.py --quick         # 50,000 records, 1 repetition: to try it out
    make bench BENCH_ARGS='--records 200000 --repetitions 5'
    make bench BENCH_ARGS='--only wide'                  # the wide topics alone (S3 +20 ms, 1 vs 32 partitions)
    make bench BENCH_ARGS='--only avro'                  # Avro vs JSON: the Avro contenders and their JSON twins

One run, on the local dev broker and S3 server, and the schema registry when Avro contenders run (each started
with `python services/devservices.py up <service>` if it does not answer; never stopped here):
produce the dataset once to a fresh topic, then, in every repetition, run each contender as its own process
reading all of it, in an order that rotates from one repetition to the next:

  java          Kafka's Java consumer perf test (kafka-consumer-perf-test): the broker's and machine's ceiling
  bare          a bare kafka-python poll loop (benchmarks/bare_consumer.py): the client's ceiling
  bare-confluent  the same loop with confluent-kafka (librdkafka), the client of `kafka.client: confluent`
  amo/alo/eo    `kingest run --until-caught-up` at-most-once, at-least-once, exactly-once into a local lake
  eo-s3         exactly-once into S3 (the SeaweedFS dev server)
  alo-16MiB     at-least-once with batch.max_bytes: 16MiB, to show that memory does not grow with the topic
  alo-1-record  at-least-once with batch.max_records: 1 on a small slice topic (one file per record)
  alo-confluent / eo-confluent   at-least-once / exactly-once, local, with `kafka.client: confluent`
  wide-*        (group "wide": `--only wide`) exactly-once and at-least-once into S3 through a proxy adding 20 ms
                to each request, on 64,000 records of ~200 B in 1 partition and in 32 (and the 32 saved one
                partition after another, lake.max_concurrency: 1: in the first repetition only), in 32
                flushes of one batch of every partition each; a table of their own, "vs 1 partition" ratios,
                no startup twins
  *-avro        (group "avro": `--only avro`, which adds their JSON twins) alo, eo, alo-confluent, eo-confluent
                reading the same records as Avro in the Confluent wire format (schemas registered in the dev
                registry: two versions, the second adding a nullable field part-way), on a topic of the same
                partitions, with `records.format: avro`: a table of their own, "vs JSON" ratios (the same
                contender on the JSON topic, side by side), startup twins on a tiny Avro topic

The confluent contenders run when confluent-kafka is installed (`pip install -e '.[fast]'`); "vs bare" is always
the kafka-python loop, "vs own client" the bare loop of the contender's own client.

Each figure is the median over the repetitions; ratios are taken within a repetition (runs side by side),
then their median. CPU seconds and peak RSS come from os.wait4 on the contender's process. Every contender (but
Java and the wide group) also runs against a tiny topic, one record in each of the same number of partitions
("startup": imports, group join, lake probe, one small flush; not an empty topic, where the first poll would idle
for its whole timeout): the "net" rate is records / (wall - startup), the steady-state cost per record.

Writes benchmarks/results/<date>.json and .png (``-wide`` when only the wide group ran, ``-quick`` when --quick)
and prints the markdown tables.

The files (benchmarks/ is a folder of scripts: each imports its neighbours by name):

  bench.py        this: the command line, the topics (dataset.py), the repetitions, the files written
  contenders.py   what is run: one declarative entry per contender, and the ratio targets
  measure.py      a contender run as a process (through spawner.py), timed, CPU and peak RSS from os.wait4
  summary.py      pure functions from the runs to the figures, targets, table rows and chart bars
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# benchmarks/ is not a package: its modules import each other by name
import dataset  # noqa: E402
import summary  # noqa: E402
from contenders import (  # noqa: E402
    AVRO_STARTUPS,
    CONTENDERS,
    GROUPS,
    NAMES,
    STARTUPS,
    TARGETS,
    WIDE_BATCH_RECORDS,
    WIDE_RECORDS,
    WIDE_TOPICS,
    WIDE_VALUE_SIZE,
    Contender,
)
from measure import BenchError, Measurer, Run, S3Place, Spawner, consumer_settings, measure_help  # noqa: E402

MB = 1_000_000
CCOMPAT = "/apis/ccompat/v7"  # the registry's Confluent Schema Registry API (Apicurio)


# ---------------------------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, spawner: Spawner) -> None:
        self.args = args
        self.spawner = spawner
        self.bootstrap = args.bootstrap
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.tag = f"{stamp}-{uuid.uuid4().hex[:4]}"
        self.work = Path(tempfile.mkdtemp(prefix="kingest-bench-", dir=args.work_dir))
        self.topics: dict[str, dataset.Produced] = {}
        self.ccompat = args.registry_url.rstrip("/") + CCOMPAT
        self.subjects: list[str] = []  # registered by this run (deleted by cleanup)
        self.avro: dict[str, Any] | None = None  # the Avro topic's ids, subject and version switch
        self.runs: list[Run] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_CRASH")}
        self.env["KINGEST_BENCH_S3_SECRET"] = args.s3_secret
        s3 = S3Place(args.s3_endpoint, args.s3_key, args.s3_secret, f"{args.s3_bucket}/bench-{self.tag}")
        # --env: for the kingest contenders only
        self.measurer = Measurer(
            spawner, self.bootstrap, self.tag, self.work, s3, self.env, {**self.env, **args.env}, self.ccompat
        )

    # ------------------------------------------------------------------------------------ set-up

    def produce(self) -> None:
        a = self.args
        chosen = self.chosen()
        for role, partitions in WIDE_TOPICS.items():
            if any(c.topic == role for c in chosen):
                size = f"{a.wide_records:,} JSON records of ~{WIDE_VALUE_SIZE} B"
                print(f"producing {size} over {partitions} partition(s)...")
                self.topics[role] = dataset.produce(
                    self.bootstrap,
                    f"kingest-bench-{self.tag}-{role}",
                    a.wide_records,
                    partitions,
                    WIDE_VALUE_SIZE,
                    a.seed,
                    True,
                    batch_records=WIDE_BATCH_RECORDS[partitions],
                )
        if any(c.topic in ("main", "slice") for c in chosen):  # not when only the wide group runs
            self.produce_main()
        if any(c.topic == "avro" for c in chosen):
            self.produce_avro()

    def produce_main(self) -> None:
        a = self.args
        chosen = self.chosen()
        main_topic = a.topic or f"kingest-bench-{self.tag}"
        if a.topic:
            self.topics["main"] = existing_topic(self.bootstrap, a.topic)
            print(f"reusing topic {a.topic}: {self.topics['main'].records:,} records")
        else:
            print(f"producing {a.records:,} JSON records of ~{a.value_size} B over {a.partitions} partitions...")
            self.topics["main"] = dataset.produce(
                self.bootstrap, main_topic, a.records, a.partitions, a.value_size, a.seed
            )
        partitions = self.topics["main"].partitions
        if any(c.topic == "slice" for c in chosen):
            self.topics["slice"] = dataset.produce(
                self.bootstrap, f"kingest-bench-{self.tag}-slice", a.slice, partitions, a.value_size, a.seed, True
            )
        if self.args.startup:
            self.topics["tiny"] = dataset.produce(
                self.bootstrap, f"kingest-bench-{self.tag}-tiny", partitions, partitions, a.value_size, a.seed, True
            )
        main = self.topics["main"]
        print(
            f"topic {main.topic}: {main.records:,} records, {main.nbytes / MB:.1f} MB of keys and values "
            f"(mean value {main.value_bytes / max(1, main.records):.0f} B), produced in {main.seconds:.1f}s"
        )

    def produce_avro(self) -> None:
        """The main topic's records as Avro in the Confluent wire format, on a topic of the same partitions (and
        its tiny twin): schema version 1 for the first half, version 2 (+ customer.lifetime_orders) for the rest."""
        a = self.args
        main = self.topics.get("main")
        records, partitions = (main.records, main.partitions) if main else (a.records, a.partitions)
        if a.topic:
            print(f"  (the Avro topic holds dataset.py's {records:,} records, not those of --topic {a.topic})")
        topic = f"kingest-bench-{self.tag}-avro"
        ids = self.register(topic)
        print(
            f"producing the same {records:,} records as Avro (schema ids {ids[1]} and {ids[2]}, version 2 from "
            f"record {records // 2:,}) over {partitions} partitions..."
        )
        frame = dataset.AvroFramer(ids, records // 2)
        produced = dataset.produce(self.bootstrap, topic, records, partitions, a.value_size, a.seed, frame=frame)
        self.topics["avro"] = produced
        self.avro = {"ids": ids, "subject": f"{topic}-value", "switch": records // 2}
        if a.startup:
            tiny = f"{topic}-tiny"
            tiny_frame = dataset.AvroFramer(self.register(tiny), partitions // 2)
            self.topics["avro-tiny"] = dataset.produce(
                self.bootstrap, tiny, partitions, partitions, a.value_size, a.seed, True, frame=tiny_frame
            )
        print(
            f"topic {topic}: {produced.records:,} records, {produced.nbytes / MB:.1f} MB of keys and values "
            f"(mean value {produced.value_bytes / max(1, produced.records):.0f} B), produced in {produced.seconds:.1f}s"
        )

    def register(self, topic: str) -> dict[int, int]:
        """Both schema versions under ``<topic>-value``, in order: each version's id."""
        subject = f"{topic}-value"
        self.subjects.append(subject)
        ids = {}
        for version in dataset.AVRO_VERSIONS:
            try:
                ids[version] = dataset.register_schema(self.ccompat, subject, dataset.avro_schema(version))
            except (OSError, ValueError, KeyError) as exc:
                detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, HTTPError) else str(exc)
                raise BenchError(
                    f"could not register version {version} of {subject} at {self.ccompat}: {detail}"
                ) from None
        return ids

    def cleanup(self) -> None:
        self.measurer.close()
        shutil.rmtree(self.work, ignore_errors=True)
        if self.args.keep_topic:
            print(f"kept topics {', '.join(p.topic for p in self.topics.values())}")
            return
        ours = [p.topic for role, p in self.topics.items() if not (role == "main" and self.args.topic)]
        try:
            dataset.delete_topics(self.bootstrap, ours, self.measurer.groups)
        except Exception as exc:
            print(f"could not delete the bench topics {ours}: {exc}", file=sys.stderr)
        if self.subjects:
            dataset.delete_subjects(self.ccompat, self.subjects)
        s3 = self.measurer.s3
        try:
            s3.fs().rm(s3.prefix, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:
            print(f"could not delete s3://{s3.prefix}: {exc}", file=sys.stderr)

    def chosen(self) -> list[Contender]:
        return [c for c in CONTENDERS if c.name in self.args.only]

    # ------------------------------------------------------------------------------------ the whole run

    def run(self) -> dict[str, Any]:
        a = self.args
        chosen = self.chosen()
        twins = [*STARTUPS, *AVRO_STARTUPS] if a.startup else []
        startups = [s for s in twins if s.startup_of in a.only and s.topic in self.topics]
        order = chosen + startups
        loads: list[tuple[float, ...]] = []
        for rep in range(a.repetitions):
            loads.append(os.getloadavg())
            shift = rep % len(order)
            rotated = order[shift:] + order[:shift]  # no contender always runs first, or right after another
            print(f"repetition {rep + 1}/{a.repetitions} (load average {loads[-1][0]:.2f}):")
            for c in rotated:
                if c.repetitions and rep >= c.repetitions:
                    continue
                produced = self.topics[c.topic]
                run = self.measurer.run_one(c, rep, produced.topic, produced.records)
                self.runs.append(run)
                print(
                    f"  {c.name:<20} {run.wall_s:7.2f}s wall {run.cpu_s:7.2f}s CPU {run.maxrss_mb:6.0f} MB RSS"
                    f"  (load {run.load1:.2f})",
                    flush=True,
                )
        loads.append(os.getloadavg())
        help_times = measure_help(self.spawner, self.env, a.help_runs) if a.help_runs else []
        return self.summarise(chosen, loads, help_times)

    def summarise(self, chosen: list[Contender], loads: list[tuple[float, ...]], help_times: list[float]) -> dict:
        """The JSON written to benchmarks/results (its keys are what docs/performance.md quotes)."""
        a = self.args
        runs = summary.index(self.runs)
        results = summary.results(chosen, runs, a.repetitions, self.topics)
        document = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": a.quick,
            "dataset": summary.dataset_figures(
                self.topics["main"],
                self.topics["slice"].records if "slice" in self.topics else None,
                a.value_size,
            )
            if "main" in self.topics
            else None,
            "repetitions": a.repetitions,
            "machine": machine_info(loads),
            "consumer_settings": consumer_settings(self.bootstrap),
            "kingest_env": a.env,
            "results": results,
            "help_seconds": help_times,
            "targets": summary.targets(TARGETS, results, runs, a.repetitions, help_times),
            "runs": [summary.run_row(r) for r in self.runs],
        }
        if self.avro is not None:
            document["avro"] = summary.avro_figures(
                self.topics["avro"], self.avro["ids"], self.avro["subject"], self.avro["switch"]
            )
        wide = {role: self.topics[role] for role in WIDE_TOPICS if role in self.topics}
        if wide:
            delays = {c.delay_ms for c in chosen if c.group == "wide"}
            document["wide"] = summary.wide_figures(wide, WIDE_VALUE_SIZE, max(delays))
        return document


# ---------------------------------------------------------------------------------------------- helpers


def existing_topic(bootstrap: str, topic: str) -> dataset.Produced:
    """A topic produced earlier (--topic): its record count and, from a sample, its key and value bytes."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="kingest-bench", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise BenchError(f"topic {topic} not found on {bootstrap}")
        ends, starts = consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
        records = sum(ends[tp] - starts[tp] for tp in partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        keys = values = sampled = 0
        while sampled < min(records, 5000):
            for chunk in consumer.poll(timeout_ms=1000).values():
                for record in chunk:
                    keys += len(record.key or b"")
                    values += len(record.value or b"")
                    sampled += 1
    finally:
        consumer.close()
    scale = records / max(1, sampled)
    return dataset.Produced(topic, records, len(partitions), round(keys * scale), round(values * scale), 0.0)


def machine_info(loads: list[tuple[float, ...]]) -> dict[str, Any]:
    import kafka
    import pyarrow

    jars = sorted(p.name for p in (ROOT / ".kingest-dev" / "jars").glob("kafka-clients-*.jar"))
    return {
        "cpus": os.cpu_count(),
        "load_average_per_repetition": [[round(x, 2) for x in load] for load in loads],
        "python": sys.version.split()[0],
        "kafka_python": kafka.__version__,
        "confluent_kafka": _confluent_versions(),
        "pyarrow": pyarrow.__version__,
        "kafka_clients_jar": jars[-1] if jars else None,
        "git": _git(),
    }


def _confluent_versions() -> str | None:
    try:
        import confluent_kafka
    except ImportError:
        return None
    return f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def ensure_services(bootstrap: str, s3_endpoint: str | None, registry_url: str | None = None) -> None:
    """Start the dev broker (and S3 server, and schema registry) when they do not answer; they are shared, so never
    stopped here."""
    from urllib.parse import urlparse

    host, _, port = bootstrap.rpartition(":")
    needed = []
    if not _answers(host, int(port)):
        needed.append("kafka")
    if s3_endpoint:
        url = urlparse(s3_endpoint)
        if not _answers(url.hostname or "127.0.0.1", url.port or 80):
            needed.append("s3")
    if registry_url:
        url = urlparse(registry_url)
        if not _answers(url.hostname or "127.0.0.1", url.port or 80):
            needed.append("registry")
    for service in needed:
        print(f"{service} does not answer: starting it with services/devservices.py up {service}")
        subprocess.run([sys.executable, str(ROOT / "services" / "devservices.py"), "up", service], check=True)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- output


def chart(result: dict[str, Any], path: Path) -> None:
    """The PNG: records/s and peak RSS per contender (the bars and title from summary.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    bars = summary.chart_bars(result["results"], [c.name for c in CONTENDERS if c.kind != "kingest"])
    labels = [b.label for b in bars]
    colors = [b.color for b in bars]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(bars) + 1.8), sharey=True)
    left.barh(labels, [b.rate for b in bars], color=colors)
    for y, b in enumerate(bars):
        left.text(b.rate * 1.01, y, b.note, va="center", fontsize=8)
    left.set_xlabel("records/s (median, wall clock, process start to exit)")
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:,.0f}k"))
    fastest = max((b.rate for b in bars), default=0.0)
    left.set_xlim(0, fastest * 1.45 if fastest else 1.0)
    right.barh(labels, [b.rss for b in bars], color=colors)
    for y, b in enumerate(bars):
        if b.rss_limit:
            right.plot([b.rss_limit, b.rss_limit], [y - 0.4, y + 0.4], color="#d62728", linewidth=2)
    right.set_xlabel("peak RSS, MB (red: 1.5 x batch.max_bytes + 200 MB)")
    fig.suptitle(summary.chart_title(result), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kingest vs the bare kafka-python consumer vs Kafka's Java consumer, on the local broker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=500_000, help="records in the dataset")
    parser.add_argument("--value-size", type=int, default=500, help="approximate JSON value size, bytes")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repetitions", type=int, default=3, help="runs of every contender; figures are medians")
    parser.add_argument("--slice", type=int, default=2000, help="records of the batch.max_records: 1 run")
    parser.add_argument("--wide-records", type=int, default=WIDE_RECORDS, help="records of each wide topic")
    parser.add_argument(
        "--quick", action="store_true", help="50,000 records (8,000 in a wide topic), 1 repetition (to try it out)"
    )
    parser.add_argument(
        "--only",
        default=",".join(NAMES),
        help=f"contenders to run, of: {','.join(NAMES)}; or a group of them: {','.join(GROUPS)}",
    )
    parser.add_argument("--no-startup", dest="startup", action="store_false", help="skip the tiny-topic runs")
    parser.add_argument("--help-runs", type=int, default=10, help="times `kingest --help` is timed (0: skip)")
    parser.add_argument("--topic", help="read this existing topic instead of producing a fresh one")
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the bench topics at the end")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bootstrap", default=os.environ.get("KINGEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--s3-endpoint", default=os.environ.get("KINGEST_S3_ENDPOINT", "http://127.0.0.1:8333"))
    parser.add_argument("--s3-bucket", default=os.environ.get("KINGEST_S3_BUCKET", "kingest"))
    parser.add_argument("--s3-key", default=os.environ.get("KINGEST_S3_ACCESS_KEY", "kingest"))
    parser.add_argument(
        "--registry-url",
        default=os.environ.get("KINGEST_REGISTRY_URL", "http://127.0.0.1:8081"),
        help=f"the schema registry (Apicurio; its Confluent API under {CCOMPAT}), for the Avro contenders",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON and PNG")
    parser.add_argument("--work-dir", help="where the lakes are written (default: the system's temp folder)")
    parser.add_argument("--no-chart", dest="chart", action="store_false", help="write no PNG (no matplotlib)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable for the kingest runs (repeatable), e.g. ARROW_DEFAULT_MEMORY_POOL=jemalloc",
    )
    args = parser.parse_args(argv)
    if any("=" not in e for e in args.env):
        parser.error("--env takes NAME=VALUE")
    args.env = dict(e.split("=", 1) for e in args.env)
    args.s3_secret = os.environ.get("KINGEST_S3_SECRET_KEY", "kingest-dev-secret")
    if args.quick:
        args.records, args.repetitions, args.slice, args.wide_records = 50_000, 1, 500, 8_000
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in NAMES and n not in GROUPS]
    if unknown:
        parser.error(
            f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(NAMES)} or {', '.join(GROUPS)}"
        )
    args.only = list(dict.fromkeys(name for n in only for name in GROUPS.get(n, [n])))
    confluent = [c.name for c in CONTENDERS if c.name in args.only and c.client == "confluent"]
    if confluent and importlib.util.find_spec("confluent_kafka") is None:
        print(
            f"bench.py: confluent-kafka is not installed: skipping {', '.join(confluent)} "
            "(install it with .venv/bin/pip install -e '.[fast]'; make bench does it)",
            file=sys.stderr,
        )
        args.only = [n for n in args.only if n not in confluent]
    avro = [c.name for c in CONTENDERS if c.name in args.only and c.records_format == "avro"]
    missing = [m for m in ("fastavro", "polars") if importlib.util.find_spec(m) is None]
    if avro and missing:
        print(
            f"bench.py: {' and '.join(missing)} not installed: skipping {', '.join(avro)} "
            "(install them with .venv/bin/pip install -e '.[avro]'; make bench does it)",
            file=sys.stderr,
        )
        args.only = [n for n in args.only if n not in avro]
    if args.records < 1 or args.repetitions < 1 or args.partitions < 1 or args.wide_records < 1:
        parser.error("--records, --wide-records, --repetitions and --partitions must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "bench.py: matplotlib is needed for the PNG chart and is not installed.\n"
                "  Install the bench extra: .venv/bin/pip install -e '.[bench]'  (make bench does it)\n"
                "  or run without the chart: benchmarks/bench.py --no-chart",
                file=sys.stderr,
            )
            return 2
    spawner = Spawner()  # first, while this process is small (see Spawner)
    s3 = any(c.lake == "s3" for c in CONTENDERS if c.name in args.only)
    avro = any(c.records_format == "avro" for c in CONTENDERS if c.name in args.only)
    ensure_services(args.bootstrap, args.s3_endpoint if s3 else None, args.registry_url if avro else None)
    bench = Bench(args, spawner)
    try:
        bench.produce()
        result = bench.run()
    except BenchError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    finally:
        spawner.close()
        bench.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    # a run of one group alone (with the baselines it is compared with: --only avro) does not take the name of a
    # whole bench run of the same day
    group = next(
        (
            g
            for g, names in GROUPS.items()
            if set(args.only) <= set(names) and any(c.group == g for c in CONTENDERS if c.name in args.only)
        ),
        "",
    )
    stem = dt.date.today().isoformat() + (f"-{group}" if group else "") + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = summary.markdown(result)
    print()
    print(table)
    print()
    written = [args.out / f"{stem}.json"]
    if args.chart:
        chart(result, args.out / f"{stem}.png")
        written.append(args.out / f"{stem}.png")
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
