"""Chaos that cannot pass by luck: faults aimed at the steps between the two halves of each semantics, held
long enough that a client's request times out, repeated, with records arriving throughout.

- The broker frozen (SIGSTOP/SIGCONT of a private Kafka JVM, 4 times 8 s) while three runs, one per semantics,
  consume a topic that is still being written: a frozen broker refuses nothing, it just does not answer, so
  every commit in flight meets a timeout, not an error.
- Rebalances while saving is slow: the S3 lake behind a proxy adding 20 ms to each request, 32 partitions,
  three instances joining and leaving, so that each revocation flush takes seconds.

Each test ends with the work done (a final `kingest run --until-caught-up`, or every instance ending by itself
within a generous bound) and checks the semantics' promise twice: with `kingest verify --json`, and with an
independent read of the lake (pyarrow over the dataset folder and, for exactly-once, over the files the
offsets manifest names, the manifest replayed from its JSON versions: support.LakeView).

`make chaos` runs these (marker `chaos`; `make test` leaves them out), under a CPU hog, RUNS times in a row.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.latency_proxy import LatencyProxy

from .private_services import PrivateService
from .support import (
    DeltaView,
    Instance,
    LakeView,
    end_offsets,
    group_members,
    kingest,
    missing_and_duplicated,
    read_config,
    scale_config,
    wait_for,
    writes_without_latest_claim,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

SEMANTICS = ("exactly-once", "at-least-once", "at-most-once")


# --------------------------------------------------------------------------------------------- helpers


def create_topic(bootstrap: str, partitions: int) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"chaos-{uuid.uuid4().hex[:10]}"
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


class Producer:
    """Small JSON records, numbered, spread round-robin over the partitions, through librdkafka (fast, and
    patient through a frozen broker: a delivery fails only after message.timeout.ms). Idempotent, so that a
    retried request cannot write a record twice into the log: the offsets stay dense, 0 .. end - 1."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import Producer as Librdkafka

        self.topic = topic
        self.partitions = partitions
        self.sent = 0
        self.failed: list[str] = []
        self.producer = Librdkafka(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
                "message.timeout.ms": 300_000,
            }
        )

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def produce(self, count: int) -> None:
        for i in range(self.sent, self.sent + count):
            value = b'{"n": %d, "tag": "c%d"}' % (i, i % 97)
            while True:
                try:
                    self.producer.produce(self.topic, value, partition=i % self.partitions, on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let librdkafka send some
                    self.producer.poll(0.1)
            self.producer.poll(0)
        self.sent += count

    def flush(self, timeout: float = 300) -> None:
        left = self.producer.flush(timeout)
        assert left == 0 and not self.failed, f"{left} records undelivered; failures: {self.failed[:5]}"

    def close(self) -> None:
        self.producer.close()


def verify_report(config: Path, cwd: Path) -> dict[str, Any]:
    done = kingest("verify", "-c", str(config), "--json", cwd=cwd, timeout=300)
    assert done.returncode in (0, 1), f"verify failed (exit {done.returncode}): {done.stdout}{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def promise_broken(
    semantics: str, config: Path, lake: LakeView, pipeline: str, topic: str, ends: dict[int, int], cwd: Path
) -> list[str]:
    """What is wrong with the lake for this semantics' promise, by `kingest verify` and by an independent read:
    at-most-once never twice, at-least-once never missing, exactly-once neither (also among the files the
    manifest names, and no write by a writer without the partition's latest claim). Empty when it holds."""
    problems: list[str] = []
    report = verify_report(config, cwd)
    totals = report["totals"]
    folder_missing, folder_duplicated = missing_and_duplicated(lake.folder_offsets(), ends)
    no_missing = semantics in ("exactly-once", "at-least-once")
    no_duplicates = semantics in ("exactly-once", "at-most-once")
    if not report["holds"]:
        problems.append(f"verify: the guarantee does not hold: {json.dumps(report['violations'])[:1500]}")
    if no_missing and totals["missing"]:
        problems.append(f"verify: {totals['missing']} offsets missing")
    if no_duplicates and totals["duplicated"]:
        problems.append(f"verify: {totals['duplicated']} offsets duplicated")
    if totals["expected"] != sum(ends.values()):
        problems.append(f"verify expected {totals['expected']} offsets, the topic holds {sum(ends.values())}")
    if no_missing and sum(folder_missing.values()):
        problems.append(f"dataset folder: missing per partition {folder_missing}")
    if no_duplicates and sum(folder_duplicated.values()):
        problems.append(f"dataset folder: duplicated per partition {folder_duplicated}")
    if semantics == "exactly-once":
        named = lake.manifest_offsets(pipeline, topic, len(ends))
        named_missing, named_duplicated = missing_and_duplicated(named, ends)
        if sum(named_missing.values()) or sum(named_duplicated.values()):
            problems.append(
                f"files the manifest names: missing per partition {named_missing}, duplicated {named_duplicated}"
            )
        for p in ends:
            next_offset, _ = lake.manifest_files(pipeline, topic, p)
            if next_offset != ends[p]:
                problems.append(f"manifest of partition {p}: next_offset {next_offset}, log end {ends[p]}")
            bad = writes_without_latest_claim(lake.history(pipeline, topic, p))
            if bad:
                problems.append(f"partition {p}: versions {bad} written by a writer without the latest claim")
    return problems


