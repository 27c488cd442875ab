"""kafka-python's consumer in a group, with manual, synchronous commits of explicit offsets. The one module that
imports kafka-python for consuming (kingest/kafka_admin.py has its admin client).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kingest.batcher import Columns
from kingest.config import KafkaConfig
from kingest.errors import OutOfGroup, SetupError, SourceUnavailable, TopicNotFound
from kingest.types import TopicPartition

from . import tls
from .common import CommitRetry, ConnectionWatch, Listener, commit_refused, credentials_error, lag_commit_failed

log = logging.getLogger("kingest.source")


def _tp(tp: TopicPartition) -> Any:
    from kafka import TopicPartition as KafkaTP

    return KafkaTP(tp[0], tp[1])


class KafkaSource:
    # kafka-python parses every record in Python on the polling thread, holding the GIL: that keeps one core busy,
    # and a second encoding thread only raised peak RSS (+25-35 MB) with no gain on 2 cores (see
    # docs/performance.md).
    encoders = 1

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.consumer: Any = None
        self.retries = 0  # failed polls retried (for the metrics)
        self.connection = ConnectionWatch(", ".join(config.bootstrap_servers))
        self.group = GroupWatch(
            config.group_id, config.session_timeout_ms / 1000, self._describe_group, self._member_id
        )

    def open(self, on_assigned: Listener, on_revoked: Listener, on_lost: Listener) -> None:
        import kafka
        from kafka import errors as kafka_errors

        settings = self.config.consumer_settings()
        settings["enable_auto_commit"] = False
        settings.setdefault("bootstrap_timeout_ms", min(15000, self.config.request_timeout_ms))
        # kafka-python backs off up to 30 s between reconnects to a broker that is down, so a run noticed a
        # broker back from an outage up to half a minute late. The Java client's default is 1 s.
        settings.setdefault("reconnect_backoff_max_ms", 1000)
        where = ", ".join(self.config.bootstrap_servers)
        try:
            with credential_check(settings, self.config):
                self.consumer = kafka.KafkaConsumer(**settings)
        except (kafka_errors.KafkaTimeoutError, *_no_brokers(kafka_errors)):
            raise SourceUnavailable(
                f"no Kafka broker answered at {where}",
                "Check kafka.bootstrap_servers and that the broker is running (for the dev broker: make up).",
            ) from None
        except (kafka_errors.KafkaConfigurationError, TypeError, ValueError, AssertionError) as exc:
            raise SetupError(f"Kafka consumer settings rejected: {exc}", "Check the kafka: section.") from None
        except kafka_errors.KafkaError as exc:
            raise SourceUnavailable(f"cannot connect to Kafka at {where}: {_kafka_reason(exc)}") from None
        try:
            existing = self.consumer.topics()
        except kafka_errors.KafkaError as exc:
            self.close()
            if _is_credentials_error(exc):
                raise _credentials_error(exc, self.config) from None
            raise SourceUnavailable(f"cannot read topic metadata from {where}: {_kafka_reason(exc)}") from None
        missing = [t for t in self.config.topics if t not in existing]
        if missing:
            self.close()
            raise TopicNotFound(
                f"topic(s) {', '.join(missing)} not found on {where}",
                "Create the topic, or fix kafka.topics in the config.",
            )

        net = self.consumer._net  # kafka-python's IO loop, to wait on without blocking it

        async def in_worker(callback: Listener, partitions: Any) -> None:
            # kafka-python 3 runs rebalance listeners on its IO thread, where a blocking consumer call (commit,
            # end_offsets) would deadlock; and blocking there would also stop heartbeats. So the work runs on a
            # worker thread while this coroutine yields to the loop. The main thread is inside poll() meanwhile,
            # so the pipeline's state is not touched concurrently.
            tps = sorted((tp.topic, tp.partition) for tp in partitions)
            failure: list[BaseException] = []

            def work() -> None:
                try:
                    callback(tps)
                except BaseException as exc:  # re-raised from poll() by kafka-python
                    failure.append(exc)

            worker = threading.Thread(target=work, name="kingest-rebalance", daemon=True)
            worker.start()
            while worker.is_alive():
                await net.sleep(0.01)
            if failure:
                raise failure[0]

        coordinator = self.consumer._coordinator
        group = self.group

        class Rebalance(kafka.AsyncConsumerRebalanceListener):
            # on_partitions_revoked and on_partitions_lost run when a rejoin starts: each first pins the rejoin
            # (see "the orphaned join" above), so that kafka-python finishes it however long the flush takes.
            async def on_partitions_revoked(self, revoked: Any) -> None:
                coordinator.request_rejoin()
                group.owns(False)
                await in_worker(on_revoked, revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                group.owns(bool(assigned))
                await in_worker(on_assigned, assigned)

            async def on_partitions_lost(self, lost: Any) -> None:
                # Already owned by another member: nothing may be committed for them.
                coordinator.request_rejoin()
                group.owns(False)
                await in_worker(on_lost, lost)

        self.consumer.subscribe(list(self.config.topics), listener=Rebalance())

    def poll(self, timeout: float) -> dict[TopicPartition, Sequence[Any] | Columns]:
        from kafka import errors as kafka_errors

        try:
            polled = self.consumer.poll(timeout_ms=int(timeout * 1000))
            self.connection.check(self.consumer)
            self.group.check()
            return polled
        except kafka_errors.KafkaError as exc:
            self.connection.check(self.consumer)
            if _is_credentials_error(exc):
                raise _credentials_error(exc, self.config) from None
            if getattr(exc, "retriable", False):
                self.retries += 1
                log.warning("poll failed, retrying: %s", _kafka_reason(exc))
                return {}
            raise SourceUnavailable(f"reading from Kafka failed: {_kafka_reason(exc)}") from None

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """See Source.commit. ``wait``: synchronous, retried through a broker outage (_commit_through_outages);
        without it, one attempt bounded by the request timeout, its failure logged."""
        from kafka import OffsetAndMetadata
        from kafka import errors as kafka_errors

        if not offsets:
            return
        try:
            explicit = {_tp(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            if wait:
                self._commit_through_outages(explicit)
            else:
                self.consumer.commit(explicit, timeout_ms=min(5000, self.config.request_timeout_ms))
        except kafka_errors.FencedInstanceIdError:
            # Not a rebalance: another process joined with our static id and took our place for good. Going on
            # would consume (and, at-least-once, write) partitions this process will never own again.
            raise SetupError(
                f"another consumer joined group {self.config.group_id} with this instance's "
                f"kafka.group_instance_id ({self.config.group_instance_id}); Kafka fenced this one",
                "Give every instance its own group_instance_id (the pod name, the systemd instance name).",
            ) from None
        except kafka_errors.KafkaError as exc:
            if not wait:
                lag_commit_failed(offsets, _kafka_reason(exc))
                return
            raise commit_refused(offsets, _kafka_reason(exc)) from None

    def _commit_through_outages(self, offsets: dict[Any, Any]) -> None:
        """A synchronous commit that waits out a broker outage. kafka-python's commit gives up after
        request_timeout_ms, or at the first connection error, with a retriable error; the pipeline would read
        that as "the partitions moved" and drop the batch, which under at-most-once loses it although nothing
        crashed and nobody else owns the partitions. So retriable errors are retried, with backoff, until the
        broker answers: then the commit succeeds, or fails for a real reason (the group moved on during the
        outage: CommitFailedError and the like), which is raised."""
        from kafka import errors as kafka_errors

        retry = CommitRetry(self.connection.where)
        while True:
            try:
                self.consumer.commit(offsets)
            except kafka_errors.KafkaError as exc:
                if _is_credentials_error(exc):
                    raise _credentials_error(exc, self.config) from None
                if not getattr(exc, "retriable", False):
                    raise
                self.retries += 1
                retry.wait(_kafka_reason(exc))
                continue
            retry.done()
            return

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(_tp(tp), offset)

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.consumer.seek_to_beginning(_tp(tp))

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.consumer.seek_to_end(_tp(tp))

    def seek_to_committed(self, tps: Iterable[TopicPartition]) -> None:
        # kafka-python 3 keeps the position of a partition that a rebalance hands back to the same member
        # (SubscriptionState.assign_from_subscribed), and that position can be past records the pipeline
        # dropped unsaved (partitions lost to the group, a refused commit): resuming there would skip them.
        ktps = [_tp(tp) for tp in tps]
        if not ktps:
            return
        committed = self.consumer._coordinator.fetch_committed_offsets(ktps)
        for ktp in ktps:
            found = committed.get(ktp)
            if found is not None and found.offset >= 0:
                self.consumer.seek(ktp, found.offset)
            elif self.config.auto_offset_reset == "earliest":
                self.consumer.seek_to_beginning(ktp)
            else:
                self.consumer.seek_to_end(ktp)

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record to consume (-1: not known yet)."""
        from kafka import errors as kafka_errors

        try:
            # None when the broker did not give it in time (a reset to the log start or end still pending: a
            # broker stalled as the partition was assigned)
            held = self.consumer.position(_tp(tp))
        except kafka_errors.KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise SourceUnavailable(
                    f"reading the position of {tp[0]}[{tp[1]}] failed: {_kafka_reason(exc)}"
                ) from None
            # kafka-python checks positions against the broker and raises while it is unreachable; the position
            # this consumer holds is still the right one, and a run must wait out an outage, not stop.
            self.retries += 1
            held = self.consumer.position(_tp(tp), timeout_ms=0)
        return -1 if held is None else int(held)

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        from kafka import errors as kafka_errors

        tps = list(tps)
        try:
            got = self.consumer.end_offsets([_tp(tp) for tp in tps])
        except kafka_errors.KafkaError as exc:
            where = ", ".join(f"{t}[{p}]" for t, p in tps)
            message = f"reading the log offsets of {where} failed: {_kafka_reason(exc)}"
            if getattr(exc, "retriable", False):  # no answer within request_timeout_ms (a broker stalled)
                raise SourceUnavailable(message) from None
            raise SetupError(message) from None
        return {(tp.topic, tp.partition): int(o) for tp, o in got.items()}

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def lag(self, tp: TopicPartition) -> int | None:
        """Records behind: the log end offset the last fetch reported minus the position this consumer holds.
        Never waits and sends no request of its own (timeout 0: kafka-python's position() otherwise checks
        positions against the broker, and raises while it is unreachable). None: not known yet."""
        from kafka import errors as kafka_errors

        ktp = _tp(tp)
        try:
            high = self.consumer.highwater(ktp)
            position = None if high is None else self.consumer.position(ktp, timeout_ms=0)
        except kafka_errors.KafkaError:
            return None
        return None if high is None or position is None else max(0, int(high) - int(position))

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self.consumer.pause(*[_tp(tp) for tp in tps])

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self.consumer.resume(*[_tp(tp) for tp in tps])

    def _member_id(self) -> str:
        return str(self.consumer.group_metadata().member_id or "")

    def _describe_group(self) -> tuple[str, set[str]] | None:
        """The group's state and member ids, from one DescribeGroups request to its coordinator (None: not known
        now). Sent through the consumer's own connection to the coordinator: no second client."""
        from kafka import errors as kafka_errors
        from kafka.protocol.admin import DescribeGroupsRequest

        coordinator = self.consumer._coordinator
        node = coordinator.coordinator()
        if node is None:
            return None

        async def describe() -> Any:
            return await coordinator._manager.send(DescribeGroupsRequest(groups=[self.config.group_id]), node_id=node)

        try:
            response = self.consumer._net.run(describe)
            group = response.groups[0]
        except (kafka_errors.KafkaError, IndexError) as exc:
            log.debug("describing group %s: %s", self.config.group_id, exc)
            return None
        if group.error_code:
            log.debug("describing group %s: error %s", self.config.group_id, group.error_code)
            return None
        return str(group.group_state), {str(m.member_id) for m in group.members}

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as exc:  # closing is best effort: the group notices a lost member anyway
                log.debug("closing the consumer: %s", exc)
            self.consumer = None


