"""A Delta table read back independently of kingest and of delta-rs: the `_delta_log/` JSON commits replayed with
plain fsspec and json (add and remove by path, the latest txn per appId: the Delta protocol's own rules), and the
live files' `kafka_offset` columns read with pyarrow. What a Spark or Trino reader would see, without either."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from .lake import Offsets


@dataclass
class DeltaLog:
    version: int = -1
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # live path -> add action
    txns: dict[str, int] = field(default_factory=dict)  # appId -> version
    operations: list[str] = field(default_factory=list)  # commitInfo operation per version


class DeltaView:
    """One Delta table (a local folder or an s3:// URL with s3fs storage options)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        if str(url).startswith("s3://"):
            options.update(skip_instance_cache=True, use_listings_cache=False)
        self.fs, root = fsspec.core.url_to_fs(str(url), **options)
        self.root = root.rstrip("/")

    def log(self) -> DeltaLog:
        out = DeltaLog()
        folder = f"{self.root}/_delta_log"
        if not self.fs.exists(folder):
            return out
        commits = sorted(p for p in self.fs.ls(folder, detail=False) if p.endswith(".json"))
        for path in commits:
            version = int(path.rsplit("/", 1)[-1].split(".")[0])
            assert version == out.version + 1, f"a gap in the Delta log before {path}"
            out.version = version
            for line in self.fs.cat_file(path).decode().splitlines():
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    out.files[action["add"]["path"]] = action["add"]
                elif "remove" in action:
                    out.files.pop(action["remove"]["path"], None)
                elif "txn" in action:
                    out.txns[action["txn"]["appId"]] = int(action["txn"]["version"])
                elif "commitInfo" in action:
                    out.operations.append(str(action["commitInfo"].get("operation")))
        return out

    def offsets(self, log: DeltaLog | None = None) -> Offsets:
        """kafka_partition -> sorted offsets of the table's live rows (duplicates kept)."""
        log = log or self.log()
        out: Offsets = {}
        for path, add in log.files.items():
            partition = int(add["partitionValues"]["kafka_partition"])
            with self.fs.open(f"{self.root}/{path}", "rb") as f:
                values = pq.read_table(f, columns=["kafka_offset"]).column("kafka_offset").to_pylist()
            out.setdefault(partition, []).extend(values)
        return {p: sorted(v) for p, v in out.items()}

    def untracked(self, log: DeltaLog | None = None) -> list[str]:
        """Parquet files under the table root that no live add names (staged by a crashed or fenced writer)."""
        log = log or self.log()
        found = [p[len(self.root) + 1 :] for p in self.fs.find(self.root) if p.endswith(".parquet")]
        return sorted(p for p in found if p not in log.files and not p.startswith("_"))
