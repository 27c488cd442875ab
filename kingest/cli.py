"""The command line: parse arguments, call one library function, map library errors to messages and exit
codes. Imports neither kafka nor pyarrow nor fsspec at module level, so that `kingest --help` is instant.

Exit codes: 0 success; 1 a run stopped part-way (bad record, lost broker) or `verify` found the guarantee
broken; 2 cannot start (config, set-up, connectivity) or a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.exceptions import TyperException

from . import __version__, use_jemalloc, use_one_polars_thread
from .config import Semantics
from .errors import KingestError
from .output import SCRUB, install_scrubbing, report_error, report_unexpected, setup_logging

app = typer.Typer(
    name="kingest",
    help="Ingest Kafka topics into a Parquet data lake (local disk or S3) with the delivery guarantee you choose.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Pipeline config (YAML). Default: $KINGEST_CONFIG, then ./kingest.yaml.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
TopicOption = Annotated[
    str | None, typer.Option("--topic", help="Only this topic (default: all of the pipeline's).", show_default=False)
]
PartitionOption = Annotated[
    int | None, typer.Option("--partition", help="Only this partition (default: all).", show_default=False)
]
LogFormatOption = Annotated[LogFormat, typer.Option("--log-format", help="text for people, json for machines.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kingest {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """kingest: Kafka to Parquet, with at-most-once, at-least-once or exactly-once delivery."""
    install_scrubbing()  # from here on nothing written to stdout/stderr can carry a secret (see output.py)
    use_jemalloc()  # before any command imports pyarrow
    use_one_polars_thread()  # ... or polars


def fail(error: KingestError) -> None:
    """Print a library error for a person (no traceback, no secrets; JSON with --log-format json) and exit
    with its code."""
    report_error(error.message, error.hint, error.exit_code, error.retryable)
    raise typer.Exit(error.exit_code)


@contextmanager
def errors_handled() -> Iterator[None]:
    try:
        yield
    except KingestError as error:
        fail(error)
    except (typer.Exit, typer.Abort, TyperException):
        raise
    except Exception as error:  # a bug: a scrubbed traceback (no secret can ride on an exception's text)
        report_unexpected(error)
        raise typer.Exit(1) from None


def load_config(path: Path | None, semantics: Semantics | None = None) -> Any:
    from . import config as config_module

    config = config_module.load(path).with_semantics(semantics.value if semantics else None)
    SCRUB.add(config.secrets())
    return config


@app.command()
def run(
    config_path: ConfigOption = None,
    semantics: Annotated[
        Semantics | None,
        typer.Option("--semantics", help="Override the config's delivery guarantee.", show_default=False),
    ] = None,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up",
            help="Stop cleanly once every assigned partition reaches the log end offset seen at start.",
        ),
    ] = False,
    log_format: LogFormatOption = LogFormat.text,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more, kafka-python included.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port (0: any free port, logged at start).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics endpoint binds to (0.0.0.0: every interface).")
    ] = "127.0.0.1",
) -> None:
    """Consume the topics and write Parquet files to the lake, committing offsets per the semantics."""
    setup_logging(log_format.value, verbose)
    with errors_handled():
        config = load_config(config_path, semantics)
        from .output import Progress, print_summary
        from .pipeline import Pipeline, install_signal_handlers

        live = sys.stderr.isatty() and log_format == LogFormat.text
        metrics = None
        with Progress(live=live) as progress:
            pipeline = Pipeline(config, until_caught_up=until_caught_up, on_progress=progress)
            install_signal_handlers(pipeline, progress.message)
            progress.message(
                f"kingest {config.semantics}: {', '.join(config.kafka.topics)} -> {pipeline.lake.display()} "
                f"(group {config.kafka.group_id})"
            )
            if metrics_port is not None:
                from .metrics import Metrics

                metrics = Metrics(pipeline)
                progress.message(f"metrics: {metrics.serve(metrics_host, metrics_port)}")
                pipeline.on_progress = metrics.chained(progress)
            try:
                stats = pipeline.run()
            except KingestError:
                progress.message(f"stopped after {pipeline.stats.summary()}")
                raise
            finally:
                if metrics is not None:
                    metrics.close()
        print_summary(stats.summary(), stats.fields())


@app.command()
def verify(
    config_path: ConfigOption = None,
    semantics: Annotated[
        Semantics | None,
        typer.Option("--semantics", help="Audit against this guarantee instead of the config's.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Audit the lake against the topic: per partition, offsets missing, duplicated or unknown to Kafka.

    Exit 0 when the semantics' guarantee holds (at-most-once: nothing duplicated; at-least-once: nothing
    missing; exactly-once: neither), 1 when it does not, 2 on error. Offsets at or after the pipeline's
    committed position are lag, not missing.
    """
    setup_logging("text", False)
    with errors_handled():
        config = load_config(config_path, semantics)
        from .verify import audit, render

        report = audit(config)
    if as_json:
        import json

        typer.echo(SCRUB(json.dumps(report.to_dict())))
    else:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 120)
        with console.capture() as captured:
            console.print(render(report))
        typer.echo(SCRUB(captured.get()), nl=False)
    raise typer.Exit(0 if report.holds else 1)


