"""The Kafka side with librdkafka, through confluent-kafka (``kafka.client: confluent``, the ``fast`` extra):
the same Source as kingest/sources/kafka_python.py's KafkaSource, with the same guarantees, for a fraction of the CPU a
record. The one module that imports confluent_kafka, and only when this client is chosen (``kingest --help``
and kafka-python runs never load it).

How librdkafka differs, and what this module does about it:
- Rebalance callbacks run inside consume()/poll(), on the calling thread: the pipeline's callbacks call
  commit(), seek() and position() directly. But a partition is not assigned until the assign callback has
  assigned it: a seek() requested while it runs is kept and given to assign() as the start offset (librdkafka's
  seek() would fail with "Erroneous state").
- position() is unknown (OFFSET_INVALID) until a message of the partition is consumed: then this source answers
  the start offset it assigned, or the group's committed offset, or where auto_offset_reset leads.
- Records are handed to the batcher as ready-made columns (batcher.Columns), built with C-level ``map`` calls
  over whole consume() batches: no per-record Python code.
- librdkafka retries a broker that is down for ever and reports it through callbacks, not exceptions: the
  error callback (credentials, fatal errors), the statistics callback (how many brokers are up, for the
  ConnectionWatch) and its log lines (forwarded to the ``kafka.librdkafka`` logger, shown with --verbose).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from itertools import compress, islice
from operator import itemgetter, ne
from typing import Any

from kingest.batcher import Columns
from kingest.config import KafkaConfig
from kingest.errors import SetupError, SourceUnavailable, TopicNotFound
from kingest.types import TopicPartition

from . import tls
from .common import (
    CommitRetry,
    ConnectionWatch,
    CredentialsFailure,
    Listener,
    commit_refused,
    credentials_error,
    lag_commit_failed,
)

log = logging.getLogger("kingest.source")
# librdkafka's own log lines: under "kafka." like kafka-python's, so kingest's handler shows them only with
# --verbose (output._QuietKafka), in kingest's format, scrubbed of secrets.
LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")

INSTALL = "pip install 'kingest[fast]'"
PROPERTIES_DOC = "https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"

_timestamp = itemgetter(1)  # Message.timestamp() is (type, milliseconds)


def load() -> Any:
    """The confluent_kafka module, or a SetupError saying how to install it."""
    try:
        import confluent_kafka
    except ImportError:
        raise SetupError(
            "kafka.client is confluent, but confluent-kafka (librdkafka) is not installed",
            f"Install it with: {INSTALL} (or set kafka.client: kafka-python).",
        ) from None
    return confluent_kafka


def librdkafka_settings(config: KafkaConfig) -> dict[str, Any]:
    """The consumer's librdkafka properties: the config's (KafkaConfig.librdkafka_settings, kafka.consumer
    included) and what this source adds unless kafka.consumer sets it. Secrets included: never print this."""
    settings = config.librdkafka_settings()
    # librdkafka backs off up to 10 s between reconnects; like KafkaSource, notice a broker back within 1 s.
    settings.setdefault("reconnect.backoff.max.ms", 1000)
    settings.setdefault("statistics.interval.ms", 1000)  # the broker states, for the ConnectionWatch
    # librdkafka pre-fetches up to 64 MiB by default, on top of the batches kingest holds (batch.max_bytes):
    # 8 MiB keeps a run's memory where kafka-python's is, and a 10 ms backoff (instead of 1 s) when that queue
    # is full keeps the fetches coming: measured on the bench dataset, the same throughput, 60 MB less RSS.
    settings.setdefault("queued.max.messages.kbytes", 8192)
    settings.setdefault("fetch.queue.backoff.ms", 10)
    if LIBRDKAFKA_LOG.isEnabledFor(logging.DEBUG):  # --verbose: what the group does (joins, assignments)
        settings.setdefault("debug", "cgrp")
    return settings


def _consumer(ck: Any, settings: dict[str, Any]) -> Any:
    try:
        return ck.Consumer(settings)
    except (ck.KafkaException, ValueError, TypeError) as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
        reason = error.str() if error is not None else str(exc)
        raise SetupError(
            f"Kafka consumer settings rejected by librdkafka: {reason}",
            "Check the kafka: section. With kafka.client: confluent, kafka.consumer takes librdkafka "
            f"properties (such as fetch.wait.max.ms), see {PROPERTIES_DOC}.",
        ) from None


def check_settings(config: KafkaConfig) -> str:
    """For `kingest check`: librdkafka accepts the consumer settings (a consumer is made and closed, without
    joining the group). Raises SetupError otherwise."""
    ck = load()
    tls.check_files(config)
    settings = librdkafka_settings(config)
    settings.update(logger=_LogForwarder())
    _consumer(ck, settings).close()
    return f"confluent-kafka {ck.__version__} (librdkafka {ck.libversion()[0]}) accepts the consumer settings"


class _LogForwarder:
    """confluent-kafka's ``logger``: librdkafka's log lines go to LIBRDKAFKA_LOG. It also counts connections the
    broker closed right after connecting (a listener that expects another protocol), which librdkafka logs
    without reporting an error."""

    def __init__(self) -> None:
        self.closed_by_peer = 0
        self.tls_refused: dict[str, str] = {}  # broker -> its TLS handshake's refusal of a certificate (either side)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        if "connection closed by peer" in text:
            self.closed_by_peer += 1
        elif "certificate verify failed" in text or "SSL alert number" in text:
            broker = re.search(r"\]: (\S+://\S+): ", text)
            self.tls_refused[broker.group(1) if broker else text] = text
        LIBRDKAFKA_LOG.log(level, "%s", text)


class ConfluentSource:
    # librdkafka fetches and parses records on its own threads, without the GIL: the polling thread stays mostly
    # idle, and batches encoded side by side use every core (at-least-once, 500k records: 4.0 s with one
    # encoding thread, 2.9 s with two on 2 cores; see docs/performance.md). The pipeline caps it at the CPUs.
    encoders = 4

    def __init__(self, config: KafkaConfig) -> None:
        self.ck = load()
        self.config = config
        self.consumer: Any = None
        self.retries = 0  # failed polls and commits retried (for the metrics)
        self.where = ", ".join(config.bootstrap_servers)
        self.connection = ConnectionWatch(self.where)
        self.batch_size = config.max_poll_records
        self._errors: list[Any] = []  # from the error callback, handled on the next poll
        self._brokers_up: int | None = None  # from the statistics callback
        self._assigning: dict[TopicPartition, int] | None = None  # while the assign callback runs: seeks asked
        self._start: dict[TopicPartition, int] = {}  # where each assigned partition starts (see position)
        self._stalled = False  # the broker gave no log offsets in this assign callback (see _watermarks)
        self._paused: set[TopicPartition] = set()
        self._closing = False
        self._probe: Any = None  # a client of its own for _broker_answers, made on first use
        self._log = _LogForwarder()
        self._single_topic = config.topics[0] if len(config.topics) == 1 else None

    # ------------------------------------------------------------------------------------------ set-up

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None:
        ck = self.ck
        tls.check_files(self.config)  # a wrong key password is "PEM lib" in librdkafka's words
        settings = librdkafka_settings(self.config)
        settings.update(logger=self._log, error_cb=self._errors.append, stats_cb=self._on_stats)
        self.consumer = _consumer(ck, settings)
        try:
            metadata = self._bootstrap()
        except BaseException:
            self.close()
            raise
        missing = [t for t in self.config.topics if t not in metadata.topics]
        if missing:
            self.close()
            raise TopicNotFound(
                f"topic(s) {', '.join(missing)} not found on {self.where}",
                "Create the topic, or fix kafka.topics in the config.",
            )

        def assign(consumer: Any, partitions: list[Any]) -> None:
            tps = sorted((p.topic, p.partition) for p in partitions)
            self._assigning = {}
            self._stalled = False
            try:
                if not self._closing:
                    on_assigned(tps)
            finally:
                asked, self._assigning = self._assigning, None
            starts = [ck.TopicPartition(t, p, asked.get((t, p), ck.OFFSET_INVALID)) for t, p in tps]
            consumer.assign(starts)  # the eager protocol (config.py refuses the cooperative one)
            self._start.update(asked)
            paused = [tp for tp in tps if tp in self._paused]
            running = [tp for tp in tps if tp not in self._paused]
            if paused:
                self._pause_resume(paused, pause=True)
            if running:
                self._pause_resume(running, pause=False)

        def revoke(consumer: Any, partitions: list[Any]) -> None:
            tps = sorted((p.topic, p.partition) for p in partitions)
            try:
                if not self._closing:
                    on_revoked(tps)  # still the owner until this returns: it may commit
            finally:
                self._forget(tps)

        def lose(consumer: Any, partitions: list[Any]) -> None:
            tps = sorted((p.topic, p.partition) for p in partitions)
            try:
                if not self._closing:
                    on_lost(tps)  # already another member's: nothing may be committed for them
            finally:
                self._forget(tps)

        self.consumer.subscribe(list(self.config.topics), on_assign=assign, on_revoke=revoke, on_lost=lose)

    def _bootstrap(self) -> Any:
        """The cluster's metadata, or the error kafka-python's path gives: bad credentials or a listener of
        another protocol within a second or so, a broker that does not answer after min(15 s,
        request_timeout_ms)."""
        ck = self.ck
        deadline = time.monotonic() + min(15000, self.config.request_timeout_ms) / 1000
        probed = False
        while True:
            try:
                return self.consumer.list_topics(timeout=1.0)
            except ck.KafkaException as exc:
                failure = _reason(exc)
            self.consumer.poll(0)  # serves the error callback (no partition is assigned: no message)
            errors, self._errors[:] = list(self._errors), []
            for error in errors:
                if error.code() == ck.KafkaError._AUTHENTICATION:
                    raise self._credentials(error.str()) from None
            if self._log.tls_refused and len(self._log.tls_refused) >= len(tls.servers(self.config)):
                # every bootstrap server refused (one bad broker among good ones must not stop the run)
                raise tls.tls_error(self.config, next(iter(self._log.tls_refused.values()))) from None
            if self._log.closed_by_peer >= 3 and not probed:
                # A connection accepted and then closed by the broker, three times: under SASL, how Kafka answers
                # rejected credentials; without, a SASL or SSL listener. Under TLS, kingest looks for itself
                # (once): a plaintext listener, a refused certificate; else, without SASL, nothing proves more
                # than a broker going away: wait, as kafka-python does.
                if tls.uses_tls(self.config):
                    probed = True
                    found = tls.tls_problem(self.config)
                    if found is not None:
                        raise found from None
                if not tls.uses_tls(self.config) or self.config.security_protocol.startswith("SASL"):
                    raise credentials_error("closed", "", self.config, self._log.closed_by_peer) from None
            if time.monotonic() >= deadline:
                log.debug("no metadata from %s: %s", self.where, failure)
                raise SourceUnavailable(
                    f"no Kafka broker answered at {self.where}",
                    "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
                )
            time.sleep(0.1)

    def _credentials(self, text: str) -> SetupError:
        """librdkafka's _AUTHENTICATION error text -> kingest's credentials error (never the password)."""
        reason = re.sub(r"^\S+://\S+: ", "", text)  # the broker's name
        reason = re.sub(r"\s*\(after \d+ms in state \w+\)\s*$", "", reason)
        reason = re.sub(r"^SASL authentication error: ", "", reason)
        kind: CredentialsFailure
        if "Request not valid in current SASL state" in reason or "Illegal SASL state" in reason:
            kind = "unexpected"
        elif "Unsupported SASL mechanism" in reason:
            kind = "unsupported"
        else:
            kind = "failed"
        return credentials_error(kind, reason, self.config)

    def _forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._start.pop(tp, None)

    def _on_stats(self, text: str) -> None:
        try:
            brokers = json.loads(text).get("brokers", {})
            self._brokers_up = sum(1 for b in brokers.values() if b.get("state") == "UP")
        except (ValueError, AttributeError):  # statistics are a convenience: never let them stop a run
            self._brokers_up = None

    # ------------------------------------------------------------------------------------------ polling

    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any] | Columns]:
        ck = self.ck
        try:
            # What librdkafka has fetched already, at once; else wait for the first message, then take the rest.
            # (consume() with a timeout waits for a full batch; poll() returns at the first message.)
            messages = self.consumer.consume(self.batch_size, 0)
            if not messages:
                first = self.consumer.poll(timeout)
                if first is not None:
                    messages = [first]
                    if self.batch_size > 1:
                        messages += self.consumer.consume(self.batch_size - 1, 0)
        except ck.KafkaException as exc:
            self._handle_errors()
            raise self._failure(exc.args[0] if exc.args else exc) from None
        self._handle_errors()
        self.connection.update(self._brokers_up)
        if not messages:
            return {}
        if any(map(ck.Message.error, messages)):
            messages = self._without_errors(messages)
            if not messages:
                return {}
        return self._columns(messages)

    def _columns(self, messages: list[Any]) -> dict[TopicPartition, Sequence[Any] | Columns]:
        """The messages of one consume() call as Columns per topic-partition, in C loops (``map`` over method
        descriptors, ``compress`` for the places where the partition changes): Python code runs per run of
        records of one partition, not per record."""
        message = self.ck.Message
        count = len(messages)
        partitions = list(map(message.partition, messages))
        if self._single_topic is not None:
            topic = self._single_topic
            keys: list[Any] = partitions
        else:
            keys = list(zip(map(message.topic, messages), partitions, strict=True))
        offsets = list(map(message.offset, messages))
        timestamps = list(map(_timestamp, map(message.timestamp, messages)))
        key_bytes = list(map(message.key, messages))
        values = list(map(message.value, messages))
        headers = list(map(message.headers, messages))
        if [] in headers:  # librdkafka gives None for no headers; an empty list would cost memory (see batcher)
            headers = [h or None for h in headers]
        if keys[0] == keys[-1] and keys.count(keys[0]) == count:
            cuts = [0, count]
        else:
            cuts = [0, *compress(range(1, count), map(ne, keys, islice(keys, 1, None))), count]
        out: dict[TopicPartition, Columns] = {}
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            key = keys[start]
            tp = (topic, key) if self._single_topic is not None else key
            if start == 0 and end == count:
                columns = Columns(offsets, timestamps, key_bytes, values, headers)
            else:
                cut = slice(start, end)
                columns = Columns(offsets[cut], timestamps[cut], key_bytes[cut], values[cut], headers[cut])
            if tp in out:
                out[tp].extend(columns)
            else:
                out[tp] = columns
        return dict(out)

    def _without_errors(self, messages: list[Any]) -> list[Any]:
        """Messages that carry an error instead of a record (rare): raised if fatal, logged otherwise."""
        ck = self.ck
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.code() == ck.KafkaError._PARTITION_EOF:
                continue
            elif error.fatal() or error.code() in (
                ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ck.KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                raise self._failure(error)
            else:
                self.retries += 1
                log.warning("consuming from Kafka: %s; librdkafka retries", error.str())
        return kept

    def _handle_errors(self) -> None:
        """What the error callback reported since the last poll."""
        ck = self.ck
        errors, self._errors[:] = list(self._errors), []
        for error in errors:
            if error.code() == ck.KafkaError._AUTHENTICATION:
                raise self._credentials(error.str())
            if error.fatal():
                raise self._failure(error)
            log.debug("librdkafka reports: %s", error.str())

    def _failure(self, error: Any) -> SetupError:
        ck = self.ck
        code = error.code() if isinstance(error, ck.KafkaError) else None
        if code == ck.KafkaError.FENCED_INSTANCE_ID or "FENCED_INSTANCE_ID" in str(error):
            return self._fenced()
        if code == ck.KafkaError._AUTHENTICATION:
            return self._credentials(error.str())
        return SourceUnavailable(f"reading from Kafka failed: {_reason(error)}")

    def _fenced(self) -> SetupError:
        # Not a rebalance: another process joined with our static id and took our place for good.
        return SetupError(
            f"another consumer joined group {self.config.group_id} with this instance's "
            f"kafka.group_instance_id ({self.config.group_instance_id}); Kafka fenced this one",
            "Give every instance its own group_instance_id (the pod name, the systemd instance name).",
        )

    # ------------------------------------------------------------------------------------------ offsets

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """A synchronous commit of explicit offsets. ``wait``: retry through a broker outage until the broker
        answers; without it, the commit is sent asynchronously and its failure only logged (exactly-once's
        Kafka offsets are informative: the manifest is the truth)."""
        if not offsets:
            return
        ck = self.ck
        explicit = [ck.TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        if not wait:
            try:
                self.consumer.commit(offsets=explicit, asynchronous=True)
            except ck.KafkaException as exc:
                lag_commit_failed(offsets, _reason(exc))
            return
        retry = CommitRetry(self.where)
        while True:
            try:
                result = self._commit_watched(explicit)
                failed = [tp.error for tp in result or [] if tp.error is not None]
                if failed:
                    raise ck.KafkaException(failed[0])
            except ck.KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
                code = error.code() if error is not None else None
                if code == ck.KafkaError.FENCED_INSTANCE_ID:
                    raise self._fenced() from None
                if code == ck.KafkaError._AUTHENTICATION:
                    raise self._credentials(error.str()) from None  # type: ignore[union-attr]
                if not _unanswered(ck, error):
                    raise commit_refused(offsets, _reason(exc)) from None
                self.retries += 1
                # A coordinator that is loading or not found yet is not a broker that is down: ask a broker.
                self.connection.update(self._broker_answers())
                retry.wait(_reason(exc))
                continue
            retry.done()
            return

    def _commit_watched(self, explicit: list[Any]) -> Any:
        """librdkafka's synchronous commit waits for the group coordinator however long it is unreachable, and
        serves no callback meanwhile (so no statistics: the ConnectionWatch would not see an outage that starts
        during a commit). A helper thread asks for metadata once a second while the commit waits (through a
        client of its own, see _broker_answers), feeds the answer to the ConnectionWatch, and says that the
        commit waits once the broker has not answered for 5 s. The main thread is blocked in commit()
        meanwhile: the watch is not used by two threads at once."""
        done = threading.Event()
        started = time.monotonic()

        def watch() -> None:
            said = False
            while not done.wait(1.0):
                up = self._broker_answers()
                if done.is_set():
                    return
                self.connection.update(up)
                waited = time.monotonic() - started
                if not up and not said and waited >= 5:
                    said = True
                    log.warning(
                        "committing offsets waits for Kafka at %s for %.0fs; retrying until it answers",
                        self.where,
                        waited,
                    )

        watcher = threading.Thread(target=watch, name="kingest-commit-watch", daemon=True)
        watcher.start()
        try:
            result = self.consumer.commit(offsets=explicit, asynchronous=False)
        finally:
            done.set()
            watcher.join()
        if time.monotonic() - started >= 5:
            log.warning("offsets committed after waiting %.0fs for Kafka", time.monotonic() - started)
        return result

    def _broker_answers(self) -> int:
        """1 if a broker answers a metadata request within a second, else 0: what the ConnectionWatch is fed
        while a commit waits (no statistics are served meanwhile). Asked through a client of its own, made on
        first use: confluent-kafka serializes the calls on one consumer, so a list_topics() on the consumer
        waits for a synchronous commit in progress to return (measured: 6.5 s for a 1 s timeout), and the
        watch went blind for as long as the commit waited for the coordinator."""
        try:
            if self._probe is None:
                from confluent_kafka.admin import AdminClient

                settings = librdkafka_settings(self.config)  # the consumer-only properties are ignored
                settings.update(logger=_LogForwarder())
                self._probe = AdminClient(settings)
            self._probe.list_topics(self.config.topics[0], timeout=1.0)
        except Exception:  # any failure to answer is what is watched for
            return 0
        return 1

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._assigning is not None:
            self._assigning[tp] = offset  # given to assign() when the callback returns
            return
        self.consumer.seek(self.ck.TopicPartition(tp[0], tp[1], offset))
        self._start[tp] = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seek(tp, self._bound(tp, end=False))

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.seek(tp, self._bound(tp, end=True))

    def _bound(self, tp: TopicPartition, end: bool) -> int:
        """The log start (or end) offset; while the broker does not give it (stalled past the request timeout, as
        a partition is assigned), the logical offset, which librdkafka resolves itself when it fetches: a seek
        waits for the broker rather than stop the run (position() asks again)."""
        try:
            return self._watermarks(tp)[1 if end else 0]
        except SourceUnavailable as exc:
            log.warning(
                "%s; seeking to the log %s, which the consumer finds when it fetches", exc, "end" if end else "start"
            )
            return int(self.ck.OFFSET_END if end else self.ck.OFFSET_BEGINNING)

    def seek_to_committed(self, tps: Iterable[TopicPartition]) -> None:
        """Nothing to do: the assign callback hands librdkafka the partitions without a position, and it starts
        each from the group's committed offset (or the reset policy)."""

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record to consume (-1: not known yet). librdkafka knows it once a record of the
        partition was consumed (and then moves it past transaction markers, as kafka-python does); before, it is
        the start offset: the one a seek asked for, else the group's committed offset, else where
        auto_offset_reset leads."""
        if self._assigning is not None:
            if tp in self._assigning:
                return max(-1, self._assigning[tp])  # a logical offset (see _bound): not known yet
            return self._committed_start(tp)
        held = self.consumer.position([self.ck.TopicPartition(tp[0], tp[1])])[0].offset
        if held >= 0:
            return int(held)
        if tp not in self._start:
            self._start[tp] = self._committed_start(tp)
        elif self._start[tp] < 0:  # a logical offset (see _bound): asked again, -1 while not known
            try:
                self._start[tp] = self._watermarks(tp)[1 if self._start[tp] == self.ck.OFFSET_END else 0]
            except SourceUnavailable:
                return -1
        return self._start[tp]

    def _committed_start(self, tp: TopicPartition) -> int:
        ck = self.ck
        try:
            got = self.consumer.committed([ck.TopicPartition(tp[0], tp[1])], timeout=self._timeout())[0]
        except ck.KafkaException as exc:
            where = f"{tp[0]}[{tp[1]}]"
            raise SourceUnavailable(f"reading the committed offset of {where} failed: {_reason(exc)}") from None
        if got.offset >= 0:
            return int(got.offset)
        low, high = self._watermarks(tp)
        return low if self.config.auto_offset_reset == "earliest" else high

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start offset, log end offset), asked of the broker. The end honours isolation.level: under
        read_committed it is the last stable offset (no record of an open transaction is counted), as
        kafka-python's end_offsets."""
        ck = self.ck
        if self._assigning is not None and self._stalled:
            # The broker gave no log offsets earlier in this assign callback: a request timeout for each
            # partition would keep the callback past max.poll.interval.ms (see _bound).
            raise SourceUnavailable(f"reading the log offsets of {tp[0]}[{tp[1]}] skipped: the broker did not answer")
        deadline = time.monotonic() + self._timeout()
        while True:
            try:
                low, high = self.consumer.get_watermark_offsets(
                    ck.TopicPartition(tp[0], tp[1]), timeout=max(0.1, deadline - time.monotonic())
                )
                return int(low), int(high)
            except ck.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                # A leader moving or stale metadata (after a broker stalled: NOT_LEADER_FOR_PARTITION, a "local:
                # unknown partition") passes: ask again until the request timeout, as kafka-python's end_offsets
                # does. (Only assigned partitions are asked for: they exist.)
                retriable = error is not None and (
                    error.retriable()
                    or error.code()
                    in (
                        ck.KafkaError.NOT_LEADER_FOR_PARTITION,
                        ck.KafkaError.LEADER_NOT_AVAILABLE,
                        # the client's metadata lags behind (an assigned partition is not "unknown" for long)
                        ck.KafkaError._UNKNOWN_PARTITION,
                        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
                        ck.KafkaError.REQUEST_TIMED_OUT,
                        ck.KafkaError._TIMED_OUT,  # no answer within the request timeout: a broker stalled
                        ck.KafkaError._TRANSPORT,
                        ck.KafkaError._ALL_BROKERS_DOWN,
                    )
                )
                if retriable and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                message = f"reading the log offsets of {tp[0]}[{tp[1]}] failed: {_reason(exc)}"
                if not retriable:  # refused, say: asking again would not mend it
                    raise SetupError(message) from None
                if self._assigning is not None:
                    self._stalled = True
                raise SourceUnavailable(message) from None

    def _timeout(self) -> float:
        return self.config.request_timeout_ms / 1000

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in tps}

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def _highwater(self, tp: TopicPartition) -> int | None:
        """The log end offset the last fetch reported (no request sent): for the lag display."""
        try:
            _, high = self.consumer.get_watermark_offsets(self.ck.TopicPartition(tp[0], tp[1]), cached=True)
        except self.ck.KafkaException:
            return None
        return None if high is None or high < 0 else int(high)

    def lag(self, tp: TopicPartition) -> int | None:
        """Records behind: the log end offset the last fetch reported minus the position held. No request."""
        high = self._highwater(tp)
        if high is None:
            return None
        held = self.consumer.position([self.ck.TopicPartition(tp[0], tp[1])])[0].offset
        return None if held < 0 else max(0, high - int(held))

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        self._paused.update(tps)
        if self._assigning is None:
            self._pause_resume(tps, pause=True)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        self._paused.difference_update(tps)
        if self._assigning is None:
            self._pause_resume(tps, pause=False)

    def _pause_resume(self, tps: list[TopicPartition], pause: bool) -> None:
        ck = self.ck
        owned = self.assignment()
        parts = [ck.TopicPartition(t, p) for t, p in tps if (t, p) in owned]
        if not parts:
            return
        try:
            (self.consumer.pause if pause else self.consumer.resume)(parts)
        except ck.KafkaException as exc:  # a partition that left the assignment meanwhile
            log.debug("%s %s: %s", "pausing" if pause else "resuming", parts, _reason(exc))

    def close(self) -> None:
        self._probe = None  # an AdminClient has no close(): dropping it stops its threads
        if self.consumer is not None:
            # Closing leaves the group, which runs the revoke callback: the pipeline has saved what it will
            # save by now, so the callbacks are not passed on.
            self._closing = True
            try:
                self.consumer.close()
            except Exception as exc:  # closing is best effort: the group notices a lost member anyway
                log.debug("closing the consumer: %s", exc)
            self.consumer = None


def _unanswered(ck: Any, error: Any) -> bool:
    """A commit that failed because no broker answered (retried until one does), not because it was refused."""
    if error is None:
        return False
    return bool(error.retriable()) or error.code() in (
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._WAIT_COORD,
        ck.KafkaError._ALL_BROKERS_DOWN,
        ck.KafkaError.COORDINATOR_NOT_AVAILABLE,
        ck.KafkaError.NOT_COORDINATOR,
        ck.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        ck.KafkaError.REQUEST_TIMED_OUT,
    )


def _reason(exc: Any) -> str:
    error = exc.args[0] if isinstance(exc, Exception) and exc.args else exc
    if hasattr(error, "str") and hasattr(error, "name"):
        return f"{error.name()}: {error.str()}"
    return str(exc)
