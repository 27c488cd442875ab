"""Several `kingest run` instances in one consumer group, against the real broker: rebalances, a killed
instance, a frozen one (a zombie once its session expires), a late joiner. The delivery guarantee must hold
across all of them, checked by `kingest verify` and by an independent read of the lake."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import (
    Instance,
    LakeView,
    end_offsets,
    group_members,
    group_offsets,
    kingest,
    missing_and_duplicated,
    produce_spread,
    read_config,
    scale_config,
    verify,
    wait_for,
    writes_without_latest_claim,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
TOTAL = 50_000
BEFORE = 20_000  # produced before the instances start; the rest while they run
CHUNK = 1_000


def stable_with(kafka_admin, group: str, names: set[str]):
    """The group's assignment once it is Stable with exactly these members, each holding partitions."""

    def check():
        state, members = group_members(kafka_admin, group)
        if state == "Stable" and set(members) == names and all(members.values()):
            return members
        return None

    return check


def one_off(workdir: Path) -> dict:
    """kingest() options for a one-off command (verify, a final run): an instance of its own, in the workdir."""
    return {"cwd": workdir, "env": {"KINGEST_TEST_INSTANCE": "one-off"}, "timeout": 300}


def show_logs(*instances: Instance) -> None:
    for instance in instances:
        print(instance.logs())  # shown by pytest only when the test fails


@pytest.mark.soak
@pytest.mark.parametrize("semantics", ["exactly-once", "at-least-once"])
def test_three_instances_survive_kill_freeze_and_late_join(
    semantics, tmp_path, kafka_bootstrap, kafka_admin, topic_factory, produce
):
    topic = topic_factory(partitions=PARTITIONS, name="scale")
    config_path = tmp_path / "kingest.yaml"
    scale_config(config_path, topic=topic, lake=str(tmp_path / "lake"), semantics=semantics, bootstrap=kafka_bootstrap)
    config = read_config(config_path)
    group = f"kingest-{config['pipeline']}"
    produce_spread(produce, topic, 0, BEFORE, PARTITIONS)
    a, b, c = (Instance(name, config_path, tmp_path) for name in "abc")

    def produce_the_rest() -> None:
        for start in range(BEFORE, TOTAL, CHUNK):
            produce_spread(produce, topic, start, CHUNK, PARTITIONS)
            time.sleep(0.5)

    producer = threading.Thread(target=produce_the_rest, name="producer")
    started = time.monotonic()
    try:
        a.start()
        b.start()
        wait_for(stable_with(kafka_admin, group, {"a", "b"}), "a and b share the partitions")
        producer.start()

        time.sleep(2)
        a.kill()  # SIGKILL mid-run: whatever it buffered or half-wrote is replayed by the next owner
        a.start()
        time.sleep(2)
        c.start()  # the late joiner
        three = wait_for(stable_with(kafka_admin, group, {"a", "b", "c"}), "a, b and c share the partitions")
        assert sorted(len(tps) for tps in three.values()) == [2, 2, 2]

        b.send(signal.SIGSTOP)  # frozen past its session timeout: the group moves on without it
        wait_for(stable_with(kafka_admin, group, {"a", "c"}), "the group drops the frozen instance", timeout=60)
        time.sleep(3)  # the others write and commit its partitions meanwhile
        b.send(signal.SIGCONT)  # a zombie now: it must commit nothing for what it lost, and rejoin
        wait_for(stable_with(kafka_admin, group, {"a", "b", "c"}), "the resumed instance rejoins", timeout=60)

        producer.join()
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        assert sum(ends.values()) == TOTAL
        # The group, not a final run, does the work: every partition reaches the end while all three run.
        wait_for(lambda: group_offsets(kafka_admin, group, topic) == ends, "the group commits every record", 180)
        for instance in (a, b, c):
            assert instance.stop() == 0, f"instance {instance.name} did not stop cleanly"
        print(f"{semantics}: {TOTAL} records through 3 instances with chaos in {time.monotonic() - started:.1f}s")

        final = kingest("run", "-c", str(config_path), "--until-caught-up", **one_off(tmp_path))
        assert final.returncode == 0, final.stderr
    except BaseException:
        show_logs(a, b, c)
        raise
    finally:
        for instance in (a, b, c):
            instance.kill()

    _, report = verify(config_path, **one_off(tmp_path))
    totals = report["totals"]
    assert totals["missing"] == 0, report["violations"]
    assert totals["expected"] == TOTAL
    view = LakeView(str(tmp_path / "lake"))
    folder = view.folder_offsets()
    missing, duplicated = missing_and_duplicated(folder, ends)
    assert sum(missing.values()) == 0, f"missing in the dataset folder: {missing}"
    if semantics == "exactly-once":
        assert report["holds"] and totals["duplicated"] == 0, report["violations"]
        assert sum(duplicated.values()) == 0, f"duplicated in the dataset folder: {duplicated}"
        named = view.manifest_offsets(config["pipeline"], topic, PARTITIONS)
        assert named == {p: list(range(end)) for p, end in ends.items()}
        for p in range(PARTITIONS):
            history = view.history(config["pipeline"], topic, p)
            assert writes_without_latest_claim(history) == [], f"partition {p}: a write by a fenced writer"
    else:
        print(f"at-least-once: {sum(duplicated.values())} duplicated rows (allowed)")
        assert report["holds"], report["violations"]


