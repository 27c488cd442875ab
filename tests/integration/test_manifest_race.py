"""Many writers racing to commit the same offsets-manifest version, as zombies and new owners do during a
rebalance: on local disk (link of an fsynced temporary file) and on the real S3 server (SeaweedFS honours
``If-None-Match: *``), from threads and from separate processes. Each round exactly one writer wins, every
other gets ManifestConflict, and afterwards every reader loads the winner's state."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

import pytest

from kingest.errors import ManifestConflict
from kingest.lake import Lake
from kingest.manifest import ManifestStore

pytestmark = pytest.mark.integration

TOPIC = "orders"
ROUNDS = 4
BARRIER_TIMEOUT = 120


def race(url: str, storage_options: dict[str, Any], racer: int, barrier: Any, results: Any) -> None:
    """One writer: each round, load the partition's state, wait for every other writer to have loaded the same
    version, then try to commit the next version with a proposal of its own."""
    store = ManifestStore(Lake(url, storage_options), "race")
    try:
        for round_ in range(1, ROUNDS + 1):
            state = store.load(TOPIC, 0)
            barrier.wait(BARRIER_TIMEOUT)
            path = f"topic={TOPIC}/partition=0/r{round_}-w{racer}.parquet"
            entry = {"path": path, "first_offset": 0, "last_offset": 0, "rows": 1, "bytes": 1}
            try:
                store.commit(
                    state, operation="write", owner=f"w{racer}", next_offset=round_ * 1000 + racer, add=[entry]
                )
                outcome = "won"
            except ManifestConflict:
                outcome = "conflict"
            results.put((round_, racer, state.version, outcome))
            barrier.wait(BARRIER_TIMEOUT)  # nobody loads the next round before this one is decided
    except BaseException as exc:  # reported to the test, which fails with it
        results.put((0, racer, -1, f"error: {type(exc).__name__}: {exc}"))
        barrier.abort()


def run_threads(url: str, storage_options: dict[str, Any], racers: int) -> list[tuple]:
    barrier, results = threading.Barrier(racers), queue.Queue()
    threads = [threading.Thread(target=race, args=(url, storage_options, r, barrier, results)) for r in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=BARRIER_TIMEOUT * ROUNDS)
    return [results.get_nowait() for _ in range(results.qsize())]


def run_processes(url: str, storage_options: dict[str, Any], racers: int) -> list[tuple]:
    context = multiprocessing.get_context("spawn")  # no fork of a process with s3fs's IO thread running
    barrier, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=race, args=(url, storage_options, r, barrier, results)) for r in range(racers)]
    for p in processes:
        p.start()
    out = [results.get(timeout=BARRIER_TIMEOUT * ROUNDS) for _ in range(racers * ROUNDS)]
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def check(results: list[tuple], racers: int, store: ManifestStore) -> None:
    errors = [r for r in results if str(r[3]).startswith("error")]
    assert errors == []
    assert len(results) == racers * ROUNDS
    winners = {}
    for round_ in range(1, ROUNDS + 1):
        this = [r for r in results if r[0] == round_]
        assert {r[2] for r in this} == {round_ - 1}  # every racer tried the same version
        won = [r[1] for r in this if r[3] == "won"]
        assert len(won) == 1, f"round {round_}: winners {won}"
        assert sum(r[3] == "conflict" for r in this) == racers - 1
        winners[round_] = won[0]

    # Afterwards every reader loads the winners' history, and nothing of a loser.
    state = store.load(TOPIC, 0)
    last = winners[ROUNDS]
    assert (state.version, state.owner, state.next_offset) == (ROUNDS, f"w{last}", ROUNDS * 1000 + last)
    assert sorted(state.files) == sorted(f"topic={TOPIC}/partition=0/r{r}-w{w}.parquet" for r, w in winners.items())
    folder = f"{store.prefix}/manifest/topic={TOPIC}/partition=0"
    assert sorted(store.lake.listdir(folder)) == [f"{v:020d}.json" for v in range(1, ROUNDS + 1)]  # no temp file left


@pytest.fixture(params=["local", "s3"])
def lake_location(request, tmp_path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "lake"), {}
    return request.getfixturevalue("s3_prefix"), request.getfixturevalue("s3_storage_options")


def test_threads_racing_for_a_version_one_wins(lake_location):
    url, options = lake_location
    racers = 16
    results = run_threads(url, options, racers)
    check(results, racers, ManifestStore(Lake(url, options), "race"))


@pytest.mark.slow
def test_processes_racing_for_a_version_one_wins(lake_location):
    url, options = lake_location
    racers = 6
    results = run_processes(url, options, racers)
    check(results, racers, ManifestStore(Lake(url, options), "race"))


def test_a_claim_racing_a_zombies_commit_never_loses_the_zombies_valid_commit(lake_location):
    """A new owner claims while the previous owner commits its last batch: either the batch is committed and
    the claim goes on top of it, or the claim wins and the batch is refused. Never both lost, never both."""
    url, options = lake_location
    store = ManifestStore(Lake(url, options), "race")
    for attempt in range(5):
        partition = attempt
        previous = store.claim(TOPIC, partition, "previous")
        barrier = threading.Barrier(2)
        outcome: dict[str, Any] = {}

        def zombie(previous=previous, partition=partition, barrier=barrier, outcome=outcome) -> None:
            barrier.wait(BARRIER_TIMEOUT)
            try:
                outcome["zombie"] = store.commit(previous, operation="write", owner="previous", next_offset=50)
            except ManifestConflict:
                outcome["zombie"] = None

        def owner(partition=partition, barrier=barrier, outcome=outcome, previous=previous) -> None:
            barrier.wait(BARRIER_TIMEOUT)
            outcome["claim"] = store.claim(TOPIC, partition, "owner", since=previous)

        threads = [threading.Thread(target=zombie), threading.Thread(target=owner)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=BARRIER_TIMEOUT)
        claim = outcome["claim"]
        final = store.load(TOPIC, partition)
        assert (final.version, final.owner) == (claim.version, "owner")
        if outcome["zombie"] is not None:  # the batch made it: the claim is on top and resumes after it
            assert (claim.version, claim.next_offset) == (3, 50)
        else:  # the claim won: the batch is not in the manifest
            assert (claim.version, claim.next_offset) == (2, None)
