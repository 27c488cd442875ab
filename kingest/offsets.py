"""Where a pipeline's position lives: one protocol, one implementation per store.

    GroupOffsets      the consumer group's committed offsets          at-most-once, at-least-once
    ManifestOffsets   the offsets manifest in the lake (manifest.py)   exactly-once, lake.format: parquet
    TableOffsets      a Delta table's txn versions (delta.py)          exactly-once, lake.format: delta

``offset_store(config, lake)`` is the one place that decides which store a pipeline uses. The pipeline
(pipeline.py) keeps the order of "write the data" and "save the offsets"; status, verify, rewind and check ask
the store how far the pipeline got and which files hold the lake. Two kinds of store:

- a store that only holds positions (the group): every data file in the lake's folder counts;
- a store that names the files (the manifest, a table format): only the files it names count, an uncommitted
  file in the folder is not part of the lake, and saving needs a store that enforces exclusive create.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .config import Config
from .errors import SetupError
from .lake import Lake
from .manifest import ManifestStore, PartitionState
from .types import TopicPartition

if TYPE_CHECKING:
    from .delta import DeltaTableStore


@dataclass(frozen=True)
class Position:
    """Where a topic-partition stands in its store."""

    next_offset: int | None  # where the pipeline resumes; None: nothing saved yet
    files: dict[str, dict[str, Any]] | None = None  # the lake's files, as the store names them; None: the folder
    committed_at: str | None = None  # when the store last changed (None: the store keeps no time)
    state: PartitionState | None = None  # the manifest's state (what a rewind commits on top of)


class OffsetStore(Protocol):
    name: str  # for people: "consumer group", "offsets manifest"
    offset_name: str  # its position, for people: "group offset", "manifest offset"
    column: str  # its position's column in `kingest status`: "committed" (the group's, always shown), "manifest"
    names_files: bool  # the store says which files are in the lake (and needs exclusive create to save them)

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Position]:
        """The latest saved position of each partition (read only)."""
        ...

    def uncommitted(self, position: Position) -> list[str]:
        """Files a writer announced and that can never be committed any more: what recovery deletes."""
        ...

    def readable(self, topics: Iterable[str]) -> int:
        """Read every partition's state of these topics (raises StateError when one is damaged); how many."""
        ...


class GroupOffsets:
    name = "consumer group"
    offset_name = "group offset"
    column = "committed"
    names_files = False

    def __init__(self, config: Config) -> None:
        self.config = config

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Position]:
        from . import kafka_admin

        return {tp: Position(offset) for tp, offset in kafka_admin.committed_offsets(self.config, tps).items()}

    def uncommitted(self, position: Position) -> list[str]:
        return []

    def readable(self, topics: Iterable[str]) -> int:
        return 0


class ManifestOffsets:
    name = "offsets manifest"
    offset_name = "manifest offset"
    column = "manifest"
    names_files = True

    def __init__(self, lake: Lake, pipeline: str) -> None:
        self.manifests = ManifestStore(lake, pipeline)

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Position]:
        return {tp: self.position(self.manifests.load(*tp)) for tp in tps}

    @staticmethod
    def position(state: PartitionState) -> Position:
        return Position(state.next_offset, dict(state.files), state.committed_at, state)

    def uncommitted(self, position: Position) -> list[str]:
        assert position.state is not None
        return self.manifests.pending_files(position.state)

    def readable(self, topics: Iterable[str]) -> int:
        wanted = set(topics)
        partitions = [tp for tp in self.manifests.partitions() if tp[0] in wanted]
        for tp in partitions:
            self.manifests.load(*tp)
        return len(partitions)


class TableOffsets:
    """exactly-once into a Delta table: each partition's next offset is its txn version, committed in the same log
    entry as the data (kafka-delta-ingest's way). The table names its files; its add actions say which."""

    name = "Delta table"
    offset_name = "table offset"
    column = "table"
    names_files = True

    def __init__(self, table: DeltaTableStore) -> None:
        self.table = table

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Position]:
        tps = list(tps)
        offsets = self.table.positions(tps)
        with self.table.pinned():  # the files of the version the offsets were read at
            files = self.table.files_by_partition() if self.table.exists() else {}
        return {tp: Position(offsets[tp], files.get(tp, {})) for tp in tps}

    def uncommitted(self, position: Position) -> list[str]:
        return []  # staged files no commit names are untracked: vacuum (kingest gc) removes them

    def readable(self, topics: Iterable[str]) -> int:
        if not self.table.exists():
            return 0
        self.table.schema()  # raises DeltaTableDamaged when the log cannot be read
        wanted = set(topics)
        return len([tp for tp in self.table.files_by_partition() if tp[0] in wanted])


def open_table(config: Config, writer: str | None = None) -> DeltaTableStore:
    """The pipeline's Delta table (lake.format: delta). A clear error when the deltalake package is missing."""
    try:
        from .delta import DeltaTableStore
    except ImportError as exc:
        if "deltalake" not in str(exc):
            raise
        raise SetupError(
            "lake.format: delta needs the deltalake package, which is not installed",
            "Install it with: pip install 'kingest[delta]'",
        ) from None
    return DeltaTableStore(
        config.lake.path,
        config.lake.storage_options,
        config.pipeline,
        writer=writer,
        compression=str(config.lake.compression),
        compress_min_bytes=config.lake.compress_min_bytes,
    )


def offset_store(
    config: Config, lake: Lake, writer: str | None = None
) -> GroupOffsets | ManifestOffsets | TableOffsets:
    """The store that holds this pipeline's position: under exactly-once the manifest (parquet) or the Delta
    table's txns (delta), else the consumer group."""
    if config.semantics == "exactly-once":
        if config.lake.format == "delta":
            return TableOffsets(open_table(config, writer))
        return ManifestOffsets(lake, config.pipeline)
    return GroupOffsets(config)
