"""What the benchmark runs: each contender one declarative entry, and the targets the summary checks.

A contender is read by the other modules, never run here: measure.py turns it into a process (its ``kind``
picks the command: Kafka's Java perf test, benchmarks/bare_consumer.py, or ``kingest run`` with the config
``kingest_config`` writes), summary.py turns its runs into figures. Imports only the standard library at load
(the unit tests load this file by path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MiB = 1 << 20
DEFAULT_MAX_BYTES = 64 * MiB  # kingest's batch.max_bytes default (kingest.config.BatchConfig)


@dataclass(frozen=True)
class Contender:
    name: str  # what --only and the JSON's "results" call it
    label: str  # the table's and the chart's row
    kind: str  # java | bare | kingest
    topic: str = "main"  # the topic it reads: main | slice | tiny | wide-1 | wide-32 | avro | avro-tiny (bench.py
    # produces each one a run needs; WIDE_TOPICS gives the wide ones' partitions)
    semantics: str = ""  # kingest only
    lake: str = "local"  # kingest only: local | s3
    batch: dict[str, Any] = field(default_factory=dict)  # kingest only: the config's `batch:` keys
    startup_of: str = ""  # a run on the tiny topic: the fixed cost of this contender
    client: str = "kafka-python"  # kafka.client: kafka-python | confluent
    kafka_settings: dict[str, Any] = field(default_factory=dict)  # kingest only: more `kafka:` keys
    lake_settings: dict[str, Any] = field(default_factory=dict)  # kingest only: more `lake:` keys (max_concurrency)
    delay_ms: float = 0.0  # s3 only: each request goes through a LatencyProxy adding this much (a far-away store)
    group: str = ""  # a group of contenders with a table of its own ("wide"); --only takes its name too
    baseline: str = ""  # the contender this one is compared with ("vs baseline": 32 vs 1 partition, Avro vs JSON)
    repetitions: int = 0  # runs in the first this many repetitions only (0: in every one): a slow one runs once
    records_format: str = "json"  # kingest only: records.format, json | avro (Avro reads the topic "avro")

    @property
    def own_bare(self) -> str:
        """The bare loop of this contender's client."""
        return "bare-confluent" if self.client == "confluent" else "bare"

    @property
    def is_startup(self) -> bool:
        return bool(self.startup_of)

    @property
    def batch_max_bytes(self) -> int:
        """A kingest contender's batch.max_bytes, in bytes."""
        from kingest.config import parse_size

        return parse_size(self.batch.get("max_bytes", DEFAULT_MAX_BYTES))

    def kingest_config(
        self,
        *,
        pipeline: str,
        bootstrap: str,
        topic: str,
        lake_path: str,
        storage_options: dict[str, Any],
        registry: str = "",
    ) -> dict[str, Any]:
        """The `kingest run` config of a kingest contender (written as JSON, which is YAML). ``registry``: the
        schema registry's Confluent API (.../apis/ccompat/v7), for records.format: avro."""
        records: dict[str, Any] = {"format": self.records_format}
        if self.records_format == "avro":
            records["schema_registry"] = {"url": registry}
        config: dict[str, Any] = {
            "pipeline": pipeline,
            "kafka": {"bootstrap_servers": bootstrap, "topics": [topic], "client": self.client, **self.kafka_settings},
            "records": records,
            "lake": {"path": lake_path, "storage_options": storage_options, **self.lake_settings},
            "semantics": self.semantics,
        }
        if self.batch:
            config["batch"] = dict(self.batch)
        return config


# The wide topics (bench.py produces them with dataset.py): their partitions, the records of each (--wide-records,
# 8,000 with --quick), the size of a value, a partition's batch (batch.max_records, and the topic's record batches:
# see wide()), the proxy's delay.
WIDE_TOPICS = {"wide-1": 1, "wide-32": 32}
WIDE_RECORDS = 64_000
WIDE_VALUE_SIZE = 200
WIDE_BATCH_RECORDS = {1: 2000, 32: 63}
WIDE_DELAY_MS = 20.0
# A fetch of a partition takes this many bytes a record of a batch: ~1.4 record batches of ~225 B records (value,
# key and the record's own bytes). It must hold one whole batch: a broker returns a first batch larger than the
# limit for the first partition of a fetch only (KIP-74), and the poll would then hold one partition.
WIDE_FETCH_BYTES_A_RECORD = 320


