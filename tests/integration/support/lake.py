"""The lake read back independently of kingest's own reading code: plain fsspec, JSON and pyarrow. The offsets
manifest is replayed from its version files (docs/manifest.md); the dataset folder is read as a pyarrow user
would (hive partitioning, names starting with `_` or `.` skipped, as by Spark and DuckDB)."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

Offsets = dict[int, list[int]]  # kafka_partition -> sorted offsets of the rows, duplicates kept


class LakeView:
    """One lake (a local folder or an s3:// URL with its storage options)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = str(url).rstrip("/")
        options = dict(storage_options or {})
        if self.url.startswith("s3://"):
            # No listings cache: a reader polling a folder being written must not open a file it listed through
            # a fresh listing and then test it against a stale cached one (FileNotFoundError mid-run).
            options.update(skip_instance_cache=True, use_listings_cache=False)
        self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        self.root = root.rstrip("/")

    # ------------------------------------------------------------------------------------- the dataset folder

    def visible_files(self) -> list[str]:
        """Every Parquet file a reader of the folder sees, relative to the lake, sorted."""
        if not self.fs.exists(self.root):
            return []
        relative = (path[len(self.root) + 1 :] for path in self.fs.find(self.root))
        return sorted(
            rel
            for rel in relative
            if rel.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in rel.split("/"))
        )

    def folder_dataset(self, schema: pa.Schema | None = None) -> ds.Dataset | None:
        """The visible files as one pyarrow dataset with hive partition columns; None while there is none."""
        files = self.visible_files()
        if not files:
            return None
        return ds.dataset(
            [f"{self.root}/{rel}" for rel in files],
            schema=schema,
            filesystem=self.fs,
            format="parquet",
            partitioning="hive",
            partition_base_dir=self.root,
        )

    def folder_table(self, columns: list[str] | None = None) -> pa.Table | None:
        """The rows of the visible files; None while there is no file."""
        dataset = self.folder_dataset()
        return dataset.to_table(columns=columns) if dataset is not None else None

    def folder_offsets(self) -> Offsets:
        """What a reader of the dataset folder sees."""
        table = self.folder_table(["kafka_partition", "kafka_offset"])
        return by_partition(table) if table is not None else {}

    # ------------------------------------------------------------------------------------- the manifest

    def history(self, pipeline: str, topic: str, partition: int) -> list[dict[str, Any]]:
        """Every committed manifest version of a partition, in order."""
        folder = f"{self.root}/_kingest/{pipeline}/manifest/topic={topic}/partition={partition}"
        try:
            names = sorted(p for p in self.fs.ls(folder, detail=False, refresh=True) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        docs = [json.loads(self.fs.cat_file(n)) for n in names]
        assert [d["version"] for d in docs] == list(range(1, len(docs) + 1)), f"versions of {folder} have gaps"
        return docs

    def manifest_files(self, pipeline: str, topic: str, partition: int) -> tuple[int | None, list[str]]:
        """(next_offset, data files relative to the lake) of the partition's latest version, by replaying
        every version."""
        files: dict[str, dict[str, Any]] = {}
        next_offset = None
        for doc in self.history(pipeline, topic, partition):
            for path in doc.get("remove", []):
                files.pop(path, None)
            for entry in doc.get("add", []):
                files[entry["path"]] = entry
            next_offset = doc.get("next_offset")
        return next_offset, sorted(files)

    def counted_files(self) -> set[str]:
        """Data files (relative to the lake) the manifests of every pipeline, topic and partition count."""
        files: set[str] = set()
        for version in sorted(self.fs.glob(f"{self.root}/_kingest/*/manifest/topic=*/partition=*/*.json")):
            doc = json.loads(self.fs.cat_file(version))
            files -= set(doc.get("remove", []))
            files |= {entry["path"] for entry in doc.get("add", [])}
        return files

    def offsets(self, paths: list[str]) -> Offsets:
        """The offsets of the rows of these files (absolute paths for self.fs)."""
        if not paths:
            return {}
        table = ds.dataset(paths, filesystem=self.fs, format="parquet").to_table(
            columns=["kafka_partition", "kafka_offset"]
        )
        return by_partition(table)

    def manifest_offsets(self, pipeline: str, topic: str, partitions: int) -> Offsets:
        """The offsets of the files the manifest names."""
        paths = []
        for p in range(partitions):
            paths += [f"{self.root}/{rel}" for rel in self.manifest_files(pipeline, topic, p)[1]]
        return self.offsets(paths)


def folder_offsets(lake: str, storage_options: dict[str, Any] | None = None) -> Offsets:
    """LakeView(lake, storage_options).folder_offsets(): {} while the folder holds no data file."""
    return LakeView(lake, storage_options).folder_offsets()


def by_partition(table: pa.Table) -> Offsets:
    out: Offsets = {}
    if table.num_rows == 0:
        return out
    for p in pc.unique(table.column("kafka_partition")).to_pylist():
        mask = pc.equal(table.column("kafka_partition"), p)
        out[int(p)] = sorted(table.filter(mask).column("kafka_offset").to_pylist())
    return out


# ----------------------------------------------------------------------------------------- checks


def dense(ends: dict[int, int]) -> Offsets:
    """The offsets a plain (non-transactional) producer leaves: 0 .. end - 1 in each partition."""
    return {p: list(range(end)) for p, end in ends.items()}


def duplicates(found: Offsets) -> Offsets:
    """Per partition with any, the offsets found more than once."""
    out = {p: sorted({o for i, o in enumerate(offsets) if i and offsets[i - 1] == o}) for p, offsets in found.items()}
    return {p: v for p, v in out.items() if v}


def missing(found: Offsets, expected: Offsets) -> Offsets:
    """Per partition with any, the expected offsets not found."""
    out = {}
    for p, offsets in expected.items():
        present = set(found.get(p, []))
        out[p] = [o for o in offsets if o not in present]
    return {p: v for p, v in out.items() if v}


def covers(found: Offsets, ends: dict[int, int]) -> bool:
    """Every offset below each partition's end is found."""
    return missing(found, dense(ends)) == {}


def missing_and_duplicated(found: Offsets, ends: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition, how many offsets of [0, end) are absent, and how many rows are extra copies."""
    missing_count, duplicated = {}, {}
    for p, end in ends.items():
        offsets = found.get(p, [])
        unique = set(offsets)
        missing_count[p] = len(set(range(end)) - unique)
        duplicated[p] = len(offsets) - len(unique)
    return missing_count, duplicated


def writes_without_latest_claim(history: list[dict[str, Any]]) -> list[int]:
    """Versions whose writer did not hold the partition's latest claim: a fencing failure (a zombie's commit,
    or a writer that never claimed). Empty when every write follows its writer's own claim."""
    bad, claimant = [], None
    for doc in history:
        if doc["operation"] == "claim":
            claimant = doc["owner"]
        elif doc["operation"] == "write" and doc["owner"] != claimant:
            bad.append(doc["version"])
    return bad
