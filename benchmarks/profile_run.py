#!/usr/bin/env python3
"""Where a `kingest run --until-caught-up` spends its time, per thread, from py-spy samples.

    .venv/bin/pip install py-spy                      # a profiler, not a dependency of kingest
    .venv/bin/python benchmarks/profile_run.py --topic T  # T: an existing topic, e.g. one kept by bench.py --keep-topic
    .venv/bin/python benchmarks/profile_run.py --topic T --semantics exactly-once --top 30
    .venv/bin/python benchmarks/profile_run.py --topic T --format avro --client confluent  # an Avro topic (registry)

Runs kingest into a temporary local lake (a fresh consumer group, so the whole topic is read) under
`py-spy record --threads`, then prints, per thread, the share of samples, and the functions with the most
samples: "self" (the function itself was running), and kingest's own functions by "total" (on the stack).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def aggregate(raw: Path, top: int) -> str:
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else "(starting)"
        threads[thread] += count
        calls = [_short(f) for f in frames[1:]] or [thread]
        own[calls[-1]] += count
        for call in set(calls):
            total[call] += count
    out = [f"{samples} samples", "", "| thread | share |", "|---|---:|"]
    out += [f"| {name} | {100 * n / samples:.1f}% |" for name, n in threads.most_common()]
    ours = collections.Counter({k: v for k, v in total.items() if "(kingest/" in k and "<module>" not in k})
    for title, counter in (("self: the function itself was running", own), ("total, kingest's functions", ours)):
        out += ["", f"| {title} | share |", "|---|---:|"]
        out += [f"| `{name}` | {100 * n / samples:.1f}% |" for name, n in counter.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """`Encoder._read (kingest/encoder.py:350)` -> `Encoder._read (kingest/encoder.py)`: one line per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--semantics", default="at-least-once")
    parser.add_argument("--client", default="kafka-python", help="kafka.client: kafka-python | confluent")
    parser.add_argument("--format", default="json", help="records.format: json | avro (with --registry)")
    parser.add_argument(
        "--registry",
        default=os.environ.get("KINGEST_REGISTRY_URL", "http://127.0.0.1:8081") + "/apis/ccompat/v7",
        help="records.schema_registry.url, for --format avro",
    )
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("profile_run.py: py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kingest-profile-"))
    try:
        name = f"profile-{uuid.uuid4().hex[:8]}"
        records: dict[str, Any] = {"format": args.format}
        if args.format == "avro":
            records["schema_registry"] = {"url": args.registry}
        config = {
            "pipeline": name,
            "kafka": {"bootstrap_servers": args.bootstrap, "topics": [args.topic], "client": args.client},
            "records": records,
            "lake": {"path": str(work / "lake")},
            "semantics": args.semantics,
        }
        (work / "kingest.yaml").write_text(json.dumps(config))
        raw = work / "samples.txt"
        command = [spy, "record", "--threads", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]
        command += [sys.executable, "-m", "kingest", "run", "-c", str(work / "kingest.yaml"), "--until-caught-up"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0 or not raw.exists():
            print(f"profile_run.py: the profiled run failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        summary = [line for line in done.stdout.splitlines() if line.startswith("done:")]
        print("\n".join(summary))
        print(aggregate(raw, args.top))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
