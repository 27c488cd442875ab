"""A deterministic simulation of the exactly-once protocol: the code users run, interleaved by a seeded scheduler.

What runs is kingest's own ``Pipeline`` (``_on_assigned``/``_on_revoked``/``_on_lost``, ``_flush``/``_drain``
and so ``_save``/``_claim``/``_fence``), ``ManifestStore`` and ``Lake``, for several writers ("processes")
sharing one lake: a private in-memory fsspec filesystem. Only these are stand-ins:

- the Kafka consumer (``SimSource``): positions, seek, pause, a group that hands partitions around, and a
  commit that sometimes fails (no answer in time, or the partition moved);
- the Parquet encoder (``Pipeline.encoder.encode_batch``): files with tiny bytes that spell their range, but
  real names (``kingest.encoder.file_name`` with the writer's tag) and real metadata;
- the encoder thread: a flush is encoded inline, on the writer's own thread.

Each writer runs its current action (a rebalance callback, a poll, a flush, a drain) on its own thread. Every
lake operation (put, create, read, read_many, listdir, find, and each file a delete removes) and every Kafka
commit is a *step*: the thread stops there and waits for a baton the scheduler hands to one thread at a time,
so a run is a function of its seed. FoundationDB's simulation is the model: real code, one seeded random
source, faults chosen by it and biased towards the rare cases (long pauses in the middle of a protocol).

Faults, all drawn from the seed: a pause (a writer is not scheduled for many steps: a GC pause, SIGSTOP), a
crash at any step (``Crash``, a BaseException, is raised from the step hook; the process is gone, and a new
Pipeline with a new writer id joins later), rebalances (cooperative: ``_on_revoked`` then ``_on_assigned``; or
the group moves on without a slow or paused member, which then gets ``_on_lost`` or nothing and resumes its
interrupted action with stale state), rewinds (``ManifestStore.rewind`` on a freshly loaded state, as
``kingest rewind`` does), and new records produced. Checkpoints are written every ``CHECKPOINT_EVERY`` versions,
lowered here so that they happen often.

Invariants (checked after every step that changed the store, reading the store directly, as Jepsen's checkers
read a history): for every partition, in the latest state ``ManifestStore.load`` gives, every named file exists
and holds what its entry says; no offset is in two live files; the live files cover every offset below
``next_offset`` and none at or past it (offsets are dense here); ``next_offset`` moves back only through a
``rewind`` version; the state loaded through checkpoints equals the replay of every version. At the end every
writer stops and a fresh one must catch up to the end of every partition (liveness). A violation raises
``Violation`` with the seed and the last steps.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import re
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

try:
    import greenlet
except ImportError:  # the simulation runs on threads then (slower, same runs)
    greenlet = None

from kingest import compact as compact_module
from kingest import config as config_module
from kingest import gc as gc_module
from kingest import manifest as manifest_module
from kingest.batcher import Batch, Record, TopicPartition
from kingest.encoder import EncodedBatch, EncodedFile
from kingest.errors import CommitFailed, KingestError, ManifestConflict, SourceUnavailable
from kingest.lake import Lake
from kingest.layout import file_name
from kingest.manifest import ManifestStore, PartitionState
from kingest.pipeline import Pipeline

TOPIC = "t"
PIPELINE = "sim"
ROOT = "/sim"
TRACE_LINES = 80
STEPS = 150  # steps of a run (make simulate's default)
LIVENESS = 1.0  # the fraction of runs that end with the liveness check (make simulate's default)
MUTATING = frozenset({"put", "create", "delete"})
_PARTITION = re.compile(r"partition=(\d+)")

CONFIG = config_module.parse(
    f"""
