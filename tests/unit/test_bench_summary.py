"""The benchmark's summary (benchmarks/summary.py): from measured runs to the figures, ratios, targets, table rows
and chart bars that bench.py writes, on small hand-made runs. And the contenders (benchmarks/contenders.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    """benchmarks/ is a folder of scripts, not a package: load a module by path (and leave sys.path alone)."""
    spec = importlib.util.spec_from_file_location(f"kingest_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[f"kingest_bench_{name}"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


contenders = _load("contenders")
measure = _load("measure")
summary = _load("summary")
Contender, Run = contenders.Contender, measure.Run

JAVA = Contender("java", "Java", "java")
BARE = Contender("bare", "bare kafka-python", "bare")
BARE_CONFLUENT = Contender("bare-confluent", "bare confluent", "bare", client="confluent")
ALO = Contender("alo", "kingest alo", "kingest", semantics="at-least-once")
ALO_CONFLUENT = Contender(
    "alo-confluent", "kingest alo confluent", "kingest", semantics="at-least-once", client="confluent"
)


WIDE_EO_1 = contenders.wide("wide-eo-1", "exactly-once", 1)
WIDE_EO_32 = contenders.wide("wide-eo-32", "exactly-once", 32, "wide-eo-1")


def run(name: str, rep: int, wall: float, records: int | None = 1000, cpu: float = 1.0, rss: float = 100.0, **extra):
    return Run(name, rep, wall, cpu * 0.75, cpu * 0.25, rss, 0, 1.0, records, dict(extra))


class Topic:
    def __init__(self, records: int, nbytes: int, partitions: int = 6, value_bytes: int = 0) -> None:
        self.records, self.nbytes, self.partitions, self.value_bytes = records, nbytes, partitions, value_bytes


# ------------------------------------------------------------------------------------ medians and rates


def test_median_of_nothing_is_none():
    assert summary.median([]) is None
    assert summary.median([3.0, 1.0, 2.0]) == 2.0
    assert summary.median([1.0, 2.0]) == 1.5


def test_rate_is_records_over_wall_time_and_none_without_a_run_or_records():
    runs = summary.index([run("alo", 0, wall=2.0, records=1000), run("eo", 0, wall=2.0, records=0)])
    assert summary.rate(runs, "alo", 0) == 500.0
    assert summary.rate(runs, "alo", 1) is None
    assert summary.rate(runs, "eo", 0) is None
    assert summary.cpu_per_record(runs, "alo", 0) == pytest.approx(0.001)


def test_net_rate_takes_off_the_startup_twins_wall_time():
    runs = summary.index([run("alo", 0, wall=5.0), run("alo:startup", 0, wall=1.0, records=6)])
    assert summary.net_rate(runs, "alo", 0) == 250.0


def test_net_rate_is_none_without_a_startup_or_when_the_startup_took_as_long():
    runs = summary.index([run("alo", 0, wall=5.0), run("eo", 0, wall=1.0), run("eo:startup", 0, wall=1.0)])
    assert summary.net_rate(runs, "alo", 0) is None
    assert summary.net_rate(runs, "eo", 0) is None


def test_javas_net_rate_is_its_own_fetch_rate():
    runs = summary.index([run("java", 0, wall=3.0, records=1000, **{"fetch.time.ms": "500"})])
    assert summary.net_rate(runs, "java", 0) == 2000.0


def test_a_ratio_is_taken_within_a_repetition_then_the_median():
    # alo is 0.5x bare in two repetitions and 0.25x in the third: the median of the ratios is 0.5 (the ratio of
    # the median rates, 125 / 500, would be 0.25: it pairs runs from different repetitions).
    walls = {0: (2.0, 1.0), 1: (8.0, 4.0), 2: (8.0, 2.0)}
    runs = summary.index([r for rep, (a, b) in walls.items() for r in (run("alo", rep, a), run("bare", rep, b))])
    assert summary.median_ratio(summary.rate, runs, "alo", "bare", 3) == 0.5


def test_a_ratio_leaves_out_the_repetitions_where_either_side_is_missing():
    runs = summary.index([run("alo", 0, 2.0), run("bare", 0, 1.0), run("alo", 1, 4.0), run("alo", 2, 1.0)])
    assert summary.median_ratio(summary.rate, runs, "alo", "bare", 3) == 0.5
    assert summary.median_ratio(summary.rate, runs, "alo", "java", 3) is None


# ------------------------------------------------------------------------------------ a contender's figures

# The keys of an entry of the JSON's "results": docs/performance.md and the results files quote them.
COMMON_KEYS = [
    "label",
    "topic",
    "records",
    "records_per_s",
    "mb_per_s",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "max_peak_rss_mb",
    "startup_s",
    "net_records_per_s",
    "vs_java",
    "vs_bare",
    "net_vs_java",
    "net_vs_bare",
    "vs_own_bare",
    "client",
    "cpu_per_record_vs_bare",
]


def _two_reps() -> Any:
    return summary.index(
        [
            run("bare", 0, wall=2.0, cpu=2.0, rss=90),
            run("bare", 1, wall=4.0, cpu=2.0, rss=92),
            run("bare-confluent", 0, wall=0.5, cpu=0.5, rss=80),
            run("bare-confluent", 1, wall=1.0, cpu=0.5, rss=80),
            run("alo", 0, wall=4.0, cpu=4.0, rss=250, files=6, commits=3),
            run("alo", 1, wall=8.0, cpu=4.0, rss=260, files=6, commits=3),
            run("alo:startup", 0, wall=1.0, records=6),
            run("alo:startup", 1, wall=2.0, records=6),
            run("alo-confluent", 0, wall=1.0, cpu=2.0, rss=255),
            run("alo-confluent", 1, wall=2.0, cpu=2.0, rss=265),
        ]
    )


def test_a_kingest_contenders_figures_are_medians_and_ratios_within_repetitions():
    entry = summary.contender_result(ALO, _two_reps(), 2, records=1000, nbytes=500_000_000)
    assert list(entry) == [*COMMON_KEYS, "batch_max_bytes", "rss_limit_mb", "files", "commits"]
    assert entry["records_per_s"] == pytest.approx((250 + 125) / 2)
    assert entry["mb_per_s"] == pytest.approx((125 + 62.5) / 2)
    assert (entry["wall_s"], entry["cpu_s"], entry["peak_rss_mb"], entry["max_peak_rss_mb"]) == (6.0, 4.0, 255, 260)
    assert entry["startup_s"] == 1.5
    assert entry["net_records_per_s"] == pytest.approx((1000 / 3 + 1000 / 6) / 2)
    assert entry["vs_bare"] == 0.5
    assert entry["vs_own_bare"] == 0.5  # kafka-python: its own client's loop is "bare"
    assert entry["net_vs_bare"] is None  # the bare loop has no startup run here
    assert entry["vs_java"] is None and entry["net_vs_java"] is None  # Java did not run
    assert entry["cpu_per_record_vs_bare"] == 2.0
    assert entry["batch_max_bytes"] == 64 << 20
    assert entry["rss_limit_mb"] == pytest.approx(1.5 * 64 * 1.048576 + 200)
    assert (entry["files"], entry["commits"]) == (6, 3)


def test_vs_own_client_is_the_bare_loop_of_the_contenders_client():
    entry = summary.contender_result(ALO_CONFLUENT, _two_reps(), 2, records=1000, nbytes=1)
    assert entry["vs_bare"] == 2.0  # against the kafka-python loop, always
    assert entry["vs_own_bare"] == 0.5  # against bare-confluent
    assert entry["client"] == "confluent"
    bare_confluent = summary.contender_result(BARE_CONFLUENT, _two_reps(), 2, records=1000, nbytes=1)
    assert bare_confluent["vs_own_bare"] == 1.0 and bare_confluent["vs_bare"] == 4.0
    assert list(bare_confluent) == COMMON_KEYS


def test_java_reports_its_fetch_rate_and_rebalance_time():
    runs = summary.index(
        [run("java", 0, 2.0, **{"fetch.time.ms": "1000", "fetch.nMsg.sec": "1000.0", "rebalance.time.ms": "400"})]
    )
    entry = summary.contender_result(JAVA, runs, 1, records=1000, nbytes=1)
    assert list(entry) == [*COMMON_KEYS, "java_fetch_records_per_s", "java_rebalance_ms"]
    assert entry["vs_java"] == 1.0 and entry["net_records_per_s"] == 1000.0
    assert (entry["java_fetch_records_per_s"], entry["java_rebalance_ms"]) == (1000.0, 400.0)


def test_a_contender_that_did_not_run_has_no_figures():
    entry = summary.contender_result(JAVA, summary.index([]), 3, records=1000, nbytes=1)
    assert entry["records"] == 1000
    assert all(entry[k] is None for k in COMMON_KEYS if k not in ("label", "topic", "records", "client"))


def test_results_keep_the_chosen_order_and_each_contenders_own_topic():
    one_record = Contender("alo-1-record", "one record", "kingest", topic="slice", batch={"max_records": 1})
    runs = summary.index([run("bare", 0, 1.0), run("alo-1-record", 0, 4.0, records=20)])
    found = summary.results([one_record, BARE], runs, 1, {"main": Topic(1000, 10**6), "slice": Topic(20, 10**4)})
    assert list(found) == ["alo-1-record", "bare"]
    assert found["alo-1-record"]["records"] == 20 and found["alo-1-record"]["records_per_s"] == 5.0
    assert found["alo-1-record"]["vs_bare"] == pytest.approx(0.005)
    assert found["alo-1-record"]["batch_max_bytes"] == 64 << 20  # the default: only max_records was set


def _wide_runs() -> Any:
    """Two repetitions of the wide group's exactly-once pair: 32 partitions at 0.5x and 0.7x of 1 partition."""
    proxied = {"proxy_requests": 100, "proxy_round_trips": 150, "proxy_cpu_s": 0.1}
    return summary.index(
        [
            run("wide-eo-1", 0, wall=4.0, records=64_000, files=32, commits=32, flushes=32, **proxied),
            run("wide-eo-1", 1, wall=7.0, records=64_000, files=32, commits=32, flushes=32, **proxied),
            run("wide-eo-32", 0, wall=8.0, records=64_000, files=1024, commits=1024, flushes=32, **proxied),
            run("wide-eo-32", 1, wall=10.0, records=64_000, files=1024, commits=1024, flushes=33, **proxied),
        ]
    )