def wide(
    name: str,
    semantics: str,
    partitions: int,
    baseline: str = "",
    more: str = "",
    repetitions: int = 0,
    **lake_settings: Any,
) -> Contender:
    """A contender of the "wide" group: kingest into S3 through the +20 ms proxy, on the wide topic of
    ``partitions`` (``more``: the label's end), compared with ``baseline`` (the 1-partition run).

    Each flush holds one batch of every partition, as when a topic is read while it is written (not all at once
    from a backlog: a poll then returns thousands of one partition's records, cut into many batches of it, and a
    flush holds a few partitions). The topic is produced in record batches of batch.max_records a partition, and
    each fetch of a partition takes one of them: each poll returns one batch of every partition."""
    batch_records = WIDE_BATCH_RECORDS[partitions]
    return Contender(
        name,
        f"kingest {semantics}, S3 +20 ms, {partitions} partition{'s' if partitions > 1 else ''}{more}",
        "kingest",
        topic=f"wide-{partitions}",
        semantics=semantics,
        lake="s3",
        batch={"max_records": batch_records},
        kafka_settings={"max_partition_fetch_bytes": batch_records * WIDE_FETCH_BYTES_A_RECORD},
        lake_settings=lake_settings,
        delay_ms=WIDE_DELAY_MS,
        group="wide",
        baseline=baseline,
        repetitions=repetitions,
    )


def avro(name: str, json_twin: str) -> Contender:
    """The contender ``json_twin`` (kingest on the main topic) reading the Avro topic with records.format: avro
    (group "avro"), compared with its twin ("vs JSON": the same client, semantics and lake)."""
    twin = next(c for c in CONTENDERS if c.name == json_twin)
    return dataclasses.replace(
        twin,
        name=name,
        label=f"{twin.label}, Avro",
        topic="avro",
        records_format="avro",
        group="avro",
        baseline=json_twin,
    )


CONTENDERS = [
    # The ceilings: the broker's and machine's (Java), and each client's (a poll loop that only counts).
    Contender("java", "Kafka Java consumer (perf test)", "java"),
    Contender("bare", "bare kafka-python poll loop", "bare"),
    Contender("bare-confluent", "bare confluent-kafka poll loop", "bare", client="confluent"),
    # kingest, per semantics, local disk and S3
    Contender("alo", "kingest at-least-once, local", "kingest", semantics="at-least-once"),
    Contender("amo", "kingest at-most-once, local", "kingest", semantics="at-most-once"),
    Contender("eo", "kingest exactly-once, local", "kingest", semantics="exactly-once"),
    Contender("eo-s3", "kingest exactly-once, S3", "kingest", semantics="exactly-once", lake="s3"),
    # memory must not grow with the topic; the cost of a file per record
    Contender(
        "alo-16MiB",
        "kingest at-least-once, local, batch.max_bytes 16MiB",
        "kingest",
        semantics="at-least-once",
        batch={"max_bytes": "16MiB"},
    ),
    Contender(
        "alo-1-record",
        "kingest at-least-once, batch.max_records 1 (slice)",
        "kingest",
        topic="slice",
        semantics="at-least-once",
        batch={"max_records": 1},
    ),
    # kingest with `kafka.client: confluent`
    Contender(
        "alo-confluent",
        "kingest at-least-once, local, confluent",
        "kingest",
        semantics="at-least-once",
        client="confluent",
    ),
    Contender(
        "eo-confluent",
        "kingest exactly-once, local, confluent",
        "kingest",
        semantics="exactly-once",
        client="confluent",
    ),
    # Wide topics on a far-away object store (group "wide", a table of its own): the same 64,000 records of
    # ~200 B on one partition and on 32, into S3 through a proxy adding 20 ms to each request, in the same
    # number of flushes, each with one batch of every partition (32 flushes: of 2,000 records on one partition;
    # of 63 records a partition, 2,016 in all, on 32), and the 32-partition exactly-once run again saving one
    # partition after another (lake.max_concurrency: 1, as before it was 16), to show the gain side by side: in
    # the first repetition only, as it takes about 3 minutes (1,024 commits of ~7 round trips each, in a row).
    wide("wide-eo-1", "exactly-once", 1),
    wide("wide-eo-32", "exactly-once", 32, "wide-eo-1"),
    wide("wide-eo-32-seq", "exactly-once", 32, "wide-eo-1", ", max_concurrency 1", 1, max_concurrency=1),
    wide("wide-alo-1", "at-least-once", 1),
    wide("wide-alo-32", "at-least-once", 32, "wide-alo-1"),
    # Delta Lake tables (lake.format: delta): exactly-once on local disk and S3 beside the Parquet lake's, and the
    # wide topic (one table commit a flush, whatever the partitions; the manifest commits one version each).
    Contender(
        "eo-delta",
        "kingest exactly-once, local, Delta table",
        "kingest",
        semantics="exactly-once",
        lake_settings={"format": "delta"},
    ),
    Contender(
        "eo-delta-s3",
        "kingest exactly-once, S3, Delta table",
        "kingest",
        semantics="exactly-once",
        lake="s3",
        lake_settings={"format": "delta"},
    ),
    wide("wide-eo-delta-1", "exactly-once", 1, "", ", Delta table", format="delta"),
    wide("wide-eo-delta-32", "exactly-once", 32, "wide-eo-delta-1", ", Delta table", format="delta"),
    # A contender to come is an entry here; one that reads a topic of its own also needs that topic produced in
    # bench.py's Bench.produce (by dataset.py). One on the main topic gets its tiny-topic startup twin (STARTUPS)
    # and its row in the table and chart for free; a goal for it (say Delta >= 0.9x exactly-once Parquet) is a
    # Target in TARGETS below.
]
# Avro (group "avro": `--only avro` runs them with their JSON twins; a table of their own): the main topic's records
# as Avro in the Confluent wire format, two schema versions (dataset.py), on a topic of the same partitions and
# records, read with `records.format: avro` beside the same contender reading the JSON topic.
CONTENDERS += [
    avro("alo-avro", "alo"),
    avro("eo-avro", "eo"),
    avro("alo-confluent-avro", "alo-confluent"),
    avro("eo-confluent-avro", "eo-confluent"),
]
NAMES = [c.name for c in CONTENDERS]
# A group's members, then the baselines they are compared with that are not members (the Avro contenders' JSON
# twins): `--only <group>` runs what its table and ratios need.
GROUPS = {
    g: list(
        dict.fromkeys(
            [c.name for c in CONTENDERS if c.group == g]
            + [c.baseline for c in CONTENDERS if c.group == g and c.baseline]
        )
    )
    for g in dict.fromkeys(c.group for c in CONTENDERS if c.group)
}

