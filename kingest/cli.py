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

from . import __version__
from .errors import KingestError
from .output import SCRUB, setup_logging

app = typer.Typer(
    name="kingest",
    help="Ingest Kafka topics into a Parquet data lake (local disk or S3) with the delivery guarantee you choose.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

T = TypeVar("T")


class Semantics(StrEnum):
    at_most_once = "at-most-once"
    at_least_once = "at-least-once"
    exactly_once = "exactly-once"


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


def fail(error: KingestError) -> None:
    """Print a library error for a person (no traceback, no secrets) and exit with its code."""
    typer.echo(SCRUB(f"Error: {error.message}"), err=True)
    if error.hint:
        typer.echo(SCRUB(f"  {error.hint}"), err=True)
    raise typer.Exit(error.exit_code)


@contextmanager
def errors_handled() -> Iterator[None]:
    try:
        yield
    except KingestError as error:
        fail(error)


def load_config(path: Path | None, semantics: Semantics | None = None) -> Any:
    from . import config as config_module

    config = config_module.load(path).with_semantics(semantics.value if semantics else None)
    SCRUB.add(config.secrets())
    return config


def call(function: Callable[[], T]) -> T:
    with errors_handled():
        return function()
    raise AssertionError("unreachable")


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
) -> None:
    """Consume the topics and write Parquet files to the lake, committing offsets per the semantics."""
    setup_logging(log_format.value, verbose)
    with errors_handled():
        config = load_config(config_path, semantics)
        from .output import Progress
        from .pipeline import Pipeline, install_signal_handlers

        live = sys.stderr.isatty() and log_format == LogFormat.text
        with Progress(live=live) as progress:
            pipeline = Pipeline(config, until_caught_up=until_caught_up, on_progress=progress)
            install_signal_handlers(pipeline, progress.message)
            progress.message(
                f"kingest {config.semantics}: {', '.join(config.kafka.topics)} -> {pipeline.lake.display()} "
                f"(group {config.kafka.group_id})"
            )
            try:
                stats = pipeline.run()
            except KingestError:
                progress.message(f"stopped after {pipeline.stats.summary()}")
                raise
        typer.echo(f"done: {stats.summary()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