class GroupWatch:
    """Ends a run whose consumer has dropped out of its group for good, instead of letting it poll for ever.

    kafka-python can lose track of a rejoin (see "the orphaned join" above): the member then neither consumes nor
    fails, its heartbeats stopped, and the broker drops it from the group. Whatever the cause, the signal is the
    same: no partition owned (since the last revocation or loss, or since start) for longer than ``AFTER`` session
    timeouts, and the group, asked directly (one DescribeGroups request, at most once a session timeout), does not
    list this member. A member that waits for good reasons is listed there: an idle member of a group with more
    members than partitions, or one held in a long rebalance. Two answers in a row without it end the run with
    OutOfGroup. A failed describe (broker unreachable, not authorized) tells nothing: ConnectionWatch reports
    outages."""

    AFTER = 2  # session timeouts without a partition before the group is asked

    def __init__(
        self,
        group: str,
        session_timeout: float,
        describe: Callable[[], tuple[str, set[str]] | None],
        member_id: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self.session_timeout = session_timeout
        self.describe = describe
        self.member_id = member_id
        self.clock = clock
        self.since: float | None = clock()  # owning no partition since (None: owns some)
        self._asked = float("-inf")
        self._absent = 0  # answers in a row that did not list this member

    def owns(self, partitions: bool) -> None:
        """From the rebalance listener: whether the member owns partitions now."""
        if partitions:
            self.since, self._absent = None, 0
        elif self.since is None:
            self.since = self.clock()

    def check(self) -> None:
        """After each poll: cheap unless the member has owned nothing for ``AFTER`` session timeouts."""
        since = self.since
        now = self.clock()
        if since is None or now - since < self.AFTER * self.session_timeout:
            return
        if now - self._asked < self.session_timeout:
            return
        self._asked = now
        answer = self.describe()
        if answer is None:
            return
        state, members = answer
        me = self.member_id()
        if me and me in members:
            self._absent = 0
            return
        self._absent += 1
        log.debug("group %s (%s, %d members) does not list this member (%s)", self.group, state, len(members), me)
        if self._absent < 2:
            return
        raise OutOfGroup(
            f"this consumer has owned no partition for {now - since:.0f}s and group {self.group} does not count it "
            f"as a member (group {state.lower()}, {len(members)} member(s)): the Kafka client stopped rejoining "
            "the group, so the run would never consume again",
            "Restart the run: it rejoins the group and resumes from the committed offsets. If it happens again, "
            "run with --verbose and report the log.",
        )


@contextmanager
def credential_check(settings: dict[str, Any], config: KafkaConfig) -> Iterator[None]:
    """Around the construction of a kafka-python client from ``settings`` (it bootstraps in its constructor):
    raise a SetupError naming the mechanism and the user within about a second of the broker rejecting the
    credentials, instead of "no broker answered" after ``bootstrap_timeout_ms``; and close the half-built
    client whenever construction fails (its IO thread and sockets would leak).

    Why this is needed with kafka-python 3.0.12:
    - it treats an authentication failure during bootstrap like a network error, retrying until the bootstrap
      timeout and then reporting only "Unable to bootstrap";
    - the broker answers a failed SaslAuthenticate with an error response and closes the connection right
      after; kafka-python usually reads both in one go and drops the response (``KafkaTCPTransport.
      _read_from_sock`` aborts on the EOF before handing the data over), so all it reports is "socket
      disconnected".
    The failures are visible in one place: the warning kafka-python logs for each failed bootstrap attempt.
    So this listens to that logger. An authentication error there is conclusive; under SASL, a connection
    the broker accepted and then closed three times in a row during set-up (not refused: that is a broker that
    is down) is read as rejected credentials, and so is, without SASL, a connection closed before the broker
    answers (a SASL or SSL listener). Then it closes the client's connection manager, which ends the
    bootstrap loop at once. The client is made through kafka-python's documented ``kafka_client`` setting.
    """
    from kafka import errors as kafka_errors
    from kafka.net.compat import KafkaNetClient

    clients: list[Any] = []
    verdict: list[BaseException] = []
    closed_in_a_row = [0]
    eof_in_a_row = [0]
    refused: set[str] = set()  # bootstrap node ids whose TLS handshake refused a certificate

    class Client(KafkaNetClient):
        def stop_bootstrap(self) -> None:
            self._manager.close()  # the bootstrap loop runs while the manager is open

    def new_client(**configs: Any) -> Any:
        client = Client(**configs)
        clients.append(client)
        return client

    def decide(reason: BaseException) -> None:
        if not verdict:
            verdict.append(reason)
            for client in clients:
                client.stop_bootstrap()

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args if isinstance(record.args, tuple) else ()
            errors = [a for a in args if isinstance(a, kafka_errors.KafkaError)]
            if any(_is_credentials_error(e) for e in errors):
                decide(next(e for e in errors if _is_credentials_error(e)))
                return
            text = record.getMessage()
            if not text.startswith("Bootstrap") or "failed" not in text:
                return
            if tls.uses_tls(config) and text.startswith("Bootstrap connection to ") and len(args) >= 2:
                if _TLS_REFUSAL.search(str(args[1])):
                    # A certificate refused, by either side: conclusive once every bootstrap server refused
                    # (kafka-python moves on to the next one; one bad broker must not stop the run).
                    refused.add(str(args[0]))
                    if len(refused) >= len(tls.servers(config)):
                        decide(_TLSFailure(str(args[1])))
                    return
                if "UNEXPECTED_EOF" in str(args[1]):
                    # A TLS handshake the server cut short: a plaintext listener, or a broker going away.
                    # Only a plaintext Kafka answer on every bootstrap server decides it.
                    eof_in_a_row[0] += 1
                    if eof_in_a_row[0] >= 3 and all(map(tls.speaks_plain_kafka, tls.servers(config))):
                        decide(_TLSFailure(str(args[1])))
                    return
            eof_in_a_row[0] = 0
            if "socket disconnected" in text:
                closed_in_a_row[0] += 1
                if closed_in_a_row[0] >= 3:
                    decide(_ClosedByBroker(closed_in_a_row[0]))
            else:
                closed_in_a_row[0] = 0

    tls.check_files(config)  # before kafka-python prompts for a key's password or retries a bad file
    settings["kafka_client"] = new_client
    listener = Listener(logging.WARNING)
    logger = logging.getLogger("kafka.net.manager")
    saved = logger.level, logger.propagate
    if not logger.isEnabledFor(logging.WARNING):
        # Records must be created for the listener; they go to it alone, not to the application's handlers.
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    logger.addHandler(listener)
    try:
        yield
    except BaseException:
        for client in clients:
            try:
                client.close()  # the IO thread and sockets of a client whose constructor failed
            except Exception as exc:
                log.debug("closing a kafka-python client that failed to start: %s", exc)
        if verdict:
            raise _credentials_error(verdict[0], config) from None
        raise
    finally:
        logger.removeHandler(listener)
        logger.level, logger.propagate = saved
        settings.pop("kafka_client", None)


_TLS_REFUSAL = re.compile(r"\[SSL: (CERTIFICATE_VERIFY_FAILED|\w*ALERT\w*)\]")


class _TLSFailure(Exception):
    """A TLS handshake refused by either side (kafka-python's words): tls.tls_error finds out why."""


class _ClosedByBroker(Exception):
    """The broker accepted connections and closed them during set-up, ``times`` times in a row."""

    def __init__(self, times: int) -> None:
        super().__init__(f"the broker closed the connection during set-up {times} times in a row")
        self.times = times


def _is_credentials_error(exc: BaseException) -> bool:
    from kafka import errors as kafka_errors

    return isinstance(
        exc,
        kafka_errors.SaslAuthenticationFailedError
        | kafka_errors.UnsupportedSaslMechanismError
        | kafka_errors.IllegalSaslStateError,
    )


def _credentials_error(exc: BaseException, config: KafkaConfig) -> SetupError:
    """kafka-python's refusal as the message both clients give (common.credentials_error)."""
    from kafka import errors as kafka_errors

    if isinstance(exc, _TLSFailure):
        return tls.tls_error(config, str(exc))
    if isinstance(exc, _ClosedByBroker):
        found = tls.tls_problem(config) if tls.uses_tls(config) else None  # a listener that does not speak TLS?
        return found or credentials_error("closed", str(exc), config, exc.times)
    reason = str(exc.args[0] if exc.args else exc).strip() or type(exc).__name__
    prefix = f"{type(exc).__name__}: "
    reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return credentials_error("unsupported", reason, config)
    if isinstance(exc, kafka_errors.IllegalSaslStateError):
        return credentials_error("unexpected", reason, config)
    return credentials_error("failed", reason, config)


def _kafka_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if text.startswith(name) or re.match(r"\[Error \d+\] " + name, text):
        return text  # kafka-python 3 already names the class
    return f"{name}: {text}" if text else name


def _no_brokers(kafka_errors: Any) -> tuple[type[BaseException], ...]:
    """kafka-python 2 raised NoBrokersAvailable when bootstrap failed; 3.x raises KafkaTimeoutError."""
    error = getattr(kafka_errors, "NoBrokersAvailable", None)
    return (error,) if error is not None else ()
