"""The summary: the measured runs (measure.Run) turned into figures, targets, the markdown table and the chart's
bars. Small pure functions, tested in tests/unit/test_bench_summary.py on hand-made runs.

Runs are indexed by (contender name, repetition); a contender's startup twin is "<name>:startup". Each figure
is the median over the repetitions; a ratio is taken within a repetition (runs side by side), then the median
of those. A figure that cannot be had (a contender not run, a zero, a startup as long as the run) is None, and
shows as "–".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contenders import Contender, Target
    from measure import Run

MB = 1_000_000

Runs = Mapping[tuple[str, int], "Run"]
Metric = Callable[[Runs, str, int], "float | None"]


class Topic(Protocol):
    """What the summary needs of a produced topic (dataset.Produced, a frozen dataclass)."""

    @property
    def records(self) -> int: ...

    @property
    def partitions(self) -> int: ...

    @property
    def value_bytes(self) -> int: ...

    @property
    def seconds(self) -> float: ...

    @property
    def nbytes(self) -> int: ...


def index(runs: Iterable[Run]) -> dict[tuple[str, int], Run]:
    return {(r.name, r.rep): r for r in runs}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------ per repetition


def rate(runs: Runs, name: str, rep: int) -> float | None:
    """Records a second, process start to exit."""
    run = runs.get((name, rep))
    return None if run is None or not run.records else run.records / run.wall_s


def net_rate(runs: Runs, name: str, rep: int) -> float | None:
    """Records a second net of the fixed cost: wall time less the startup twin's. Java's own fetch rate."""
    run = runs.get((name, rep))
    if run is None or not run.records:
        return None
    if name == "java":
        return run.records / (float(run.extra["fetch.time.ms"]) / 1000)
    startup = runs.get((f"{name}:startup", rep))
    if startup is None or run.wall_s <= startup.wall_s:
        return None
    return run.records / (run.wall_s - startup.wall_s)


def cpu_per_record(runs: Runs, name: str, rep: int) -> float | None:
    run = runs.get((name, rep))
    return None if run is None or not run.records else run.cpu_s / run.records


def median_ratio(metric: Metric, runs: Runs, name: str, base: str, reps: int) -> float | None:
    """The median over the repetitions of ``metric`` of ``name`` over that of ``base`` in the same repetition
    (repetitions where either is missing or zero are left out)."""
    values = [x / y for rep in range(reps) if (x := metric(runs, name, rep)) and (y := metric(runs, base, rep))]
    return median(values)


# ------------------------------------------------------------------------------------ per contender


def rss_limit_mb(batch_max_bytes: int) -> float:
    """kingest's memory target: 1.5 x batch.max_bytes + 200 MB."""
    return (1.5 * batch_max_bytes + 200 * MB) / MB


def contender_result(
    c: Contender, runs: Runs, reps: int, records: int, nbytes: int, partitions: int | None = None
) -> dict[str, Any]:
    """One entry of the JSON's "results" (and one row of the table): ``records``, ``nbytes`` and ``partitions``
    are those of the topic the contender read."""
    own = [runs[(c.name, rep)] for rep in range(reps) if (c.name, rep) in runs]
    startup = [runs[(f"{c.name}:startup", rep)] for rep in range(reps) if (f"{c.name}:startup", rep) in runs]
    entry: dict[str, Any] = {
        "label": c.label,
        "topic": c.topic,
        "records": records,
        "records_per_s": median([records / r.wall_s for r in own]),
        "mb_per_s": median([nbytes / MB / r.wall_s for r in own]),
        "wall_s": median([r.wall_s for r in own]),
        "cpu_s": median([r.cpu_s for r in own]),
        "peak_rss_mb": median([r.maxrss_mb for r in own]),
        "max_peak_rss_mb": max((r.maxrss_mb for r in own), default=None),
        "startup_s": median([r.wall_s for r in startup]) if startup else None,
        "net_records_per_s": median([x for rep in range(reps) if (x := net_rate(runs, c.name, rep))]),
        "vs_java": median_ratio(rate, runs, c.name, "java", reps),
        "vs_bare": median_ratio(rate, runs, c.name, "bare", reps),
        "net_vs_java": median_ratio(net_rate, runs, c.name, "java", reps),
        "net_vs_bare": median_ratio(net_rate, runs, c.name, "bare", reps),
        "vs_own_bare": median_ratio(rate, runs, c.name, c.own_bare, reps),
        "client": c.client,
        # CPU seconds per record, as a multiple of the bare loop's: the measure least moved by a busy machine
        "cpu_per_record_vs_bare": median_ratio(cpu_per_record, runs, c.name, "bare", reps),
    }
    if c.kind == "kingest":
        max_bytes = c.batch_max_bytes
        entry["batch_max_bytes"] = max_bytes
        entry["rss_limit_mb"] = rss_limit_mb(max_bytes)
        entry["files"] = median([r.extra.get("files", 0) for r in own])
        entry["commits"] = median([r.extra.get("commits", 0) for r in own])
        if any("flushes" in r.extra for r in own):  # reported by kingest since the wide group came
            entry["flushes"] = median([r.extra["flushes"] for r in own if "flushes" in r.extra])
    if c.group:
        entry.update(group_figures(c, runs, reps, own, partitions))
    if c.records_format != "json":
        entry.update(format_figures(c, runs, reps))
    if c.kind == "java":
        entry["java_fetch_records_per_s"] = median([float(r.extra["fetch.nMsg.sec"]) for r in own])
        entry["java_rebalance_ms"] = median([float(r.extra["rebalance.time.ms"]) for r in own])
    return entry


