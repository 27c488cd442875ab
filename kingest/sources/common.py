"""What both Kafka clients share: the commit retried through an outage, the connection watch, and the messages a
user sees for the same failure whichever client met it (credentials, a refused commit)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from kingest.config import KafkaConfig
from kingest.errors import CommitFailed, SetupError
from kingest.types import TopicPartition

log = logging.getLogger("kingest.source")

CredentialsFailure = Literal["failed", "unsupported", "unexpected", "closed"]
Listener = Callable[[list[TopicPartition]], None]  # the pipeline's rebalance callbacks


def describe_tps(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))


def commit_refused(offsets: dict[TopicPartition, int], reason: str) -> CommitFailed:
    return CommitFailed(
        f"Kafka refused the offset commit for {describe_tps(offsets)}: {reason}",
        "Usually a rebalance: another instance now owns the partition. The records are consumed again.",
    )


def lag_commit_failed(offsets: dict[TopicPartition, int], reason: str) -> None:
    """A best-effort commit (Source.commit without wait) that did not go through: said, never raised."""
    log.warning(
        "could not commit the offsets of %s to Kafka (%s); they only feed lag tools, the next commit carries them",
        describe_tps(offsets),
        reason,
    )


def credentials_error(kind: CredentialsFailure, reason: str, config: KafkaConfig, closed: int = 3) -> SetupError:
    """What the user must know when the broker refuses the connection's set-up: which mechanism, which user,
    what the broker said; never the password. ``kind``: "failed" (the broker rejected the credentials),
    "unsupported" (the mechanism), "unexpected" (a listener without SASL answered a SASL handshake), "closed"
    (the broker closed the connection during set-up ``closed`` times in a row)."""
    where = ", ".join(config.bootstrap_servers)
    mechanism = config.sasl_mechanism or "(none)"
    sasl = config.security_protocol.startswith("SASL")
    if kind == "closed":
        reason = f"the broker closed the connection during set-up {closed} times in a row"
    if kind == "unsupported":
        return SetupError(
            f"Kafka at {where} does not accept SASL mechanism {mechanism}: {reason}",
            "Set kafka.sasl_mechanism to one the broker enables (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512).",
        )
    if kind == "unexpected" or (kind == "closed" and not sasl):
        expected = "does not expect SASL" if sasl else "closes the connection before answering"
        return SetupError(
            f"Kafka at {where} {expected} (kafka.security_protocol is {config.security_protocol}): {reason}",
            "Check that kafka.security_protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) matches the listener "
            "at kafka.bootstrap_servers.",
        )
    if kind == "closed":
        reason = f"{reason}, which is how Kafka answers rejected credentials"
    return SetupError(
        f"Kafka at {where}: authentication failed (SASL {mechanism}, user {config.sasl_plain_username!r}): {reason}",
        "Check kafka.sasl_plain_username and kafka.sasl_plain_password (or the environment variable it names), "
        f"and that the broker has this user for {mechanism}.",
    )


class CommitRetry:
    """The backoff and the messages of a commit retried until the broker answers (both sources): one warning
    at once, then every ConnectionWatch.REPEAT seconds; 0.5 s between attempts, doubling up to 5 s."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.delay = 0.5
        self.started = time.monotonic()
        self.reported = 0.0

    def wait(self, reason: str) -> None:
        """After a failed attempt: say so when due, then sleep before the next one."""
        now = time.monotonic()
        if not self.reported or now - self.reported >= ConnectionWatch.REPEAT:
            self.reported = now
            waited = now - self.started
            log.warning(
                "committing offsets waits for Kafka at %s (%s)%s; retrying until it answers",
                self.where,
                reason,
                f" for {waited:.0f}s" if waited >= 1 else "",
            )
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 5.0)

    def done(self) -> None:
        if self.reported:
            log.warning("offsets committed after waiting %.0fs for Kafka", time.monotonic() - self.started)


class ConnectionWatch:
    """Tells the user when the broker becomes unreachable and when it is back. kafka-python reconnects by
    itself and the run waits; without this the wait would be silent, kafka-python's own logs being hidden
    without --verbose. The signal is the consumer's open connection count (its public metrics()): none open
    means no broker answers. Checked at most once a second; reported after a second without any."""

    REPEAT = 30.0  # seconds between "still waiting" messages

    def __init__(self, where: str) -> None:
        self.where = where
        self.connected = True
        self.down_since: float | None = None  # monotonic time of the first check that found no connection
        self.outages = 0
        self._checked = 0.0
        self._reported = 0.0

    def check(self, consumer: Any) -> None:
        """kafka-python: the consumer's connection count, from its metrics."""
        if time.monotonic() - self._checked < 1.0:
            return
        try:
            count = consumer.metrics().get("consumer-metrics", {}).get("connection-count")
        except Exception:  # metrics are a convenience: never let them stop a run
            return
        self.update(count)

    def update(self, count: int | None) -> None:
        """The number of broker connections open now (None: not known)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        if count is None:
            return
        if count > 0:
            if not self.connected and self.down_since is not None:
                log.warning("Kafka at %s answers again after %.0fs; resuming", self.where, now - self.down_since)
            self.connected, self.down_since = True, None
            return
        if self.down_since is None:
            self.down_since = now
        elif self.connected:
            self.connected, self._reported = False, now
            self.outages += 1
            log.warning(
                "lost the connection to Kafka at %s; waiting for it to come back "
                "(records already polled are still written; consumption resumes where it stopped)",
                self.where,
            )
        elif now - self._reported >= self.REPEAT:
            self._reported = now
            log.warning("still waiting for Kafka at %s (unreachable for %.0fs)", self.where, now - self.down_since)
