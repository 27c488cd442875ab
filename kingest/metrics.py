"""Prometheus metrics of a running pipeline (`kingest run --metrics-port N`). The one module that imports
prometheus_client.

Most values are read from the pipeline's ``Stats`` at scrape time (a custom collector), so the poll loop pays
nothing for them; only the flush latency is observed per flush (through the run's progress callback). Every
metric is documented in docs/observability.md:

    kingest_info{pipeline,semantics,version}         1
    kingest_records_consumed_total                   records polled from Kafka
    kingest_records_written_total                    records written to the lake
    kingest_bytes_written_total                      Parquet bytes written
    kingest_files_written_total                      Parquet files written
    kingest_commits_total                            offset commits (Kafka group, or manifest versions)
    kingest_flush_duration_seconds                   histogram: decode + write + commit of one flush
    kingest_consumer_lag_records{topic,partition}    log end offset (last fetch) - position
    kingest_errors_total{error}                      errors by class; LakeRetry / SourceRetry count retried calls
    kingest_fenced_total                             partitions lost to another writer (exactly-once zombie)
    kingest_rebalances_total{event}                  assigned / revoked / lost callbacks
    kingest_kafka_connected                          1, or 0 while no broker answers
    kingest_kafka_outages_total                      times every broker connection was lost
    kingest_dead_letters_total                       records sent to the dead-letter folder (when that exists)
plus the standard ``process_*`` and ``python_*`` metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .errors import SetupError

log = logging.getLogger("kingest.metrics")

FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _PipelineCollector(Collector):
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Any]:
        # Runs on the HTTP server's thread while the poll loop runs: read each value once, copy containers.
        pipeline = self.pipeline
        stats = pipeline.stats
        info = InfoMetricFamily("kingest", "The pipeline this process runs.")
        info.add_metric(
            [], {"pipeline": pipeline.config.pipeline, "semantics": pipeline.semantics, "version": __version__}
        )
        yield info
        for name, value, help_text in (
            ("kingest_records_consumed", stats.consumed, "Records polled from Kafka."),
            ("kingest_records_written", stats.written, "Records written to the lake."),
            ("kingest_bytes_written", stats.bytes, "Parquet bytes written to the lake."),
            ("kingest_files_written", stats.files, "Parquet files written to the lake."),
            ("kingest_commits", stats.commits, "Offset commits: Kafka group commits, or manifest versions."),
            ("kingest_fenced", stats.fenced, "Partitions lost to another writer (exactly-once zombie fencing)."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        dead_letters = getattr(stats, "dead_letters", None)
        if isinstance(dead_letters, int):
            yield CounterMetricFamily(
                "kingest_dead_letters", "Records written to the dead-letter folder.", value=dead_letters
            )

        errors = CounterMetricFamily(
            "kingest_errors",
            "Errors by class. LakeRetry and SourceRetry count store and broker calls that failed and were retried.",
            labels=["error"],
        )
        counts = dict(stats.errors)
        counts["LakeRetry"] = int(getattr(pipeline.lake, "retries", 0))
        counts["SourceRetry"] = int(getattr(pipeline.source, "retries", 0))
        for error, count in sorted(counts.items()):
            errors.add_metric([error], count)
        yield errors

        rebalances = CounterMetricFamily(
            "kingest_rebalances", "Partition assignment callbacks, by event.", labels=["event"]
        )
        counts = dict(stats.rebalances)
        for event in ("assigned", "revoked", "lost"):
            rebalances.add_metric([event], counts.get(event, 0))
        yield rebalances

        connection = getattr(pipeline.source, "connection", None)
        if connection is not None:
            yield GaugeMetricFamily(
                "kingest_kafka_connected",
                "1 while the consumer has a connection to a broker, 0 during an outage (after a second without).",
                value=1 if connection.connected else 0,
            )
            yield CounterMetricFamily(
                "kingest_kafka_outages", "Times the consumer lost every broker connection.", value=connection.outages
            )

        lag = GaugeMetricFamily(
            "kingest_consumer_lag_records",
            "Records behind the log end offset reported by the last fetch, per assigned partition.",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(dict(stats.lag).items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag


class Metrics:
    """The registry of one run, its collector and its HTTP endpoint."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        # A registry of our own: nothing global, so two pipelines (or tests) in one process do not collide.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_PipelineCollector(pipeline))
        self.flush_seconds = Histogram(
            "kingest_flush_duration_seconds",
            "Time to decode, write and commit one flush.",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        self._observed = 0
        self.server: Any = None
        self.thread: Any = None

    def on_flush(self, stats: Any) -> None:
        """Called after each flush (on the loop's thread, or the rebalance worker's)."""
        if stats.flushes != self._observed:
            self._observed = stats.flushes
            self.flush_seconds.observe(stats.last_flush_seconds)

    def chained(self, on_progress: Callable[[Any], None]) -> Callable[[Any], None]:
        """A progress callback that also feeds the flush histogram."""

        def both(stats: Any) -> None:
            self.on_flush(stats)
            on_progress(stats)

        return both

    def serve(self, host: str, port: int) -> str:
        """Start the HTTP endpoint on a daemon thread; returns its URL. Port 0 picks a free port."""
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise SetupError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                "Choose another --metrics-port (0 picks a free one), or --metrics-host.",
            ) from None
        bound_host, bound_port = self.server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        return f"http://{shown}:{bound_port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
