"""Delta Lake tables (``lake.format: delta``): the one module that imports ``deltalake`` (delta-rs).

Exactly-once the kafka-delta-ingest way: the offsets live in the table's own commits. Each commit adds a
flush's files and, in the same log entry, one application transaction per partition written::

    txn {appId: "kingest-<pipeline>-<topic>-<partition>", version: <next offset to consume>}

The measurements behind every choice here are in docs/research/delta-rs.md (deltalake 1.6.6). A writer:

0. ``ensure_table``: creates the table, when missing, in its own commit without data or txn, and with no
   commit retry, so that of two writers creating it at once exactly one CREATE lands (a data commit that
   creates a table skips the txn check: two such commits both landed, 10 rounds in 10, duplicating data).
1. ``positions``: each partition's ``transaction_version`` is where it resumes.
2. ``stage``: casts a batch to the table's types itself (delta-rs would cast 7.9 to 7 and "12" to 12
   silently) and writes it as Parquet files under the table root, which no reader sees: only the log names the
   files of the table. *Crash or pause here:* orphans, which ``vacuum(full=True)`` removes after a retention
   (and a file older than ``stage_max_age`` is written again before a commit, so that no vacuum can remove a
   file as it is committed).
3. ``commit``: new columns first (their own commit, no data), then, on the one DeltaTable snapshot the commit
   reads from, each partition's txn must still be the one the writer expects; then the files and every
   partition's txn in one log entry (``If-None-Match: *`` on S3). delta-rs fails that entry if any commit
   after the snapshot carries one of its appIds, so the check and the commit are atomic. *Crash before the
   log entry:* nothing committed, orphans as in 2. *After:* committed; a restart resumes from the txns.
4. An error whose outcome is unknown (a timeout, a failing post-commit checkpoint, even a CommitFailedError
   when a timed-out PUT of the entry did land) is settled by reading the log: each commit carries a
   ``kingest.commit`` id in its commitInfo, so "did mine land" is a fact, not a guess from the txn values.

At-least-once and at-most-once use ``append``: the same files, no txn, no check (the Kafka group holds the
offsets). ``rewind``, ``live_offsets``, ``compact`` and ``vacuum`` serve the commands of those names.

A writer that loses a partition (``DeltaConflict``) must drop its data for it and re-read ``positions`` to
re-seek: never retry the same batch. After any other error from ``commit`` it must re-read ``positions`` too
before consuming on: the txns are the truth, not what the writer expected.

Not thread-safe: one ``DeltaTableStore`` per committing thread. Only spawn or forkserver after first use
(delta-rs panics in a forked child of a process that used it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction

from .errors import LakeUnavailable, ManifestConflict, RewindConflict, RunError, SetupError, StateError
from .lake import Lake
from .layout import file_name
from .manifest import new_writer_id
from .parquet import file_codec
from .types import TopicPartition

log = logging.getLogger("kingest.delta")

APP_PREFIX = "kingest"
METADATA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")  # every kingest table has these, not null
DEFAULT_PARTITION_BY = ("kafka_topic", "kafka_partition")
# lake.partition_by's columns that the table computes from kafka_timestamp at staging (_with_time_columns).
TIME_COLUMNS = ("date", "hour")
RELOAD_EVERY = 100  # commits through one DeltaTable object before a fresh load (its commits slow down with age)
COMMIT_ATTEMPTS = 5  # commits lost to a metadata change or contention, retried with the same files
FENCE_PROPERTY = "kingest.gc.fence"  # table property: how many gc fences (see DeltaTableStore.gc_fence)
STAGE_MAX_AGE = 30 * 60.0  # seconds; a staged file older than this is written again before its commit.
VACUUM_FLOOR_HOURS = 1  # never vacuum untracked files younger than this: at least 2x STAGE_MAX_AGE
_STAT_STRING_MAX = 32  # longer strings get no min/max stats (Delta truncates them; a wrong max skips files)
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")  # partition values written as folder names as they are
_REFUSED_OPTIONS = ("AWS_S3_LOCKING_PROVIDER", "AWS_S3_ALLOW_UNSAFE_RENAME")
# s3fs options that tune its own client: nothing to give delta-rs, no reason to refuse the config.
_S3FS_ONLY = frozenset(
    {"config_kwargs", "use_listings_cache", "listings_expiry_time", "skip_instance_cache", "default_block_size"}
)


# ---------------------------------------------------------------------------------------------- errors


class DeltaConflict(ManifestConflict):
    """Another writer committed these partitions since this one read them: it owns them now (a rebalance, a
    zombie, a rewind). Drop their data and re-seek to ``positions``; never retry the batch."""

    def __init__(self, table: str, taken: Mapping[TopicPartition, tuple[int | None, int | None]]) -> None:
        named = ", ".join(f"{t}[{p}] (expected {was}, table has {now})" for (t, p), (was, now) in sorted(taken.items()))
        RunError.__init__(
            self,
            f"the Delta table at {table}: another writer committed {named}; this instance no longer owns "
            f"{'that partition' if len(taken) == 1 else 'those partitions'}",
            "Nothing to fix if another kingest instance took the partitions over (a rebalance) or a rewind ran: "
            "the writer resumes from the table's offsets.",
        )
        self.taken = dict(taken)
        self.topic, self.partition = min(taken)
        self.version = taken[(self.topic, self.partition)][1] or 0


class DeltaTypeConflict(RunError):
    """A column's values cannot be stored as the table's type for it without changing them (delta-rs would cast
    silently). Nothing of the flush was committed."""

    def __init__(self, table: str, column: str, found: str, wanted: str, reason: str = "") -> None:
        super().__init__(
            f"the Delta table at {table}: column {column!r} is {wanted} in the table, the records give {found}"
            + (f" ({reason})" if reason else ""),
            "A type conflict is a bad record: route it with `records.on_error`, or declare the column's type in "
            "`records.schema`. kingest never lets delta-rs cast it (7.9 would become 7).",
        )
        self.column = column


class DeltaTableDamaged(StateError):
    """The table's log is unreadable, or the table is not a kingest table of this layout."""


class DeltaSetupError(SetupError):
    """The table path or its storage options are not usable."""


class DeltaUnavailable(LakeUnavailable):
    """The store did not answer, and the log shows that the commit did not land: nothing of it is committed.
    Re-read the positions (a late write of the log entry can still land) and run again."""


class DeltaOutcomeUnknown(LakeUnavailable):
    """The commit failed in a way that may or may not have written its log entry, and the log could not be read
    to tell. A restart resumes from the table's txns, which say what landed."""


class DeltaContention(RunError):
    """The commit lost to other commits (schema changes, a busy table) more times than it retries; nothing of it
    is committed and no partition was taken from this writer."""

    retryable = True


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StagedFile:
    """A Parquet file written under the table root and not yet committed: no reader sees it."""

    tp: TopicPartition
    path: str  # relative to the table root, as the log names it
    rows: int
    first_offset: int
    last_offset: int
    partition_values: dict[str, str | None]
    columns: pa.Schema  # the file's columns (partition columns are in the path only), as the table's types
    add: AddAction
    table: pa.Table = field(repr=False)  # kept to write the file again if it is too old to commit
    staged_at: float = field(default_factory=time.monotonic)
    epoch: int = 0  # the table's gc fence epoch known before the file was written (see gc_fence)