def table_promise_broken(
    semantics: str, config: Path, table: DeltaView, pipeline: str, topic: str, ends: dict[int, int], cwd: Path
) -> list[str]:
    """promise_broken for a Delta table (lake.format: delta): verify, and the table's log replayed with plain JSON
    (rows of its live files, each partition's txn)."""
    problems: list[str] = []
    report = verify_report(config, cwd)
    totals = report["totals"]
    log = table.log()
    missing, duplicated = missing_and_duplicated(table.offsets(log), ends)
    no_missing = semantics in ("exactly-once", "at-least-once")
    no_duplicates = semantics in ("exactly-once", "at-most-once")
    if not report["holds"]:
        problems.append(f"verify: the guarantee does not hold: {json.dumps(report['violations'])[:1500]}")
    if report["missing_files"]:
        problems.append(f"verify: files the table names are gone: {report['missing_files'][:10]}")
    if no_missing and (totals["missing"] or sum(missing.values())):
        problems.append(f"missing: verify {totals['missing']}, the table's live rows per partition {missing}")
    if no_duplicates and (totals["duplicated"] or sum(duplicated.values())):
        problems.append(f"duplicated: verify {totals['duplicated']}, the table's live rows per partition {duplicated}")
    if semantics == "exactly-once":
        txns = {p: log.txns.get(f"kingest-{pipeline}-{topic}-{p}") for p in ends}
        if txns != ends:
            problems.append(f"the table's txns {txns}, the log ends {ends}")
    return problems


