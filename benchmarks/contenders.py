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
    topic: str = "main"  # the topic it reads: main | slice | tiny (bench.py produces each one a run needs)
    semantics: str = ""  # kingest only
    lake: str = "local"  # kingest only: local | s3
    batch: dict[str, Any] = field(default_factory=dict)  # kingest only: the config's `batch:` keys
    startup_of: str = ""  # a run on the tiny topic: the fixed cost of this contender
    client: str = "kafka-python"  # kafka.client: kafka-python | confluent

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
        self, *, pipeline: str, bootstrap: str, topic: str, lake_path: str, storage_options: dict[str, Any]
    ) -> dict[str, Any]:
        """The `kingest run` config of a kingest contender (written as JSON, which is YAML)."""
        config: dict[str, Any] = {
            "pipeline": pipeline,
            "kafka": {"bootstrap_servers": bootstrap, "topics": [topic], "client": self.client},
            "records": {"format": "json"},
            "lake": {"path": lake_path, "storage_options": storage_options},
            "semantics": self.semantics,
        }
        if self.batch:
            config["batch"] = dict(self.batch)
        return config


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
    # Contenders to come, each an entry here plus the one thing it needs that is not declared yet:
    # - Delta Lake exactly-once: a lake format (a field, say `table: "delta"`, that kingest_config writes
    #   under `lake:`) once kingest writes Delta tables; summary.py needs nothing new.
    # - Avro: `records.format: avro` (a field for it in kingest_config) and an Avro topic: a `topic` role of
    #   its own, produced in bench.py's Bench.produce by dataset.py.
    # - exactly-once, S3, 32 partitions, +20 ms a request: a `topic` role with 32 partitions (Bench.produce)
    #   and a `lake` kind whose endpoint is a latency proxy in front of the S3 server (measure.py's
    #   Measurer.lake, the one place a lake kind becomes a path and storage options).
    # Each then gets its tiny-topic startup twin (STARTUPS) and its row in the table and chart for free; a goal
    # for it (say Delta >= 0.9x exactly-once Parquet) is a Target in TARGETS below.
]
NAMES = [c.name for c in CONTENDERS]


def startup_twin(c: Contender) -> Contender:
    """The same contender on the tiny topic: its fixed cost (imports, group join, lake probe, one small flush)."""
    return dataclasses.replace(
        c, name=f"{c.name}:startup", label=f"{c.label}, tiny topic", topic="tiny", startup_of=c.name
    )


# The tiny-topic twins that measure each contender's fixed cost (Java reports its own fetch time instead).
STARTUPS = [startup_twin(c) for c in CONTENDERS if c.kind != "java" and c.topic == "main"]


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
]
