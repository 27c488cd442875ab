"""`kingest compact`: a partition's small files rewritten into files of about ``--target-size``, in one manifest
version per partition (exactly-once lakes).

For each partition: the files the manifest names, in offset order, are cut into runs of neighbours (same folder,
data files, each smaller than half the target) that together stay within the target; each run of two or more
files becomes one file (rows in offset order, the columns of every input, its footer naming its first and last
offset). One ``compact`` version adds the new files and takes the old ones out, by exclusive create, in
ManifestStore.save's order (announce, write, commit), as a rewind does.

The old files then leave the folder at once, so that a reader of the folder (DuckDB, Spark, pyarrow: they know
nothing of the manifest) sees each offset once again, as it does after any batch. ``keep_inputs``
(``--keep-inputs``) leaves them for ``kingest gc`` to remove after its retention instead, named by a retire
note: for readers that list the files and read them minutes later, at the price of a folder that shows both
until then.

Safe beside a running `kingest run`: a compaction claims nothing. A writer whose commit loses the version to it
resumes on top of it (it reads the version, sees a compaction, and consumes its batch again); a compaction that
loses the version to a writer plans the partition again (up to three times), its new files deleted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .config import Config
from .deadletter import is_dead_letter
from .encoder import EncodedFile, Encoder, rewriting_encoder
from .errors import ConfigError, ManifestConflict
from .lake import Lake
from .layout import file_name
from .manifest import ManifestStore, PartitionState, new_writer_id
from .offsets import offset_store
from .reader import read_merged
from .types import TopicPartition

ATTEMPTS = 3


@dataclass
class Compacted:
    tp: TopicPartition
    inputs: list[str] = field(default_factory=list)  # files taken out
    deleted: list[str] = field(default_factory=list)  # of them, deleted at once (not with --keep-inputs)
    outputs: list[str] = field(default_factory=list)  # files added
    bytes_in: int = 0
    bytes_out: int = 0
    version: int | None = None  # the compact version committed (None: dry run, or nothing to do)
    skipped: str = ""  # why not (lost the version to writers ATTEMPTS times)


def runs(state: PartitionState, target: int) -> list[list[str]]:
    """The runs of neighbouring small files to merge, each of two or more files within ``target`` bytes."""
    entries = sorted(
        ((e["first_offset"], path, e) for path, e in state.files.items() if not is_dead_letter(e)),
        key=lambda item: item[0],
    )
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    folder = None

    def close() -> None:
        if len(current) > 1:
            out.append(list(current))
        current.clear()

    for _, path, entry in entries:
        nbytes = int(entry.get("bytes", 0))
        here = path.rsplit("/", 1)[0]
        if nbytes >= target // 2:  # large enough already: it ends the run
            close()
            size, folder = 0, None
            continue
        if here != folder or size + nbytes > target:
            close()
            size = 0
        current.append(path)
        size += nbytes
        folder = here
    close()
    return out


def merge(lake: Lake, encoder: Encoder, topic: str, partition: int, paths: list[str]) -> list[EncodedFile]:
    """The rows of ``paths`` as new file(s) in their folder: offset order, every input's columns (a column a file
    lacks is null there; numbers widen as the encoder's would)."""
    table = read_merged(lake, paths)
    folder = paths[0].rsplit("/", 1)[0]
    return [
        replace(f, path=f"{folder}/{f.path.rsplit('/', 1)[-1]}")
        for f in encoder.encode_table(topic, partition, table, kind="data")
    ]


Merge = Callable[[list[str], TopicPartition], list[EncodedFile]]