@app.command()
def status(
    config_path: ConfigOption = None,
    semantics: Annotated[
        Semantics | None,
        typer.Option("--semantics", help="Report as for this guarantee instead of the config's.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Where every partition stands: log start and end, committed and manifest offsets, lag, what is in the lake,
    and the consumer group's state and members (is a `kingest run` active, and where?). Changes nothing."""
    setup_logging("text", False)
    with errors_handled():
        config = load_config(config_path, semantics)
        from .status import collect_status
        from .status import render as render_status

        report = collect_status(config)
    if as_json:
        import json

        typer.echo(SCRUB(json.dumps(report.to_json())))
    else:
        from rich.console import Console

        # Not on a terminal (a pipe, a log): wide enough for the whole table rather than rich's 80 columns.
        console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
        for part in render_status(report):
            console.print(part)


@app.command()
def rewind(
    config_path: ConfigOption = None,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", help="Resume at this offset.", show_default=False)
    ] = None,
    to_timestamp: Annotated[
        str | None,
        typer.Option(
            "--to-timestamp",
            help="Resume at the first record at or after this time (ISO 8601; UTC when no offset is given).",
            show_default=False,
        ),
    ] = None,
    to_earliest: Annotated[bool, typer.Option("--to-earliest", help="Resume at the log start.")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest", help="Resume at the log end (skip what is there).")] = False,
    topic: TopicOption = None,
    partition: PartitionOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    semantics: Annotated[
        Semantics | None,
        typer.Option("--semantics", help="Rewind as for this guarantee instead of the config's.", show_default=False),
    ] = None,
) -> None:
    """Move the pipeline's position so that the next `kingest run` replays from there.

    exactly-once: commits a manifest version that retracts the data at and after the target (files wholly past
    it leave the lake, a file straddling it is rewritten), so that every offset is in the lake once after the
    replay. at-least-once / at-most-once: sets the group's committed offsets; the replay writes again the
    records already in the lake. Refuses while the consumer group has active members.
    """
    setup_logging("text", False)
    with errors_handled():
        config = load_config(config_path, semantics)
        from .rewind import Target, apply_rewind, plan_rewind

        target = Target.parse(to_offset, to_timestamp, to_earliest, to_latest)
        plan = plan_rewind(config, target, topic=topic, partition=partition)
    typer.echo(SCRUB("\n".join(plan.describe())))
    if not plan.changes:
        typer.echo("nothing to change.")
        return
    if dry_run:
        typer.echo("dry run: nothing was changed.")
        return
    if not yes:
        typer.confirm("Apply this rewind?", abort=True)
    with errors_handled():
        result = apply_rewind(config, plan)
    for warning in result.warnings:
        typer.echo(SCRUB(f"Warning: {warning}"), err=True)
    if config.lake.format == "delta":
        typer.echo(
            f"rewound {len(result.rewound)} partition(s) in one table commit each; {len(result.deleted)} file(s) "
            f"taken out of the table ({len(result.written)} of them replaced by the rows below the target); they "
            "stay in storage for older table versions until `kingest gc`."
        )
        return
    typer.echo(
        f"rewound {len(result.rewound)} partition(s); {len(result.written)} file(s) rewritten, "
        f"{len(result.deleted)} file(s) deleted from the lake."
    )


T = TypeVar("T")


def _option(parse: Callable[[str], T], flag: str, value: str, what: str, examples: str) -> T:
    """A command-line value parsed as the config parses it; a ConfigError (exit 2) that says how to fix it."""
    from .errors import ConfigError

    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r} is not {what}: {exc}", f"Use {flag} {examples}.") from None


@app.command()
def compact(
    config_path: ConfigOption = None,
    target_size: Annotated[
        str, typer.Option("--target-size", help="About how large each new file may be (B, KiB, MiB, GiB).")
    ] = "128MiB",
    topic: TopicOption = None,
    partition: PartitionOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be merged; change nothing.")] = False,
    keep_inputs: Annotated[
        bool,
        typer.Option(
            "--keep-inputs",
            help="Leave the old files for `kingest gc` to remove after its retention (a reader that listed them "
            "can still read them; a reader of the folder sees both until then).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Merge each partition's small files into files of about --target-size, in one manifest version per
    partition (exactly-once lakes); the old files leave the folder right after (see --keep-inputs). Safe while
    `kingest run` is writing."""
    setup_logging("text", False)
    with errors_handled():
        config = load_config(config_path)
        from .compact import compact as run_compact
        from .config import parse_size
        from .errors import ConfigError
        from .lake import Lake
        from .output import human_size

        target = _option(parse_size, "--target-size", target_size, "a size", "128MiB, 512MiB or 1GiB")
        if topic is not None and topic not in config.kafka.topics:
            raise ConfigError(
                f"--topic {topic!r} is not one of the pipeline's topics ({', '.join(config.kafka.topics)})",
                "Name one of kafka.topics, or leave --topic out.",
            )
        if config.lake.format == "delta":
            from .tableops import compact as compact_table

            results = compact_table(config, target, topic=topic, partition=partition, dry_run=dry_run)
        else:
            lake = Lake(config.lake.path, config.lake.storage_options)
            results = run_compact(
                config, lake, target, topic=topic, partition=partition, dry_run=dry_run, keep_inputs=keep_inputs
            )
    if as_json:
        import json

        rows = [r.__dict__ | {"tp": list(r.tp)} for r in results]
        typer.echo(SCRUB(json.dumps({"dry_run": dry_run, "partitions": rows})))
        return
    for r in results:
        name = f"{r.tp[0]}[{r.tp[1]}]"
        if dry_run:
            typer.echo(f"{name}: would merge {len(r.inputs)} files ({human_size(r.bytes_in)})")
        elif r.version is None:
            typer.echo(f"{name}: not compacted: {r.skipped or 'nothing to merge'}")
        else:
            typer.echo(
                f"{name}: {len(r.inputs)} files ({human_size(r.bytes_in)}) -> {len(r.outputs)} "
                f"({human_size(r.bytes_out)}), {'table' if config.lake.format == 'delta' else 'manifest'} version "
                f"{r.version}"
            )
    if not results:
        typer.echo("nothing to compact.")
    elif keep_inputs and not dry_run:
        typer.echo("the old files stay until `kingest gc` removes them after its retention.")


@app.command()
def gc(
    config_path: ConfigOption = None,
    retain: Annotated[
        str,
        typer.Option(
            "--retain",
            help="Only what has been garbage for at least this long (ms, s, m, h, d): a reader that listed a file "
            "before can still read it.",
        ),
    ] = "7d",  # gc.DEFAULT_RETAIN
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed, with sizes.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove what no manifest version names and no writer can still commit: files of crashed or fenced attempts
    and files a rewind took out (exactly-once lakes), their settled pending records, and the hidden temporary
    files of interrupted writes (any lake). Safe while `kingest run` is writing."""
    setup_logging("text", False)
    with errors_handled():
        config = load_config(config_path)
        from .config import parse_duration
        from .gc import collect, plan
        from .lake import Lake
        from .output import human_size

        seconds = _option(parse_duration, "--retain", retain, "a duration", "7d, 24h or 30m")
        lake = Lake(config.lake.path, config.lake.storage_options)
        if config.lake.format == "delta":
            from .tableops import gc_collect, gc_plan

            found = gc_plan(config, lake, seconds)
            removed = 0 if dry_run else gc_collect(config, lake, found)
        else:
            found = plan(config, lake, seconds)
            removed = 0 if dry_run else collect(config, lake, found)
    if as_json:
        import json

        typer.echo(SCRUB(json.dumps(found.to_json() | {"removed": removed, "dry_run": dry_run})))
        return
    for g in found.collect if dry_run else ():
        typer.echo(SCRUB(f"{g.kind:18s} {human_size(g.size):>10s}  {g.age / 3600:8.1f} h  {lake.display(g.path)}"))
    young = len(found.young)
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        SCRUB(
            f"{verb} {len(found.collect)} file(s), {human_size(found.bytes)} from {found.lake}"
            + (f"; {young} more younger than {retain} kept" if young else "")
            + (f"; {found.protected} not yet committed by a running writer kept" if found.protected else "")
            + (f"; {found.foreign} of other pipelines left alone" if found.foreign else "")
        )
    )
    for rel in found.unreadable_records:
        warning = f"Warning: {rel} is not readable by this kingest: its partition's files were left alone."
        typer.echo(SCRUB(warning), err=True)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("kingest.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")] = False,
    pipeline: Annotated[str, typer.Option("--pipeline", help="The pipeline's name.")] = "orders",
    topics: Annotated[
        list[str] | None, typer.Option("--topic", help="A topic to ingest (repeat for several).", show_default=False)
    ] = None,
    bootstrap_servers: Annotated[
        str, typer.Option("--bootstrap-servers", help="Kafka's host:port (comma-separated for several).")
    ] = "localhost:9092",
    lake: Annotated[
        str | None,
        typer.Option(
            "--lake", help="A local folder or s3://bucket/prefix. Default: ./lake/<pipeline>.", show_default=False
        ),
    ] = None,
    record_format: Annotated[
        str, typer.Option("--format", help="raw, string, json, avro, protobuf or json-schema (from a registry).")
    ] = "json",
    schema_registry: Annotated[
        str, typer.Option("--schema-registry", help="avro, protobuf, json-schema: the schema registry's URL.")
    ] = "http://localhost:8081/apis/ccompat/v7",
    semantics: Annotated[
        Semantics, typer.Option("--semantics", help="The delivery guarantee.")
    ] = Semantics.at_least_once,
) -> None:
    """Write a commented starter config (refuses to replace an existing file unless --force)."""
    with errors_handled():
        from .init import starter_config, write_starter_config

        text = starter_config(
            path=str(path),
            pipeline=pipeline,
            topics=topics or [pipeline],
            bootstrap_servers=bootstrap_servers,
            lake=lake,
            record_format=record_format,
            semantics=semantics.value,
            schema_registry=schema_registry,
        )
        written = write_starter_config(path, text, force=force)
    typer.echo(f"wrote {written}: edit it, then try it with `kingest check -c {written}`")


@app.command()
def check(
    config_path: ConfigOption = None,
    semantics: Annotated[
        Semantics | None,
        typer.Option("--semantics", help="Check as for this guarantee instead of the config's.", show_default=False),
    ] = None,
) -> None:
    """Validate the config and try its connections: broker reachable, topics exist, lake writable, exclusive
    create (needed by exactly-once), offsets manifest readable. One line per check; exit 0 only if all pass."""
    setup_logging("text", False)
    failed = False
    with errors_handled():
        from .check import run_checks

        def learn_secrets(config: Any) -> None:
            SCRUB.add(config.secrets())

        for result in run_checks(config_path, semantics.value if semantics else None, on_config=learn_secrets):
            mark = "!" if result.note else ("✓" if result.ok else "✗")
            typer.echo(SCRUB(f"{mark} {result.name}: {result.detail}"))
            if result.hint and not result.ok:
                typer.echo(SCRUB(f"    {result.hint}"))
            failed = failed or not result.ok
    if failed:
        raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
