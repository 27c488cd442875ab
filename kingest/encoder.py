"""Turn a Batch of raw records into Parquet files: the pipeline's one entry point to the three stages below.

    decode.py   raw values → Arrow table of the good records + the bad ones (JSON read per batch, schemas)
    coerce.py   (declared schemas) values → the declared types
    parquet.py  Arrow table → Parquet files, named and placed per layout.py, lineage in the footer

``Encoder.encode_batch`` settles a batch's bad records per ``records.on_error`` (fail, skip, dead-letter).
This module imports no pyarrow at run time: the stages below own it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .batcher import Batch
from .coerce import declared_schema
from .deadletter import DEAD_LETTER_KIND
from .decode import METADATA_NAMES, Decoded, Decoder, Rejected, dead_letter_table
from .errors import BadRecord
from .parquet import EncodedFile, ParquetFiles

if TYPE_CHECKING:
    import pyarrow as pa

    from .avro import AvroSchema
    from .config import Config
    from .registry import Registry

__all__ = [
    "METADATA_NAMES",
    "BadRecord",
    "Decoded",
    "EncodedBatch",
    "EncodedFile",
    "Encoder",
    "Rejected",
    "rewriting_encoder",
]


EXPANSION_MIN_RECORDS = 100  # fewer records: the columns' fixed costs would weigh too much


@dataclass(frozen=True)
class EncodedBatch:
    """What a batch becomes under the pipeline's ``records.on_error``.

    ``batch`` holds the records the files settle: all of them, except under ``fail`` where it stops before the
    first bad record (``error``). ``files`` are the data files, then the dead-letter file if any."""

    batch: Batch
    files: list[EncodedFile]
    rejected: list[Rejected]
    error: BadRecord | None = None


class Encoder:
    """Encodes batches for one pipeline: a Decoder (which, for inferred json schemas, remembers each topic's
    columns so that the files of a topic agree on each column's type) and the pipeline's Parquet files."""

    def __init__(
        self,
        record_format: str,
        *,
        schema: Mapping[str, str] | None = None,
        compression: str = "zstd",
        compress_min_bytes: int = 0,
        partition_by: Sequence[str] = (),
        lineage: Mapping[str, str] | None = None,
        file_tag: str | None = None,
        on_error: str = "fail",
        tables: bool = False,
        registry: Registry | None = None,
        schema_file: AvroSchema | None = None,
        key_format: str = "raw",
    ) -> None:
        self.on_error = on_error
        self.tables = tables  # lake.format: delta: hand the decoded tables on (see ParquetFiles.table_file)
        self.decoder = Decoder(
            record_format,
            declared_schema(schema) if schema else None,
            registry=registry,
            schema_file=schema_file,
            key_format=key_format,
        )
        # Per topic: its Arrow columns' bytes over its records' bytes, as last measured on a batch of at least
        # EXPANSION_MIN_RECORDS (the pipeline weighs a topic's bytes against batch.max_bytes by it).
        self.expansion: dict[str, float] = {}
        self.files = ParquetFiles(
            compression=compression,
            compress_min_bytes=compress_min_bytes,
            partition_by=partition_by,
            lineage=lineage,
            file_tag=file_tag,
        )

    @property
    def infers_schema(self) -> bool:
        """Whether the columns come from the records (json without ``records.schema``): then ``learn`` the lake's."""
        return self.decoder.infers_schema

    def learn(self, schemas: Mapping[str, pa.Schema]) -> None:
        """Start each topic from the columns the lake already has (per topic: a data file's schema), so that a
        record gets the same outcome whichever run reads it: a field's type is the one earlier runs wrote."""
        for topic, schema in schemas.items():
            self.decoder.learn(topic, schema)

    def prepare(self, batches: Sequence[Batch]) -> None:
        """Before a flush's batches are encoded (on several threads): read each topic's values in one go where
        that changes nothing (see Decoder.prepare). Optional: a batch not prepared is read on its own."""
        by_topic: dict[str, list[Batch]] = {}
        for batch in batches:
            by_topic.setdefault(batch.topic, []).append(batch)
        for group in by_topic.values():
            self.decoder.prepare(group)

    def decode(self, batch: Batch) -> Decoded:
        """The batch as an Arrow table of its good records, and the records that cannot be decoded."""
        return self.decoder.decode(batch)

    def encode_batch(self, batch: Batch) -> EncodedBatch:
        """The batch as Parquet files, one per output partition, its bad records settled per ``on_error``:
        fail (files for the records before the first bad one, and the error), skip (files for the good ones),
        dead-letter (files for the good ones, plus one dead-letter file holding the bad ones)."""
        decoded = self.decoder.decode(batch)
        if len(batch) >= EXPANSION_MIN_RECORDS and batch.nbytes:
            self.expansion[batch.topic] = decoded.table.nbytes / batch.nbytes
        rejected = decoded.rejected
        if rejected and self.on_error == "fail":
            first = rejected[0]
            files = self.encode_table(batch.topic, batch.partition, decoded.before(first.offset))
            return EncodedBatch(batch.take_before(first.offset), files, [], first.error())
        files = self.encode_table(batch.topic, batch.partition, decoded.table)
        if rejected and self.on_error == "dead-letter":
            files.append(self.dead_letter_file(batch, rejected))
        return EncodedBatch(batch, files, rejected)

    def encode_table(self, topic: str, partition: int, table: pa.Table, kind: str = "data") -> list[EncodedFile]:
        """Decoded records of one topic-partition as files of ``kind`` (rewind rewrites a file with this: a
        dead-letter file stays one, its footer included)."""
        if kind == DEAD_LETTER_KIND:
            return [self.files.dead_letter_file(topic, partition, table)] if table.num_rows else []
        if self.tables:
            return self.files.table_file(topic, partition, table)
        return self.files.data_files(topic, partition, table)

    def dead_letter_file(self, batch: Batch, rejected: Sequence[Rejected]) -> EncodedFile:
        """The raw bad records (key, value as bytes, headers, timestamp, topic, partition, offset) and their error
        text, under ``_dead_letters/topic=<t>/partition=<p>/``."""
        return self.files.dead_letter_file(batch.topic, batch.partition, dead_letter_table(batch, rejected))


def writer_schemas(config: Config) -> dict[str, Any]:
    """The Encoder's ``registry`` and ``schema_file`` for ``records.schema_registry`` / ``records.schema_file``."""
    from .avro import load_schema_file, require
    from .registry import Registry

    records = config.records
    out: dict[str, Any] = {"key_format": str(records.key_format)}
    if "avro" in (records.format, records.key_format):
        require()
    if "protobuf" in (records.format, records.key_format):
        from .protobuf import require as require_protobuf

        require_protobuf()
    if records.schema_registry is not None:
        out["registry"] = Registry.from_config(records.schema_registry)
    if records.schema_file is not None:
        out["schema_file"] = load_schema_file(records.schema_file)
    return out


def rewriting_encoder(config: Config, owner: str, **lineage: str) -> Encoder:
    """The encoder of files that replace lake files (a rewind's rewritten file, a compaction's merged one): the
    pipeline's format and compression, its lineage plus ``lineage`` (``kingest.<key>``), names tagged with the
    rewriting process (``owner``'s last part, and a serial): never the name of a file it replaces."""
    return Encoder(
        config.records.format,
        compression=config.lake.compression,
        compress_min_bytes=config.lake.compress_min_bytes,
        lineage={
            "kingest.pipeline": config.pipeline,
            "kingest.semantics": config.semantics,
            **{f"kingest.{key}": value for key, value in lineage.items()},
        },
        file_tag=owner.rsplit("-", 1)[-1],
    )
