"""The poll loop, and the one place where the order of "write the data" and "save the offsets" is decided.

    config ─► source (Kafka) ─► batcher ─► encoder (Arrow/Parquet) ─► lake (fsspec) ─► offsets
                                                                                      (Kafka group | manifest)

``Pipeline._save`` holds the three semantics side by side. Everything a crash can interrupt is ordered so
that the promise of the chosen semantics holds whichever line the process dies on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import crash
from .batcher import Batch, Batcher
from .config import Config
from .encoder import EncodedBatch, EncodedFile, Encoder, Rejected, writer_schemas
from .errors import (
    BadRecord,
    CommitFailed,
    KingestError,
    ManifestConflict,
    SetupError,
    SourceUnavailable,
    StateError,
)
from .lake import Lake
from .lanes import Lanes
from .manifest import PartitionState, new_writer_id
from .offsets import ManifestOffsets, TableOffsets, offset_store, open_table
from .output import human_size
from .reader import lake_schemas
from .sources import Source, make_source
from .types import TopicPartition

if TYPE_CHECKING:
    from .delta import DeltaTableStore, StagedFile

log = logging.getLogger("kingest.pipeline")

SWITCH_INTERVAL = 0.0005  # seconds: how long a thread holds the GIL while another waits for it (see run)
# --until-caught-up: how often the loop asks again for log end offsets the assignment could not read
ENDS_RETRY_SECONDS = 5.0


# What a record's bytes weigh against batch.max_bytes (Pipeline._weight). The memory bound (1.5 x batch.max_bytes +
# 200 MB) was measured with JSON records, whose columns take less memory than the batcher counts for them (the
# bench's records: 687 B counted a record with RECORD_OVERHEAD, their columns 0.54 of that). Compact records take
# more: the same records as Avro are counted 415 B and their columns take 0.89 of it, so a flush of as many bytes
# held 1.65 times JSON's columns (an Avro run peaked at 368 MB against JSON's 267). So a topic's bytes weigh its
# columns' share over JSON's, at least 1: as last measured on one of its batches (Encoder.expansion), else
# FIRST_WEIGHT by format.
JSON_EXPANSION = 0.54
FIRST_WEIGHT = {"avro": 2.0, "protobuf": 2.0}


@dataclass
class Stats:
    consumed: int = 0
    written: int = 0
    files: int = 0
    bytes: int = 0
    commits: int = 0
    fenced: int = 0
    skipped: int = 0  # bad records dropped (records.on_error: skip)
    dead_letters: int = 0  # bad records written to _dead_letters/ (records.on_error: dead-letter)
    started: float = field(default_factory=time.monotonic)
    lag: dict[TopicPartition, int] = field(default_factory=dict)  # log end offset - position, per partition
    # For the metrics endpoint (kingest/metrics.py reads these on each scrape):
    flushes: int = 0
    last_flush_seconds: float = 0.0  # decode + write + commit of the latest flush
    errors: Counter[str] = field(default_factory=Counter)  # by error class, whether the run survived it or not
    rebalances: Counter[str] = field(default_factory=Counter)  # assigned / revoked / lost callbacks

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def fields(self) -> dict[str, Any]:
        """The summary as data (for --log-format json)."""
        return {
            "records": self.written,
            "consumed": self.consumed,
            "files": self.files,
            "bytes": self.bytes,
            "commits": self.commits,
            "flushes": self.flushes,
            "skipped": self.skipped,
            "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        secs = self.seconds
        rate = self.written / secs if secs > 0 else 0.0
        bad = (f", {self.skipped} bad records skipped" if self.skipped else "") + (
            f", {self.dead_letters} bad records dead-lettered" if self.dead_letters else ""
        )
        return (
            f"{self.written} records in {self.files} files ({human_size(self.bytes)}) in {secs:.1f}s "
            f"({rate:,.0f} records/s), {self.commits} commits{bad}"
        )


@dataclass
class _Claimed:
    """What claiming a partition in the manifest found (Pipeline._claim_in_lake)."""

    state: PartitionState | None  # ours to write on, at this state
    conflict: ManifestConflict | None = None  # another writer claimed it after our assignment: fence it
    moved: PartitionState | None = None  # committed on since we loaded it: resume from this state


@dataclass
class _Saved:
    """How one partition's batches of a flush were saved on a lane (exactly-once), for _save to act on."""

    tp: TopicPartition
    commits: int = 0
    committed: int | None = None  # the next offset of the last batch committed
    conflict: ManifestConflict | None = None  # lost the version to another writer: fence the partition
    moved: PartitionState | None = None  # the manifest moved on since assignment: resume from it
    resume_at: int | None = None  # where, when the manifest has no offset yet (a first batch lost to a gc)
    below: tuple[int, int] | None = None  # a batch's first offset below the manifest's next (a bug): refuse


