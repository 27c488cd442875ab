"""Typed errors. The library raises them; only ``cli.py`` prints them and picks the exit code.

    KingestError                      base: ``message`` (what is wrong) + ``hint`` (how to fix it)
    ├── ConfigError                   the pipeline config is invalid (key, line, value, valid values)   exit 2
    ├── SetupError                    cannot start: broker unreachable, topic missing, lake unusable    exit 2
    │   ├── SourceUnavailable         [retryable] the broker does not answer                           exit 2; 1 mid-run
    │   ├── TopicNotFound
    │   ├── LakeUnavailable           [retryable] the store does not answer, refuses access, is full   exit 2; 1 mid-run
    │   └── GroupActive               `kingest rewind`: the consumer group has active members
    ├── RunError                      a run stopped part-way; offsets were saved only up to the last good batch  exit 1
    │   ├── BadRecord                 a record cannot be decoded (topic, partition, offset, reason)
    │   ├── CommitFailed              [retryable] Kafka refused the offset commit (rebalance, fencing)
    │   ├── ManifestConflict          another writer committed this partition's next manifest version (zombie)
    │   └── OutOfGroup                [retryable] the consumer is no longer a member of its group and does not rejoin
    ├── BadTarget                     `kingest rewind`: the target is not usable (none or several, out of range)  exit 2
    ├── RewindConflict                `kingest rewind`: a writer committed between the plan and the rewind  exit 2
    └── StateError                    a state file in the lake is unreadable or of an unknown format    exit 2

``retryable`` marks errors that running again may fix without changing anything (a service that did not
answer): the CLI says so, and its JSON error line carries ``"retryable": true`` for supervisors deciding whether
to restart. The others need a person. A service lost for good after a run started consuming is "a run stopped
part-way" (exit 1), as a bad record is. A ``BadRecord`` stops the run *before* anything past it is committed,
whatever the semantics.
"""

from __future__ import annotations


class KingestError(Exception):
    """Base class. ``str(err)`` is the message a user sees; ``hint`` says how to fix it."""

    exit_code = 2
    retryable = False

    def stopped_part_way(self) -> None:
        """Raised after a run started consuming: a service lost then is a run stopped part-way (exit 1)."""
        if isinstance(self, SetupError):
            self.exit_code = RunError.exit_code

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(KingestError):
    """The pipeline config is invalid."""


class SetupError(KingestError):
    """kingest cannot start: a service or resource the config names is not usable."""


class SourceUnavailable(SetupError):
    retryable = True


class TopicNotFound(SetupError):
    pass


class LakeUnavailable(SetupError):
    retryable = True


class RunError(KingestError):
    """A run stopped part-way. Offsets were saved only for batches whose data was handled."""

    exit_code = 1


class BadRecord(RunError):
    def __init__(self, topic: str, partition: int, offset: int, reason: str, hint: str | None = None) -> None:
        super().__init__(
            f"record {topic}[{partition}]@{offset} cannot be decoded: {reason}",
            hint
            or "Fix or skip the record: set `records.on_error: skip` or `dead-letter` in the config, or "
            "`kingest rewind --to-offset` past it. Nothing at or after this offset was committed.",
        )
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


class CommitFailed(RunError):
    retryable = True


class ManifestConflict(RunError):
    """Another writer created the manifest version this one meant to create: this writer is a zombie."""

    def __init__(self, topic: str, partition: int, version: int) -> None:
        super().__init__(
            f"{topic}[{partition}]: manifest version {version} was committed by another writer; "
            "this instance no longer owns the partition",
            "Nothing to fix if another kingest instance took the partition over (a rebalance).",
        )
        self.topic = topic
        self.partition = partition
        self.version = version


class OutOfGroup(RunError):
    """The consumer has had no partitions for far longer than the group's session timeout, and the group does
    not list it as a member: it would poll for ever. A restart rejoins the group."""

    retryable = True


class StateError(KingestError):
    """A kingest state file (offsets manifest) is unreadable or of an unknown format version."""


class GroupActive(SetupError):
    """`kingest rewind`: the consumer group has active members: a pipeline is running."""


class BadTarget(KingestError):
    """The rewind's target is not usable: none or several given, a malformed timestamp, an unknown topic or
    partition, or an offset outside [log start, log end]."""


class RewindConflict(KingestError):
    """A writer committed to the manifest between the plan and the rewind (a run started)."""
