"""What integration tests share: one way to run `kingest`, one config writer, one independent reader of the
lake, and the Kafka-side helpers. Import from here: `from .support import kingest, write_config, LakeView`."""

from .config import crash_config, default_config, merge, read_config, scale_config, write_config
from .delta import DeltaLog, DeltaView
from .kafka import (
    PARTITIONS,
    committed,
    end_offsets,
    events,
    group_members,
    group_offsets,
    private_producer,
    produce_evenly,
    produce_spread,
)
from .lake import (
    LakeView,
    by_partition,
    covers,
    dense,
    duplicates,
    folder_offsets,
    missing,
    missing_and_duplicated,
    writes_without_latest_claim,
)
from .process import Instance, kingest, process_env, run_until_caught_up, start_run, verify, wait_for

__all__ = [
    "PARTITIONS",
    "DeltaLog",
    "DeltaView",
    "Instance",
    "LakeView",
    "by_partition",
    "committed",
    "covers",
    "crash_config",
    "default_config",
    "dense",
    "duplicates",
    "end_offsets",
    "events",
    "folder_offsets",
    "group_members",
    "group_offsets",
    "kingest",
    "merge",
    "missing",
    "missing_and_duplicated",
    "private_producer",
    "process_env",
    "produce_evenly",
    "produce_spread",
    "read_config",
    "run_until_caught_up",
    "scale_config",
    "start_run",
    "verify",
    "wait_for",
    "write_config",
    "writes_without_latest_claim",
]
