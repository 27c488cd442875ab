"""`make simulate SEEDS=...`: run the simulation (tests/sim/harness.py) for many seeds, on every core.

    python -m tests.sim.simulate 10000          seeds 0 .. 9999
    python -m tests.sim.simulate 5000-6000      seeds 5000 .. 6000
    python -m tests.sim.simulate 3,129,4711     these seeds
    python -m tests.sim.simulate 129-129        seed 129 alone (with the steps before its violation)

Prints how many interleavings passed, and for each failure its seed, what broke, and the command line that
replays exactly that seed; with a single seed, the last steps before the violation as well.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import Counter
from typing import Any

from tests.sim.harness import LIVENESS, STEPS, Violation, run_seed


def parse_seeds(text: str) -> list[int]:
    """``N``: seeds 0 .. N-1; ``A-B``: A .. B (``7-7``: seed 7 alone); ``a,b,c``: a list (of seeds or ranges)."""
    text = text.replace(" ", "")
    if text.isdigit():
        return list(range(int(text)))
    seeds: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def run_one(args: tuple[int, int, float, dict[str, Any]]) -> tuple[int, str | None, str | None]:
    """(seed, first line of the violation or None, the full report or None)."""
    seed, steps, liveness, options = args
    try:
        run_seed(seed, steps=steps, liveness=liveness, **options)
    except Violation as violation:
        return seed, violation.what.splitlines()[0], violation.report()
    return seed, None, None


def run_many(
    seeds: list[int], jobs: int, steps: int = STEPS, liveness: float = LIVENESS, **options: Any
) -> list[tuple[int, str | None, str | None]]:
    """Every seed, on ``jobs`` processes; results in no particular order. ``options``: World's."""
    work = [(seed, steps, liveness, options) for seed in seeds]
    if jobs <= 1 or len(seeds) < 50:
        return [run_one(w) for w in work]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return list(pool.imap_unordered(run_one, work, chunksize=max(1, min(200, len(work) // (jobs * 8)))))


def kind(what: str) -> str:
    """The class of a violation, for the summary: its text without partition numbers, offsets and paths."""
    words = []
    for word in what.replace(":", " :").split():
        if any(c.isdigit() for c in word) or "/" in word:
            word = "#"
        if not words or words[-1] != word or word != "#":
            words.append(word)
    return " ".join(words).replace(" :", ":")[:110]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make simulate SEEDS=...", description=__doc__.split("\n\n")[0])
    parser.add_argument("seeds", help="N (seeds 0..N-1), A-B (a range, inclusive) or a,b,c (a list)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps of each run (default {STEPS})")
    parser.add_argument(
        "--liveness", type=float, default=LIVENESS, help="fraction of runs that end with the liveness check"
    )
    parser.add_argument(
        "--no-kafka-commit-failures",
        action="store_true",
        help="Kafka commits never fail (to look past the bug of a failed lag-only commit; changes every run)",
    )
    parser.add_argument("--partitions", type=int, default=2, help="partitions of the topic (default 2)")
    parser.add_argument(
        "--no-concurrent-saves", action="store_true", help="save a flush's partitions one after another"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one a core)")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    started = time.monotonic()
    options: dict[str, Any] = {"p_commit_fail": 0.0, "commit_refusals": False} if args.no_kafka_commit_failures else {}
    if args.partitions != 2:
        options["partitions"] = args.partitions
    if args.no_concurrent_saves:
        options["concurrent_saves"] = False
    results = sorted(run_many(seeds, args.jobs, args.steps, args.liveness, **options))
    seconds = time.monotonic() - started
    failed = [(seed, what, report) for seed, what, report in results if what is not None]
    print(
        f"{len(results) - len(failed)} of {len(results)} interleavings passed in {seconds:.1f}s "
        f"({len(results) / max(seconds, 1e-9):.0f} a second, {args.jobs} processes)"
    )
    if failed:
        kinds = Counter(kind(what) for _, what, _ in failed)
        print(f"{len(failed)} failed:")
        for text, count in kinds.most_common():
            print(f"  {count:5d}  {text}")
        for seed, what, report in failed[:50]:
            repro = next(line for line in report.splitlines() if line.startswith("reproduce: "))
            print(f"seed {seed}: {what}\n    {repro}")
        if len(failed) > 50:
            print(f"... and {len(failed) - 50} more")
        if len(seeds) == 1:
            print()
            print(failed[0][2])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