def group_figures(c: Contender, runs: Runs, reps: int, own: list[Run], partitions: int | None) -> dict[str, Any]:
    """What a contender of a group ("wide") adds: its topic's partitions, its rate against its baseline's (within
    a repetition, then the median), and the requests that went through the latency proxy."""
    figures: dict[str, Any] = {
        "group": c.group,
        "partitions": partitions,
        "max_concurrency": c.lake_settings.get("max_concurrency"),
        "baseline": c.baseline or None,
        "vs_baseline": median_ratio(rate, runs, c.name, c.baseline, reps) if c.baseline else None,
    }
    proxied = [r for r in own if "proxy_requests" in r.extra]
    if proxied:
        figures["delay_ms"] = c.delay_ms
        figures["proxy_requests"] = median([r.extra["proxy_requests"] for r in proxied])
        figures["proxy_round_trips"] = median([r.extra["proxy_round_trips"] for r in proxied])
        figures["proxy_cpu_s"] = median([r.extra["proxy_cpu_s"] for r in proxied])
    return figures


def format_figures(c: Contender, runs: Runs, reps: int) -> dict[str, Any]:
    """What a contender of another records.format than json (Avro) adds, against its JSON twin (its baseline):
    the same ratios as "vs bare" has, within a repetition, then the median."""
    return {
        "format": c.records_format,
        "net_vs_baseline": median_ratio(net_rate, runs, c.name, c.baseline, reps),
        "cpu_per_record_vs_baseline": median_ratio(cpu_per_record, runs, c.name, c.baseline, reps),
    }


def results(chosen: Iterable[Contender], runs: Runs, reps: int, topics: Mapping[str, Topic]) -> dict[str, Any]:
    """The JSON's "results": every chosen contender, in order, from its runs over the topic it read."""
    return {
        c.name: contender_result(
            c, runs, reps, topics[c.topic].records, topics[c.topic].nbytes, topics[c.topic].partitions
        )
        for c in chosen
    }


# ------------------------------------------------------------------------------------ targets


def target(
    name: str, value: float | None, lower: float, net: float | None, upper: float | None = None
) -> dict[str, Any]:
    def met(x: float | None) -> bool | None:
        return None if x is None else (x >= lower and (upper is None or x <= upper))

    return {"target": name, "value": value, "met": met(value), "net_value": net, "net_met": met(net)}


def ratio_target(t: Target, results: Mapping[str, Any], runs: Runs, reps: int) -> dict[str, Any]:
    """A ratio of two contenders' rates against its bounds, as measured and net of startup (None when either of
    the two did not run)."""

    def pair(metric: Metric) -> float | None:
        return median_ratio(metric, runs, t.name, t.base, reps) if t.name in results and t.base in results else None

    return target(t.text, pair(rate), t.lower, pair(net_rate), upper=t.upper)


def rss_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each kingest contender's highest peak RSS against 1.5 x batch.max_bytes + 200 MB."""
    return [
        {
            "target": f"{name}: peak RSS <= 1.5 x batch.max_bytes + 200 MB ({entry['rss_limit_mb']:.0f} MB)",
            "value": round(entry["max_peak_rss_mb"], 1),
            "met": entry["max_peak_rss_mb"] <= entry["rss_limit_mb"],
        }
        for name, entry in results.items()
        if "rss_limit_mb" in entry and entry["max_peak_rss_mb"] is not None
    ]