def test_a_wide_contender_is_compared_with_its_baseline_within_each_repetition():
    runs = _wide_runs()
    entry = summary.contender_result(WIDE_EO_32, runs, 2, records=64_000, nbytes=15_000_000, partitions=32)
    assert entry["vs_baseline"] == pytest.approx((0.5 + 0.7) / 2)  # 4/8 and 7/10, not the medians' 5.5/9
    assert entry["vs_bare"] is None  # another topic than the bare loop's, which did not run anyway
    assert (entry["group"], entry["partitions"], entry["baseline"], entry["max_concurrency"]) == (
        "wide",
        32,
        "wide-eo-1",
        None,
    )
    assert (entry["files"], entry["commits"], entry["flushes"]) == (1024, 1024, 32.5)
    assert (entry["proxy_requests"], entry["proxy_round_trips"], entry["proxy_cpu_s"]) == (100, 150, 0.1)
    assert entry["delay_ms"] == 20.0
    base = summary.contender_result(WIDE_EO_1, runs, 2, records=64_000, nbytes=15_000_000, partitions=1)
    assert base["baseline"] is None and base["vs_baseline"] is None


def test_a_wide_contender_without_its_baseline_or_the_proxy_counts_has_no_such_figures():
    runs = summary.index([run("wide-eo-32", 0, wall=8.0, records=64_000, files=1024, commits=1024)])
    entry = summary.contender_result(WIDE_EO_32, runs, 1, records=64_000, nbytes=1, partitions=32)
    assert entry["vs_baseline"] is None
    assert "flushes" not in entry and "proxy_requests" not in entry  # runs from before kingest reported them