@pytest.fixture
def lake_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(lake URL prefix, storage options) for the parametrized `lake`: local disk, or a fresh prefix on the
    shared S3 server (asked for lazily, so the local variant needs no S3)."""
    if request.param == "local":
        yield str(tmp_path / "lakes"), {}
        return
    options = request.getfixturevalue("s3_storage_options")
    yield request.getfixturevalue("s3_prefix"), options


# --------------------------------------------------------------------------------------------- broker frozen

FROZEN_PARTITIONS = 4
BEFORE = 100_000  # produced before the runs start
DURING = 100_000  # produced while they run, across the freezes
FREEZES = 4
FREEZE_SECONDS = 8.0


@pytest.mark.parametrize("lake_format", ["parquet", "delta"])
@pytest.mark.parametrize("lake_url", ["local", "s3"], indirect=True)
def test_broker_frozen_during_runs(
    private_kafka: PrivateService, lake_url: tuple[str, dict[str, Any]], lake_format: str, tmp_path: Path
) -> None:
    """Three runs at once (one per semantics, 4 partitions, short batches so that commits are frequent) while
    the broker is frozen 4 times for 8 s and records keep arriving; then each run is stopped (SIGTERM), a final
    `kingest run --until-caught-up` catches up, and each lake must hold what its semantics promises: every
    offset once (exactly-once), none missing (at-least-once), none twice (at-most-once)."""
    base, options = lake_url
    bootstrap = private_kafka.bootstrap
    topic = create_topic(bootstrap, FROZEN_PARTITIONS)
    producer = Producer(bootstrap, topic, FROZEN_PARTITIONS)
    producer.produce(BEFORE)
    producer.flush()

    configs: dict[str, Path] = {}
    pipelines: dict[str, str] = {}
    lakes: dict[str, str] = {}
    instances: dict[str, Instance] = {}
    for semantics in SEMANTICS:
        lakes[semantics] = f"{base}/{semantics}"
        configs[semantics] = tmp_path / f"{semantics}.yaml"
        scale_config(
            configs[semantics],
            topic=topic,
            lake={"path": lakes[semantics], "format": lake_format},
            semantics=semantics,
            bootstrap=bootstrap,
            storage_options=options,
            batch={"max_records": 5000, "max_age": "1s"},
        )
        pipelines[semantics] = read_config(configs[semantics])["pipeline"]
        instances[semantics] = Instance(semantics, configs[semantics], tmp_path).start()

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"freeze schedule seed: {seed}")
    feeding_error: list[BaseException] = []

    def feed() -> None:
        try:
            for _ in range(DURING // 2000):
                producer.produce(2000)
                time.sleep(0.6)
            producer.flush()
        except BaseException as e:  # reported by the test's thread
            feeding_error.append(e)

    feeder = threading.Thread(target=feed, name="producer", daemon=True)
    codes: dict[str, int | str] = {}
    try:
        time.sleep(3)  # the runs join the group and start writing
        feeder.start()
        for _ in range(FREEZES):
            time.sleep(rng.uniform(2.0, 5.0))
            private_kafka.freeze()
            try:
                time.sleep(FREEZE_SECONDS)
            finally:
                private_kafka.thaw()
        feeder.join(240)
        assert not feeder.is_alive(), "the producer did not finish within 240 s of the last freeze"
        assert not feeding_error, f"the producer failed: {feeding_error[0]!r}"
        producer.close()
        ends = end_offsets(bootstrap, topic, FROZEN_PARTITIONS)
        assert sum(ends.values()) == BEFORE + DURING, ends
        time.sleep(5)  # some work after the last freeze, so that the stop is not the only thing that happens
        for semantics, instance in instances.items():
            try:
                codes[semantics] = instance.stop(timeout=120)
            except Exception as e:  # reported with the guarantee below
                codes[semantics] = f"did not stop within 120 s of SIGTERM ({e.__class__.__name__})"
                instance.kill()
        finals = {s: kingest("run", "-c", str(configs[s]), "--until-caught-up", cwd=tmp_path) for s in SEMANTICS}
    except BaseException:
        for instance in instances.values():
            print(instance.logs()[-5000:])
        raise
    finally:
        private_kafka.thaw()
        for instance in instances.values():
            instance.kill()

    problems: dict[str, list[str]] = {}
    for semantics in SEMANTICS:
        check = promise_broken if lake_format == "parquet" else table_promise_broken
        view = LakeView(lakes[semantics], options) if lake_format == "parquet" else DeltaView(lakes[semantics], options)
        found = check(semantics, configs[semantics], view, pipelines[semantics], topic, ends, tmp_path)  # type: ignore[arg-type]
        if finals[semantics].returncode != 0:
            found.append(f"the final catch-up run exited {finals[semantics].returncode}: {finals[semantics].stderr}")
        if codes[semantics] != 0:
            found.append(f"the run under chaos ended with {codes[semantics]} (a clean stop is 0)")
        if found:
            problems[semantics] = found
            print(f"--- {semantics}: {found}\n{instances[semantics].logs()[-4000:]}")
    assert problems == {}, json.dumps(problems, indent=1)


# --------------------------------------------------------------------------------------------- slow saves

WIDE_PARTITIONS = 32
# Few enough that instances also leave by ending (caught up) while others still flush. Tried and dropped: 96,000
# before, a steady producer and 4 leave-and-return turns (no instance ends early): kafka-python's stalled member
# showed in none of 8 test runs, against 4 of 5 with this plan (at-least-once and at-most-once; 2026-12-03).
WIDE_BEFORE = 32_000
WIDE_DURING = 32_000
S3_DELAY = 0.020
HUNG_AFTER = 120.0  # seconds after the last record is produced: an instance still running then has hung


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_rebalances_during_slow_saves(
    semantics: str,
    kafka_bootstrap: str,
    topic_factory: Any,
    s3_storage_options: dict[str, Any],
    s3_prefix: str,
    kafka_admin: Any,
    tmp_path: Path,
) -> None:
    """Three `kingest run --until-caught-up` instances over 32 partitions, the S3 lake 20 ms a request away,
    records arriving while they run: they join one by one, one leaves (SIGTERM) and comes back, others end
    when caught up, so each rebalance waits for revocation flushes of many partitions to a slow store. Every
    instance must end by itself (caught up) within a generous bound, with a clean exit, and the lake hold what
    the semantics promises for clean rebalances: nothing lost; nothing twice under exactly-once and
    at-most-once (at-least-once may write a record twice)."""
    topic = topic_factory(partitions=WIDE_PARTITIONS, name="slow-saves")
    producer = Producer(kafka_bootstrap, topic, WIDE_PARTITIONS)
    producer.produce(WIDE_BEFORE)
    producer.flush()

    with LatencyProxy(s3_storage_options["endpoint_url"], delay=S3_DELAY) as proxy:
        config_path = tmp_path / "kingest.yaml"
        scale_config(
            config_path,
            topic=topic,
            lake=s3_prefix,
            semantics=semantics,
            bootstrap=kafka_bootstrap,
            storage_options={**s3_storage_options, "endpoint_url": proxy.url},
            batch={"max_records": 2000, "max_age": "2s"},
        )
        config = read_config(config_path)
        group = f"kingest-{config['pipeline']}"
        a, b, c = (Instance(name, config_path, tmp_path, args=("--until-caught-up",)) for name in "abc")
        everyone = [a, b, c]

        def joined(instance: Instance) -> None:
            """Until the instance holds partitions (or has already ended, caught up)."""
            wait_for(
                lambda: not instance.alive() or group_members(kafka_admin, group)[1].get(instance.name),
                f"instance {instance.name} gets partitions",
                timeout=HUNG_AFTER,
                every=0.5,
            )

        try:
            a.start()
            joined(a)
            b.start()  # a revokes everything, flushing what it holds of 32 partitions to the slow store
            joined(b)
            producer.produce(WIDE_DURING // 2)
            c.start()
            joined(c)
            time.sleep(2)
            assert b.stop(timeout=HUNG_AFTER) == 0, "instance b did not stop cleanly on SIGTERM (a leave)"
            producer.produce(WIDE_DURING - WIDE_DURING // 2)
            producer.flush()
            producer.close()
            b.start()  # back: one more rebalance, with a and c holding buffers for a slow store
            deadline = time.monotonic() + HUNG_AFTER
            for instance in everyone:
                left = max(1.0, deadline - time.monotonic())
                try:
                    code = instance.process.wait(left) if instance.process else None
                except subprocess.TimeoutExpired:  # the point of this test
                    still = [i.name for i in everyone if i.alive()]
                    raise AssertionError(
                        f"hung: instances {still} still running {HUNG_AFTER:.0f}s after the last record was "
                        f"produced (--until-caught-up); the proxy saw {proxy.requests} requests"
                    ) from None
                assert code == 0, f"instance {instance.name} exited {code}"
            print(f"{semantics}: the proxy delayed {proxy.requests} requests")

            ends = end_offsets(kafka_bootstrap, topic, WIDE_PARTITIONS)
            assert sum(ends.values()) == WIDE_BEFORE + WIDE_DURING, ends
            # Every instance ended caught up, so the work is done; a final run checks that nothing is left over.
            final = kingest("run", "-c", str(config_path), "--until-caught-up", cwd=tmp_path)
            assert final.returncode == 0, final.stderr
        except BaseException:
            for instance in everyone:
                print(instance.logs()[-6000:])
            raise
        finally:
            for instance in everyone:
                instance.kill()

    # The audit reads the store directly (the proxy is gone): the same pipeline, without the proxy.
    audit_path = tmp_path / "audit.yaml"
    audit_path.write_text(
        yaml.safe_dump({**config, "lake": {"path": s3_prefix, "storage_options": s3_storage_options}})
    )
    lake = LakeView(s3_prefix, s3_storage_options)
    problems = promise_broken(semantics, audit_path, lake, config["pipeline"], topic, ends, tmp_path)
    if semantics == "at-most-once":  # a clean rebalance commits the buffer's offsets, then writes it: no loss
        lost, _ = missing_and_duplicated(lake.folder_offsets(), ends)
        if sum(lost.values()):
            problems.append(f"dataset folder: missing per partition {lost} (rebalances were clean)")
    assert problems == [], "\n".join(problems)