@dataclass
class CommitAttempt:
    """One commit of a caller's, across its calls to ``commit``/``append``: a call that raised DeltaUnavailable or
    DeltaOutcomeUnknown may still land later (a timed-out PUT), so the caller's retry passes the same attempt. Its
    id is in every log entry it writes, and the log is searched from the snapshot its first try read (``since``):
    an entry that landed late is then found as this commit's, never taken for another writer's (which would
    discard the files it names)."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    since: int | None = None


@dataclass(frozen=True)
class RewindResult:
    topic: str
    partition: int
    previous_next_offset: int | None
    next_offset: int
    deleted_rows: int
    removed_files: int
    version: int  # the table version of the rewind's commit


# ---------------------------------------------------------------------------------------------- options


def delta_storage_options(url: str, options: Mapping[str, Any] | None) -> dict[str, str]:
    """The lake's s3fs-style ``storage_options`` as delta-rs (object_store) options. ``AWS_*`` and ``aws_*``
    keys pass through as they are. Refused: the options that switch delta-rs to its lock-based S3 log store
    (``AWS_S3_LOCKING_PROVIDER``, ``AWS_S3_ALLOW_UNSAFE_RENAME``): kingest relies on ``If-None-Match: *``."""
    options = dict(options or {})
    for name in _REFUSED_OPTIONS:
        given = [k for k in options if k.upper() == name] + ([f"${name}"] if os.environ.get(name) else [])
        if given:
            raise DeltaSetupError(
                f"lake.storage_options: {given[0]} is not supported with lake.format: delta",
                "kingest commits to Delta with If-None-Match: * (conditional put), which S3 and SeaweedFS enforce; "
                "remove the option (and the environment variable). A lock provider or unsafe rename is not needed "
                "and would weaken exactly-once.",
            )
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme not in ("s3", "s3a"):
        if scheme != "file" and options:
            raise DeltaSetupError(f"lake.path {url!r}: lake.format: delta supports local paths and s3:// only")
        return {}
    out: dict[str, str] = {}
    client = options.pop("client_kwargs", None) or {}
    for key, value in options.items():
        if key.upper().startswith("AWS_"):
            out[key.upper()] = str(value)
        elif key == "endpoint_url":
            out["AWS_ENDPOINT_URL"] = str(value)
            if str(value).startswith("http://"):
                out["AWS_ALLOW_HTTP"] = "true"
        elif key == "key":
            out["AWS_ACCESS_KEY_ID"] = str(value)
        elif key == "secret":
            out["AWS_SECRET_ACCESS_KEY"] = str(value)
        elif key == "token":
            out["AWS_SESSION_TOKEN"] = str(value)
        elif key == "anon" and value:
            out["AWS_SKIP_SIGNATURE"] = "true"
        elif key not in _S3FS_ONLY and key != "anon":
            raise DeltaSetupError(
                f"lake.storage_options.{key} has no equivalent for a Delta table",
                "Use endpoint_url, key, secret, token, client_kwargs.region_name, or delta-rs's own AWS_* options.",
            )
    for key, value in dict(client).items():
        if key == "region_name":
            out["AWS_REGION"] = str(value)
        elif key == "endpoint_url":
            out["AWS_ENDPOINT_URL"] = str(value)
        elif key == "verify" and value is False:
            out["AWS_ALLOW_INVALID_CERTIFICATES"] = "true"
        elif key == "verify" and value is not True:
            raise DeltaSetupError(
                "lake.storage_options.client_kwargs.verify (a CA file) is not supported with lake.format: delta yet",
                "Add the CA to the system trust store, or use a certificate of a public CA.",
            )
    out.setdefault("AWS_REGION", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return out


# ---------------------------------------------------------------------------------------------- the store


class DeltaTableStore:
    """One Delta table: its txn positions, staging, commits, rewinds and reads, for one pipeline."""

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        pipeline: str = "kingest",
        *,
        writer: str | None = None,
        compression: str = "zstd",
        compress_min_bytes: int = 0,
        stage_max_age: float = STAGE_MAX_AGE,
    ) -> None:
        self.options = delta_storage_options(url, storage_options)
        self.lake = Lake(url, storage_options)  # the data files: puts with kingest's retries, and reads
        self.url = self.lake.root if self.lake.local else self.lake.url
        self.pipeline = pipeline
        self.writer = writer or new_writer_id()
        self.compression = compression
        self.compress_min_bytes = compress_min_bytes
        self.stage_max_age = stage_max_age
        self._tag = self.writer.rsplit("-", 1)[-1]
        self._serial = itertools.count()
        self._serial_lock = threading.Lock()
        self._dt: DeltaTable | None = None
        self._pinned = False
        self._commits = 0
        # The txns this writer knows at one table version (table id, version): those of its own last commit
        # when it directly followed its check. At that version the check needs no read of the log.
        self._known_at: tuple[str, int] | None = None
        self._known: dict[TopicPartition, int | None] = {}

    def __repr__(self) -> str:
        return f"DeltaTableStore({self.lake.display()!r})"

    def display(self) -> str:
        return self.lake.display()

    def app_id(self, tp: TopicPartition) -> str:
        return f"{APP_PREFIX}-{self.pipeline}-{tp[0]}-{tp[1]}"

    # ------------------------------------------------------------------------------------------ loading

    def exists(self) -> bool:
        try:
            return bool(DeltaTable.is_deltatable(self.url, storage_options=self.options))
        except Exception as exc:  # noqa: BLE001 (delta-rs raises plain Exceptions for store errors)
            self._raise_load_error(exc)

    def _load(self) -> DeltaTable:
        try:
            return DeltaTable(self.url, storage_options=self.options)
        except Exception as exc:  # noqa: BLE001
            self._raise_load_error(exc)

    def _raise_load_error(self, exc: Exception) -> NoReturn:
        text = _first_line(exc)
        if isinstance(exc, TableNotFoundError):
            raise DeltaTableDamaged(
                f"no Delta table at {self.display()} ({text})",
                "Run `kingest run` to create it, or fix lake.path.",
            ) from None
        if _is_unavailable(text):
            raise DeltaUnavailable(
                f"the Delta table at {self.display()} cannot be read: {text}",
                "Check that the store is up and reachable (lake.storage_options endpoint_url); run again.",
            ) from None
        if _is_refused(text):
            raise DeltaSetupError(
                f"the Delta table at {self.display()} cannot be read: {text}",
                "Check lake.path and the credentials in lake.storage_options.",
            ) from None
        raise DeltaTableDamaged(
            f"the Delta table at {self.display()} is unreadable: {text}",
            "Restore its _delta_log from a backup; kingest will not guess the table's state.",
        ) from None

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Reads in this block see the version the last read saw (verify: the rows of the txns it read)."""
        was, self._pinned = self._pinned, True
        try:
            yield
        finally:
            self._pinned = was

    def _table(self) -> DeltaTable:
        """The writer's DeltaTable at the latest version: one object, loaded again every RELOAD_EVERY commits."""
        if self._pinned and self._dt is not None:
            return self._dt
        if self._dt is None or self._commits >= RELOAD_EVERY:
            self._dt, self._commits = self._load(), 0
        else:
            try:
                self._dt.update_incremental()
            except Exception as exc:  # noqa: BLE001
                self._dt = None
                self._raise_load_error(exc)
        return self._dt

    def version(self) -> int:
        """The table's latest version."""
        return int(self._table().version())

    @property
    def partition_by(self) -> list[str]:
        return list(self._table_loaded().metadata().partition_columns)

    def _table_loaded(self) -> DeltaTable:
        return self._dt if self._dt is not None else self._table()

    def schema(self) -> pa.Schema:
        """The table's columns as Arrow types (Delta's own mapping: timestamps in microseconds)."""
        return _arrow_schema(self._table_loaded())

    def record_schema(self, partition_by: Sequence[str]) -> pa.Schema:
        """The columns the records fill: the table's, but for the partition columns lake.partition_by computes
        from kafka_timestamp (``date``, ``hour``: see _with_time_columns), which no record holds."""
        schema = self.schema()
        return pa.schema([f for f in schema if f.name not in partition_by or f.name not in TIME_COLUMNS])

    # ------------------------------------------------------------------------------------------ creating

    def ensure_table(self, schema: pa.Schema | None, partition_by: Sequence[str] = DEFAULT_PARTITION_BY) -> None:
        """Create the table when missing, in a commit of its own: schema and partitioning, no data, no txn, and
        no retry (``max_commit_retries=0``): of writers creating it at once, one CREATE lands and the others
        fail and load it. An existing table must have the kafka columns and be partitioned by ``partition_by``."""
        if schema is not None:
            missing = [c for c in METADATA_COLUMNS if c not in schema.names]
            unknown = [c for c in partition_by if c not in schema.names and c not in TIME_COLUMNS]
            if missing or unknown:
                raise ValueError(f"schema lacks {missing + unknown}")
        if not self.exists():
            if schema is None:  # no record to take the columns from (a first flush of skipped records): kafka's
                from .decode import METADATA_FIELDS

                schema = pa.schema(METADATA_FIELDS)
            for column in TIME_COLUMNS:
                if column in partition_by:  # a string, whatever a record field of that name held
                    if column in schema.names:
                        schema = schema.remove(schema.get_field_index(column))
                    schema = schema.append(pa.field(column, pa.string(), nullable=False))
            # All-null columns would become Delta's `void`, which other engines read badly: added when typed.
            fields = [f for f in schema if not pa.types.is_null(f.type)]
            try:
                DeltaTable.create(
                    self.url,
                    pa.schema(fields),
                    partition_by=list(partition_by) or None,
                    mode="error",
                    name=self.pipeline,
                    description=f"written by kingest pipeline {self.pipeline}",
                    storage_options=self.options,
                    commit_properties=CommitProperties(
                        max_commit_retries=0,
                        custom_metadata={"kingest.op": "create", "kingest.writer": self.writer},
                    ),
                )
                log.info("created the Delta table at %s", self.display())
            except Exception as exc:  # noqa: BLE001 (another writer created it: load what it made)
                if not self.exists():
                    if _is_unavailable(_first_line(exc)):
                        self._raise_load_error(exc)
                    raise DeltaSetupError(
                        f"the Delta table at {self.display()} cannot be created: {_first_line(exc)}",
                        "Check lake.path and lake.storage_options (endpoint, bucket, credentials).",
                    ) from None
                log.info("the Delta table at %s was created by another writer meanwhile", self.display())
        self._dt = None
        dt = self._table()
        names = _arrow_schema(dt).names
        if [c for c in METADATA_COLUMNS if c not in names]:
            raise DeltaSetupError(
                f"the Delta table at {self.display()} is not a kingest table (no {', '.join(METADATA_COLUMNS)})",
                "Point lake.path at a new folder, or at a table kingest wrote.",
            )
        owner = dt.metadata().name
        if owner and owner != self.pipeline:
            # The txn appIds kingest-<pipeline>-<topic>-<partition> of two pipelines could read alike (pipeline a,
            # topic b-c and pipeline a-b, topic c): one table, one pipeline.
            raise DeltaSetupError(
                f"the Delta table at {self.display()} belongs to kingest pipeline {owner!r}, not {self.pipeline!r}",
                "Give each pipeline a table of its own (lake.path); one pipeline can ingest several topics.",
            )
        have = list(dt.metadata().partition_columns)
        if have != list(partition_by):
            raise DeltaSetupError(
                f"the Delta table at {self.display()} is partitioned by {have}, the config asks for "
                f"{list(partition_by)}",
                "A Delta table keeps its partitioning: set lake.partition_by back, or use a new lake.path.",
            )

    # ------------------------------------------------------------------------------------------ positions

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Each partition's next offset as the table's txns say (None: never committed, or no table yet)."""
        tps = list(tps)
        if self._dt is None and not self.exists():
            return {tp: None for tp in tps}
        dt = self._table()
        return {tp: dt.transaction_version(self.app_id(tp)) for tp in tps}

    # ------------------------------------------------------------------------------------------ staging

    def conform(self, table: pa.Table, current: pa.Schema | None = None) -> pa.Table:
        """``table`` with the table's types for the table's columns, new columns as Delta will store them, and
        all-null new columns left out. Raises DeltaTypeConflict for a value that would change: only widening
        casts (int32 to int64, an int to a double when exact, ms to us) and null columns are allowed.
        ``current``: the table's schema, read before (``schema()``), when called off the committing thread."""
        current = self.schema() if current is None else current
        by_lower = {name.lower(): name for name in current.names}
        arrays, fields = [], []
        for column in table.schema:
            values = table.column(column.name)
            name = by_lower.get(column.name.lower())
            if name is not None and name != column.name:
                raise DeltaTypeConflict(
                    self.display(), column.name, "a column of that name", f"named {name!r}", "names differ in case"
                )
            if name is None:
                if pa.types.is_null(column.type):
                    continue
                target = _delta_field(column, self.display())
            else:
                have = current.field(name)
                # A struct whose records carry new subfields: the table's struct with them added (nullable)
                merged = _merged(have.type, column.type, self.display(), column.name)
                target = have if merged is None else have.with_type(merged)
            arrays.append(self._cast(values, column, target))
            fields.append(target)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def _cast(self, values: pa.ChunkedArray, column: pa.Field, target: pa.Field) -> pa.ChunkedArray:
        if not _widens(column.type, target.type):
            raise DeltaTypeConflict(self.display(), column.name, str(column.type), str(target.type))
        if not target.nullable and values.null_count:
            raise DeltaTypeConflict(
                self.display(), column.name, f"{values.null_count} null(s)", f"{target.type} not null"
            )
        if values.type == target.type:
            return values
        try:
            return values.cast(target.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DeltaTypeConflict(
                self.display(), column.name, str(column.type), str(target.type), _first_line(exc)
            ) from None

    def stage(
        self,
        tp: TopicPartition,
        table: pa.Table,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        put: Callable[[str, bytes], None] | None = None,
        epoch: int | None = None,
    ) -> list[StagedFile]:
        """Write the records of one topic-partition as Parquet files under the table root, one per table
        partition (partition columns only in the folder names), not yet committed: readers do not see them.
        The table must exist (``ensure_table``). Off the committing thread (side by side), pass the table's
        ``schema`` and ``partition_by`` as read before on it: then nothing here touches the DeltaTable object.
        ``put``: how a file is written (default: the store's Lake.put). ``epoch``: the fence epoch read before
        (``fence_epoch()``), off the committing thread."""
        if table.num_rows == 0:
            return []
        epoch = self.fence_epoch() if epoch is None else epoch  # read before the files are written
        _check_partition(table, tp)
        partition_by = self.partition_by if partition_by is None else list(partition_by)
        table = self.conform(self._with_time_columns(table, partition_by), schema)
        if partition_by:
            groups = table.group_by(partition_by).aggregate([]).to_pylist()
        else:
            groups = [{}]
        staged = []
        for values in groups:
            part = table
            for column, value in values.items():
                part = part.filter(pc.equal(part.column(column), pa.scalar(value, part.schema.field(column).type)))
            partition_values = {c: _partition_value(c, v) for c, v in values.items()}
            staged.append(self._write(tp, part.drop_columns(partition_by), partition_values, put, epoch))
        return staged

    def _with_time_columns(self, table: pa.Table, partition_by: Sequence[str]) -> pa.Table:
        """The ``date`` (YYYY-MM-DD) and ``hour`` (HH) partition columns (lake.partition_by), from each record's
        kafka_timestamp in UTC, as the Parquet lake's folders are; "unknown" for a record without a timestamp."""
        for column, fmt in (("date", "%Y-%m-%d"), ("hour", "%H")):
            if column not in partition_by:
                continue
            if column in table.column_names:
                raise DeltaTypeConflict(
                    self.display(),
                    column,
                    "a field of the records",
                    f"the partition column lake.partition_by computes from kafka_timestamp ({fmt})",
                    "rename the field upstream, or drop it with records.schema",
                )
            stamps = table.column("kafka_timestamp")
            if pa.types.is_timestamp(stamps.type) and stamps.type.tz is None:
                stamps = stamps.cast(pa.timestamp(stamps.type.unit, tz="UTC"))
            values = pc.fill_null(pc.strftime(stamps, format=fmt), "unknown")
            table = table.append_column(pa.field(column, pa.string(), nullable=False), values)
        return table

    def _write(
        self,
        tp: TopicPartition,
        table: pa.Table,
        partition_values: dict[str, str | None],
        put: Callable[[str, bytes], None] | None = None,
        epoch: int = 0,
    ) -> StagedFile:
        offsets = table.column("kafka_offset")
        first, last = pc.min(offsets).as_py(), pc.max(offsets).as_py()
        folder = "/".join(f"{c}={v}" for c, v in partition_values.items())
        with self._serial_lock:
            serial = next(self._serial)
        name = file_name(tp[0], tp[1], first, last, f"{self._tag}-{serial}")
        path = f"{folder}/{name}" if folder else name
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=file_codec(table, self.compression, self.compress_min_bytes))
        data = sink.getvalue().to_pybytes()
        (put or self.lake.put)(path, data)
        add = AddAction(
            path=path,
            size=len(data),
            partition_values=partition_values,
            modification_time=int(time.time() * 1000),
            data_change=True,
            stats=json.dumps(_stats(table)),
        )
        return StagedFile(
            tp, path, table.num_rows, first, last, partition_values, table.schema, add, table, epoch=epoch
        )

    def discard(self, files: Iterable[StagedFile]) -> None:
        """Delete staged files that can never be committed (after a DeltaConflict). Best effort: gc finds the
        rest. Only for files no commit of this writer can still land with (see ``commit``)."""
        try:
            self.lake.delete([f.path for f in files])
        except Exception as exc:  # noqa: BLE001
            log.warning("could not delete uncommitted files of %s: %s", self.display(), exc)

    # ------------------------------------------------------------------------------------------ committing

    def commit(
        self,
        files: Sequence[StagedFile],
        next_offsets: Mapping[TopicPartition, int],
        expected: Mapping[TopicPartition, int | None],
        attempt: CommitAttempt | None = None,
    ) -> int:
        """Commit ``files`` and each partition's txn (``next_offsets``: the next offset to consume, from the
        consumer's position, never ``last + 1``) in one log entry, if every partition's txn is still
        ``expected``. Returns the table version committed.

        A partition may come without files: its txn alone moves (a batch of transaction markers, skipped
        records).

        Raises DeltaConflict (nothing committed; the staged files of the partitions taken are deleted, the
        others' can go in a new commit: no attempt of this one can land any more), DeltaTypeConflict (a column
        another writer added with another type; nothing committed), DeltaContention or DeltaUnavailable (nothing
        committed), DeltaOutcomeUnknown (the log could not be read to tell). After any of them the caller must
        re-read ``positions``, or retry with the same ``attempt`` (see CommitAttempt)."""
        if set(expected) != set(next_offsets) or not next_offsets:
            raise ValueError("commit: next_offsets and expected must name the same, non-empty, partitions")
        strays = {f.tp for f in files} - set(next_offsets)
        if strays:
            raise ValueError(f"commit: files of {sorted(strays)} without a next offset")
        return self._commit(files, next_offsets, expected, attempt or CommitAttempt())

    def append(self, files: Sequence[StagedFile], attempt: CommitAttempt | None = None) -> int:
        """Commit ``files`` without any txn and without a check (at-least-once and at-most-once, where the
        Kafka group holds the offsets). Returns the table version committed."""
        return self._commit(files, {}, {}, attempt or CommitAttempt())

    def _commit(
        self,
        files: Sequence[StagedFile],
        next_offsets: Mapping[TopicPartition, int],
        expected: Mapping[TopicPartition, int | None],
        attempt: CommitAttempt,
    ) -> int:
        commit_id = attempt.id  # one id for every try: whichever lands is found in the log
        files = list(files)
        reason = ""
        since = attempt.since  # the snapshot the first try read from: a landed try is after it
        for _ in range(COMMIT_ATTEMPTS):
            dt = self._evolve(files)
            files = self._fresh(files, dt)
            if self._taken(dt, expected):
                # An earlier attempt's entry may have landed late (its PUT timed out): then the txns are ours.
                version = self._settle(dt.version() if since is None else since, commit_id, expected, files)
                if version is not None:
                    return version
                continue  # the partitions are ours again (a rewind back to them): check again from the start
            # From here to the commit, nothing may move ``dt``: the check above holds at dt.version(), the
            # snapshot the commit reads from, and delta-rs fails it if any later commit carries one of its appIds.
            read_version = dt.version()
            since = read_version if since is None else since
            attempt.since = since
            txns = [Transaction(self.app_id(tp), int(n)) for tp, n in sorted(next_offsets.items())]
            properties = CommitProperties(
                app_transactions=txns,
                custom_metadata={"kingest.commit": commit_id, "kingest.writer": self.writer, "kingest.op": "write"},
            )
            try:
                dt.create_write_transaction(
                    [f.add for f in files],
                    "append",
                    dt.schema(),
                    partition_by=self.partition_by or None,
                    commit_properties=properties,
                )
            except CommitFailedError as exc:
                # Lost to another commit, or a timed-out PUT of our own entry landed and the retry met it.
                reason = _first_line(exc)
                version = self._settle(since, commit_id, expected, files)
                if version is not None:
                    return version
                log.info("commit to %s lost (%s); retrying with the same files", self.display(), reason)
                continue
            except BaseException as exc:  # a post-commit hook, the store, a panic: the entry may have landed
                if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                version = self._settle(since, commit_id, expected, files, unknown=exc)
                if version is not None:
                    return version
                raise DeltaUnavailable(
                    f"commit to the Delta table at {self.display()} failed: {_first_line(exc)}; the log shows "
                    "it did not land",
                    "Nothing of this flush is committed; check the store and run again.",
                ) from None
            self._commits += 1
            version = self._landed_version(read_version, commit_id)
            if version == read_version + 1 and next_offsets:
                # The check held at read_version and this commit changed only these txns: known at ``version``.
                known_before = self._known_at == (str(dt.metadata().id), read_version)
                self._known = {**(self._known if known_before else {}), **next_offsets}
                self._known_at = (str(dt.metadata().id), version)
            return version
        raise DeltaContention(
            f"commit to the Delta table at {self.display()} lost {COMMIT_ATTEMPTS} times in a row ({reason}); "
            "nothing of it is committed",
            "Other commits (schema changes, compactions, many writers) kept moving the table; run again.",
        )

    def fence_epoch(self, dt: DeltaTable | None = None) -> int:
        """How many gc fences the table has seen (its FENCE_PROPERTY), at ``dt`` or the version last read."""
        dt = dt if dt is not None else self._table_loaded()
        return int(dt.metadata().configuration.get(FENCE_PROPERTY) or 0)

    def gc_fence(self) -> float:
        """A commit that changes only the table's metadata (FENCE_PROPERTY, one further). Delta fails every commit
        whose snapshot precedes a metadata change (a writer's, a compaction's, a rewind's: "Metadata changed since
        last commit"); the writer then reloads, and writes again each file it staged before the fence (its
        StagedFile.epoch is lower: see ``_fresh``). So no file written before the fence is named by a commit
        that lands after it, however long its writer was frozen, whatever the clocks say: gc may delete such
        files once unreferenced. Returns the time (seconds since the epoch) read before the fence's snapshot."""
        reason = ""
        for _ in range(COMMIT_ATTEMPTS):
            before = time.time()
            self._dt = None
            dt = self._table()
            try:
                dt.alter.set_table_properties(
                    {FENCE_PROPERTY: str(self.fence_epoch(dt) + 1)},
                    raise_if_not_exists=False,
                    commit_properties=CommitProperties(
                        custom_metadata={"kingest.op": "gc-fence", "kingest.writer": self.writer}
                    ),
                )
            except CommitFailedError as exc:  # another metadata change meanwhile: look again
                reason = _first_line(exc)
                continue
            except Exception as exc:  # noqa: BLE001
                self._dt = None
                self._raise_load_error(exc)
            self._dt = None
            return before
        raise DeltaContention(
            f"gc's fence on the Delta table at {self.display()} lost {COMMIT_ATTEMPTS} times ({reason})",
            "Nothing was deleted; run gc again.",
        )

    def _taken(
        self, dt: DeltaTable, expected: Mapping[TopicPartition, int | None]
    ) -> dict[TopicPartition, tuple[int | None, int | None]]:
        # delta-rs re-reads the log from the last checkpoint for each call (no bulk call): skip it when the table
        # is still at this writer's own last commit, whose txns it knows.
        if self._known_at == (str(dt.metadata().id), dt.version()) and all(tp in self._known for tp in expected):
            found = {tp: self._known[tp] for tp in expected}
        else:
            found = {tp: dt.transaction_version(self.app_id(tp)) for tp in expected}
        return {tp: (expected[tp], found[tp]) for tp in expected if found[tp] != expected[tp]}

    def _evolve(self, files: Sequence[StagedFile]) -> DeltaTable:
        """The table at its latest version, with the staged files' new columns added (nullable, no data, a
        commit of their own). Raises DeltaTypeConflict when a staged column exists with another type (another
        writer added it meanwhile). A crash after adding them leaves empty columns: harmless."""
        for _ in range(COMMIT_ATTEMPTS):
            dt = self._table()
            current = _arrow_schema(dt)
            new: dict[str, pa.Field] = {}
            wider: dict[str, pa.Field] = {}  # existing columns whose struct gains subfields
            for staged in files:
                for column in staged.columns:
                    if column.name in current.names:
                        have = current.field(column.name)
                        seen = wider.get(column.name, have)
                        if _fits(column.type, seen.type):
                            continue
                        merged = _merged(seen.type, column.type, self.display(), column.name)
                        if merged is None:
                            raise DeltaTypeConflict(self.display(), column.name, str(column.type), str(have.type))
                        wider[column.name] = seen.with_type(merged)
                    elif column.name not in new:
                        new[column.name] = column.with_nullable(True)
            if not new and not wider:
                return dt
            # One commit without data or txn: the table's schema with the new columns and wider structs.
            evolved = pa.schema([wider.get(f.name, f) for f in current] + list(new.values()))
            try:
                write_deltalake(
                    dt,
                    evolved.empty_table(),
                    mode="append",
                    schema_mode="merge",
                    commit_properties=CommitProperties(
                        custom_metadata={"kingest.op": "evolve-schema", "kingest.writer": self.writer}
                    ),
                )
                log.info("%s: schema evolved: %s", self.display(), ", ".join([*new, *wider]))
            except CommitFailedError:
                continue  # another writer changed the schema meanwhile: look again
            except Exception as exc:  # noqa: BLE001
                self._dt = None
                self._raise_load_error(exc)
        raise DeltaContention(f"the Delta table at {self.display()}: adding columns lost {COMMIT_ATTEMPTS} times")

    def _fresh(self, files: list[StagedFile], dt: DeltaTable) -> list[StagedFile]:
        """The files, written again under new names when staged before a gc fence that ``dt`` (the snapshot the
        commit reads) has seen, or more than ``stage_max_age`` ago (a vacuum by another tool, which fences
        nothing, keeps files of its retention): gc may be deleting the old ones as unreferenced. The old ones are
        left to gc, never deleted here: a try of this commit whose outcome was unknown may still land naming one."""
        epoch = self.fence_epoch(dt)
        out = []
        for staged in files:
            if staged.epoch >= epoch and time.monotonic() - staged.staged_at <= self.stage_max_age:
                out.append(staged)
                continue
            out.append(self._write(staged.tp, staged.table, staged.partition_values, epoch=epoch))
        files[:] = out
        return out

    def _settle(
        self,
        read_version: int,
        commit_id: str,
        expected: Mapping[TopicPartition, int | None],
        files: Sequence[StagedFile],
        unknown: BaseException | None = None,
    ) -> int | None:
        """After a failed commit call: the version it landed as (found by its id in the commits after the
        snapshot it read from), or None when it did not land and no partition was taken. Raises DeltaConflict
        when another writer took a partition.

        Why deciding "not landed" from one read is safe: the entry of an attempt is a put-if-absent of the
        version after the latest it conflict-checked. If it is not among the versions read now, either that
        version is taken (it never lands) or it is the next one, and then it carries our appIds: our retry
        conflicts with it and this check finds it. So staged files are deleted only when a partition was taken:
        then no attempt of ours can land any more (it would have conflicted with the commit that took it), and
        only the taken partitions' files: the others' may go in the caller's next commit."""
        self._dt = None
        try:
            dt = self._load()
            landed = _landed(dt, read_version, commit_id)
        except Exception as exc:  # noqa: BLE001
            raise DeltaOutcomeUnknown(
                f"commit to the Delta table at {self.display()} failed ({_first_line(unknown or exc)}) and the "
                f"table cannot be read to tell whether it landed: {_first_line(exc)}",
                "Run again: the writer resumes from the offsets the table holds, whichever way it went.",
            ) from None
        self._dt, self._commits = dt, 0
        if landed is not None:
            if unknown is not None:
                log.warning(
                    "commit to %s raised %s, and landed as version %d", self.display(), _first_line(unknown), landed
                )
            return landed
        taken = self._taken(dt, expected)
        if taken:
            self.discard(f for f in files if f.tp in taken)
            raise DeltaConflict(self.display(), taken)
        return None

    def _landed_version(self, read_version: int, commit_id: str) -> int:
        dt = self._table()  # create_write_transaction leaves dt at the old version: without this, our next
        # commit on it would conflict with this one (same appIds after its snapshot)
        if dt.version() == read_version + 1:
            return dt.version()  # the one commit after the snapshot: this one, which succeeded
        landed = _landed(dt, read_version, commit_id)
        # not in the history read (log clean-up): the version read is at or after it
        return dt.version() if landed is None else landed

    # ------------------------------------------------------------------------------------------ rewind

    def rewind(self, tp: TopicPartition, target: int, *, expected: int | None | str = "any") -> RewindResult:
        """Make ``tp`` resume at ``target``: delete its rows at or past it and set its txn to ``target``, in one
        commit, so that a replay lands every offset once. When no row matches (delta-rs then commits nothing,
        dropping the txn), a txn-only commit on the same snapshot. A writer of ``tp`` running meanwhile loses
        its next commit (its appId moved) and re-seeks. ``expected``: the partition's next offset when the
        rewind was planned (RewindConflict if a writer committed since); "any" to skip that check."""
        if target < 0:
            raise ValueError(f"rewind target {target} < 0")
        topic, partition = tp
        predicate = (
            f"kafka_topic = '{_sql_string(topic)}' AND kafka_partition = {int(partition)} "
            f"AND kafka_offset >= {int(target)}"
        )
        reason = ""
        for _ in range(COMMIT_ATTEMPTS):
            dt = self._table()
            previous = dt.transaction_version(self.app_id(tp))
            if expected != "any" and previous != expected:
                raise RewindConflict(
                    f"{topic}[{partition}]: a writer committed up to {previous} since the rewind was planned "
                    f"(at {expected}); nothing was rewound",
                    "Stop the pipeline (or let its group settle) and plan the rewind again.",
                )
            read_version = dt.version()
            commit_id = uuid.uuid4().hex
            properties = CommitProperties(
                app_transactions=[Transaction(self.app_id(tp), int(target))],
                custom_metadata={
                    "kingest.commit": commit_id,
                    "kingest.writer": self.writer,
                    "kingest.op": "rewind",
                    "kingest.previous_next_offset": str(previous),
                },
            )
            metrics: dict[str, Any] = {}
            try:
                metrics = dict(dt.delete(predicate, commit_properties=properties))
                if dt.version() == read_version:  # nothing matched: nothing committed, txn dropped
                    dt.create_write_transaction(
                        [], "append", dt.schema(), partition_by=self.partition_by or None, commit_properties=properties
                    )
            except CommitFailedError as exc:
                reason = _first_line(exc)
                version = self._rewind_landed(read_version, commit_id)
                if version is None:
                    continue  # a writer or compaction committed meanwhile: look again
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                version = self._rewind_landed(read_version, commit_id, unknown=exc)
                if version is None:
                    raise DeltaUnavailable(
                        f"rewind of {topic}[{partition}] in {self.display()} failed: {_first_line(exc)}; the log "
                        "shows it did not land",
                        "Nothing was rewound; check the store and run the rewind again.",
                    ) from None
            else:
                version = self._rewind_landed(read_version, commit_id)
                if version is None:
                    raise DeltaTableDamaged(
                        f"rewind of {topic}[{partition}] in {self.display()}: delta-rs reported success but the "
                        "commit is not in the log",
                        "Run `kingest status`; run the rewind again.",
                    )
            now = self._table().transaction_version(self.app_id(tp))
            if now != target:
                log.warning("%s[%d]: rewound to %d; a writer has committed since, up to %s", *tp, target, now)
            return RewindResult(
                topic,
                partition,
                previous,
                target,
                int(metrics.get("num_deleted_rows", 0)),
                int(metrics.get("num_removed_files", 0)),
                version,
            )
        raise RewindConflict(
            f"rewind of {topic}[{partition}] in {self.display()} lost {COMMIT_ATTEMPTS} times to other commits "
            f"({reason}); nothing was rewound",
            "Stop the pipeline writing this partition, then run the rewind again.",
        )

    def _rewind_landed(self, read_version: int, commit_id: str, unknown: BaseException | None = None) -> int | None:
        self._dt = None
        try:
            dt = self._load()
            found = _landed(dt, read_version, commit_id)
        except Exception as exc:  # noqa: BLE001
            raise DeltaOutcomeUnknown(
                f"rewind in {self.display()} failed ({_first_line(unknown or exc)}) and the table cannot be read "
                f"to tell whether it landed: {_first_line(exc)}",
                "Run `kingest status` once the store answers: it shows the partition's offset.",
            ) from None
        self._dt, self._commits = dt, 0
        return found

    # ------------------------------------------------------------------------------------------ reading

    def filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem rooted at the table, for ``to_pyarrow_dataset``: not delta-rs's default one,
        whose process intermittently aborts at exit (delta-rs#2184)."""
        if self.lake.local:
            return pafs.SubTreeFileSystem(self.lake.root, pafs.LocalFileSystem())
        return pafs.SubTreeFileSystem(self.lake.root, pafs.PyFileSystem(pafs.FSSpecHandler(self.lake.fs)))

    def dataset(self) -> Any:
        """The table's live rows (the latest version) as a pyarrow dataset."""
        return self._table().to_pyarrow_dataset(filesystem=self.filesystem())

    def live_offsets(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, pa.Array]:
        """The offsets of the live rows per topic-partition (all partitions, or ``tps``), for verify."""
        import pyarrow.dataset as pads

        if self._dt is None and not self.exists():
            return {}
        wanted = None
        for topic, partition in tps if tps is not None else ():
            one = (pads.field("kafka_topic") == topic) & (pads.field("kafka_partition") == partition)
            wanted = one if wanted is None else wanted | one
        if tps is not None and wanted is None:
            return {}
        table = self.dataset().to_table(columns=list(METADATA_COLUMNS), filter=wanted)
        out: dict[TopicPartition, pa.Array] = {}
        if table.num_rows == 0:
            return out
        keys = table.group_by(["kafka_topic", "kafka_partition"]).aggregate([]).to_pylist()
        for key in keys:
            mask = pc.and_(
                pc.equal(table.column("kafka_topic"), key["kafka_topic"]),
                pc.equal(table.column("kafka_partition"), key["kafka_partition"]),
            )
            offsets = table.column("kafka_offset").filter(mask).combine_chunks()
            out[(key["kafka_topic"], int(key["kafka_partition"]))] = offsets.cast(pa.int64())
        return out

    def files_by_partition(self) -> dict[TopicPartition, dict[str, dict[str, Any]]]:
        """The table's live data files per topic-partition, each as the offsets manifest names a file (path,
        first and last offset from the file's statistics, rows, bytes): for status and verify."""
        actions = pa.table(self._table().get_add_actions(flatten=True))
        out: dict[TopicPartition, dict[str, dict[str, Any]]] = {}
        names = actions.column_names
        if "partition.kafka_topic" not in names or "partition.kafka_partition" not in names:
            return out
        for row in actions.select(
            [c for c in ("path", "size_bytes", "num_records", "min.kafka_offset", "max.kafka_offset") if c in names]
            + ["partition.kafka_topic", "partition.kafka_partition"]
        ).to_pylist():
            tp = (str(row["partition.kafka_topic"]), int(row["partition.kafka_partition"]))
            out.setdefault(tp, {})[row["path"]] = {
                "path": row["path"],
                "first_offset": row.get("min.kafka_offset"),
                "last_offset": row.get("max.kafka_offset"),
                "rows": row.get("num_records") or 0,
                "bytes": row.get("size_bytes") or 0,
            }
        return out

    def offsets_in_files(self, files: Mapping[TopicPartition, Iterable[str]]) -> dict[TopicPartition, pa.Array]:
        """The ``kafka_offset`` values of these table files (paths relative to the root), per topic-partition:
        verify's read, file by file, so that a file the log names but storage lacks is reported, not fatal."""
        from concurrent.futures import ThreadPoolExecutor

        def read(path: str) -> pa.Array:
            with self.lake.fs.open(self.lake.full(path), "rb") as f:
                return pq.read_table(f, columns=["kafka_offset"]).column("kafka_offset").combine_chunks()

        out: dict[TopicPartition, pa.Array] = {}
        with ThreadPoolExecutor(8) as pool:
            for tp, paths in files.items():
                arrays = list(pool.map(read, list(paths)))
                if arrays:
                    out[tp] = pa.concat_arrays([a.cast(pa.int64()) for a in arrays])
        return out

    def committed_files(self) -> list[str]:
        """The table's live data files, relative to its root."""
        return [str(p) for p in self._table().get_add_actions(flatten=False).column("path").to_pylist()]

    # ------------------------------------------------------------------------------------------ maintenance

    def compact(self, tp: TopicPartition | None = None, target_size: int | None = None) -> dict[str, Any]:
        """Merge small files (of one topic-partition, when the table is partitioned by the kafka columns). The
        txns are table state: untouched. Safe beside live writers (measured); loses only to a rewind of the
        same files, and is then retried."""
        filters = None
        if tp is not None and self.partition_by[:2] == list(DEFAULT_PARTITION_BY):
            filters = [("kafka_topic", "=", tp[0]), ("kafka_partition", "=", str(tp[1]))]
        for _ in range(COMMIT_ATTEMPTS):
            dt = self._table()
            try:
                return dict(
                    dt.optimize.compact(
                        partition_filters=filters,
                        target_size=target_size,
                        commit_properties=CommitProperties(
                            custom_metadata={"kingest.op": "compact", "kingest.writer": self.writer}
                        ),
                    )
                )
            except CommitFailedError:
                continue
        raise DeltaContention(f"compaction of {self.display()} lost {COMMIT_ATTEMPTS} times to other commits")

    def vacuum(self, retain_hours: int, *, dry_run: bool = True) -> list[str]:
        """Delete files no version references (removed ones, and untracked ones: orphans of crashed or fenced
        writers) older than ``retain_hours``, at least VACUUM_FLOOR_HOURS: a staged file is committed within
        ``stage_max_age`` of being written, or written again. Returns the files (to be) deleted."""
        if retain_hours < VACUUM_FLOOR_HOURS:
            raise ValueError(f"vacuum retention {retain_hours} h < {VACUUM_FLOOR_HOURS} h")
        dt = self._table()
        return list(
            dt.vacuum(
                retention_hours=int(math.ceil(retain_hours)),
                dry_run=dry_run,
                enforce_retention_duration=False,
                full=True,
                commit_properties=CommitProperties(custom_metadata={"kingest.op": "gc", "kingest.writer": self.writer}),
            )
        )


# ---------------------------------------------------------------------------------------------- helpers


def _landed(dt: DeltaTable, read_version: int, commit_id: str) -> int | None:
    """The version of the commit carrying ``commit_id`` among those after ``read_version`` (the snapshot its
    first try read), or None when it is not there. (delta-rs 1.6 may label the versions of commits that landed
    during this call too low; the search covers them all.)"""
    for c in dt.history(max(dt.version() - read_version, 1)):
        if c.get("kingest.commit") == commit_id and "version" in c:
            return int(c["version"])
    return None


def _arrow_schema(dt: DeltaTable) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


def _delta_field(column: pa.Field, table: str) -> pa.Field:
    """How Delta stores a new column (its Arrow type after the round trip: ms timestamps become us, uint32
    long), nullable. Raises DeltaTypeConflict for a type Delta has no equivalent for."""
    try:
        mapped = pa.schema(DeltaSchema.from_arrow(pa.schema([column.with_nullable(True)])).to_arrow()).field(0)
    except Exception as exc:  # noqa: BLE001 (delta-rs raises a plain Exception)
        raise DeltaTypeConflict(table, column.name, str(column.type), "no Delta type", _first_line(exc)) from None
    if not _widens(column.type, mapped.type):
        raise DeltaTypeConflict(table, column.name, str(column.type), f"Delta {mapped.type}", "not exact")
    return pa.field(column.name, mapped.type, nullable=True)


def _widens(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` has one value of ``target`` that means the same (a safe cast then
    checks the values: an int too large for a double, a timestamp with sub-unit digits, fail it)."""
    t = pa.types
    if source == target or t.is_null(source):
        return True
    if t.is_integer(source) and t.is_integer(target):
        if t.is_signed_integer(source) and t.is_unsigned_integer(target):
            return False
        return source.bit_width < target.bit_width or (
            source.bit_width == target.bit_width and t.is_signed_integer(source) == t.is_signed_integer(target)
        )
    if t.is_integer(source) and t.is_float64(target):
        return True  # exact values only (a safe cast checks 2**53)
    if t.is_floating(source) and t.is_floating(target):
        return source.bit_width <= target.bit_width
    strings = (t.is_string, t.is_large_string, t.is_string_view)
    if any(f(source) for f in strings) and any(f(target) for f in strings):
        return True
    binaries = (t.is_binary, t.is_large_binary, t.is_binary_view)
    if any(f(source) for f in binaries) and any(f(target) for f in binaries):
        return True
    if t.is_timestamp(source) and t.is_timestamp(target):
        return _utc(source.tz) == _utc(target.tz)
    if t.is_date(source) and t.is_date(target):
        return True
    lists = (t.is_list, t.is_large_list, t.is_list_view, t.is_large_list_view)
    if any(f(source) for f in lists) and any(f(target) for f in lists):
        return _widens(source.value_type, target.value_type)
    if t.is_struct(source) and t.is_struct(target):
        wanted = {target.field(i).name: target.field(i).type for i in range(target.num_fields)}
        return all(
            source.field(i).name in wanted and _widens(source.field(i).type, wanted[source.field(i).name])
            for i in range(source.num_fields)
        )
    if t.is_dictionary(source):
        return _widens(source.value_type, target)
    return False


def _merged(have: pa.DataType, new: pa.DataType, table: str, column: str) -> pa.DataType | None:
    """The table's type ``have`` grown to hold ``new``: a struct gains the subfields it lacks (nullable, as Delta
    stores them), recursively, also inside lists. None when nothing needs to grow (``new`` widens into ``have``,
    or does not: the cast then says so)."""
    t = pa.types
    if t.is_struct(have) and t.is_struct(new):
        grown = False
        fields = []
        for i in range(have.num_fields):
            f = have.field(i)
            j = new.get_field_index(f.name)
            inner = _merged(f.type, new.field(j).type, table, f"{column}.{f.name}") if j >= 0 else None
            grown = grown or inner is not None
            fields.append(f if inner is None else f.with_type(inner))
        for i in range(new.num_fields):
            f = new.field(i)
            if have.get_field_index(f.name) < 0:
                if t.is_null(f.type):
                    continue
                fields.append(_delta_field(f, table).with_name(f.name))
                grown = True
        return pa.struct(fields) if grown else None
    lists = (t.is_list, t.is_large_list)
    if any(f(have) for f in lists) and any(f(new) for f in lists):
        inner = _merged(have.value_type, new.value_type, table, f"{column}[]")
        if inner is None:
            return None
        return pa.list_(have.value_field.with_type(inner)) if t.is_list(have) else pa.large_list(inner)
    return None


def _fits(file: pa.DataType, table: pa.DataType) -> bool:
    """Whether a file's column of type ``file`` is readable as the table's ``table`` as it is: the same type, or
    a struct lacking some of the table's subfields (written before they were added: readers give nulls)."""
    t = pa.types
    if _same_type(file, table):
        return True
    if t.is_struct(file) and t.is_struct(table):
        return all(
            table.get_field_index(file.field(i).name) >= 0
            and _fits(file.field(i).type, table.field(table.get_field_index(file.field(i).name)).type)
            for i in range(file.num_fields)
        )
    lists = (t.is_list, t.is_large_list)
    if any(f(file) for f in lists) and any(f(table) for f in lists):
        return _fits(file.value_type, table.value_type)
    return False


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """The same Delta type: equal after Delta's own mapping (list item names, string widths, time units)."""
    return _widens(a, b) and _widens(b, a)


def _utc(tz: str | None) -> str | None:
    return "UTC" if tz in ("UTC", "utc", "+00:00", "Z", "Etc/UTC") else tz


def _check_partition(table: pa.Table, tp: TopicPartition) -> None:
    topics = pc.unique(table.column("kafka_topic")).to_pylist()
    partitions = pc.unique(table.column("kafka_partition")).to_pylist()
    if topics != [tp[0]] or partitions != [tp[1]]:
        raise ValueError(f"stage({tp}): the table holds records of {topics} {partitions}")


def _partition_value(column: str, value: Any) -> str | None:
    """A partition value as Delta writes it (a string) and as the folder name holds it."""
    if value is None:
        raise ValueError(f"partition column {column!r} is null")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, _dt.datetime):
        raise ValueError(f"partition column {column!r}: timestamps are not supported as partition values")
    elif isinstance(value, _dt.date):
        text = value.isoformat()
    else:
        text = str(value)
    if not _SAFE_VALUE.match(text):
        # The log names files by URI: a value needing escapes would name a folder other than the one written.
        raise ValueError(f"partition column {column!r}: value {text!r} is not a plain name")
    return text


def _stats(table: pa.Table) -> dict[str, Any]:
    """Delta file statistics: numRecords always (the stats-based count needs it), min/max and nullCount of the
    top-level columns that have an exact JSON form. A column left out only means no file skipping on it."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    t = pa.types
    for column in table.schema:
        values = table.column(column.name)
        kind = column.type
        if t.is_nested(kind):
            continue
        nulls[column.name] = values.null_count
        if values.null_count == len(values) or t.is_binary(kind) or t.is_large_binary(kind) or t.is_boolean(kind):
            continue
        if t.is_floating(kind) and pc.any(pc.is_nan(values)).as_py():
            continue
        if not (t.is_integer(kind) or t.is_floating(kind) or t.is_string(kind) or t.is_large_string(kind)) and not (
            t.is_date(kind) or t.is_timestamp(kind)
        ):
            continue
        low, high = pc.min_max(values).values()
        lo, hi = low.as_py(), high.as_py()
        if t.is_timestamp(kind):
            # Delta's stats are in milliseconds: round the bounds outwards, never inside the data.
            ms_low = pc.floor_temporal(low, unit="millisecond").as_py()
            ms_high = pc.ceil_temporal(high, unit="millisecond").as_py()
            mins[column.name], maxs[column.name] = _timestamp(ms_low, kind.tz), _timestamp(ms_high, kind.tz)
        elif t.is_date(kind):
            mins[column.name], maxs[column.name] = lo.isoformat(), hi.isoformat()
        elif isinstance(lo, str):
            if max(len(lo), len(hi)) <= _STAT_STRING_MAX:
                mins[column.name], maxs[column.name] = lo, hi
        else:
            mins[column.name], maxs[column.name] = lo, hi
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _timestamp(value: _dt.datetime, tz: str | None) -> str:
    text = value.replace(tzinfo=None).isoformat(timespec="milliseconds")
    return f"{text}Z" if tz else text


def _sql_string(value: str) -> str:
    return value.replace("'", "''")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _is_unavailable(text: str) -> bool:
    words = ("error sending request", "connection refused", "timed out", "timeout", "dns error", "503", "connect")
    return any(word in text.lower() for word in words)


def _is_refused(text: str) -> bool:
    words = ("403", "forbidden", "access denied", "accessdenied", "invalidaccesskeyid", "nosuchbucket", "permission")
    return any(word in text.lower() for word in words)


__all__ = [
    "DEFAULT_PARTITION_BY",
    "CommitAttempt",
    "DeltaConflict",
    "DeltaContention",
    "DeltaError",
    "DeltaOutcomeUnknown",
    "DeltaSetupError",
    "DeltaTableDamaged",
    "DeltaTableStore",
    "DeltaTypeConflict",
    "DeltaUnavailable",
    "RewindResult",
    "StagedFile",
    "delta_storage_options",
]