pipeline: {PIPELINE}
kafka: {{bootstrap_servers: "unused:9092", topics: [{TOPIC}], group_id: sim, auto_offset_reset: earliest}}
lake: {{path: "memory://sim"}}
batch: {{max_records: 3}}
semantics: exactly-once
"""
)


class Crash(BaseException):
    """Raised from a step hook: the process dies at this step (a BaseException, as SIGKILL is no error)."""


class Violation(AssertionError):
    def __init__(self, seed: int | None, what: str, trace: Iterable[str], repro: str = "") -> None:
        self.seed = seed
        self.what = what
        self.trace = list(trace)
        self.repro = repro
        super().__init__(self.report())

    def report(self) -> str:
        head = f"seed {self.seed}: {self.what}" if self.seed is not None else self.what
        repro = f"\nreproduce: {self.repro}" if self.repro else ""
        return f"{head}{repro}\nlast {len(self.trace)} steps (step, actor, operation, path):\n" + "\n".join(self.trace)


# ---------------------------------------------------------------------------------------------- stand-ins


class SimMemoryFS(MemoryFileSystem):
    """fsspec's MemoryFileSystem, with a store of its own (not the class-wide one), and ``_strip_protocol``
    memoized: a pure function of the path, called a hundred thousand times a second here."""

    stripped: dict[str, str] = {}  # emptied by each World

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if type(path) is not str:
            return super()._strip_protocol(path)
        found = cls.stripped.get(path)
        if found is None:
            found = cls.stripped[path] = super()._strip_protocol(path)
        return found


class SimLake(Lake):
    """The real Lake on a private MemoryFileSystem; ``hook(op, path)`` runs before each operation (a step)."""

    def __init__(self, fs: SimMemoryFS, hook: Callable[[str, str], None] | None = None) -> None:
        self.url = "memory://sim"
        self.fs = fs
        self.root = ROOT
        self.protocol = "memory"
        self.local = False
        self.retry_seconds = 0.0
        self.retries = 0
        self._reported = 0.0
        self.hook = hook

    def _step(self, op: str, rel: str) -> None:
        if self.hook is not None:
            self.hook(op, rel)

    def put(self, rel: str, data: bytes, *, crash_midway: bool = False) -> None:
        self._step("put", rel)
        super().put(rel, data, crash_midway=crash_midway)

    def create(self, rel: str, data: bytes, *, crash_point: str | None = None) -> bool:
        self._step("create", rel)
        return super().create(rel, data, crash_point=crash_point)

    def read(self, rel: str) -> bytes | None:
        self._step("read", rel)
        return super().read(rel)

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        rels = list(rels)
        if rels:
            self._step("read_many", rels[0] + (f" (+{len(rels) - 1})" if len(rels) > 1 else ""))
        return super().read_many(rels)

    def listdir(self, rel: str) -> dict[str, int]:
        self._step("listdir", rel)
        return super().listdir(rel)

    def find(self, rel: str = "") -> dict[str, int]:
        self._step("find", rel)
        return super().find(rel)

    def find_dated(self, rel: str = "") -> dict[str, tuple[int, float]]:
        self._step("find", rel)
        return super().find_dated(rel)

    def delete(self, rels: Iterable[str]) -> None:
        for rel in rels:  # one request a file on S3: a crash can come between two of them
            self._step("delete", rel)
            super().delete([rel])


class InlineExecutor:
    """Stands for the pipeline's encoder thread: the flush is encoded at once, on the writer's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: B036 (a Crash travels like any error would)
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class SimLanes:
    """Stands for the pipeline's save lanes (kingest.lanes.Lanes): each call (a partition's save) is a greenlet of
    its own inside the writer's task, and before every step one of them, drawn from the seed, is the one that
    takes it. So the partitions of a flush interleave step by step, as threads would, and a crash or a pause
    lands with some partitions committed and others half-way. Without greenlet (or with ``concurrent=False``)
    the calls run one after another."""

    def __init__(self, world: World, actor: Actor) -> None:
        self.world = world
        self.actor = actor

    def map(self, call: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if greenlet is None or not self.world.concurrent_saves or len(items) <= 1:
            return [call(item) for item in items]
        driver = greenlet.getcurrent()
        outcomes: dict[int, tuple[bool, Any]] = {}

        def lane(index: int, item: Any) -> object:
            try:
                outcomes[index] = (True, call(item))
            except BaseException as exc:  # noqa: B036 (a Crash travels like any error would)
                outcomes[index] = (False, exc)
            return _LANE_DONE

        lanes = {i: greenlet.greenlet(functools.partial(lane, i, item), parent=driver) for i, item in enumerate(items)}
        self.actor.lanes_driver = driver
        try:
            while lanes:
                index = self.world.rng.choice(sorted(lanes))
                lanes[index].switch()  # runs that lane until it wants its next step, or ends
                if index in outcomes:
                    del lanes[index]
        finally:
            self.actor.lanes_driver = None
        results = []
        for i in range(len(items)):
            ok, value = outcomes[i]
            if not ok:
                raise value
            results.append(value)
        return results

    def shutdown(self) -> None:
        pass


_LANE_DONE = object()


def content(topic: str, partition: int, first: int, last: int) -> bytes:
    """The bytes of a simulated data file: its range, so that the checker can tell one file from another."""
    return f"{topic}/{partition}/{first}-{last}".encode()


def fake_file(folder: str, topic: str, partition: int, first: int, last: int, tag: str | None) -> EncodedFile:
    return EncodedFile(
        path=f"{folder}/{file_name(topic, partition, first, last, tag)}",
        data=content(topic, partition, first, last),
        topic=topic,
        partition=partition,
        first_offset=first,
        last_offset=last,
        rows=last - first + 1,
    )


def fake_encoder(pipeline: Pipeline) -> Callable[[Batch], EncodedBatch]:
    """Encoder.encode_batch without Parquet: a batch of 4 or more records becomes two files (as partition_by
    date can make), otherwise one; names and metadata as the real encoder makes them: the writer's tag and a
    serial (kingest.parquet: a name is never used twice, even when one writer cuts the same offsets again)."""
    serial = itertools.count()

    def encode_batch(batch: Batch) -> EncodedBatch:
        folder = f"topic={batch.topic}/partition={batch.partition}"
        offsets = batch.offsets
        cuts = [offsets] if len(offsets) < 4 else [offsets[: len(offsets) // 2], offsets[len(offsets) // 2 :]]
        tag = pipeline.encoder.file_tag
        files = [
            fake_file(folder, batch.topic, batch.partition, part[0], part[-1], f"{tag}-{next(serial)}") for part in cuts
        ]
        return EncodedBatch(batch, files, [])

    return encode_batch


class SimSource:
    """The Kafka consumer of one process: its assignment, positions and paused partitions; the group (who owns
    what, the committed offsets) is the world's. ``commit`` is a step, and fails when the partition moved to
    another member, or at random (no answer in time: then it may or may not have gone through)."""

    encoders = 1

    def __init__(self, world: World, actor: Actor) -> None:
        self.world = world
        self.actor = actor
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def open(self, *listeners: Any) -> None:
        pass

    def poll(self, timeout: float) -> dict[TopicPartition, Any]:
        return {}

    def commit(self, offsets: dict[TopicPartition, int], wait: bool = True) -> None:
        """As kingest.sources.Source.commit: ``wait=False`` (exactly-once's lag-only commit) never raises, a
        failure is only logged; ``wait=True`` raises CommitFailed when refused."""
        self.actor.hook("kafka-commit", " ".join(f"{p}:{o}" for (_, p), o in sorted(offsets.items())))
        try:
            self._commit(offsets)
        except CommitFailed:
            if wait:
                raise

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        world = self.world
        moved = sorted(tp for tp in offsets if world.owner.get(tp) is not self.actor)
        if moved and world.commit_refusals:
            world.event(self.actor.name, "kafka-commit", f"refused: {moved} moved to another member")
            # the consumer learns it is out of the group's generation: its next poll rejoins, and kafka-python
            # calls on_partitions_lost first
            if isinstance(self.actor, Writer) and ("lost", moved) not in self.actor.queue:
                self.actor.queue.append(("lost", moved))
            raise CommitFailed(f"commit refused: {moved} belong to another member (rebalance)")
        if world.forced_commit_failures:
            world.forced_commit_failures -= 1
            world.event(self.actor.name, "kafka-commit", "no answer in time (scripted)")
            raise CommitFailed("the broker did not answer in time")
        draw = world.rng.random()
        if draw < world.p_commit_fail:
            went_through = draw < world.p_commit_fail / 2
            if went_through:
                world.committed.update(offsets)
            world.event(self.actor.name, "kafka-commit", f"no answer in time (applied: {went_through})")
            raise CommitFailed("the broker did not answer in time")
        world.committed.update(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.positions[tp] = 0

    def seek_to_committed(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.positions[tp] = self.world.committed.get(tp, 0)

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.positions[tp] = self.world.end[tp]

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """A step of its own (the ask may take a request timeout: others move meanwhile), and at times no answer
        in time (SourceUnavailable: exactly-once then claims the partitions at once)."""
        tps = list(tps)
        world = self.world
        self.actor.hook("end-offsets", " ".join(str(p) for _, p in tps))
        if world.rng.random() < world.p_ends_fail:
            world.event(self.actor.name, "end-offsets", "no answer in time")
            raise SourceUnavailable("the broker did not give the log end offsets in time")
        return {tp: world.end[tp] for tp in tps}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.update(tps)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.world.end[tp]

    def lag(self, tp: TopicPartition) -> int | None:
        return max(0, self.world.end[tp] - self.positions.get(tp, 0))

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- actors


class Actor:
    """Runs one task at a time, and stops at every step until the scheduler hands it the baton. Each actor is a
    greenlet when greenlet is installed (a switch costs a microsecond), else a thread that waits on a lock (tens
    to hundreds of microseconds a hand-over on a busy machine); either way exactly one runs at a time, and the
    same seed gives the same run."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.task: Callable[[], None] | None = None
        self.task_name = ""
        self.busy = False  # a task started and not finished
        self.waiting: tuple[str, str] | None = None  # the step it stopped at
        self.crashed = False
        self.dead = False
        self.frozen_until = 0
        self.budget = 0  # steps it may take before it stops for the scheduler again
        self.last: tuple[str, str] | None = None  # its latest operation, not checked yet
        self.error: BaseException | None = None
        self.error_trace = ""
        self.lake = SimLake(world.fs, self.hook)
        self.glet: Any = None  # the greenlet to resume: the task's, or one of its save lanes (SimLanes)
        self.lanes_driver: Any = None  # the task's greenlet while its save lanes run
        if greenlet is None:
            self.go = threading.Lock()
            self.go.acquire()
            self.thread = threading.Thread(target=self._main, name=f"sim-{name}", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        assert self.task is not None
        try:
            self.task()
        except Crash:
            pass
        except BaseException as exc:  # noqa: B036 (reported to the scheduler)
            self.error = exc
            self.error_trace = traceback.format_exc()
        self.busy = False
        self.waiting = None

    def _main(self) -> None:  # the thread of an actor, without greenlet
        while True:
            self.go.acquire()
            if self.task is None:
                self.world.sched.release()
                return
            self._run()
            self.world.sched.release()

    def resume(self, new_task: bool = False) -> None:
        """Scheduler side: run this actor until it stops at its next step or ends its task."""
        if greenlet is None:
            self.go.release()
            self.world.sched.acquire()
            return
        if new_task:
            self.glet = greenlet.greenlet(self._run)
        self.glet.switch()

    def _pause(self) -> None:
        """Actor side: give the baton back to the scheduler and wait until picked again."""
        if greenlet is None:
            self.world.sched.release()
            self.go.acquire()
        else:
            self.glet = greenlet.getcurrent()
            self.world.main.switch()

    def stop(self) -> None:
        """End the actor's thread (its task is over)."""
        self.task = None
        if greenlet is None:
            self.go.release()
            self.world.sched.acquire()
            self.thread.join()

    def hook(self, op: str, path: str) -> None:
        """Called on this actor's thread before each lake operation and Kafka commit. The scheduler lets an actor
        run ``budget`` more steps on its own (drawn from the seed: the same choice as picking it again, without
        the cost of handing the baton back and forth); otherwise it stops here until picked."""
        if self.crashed:
            raise Crash
        if op == "delete" and not isinstance(self, Collector) and self.world.retiring(path):
            self.world.failure = self.world.failure or self.world.violation(
                f"{self.name} deletes {path}, an input a compaction kept for gc's retention (a retire note names it)"
            )
        if self.lanes_driver is not None and greenlet.getcurrent() is not self.lanes_driver:
            self.lanes_driver.switch()  # a save lane: the driver draws which lane takes this step
            if self.crashed:
                raise Crash
        world = self.world
        if self.budget > 0:
            world.checked(self)  # the operation before this one is done: check what it changed
            if world.failure is None and world.step_no < world.horizon:
                self.budget -= 1
                world.step_no += 1
                world.record(self.name, op, path)
                self.last = (op, path)
                return
        self.waiting = (op, path)
        self._pause()
        if self.crashed:
            raise Crash
        self.waiting = None
        self.last = (op, path)
        world.record(self.name, op, path)

    def frozen(self) -> bool:
        return self.world.step_no < self.frozen_until

    def idle_work(self) -> bool:
        return False


class Writer(Actor):
    """A kingest process: a Pipeline with its own consumer, on the shared lake."""

    def __init__(self, world: World, number: int) -> None:
        super().__init__(world, f"w{number}")
        self.queue: deque[tuple[str, list[TopicPartition]]] = deque()  # rebalance callbacks due
        self.source = SimSource(world, self)
        pipeline = Pipeline(CONFIG, source=self.source, lake=self.lake)  # type: ignore[arg-type]
        pipeline._encoder_thread.shutdown()
        pipeline._encoder_pool.shutdown()
        pipeline._encoder_thread = InlineExecutor()  # type: ignore[assignment]
        pipeline._lanes.shutdown()
        pipeline._lanes = SimLanes(world, self)  # type: ignore[assignment]
        tag = f"{world.rng.getrandbits(32):08x}"
        pipeline.writer = f"sim-{number}-{tag}"  # a restarted process is a new writer (deterministic here)
        pipeline.encoder.file_tag = tag
        pipeline.encoder.encode_batch = fake_encoder(pipeline)  # type: ignore[method-assign]
        self.pipeline = pipeline

    def idle_work(self) -> bool:
        return bool(self.queue)

    # the tasks: each mirrors what the pipeline's run loop or the consumer's rebalance does

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:  # Kafka: a newly assigned partition starts at the group's committed offset
            self.source.assigned.add(tp)
            self.source.positions[tp] = self.world.committed.get(tp, 0)
            self.source.paused.discard(tp)
        self.pipeline._on_assigned(tps)

    def revoke(self, tps: list[TopicPartition]) -> None:
        self.pipeline._on_revoked(tps)
        self.source.assigned.difference_update(tps)

    def lose(self, tps: list[TopicPartition]) -> None:
        self.pipeline._on_lost(tps)
        self.source.assigned.difference_update(tps)

    def poll(self, limit: int | None = None) -> None:
        """Like Pipeline.run: poll, and buffer what the poll returned unless the partition is fenced."""
        source, world = self.source, self.world
        for tp in sorted(source.assigned - source.paused):
            position = source.positions[tp]
            count = min(world.rng.randint(0, 4) if limit is None else limit, world.end[tp] - position)
            if count <= 0:
                continue
            records = [Record(TOPIC, tp[1], o, o, None, b"{}", []) for o in range(position, position + count)]
            source.positions[tp] = position + count
            if tp not in self.pipeline.fenced:
                self.pipeline.batcher.add(tp, records)

    def flush(self, tps: list[TopicPartition]) -> None:
        """Like Pipeline.run: hand the due batches to the encoder (saving the previous flush first)."""
        self.pipeline._flush(tps)

    def drain(self) -> None:
        self.pipeline._drain()


class Rewinder(Actor):
    """`kingest rewind` of one partition: plan on a fresh state, then ManifestStore.rewind."""

    def __init__(self, world: World, number: int) -> None:
        super().__init__(world, f"rewind{number}")
        self.owner = f"rewind-sim-{number}-{world.rng.getrandbits(32):08x}"
        self.store = ManifestStore(self.lake, PIPELINE)

    def rewind(self, tp: TopicPartition, fraction: float) -> None:
        state = self.store.load(*tp)
        if not state.next_offset:
            return
        target = int(state.next_offset * fraction)
        tag = self.owner.rsplit("-", 1)[-1]
        remove, write = [], []
        for path, entry in sorted(state.files.items()):
            first, last = entry["first_offset"], entry["last_offset"]
            if first >= target:
                remove.append(path)
            elif last >= target:  # straddles the target: replaced by a copy of the offsets before it
                remove.append(path)
                write.append(fake_file(path.rsplit("/", 1)[0], tp[0], tp[1], first, target - 1, tag))
        try:
            self.store.rewind(state, owner=self.owner, next_offset=target, write=write, remove=remove)
        except ManifestConflict:
            self.world.event(self.name, "rewind", f"{tp[1]}: conflict, not rewound")
            return
        self.world.committed[tp] = target  # kingest rewind sets the group's offsets too (lag tools)
        self.world.event(self.name, "rewind", f"{tp[1]}: {state.next_offset} -> {target}")


class Compactor(Actor):
    """`kingest compact` of one partition: kingest.compact itself (its clean-up of crashed compactions, its
    retries under new names), with the simulation's files in place of the Parquet merge; the inputs deleted by
    recovery at once, or (``keep``) retired for gc."""

    def __init__(self, world: World, number: int) -> None:
        super().__init__(world, f"compact{number}")

    def compact(self, tp: TopicPartition, keep: bool) -> None:
        def merge(paths: list[str], tp: TopicPartition) -> list[EncodedFile]:
            state = self.world.checker.store.load(*tp)  # (no step: what the merge reads is the files' content)
            entries = [state.files.get(p) for p in paths]
            if any(e is None for e in entries):
                raise FileNotFoundError(paths)
            first, last = entries[0]["first_offset"], entries[-1]["last_offset"]
            return [fake_file(paths[0].rsplit("/", 1)[0], tp[0], tp[1], first, last, "merge")]

        results = compact_module.compact(
            CONFIG, self.lake, 1 << 30, topic=tp[0], partition=tp[1], keep_inputs=keep, merge_files=merge
        )
        for r in results:
            what = f"{len(r.inputs)} files -> {len(r.outputs)}" if r.version else f"not compacted: {r.skipped}"
            self.world.event(self.name, "compact", f"{tp[1]}: {what} (keep {keep})")


class Collector(Actor):
    """`kingest gc` with a retention of 0 (the most it may ever remove): plan, then collect, interleaved with the
    writers like any process. It settles every attempt whose version is not taken, live writers' too: they are
    fenced (safe, if rude), and nothing committed or committable may go."""

    def __init__(self, world: World, number: int) -> None:
        super().__init__(world, f"gc{number}")

    def collect(self) -> None:
        found = gc_module.plan(CONFIG, self.lake, retain=0.0)
        removed = gc_module.collect(CONFIG, self.lake, found)
        self.world.event(self.name, "gc", f"{removed} removed, {len(found.stale)} partition(s) settled")


# ---------------------------------------------------------------------------------------------- checker


class Checker:
    """Reads the store directly (no steps) and checks the invariants of one partition."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fs = world.fs
        self.store = ManifestStore(SimLake(world.fs), PIPELINE)
        self.replayed = {tp: PartitionState(*tp) for tp in world.tps}
        self.live: dict[TopicPartition, set[str]] = {tp: set() for tp in world.tps}  # files of the latest state

    def check(self, tp: TopicPartition) -> None:
        fail = self.world.violation
        try:
            state = self.store.load(*tp)
        except KingestError as exc:
            raise fail(f"partition {tp[1]}: the manifest cannot be loaded: {exc}") from None
        replay = self.replayed[tp]
        for version in range(replay.version + 1, state.version + 1):
            doc = json.loads(self._bytes(self.store.version_path(*tp, version)) or b"null")
            before = replay.next_offset
            after = doc.get("next_offset")
            if doc.get("operation") != "rewind" and before is not None and (after is None or after < before):
                raise fail(
                    f"partition {tp[1]}: next_offset moved back from {before} to {after} in version {version} "
                    f"({doc.get('operation')} by {doc.get('owner')}), not a rewind"
                )
            replay.apply(doc)
        self.live[tp] = set(state.files)
        if replay.files != state.files or replay.next_offset != state.next_offset:
            raise fail(
                f"partition {tp[1]}: the state loaded through checkpoints differs from the replay of every version "
                f"(v1..v{state.version})"
            )
        for path, entry in state.files.items():
            data = self._bytes(path)
            if data is None:
                raise fail(
                    f"partition {tp[1]}: live file missing: {path} (named by the state at version {state.version})"
                )
            if data != content(tp[0], tp[1], entry["first_offset"], entry["last_offset"]):
                raise fail(f"partition {tp[1]}: live file {path} does not hold what its entry says")
        expect = 0
        for first, last, path in sorted((e["first_offset"], e["last_offset"], p) for p, e in state.files.items()):
            if first < expect:
                raise fail(
                    f"partition {tp[1]}: offsets {first}..{min(last, expect - 1)} are in two live files "
                    f"(the second: {path}) at version {state.version}"
                )
            if first > expect:
                raise fail(
                    f"partition {tp[1]}: gap: offsets {expect}..{first - 1} are in no live file at version "
                    f"{state.version} (next_offset {state.next_offset})"
                )
            expect = last + 1
        next_offset = state.next_offset or 0
        if expect < next_offset:
            raise fail(
                f"partition {tp[1]}: gap: offsets {expect}..{next_offset - 1} are below next_offset {next_offset} "
                f"and in no live file (version {state.version})"
            )
        if expect > next_offset:
            raise fail(
                f"partition {tp[1]}: live files hold offsets {next_offset}..{expect - 1}, at or past next_offset "
                f"{next_offset}: they would be written twice (version {state.version})"
            )

    def _bytes(self, rel: str) -> bytes | None:
        f = self.fs.store.get(f"{ROOT}/{rel}")
        return None if f is None else f.getvalue()

    def state(self, tp: TopicPartition) -> PartitionState:
        return self.store.load(*tp)


# ---------------------------------------------------------------------------------------------- world


class World:
    """One simulated run: the lake, the group, the actors, the scheduler's random source and the trace."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        partitions: int = 2,
        writers: int = 2,
        max_writers: int = 3,
        p_commit_fail: float = 0.15,
        commit_refusals: bool = True,
        concurrent_saves: bool = True,
        collectors: bool = True,
    ) -> None:
        self.seed = seed
        self.repro = ""  # the command line that replays this run (run_seed sets it)
        self.forced_commit_failures = 0  # scripted runs: the next Kafka commits fail (no answer in time)
        self.rng = random.Random(seed if seed is not None else 0)
        SimMemoryFS.stripped.clear()
        self.fs = SimMemoryFS(global_store=False, skip_instance_cache=True)
        self.sched = threading.Lock()  # without greenlet: held by the scheduler's thread while no actor runs
        self.sched.acquire()
        self.main = greenlet.getcurrent() if greenlet is not None else None
        self.step_no = 0
        self.horizon = 10**9  # no step past this one without the scheduler (the end of the faulty phase)
        self.failure: Violation | None = None
        self.trace: deque[str] = deque(maxlen=TRACE_LINES)
        self.history: list[str] = []  # every line, for the determinism test (kept only when asked)
        self.keep_history = False
        self.tps: list[TopicPartition] = [(TOPIC, p) for p in range(partitions)]
        self.end = {tp: 0 for tp in self.tps}  # log end offsets: offsets are dense, 0 .. end - 1
        self.committed: dict[TopicPartition, int] = {}  # the group's committed offsets (lag tools only)
        self.owner: dict[TopicPartition, Writer | None] = {tp: None for tp in self.tps}  # the group's view
        self.handover: dict[TopicPartition, Writer] = {}  # revoked, to be assigned to this writer once done
        self.pending_assign: set[TopicPartition] = set()
        self.actors: list[Actor] = []
        self.writers: list[Writer] = []
        self.writer_count = 0
        self.rewinds = 0
        self.collections = 0
        self.compactions = 0
        self.p_commit_fail = p_commit_fail  # a Kafka commit gets no answer in time
        self.p_ends_fail = p_commit_fail  # ... and so does an ask for the log end offsets at assignment
        self.commit_refusals = commit_refusals  # a Kafka commit for a partition the group moved is refused
        self.concurrent_saves = concurrent_saves  # a flush's partitions saved side by side (SimLanes)
        self.collectors_enabled = collectors  # `kingest gc` runs now and then (Collector)
        self.initial_writers = writers
        self.max_writers = max_writers
        self.checker = Checker(self)
        self.exits: list[str] = []  # processes that stopped on a KingestError (not a violation)
        self.refusals: list[str] = []  # log.error lines of the pipeline (a safe refusal that only a bug causes)

    # ------------------------------------------------------------------------------------- trace

    def record(self, actor: str, op: str, path: str) -> None:
        line = f"{self.step_no:5d} {actor:10s} {op:12s} {path}"
        self.trace.append(line)
        if self.keep_history:
            self.history.append(line)

    def event(self, actor: str, what: str, detail: str) -> None:
        self.record(actor, what, detail)

    def retiring(self, rel: str) -> bool:
        """Whether a retire note of a compaction that committed, or still may commit, names ``rel`` (read
        directly: no step). The note of a compaction whose version another writer took protects nothing: that
        compaction never took its inputs out (it loads again and retries), and whoever took the version may
        have removed them, and deletes them like any file its committed state no longer names."""
        folder = f"{ROOT}/_kingest/{PIPELINE}/retired/"
        for key, f in list(self.fs.store.items()):
            if not key.startswith(folder):
                continue
            note = json.loads(f.getvalue())
            if rel not in note.get("paths", ()):
                continue
            where = key[len(folder) :].rsplit("/", 1)[0]  # topic=t/partition=p
            version = self.fs.store.get(f"{ROOT}/_kingest/{PIPELINE}/manifest/{where}/{int(note['version']):020d}.json")
            if version is None or json.loads(version.getvalue()).get("owner") == note.get("owner"):
                return True
        return False

    def violation(self, what: str) -> Violation:
        return Violation(self.seed, what, self.trace, self.repro)

    # ------------------------------------------------------------------------------------- actors

    def spawn(self) -> Writer:
        self.writer_count += 1
        writer = Writer(self, self.writer_count)
        self.actors.append(writer)
        self.writers.append(writer)
        self.event("scheduler", "start", f"{writer.name} (writer {writer.pipeline.writer})")
        return writer

    def live_writers(self) -> list[Writer]:
        return [w for w in self.writers if not w.dead]

    def start(self, actor: Actor, name: str, task: Callable[[], None]) -> None:
        """Start a task on an idle actor; returns once it stops at its first step or finishes."""
        assert not actor.busy and not actor.dead
        actor.task, actor.task_name, actor.busy = task, name, True
        self.event(actor.name, "begin", name)
        actor.resume(new_task=True)
        self._after(actor)

    def step(self, actor: Actor, budget: int = 0) -> None:
        """Let a stopped actor perform the operation it waits at, and ``budget`` more, then stop at the next."""
        assert actor.busy and actor.waiting is not None
        actor.budget = budget
        actor.resume()
        actor.budget = 0
        self.checked(actor)
        if self.failure is not None:
            raise self.failure
        self._after(actor)

    def checked(self, actor: Actor) -> None:
        """Check the invariants after ``actor``'s latest operation, if it could have changed them. Only a
        manifest version, a checkpoint, or a put/delete of a file the latest state names can: the others are
        skipped (exactly: the state and its files are untouched by them)."""
        last, actor.last = actor.last, None
        if last is None or last[0] not in MUTATING or self.failure is not None:
            return
        op, path = last
        match = _PARTITION.search(path)
        if match is None:
            return
        tp = (TOPIC, int(match.group(1)))
        if op == "create":
            version = int(path.rsplit("/", 1)[-1][:20])
            if version <= self.checker.replayed[tp].version:
                return  # the name was taken before: the create failed and changed nothing
        elif "/checkpoints/" not in path and path not in self.checker.live[tp]:
            return
        try:
            self.checker.check(tp)
        except Violation as violation:
            self.failure = violation

    def _after(self, actor: Actor) -> None:
        """Bookkeeping once an actor stopped at a step or finished its task."""
        if actor.busy:
            return
        name = actor.task_name
        error = actor.error
        if isinstance(actor, Writer) and error is None and actor.pipeline._callback_error is not None:
            error, actor.pipeline._callback_error = actor.pipeline._callback_error, None
            if isinstance(error, Crash):
                error = None
        actor.error = None
        if error is not None and not actor.crashed:
            if isinstance(error, KingestError):
                # run() raises it: the process stops (and a new one will join), as after a crash
                self.exits.append(f"{actor.name}: {type(error).__name__}: {error}")
                self.event(actor.name, "exit", f"{type(error).__name__}: {error}")
                self.kill(actor)
            else:
                raise self.violation(
                    f"{actor.name} raised {type(error).__name__} in {name}: {error}\n{actor.error_trace}"
                )
        if actor.crashed and not actor.dead:
            self.kill(actor)
        if isinstance(actor, Writer) and name.startswith("revoke"):
            for tp in list(self.handover):
                if self.owner.get(tp) is actor and tp not in actor.source.assigned:
                    self._hand_over(tp)

    def _hand_over(self, tp: TopicPartition) -> None:
        new = self.handover.pop(tp)
        if new.dead:
            self.owner[tp] = None
            return
        self.owner[tp] = new
        self._queue_assign(tp, new)

    def _queue_assign(self, tp: TopicPartition, writer: Writer) -> None:
        if tp in writer.source.assigned and ("lost", [tp]) not in writer.queue:
            # a member left behind that still holds it (a zombie) rejoins: kafka-python calls
            # on_partitions_lost before it assigns anything again
            writer.queue.append(("lost", [tp]))
        writer.queue.append(("assign", [tp]))
        self.pending_assign.add(tp)

    def crash(self, actor: Actor) -> None:
        """The process dies at the step it waits at (or between two tasks)."""
        self.event(actor.name, "CRASH", f"at {actor.waiting[0] if actor.waiting else 'rest'}")
        actor.crashed = True
        if actor.busy:
            actor.resume()
            self._after(actor)
        if not actor.dead:
            self.kill(actor)

    def kill(self, actor: Actor) -> None:
        """The process is gone: its thread ends, the group notices (its partitions are up for grabs)."""
        actor.dead = True
        actor.crashed = True
        while actor.busy:  # unwind the task: every later step raises Crash at once
            actor.resume()
        actor.stop()
        if isinstance(actor, Writer):
            actor.queue.clear()
            for tp in self.tps:
                if tp in self.handover and self.owner.get(tp) is actor:
                    self._hand_over(tp)
                elif self.owner.get(tp) is actor:
                    self.owner[tp] = None
                    self.pending_assign.discard(tp)

    def shutdown(self) -> None:
        for actor in self.actors:
            if not actor.dead:
                actor.crashed = True
                self.kill(actor)

    # ------------------------------------------------------------------------------------- group

    def give(self, tp: TopicPartition, writer: Writer) -> None:
        """The group assigns ``tp`` to ``writer`` (nobody holds it)."""
        self.owner[tp] = writer
        self._queue_assign(tp, writer)
        self.event("group", "assign", f"{tp[1]} -> {writer.name}")

    def rebalance(self, tp: TopicPartition, new: Writer, mode: str) -> None:
        """Move ``tp`` to ``new``. ``cooperative``: the owner's _on_revoked runs first, then new's _on_assigned.
        ``lost`` / ``silent``: the group moved on without the owner (paused, or too slow): new gets it at once;
        the old owner gets _on_lost when it next polls, or nothing at all (a zombie)."""
        old = self.owner[tp]
        if old is None or old.dead:
            self.give(tp, new)
            return
        if mode == "cooperative":
            self.handover[tp] = new
            old.queue.append(("revoke", [tp]))
            self.event("group", "rebalance", f"{tp[1]}: {old.name} revokes, then -> {new.name}")
            return
        self.event("group", "rebalance", f"{tp[1]}: {old.name} left behind ({mode}) -> {new.name}")
        if mode == "lost":
            old.queue.append(("lost", [tp]))
        self.give(tp, new)

    def next_task(self, writer: Writer) -> tuple[str, Callable[[], None]] | None:
        if writer.queue:
            kind, tps = writer.queue.popleft()
            self.pending_assign.difference_update(tps if kind == "assign" else ())
            task = {"assign": writer.assign, "revoke": writer.revoke, "lost": writer.lose}[kind]
            return f"{kind} {[p for _, p in tps]}", lambda: task(tps)
        return None

    # ------------------------------------------------------------------------------------- random run

    def run(self, steps: int = 150, liveness: float = 1.0) -> None:
        """The seeded schedule: ``steps`` steps of faults and progress, then quiet; then, in a ``liveness``
        fraction of the runs (drawn from the seed), the liveness check."""
        rng = self.rng
        for _ in range(self.initial_writers):
            self.spawn()
        for tp in self.tps:
            self.end[tp] = rng.randint(0, 8)
            self.give(tp, rng.choice(self.writers))
        self.horizon = steps
        try:
            while self.step_no < steps:
                self.step_no += 1
                self.tick()
            self.horizon = 10**9
            self.settle()
            if self.refusals:
                raise self.violation(
                    f"the pipeline logged an error (a safety net that only a bug should reach): {self.refusals[0]}"
                )
            if self.rng.random() < liveness:
                self.catch_up()
            else:
                for tp in self.tps:
                    self.checker.check(tp)
        finally:
            self.shutdown()

    def tick(self) -> None:
        rng = self.rng
        draw = rng.random()
        live = self.live_writers()
        if draw < 0.05:  # a pause: not scheduled for a while, preferably in the middle of a task
            awake = [a for a in self.actors if not a.dead and not a.frozen()]
            candidates = [a for a in awake if a.busy] or awake
            if candidates:
                actor = rng.choice(candidates)
                actor.frozen_until = self.step_no + rng.choice((4, 12, 30, 80))
                self.event(actor.name, "PAUSE", f"until step {actor.frozen_until}")
            return
        if draw < 0.07:  # a crash, at the step the process waits at
            candidates = [a for a in self.actors if not a.dead]
            if candidates:
                self.crash(rng.choice(candidates))
            return
        if draw < 0.13:
            self.random_rebalance()
            return
        if draw < 0.20:
            tp = rng.choice(self.tps)
            self.end[tp] += rng.randint(1, 4)
            return
        if draw < 0.22:
            if len(live) < self.max_writers:
                self.spawn()
            return
        if draw < 0.225:
            self.start_rewind()
            return
        if draw < 0.23 and self.collectors_enabled:
            self.start_gc()
            return
        if draw < 0.24 and self.collectors_enabled:
            self.start_compaction()
            return
        self.advance()

    def random_rebalance(self) -> None:
        rng = self.rng
        live = self.live_writers()
        if not live:
            return
        orphans = [tp for tp in self.tps if self.owner[tp] is None and tp not in self.handover]
        movable = [tp for tp in self.tps if tp not in self.handover and tp not in self.pending_assign]
        if orphans:
            tp = rng.choice(orphans)
            self.give(tp, rng.choice(live))
            return
        if not movable:
            return
        # FoundationDB's BUGGIFY in spirit: favour the rare, dangerous case, a partition moving away from a
        # paused owner (which resumes later as a zombie)
        behind = [tp for tp in movable if (o := self.owner[tp]) is not None and o.frozen()]
        tp = rng.choice(behind if behind and rng.random() < 0.7 else movable)
        old = self.owner[tp]
        if old is not None and not old.dead and rng.random() < 0.1:
            # revoked and handed back to the same member (kafka-python's first rebalance does this): it may keep
            # what it owned without a new claim only while nothing was committed since its own last version
            self.rebalance(tp, old, "cooperative")
            return
        others = [w for w in live if w is not old]
        if not others:
            return
        new = rng.choice(others)
        if old is not None and (old.frozen() or rng.random() < 0.2):
            mode = "lost" if rng.random() < 0.5 else "silent"
        else:
            mode = "cooperative"
        self.rebalance(tp, new, mode)

    def start_compaction(self) -> None:
        if any(isinstance(a, Compactor) and not a.dead and a.busy for a in self.actors):
            return
        self.compactions += 1
        compactor = Compactor(self, self.compactions)
        self.actors.append(compactor)
        tp = self.rng.choice(self.tps)
        keep = self.rng.random() < 0.5
        self.start(compactor, f"compact {tp[1]}", lambda: compactor.compact(tp, keep))
        if not compactor.busy:
            self.kill(compactor)

    def start_gc(self) -> None:
        if any(isinstance(a, Collector) and not a.dead and a.busy for a in self.actors):
            return
        self.collections += 1
        collector = Collector(self, self.collections)
        self.actors.append(collector)
        self.start(collector, "gc", collector.collect)
        if not collector.busy:
            self.kill(collector)

    def start_rewind(self) -> None:
        if any(isinstance(a, Rewinder) and not a.dead and a.busy for a in self.actors):
            return
        self.rewinds += 1
        rewinder = Rewinder(self, self.rewinds)
        self.actors.append(rewinder)
        tp = self.rng.choice(self.tps)
        fraction = self.rng.random()
        self.start(rewinder, f"rewind {tp[1]}", lambda: rewinder.rewind(tp, fraction))
        if not rewinder.busy:
            self.kill(rewinder)

    def advance(self) -> None:
        """Let one actor run: the next steps of a task in progress, or a new task."""
        rng = self.rng
        runnable = [a for a in self.actors if not a.dead and not a.frozen() and (a.busy or isinstance(a, Writer))]
        if not runnable:
            return
        actor = rng.choice(runnable)
        if actor.busy:
            self.step(actor, budget=self.budget())
            if isinstance(actor, Rewinder | Collector | Compactor) and not actor.busy and not actor.dead:
                self.kill(actor)
            return
        assert isinstance(actor, Writer)
        queued = self.next_task(actor)
        if queued is not None:
            self.start(actor, *queued)
            return
        pipeline = actor.pipeline
        draw = rng.random()
        if pipeline._encoding is not None and draw < 0.4:
            self.start(actor, "drain", actor.drain)
        elif pipeline.batcher.batches and draw < 0.7:
            due = pipeline.batcher.due(everything=True)
            tps = sorted(tp for tp in due if rng.random() < 0.7) or due[:1]
            self.start(actor, f"flush {[p for _, p in tps]}", lambda: actor.flush(tps))
        else:
            # no lake operation, no Kafka commit: runs here, on the scheduler's thread
            self.event(actor.name, "poll", "")
            actor.poll()

    def budget(self) -> int:
        """How many steps a picked actor takes in a row (often one, sometimes a run of them)."""
        draw = self.rng.random()
        return 0 if draw < 0.4 else 1 if draw < 0.6 else 3 if draw < 0.85 else 8

    def settle(self) -> None:
        """No more faults: every paused actor resumes, every task and queued callback runs to its end."""
        self.event("scheduler", "settle", "no more faults")
        self.p_commit_fail = 0.0
        self.p_ends_fail = 0.0
        for actor in self.actors:
            actor.frozen_until = 0
        for _ in range(10_000):
            busy = [a for a in self.actors if not a.dead and a.busy]
            if busy:
                actor = self.rng.choice(busy)
                self.step(actor, budget=self.budget())
                if isinstance(actor, Rewinder | Collector | Compactor) and not actor.busy and not actor.dead:
                    self.kill(actor)
                continue
            queued = [w for w in self.live_writers() if w.queue]
            if not queued:
                return
            writer = queued[0]
            task = self.next_task(writer)
            assert task is not None
            self.start(writer, *task)
        raise self.violation("settling did not end (a task that never finishes?)")

    def catch_up(self) -> None:
        """Liveness: every writer stops; a fresh one is assigned every partition and must reach its end."""
        for writer in self.live_writers():
            self.kill(writer)
        fresh = self.spawn()
        fresh.pipeline.batcher.max_records = 10**9  # one batch a partition: this phase checks, it explores nothing
        for tp in self.tps:
            self.handover.pop(tp, None)
            self.owner[tp] = None
            self.give(tp, fresh)
        for _ in range(20):
            task = self.next_task(fresh)
            if task is not None:
                self.run_task(fresh, *task)
                continue
            fresh.poll(limit=10**9)
            pipeline = fresh.pipeline
            if not pipeline.batcher.batches and pipeline._encoding is None:
                break
            due = pipeline.batcher.due(everything=True)
            self.run_task(fresh, "flush", lambda: fresh.flush(due))  # noqa: B023 (runs at once)
            self.run_task(fresh, "drain", fresh.drain)
        for tp in self.tps:
            self.checker.check(tp)
            state = self.checker.state(tp)
            if (state.next_offset or 0) != self.end[tp]:
                raise self.violation(
                    f"liveness: partition {tp[1]} stays at next_offset {state.next_offset}, the topic ends at "
                    f"{self.end[tp]} (a fresh writer, alone, could not catch up; fenced: "
                    f"{sorted(fresh.pipeline.fenced)})"
                )

    def run_task(self, actor: Actor, name: str, task: Callable[[], None]) -> None:
        self.start(actor, name, task)
        while actor.busy:
            self.step(actor, budget=10**6)
        if actor.dead:
            raise self.violation(f"{actor.name} stopped during {name} in the liveness phase: {self.exits[-1:]}")


# ---------------------------------------------------------------------------------------------- running


class _Quiet(logging.Handler):
    """Keeps the pipeline's ERROR lines (a refusal only a bug should cause) while the simulation runs."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.ERROR)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        self.world.refusals.append(record.getMessage())


def run_seed(
    seed: int,
    *,
    steps: int = STEPS,
    liveness: float = LIVENESS,
    checkpoint_every: int = 4,
    keep_history: bool = False,
    **options: Any,
) -> World:
    """One simulated run. Raises Violation (with the seed, the last steps and the command line that replays
    it) when an invariant breaks."""
    world = World(seed, **options)
    world.keep_history = keep_history
    args = (f" --steps {steps}" if steps != STEPS else "") + (f" --liveness {liveness}" if liveness != LIVENESS else "")
    if options.get("p_commit_fail") == 0.0 and options.get("commit_refusals") is False:
        args += " --no-kafka-commit-failures"
    if options.get("partitions", 2) != 2:
        args += f" --partitions {options['partitions']}"
    if options.get("concurrent_saves") is False:
        args += " --no-concurrent-saves"
    world.repro = f"make simulate SEEDS={seed}-{seed}" + (f" SIM_ARGS='{args.strip()}'" if args else "")
    with simulation_settings(world, checkpoint_every):
        world.run(steps, liveness)
    return world


class simulation_settings:
    """CHECKPOINT_EVERY lowered, and kingest's log lines kept off the console, for the duration of a run."""

    def __init__(self, world: World, checkpoint_every: int) -> None:
        self.world = world
        self.checkpoint_every = checkpoint_every

    def __enter__(self) -> None:
        self.saved = manifest_module.CHECKPOINT_EVERY
        manifest_module.CHECKPOINT_EVERY = self.checkpoint_every
        self.logger = logging.getLogger("kingest")
        self.logged = (self.logger.level, self.logger.propagate)
        self.handler = _Quiet(self.world)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.ERROR)
        self.logger.propagate = False

    def __exit__(self, *exc: object) -> None:
        manifest_module.CHECKPOINT_EVERY = self.saved
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.logged[0])
        self.logger.propagate = self.logged[1]