def test_a_frozen_instance_is_fenced_when_it_resumes(tmp_path, kafka_bootstrap, kafka_admin, topic_factory, produce):
    """The zombie: frozen (SIGSTOP) past its session timeout while it holds a buffer; its partitions go to
    the other instance, which writes and commits them; then it resumes (SIGCONT) and both run on. Whatever the
    group protocol does with the zombie when it wakes up (its commit refused, its partitions reported lost, or
    the group handing partitions back before its stale buffer is saved), the semantics' guarantee must hold:
    checked on the lake, read independently and by `kingest verify`, not on what the zombie logs.

    The three semantics play the scenario side by side (a topic, a group and a lake each), step by step in
    lockstep: most of it is waiting for a session to expire and a group to settle, which they share."""
    partitions = 4
    cases = {}
    for semantics in SEMANTICS:
        workdir = tmp_path / semantics
        workdir.mkdir()
        topic = topic_factory(partitions=partitions, name="zombie")
        config_path = workdir / "kingest.yaml"
        # Batches are written by age only (4 s): the zombie is frozen with a buffer it has not written yet.
        scale_config(
            config_path,
            topic=topic,
            lake=str(workdir / "lake"),
            semantics=semantics,
            bootstrap=kafka_bootstrap,
            batch={"max_records": 100_000, "max_age": "4s"},
        )
        config = read_config(config_path)
        cases[semantics] = _Zombie(
            semantics=semantics,
            workdir=workdir,
            topic=topic,
            config_path=config_path,
            pipeline=config["pipeline"],
            group=f"kingest-{config['pipeline']}",
            zombie=Instance("zombie", config_path, workdir),
            other=Instance("other", config_path, workdir),
            view=LakeView(str(workdir / "lake")),
        )
    every = list(cases.values())
    try:
        for case in every:
            case.zombie.start()
            case.other.start()
        for case in every:
            members = wait_for(
                stable_with(kafka_admin, case.group, {"zombie", "other"}), f"{case}: both instances share the topic"
            )
            case.lost = sorted(members["zombie"])
        for case in every:
            produce_spread(produce, case.topic, 0, 200 * partitions, partitions)
        time.sleep(1)  # fetched into the buffers, not written: the batches are 4 s from due
        for case in every:
            case.zombie.send(signal.SIGSTOP)
        for case in every:
            produce_spread(produce, case.topic, 200 * partitions, 200 * partitions, partitions)
            case.ends = end_offsets(kafka_bootstrap, case.topic, partitions)

        for case in every:
            wait_for(
                stable_with(kafka_admin, case.group, {"other"}), f"{case}: the group drops the frozen instance", 60
            )
        for case in every:
            wait_for(
                lambda c=case: group_offsets(kafka_admin, c.group, c.topic) == c.ends,
                f"{case}: the other instance commits it all",
            )
            if case.semantics == "exactly-once":
                for p in case.lost:
                    assert case.view.manifest_files(case.pipeline, case.topic, p)[0] == case.ends[p]

        for case in every:
            case.zombie.send(signal.SIGCONT)  # its buffer is long due: it is saved, or dropped, on its first turn
        for case in every:
            wait_for(
                stable_with(kafka_admin, case.group, {"zombie", "other"}), f"{case}: the zombie rejoins the group", 60
            )
            assert case.zombie.alive(), f"{case}: the zombie died"
        # Progress, not a guarantee: whatever the zombie did to the group's offsets, the two instances take every
        # partition to the end again (a commit that moved an offset back makes them re-read, never stop).
        for case in every:
            wait_for(
                lambda c=case: group_offsets(kafka_admin, c.group, c.topic) == c.ends,
                f"{case}: the group commits every record again",
            )
        for case in every:
            assert case.zombie.stop() == 0, f"{case}: the zombie did not stop cleanly"
            assert case.other.stop() == 0, f"{case}: the other instance did not stop cleanly"
    except BaseException:
        for case in every:
            print(f"== {case}")
            show_logs(case.zombie, case.other)
        raise
    finally:
        for case in every:
            case.zombie.kill()
            case.other.kill()

    for case in every:
        print(f"== {case}")
        show_logs(case.zombie)  # how the zombie noticed (or not): for diagnosis only, shown when an assertion fails
    for case in every:
        _check_zombie_lake(case, partitions)


