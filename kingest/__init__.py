"""kingest: ingest Kafka topics into a Parquet data lake with a chosen delivery guarantee."""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def use_jemalloc() -> None:
    """Make jemalloc Arrow's C++ default memory pool, unless the user chose one (ARROW_DEFAULT_MEMORY_POOL).
    Arrow reads the variable when it first allocates, so this runs before anything imports pyarrow: the CLI
    calls it first thing; a program that embeds kingest decides for its own process.

    pyarrow's default (mimalloc) keeps memory it has freed, so a run's RSS grows past what its batches need;
    jemalloc returns it. It must be the C++ default, not pyarrow.set_memory_pool(), which only reaches
    pyarrow's Python API: the JSON reader and the Parquet writer allocate from the C++ default inside.
    Measured (500k records, 64MiB batches, peak RSS): 305-325 MB with set_memory_pool(jemalloc), 253-256 with
    this; see docs/performance.md. Linux wheels of pyarrow include jemalloc."""
    if _sys.platform.startswith("linux"):
        _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def use_one_polars_thread() -> None:
    """Run polars (the Avro reader) without a thread pool of its own, unless the user sized it
    (POLARS_MAX_THREADS). kingest reads each partition's values on an encoder thread of its own, one polars read
    each; the pool's threads only compete with them for the cores and keep memory arenas of their own. Measured,
    exactly-once Avro runs with confluent-kafka on 2 cores: 8-12 MB less peak RSS, and no slower. polars reads the
    variable when it is first imported: the CLI calls this first thing, as it does use_jemalloc."""
    _os.environ.setdefault("POLARS_MAX_THREADS", "1")
