"""The exactly-once simulation (tests/sim/harness.py) in the normal pytest run: 10,000 seeded interleavings of
kingest's own pipeline, manifest and lake code, with pauses, crashes, rebalances and rewinds; the same seed
replays the same run; and scripted interleavings of bugs the simulation found, kept as regression tests.

`make simulate SEEDS=...` runs more seeds; every failure prints the command that replays it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.sim import harness
from tests.sim.harness import TOPIC, Violation, World, Writer, run_seed, simulation_settings
from tests.sim.simulate import kind, parse_seeds, run_many

# The pytest run's share of the simulation: shorter runs than `make simulate` (100 steps, the liveness check at
# the end of one run in four), so that 10,000 of them fit in well under a minute on two cores.
CI_SEEDS = 10_000
CI_STEPS = 100
CI_LIVENESS = 0.25


def test_ten_thousand_interleavings_keep_the_exactly_once_invariants():
    results = run_many(list(range(CI_SEEDS)), jobs=min(2, os.cpu_count() or 1), steps=CI_STEPS, liveness=CI_LIVENESS)
    assert len(results) == CI_SEEDS
    failed = sorted((seed, what, report) for seed, what, report in results if what is not None)
    if failed:
        kinds: dict[str, list[int]] = {}
        for seed, what, _ in failed:
            kinds.setdefault(kind(what), []).append(seed)
        summary = "\n".join(f"  {len(s):5d}  {k}  (seeds {s[:5]})" for k, s in kinds.items())
        first = failed[0][2]
        pytest.fail(
            f"{len(failed)} of {CI_SEEDS} interleavings broke an invariant:\n{summary}\n\nthe first:\n{first}",
            pytrace=False,
        )


def test_seeds_are_a_count_a_range_or_a_list():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("5-7") == [5, 6, 7]
    assert parse_seeds("129-129") == [129]
    assert parse_seeds("3,129,10-11") == [3, 129, 10, 11]


@pytest.mark.parametrize("seed", [1, 2, 7])
def test_a_seed_replays_the_same_run(seed):
    first = _history(seed)
    assert first == _history(seed)
    assert len(first) > 100


@pytest.mark.skipif(harness.greenlet is None, reason="greenlet is not installed: only the thread scheduler runs")
def test_threads_and_greenlets_schedule_a_seed_alike(monkeypatch):
    # save lanes interleave only on greenlets: one after another here, in both
    with_greenlets = _history(5, concurrent_saves=False)
    monkeypatch.setattr(harness, "greenlet", None)
    assert _history(5, concurrent_saves=False) == with_greenlets


def _history(seed: int, **options: Any) -> list[str]:
    try:
        return run_seed(seed, steps=120, keep_history=True, **options).history
    except Violation as violation:  # a run that finds a bug replays the same way too
        return [*violation.trace, violation.what]


# ---------------------------------------------------------------------------------------------- scripted runs


def scripted(partitions: int = 1) -> World:
    """A world without random faults: the test decides every step."""
    return World(None, partitions=partitions, writers=0, p_commit_fail=0.0)


def run_queued(world: World, writer: Writer) -> None:
    """Run the rebalance callbacks the group queued for ``writer``, each to its end."""
    while (task := world.next_task(writer)) is not None:
        world.run_task(writer, *task)


def save(world: World, writer: Writer, records: int) -> None:
    """Poll ``records`` records of every assigned partition, flush them, and save them (drain)."""
    writer.poll(limit=records)
    due = writer.pipeline.batcher.due(everything=True)
    world.run_task(writer, "flush", lambda: writer.flush(due))
    world.run_task(writer, "drain", writer.drain)


def step_until(world: World, actor: Writer, stop: Callable[[tuple[str, str]], bool]) -> None:
    while actor.busy and not (actor.waiting is not None and stop(actor.waiting)):
        world.step(actor)
    assert actor.busy, f"{actor.name} finished before the awaited step"


def check_all(world: World) -> None:
    for tp in world.tps:
        world.checker.check(tp)


def test_a_writer_paused_between_its_claim_and_its_recovery_deletes_no_file_committed_since():
    """The bug this simulation was built to find (it finds it on its own too). Writer B claims the partition
    (version 5) and is paused before recovery; the group gives the partition to C, which claims (6) and
    commits versions 7-10; B resumes and recovers from its state of version 5: C's pending record names the
    files of version 10, which B's state does not, so B deletes them: a live file is missing."""
    world = scripted()
    tp = (TOPIC, 0)
    world.end[tp] = 9
    with simulation_settings(world, checkpoint_every=25):
        try:
            a, b, c = world.spawn(), world.spawn(), world.spawn()
            world.give(tp, a)
            run_queued(world, a)  # claim: version 1
            for _ in range(3):
                save(world, a, 3)  # versions 2, 3, 4
            world.end[tp] += 12  # new records: B claims at assignment
            world.rebalance(tp, b, "cooperative")
            run_queued(world, a)  # revoke
            world.start(b, *world.next_task(b))  # assign: load, claim (version 5), then recovery
            step_until(world, b, lambda waiting: waiting[0] == "listdir" and "/pending" in waiting[1])
            assert world.checker.state(tp).version == 5
            world.rebalance(tp, c, "silent")  # B is paused: the group moves on without it
            run_queued(world, c)  # claim: version 6
            for _ in range(4):
                save(world, c, 3)  # versions 7 .. 10
            assert world.checker.state(tp).version == 10
            while b.busy:  # B resumes its recovery with its state of version 5
                world.step(b)
            check_all(world)
        finally:
            world.shutdown()


