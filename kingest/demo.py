"""The semantics lesson, made concrete: `python -m kingest.demo --bootstrap HOST:PORT --topic TOPIC`.

The same topic is ingested three times, once per semantics, each into its own lake. Each first run is killed
(SIGKILL, through ``KINGEST_CRASH_AT``) at the same moment of its cycle, between its two steps, the third time
it gets there:

- at-most-once at ``after-commit``: the offsets are committed, the batch is not written yet;
- at-least-once at ``after-write``: the batch is written, the offsets are not committed yet;
- exactly-once at ``after-write``: the batch is written, the manifest version naming it is not committed yet.

Each is then restarted with ``--until-caught-up`` (with a different batch size, as an operator might: the
replayed records are cut into other files than before the crash), and ``kingest verify`` audits the lake
against the topic. The table that ends the demo shows each semantics' character: at-most-once lost a batch
and duplicated nothing, at-least-once lost nothing and wrote the replayed batch twice, exactly-once neither.

It needs records in the topic (``make demo`` produces the sample orders first) and writes only to a fresh
folder (``--lake``, default a new temporary folder), with fresh consumer groups.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from . import config as config_module
from . import kafka_admin
from .errors import KingestError
from .verify import Report, audit

CRASH_POINTS = {
    "at-most-once": "after-commit",
    "at-least-once": "after-write",
    "exactly-once": "after-write",
}
BETWEEN = {
    "at-most-once": "offsets committed, batch not written",
    "at-least-once": "batch written, offsets not committed",
    "exactly-once": "batch written, manifest not committed",
}


@dataclass
class Outcome:
    semantics: str
    crash: str
    killed: bool
    report: Report


def demo_config(bootstrap: str, topic: str, lake: Path, semantics: str, tag: str, max_records: int) -> dict:
    return {
        "pipeline": f"demo-{semantics}-{tag}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": f"kingest-demo-{semantics}-{tag}",
            # A restarted member with the same instance id takes over at once, instead of waiting for the
            # killed one's session to time out.
            "group_instance_id": f"kingest-demo-{semantics}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": max_records // 2,
        },
        "records": {"format": "json"},
        "lake": {"path": str(lake / semantics)},
        "batch": {"max_records": max_records, "max_age": "30s"},
        "semantics": semantics,
    }


def run_kingest(config_path: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KINGEST_CRASH_AT"}
    if crash:
        env["KINGEST_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "kingest", "run", "-c", str(config_path), "--until-caught-up", "--log-format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def lesson(bootstrap: str, topic: str, lake: Path, console: Console, batch: int = 1000, nth: int = 3) -> list[Outcome]:
    tag = uuid.uuid4().hex[:6]
    lake.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for semantics, point in CRASH_POINTS.items():
        crash = f"{point}:{nth}"
        path = lake / f"{semantics}.yaml"
        path.write_text(yaml.safe_dump(demo_config(bootstrap, topic, lake, semantics, tag, batch)))
        console.print(f"[bold]{semantics}[/]: run, killed at {crash} ({BETWEEN[semantics]})")
        first = run_kingest(path, crash)
        killed = first.returncode == -9
        if not killed:
            console.print(f"  [yellow]the run was not killed (exit {first.returncode}): too few records?[/]")
            _fail_on_error(first)
        # Restarted with another batch size: replayed records are cut into other files than before the crash.
        path.write_text(yaml.safe_dump(demo_config(bootstrap, topic, lake, semantics, tag, batch + batch // 2)))
        console.print(f"  restarted with --until-caught-up (batch.max_records {batch} -> {batch + batch // 2})")
        _fail_on_error(run_kingest(path, None))
        report = audit(config_module.load(path))
        console.print(
            f"  kingest verify: {report.total('rows'):,} rows in the lake, {report.total('missing'):,} missing, "
            f"{report.total('duplicated'):,} duplicated"
        )
        outcomes.append(Outcome(semantics, crash, killed, report))
    return outcomes


def _fail_on_error(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode not in (0, -9):
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"kingest run failed (exit {done.returncode}):\n{tail}")


def table(outcomes: list[Outcome]) -> Table:
    out = Table(title="The same crash, three guarantees", title_justify="left")
    for column in ("semantics", "killed at", "records in topic", "in lake", "missing", "duplicated", "guarantee held"):
        left = column in ("semantics", "killed at", "guarantee held")
        out.add_column(column, justify="left" if left else "right", no_wrap=column != "guarantee held")
    for o in outcomes:
        r = o.report
        missing, duplicated = r.total("missing"), r.total("duplicated")
        out.add_row(
            o.semantics,
            o.crash if o.killed else f"{o.crash} (not reached)",
            f"{r.total('expected'):,}",
            f"{r.total('rows'):,}",
            f"[yellow]{missing:,}[/]" if missing else "0",
            f"[yellow]{duplicated:,}[/]" if duplicated else "0",
            f"[green]yes[/] ({r.guarantee})" if r.holds else f"[red]NO[/] ({r.guarantee})",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kingest.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KINGEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--topic", default="orders", help="a topic with records in it (default: orders)")
    parser.add_argument(
        "--lake", type=Path, default=None, help="a folder for the three lakes (default: a new temp folder)"
    )
    parser.add_argument("--batch", type=int, default=1000, help="batch.max_records of the first runs (default 1000)")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        records = _records_in(args.bootstrap, args.topic)
        if records < args.batch * 4:
            console.print(
                f"[red]topic {args.topic} holds {records} record(s); the demo needs at least {args.batch * 4}[/]: "
                "produce the sample first (python services/produce_sample.py --records 20000)"
            )
            return 2
        lake = args.lake or Path(tempfile.mkdtemp(prefix="kingest-demo-"))
        console.print(f"kingest demo: {records:,} records in {args.topic} on {args.bootstrap}; lakes under {lake}\n")
        started = time.monotonic()
        outcomes = lesson(args.bootstrap, args.topic, lake, console, batch=args.batch)
    except KingestError as error:
        console.print(f"[red]Error:[/] {error.message}", markup=True, highlight=False)
        if error.hint:
            console.print(f"  {error.hint}", markup=False, highlight=False)
        return 2
    console.print()
    console.print(table(outcomes))
    for line in (
        "at-most-once saves the offsets first: the batch in flight at the crash is lost, nothing is written twice.",
        "at-least-once writes first: the batch in flight is written again after the restart, nothing is lost.",
        "exactly-once commits the data files and the next offset in one manifest version: the files of the "
        "interrupted attempt are removed at the restart, which resumes where the manifest says: each record once.",
        f"({time.monotonic() - started:.0f}s; audit any lake again: kingest verify -c {lake}/<semantics>.yaml)",
    ):
        console.print(line, highlight=False)
    return 0 if all(o.report.holds and o.killed for o in outcomes) else 1


def _records_in(bootstrap: str, topic: str) -> int:
    config = config_module.parse(
        yaml.safe_dump(
            {
                "pipeline": "demo",
                "kafka": {"bootstrap_servers": bootstrap, "topics": [topic]},
                "lake": {"path": "unused"},
            }
        )
    )
    with kafka_admin.inspection_consumer(config) as consumer:
        tps = kafka_admin.topic_partitions(consumer, [topic], bootstrap)
        return sum(end - start for start, end in kafka_admin.log_offsets(consumer, tps).values())


if __name__ == "__main__":
    sys.exit(main())