def compact(
    config: Config,
    lake: Lake,
    target: int,
    *,
    topic: str | None = None,
    partition: int | None = None,
    dry_run: bool = False,
    keep_inputs: bool = False,
    merge_files: Merge | None = None,
) -> list[Compacted]:
    """Compact the chosen partitions (see the module docstring). ``merge_files`` replaces the Parquet merge (the
    simulation's files are not Parquet)."""
    store = offset_store(config, lake)
    if not store.names_files:
        raise ConfigError(
            f"kingest compact needs the offsets manifest of an exactly-once lake; this pipeline is {config.semantics}",
            "Compaction swaps files in one manifest version, so that no reader sees a record twice: with the "
            "folder as the table, readers would see the old and the new files together. Use exactly-once.",
        )
    manifests = ManifestStore(lake, config.pipeline)
    owner = f"compact-{new_writer_id()}"
    # One encoder (one serial) for the whole call: a name is never written twice, not even by a retry (recovery
    # relies on it: a file named by a settled record may be deleted by anyone, whenever).
    encoder = rewriting_encoder(config, owner, compacted_by=owner)
    tag = owner.rsplit("-", 1)[-1]
    serial = itertools.count()
    if merge_files is None:

        def merge_files(paths: list[str], tp: TopicPartition) -> list[EncodedFile]:
            return merge(lake, encoder, tp[0], tp[1], paths)

    chosen = [
        tp
        for tp in manifests.partitions()
        if tp[0] in config.kafka.topics and topic in (None, tp[0]) and partition in (None, tp[1])
    ]
    results = []
    for tp in chosen:
        result = Compacted(tp)
        if not dry_run:
            _clean_up_after_crashed_compactions(manifests, tp)
        merged: dict[tuple[str, ...], list[EncodedFile]] = {}  # a run's merged files, kept across attempts
        for _ in range(ATTEMPTS):
            state = manifests.load(*tp)
            groups = runs(state, target)
            result.inputs = [p for g in groups for p in g]
            result.bytes_in = sum(int(state.files[p].get("bytes", 0)) for p in result.inputs)
            if not groups or dry_run:
                break
            try:
                files = []
                for group in groups:
                    if tuple(group) not in merged:
                        merged[tuple(group)] = merge_files(group, tp)
                    # Under a name never used before, even when a retry commits the same bytes again.
                    files += [_renamed(f, f"{tag}-{next(serial)}") for f in merged[tuple(group)]]
            except FileNotFoundError:
                result.skipped = "an input left meanwhile (another compaction, or a rewind)"
                continue
            try:
                new = manifests.save(
                    state,
                    operation="compact",
                    owner=owner,
                    next_offset=state.next_offset,
                    files=files,
                    remove=[] if keep_inputs else result.inputs,
                    retire=result.inputs if keep_inputs else [],
                )
            except ManifestConflict:
                result.skipped = "writers committed meanwhile, three times"
                continue
            if not keep_inputs:
                # As after a rewind: the inputs leave the folder now (they are in the settled pending record, so
                # a crash before this line leaves them to the next recovery: a run's claim, a checkpoint, the
                # next compact, gc).
                result.deleted = manifests.recover(new)
            result.outputs = [f.path for f in files]
            result.bytes_out = sum(len(f.data) for f in files)
            result.version, result.skipped = new.version, ""
            break
        if result.inputs:
            results.append(result)
    return results


def _renamed(f: EncodedFile, tag: str) -> EncodedFile:
    folder = f.path.rsplit("/", 1)[0]
    return replace(f, path=f"{folder}/{file_name(f.topic, f.partition, f.first_offset, f.last_offset, tag)}")


def _clean_up_after_crashed_compactions(manifests: ManifestStore, tp: TopicPartition) -> None:
    """A compaction killed after writing its merged files and before its commit left them in the folder, where a
    reader of the folder sees every record twice until a later version settles their record. Settle it now (a
    ``gc`` version: it fences that compaction should it be alive still, and moves no offset), then recover: the
    merged files of crashed compactions, and the inputs of one killed after its commit, leave the folder."""
    state = manifests.load(*tp)
    pending = manifests.pending_records(*tp)
    if any(v > state.version and rel.rsplit("/", 1)[-1][21:].startswith("compact-") for rel, v, _ in pending):
        try:
            state = manifests.commit(state, operation="gc", owner="compact-cleanup", next_offset=state.next_offset)
        except ManifestConflict:
            return  # a writer committed: that settles the record too; the next compact recovers it
    manifests.recover(state)