def test_a_kafka_commit_that_fails_after_the_manifest_commit_leaves_no_gap():
    """Under exactly-once the Kafka commit after the manifest commit is for lag tools only. When it fails (the
    broker does not answer in time), _commit_kafka drops what the batcher holds for the partition, records
    polled while the flush was being encoded, without seeking back: the consumer's position is past them, the
    next batch starts after them, and its manifest commit leaves a gap below next_offset."""
    world = scripted()
    tp = (TOPIC, 0)
    world.end[tp] = 12
    with simulation_settings(world, checkpoint_every=25):
        try:
            a = world.spawn()
            world.give(tp, a)
            run_queued(world, a)  # claim: version 1
            a.poll(limit=3)  # offsets 0..2
            world.run_task(a, "flush", lambda: a.flush([tp]))  # being encoded ...
            a.poll(limit=3)  # ... while the loop polls 3..5 into the batcher
            world.forced_commit_failures = 1
            world.run_task(a, "drain", a.drain)  # manifest version 2 (0..2), then the Kafka commit fails
            save(world, a, 3)  # the next batch
            check_all(world)
        finally:
            world.shutdown()


def test_a_rewind_paused_before_its_recovery_deletes_no_file_committed_since():
    """The same bug through `kingest rewind`: ManifestStore.rewind commits its version, then recovers from the
    state of that version (deleting the files it removed). Paused in between, it resumes after a writer
    claimed and committed files on top of it, and deletes them: the writer's pending record names them, and
    the rewind's state does not."""
    world = scripted()
    tp = (TOPIC, 0)
    world.end[tp] = 6
    with simulation_settings(world, checkpoint_every=25):
        try:
            a = world.spawn()
            world.give(tp, a)
            run_queued(world, a)  # claim: version 1
            save(world, a, 3)  # version 2: 0..2
            save(world, a, 3)  # version 3: 3..5
            world.crash(a)
            rewinder = harness.Rewinder(world, 1)
            world.actors.append(rewinder)
            world.start(rewinder, "rewind 0", lambda: rewinder.rewind(tp, 0.5))  # to offset 3: version 4
            step_until(world, rewinder, lambda waiting: waiting[0] == "listdir" and "/pending" in waiting[1])
            assert world.checker.state(tp).version == 4
            b = world.spawn()
            world.give(tp, b)
            world.end[tp] += 3
            run_queued(world, b)  # claim: version 5
            save(world, b, 3)  # version 6: 3..5 again
            while rewinder.busy:  # the rewind resumes its recovery with its state of version 4
                world.step(rewinder)
            check_all(world)
        finally:
            world.shutdown()
