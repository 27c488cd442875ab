"""`python -m kingest.demo` (what `make demo` ends with): the same crash, three semantics, and the table that
shows each one's character. Against the real broker, with real kills."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from kingest import demo

from .support import PARTITIONS, produce_evenly

pytestmark = pytest.mark.integration


def test_demo_shows_each_semantics_character(tmp_path, kafka_bootstrap, topic_factory, produce):
    topic = topic_factory(partitions=PARTITIONS)
    produce_evenly(produce, topic, 1000)
    out = io.StringIO()
    console = Console(file=out, width=160)

    outcomes = demo.lesson(kafka_bootstrap, topic, tmp_path / "lakes", console, batch=200)

    by_semantics = {o.semantics: o for o in outcomes}
    assert list(by_semantics) == ["at-most-once", "at-least-once", "exactly-once"]
    assert all(o.killed for o in outcomes)
    assert all(o.report.holds for o in outcomes)
    at_most, at_least, exactly = (by_semantics[s].report for s in by_semantics)
    assert at_most.total("missing") > 0 and at_most.total("duplicated") == 0
    assert at_least.total("missing") == 0 and at_least.total("duplicated") > 0
    assert exactly.total("missing") == 0 and exactly.total("duplicated") == 0
    assert exactly.total("rows") == 3000 and exactly.orphan_files == []

    console.print(demo.table(outcomes))
    text = out.getvalue()
    assert "records in topic" in text and "guarantee held" in text
    for o in outcomes:
        row = next(line for line in text.splitlines() if line.startswith(f"│ {o.semantics}"))
        assert f"{o.report.total('missing'):,}" in row and "yes" in row


def test_demo_needs_records(kafka_bootstrap, topic_factory, capsys):
    topic = topic_factory(partitions=1)
    assert demo.main(["--bootstrap", kafka_bootstrap, "--topic", topic]) == 2
    assert f"topic {topic} holds 0 record(s)" in capsys.readouterr().out