def help_target(help_times: list[float]) -> dict[str, Any] | None:
    """`kingest --help` under 0.3 s, the median of its timings (None when it was not timed)."""
    if not help_times:
        return None
    seconds = median(help_times)
    assert seconds is not None
    return {
        "target": f"kingest --help under 0.3 s (median of {len(help_times)})",
        "value": seconds,
        "met": seconds < 0.3,
    }


def targets(
    ratio_targets: Iterable[Target], results: Mapping[str, Any], runs: Runs, reps: int, help_times: list[float]
) -> list[dict[str, Any]]:
    """The JSON's "targets": the ratio targets (but those of which neither contender ran: another group's), then
    the memory ones, then `kingest --help`."""
    chosen = [t for t in ratio_targets if t.name in results or t.base in results]
    found = [ratio_target(t, results, runs, reps) for t in chosen] + rss_targets(results)
    timed_help = help_target(help_times)
    return found + ([timed_help] if timed_help is not None else [])


# ------------------------------------------------------------------------------------ the JSON's other parts


def avro_figures(topic: Topic, ids: Mapping[int, int], subject: str, switch: int) -> dict[str, Any]:
    """The JSON's "avro": the Avro topic, its schema versions' ids and where version 2 starts."""
    return {
        "records": topic.records,
        "partitions": topic.partitions,
        "mean_value_bytes": round(topic.value_bytes / max(1, topic.records), 1),
        "key_and_value_mb": round(topic.nbytes / MB, 2),
        "produce_seconds": round(topic.seconds, 2),
        "subject": subject,
        "schema_ids": {str(version): schema_id for version, schema_id in ids.items()},
        "version_2_from_record": switch,
        "format": "the main topic's records (benchmarks/dataset.py) as Avro in the Confluent wire format (byte 0, "
        "4-byte schema id, Avro binary): schema version 1, then version 2 adding customer.lifetime_orders",
    }


def dataset_figures(main: Topic, slice_records: int | None, value_size: int) -> dict[str, Any]:
    return {
        "records": main.records,
        "partitions": main.partitions,
        "value_size_target": value_size,
        "mean_value_bytes": round(main.value_bytes / max(1, main.records), 1),
        "key_and_value_mb": round(main.nbytes / MB, 2),
        "slice_records": slice_records,
        "produce_seconds": round(main.seconds, 2),
        "format": "JSON objects (benchmarks/dataset.py), uncompressed topic, keys, no headers",
    }


def wide_figures(topics: Mapping[str, Topic], value_size: int, delay_ms: float) -> dict[str, Any]:
    """The JSON's "wide": the wide topics (by role) and the delay the proxy added to each request."""
    return {
        "topics": {
            role: {
                "records": t.records,
                "partitions": t.partitions,
                "mean_value_bytes": round(t.value_bytes / max(1, t.records), 1),
                "key_and_value_mb": round(t.nbytes / MB, 2),
            }
            for role, t in topics.items()
        },
        "value_size_target": value_size,
        "delay_ms": delay_ms,
    }


def run_row(r: Run) -> dict[str, Any]:
    """One run as the JSON's "runs" keep it: rounded, with what the contender reported."""
    return {
        "name": r.name,
        "rep": r.rep,
        "wall_s": round(r.wall_s, 3),
        "user_s": round(r.user_s, 3),
        "sys_s": round(r.sys_s, 3),
        "maxrss_mb": round(r.maxrss_mb, 1),
        "load1": round(r.load1, 2),
        "records": r.records,
        **r.extra,
    }


# ------------------------------------------------------------------------------------ the markdown table


def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def ratio_text(x: float | None) -> str:
    """Two decimals, or two significant digits below 0.1 (the one-record-batch run's 0.0026)."""
    return "–" if x is None else (f"{x:.2f}" if x >= 0.1 else f"{x:.2g}")


def yes(met: bool | None) -> str:
    return "–" if met is None else ("yes" if met else "**no**")


