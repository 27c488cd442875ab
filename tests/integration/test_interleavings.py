"""Interleavings of real `kingest run` processes against the real broker, each forced at an exact line with
KINGEST_PAUSE_AT (the process waits there until released) and SIGSTOP (so that the group moves on without it),
never by sleeping and hoping. The guarantee is checked by an independent read of the lake and by verify."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .support import (
    Instance,
    LakeView,
    end_offsets,
    group_members,
    kingest,
    missing_and_duplicated,
    produce_spread,
    read_config,
    scale_config,
    wait_for,
)

pytestmark = pytest.mark.integration

RECORDS = 3_000


def test_a_writer_paused_between_its_claim_and_its_recovery_deletes_nothing_committed_meanwhile(
    tmp_path: Path, kafka_bootstrap: str, kafka_admin, topic_factory, produce
) -> None:
    """b claims the partition and stops right there (before recovering the files of earlier writers); the group
    drops it, a claims after it and commits every record; b resumes with the state of its own claim. Before
    the fix b's recovery deleted the files a had committed (issue 12: 668 records lost in a CI run)."""
    topic = topic_factory(partitions=1, name="paused-claim")
    config_path = tmp_path / "kingest.yaml"
    lake = tmp_path / "lake"
    scale_config(
        config_path,
        topic=topic,
        lake=str(lake),
        semantics="exactly-once",
        bootstrap=kafka_bootstrap,
        batch={"max_age": "1s"},
    )
    config = read_config(config_path)
    group = f"kingest-{config['pipeline']}"
    produce_spread(produce, topic, 0, RECORDS, 1)
    release = tmp_path / "release-b"
    b = Instance(
        "b", config_path, tmp_path, env={"KINGEST_PAUSE_AT": "after-claim", "KINGEST_PAUSE_FILE": str(release)}
    )
    a = Instance("a", config_path, tmp_path)
    view = LakeView(str(lake))
    try:
        b.start()
        wait_for(lambda: Path(f"{release}.paused").exists(), "b stops right after its claim")
        b.send(signal.SIGSTOP)  # and stops heartbeating: the group moves on without it
        a.start()

        def a_alone() -> bool:
            state, members = group_members(kafka_admin, group)
            return state == "Stable" and set(members) == {"a"}

        wait_for(a_alone, "the group gives the partition to a", timeout=90)
        wait_for(lambda: view.manifest_files(config["pipeline"], topic, 0)[0] == RECORDS, "a commits every record")
        b.send(signal.SIGCONT)
        release.touch()  # b runs its recovery now, with the state of its claim

        def both_members() -> bool:  # b got past the callback it was paused in, found itself out, and rejoined
            state, members = group_members(kafka_admin, group)
            return state == "Stable" and set(members) == {"a", "b"}

        wait_for(both_members, "b resumes and rejoins the group", timeout=90)
        assert a.stop() == 0
        assert b.stop() == 0
    except BaseException:
        print(a.logs(), b.logs())
        raise
    finally:
        a.kill()
        b.kill()

    ends = end_offsets(kafka_bootstrap, topic, 1)
    next_offset, files = view.manifest_files(config["pipeline"], topic, 0)
    present = {str(p.relative_to(lake)) for p in lake.rglob("*.parquet")}
    assert set(files) <= present, f"files named by the manifest are gone: {sorted(set(files) - present)}"
    named = view.offsets([f"{view.root}/{f}" for f in files])
    missing, duplicated = missing_and_duplicated(named, ends)
    assert (missing, duplicated) == ({0: 0}, {0: 0})
    report = json.loads(kingest("verify", "-c", str(config_path), "--json", cwd=tmp_path).stdout)
    assert report["holds"] and report["totals"]["missing"] == 0 and report["totals"]["duplicated"] == 0