# The tiny topic of each topic that has startup twins: one record in each partition.
TINY_TOPICS = {"main": "tiny", "avro": "avro-tiny"}


def startup_twin(c: Contender) -> Contender:
    """The same contender on the tiny topic: its fixed cost (imports, group join, lake probe, one small flush)."""
    return dataclasses.replace(
        c, name=f"{c.name}:startup", label=f"{c.label}, tiny topic", topic=TINY_TOPICS[c.topic], startup_of=c.name
    )


# The tiny-topic twins that measure each contender's fixed cost (Java reports its own fetch time instead).
STARTUPS = [startup_twin(c) for c in CONTENDERS if c.kind != "java" and c.topic == "main"]
# The Avro contenders' twins, on a tiny Avro topic (their fixed cost also holds the registry's answers).
AVRO_STARTUPS = [startup_twin(c) for c in CONTENDERS if c.topic == "avro"]


class Target(NamedTuple):
    """A goal for the ratio of two contenders' rates (within a repetition, then the median)."""

    text: str
    name: str
    base: str
    lower: float
    upper: float | None = None


TARGETS = [
    Target("at-least-once local >= 0.9x bare loop", "alo", "bare", 0.9),
    Target("exactly-once local >= 0.9x bare loop", "eo", "bare", 0.9),
    Target("at-least-once local, confluent >= 0.9x bare loop", "alo-confluent", "bare", 0.9),
    Target("exactly-once local, confluent >= 0.9x bare loop", "eo-confluent", "bare", 0.9),
    Target("at-most-once within 5% of at-least-once", "amo", "alo", 0.95, upper=1.05),
    Target("exactly-once S3 >= 0.8x exactly-once local", "eo-s3", "eo", 0.8),
    Target("exactly-once, S3 +20 ms: 32 partitions >= 0.6x 1 partition", "wide-eo-32", "wide-eo-1", 0.6),
    Target("exactly-once local: Delta table >= 0.8x Parquet lake", "eo-delta", "eo", 0.8),
    Target("exactly-once S3: Delta table >= 0.8x Parquet lake", "eo-delta-s3", "eo-s3", 0.8),
    Target(
        "exactly-once, S3 +20 ms, Delta: 32 partitions >= 0.6x 1 partition", "wide-eo-delta-32", "wide-eo-delta-1", 0.6
    ),
    Target("at-least-once, S3 +20 ms: 32 partitions >= 0.7x 1 partition", "wide-alo-32", "wide-alo-1", 0.7),
    Target("at-least-once local: Avro >= 1.5x JSON's records/s, same client (kafka-python)", "alo-avro", "alo", 1.5),
    Target("exactly-once local: Avro >= 1.5x JSON's records/s, same client (kafka-python)", "eo-avro", "eo", 1.5),
    Target(
        "at-least-once local: Avro >= 1.5x JSON's records/s, same client (confluent)",
        "alo-confluent-avro",
        "alo-confluent",
        1.5,
    ),
    Target(
        "exactly-once local: Avro >= 1.5x JSON's records/s, same client (confluent)",
        "eo-confluent-avro",
        "eo-confluent",
        1.5,
    ),
]