@dataclass
class _Encoded:
    """A flush, decoded and encoded: what _save writes and commits."""

    started: float
    encoded: list[tuple[Batch, list[EncodedFile]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    bad: BadRecord | None = None


def _by_partition(
    encoded: list[tuple[Batch, list[EncodedFile]]],
) -> dict[TopicPartition, list[tuple[Batch, list[EncodedFile]]]]:
    """A flush's batches per partition, each partition's in offset order (as saved: one lane a partition)."""
    out: dict[TopicPartition, list[tuple[Batch, list[EncodedFile]]]] = {}
    for batch, files in encoded:
        out.setdefault(batch.tp, []).append((batch, files))
    return out


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        source: Source | None = None,
        lake: Lake | None = None,
        until_caught_up: bool = False,
        on_progress: Callable[[Stats], None] | None = None,
    ) -> None:
        self.config = config
        self.semantics = config.semantics
        self.lake = lake or Lake(config.lake.path, config.lake.storage_options, connections=config.lake.max_concurrency)
        self.source: Source = source or make_source(config.kafka)
        self.until_caught_up = until_caught_up
        self.on_progress = on_progress
        self.writer = new_writer_id()
        self.offsets = offset_store(config, self.lake, self.writer)  # where the position lives (see offsets.py)
        # lake.format: delta: the table the data goes to (and, under exactly-once, where the offsets live too)
        self.table: DeltaTableStore | None
        if isinstance(self.offsets, TableOffsets):
            self.table = self.offsets.table
        else:
            self.table = open_table(config, self.writer) if config.lake.format == "delta" else None
        self._table_ready = False
        # exactly-once into a table: each partition's txn as this writer last read or committed it (None: none yet)
        self.expected: dict[TopicPartition, int | None] = {}
        batch = config.batch
        # Half of max_bytes triggers a flush: while that half is being encoded the next half fills, and the loop
        # waits for the encoder only when the two together reach max_bytes (see run). Bytes are weighed by topic
        # (_weight): records whose columns take more memory than JSON's count more.
        self.max_bytes = batch.max_bytes
        self._first_weight = FIRST_WEIGHT.get(config.records.format, 1.0)
        self.batcher = Batcher(batch.max_records, max(1, batch.max_bytes // 2), batch.max_age, self._weight)
        self.encoder = Encoder(
            config.records.format,
            schema=config.records.schema,
            compression=config.lake.compression,
            compress_min_bytes=config.lake.compress_min_bytes,
            partition_by=config.lake.partition_by,
            lineage={"kingest.pipeline": config.pipeline, "kingest.semantics": config.semantics},
            # A store that names its files commits them by name: names carry the writer's tag (never reused).
            file_tag=self.writer.rsplit("-", 1)[-1] if self.offsets.names_files else None,
            on_error=config.records.on_error,
            tables=self.table is not None,
            **writer_schemas(config),
        )
        self.manifests = self.offsets.manifests if isinstance(self.offsets, ManifestOffsets) else None
        self.loaded: dict[TopicPartition, PartitionState] = {}  # exactly-once: manifest state at assignment
        self.owned: dict[TopicPartition, PartitionState] = {}  # exactly-once: partitions claimed in the manifest
        # exactly-once: partitions another writer claimed after us, and since when. We stop touching them; if the
        # group still gives them to us a session timeout later, that writer was the zombie (or is gone), and we
        # take them back (see _retry_fenced).
        self.fenced: dict[TopicPartition, float] = {}
        self.fence_retry = config.kafka.session_timeout_ms / 1000
        self.targets: dict[TopicPartition, int] = {}  # --until-caught-up: log end offsets seen at assignment
        self._end_unknown: set[TopicPartition] = set()  # ... and those the broker did not give then (see _caught_up)
        self._ends_asked = 0.0  # when _caught_up last asked for them (monotonic)
        self.stats = Stats()
        self.stop_requested = False
        self._closing = False  # run() is ending: callbacks only let go of partitions (see run)
        self._callback_error: BaseException | None = None
        # Decoding and Parquet encoding run on this thread while the main thread keeps polling (pyarrow releases
        # the GIL; kafka-python's record parsing holds it). One flush at a time is being encoded; its result is
        # saved (written and committed) by the thread that owns the consumer, in flush order.
        self._encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="kingest-encode")
        # The partitions of a flush are encoded side by side on these (see _encode): pyarrow's JSON reader and
        # Parquet writer release the GIL, so each uses a core of its own.
        # How many: as the source says (Source.encoders), at most one per core.
        self._encoders = max(1, min(self.source.encoders, os.cpu_count() or 1))
        self._encoder_pool = ThreadPoolExecutor(self._encoders, thread_name_prefix="kingest-encode-batch")
        self._encoding: Future[_Encoded] | None = None
        self._encoding_bytes = 0.0
        # Partitions whose batches in that flush are not to be saved: dropped (see _drop) after it was formed.
        self._encoding_dropped: set[TopicPartition] = set()
        # The partitions of a flush are saved side by side (see Lanes and _save); stats are counted from them.
        self._lanes = Lanes(config.lake.max_concurrency)
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> Stats:
        crash.arm()
        exclusive = self.lake.probe()  # a clear error before anything is consumed
        if self.table is not None and not exclusive:
            raise SetupError(
                f"the store at {self.lake.display()} does not enforce exclusive create; two commits to the Delta "
                "table could overwrite each other there",
                "Use a store that honours If-None-Match: * (AWS S3, SeaweedFS, local disk).",
            )
        if self.offsets.names_files and not exclusive:
            raise SetupError(
                f"the store at {self.lake.display()} does not enforce exclusive create; "
                "exactly-once would be unsafe there",
                "Use a store that honours If-None-Match: * (AWS S3, SeaweedFS, local disk), or another semantics.",
            )
        if self.table is not None and self.table.exists():
            self._ensure_table(None)  # a table kingest cannot write to (partitioning, columns) fails here
        if self.encoder.infers_schema:
            # Each topic starts from the columns the lake has: a record whose field changed type since an earlier
            # run is a bad record, as it would be within one run (and the lake stays readable as one dataset).
            if self.table is not None:
                schema = self.table.record_schema(self.config.lake.partition_by) if self._table_ready else None
                self.encoder.learn({t: schema for t in self.config.kafka.topics} if schema is not None else {})
            else:
                self.encoder.learn(lake_schemas(self.lake, self.config.kafka.topics, self.manifests))
        self.source.open(self._on_assigned, self._on_revoked, self._on_lost)
        lag_updated = 0.0
        switch_interval = sys.getswitchinterval()
        # The polling thread (kafka-python parses records in Python) holds the GIL nearly all the time, and the
        # encoder thread needs it back after every pyarrow call: at CPython's default 5 ms hand-over it waited up
        # to 5 ms each time, and the loop then waited for the encoder (measured: 0.5 ms gives ~20% more records
        # per second; see docs/performance.md).
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            while not self.stop_requested:
                if self.until_caught_up and self._caught_up():
                    self._flush(self.batcher.due(everything=True), wait=True)
                    if self._caught_up():  # saving can move a position back (exactly-once: a stale claim)
                        break
                polled = self.source.poll(min(1.0, self.batcher.seconds_until_due()))
                self._raise_callback_error()
                if time.monotonic() - lag_updated >= 1.0:
                    lag_updated = time.monotonic()
                    self._update_lag()
                    self._retry_fenced()
                if polled:
                    crash.point("after-poll")
                    for tp, records in polled.items():
                        if records and tp not in self.fenced:
                            self.batcher.add(tp, records)
                            self.stats.consumed += len(records)
                if self._encoding is not None and (
                    not polled or self._encoding.done() or self.batcher.load + self._encoding_bytes >= self.max_bytes
                ):
                    # Save what the encoder finished; wait for it when idle (nothing to overlap with), and rather
                    # than hold more than max_bytes.
                    self._drain()
                # The age check runs on every turn, records or not: an idle topic still gets its batch written.
                due = self.batcher.due()
                if due:
                    self._flush(due)
            self._flush(self.batcher.due(everything=True), wait=True)
        except KingestError as exc:
            self.stats.errors[type(exc).__name__] += 1
            if self.stats.consumed:
                exc.stopped_part_way()
            raise
        finally:
            # From here on a rebalance callback saves nothing (kafka-python's close() revokes the partitions):
            # a run that stops cleanly saved everything above, and one that failed must save nothing after.
            self._closing = True
            sys.setswitchinterval(switch_interval)
            self._encoder_thread.shutdown(wait=False, cancel_futures=True)
            self._encoder_pool.shutdown(wait=False, cancel_futures=True)
            self._lanes.shutdown()
            self.source.close()
        return self.stats

    def request_stop(self) -> None:
        """Finish the current turn, write and commit what is buffered, then return from run()."""
        self.stop_requested = True

    def _weight(self, topic: str) -> float:
        """What a byte of this topic's records counts against batch.max_bytes (see JSON_EXPANSION)."""
        measured = self.encoder.expansion.get(topic)
        return self._first_weight if measured is None else max(1.0, measured / JSON_EXPANSION)

    def _caught_up(self) -> bool:
        assigned = self.source.assignment()
        # Targets the assignment could not read (see _end_offsets): asked again, every ENDS_RETRY_SECONDS at most
        # (an ask may take a request timeout, and the loop polls no partition meanwhile).
        missing = [tp for tp in assigned if tp not in self.targets and tp in self._end_unknown]
        if missing and time.monotonic() - self._ends_asked >= ENDS_RETRY_SECONDS:
            self._ends_asked = time.monotonic()
            found = self._end_offsets(missing)
            self.targets.update(found)
            self._end_unknown.difference_update(found)
        # A fenced partition is not caught up: it is taken back, or leaves with the next rebalance.
        if not assigned or any(tp not in self.targets or tp in self.fenced for tp in assigned):
            return False
        return all(self.source.position(tp) >= self.targets[tp] for tp in assigned)

    def _update_lag(self) -> None:
        """Records behind, per assigned partition (see Source.lag: no request, no wait; a partition not
        fetched yet has no lag to show)."""
        assigned = self.source.assignment()
        for tp in list(self.stats.lag):
            if tp not in assigned:
                del self.stats.lag[tp]
        for tp in assigned:
            lag = self.source.lag(tp)
            if lag is not None:
                self.stats.lag[tp] = lag

    # ------------------------------------------------------------------------------------------ flushing

    def _flush(self, tps: list[TopicPartition], wait: bool = False) -> None:
        """Hand the due batches to the encoder thread, then save the flush it was encoding before, if any: the
        encoder works on this flush while that one is saved (a wide topic's many small files take longer to
        encode than a flush takes to poll). Saves keep flush order. What the earlier flush's outcome drops for a
        partition (a fence, a manifest that moved on, a refused commit) is dropped from this flush too (_drop):
        its batches of that partition follow what was dropped. ``wait``: also save this flush before returning
        (stopping, revocation)."""
        previous, dropped = self._take_encoding()
        batches = [part for batch in self.batcher.pop(tps) for part in self.batcher.split(batch)]
        if batches:
            self._encoding = self._encoder_thread.submit(self._encode, batches)
            self._encoding_bytes = self.batcher.weighed(batches)
        if previous is not None:
            try:
                self._save_encoded(previous, dropped)
            except BaseException:
                # The run ends here. Nothing of this flush may be saved after it (a save cut short, or the
                # bad record that stopped it, would leave a gap before it), not even by a callback on the way out.
                self._take_encoding()
                raise
        if wait:
            self._drain()

    def _take_encoding(self) -> tuple[Future[_Encoded] | None, set[TopicPartition]]:
        """The flush being encoded (None: none) and the partitions dropped since it was formed; no flush is being
        encoded after this."""
        job, dropped = self._encoding, self._encoding_dropped
        self._encoding, self._encoding_bytes, self._encoding_dropped = None, 0.0, set()
        return job, dropped

    def _drop(self, tps: Iterable[TopicPartition]) -> None:
        """Drop what is buffered for these partitions (the consumer goes back to a saved offset, or they are not
        ours any more): in the batcher, and in the flush being encoded, formed before this. Its batches of them
        follow what is dropped here: saving one would commit past a gap."""
        tps = list(tps)
        self.batcher.drop(tps)
        if self._encoding is not None:
            self._encoding_dropped.update(tps)

    def _encode(self, batches: list[Batch]) -> _Encoded:
        """Decode and encode every batch of a flush (encoder thread: no I/O, no shared state but the encoder's).
        Under `records.on_error: fail` a bad record stops its partition's batches there: the good records before
        it are kept, and the error is raised once they are saved. Under skip and dead-letter the bad records are
        settled with their batch (a dead-letter file is one more file of the batch, written and committed by
        _save like the others)."""
        started = time.monotonic()
        out = _Encoded(started=started)
        # Partitions are encoded side by side, each partition's batches in offset order on one thread: the
        # encoder's schema evolves record after record within a partition (a field's first type wins; later
        # records that conflict are the bad ones), whatever the timing.
        by_tp: dict[TopicPartition, list[Batch]] = {}
        for batch in batches:
            by_tp.setdefault(batch.tp, []).append(batch)
        self.encoder.prepare(batches)  # a topic's small batches read in one go, where that changes nothing
        if self._encoders > 1 and len(by_tp) > 1:
            results = list(self._encoder_pool.map(self._encode_partition, by_tp.values()))
        else:
            results = [self._encode_partition(parts) for parts in by_tp.values()]
        for result in (r for partition in results for r in partition):
            if len(result.batch):
                out.encoded.append((result.batch, result.files))
            out.rejected += result.rejected
            if result.error is not None:
                out.bad = out.bad or result.error
        return out

    def _encode_partition(self, batches: list[Batch]) -> list[EncodedBatch]:
        """One partition's batches of a flush, in order, up to and including the first that stops at a bad
        record (records.on_error: fail): the later ones are not encoded, nor saved."""
        results = []
        for batch in batches:
            results.append(self.encoder.encode_batch(batch))
            if results[-1].error is not None:
                break
        return results

    def _drain(self, lost: Collection[TopicPartition] = ()) -> None:
        """Save the flush the encoder thread is working on, once it is done. Nothing is decided before all of a
        flush is decoded, so a bad record stops the run before any offset past it is committed, whatever the
        semantics. ``lost``: partitions another member owns now: their batches are dropped, not saved."""
        job, dropped = self._take_encoding()
        if job is not None:
            self._save_encoded(job, dropped | set(lost))

    def _save_encoded(self, job: Future[_Encoded], gone: Collection[TopicPartition]) -> None:
        """Save a flush once the encoder is done with it, but for the batches of ``gone`` partitions (lost, or
        dropped since the flush was formed); then raise its bad record, if one stopped it."""
        result = job.result()
        encoded = [(b, f) for b, f in result.encoded if b.tp not in gone]
        self._save(encoded)
        rejected = [r for r in result.rejected if (r.topic, r.partition) not in gone]
        if rejected and self.config.records.on_error == "skip":
            self.stats.skipped += len(rejected)
            for r in rejected[:20]:
                log.warning("skipped bad record %s[%d]@%d: %s", r.topic, r.partition, r.offset, r.reason)
            if len(rejected) > 20:
                log.warning("skipped %d more bad records in this flush", len(rejected) - 20)
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.monotonic() - result.started
        if self.on_progress is not None:
            self.on_progress(self.stats)
        if result.bad is not None and (result.bad.topic, result.bad.partition) not in gone:
            raise result.bad

    def _save(self, encoded: list[tuple[Batch, list[EncodedFile]]]) -> None:
        """Write the batches and save their offsets, in the order the semantics promises."""
        if not encoded:
            return
        offsets = {batch.tp: batch.next_offset for batch, _ in encoded}

        if self.semantics == "at-most-once":
            # Offsets first. A crash after the commit loses these records; none is ever written twice.
            firsts: dict[TopicPartition, int] = {}
            for batch, _ in encoded:
                firsts.setdefault(batch.tp, batch.first_offset)
            if not self._commit_kafka(offsets, resume=firsts):
                return  # refused: whoever owns the partitions next resumes from the old offsets
            crash.point("after-commit")
            self._write(encoded)

        elif self.semantics == "at-least-once":
            # Data first. A crash before the commit replays these records; none is ever lost.
            self._write(encoded)
            crash.point("after-write")
            self._commit_kafka(offsets, resume=offsets)

        elif self.table is not None:
            # exactly-once into a Delta table: the flush's files and every partition's next offset in one commit.
            self._save_in_table(encoded)

        else:
            # exactly-once, per partition, in ManifestStore.save's order: announce the files, write them, then
            # commit the manifest version that names them and the next offset, by exclusive create. Until that
            # create succeeds the files are not part of the lake (recovery removes them); after it, replay
            # starts past them. The partitions are saved side by side (lake.max_concurrency), each its batches
            # in order: a crash with some partitions committed and others not leaves each one at a version of
            # its own, which is all a partition's manifest promises.
            committed = {}
            # Every lane has ended before anything below runs; the consumer and the batcher are touched here, on
            # the thread that owns them.
            for saved in self._lanes.map(self._save_partition, _by_partition(encoded).items()):
                tp = saved.tp
                self.stats.commits += saved.commits
                if saved.committed is not None:
                    committed[tp] = saved.committed
                if saved.conflict is not None:
                    self._fence(tp, saved.conflict)  # its files are deleted: never committed, named by us
                elif saved.moved is not None:
                    self._resume_from(tp, saved.moved, saved.resume_at)
                elif saved.below is not None:
                    # Never commit an offset twice: only a bug could get here, and refusing is the safe answer.
                    log.error("%s[%d]: batch starts at %d, below the manifest's %d; dropped", *tp, *saved.below)
                    self._drop([tp])
                    self.source.seek(tp, saved.below[1])
            # Kafka's committed offsets follow the manifest, for lag tools only; they are never read back, so
            # this commit does not wait out a broker outage (the data and the manifest need no broker), and its
            # failure changes nothing here: the manifest is committed, the buffered records stay as they are.
            self._commit_lag(committed)

    def _save_partition(self, item: tuple[TopicPartition, list[tuple[Batch, list[EncodedFile]]]]) -> _Saved:
        """exactly-once: one partition's batches of a flush, in order, on a lane (lake I/O only: what the consumer
        must do about the outcome is returned, and done by _save). Once one batch is dropped, so are the later
        ones: committing one of them would move the manifest past the dropped records (a loss)."""
        tp, batches = item
        saved = _Saved(tp)
        assert self.manifests is not None
        for batch, files in batches:
            claimed = self._claim_in_lake(tp)
            if claimed.conflict is not None or claimed.moved is not None:
                saved.conflict, saved.moved = claimed.conflict, claimed.moved
                return saved
            state = claimed.state
            if state is None:
                return saved  # not ours (any more): drop, the owner resumes from the manifest
            if state.next_offset is not None and batch.first_offset < state.next_offset:
                saved.below = (batch.first_offset, state.next_offset)
                return saved
            try:
                self.owned[tp] = self.manifests.save(
                    state,
                    operation="write",
                    owner=self.writer,
                    next_offset=batch.next_offset,
                    files=files,
                    write=self._put,
                )
            except ManifestConflict as conflict:
                latest = self.manifests.load(*tp)
                if latest.next_offset == state.next_offset and self.manifests.only_maintenance(
                    *tp, after=state.version, upto=latest.version
                ):
                    # A compaction or a gc fence went in first: it moved no offset and claimed nothing, so the
                    # partition is still ours. Resume on top of it (this batch's records are consumed again).
                    self.owned[tp] = latest
                    saved.moved, saved.resume_at = latest, batch.first_offset
                else:
                    saved.conflict = conflict
                return saved
            saved.commits += 1
            saved.committed = batch.next_offset
        return saved

    def _write(self, encoded: list[tuple[Batch, list[EncodedFile]]]) -> None:
        """at-most-once and at-least-once: every file of the flush, the partitions side by side (into a Delta
        table: staged side by side, then appended in one commit without txn: the group holds the offsets)."""
        if self.table is not None:
            files = self._stage(encoded)
            if files:
                self._commit_table(files, {}, {}, append=True)
            return
        self._lanes.map(
            self._put, [[f for _, files in batches for f in files] for batches in _by_partition(encoded).values()]
        )

    # ------------------------------------------------------------------------------------------ Delta table

    def _ensure_table(self, schema: Any) -> None:
        """The table exists and kingest can write it: created from the first flush's columns (``schema``) when
        missing, in a commit of its own (of two writers creating it at once, one wins; the other loads it)."""
        from .delta import DEFAULT_PARTITION_BY

        assert self.table is not None
        if self._table_ready:
            return
        # kafka_topic, kafka_partition, then lake.partition_by's date (and hour) from the record timestamps
        self.table.ensure_table(schema, [*DEFAULT_PARTITION_BY, *map(str, self.config.lake.partition_by)])
        self._table_ready = True

    def _stage(self, encoded: list[tuple[Batch, list[EncodedFile]]]) -> list[StagedFile]:
        """Write the flush's records as Parquet files under the table root, the partitions side by side, cast to
        the table's types (a type conflict stops the run before anything is committed). No reader sees them
        until a commit names them; a crash leaves them untracked, for gc."""
        assert self.table is not None
        tables = [f.table for _, files in encoded for f in files if f.table is not None]
        self._ensure_table(tables[0].schema if tables else None)  # a txn-only commit needs a table too
        if not tables:
            return []
        table = self.table
        # Read here (the lanes do not touch the table), before any file is written: the fence epoch too.
        schema, partition_by, epoch = table.schema(), table.partition_by, table.fence_epoch()

        def put(path: str, data: bytes) -> None:
            self.lake.put(path, data, crash_midway=True)

        def stage(batches: list[tuple[Batch, list[EncodedFile]]]) -> list[StagedFile]:
            staged = []
            for batch, files in batches:
                for f in files:
                    if f.table is not None:
                        staged += table.stage(
                            batch.tp, f.table, schema=schema, partition_by=partition_by, put=put, epoch=epoch
                        )
            return staged

        staged = [f for part in self._lanes.map(stage, list(_by_partition(encoded).values())) for f in part]
        with self._stats_lock:
            self.stats.files += len(staged)
            self.stats.bytes += sum(f.add.size for f in staged)
            self.stats.written += sum(f.rows for f in staged)
        return staged

    def _commit_table(
        self,
        files: list[StagedFile],
        next_offsets: dict[TopicPartition, int],
        expected: dict[TopicPartition, int | None],
        append: bool = False,
    ) -> int:
        """One commit of the table (checked against ``expected``: exactly-once; ``append``: unchecked), waiting out an
        unreachable store as the lake does (lake retries): each attempt is settled by the store before the next
        (see DeltaTableStore.commit), so a retry never commits the files twice."""
        from .delta import CommitAttempt, DeltaContention, DeltaOutcomeUnknown, DeltaUnavailable

        assert self.table is not None
        deadline = time.monotonic() + self.lake.retry_seconds
        wait = 0.5
        attempt = CommitAttempt()  # every retry of this commit carries its id (see CommitAttempt)
        while True:
            try:
                if append:
                    return self.table.append(files, attempt)
                return self.table.commit(files, next_offsets, expected, attempt)
            except (DeltaUnavailable, DeltaOutcomeUnknown, DeltaContention) as exc:
                # Nothing of it landed (as far as the log showed), or it is unknown. The retry is the same attempt:
                # an entry of it that landed late is found by its id, and then is the commit.
                self.stats.errors[type(exc).__name__] += 1
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("%s; trying again in %.1fs", exc.message, wait)
                time.sleep(wait)
                wait = min(wait * 2, 10.0)

    def _save_in_table(self, encoded: list[tuple[Batch, list[EncodedFile]]]) -> None:
        """exactly-once into a Delta table: stage the flush's files, then one commit that adds them and moves each
        partition's txn to the offset after its last batch, if every txn is still the one this writer last read
        or committed. The commit is the save: before it nothing is in the table (a crash leaves untracked files,
        and the restart resumes from the txns); after it, the txns say where to resume.

        A partition whose txn moved (another writer committed it: a rebalance, a zombie that resumed, a rewind)
        is not ours at that offset: its records are dropped and the consumer resumes from the table's txn. The
        other partitions' files go in the next commit attempt."""
        from .delta import DeltaConflict

        assert self.table is not None
        by_tp = _by_partition(encoded)
        for tp, batches in list(by_tp.items()):
            have = self.expected.get(tp)
            if tp not in self.expected or (have is not None and batches[0][0].first_offset < have):
                # Not assigned any more, or below the table's offset (only a bug could get here): never commit it.
                log.error("%s[%d]: batch at %d not saved (table offset %s)", *tp, batches[0][0].first_offset, have)
                del by_tp[tp]
                self._drop([tp])
                if tp in self.expected:
                    self._seek_offset(tp, have)
        if not by_tp:
            return
        files = self._stage([item for batches in by_tp.values() for item in batches])
        crash.point("after-write")
        next_offsets = {tp: batches[-1][0].next_offset for tp, batches in by_tp.items()}
        while next_offsets:
            expected = {tp: self.expected[tp] for tp in next_offsets}
            try:
                self._commit_table(files, next_offsets, expected)
            except DeltaConflict as conflict:
                gone = [tp for tp, (_, found) in conflict.taken.items() if found is None]
                if gone:
                    raise StateError(
                        f"the Delta table at {self.table.display()} no longer holds an offset for "
                        + ", ".join(f"{t}[{p}]" for t, p in gone)
                        + " that this run committed or read: the table was replaced or its txns removed",
                        "Nothing after that was committed. Check the table (its history: DeltaTable.history()); "
                        "a run resumes per kafka.auto_offset_reset from a table without offsets.",
                    ) from None
                for tp, (_, found) in conflict.taken.items():
                    self.stats.fenced += 1
                    log.warning(
                        "%s[%d]: the Delta table's offset moved to %s (another writer or a rewind); dropping what is "
                        "buffered and resuming from there",
                        *tp,
                        found,
                    )
                    self.expected[tp] = found
                    self._drop([tp])
                    self._seek_offset(tp, found)
                    next_offsets.pop(tp, None)
                files = [f for f in files if f.tp in next_offsets]
                continue
            self.stats.commits += 1
            self.expected.update(next_offsets)
            break
        self._commit_lag(next_offsets)

    def _seek_offset(self, tp: TopicPartition, offset: int | None) -> None:
        if offset is not None:
            self.source.seek(tp, offset)
        elif self.config.kafka.auto_offset_reset == "earliest":
            self.source.seek_to_beginning(tp)
        else:
            self.source.seek_to_end(tp)

    def _put(self, files: Sequence[EncodedFile]) -> None:
        """Write files one after another (on a lane: never hands work to the lanes itself)."""
        for f in files:
            self.lake.put(f.path, f.data, crash_midway=True)
            with self._stats_lock:
                if f.kind == "dead-letter":
                    self.stats.dead_letters += f.rows
                    log.warning("%s[%d]: %d bad record(s) written to %s", f.topic, f.partition, f.rows, f.path)
                    continue
                self.stats.files += 1
                self.stats.bytes += len(f.data)
                self.stats.written += f.rows

    def _commit_kafka(self, offsets: dict[TopicPartition, int], resume: dict[TopicPartition, int]) -> bool:
        """at-most-once and at-least-once: commit ``offsets`` to the consumer group, waiting out an outage. On a
        refusal (the group moved on: a rebalance) the partitions are given up until the group assigns them
        again: what is buffered for them is dropped, and the consumer goes back to ``resume`` (the first offset
        not written), so that nothing is skipped if the group hands them back to this instance."""
        if not offsets:
            return True
        try:
            self.source.commit(offsets, wait=True)
        except CommitFailed as exc:
            log.warning("%s", exc)
            self.stats.errors["CommitFailed"] += 1
            self._discard(resume)
            return False
        self.stats.commits += 1
        return True

    def _commit_lag(self, offsets: dict[TopicPartition, int]) -> None:
        """exactly-once: the group's offsets follow the manifest, for lag tools only. Best effort."""
        if not offsets:
            return
        try:
            self.source.commit(offsets, wait=False)
        except CommitFailed as exc:
            log.info("the consumer group's offsets (for lag tools only) were not updated: %s", exc)

    def _discard(self, resume: dict[TopicPartition, int]) -> None:
        """Drop what is buffered for these partitions and move the consumer back to ``resume`` (the first offset
        not saved) where it still holds the partition: dropping records without seeking back would let the
        next batch start past them, and its commit would skip them."""
        self._drop(resume)
        assigned = self.source.assignment()
        for tp, offset in resume.items():
            if tp in assigned:
                self.source.seek(tp, offset)

    def _fence(self, tp: TopicPartition, conflict: ManifestConflict) -> None:
        """Another writer owns this partition now (we are a zombie for it): stop touching it."""
        log.warning("%s; dropping its buffer", conflict)
        self.stats.fenced += 1
        self.fenced[tp] = time.monotonic()
        self.owned.pop(tp, None)
        if self.manifests is not None:
            self.manifests.forget(*tp)
        self._drop([tp])
        self.source.pause([tp])

    # ------------------------------------------------------------------------------------------ rebalance

    def _on_assigned(self, tps: list[TopicPartition]) -> None:
        # kafka-python swallows exceptions raised in rebalance callbacks: keep them for the loop to raise.
        if tps:
            self.stats.rebalances["assigned"] += 1
        if self._closing:
            return
        try:
            for tp in tps:
                self.fenced.pop(tp, None)
            # kafka-python 3 keeps a partition's state (paused flag, position) when a rebalance hands it back to
            # the same member: a partition paused by _fence must fetch again now that it is ours.
            self.source.resume(tps)
            if not self.offsets.names_files and tps:
                # The group's committed offsets say where to resume (see Source.seek_to_committed).
                self.source.seek_to_committed(tps)
            if isinstance(self.offsets, TableOffsets) and tps:
                # The table's txns, not the consumer group, say where to resume.
                assert self.table is not None
                for tp, offset in self.table.positions(tps).items():
                    self.expected[tp] = offset
                    self._seek_offset(tp, offset)
            if tps:
                crash.point("after-assign")
            loaded: list[PartitionState] = []
            if self.manifests is not None:
                # The partitions' manifests are read, and claimed, side by side (a wide topic on S3). Read before
                # the log end offsets, which may take a request timeout: a writer assigned a partition after us
                # while we waited (our session expired) claims it after this read, and our claim then fails
                # (we are the zombie) instead of going on top of its claim.
                manifests = self.manifests
                loaded = self._lanes.map(lambda tp: manifests.load(*tp), tps)
            wanted = tps and (self.manifests is not None or self.until_caught_up)
            ends = self._end_offsets(tps) if wanted else {}
            if self.manifests is not None:
                claim = []
                for tp, state in zip(tps, loaded, strict=True):
                    # The manifest, not the consumer group, says where to resume.
                    self.loaded[tp] = state
                    self._seek_to(tp, state)
                    # Claim at once when there is something to consume: the claim fences the previous owner,
                    # so a zombie of it (frozen past its session timeout, holding records it fetched) can
                    # commit nothing more. An idle partition is claimed at its first commit instead (see
                    # _claim_in_lake), so that a run with nothing new to write writes nothing: a zombie holds no record
                    # of it that the manifest lacks. (One that resumes and commits records produced since is
                    # not fenced: its commits are valid, and our claim goes on top of them, or backs off until
                    # the next rebalance if the zombie claimed first.)
                    # A log end the broker did not give (see _end_offsets): claimed at once, as a partition
                    # with something to consume (a claim is always safe; it costs a manifest version).
                    end = ends.get(tp)
                    start = state.next_offset
                    if start is None:
                        start = 0 if self.config.kafka.auto_offset_reset == "earliest" else end
                    if end is None or start is None or end > start:
                        claim.append(tp)
                for tp, claimed in zip(claim, self._lanes.map(self._claim_in_lake, claim), strict=True):
                    self._settle_claim(tp, claimed)
            if self.until_caught_up:
                self.targets.update({tp: ends[tp] for tp in tps if tp not in self.targets and tp in ends})
                self._end_unknown.update(tp for tp in tps if tp not in self.targets)
        except BaseException as exc:
            self._callback_error = self._callback_error or exc
            self.fenced.update(dict.fromkeys(tps, time.monotonic()))

    def _end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The log end offsets of newly assigned partitions, or none while the broker does not give them within
        the request timeout (a broker stalled again and again): a run goes on without them rather than stop.
        exactly-once then claims the partitions at once; --until-caught-up asks again from the loop (_caught_up),
        and a partition without its target is not caught up. An error that asking again cannot mend (refused,
        say) is not a SourceUnavailable: it stops the run."""
        try:
            return self.source.end_offsets(tps)
        except SourceUnavailable as exc:
            log.warning("%s; going on without them (asked again for --until-caught-up)", exc)
            self.stats.errors[type(exc).__name__] += 1
            return {}

    def _seek_to(self, tp: TopicPartition, state: PartitionState) -> None:
        if state.next_offset is not None:
            self.source.seek(tp, state.next_offset)
        elif self.config.kafka.auto_offset_reset == "earliest":
            self.source.seek_to_beginning(tp)
        else:
            self.source.seek_to_end(tp)

    def _settle_claim(self, tp: TopicPartition, claimed: _Claimed) -> PartitionState | None:
        """exactly-once: what the consumer does about a claim's outcome (on the thread that owns it): the state to
        write on, or None when the partition is not ours to write (fenced, or resumed from a state that moved
        on since assignment)."""
        if claimed.conflict is not None:
            self._fence(tp, claimed.conflict)
        elif claimed.moved is not None:
            self._resume_from(tp, claimed.moved)
        return claimed.state

    def _claim_in_lake(self, tp: TopicPartition) -> _Claimed:
        """The claim's lake side (no consumer call: it runs on a lane too). The claim (an exclusive create of the
        next version) fences every earlier owner, and only then are files they announced but never committed
        deleted: none of them can be committed any more. If another writer claimed the partition since our
        assignment, the group gave it to that writer after us: we are the zombie, and must neither claim nor
        write (``conflict``). If plain writes moved the manifest on since we loaded it, what we buffered starts
        at a stale offset (``moved``: resume from there)."""
        if tp in self.fenced or tp not in self.loaded:
            return _Claimed(None)
        if tp in self.owned:
            return _Claimed(self.owned[tp])
        assert self.manifests is not None
        try:
            state = self.manifests.claim(tp[0], tp[1], self.writer, since=self.loaded[tp])
        except ManifestConflict as conflict:
            return _Claimed(None, conflict=conflict)
        crash.point("after-claim")
        removed = self.manifests.recover(state)
        if removed:
            # files of settled versions the manifest does not name: an interrupted writer's, or the inputs a
            # compaction or rewind took out (when this claim's recovery comes before the compaction's own)
            log.info("%s[%d]: removed %d file(s) that no manifest version names any more", *tp, len(removed))
        self.owned[tp] = state
        if state.next_offset != self.loaded[tp].next_offset:
            return _Claimed(None, moved=state)
        return _Claimed(state)

    def _resume_from(self, tp: TopicPartition, state: PartitionState, at: int | None = None) -> None:
        """Another writer committed after we loaded the state (or a compaction or gc before our commit): drop what
        we buffered (it starts at a stale offset, or was not saved) and resume from the manifest; from ``at``
        (the dropped batch's first offset) when the manifest has no offset yet: auto_offset_reset would skip it."""
        resume = state.next_offset if state.next_offset is not None or at is None else at
        log.warning("%s[%d]: the manifest moved on; resuming from %s", *tp, resume)
        self.loaded[tp] = state
        self._drop([tp])
        if resume is None:
            self._seek_to(tp, state)
        else:
            self.source.seek(tp, resume)

    def _retry_fenced(self) -> None:
        """Take back a partition fenced a session timeout ago that the group still assigns to us. The writer whose
        claim fenced us was then the zombie (a resumed instance claims before its consumer notices it left the
        group; it does within a session timeout), or it claimed and died, or a rewind committed meanwhile: no
        rebalance would ever come to give the partition back, and it would stay unconsumed. Reload the manifest
        and resume from it; the next batch claims again (a real owner's claim since then fences us again)."""
        if not self.fenced or self.manifests is None:
            return
        now = time.monotonic()
        assigned = self.source.assignment()
        for tp, since in list(self.fenced.items()):
            if now - since < self.fence_retry or tp not in assigned:
                continue
            del self.fenced[tp]
            self.owned.pop(tp, None)
            self._drop([tp])
            state = self.loaded[tp] = self.manifests.load(*tp)
            self._seek_to(tp, state)
            self.source.resume([tp])
            log.warning(
                "%s[%d]: still assigned to this instance; taking it back from the manifest's %s", *tp, state.next_offset
            )

    def _on_revoked(self, tps: list[TopicPartition]) -> None:
        if tps:
            self.stats.rebalances["revoked"] += 1
        try:
            # Still the owner until this returns: save what is buffered for these partitions (unless the run is
            # ending: then nothing is saved any more, see run).
            if not self._closing:
                self._flush([tp for tp in tps if tp in self.batcher.batches], wait=True)
        except BaseException as exc:
            self._callback_error = self._callback_error or exc
        finally:
            self._drop(tps)
            for tp in tps:
                self.owned.pop(tp, None)
                self.loaded.pop(tp, None)
                self.expected.pop(tp, None)
                if self.manifests is not None:
                    self.manifests.forget(*tp)

    def _on_lost(self, tps: list[TopicPartition]) -> None:
        """The group moved on without us (we were too slow or frozen): another member already owns these
        partitions, so nothing of them may be committed. Drop what is buffered."""
        log.warning("lost partitions %s to the group; dropping their buffers", ", ".join(f"{t}[{p}]" for t, p in tps))
        if tps:
            self.stats.rebalances["lost"] += 1
        try:
            if not self._closing:
                self._drain(lost=set(tps))  # the flush being encoded may hold partitions we still own
        except BaseException as exc:
            self._callback_error = self._callback_error or exc
        self._drop(tps)
        for tp in tps:
            self.owned.pop(tp, None)
            self.loaded.pop(tp, None)
            self.expected.pop(tp, None)
            if self.manifests is not None:
                self.manifests.forget(*tp)

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error


def install_signal_handlers(pipeline: Pipeline, notify: Callable[[str], Any] | None = None) -> None:
    """SIGTERM or a first Ctrl-C: stop cleanly (write and commit what is buffered). A second Ctrl-C: exit at
    once, which is a crash as far as the data is concerned, and every semantics is built to survive one."""

    def stop(signum: int, frame: Any) -> None:
        if pipeline.stop_requested and signum == signal.SIGINT:
            os._exit(130)
        pipeline.request_stop()
        if notify is not None:
            notify("stopping: writing and committing what is buffered (Ctrl-C again to exit at once)")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


__all__ = ["Pipeline", "Stats", "install_signal_handlers", "KingestError"]