TABLE_HEADER = [
    "| contender | records/s | MB/s | wall s | CPU s | peak RSS MB | vs Java | vs bare | vs own client "
    "| startup s | net vs bare | CPU/record vs bare |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
TARGETS_HEADER = ["| target | measured | met | net of startup | met |", "|---|---:|---|---:|---|"]


def table_row(r: Mapping[str, Any]) -> str:
    """A contender's row; one that read another topic than the main one says how many records it read."""
    label = r["label"] + (f" ({r['records']:,} records)" if r["topic"] != "main" else "")
    return (
        f"| {label} | {fmt(r['records_per_s'], ',.0f')} | {fmt(r['mb_per_s'], '.1f')} | "
        f"{fmt(r['wall_s'], '.2f')} | {fmt(r['cpu_s'], '.2f')} | {fmt(r['peak_rss_mb'], '.0f')} | "
        f"{ratio_text(r['vs_java'])} | {ratio_text(r['vs_bare'])} | {ratio_text(r.get('vs_own_bare'))} | "
        f"{fmt(r['startup_s'], '.2f')} | "
        f"{ratio_text(r['net_vs_bare'])} | {fmt(r['cpu_per_record_vs_bare'], '.2f')} |"
    )


def target_row(t: Mapping[str, Any]) -> str:
    value = t["value"]
    shown = "–" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    net = t.get("net_value")
    return (
        f"| {t['target']} | {shown} | {yes(t['met'])} | {'' if net is None else f'{net:.3f}'} | "
        f"{'' if 'net_met' not in t else yes(t['net_met'])} |"
    )


def load_range(summary: Mapping[str, Any]) -> tuple[float, float]:
    """The lowest and highest 1-minute load average taken at the repetitions' starts and at the end."""
    loads = [x[0] for x in summary["machine"]["load_average_per_repetition"]]
    return min(loads), max(loads)


WIDE_HEADER = [
    "| contender | partitions | records/s | wall s | CPU s | peak RSS MB | flushes | files | requests "
    "| round trips | round trips/file | proxy CPU s | vs 1 partition |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def wide_row(r: Mapping[str, Any]) -> str:
    """A row of the wide group's table. Requests and round trips are what the latency proxy counted: HTTP
    requests, and the turns it delayed (a PUT sent with `Expect: 100-continue` is two)."""
    trips, files = r.get("proxy_round_trips"), r.get("files")
    per_file = trips / files if trips is not None and files else None
    return (
        f"| {r['label']} | {r['partitions']} | {fmt(r['records_per_s'], ',.0f')} | {fmt(r['wall_s'], '.2f')} | "
        f"{fmt(r['cpu_s'], '.2f')} | {fmt(r['peak_rss_mb'], '.0f')} | {fmt(r.get('flushes'), '.0f')} | "
        f"{fmt(files, '.0f')} | {fmt(r.get('proxy_requests'), ',.0f')} | {fmt(trips, ',.0f')} | "
        f"{fmt(per_file, '.1f')} | {fmt(r.get('proxy_cpu_s'), '.2f')} | {ratio_text(r['vs_baseline'])} |"
    )


def wide_lines(summary: Mapping[str, Any]) -> list[str]:
    """The wide group's line and table (nothing when it did not run)."""
    rows = [r for r in summary["results"].values() if r.get("group") == "wide"]
    if not rows or "wide" not in summary:
        return []
    w = summary["wide"]
    topics = list(w["topics"].values())
    shape = " and ".join(f"{t['partitions']}" for t in topics)
    sizes = "-".join(sorted({f"{t['mean_value_bytes']:.0f}" for t in topics}))
    return [
        f"Wide topics: {topics[0]['records']:,} JSON records (mean value {sizes} B) over {shape} partitions, into S3 "
        f"through a proxy adding {w['delay_ms']:.0f} ms to each request; median of {summary['repetitions']} "
        "repetition(s); vs 1 partition within each repetition.",
        "",
        *WIDE_HEADER,
        *(wide_row(r) for r in rows),
    ]


AVRO_HEADER = [
    "| contender | records/s | MB/s | wall s | CPU s | peak RSS MB | startup s | JSON records/s | JSON CPU s "
    "| JSON peak RSS MB | vs JSON | net vs JSON | CPU/record vs JSON |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def avro_row(r: Mapping[str, Any], json_twin: Mapping[str, Any] | None) -> str:
    """A row of the Avro table: the Avro contender's figures, its JSON twin's beside them (medians of the same
    repetitions), and the ratios taken within each repetition."""
    twin = json_twin or {}
    return (
        f"| {r['label']} | {fmt(r['records_per_s'], ',.0f')} | {fmt(r['mb_per_s'], '.1f')} | "
        f"{fmt(r['wall_s'], '.2f')} | {fmt(r['cpu_s'], '.2f')} | {fmt(r['peak_rss_mb'], '.0f')} | "
        f"{fmt(r['startup_s'], '.2f')} | {fmt(twin.get('records_per_s'), ',.0f')} | {fmt(twin.get('cpu_s'), '.2f')} | "
        f"{fmt(twin.get('peak_rss_mb'), '.0f')} | {ratio_text(r.get('vs_baseline'))} | "
        f"{ratio_text(r.get('net_vs_baseline'))} | {fmt(r.get('cpu_per_record_vs_baseline'), '.2f')} |"
    )


def avro_lines(summary: Mapping[str, Any]) -> list[str]:
    """The Avro group's line and table (nothing when it did not run)."""
    results = summary["results"]
    rows = [r for r in results.values() if r.get("group") == "avro"]
    if not rows or "avro" not in summary:
        return []
    a = summary["avro"]
    ids = a["schema_ids"]
    return [
        f"Avro: the same {a['records']:,} records in the Confluent wire format (mean value "
        f"{a['mean_value_bytes']:.0f} B, {a['key_and_value_mb']} MB of keys and values) over {a['partitions']} "
        f"partitions, the first {a['version_2_from_record']:,} with schema id {ids['1']} (version 1), the rest with "
        f"{ids['2']} (version 2, + customer.lifetime_orders); each beside its JSON twin (the JSON columns: median of "
        f"the same {summary['repetitions']} repetition(s)); vs JSON within each repetition.",
        "",
        *AVRO_HEADER,
        *(avro_row(r, results.get(r["baseline"])) for r in rows),
    ]


def markdown(summary: Mapping[str, Any]) -> str:
    """The dataset's line and the table (when the main topic was read), the wide group's, the Avro group's, then
    the targets."""
    d, m = summary["dataset"], summary["machine"]
    low, high = load_range(summary)
    lines = []
    if d is not None:
        lines += [
            f"{d['records']:,} JSON records (mean value {d['mean_value_bytes']:.0f} B, {d['key_and_value_mb']} MB of "
            f"keys and values) over {d['partitions']} partitions; median of {summary['repetitions']} repetition(s); "
            f"{m['cpus']} CPUs, 1-min load average {low:.1f}-{high:.1f} during the run.",
            "",
            *TABLE_HEADER,
        ]
        lines += [table_row(r) for r in summary["results"].values() if not r.get("group")]
        lines += [""]
    wide = wide_lines(summary)
    if wide:
        if d is None:
            wide[0] += f" {m['cpus']} CPUs, 1-min load average {low:.1f}-{high:.1f} during the run."
        lines += [*wide, ""]
    avro = avro_lines(summary)
    if avro:
        if d is None and not wide:
            avro[0] += f" {m['cpus']} CPUs, 1-min load average {low:.1f}-{high:.1f} during the run."
        lines += [*avro, ""]
    lines += TARGETS_HEADER
    lines += [target_row(t) for t in summary["targets"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the chart's data

BASELINE_COLOR = "#7f7f7f"
KINGEST_COLOR = "#1f77b4"


@dataclass(frozen=True)
class Bar:
    """One contender in the chart: a records/s bar with its note, a peak RSS bar with its limit."""

    name: str
    label: str
    rate: float
    note: str
    rss: float
    rss_limit: float | None
    color: str


def chart_bars(results: Mapping[str, Any], baselines: Iterable[str]) -> list[Bar]:
    """The chart's bars, bottom to top (matplotlib draws the first at the bottom: the table's order reversed).
    ``baselines`` (Java, the bare loops) are grey."""
    grey = set(baselines)
    bars = []
    for name in list(results)[::-1]:
        r = results[name]
        note = f"{r['records_per_s']:,.0f}/s" if r["records_per_s"] else ""
        if r.get("group"):  # another topic than the bare loop's: against its group's baseline
            if r.get("vs_baseline") is not None:
                note += f"  {ratio_text(r['vs_baseline'])}x {r['baseline']}"
        elif r.get("vs_bare") is not None and name != "bare":
            note += f"  {ratio_text(r['vs_bare'])}x bare"
        bars.append(
            Bar(
                name=name,
                label=r["label"],
                rate=r["records_per_s"] or 0.0,
                note=note,
                rss=r["peak_rss_mb"] or 0,
                rss_limit=r.get("rss_limit_mb") or None,
                color=BASELINE_COLOR if name in grey else KINGEST_COLOR,
            )
        )
    return bars


def chart_title(summary: Mapping[str, Any]) -> str:
    d, m = summary["dataset"], summary["machine"]
    low, high = load_range(summary)
    if d is not None:
        topic = f"{d['records']:,} JSON records of ~{d['mean_value_bytes']:.0f} B, {d['partitions']} partitions"
    else:
        topic = "wide topics, S3 +{:.0f} ms".format(summary["wide"]["delay_ms"])
    return (
        f"kingest {summary['date'][:10]}: {topic}, median of {summary['repetitions']}; {m['cpus']} CPUs, "
        f"load {low:.1f}-{high:.1f}"
    )
