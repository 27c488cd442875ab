"""`kingest init`: write a commented starter config that loads as written (``config.parse`` checks it first).

The template is checked against the config model (kingest/config.py) by tests/unit/test_config_init.py: the
keys it shows exist, show their default unless they are an example, and list all the values of a closed set;
a key of the model is in the template or, on purpose, left to docs/configuration.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import config as config_module
from .errors import ConfigError, SetupError

TEMPLATE = """\
# kingest pipeline config: Kafka topics -> Parquet files in a lake (local disk or S3).
# Every key, its default and its meaning: docs/configuration.md. Try it with: kingest check -c {path}
# Any value may read the environment: ${{VAR}} or ${{VAR:-default}} (use that for passwords and keys).

# The pipeline's name: it names the consumer group (kingest-<pipeline>) and the offsets manifest's folder.
pipeline: {pipeline}

kafka:
  bootstrap_servers: {bootstrap}
  topics: [{topics}]
  # group_id: kingest-{pipeline}   # default: kingest-<pipeline>
  # auto_offset_reset: earliest     # where a group with no saved offset starts: earliest | latest
  # isolation_level: read_committed # read_committed | read_uncommitted
  # security_protocol: SASL_SSL     # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
  # sasl_mechanism: SCRAM-SHA-512   # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
  # sasl_plain_username: kingest
  # sasl_plain_password: ${{KAFKA_PASSWORD}}
  # ssl_cafile: /etc/ssl/certs/kafka-ca.pem
  # client: kafka-python           # or confluent: librdkafka, less CPU a record (pip install 'kingest[fast]')
  # consumer: {{}}                   # any other consumer setting, passed through (kafka-python's, or librdkafka's)

records:
  # raw (the bytes) | string (UTF-8 text) | json (an object per record: one column per field) |
  # avro | protobuf | json-schema (Confluent's wire format: a schema id, the value; schemas from schema_registry)
  format: {format}
{registry}  # schema_file: order.avsc       # avro without a registry: plain Avro values, all of this schema
  # key_format: raw              # keys: raw (bytes only) | string | json | avro | protobuf | json-schema
  on_error: fail                 # a record that cannot be decoded: fail (stop the run) | skip | dead-letter
  # schema:                      # json only: declared column types (values are coerced; without it, inferred)
  #   order_id: string           # string | int8 | int16 | int32 | int64 | float32 | float64 | bool |
  #   amount: float64            # timestamp (ISO 8601, or epoch milliseconds) | date | binary
  #   created_at: timestamp

lake:
  # A local folder, or s3://bucket/prefix.
  path: {lake}
  storage_options: {{}}            # passed to fsspec/s3fs. For S3 outside AWS, for example:
  #   endpoint_url: http://127.0.0.1:8333
  #   key: ${{AWS_ACCESS_KEY_ID}}
  #   secret: ${{AWS_SECRET_ACCESS_KEY}}
  # format: parquet              # parquet | delta (a Delta Lake table: pip install 'kingest[delta]')
  # compression: zstd            # zstd | snappy | gzip | lz4 | brotli | none
  # compress_min_bytes: 64KiB    # a smaller file is written uncompressed (0: every file is compressed)
  # partition_by: [date]         # [date] or [date, hour] folders, from the record timestamp (UTC)
  # max_concurrency: 64          # partitions of a flush saved side by side (wide topics, S3)

batch:                           # a partition's batch is written when it reaches any of these
  max_records: 100000
  max_bytes: 64MiB               # all buffers together (B, KB, MB, GB, KiB, MiB, GiB)
  max_age: 30s                   # age of its oldest record (ms, s, m, h); fires even when no record arrives

# When offsets are saved: at-most-once (before writing) | at-least-once (after) | exactly-once (in the lake,
# with the data: each record lands once even across crashes; needs a store with exclusive create).
semantics: {semantics}
"""


def starter_config(
    *,
    path: str = "kingest.yaml",
    pipeline: str = "orders",
    topics: Sequence[str] = ("orders",),
    bootstrap_servers: str = "localhost:9092",
    lake: str | None = None,
    record_format: str = "json",
    semantics: str = "at-least-once",
    schema_registry: str = "http://localhost:8081/apis/ccompat/v7",
) -> str:
    """The starter config text, validated: a ConfigError names what is wrong with the values given."""
    registry = (
        f"  schema_registry:               # the schema registry (Confluent REST API; Apicurio: .../apis/ccompat/v7)\n"
        f"    url: {_scalar(schema_registry)}\n"
        "    # basic_auth: ${{REGISTRY_USER_INFO}}   # user:password\n"
    )
    if record_format not in ("avro", "protobuf", "json-schema"):
        registry = "".join(f"  # {line[2:]}\n" if line.strip() else "\n" for line in registry.splitlines())
    text = TEMPLATE.format(
        registry=registry.replace("{{", "{").replace("}}", "}"),
        path=path,
        pipeline=_scalar(pipeline),
        bootstrap=_scalar(bootstrap_servers),
        topics=", ".join(_scalar(t) for t in topics),
        format=_scalar(record_format),
        lake=_scalar(lake or f"./lake/{pipeline}"),
        semantics=_scalar(semantics),
    )
    try:
        config_module.parse(text, "kingest init")
    except ConfigError as error:
        problem = re.sub(r"^kingest init(:\d+)?: ", "", error.message)
        raise ConfigError(f"the options given make an invalid config: {problem}", error.hint) from None
    return text


def write_starter_config(path: str | os.PathLike[str], text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path``; refuse to replace an existing file unless ``force``."""
    target = Path(path)
    if target.is_dir():
        raise SetupError(f"{target} is a folder", "Give a file path, such as kingest.yaml.")
    try:
        with open(target, "w" if force else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise SetupError(
            f"{target} already exists; not overwriting it",
            "Pass --force to replace it, or give another path: kingest init other.yaml",
        ) from None
    except IsADirectoryError:
        raise SetupError(f"{target} is a folder", "Give a file path, such as kingest.yaml.") from None
    except OSError as exc:
        raise SetupError(
            f"cannot write {target}: {exc.strerror or exc}", "Check the folder exists and is writable."
        ) from None
    return target


def _scalar(value: str) -> str:
    """A plain YAML scalar when it reads back as the same string, else a quoted one (JSON strings are YAML)."""
    if "\n" in value or "#" in value:
        return json.dumps(value)
    try:
        plain = re.fullmatch(r"[A-Za-z0-9._/:@${}-][A-Za-z0-9._/:@${}, -]*", value) and yaml.safe_load(value) == value
    except yaml.YAMLError:
        plain = False
    return value if plain and "," not in value else json.dumps(value)


__all__ = ["ConfigError", "starter_config", "write_starter_config"]