SEMANTICS = ("exactly-once", "at-least-once", "at-most-once")


@dataclass
class _Zombie:
    """One semantics' case of test_a_frozen_instance_is_fenced_when_it_resumes."""

    semantics: str
    workdir: Path
    topic: str
    config_path: Path
    pipeline: str
    group: str
    zombie: Instance
    other: Instance
    view: LakeView
    lost: list[int] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.semantics


def _check_zombie_lake(case: _Zombie, partitions: int) -> None:
    semantics, ends = case.semantics, case.ends
    _, report = verify(case.config_path, **one_off(case.workdir))
    assert report["totals"]["expected"] == sum(ends.values()), semantics
    assert report["holds"], (semantics, report["violations"])
    folder = case.view.folder_offsets()
    missing, duplicated = missing_and_duplicated(folder, ends)
    if semantics != "at-most-once":
        assert sum(missing.values()) == 0, f"{semantics}: missing in the dataset folder: {missing}"
        assert report["totals"]["missing"] == 0, (semantics, report["violations"])
    if semantics != "at-least-once":
        assert sum(duplicated.values()) == 0, f"{semantics}: duplicated in the dataset folder: {duplicated}"
        assert report["totals"]["duplicated"] == 0, (semantics, report["violations"])
    if semantics == "exactly-once":
        # The manifest names every offset once, and no version was written by a writer that had been fenced
        # (every write follows its writer's own latest claim).
        assert case.view.manifest_offsets(case.pipeline, case.topic, partitions) == {
            p: list(range(end)) for p, end in ends.items()
        }
        for p in range(partitions):
            history = case.view.history(case.pipeline, case.topic, p)
            assert writes_without_latest_claim(history) == [], f"partition {p}: a write by a fenced writer"


def test_static_members_restart_without_a_rebalance(tmp_path, kafka_bootstrap, kafka_admin, topic_factory, produce):
    """Static membership (kafka.group_instance_id, one per instance): an instance killed and restarted within
    its session timeout gets its partitions back, and the other instance is never revoked."""
    partitions = 4
    topic = topic_factory(partitions=partitions, name="static")
    config_path = tmp_path / "kingest.yaml"
    scale_config(
        config_path,
        topic=topic,
        lake=str(tmp_path / "lake"),
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        kafka={"group_instance_id": "${KINGEST_TEST_INSTANCE}", "session_timeout_ms": 30000},
    )
    config = read_config(config_path)
    group = f"kingest-{config['pipeline']}"
    a = Instance("a", config_path, tmp_path)
    b = Instance("b", config_path, tmp_path, args=("--metrics-port", "0"))

    def assignments_seen_by_b() -> float:
        # kingest's count of assign callbacks (either client), read from b's metrics endpoint: a rebalance
        # hands b its partitions again. (A client's own log line would exist under one client only.)
        return b.metric('kingest_rebalances_total{event="assigned"}')

    try:
        a.start()
        b.start()
        before = wait_for(stable_with(kafka_admin, group, {"a", "b"}), "a and b share the partitions")
        produce_spread(produce, topic, 0, 2000, partitions)
        ends = end_offsets(kafka_bootstrap, topic, partitions)
        wait_for(lambda: group_offsets(kafka_admin, group, topic) == ends, "the records are committed")
        seen = assignments_seen_by_b()
        assert seen >= 1, "b's assignments are not visible on its metrics endpoint"

        a.kill()
        a.start()  # the same group_instance_id, well within the session timeout
        produce_spread(produce, topic, 2000, 2000, partitions)
        ends = end_offsets(kafka_bootstrap, topic, partitions)
        wait_for(lambda: group_offsets(kafka_admin, group, topic) == ends, "the restarted instance catches up")
        assert wait_for(stable_with(kafka_admin, group, {"a", "b"}), "the group is stable") == before
        assert assignments_seen_by_b() == seen, "the restart made the group rebalance"
        assert a.stop() == 0 and b.stop() == 0
    except BaseException:
        show_logs(a, b)
        raise
    finally:
        a.kill()
        b.kill()

    _, report = verify(config_path, **one_off(tmp_path))
    assert report["holds"] and report["totals"]["expected"] == 4000, report["violations"]