def test_the_wide_contenders_configs_give_one_batch_of_every_partition_a_flush():
    by_name = {c.name: c for c in contenders.CONTENDERS}
    assert contenders.GROUPS["wide"] == [
        "wide-eo-1",
        "wide-eo-32",
        "wide-eo-32-seq",
        "wide-alo-1",
        "wide-alo-32",
        "wide-eo-delta-1",
        "wide-eo-delta-32",
    ]
    for name in contenders.GROUPS["wide"]:
        c = by_name[name]
        partitions = contenders.WIDE_TOPICS[c.topic]
        config = c.kingest_config(pipeline="p", bootstrap="b", topic="t", lake_path="s3://b/p", storage_options={})
        # the same number of batches a partition: 64,000 records in 32 rounds of one batch of every partition
        assert -(-contenders.WIDE_RECORDS // partitions // config["batch"]["max_records"]) == 32
        assert config["kafka"]["max_partition_fetch_bytes"] == config["batch"]["max_records"] * 320
        assert (c.lake, c.delay_ms, c.group) == ("s3", 20.0, "wide")
        # its semantics (and lake format), 1 partition
        assert c.baseline == ("" if partitions == 1 else name.replace("-32", "-1").removesuffix("-seq"))
    seq = by_name["wide-eo-32-seq"].kingest_config(
        pipeline="p", bootstrap="b", topic="t", lake_path="s3://b/p", storage_options={"k": "v"}
    )
    assert seq["lake"] == {"path": "s3://b/p", "storage_options": {"k": "v"}, "max_concurrency": 1}
    assert (
        "max_concurrency"
        not in by_name["wide-eo-32"].kingest_config(
            pipeline="p", bootstrap="b", topic="t", lake_path="s3://b/p", storage_options={}
        )["lake"]
    )
    assert not any(s.startup_of.startswith("wide") for s in contenders.STARTUPS)  # no tiny twin: another topic
    # the sequential run takes minutes: in the first repetition only
    assert {c.name: c.repetitions for c in contenders.CONTENDERS if c.repetitions} == {"wide-eo-32-seq": 1}


def test_the_wide_targets_compare_32_partitions_with_1_for_each_semantics():
    wide = {t.name: t for t in contenders.TARGETS if t.name.startswith("wide")}
    assert {n: (t.base, t.lower, t.upper) for n, t in wide.items()} == {
        "wide-eo-32": ("wide-eo-1", 0.6, None),
        "wide-alo-32": ("wide-alo-1", 0.7, None),
        "wide-eo-delta-32": ("wide-eo-delta-1", 0.6, None),
    }
    runs = _wide_runs()
    results = {"wide-eo-1": {}, "wide-eo-32": {}}
    found = summary.targets(contenders.TARGETS, results, runs, 2, [])
    assert [t["target"] for t in found] == ["exactly-once, S3 +20 ms: 32 partitions >= 0.6x 1 partition"]
    assert found[0]["value"] == pytest.approx(0.6) and found[0]["met"] is True
    assert found[0]["net_value"] is None and found[0]["net_met"] is None  # no startup twins


# ------------------------------------------------------------------------------------ targets


def test_a_ratio_target_is_met_within_its_bounds_as_measured_and_net():
    runs = summary.index(
        [
            *(run("alo", 0, 10.0), run("alo:startup", 0, 2.0)),
            *(run("amo", 0, 9.6), run("amo:startup", 0, 2.0)),
        ]
    )
    results = {"alo": {}, "amo": {}}
    t = summary.ratio_target(contenders.Target("amo within 5% of alo", "amo", "alo", 0.95, 1.05), results, runs, 1)
    assert t == {
        "target": "amo within 5% of alo",
        "value": pytest.approx(10 / 9.6),
        "met": True,
        "net_value": pytest.approx(8 / 7.6),
        "net_met": False,  # 1.053: above the upper bound
    }


def test_a_ratio_target_of_a_contender_not_run_is_neither_met_nor_missed():
    runs = summary.index([run("alo", 0, 1.0), run("bare", 0, 1.0)])
    t = summary.ratio_target(contenders.Target("eo >= 0.9x bare", "eo", "bare", 0.9), {"alo": {}, "bare": {}}, runs, 1)
    assert t == {"target": "eo >= 0.9x bare", "value": None, "met": None, "net_value": None, "net_met": None}


def test_targets_leave_out_those_of_which_neither_contender_ran():
    runs = summary.index([run("alo", 0, 1.0), run("bare", 0, 1.0)])
    ratio = [
        contenders.Target("alo >= 0.9x bare", "alo", "bare", 0.9),
        contenders.Target("eo >= 0.9x bare", "eo", "bare", 0.9),  # eo did not run: shown, neither met nor missed
        contenders.Target("wide", "wide-eo-32", "wide-eo-1", 0.6),  # another group's: left out
    ]
    found = summary.targets(ratio, {"alo": {}, "bare": {}}, runs, 1, [])
    assert [(t["target"], t["met"]) for t in found] == [("alo >= 0.9x bare", True), ("eo >= 0.9x bare", None)]


def test_targets_are_the_ratios_then_memory_then_help():
    results = {
        "bare": {"max_peak_rss_mb": 90.0},
        "alo": {"rss_limit_mb": 301.0, "max_peak_rss_mb": 253.66},
        "eo": {"rss_limit_mb": 301.0, "max_peak_rss_mb": 320.0},
        "amo": {"rss_limit_mb": 301.0, "max_peak_rss_mb": None},  # not run
    }
    runs = summary.index([run("alo", 0, 1.25), run("bare", 0, 1.0)])
    found = summary.targets([contenders.Target("alo", "alo", "bare", 0.9)], results, runs, 1, [0.2, 0.1, 0.15])
    assert [t["target"] for t in found] == [
        "alo",
        "alo: peak RSS <= 1.5 x batch.max_bytes + 200 MB (301 MB)",
        "eo: peak RSS <= 1.5 x batch.max_bytes + 200 MB (301 MB)",
        "kingest --help under 0.3 s (median of 3)",
    ]
    assert (found[0]["value"], found[0]["met"]) == (0.8, False)
    assert (found[1]["value"], found[1]["met"], found[2]["met"]) == (253.7, True, False)
    assert (found[3]["value"], found[3]["met"]) == (0.15, True)
    assert summary.help_target([]) is None


# ------------------------------------------------------------------------------------ the table and the chart


def _entry(**changes: Any) -> dict[str, Any]:
    entry = {
        "label": "kingest alo",
        "topic": "main",
        "records": 500_000,
        "records_per_s": 64203.7,
        "mb_per_s": 32.79,
        "wall_s": 7.788,
        "cpu_s": 9.981,
        "peak_rss_mb": 248.4,
        "startup_s": 0.915,
        "vs_java": 0.3907,
        "vs_bare": 0.7262,
        "vs_own_bare": 0.7262,
        "net_vs_bare": 0.7588,
        "cpu_per_record_vs_bare": 2.031,
    }
    return {**entry, **changes}


def test_a_table_row():
    assert summary.table_row(_entry()) == (
        "| kingest alo | 64,204 | 32.8 | 7.79 | 9.98 | 248 | 0.39 | 0.73 | 0.73 | 0.92 | 0.76 | 2.03 |"
    )


def test_a_table_row_of_missing_figures_and_of_another_topic():
    row = summary.table_row(
        _entry(
            label="one record",
            topic="slice",
            records=2000,
            records_per_s=227.0,
            vs_java=0.00138,
            vs_bare=0.00257,
            vs_own_bare=None,
            startup_s=None,
            net_vs_bare=None,
        )
    )
    assert row == "| one record (2,000 records) | 227 | 32.8 | 7.79 | 9.98 | 248 | 0.0014 | 0.0026 | – | – | – | 2.03 |"


def test_a_result_without_vs_own_bare_shows_a_dash():
    entry = _entry()
    del entry["vs_own_bare"]  # results files from before the confluent contenders
    assert "| 0.73 | – | 0.92 |" in summary.table_row(entry)


def test_target_rows():
    ratio = {"target": "alo >= 0.9x", "value": 0.7262, "met": False, "net_value": 0.7588, "net_met": False}
    assert summary.target_row(ratio) == "| alo >= 0.9x | 0.726 | **no** | 0.759 | **no** |"
    missing = {"target": "eo >= 0.9x", "value": None, "met": None, "net_value": None, "net_met": None}
    assert summary.target_row(missing) == "| eo >= 0.9x | – | – |  | – |"
    memory = {"target": "alo: peak RSS", "value": 253.7, "met": True}
    assert summary.target_row(memory) == "| alo: peak RSS | 253.700 | yes |  |  |"


def _document(results: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "date": "2026-11-29T00:40:00+00:00",
        "dataset": {"records": 500_000, "mean_value_bytes": 498.7, "key_and_value_mb": 255.37, "partitions": 6},
        "machine": {"cpus": 2, "load_average_per_repetition": [[1.23, 1.1, 1.0], [0.99, 1.0, 1.0], [1.71, 1.2, 1.1]]},
        "repetitions": 3,
        "results": results,
        "targets": targets,
    }


def test_the_markdown_is_the_dataset_line_the_table_and_the_targets():
    target = {"target": "t", "value": 0.5, "met": False, "net_value": None, "net_met": None}
    text = summary.markdown(_document({"alo": _entry()}, [target]))
    assert text.splitlines() == [
        "500,000 JSON records (mean value 499 B, 255.37 MB of keys and values) over 6 partitions; "
        "median of 3 repetition(s); 2 CPUs, 1-min load average 1.0-1.7 during the run.",
        "",
        *summary.TABLE_HEADER,
        summary.table_row(_entry()),
        "",
        *summary.TARGETS_HEADER,
        "| t | 0.500 | **no** |  | – |",
    ]


def test_the_chart_bars_run_bottom_to_top_with_the_baselines_in_grey():
    results = {
        "bare": _entry(label="bare", records_per_s=88406.0, vs_bare=1.0, peak_rss_mb=90.0),
        "alo": {**_entry(), "rss_limit_mb": 301.3},
        "eo-s3": _entry(label="s3", records_per_s=None, vs_bare=None, peak_rss_mb=None),
    }
    bars = summary.chart_bars(results, ["java", "bare"])
    assert [b.name for b in bars] == ["eo-s3", "alo", "bare"]
    assert [b.color for b in bars] == [summary.KINGEST_COLOR, summary.KINGEST_COLOR, summary.BASELINE_COLOR]
    assert [b.note for b in bars] == ["", "64,204/s  0.73x bare", "88,406/s"]
    assert [(b.rate, b.rss, b.rss_limit) for b in bars] == [
        (0.0, 0, None),
        (64203.7, 248.4, 301.3),
        (88406.0, 90.0, None),
    ]
    assert summary.chart_title(_document(results, [])) == (
        "kingest 2026-11-29: 500,000 JSON records of ~499 B, 6 partitions, median of 3; 2 CPUs, load 1.0-1.7"
    )


def _wide_entry(**changes: Any) -> dict[str, Any]:
    entry = {
        **_entry(label="kingest eo, S3 +20 ms, 32 partitions", topic="wide-32", records=64_000),
        "records_per_s": 5123.4,
        "wall_s": 12.49,
        "cpu_s": 9.87,
        "peak_rss_mb": 170.2,
        "files": 1024,
        "flushes": 32,
        "group": "wide",
        "partitions": 32,
        "baseline": "wide-eo-1",
        "vs_baseline": 0.4567,
        "proxy_requests": 3800,
        "proxy_round_trips": 6500,
        "proxy_cpu_s": 1.234,
    }
    return {**entry, **changes}


def test_a_wide_row():
    assert summary.wide_row(_wide_entry()) == (
        "| kingest eo, S3 +20 ms, 32 partitions | 32 | 5,123 | 12.49 | 9.87 | 170 | 32 | 1024 | 3,800 | 6,500 | "
        "6.3 | 1.23 | 0.46 |"
    )
    baseline = _wide_entry(label="1", partitions=1, files=32, vs_baseline=None, baseline=None)
    assert summary.wide_row(baseline).endswith("| 203.1 | 1.23 | – |")
    unproxied = {k: v for k, v in _wide_entry().items() if not k.startswith("proxy_") and k != "flushes"}
    assert summary.wide_row(unproxied).endswith("| 9.87 | 170 | – | 1024 | – | – | – | – | 0.46 |")


def _wide_document(results: dict[str, Any], dataset: dict[str, Any] | None) -> dict[str, Any]:
    doc = _document(results, [{"target": "t", "value": 0.5, "met": False, "net_value": None, "net_met": None}])
    wide_topic = {"records": 64_000, "partitions": 1, "mean_value_bytes": 203.5, "key_and_value_mb": 13.8}
    doc["wide"] = {
        "topics": {"wide-1": wide_topic, "wide-32": {**wide_topic, "partitions": 32, "mean_value_bytes": 203.6}},
        "value_size_target": 200,
        "delay_ms": 20.0,
    }
    doc["dataset"] = dataset
    return doc


def test_the_markdown_has_the_wide_table_apart_from_the_main_one():
    main = _document({}, [])["dataset"]
    results = {"alo": _entry(), "wide-eo-32": _wide_entry()}
    lines = summary.markdown(_wide_document(results, main)).splitlines()
    wide_line = (
        "Wide topics: 64,000 JSON records (mean value 204 B) over 1 and 32 partitions, into S3 through a proxy "
        "adding 20 ms to each request; median of 3 repetition(s); vs 1 partition within each repetition."
    )
    assert lines == [
        lines[0],  # the main dataset's line
        "",
        *summary.TABLE_HEADER,
        summary.table_row(_entry()),  # the wide contender is not in the main table
        "",
        wide_line,
        "",
        *summary.WIDE_HEADER,
        summary.wide_row(_wide_entry()),
        "",
        *summary.TARGETS_HEADER,
        "| t | 0.500 | **no** |  | – |",
    ]
    # --only wide: no main topic; the wide line says the machine's
    alone = summary.markdown(_wide_document({"wide-eo-32": _wide_entry()}, None)).splitlines()
    assert alone[0] == wide_line + " 2 CPUs, 1-min load average 1.0-1.7 during the run."
    assert alone[2:4] == summary.WIDE_HEADER
    doc = _wide_document({"wide-eo-32": _wide_entry()}, None)
    assert summary.chart_title(doc) == ("kingest 2026-11-29: wide topics, S3 +20 ms, median of 3; 2 CPUs, load 1.0-1.7")


def test_the_wide_figures_of_the_json():
    topics = {"wide-1": Topic(64_000, 13_800_000, 1, 13_024_000), "wide-32": Topic(64_000, 13_800_000, 32, 0)}
    assert summary.wide_figures(topics, 200, 20.0) == {
        "topics": {
            "wide-1": {"records": 64_000, "partitions": 1, "mean_value_bytes": 203.5, "key_and_value_mb": 13.8},
            "wide-32": {"records": 64_000, "partitions": 32, "mean_value_bytes": 0.0, "key_and_value_mb": 13.8},
        },
        "value_size_target": 200,
        "delay_ms": 20.0,
    }


def test_a_wide_bar_notes_its_ratio_to_its_baseline_not_to_the_bare_loop():
    results = {"wide-eo-32": _wide_entry(), "wide-eo-1": _wide_entry(baseline=None, vs_baseline=None)}
    bars = summary.chart_bars(results, ["java", "bare"])
    assert [b.note for b in bars] == ["5,123/s", "5,123/s  0.46x wide-eo-1"]


def test_a_run_row_is_rounded_and_carries_what_the_contender_reported():
    r = Run("bare", 1, 5.52049, 4.2119, 0.8561, 89.71, 0, 1.2345, 500_000, {"first_record_s": 0.5179})
    assert summary.run_row(r) == {
        "name": "bare",
        "rep": 1,
        "wall_s": 5.52,
        "user_s": 4.212,
        "sys_s": 0.856,
        "maxrss_mb": 89.7,
        "load1": 1.23,
        "records": 500_000,
        "first_record_s": 0.5179,
    }


# ------------------------------------------------------------------------------------ the published results


def _numbers_approx(figures: dict[str, Any]) -> dict[str, Any]:
    """Floats to within 0.1% (the runs' wall times are kept to the millisecond), the rest exactly."""
    return {k: pytest.approx(v, rel=1e-3) if isinstance(v, float) else v for k, v in figures.items()}


@pytest.mark.parametrize("published", ["2026-11-29.json", "2026-12-06-wide.json"])
def test_the_runs_of_the_published_results_give_their_figures_again(published: str):
    """benchmarks/results/2026-11-29.json and 2026-12-06-wide.json (quoted by docs/performance.md and the
    README): their runs, summarised anew, give the results and targets they hold (to the rounding of the runs'
    wall times)."""
    stored = json.loads((BENCHMARKS / "results" / published).read_text())
    measured = ("name", "rep", "wall_s", "user_s", "sys_s", "maxrss_mb", "load1", "records")
    runs = summary.index(
        Run(
            *(row[k] for k in measured[:6]),
            0,
            row["load1"],
            row["records"],
            {k: row[k] for k in row if k not in measured},
        )
        for row in stored["runs"]
    )
    by_name = {c.name: c for c in contenders.CONTENDERS}
    chosen = [by_name[name] for name in stored["results"]]
    # the topics' bytes are not kept: back from each topic's MB/s and wall time
    topics = {
        r["topic"]: Topic(r["records"], round(r["mb_per_s"] * r["wall_s"] * 1_000_000), r.get("partitions", 6))
        for r in stored["results"].values()
    }
    results = summary.results(chosen, runs, stored["repetitions"], topics)
    assert list(results) == list(stored["results"])
    for name, entry in results.items():
        assert _numbers_approx(entry) == stored["results"][name], name
    # the targets of its day (a target added since, e.g. Delta vs Parquet, is not in a file published before)
    published_targets = {t["target"] for t in stored["targets"]}
    of_the_day = [t for t in contenders.TARGETS if t.text in published_targets]
    targets = summary.targets(of_the_day, results, runs, stored["repetitions"], stored["help_seconds"])
    assert len(targets) == len(stored["targets"])
    for found, published in zip(targets, stored["targets"], strict=True):
        assert _numbers_approx(found) == published


# ------------------------------------------------------------------------------------ the contenders


def test_every_contender_on_the_main_topic_but_java_has_a_startup_twin():
    names = [c.name for c in contenders.CONTENDERS]
    assert len(set(names)) == len(names)
    twins = {s.startup_of: s for s in contenders.STARTUPS}
    assert set(twins) == {c.name for c in contenders.CONTENDERS if c.kind != "java" and c.topic == "main"}
    eo_s3 = twins["eo-s3"]
    assert (eo_s3.name, eo_s3.topic, eo_s3.lake, eo_s3.semantics, eo_s3.is_startup) == (
        "eo-s3:startup",
        "tiny",
        "s3",
        "exactly-once",
        True,
    )


def test_every_target_names_contenders_that_exist():
    names = {c.name for c in contenders.CONTENDERS}
    assert all(t.name in names and t.base in names for t in contenders.TARGETS)


def test_a_kingest_contenders_config():
    c = Contender(
        "alo-16MiB", "16", "kingest", semantics="at-least-once", batch={"max_bytes": "16MiB"}, client="confluent"
    )
    config = c.kingest_config(pipeline="p", bootstrap="b:9092", topic="t", lake_path="/l", storage_options={})
    assert config == {
        "pipeline": "p",
        "kafka": {"bootstrap_servers": "b:9092", "topics": ["t"], "client": "confluent"},
        "records": {"format": "json"},
        "lake": {"path": "/l", "storage_options": {}},
        "semantics": "at-least-once",
        "batch": {"max_bytes": "16MiB"},
    }
    assert c.batch_max_bytes == 16 << 20 and c.own_bare == "bare-confluent"
