"""`kingest compact` and `kingest gc` on a Delta table (lake.format: delta): the table's own operations, through
kingest/delta.py, reported as the Parquet lake's are (compact.Compacted, gc.Plan).

- compact: delta-rs' OPTIMIZE per topic-partition (the table is partitioned by kafka_topic, kafka_partition): small
  files merged into files of about ``--target-size`` in one commit that removes the old files and adds the new
  ones with ``dataChange: false``. The txns are table state: a compaction leaves every partition's offset as it
  is, and a writer appending meanwhile commits on top of it (no conflict: neither reads what the other writes).
  The old files stay in storage for readers at older versions until gc.
- gc: VACUUM in full mode: files no version of the table references (untracked: staged by a crashed or fenced
  writer, never committed) and files removed (by a compaction, a rewind's delete) longer than ``--retain`` ago,
  plus the hidden ``.tmp`` files of interrupted local writes (vacuum skips hidden files). First a fence, a
  metadata-only commit (DeltaTableStore.gc_fence), fails every commit that read the table before it (a
  writer's, a compaction's, a rewind's); a writer then writes again each file it wrote before the fence, so no
  file written before the fence is named by a commit after it, however long its writer was frozen: gc deletes
  only those, once older than the retention (at least delta.VACUUM_FLOOR_HOURS).
"""

from __future__ import annotations

import math
import time

from .compact import Compacted
from .config import Config
from .errors import ConfigError
from .gc import TMP_FLOOR, Garbage, Plan, _is_tmp
from .lake import Lake
from .offsets import open_table
from .types import TopicPartition


def _chosen(config: Config, tp: TopicPartition, topic: str | None, partition: int | None) -> bool:
    return tp[0] in config.kafka.topics and topic in (None, tp[0]) and partition in (None, tp[1])


def compact(
    config: Config, target: int, *, topic: str | None = None, partition: int | None = None, dry_run: bool = False
) -> list[Compacted]:
    """Merge each chosen partition's small files (smaller than half the target), when it has two or more."""
    table = open_table(config)
    if not table.exists():
        return []
    out = []
    files = table.files_by_partition()
    for tp in sorted(tp for tp in files if _chosen(config, tp, topic, partition)):
        small = {p: e for p, e in files.get(tp, {}).items() if int(e["bytes"]) < target // 2}
        if len(small) < 2:
            continue
        result = Compacted(tp, inputs=sorted(small), bytes_in=sum(int(e["bytes"]) for e in small.values()))
        if not dry_run:
            before = set(files.get(tp, {}))
            metrics = table.compact(tp, target_size=target)
            after = table.files_by_partition().get(tp, {})
            result.inputs = sorted(before - set(after))
            result.outputs = sorted(set(after) - before)
            result.bytes_in = sum(int(files[tp][p]["bytes"]) for p in result.inputs)
            result.bytes_out = sum(int(after[p]["bytes"]) for p in result.outputs)
            result.version = table.version() if metrics.get("numFilesRemoved") else None
            if result.version is None:
                result.skipped = "nothing to merge"
        out.append(result)
    return out


def gc_plan(config: Config, lake: Lake, retain: float) -> Plan:
    """What `kingest gc` removes from the table's storage (reads only): vacuum's dry run, with sizes and ages."""
    from .delta import VACUUM_FLOOR_HOURS

    if retain < VACUUM_FLOOR_HOURS * 3600:
        raise ConfigError(
            f"--retain {retain / 3600:g}h is below {VACUUM_FLOOR_HOURS}h, the least a Delta table allows here",
            "A running writer commits a file it staged within 30 minutes (or writes it again): a shorter "
            f"retention could delete a file as it is committed. Use --retain {VACUUM_FLOOR_HOURS}h or more.",
        )
    out = Plan(lake.display(), retain)
    table = open_table(config)
    if not table.exists():
        return out
    now = time.time()
    listed = lake.find_dated("")
    for rel in table.vacuum(math.ceil(retain / 3600), dry_run=True):
        size, modified = listed.get(rel, (0, now))
        out.collect.append(Garbage(rel, size, max(0.0, now - modified), "unreferenced"))
    for rel, (size, modified) in sorted(listed.items()):
        if _is_tmp(rel) and not rel.startswith("_delta_log/") and now - modified >= max(TMP_FLOOR, retain):
            out.collect.append(Garbage(rel, size, now - modified, "interrupted write"))
    return out


FENCE_MARGIN = 600.0  # seconds: the clocks of gc's host and of the store's may differ this much


def gc_collect(config: Config, lake: Lake, found: Plan) -> int:
    """Fence every writer (DeltaTableStore.gc_fence), then delete what vacuum finds unreferenced that was last
    written before the fence minus the retention (and a margin for the clocks), and the interrupted writes. Not
    vacuum's own deletion: its cutoff is the time of the call, which a pause of gc after the fence would move past
    the fence (a file written after the fence by a writer still to commit could then go)."""
    table = open_table(config)
    if not table.exists():
        return 0
    fenced_at = table.gc_fence()
    cutoff = fenced_at - found.retain - FENCE_MARGIN
    dated = lake.find_dated("")
    unreferenced = table.vacuum(math.ceil(found.retain / 3600), dry_run=True)
    doomed = [rel for rel in unreferenced if rel in dated and dated[rel][1] < cutoff]
    tmp = [g.path for g in found.collect if g.kind == "interrupted write"]
    lake.delete(doomed + tmp)
    return len(doomed) + len(tmp)
