"""Where a pipeline's position lives: one protocol, one implementation per store.

    GroupOffsets      the consumer group's committed offsets          at-most-once, at-least-once
    ManifestOffsets   the offsets manifest in the lake (manifest.py)   exactly-once
    (next: a Delta table's txn versions, committed with the data)

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
from typing import Any, Protocol

from .config import Config
from .lake import Lake
from .manifest import ManifestStore, PartitionState
from .types import TopicPartition


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


def offset_store(config: Config, lake: Lake) -> GroupOffsets | ManifestOffsets:
    """The store that holds this pipeline's position: the manifest under exactly-once, else the group."""
    if config.semantics == "exactly-once":
        return ManifestOffsets(lake, config.pipeline)
    return GroupOffsets(config)
