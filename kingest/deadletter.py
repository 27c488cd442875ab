"""Dead letters: the records that cannot be decoded, kept in the lake (``records.on_error: dead-letter``).

Layout, beside the data (the leading underscore hides the folder from pyarrow, DuckDB and Spark readers of the
dataset)::

    <lake>/_dead_letters/topic=<t>/partition=<p>/<t>-<p>-<first offset>-<last offset>[-<writer>].parquet

Columns: ``kafka_topic``, ``kafka_partition``, ``kafka_offset``, ``kafka_timestamp``, ``kafka_key``,
``kafka_headers`` (as in the data files), ``value`` (the raw bytes, binary) and ``error`` (why it was refused).

A dead-letter file is one more file of the batch it comes from (``Encoder.encode_batch``), written and committed
with the batch's data files in ``Pipeline._save``: under exactly-once the manifest version that commits the
batch names it in its ``add`` list with ``"kind": "dead-letter"``, so a dead letter is written exactly once (an
uncommitted one is removed by recovery, like any uncommitted file). Under the other semantics it shares the
fate of its batch: at-least-once may write it again after a crash (same name, replaced), at-most-once may lose
it.

Counting them (for ``kingest status``): :func:`dead_letters_in_state` from a manifest state (exactly-once: only
committed files count); :func:`count_dead_letters` from the lake listing and the files' footers (otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .lake import Lake
from .layout import DEAD_LETTER_FOLDER, dead_letter_file
from .types import TopicPartition

DEAD_LETTER_KIND = "dead-letter"


def is_dead_letter(entry: Mapping[str, Any]) -> bool:
    """Whether a manifest file entry names a dead-letter file (data file entries carry no ``kind``)."""
    return entry.get("kind") == DEAD_LETTER_KIND


def dead_letters_in_state(state: Any) -> int:
    """Dead letters committed for one partition, from a store that names its files (``offsets.Position``,
    ``manifest.PartitionState``)."""
    return sum(int(entry.get("rows", 0)) for entry in state.files.values() if is_dead_letter(entry))


def dead_letter_files(lake: Lake, topics: Iterable[str] | None = None) -> dict[TopicPartition, list[str]]:
    """The dead-letter files in the lake, per topic-partition (paths relative to the lake root)."""
    wanted = set(topics) if topics is not None else None
    out: dict[TopicPartition, list[str]] = {}
    for rel in lake.find(DEAD_LETTER_FOLDER):
        tp = dead_letter_file(rel)
        if tp is None or (wanted is not None and tp[0] not in wanted):
            continue
        out.setdefault(tp, []).append(rel)
    for files in out.values():
        files.sort()
    return out


def count_dead_letters(
    lake: Lake, topics: Iterable[str] | None = None, committed: Iterable[str] | None = None
) -> dict[TopicPartition, int]:
    """Dead letters per topic-partition, from the lake: the row counts of the dead-letter files' footers (one
    small read per file, concurrently). ``committed``: only files of this set count (exactly-once: the paths
    the manifest names; files of an interrupted attempt are not dead letters yet)."""
    from .reader import file_rows

    allowed = set(committed) if committed is not None else None
    lake.fs.invalidate_cache()  # s3fs caches listings: a file written since this Lake last looked must count
    found = dead_letter_files(lake, topics)
    jobs = [(tp, rel) for tp, rels in found.items() for rel in rels if allowed is None or rel in allowed]
    counts: dict[TopicPartition, int] = dict.fromkeys(found, 0)

    def rows(rel: str) -> int:
        try:
            return file_rows(lake, rel)
        except FileNotFoundError:  # removed since listed (a recovery)
            return 0

    if jobs:
        with ThreadPoolExecutor(min(16, len(jobs))) as pool:
            for (tp, _), n in zip(jobs, pool.map(rows, [rel for _, rel in jobs]), strict=True):
                counts[tp] += n
    return counts
