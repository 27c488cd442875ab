"""The pipeline config: a YAML file, validated once at load into frozen dataclasses.

The model is the dataclasses below: each key is one field, declared once with :func:`setting`: its type, its
default (written as in the YAML), its parser and one line of documentation. The loader reads every section by
walking those fields, ``docs/configuration.md``'s table of every key is generated from them (``make docs``; a
unit test fails when the table is stale) and ``kingest init``'s template is checked against them by a unit test.
Closed sets of values are the ``StrEnum`` classes below (``Semantics`` is also the CLI's ``--semantics``).

Every error names the key (``batch.max_bytes``), the line in the file, the bad value and what is valid.
``${VAR}`` and ``${VAR:-default}`` in string values are read from the environment; values that came from
the environment, and keys that hold secrets, are never echoed back in a message.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, dataclass_transform

import yaml

from .errors import ConfigError

# ---------------------------------------------------------------------------------------------- closed sets


class Semantics(StrEnum):
    """When offsets are saved: the delivery guarantee."""

    at_most_once = "at-most-once"
    at_least_once = "at-least-once"
    exactly_once = "exactly-once"


class RecordFormat(StrEnum):
    raw = "raw"
    string = "string"
    json = "json"
    avro = "avro"
    protobuf = "protobuf"
    json_schema = "json-schema"


# Formats whose records carry a schema id (the Confluent wire format): their schemas come from a registry.
REGISTRY_FORMATS = (RecordFormat.avro, RecordFormat.protobuf, RecordFormat.json_schema)


class OnError(StrEnum):
    fail = "fail"
    skip = "skip"
    dead_letter = "dead-letter"


class Compression(StrEnum):
    zstd = "zstd"
    snappy = "snappy"
    gzip = "gzip"
    lz4 = "lz4"
    brotli = "brotli"
    none = "none"


class LakeFormat(StrEnum):
    """How the lake holds its data: a folder of Parquet files, or a Delta Lake table."""

    parquet = "parquet"
    delta = "delta"


class PartitionBy(StrEnum):
    date = "date"
    hour = "hour"


class SchemaType(StrEnum):
    """The column types ``records.schema`` may declare (encoder.DECLARED_TYPES maps each to an Arrow type)."""

    string = "string"
    int8 = "int8"
    int16 = "int16"
    int32 = "int32"
    int64 = "int64"
    float32 = "float32"
    float64 = "float64"
    bool = "bool"
    timestamp = "timestamp"
    date = "date"
    binary = "binary"


class OffsetReset(StrEnum):
    earliest = "earliest"
    latest = "latest"


class IsolationLevel(StrEnum):
    read_committed = "read_committed"
    read_uncommitted = "read_uncommitted"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class Client(StrEnum):
    """The consumer library: kafka-python (pure Python, always installed) or confluent-kafka (librdkafka, C; the
    `fast` extra). Both sit behind the same Source protocol."""

    kafka_python = "kafka-python"
    confluent = "confluent"


SCHEMA_TYPES = tuple(t.value for t in SchemaType)
# The metadata columns the encoder puts first in every row (encoder.METADATA_FIELDS; a test keeps them equal).
RESERVED_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "kafka_headers")
# Consumer settings kingest sets itself: refused under `kafka.consumer` (kafka-python and librdkafka spellings).
RESERVED_CONSUMER_SETTINGS = (
    "enable_auto_commit",
    "group_id",
    "bootstrap_servers",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
)

# Key names whose values are secrets wherever they appear (storage_options, consumer settings).
# An S3 access key id (`key`, `aws_access_key_id`) names an identity, like a user name: it is not a secret, and
# scrubbing it would mangle every output where the same word appears. Its secret half is.
_SECRET_WORDS = ("password", "secret", "token", "credential", "private_key")


def is_secret_key(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _SECRET_WORDS)


# ---------------------------------------------------------------------------------------------- values


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: object) -> int:
    """``64MiB`` -> 67108864. Plain integers are bytes."""
    size = _size(value)
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_size_or_zero(value: object) -> int:
    """As parse_size, and 0 (a size that turns something off; not a fraction of a byte that rounds to it)."""
    size = _size(value)
    if size < 0:
        raise ValueError("must be 0 or more")
    match = _SIZE.match(str(value))
    if size == 0 and match and float(match.group(1)) != 0:
        raise ValueError("less than a byte: use 0 to turn it off, or a size such as 64KiB")
    return size


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("a size such as 64MiB, 500KB or 1048576 (bytes)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def parse_duration(value: object) -> float:
    """``10s`` -> 10.0 seconds. Units: ms, s, m, h, d; a plain number is seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("a duration such as 500ms, 10s, 5m or 1h")
        number, unit = match.groups()
        seconds = float(number) * _DURATION_UNITS[unit or "s"]
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


# Parsers of one value: the raw YAML value -> the typed value, or ValueError/TypeError saying what is valid.


def _string(value: Any) -> str:
    if isinstance(value, bool | dict | list):
        raise ValueError("a string")
    return str(value)


def _name(value: Any) -> str:
    text = _string(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ValueError("letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    return text


def _int(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a whole number >= {minimum}")
        if value < minimum:
            raise ValueError(f"a whole number >= {minimum}")
        return value

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a non-empty list of strings, such as [orders, payments]")
    return tuple(value)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("a mapping (key: value lines)")
    return value


@dataclass(frozen=True)
class SchemaRegistryConfig:
    """``records.schema_registry``: where the schemas of the records' ids are (the Confluent REST API)."""

    url: str
    basic_auth: str | None = field(default=None, repr=False)  # user:password: a secret
    ca_file: str | None = None
    retry_seconds: float = 300.0


_REGISTRY_KEYS = ("url", "basic_auth", "ca_file", "retry_seconds")


def _schema_registry(value: Any) -> SchemaRegistryConfig:
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise ValueError("a mapping with url (and basic_auth, ca_file, retry_seconds)")
    for key in value:
        if key not in _REGISTRY_KEYS:
            close = difflib.get_close_matches(str(key), _REGISTRY_KEYS, n=1)
            raise ValueError(
                f"unknown key `{key}`"
                + (f": did you mean `{close[0]}`?" if close else "")
                + f" (keys: {', '.join(_REGISTRY_KEYS)})"
            )
    url = value.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/]", url):
        raise ValueError("`url` must be the registry's http:// or https:// URL (Apicurio: .../apis/ccompat/v7)")
    auth = value.get("basic_auth")
    if auth is not None and (not isinstance(auth, str) or ":" not in auth):
        raise ValueError("`basic_auth` must be user:password (give it as ${VAR})")
    ca_file = value.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise ValueError("`ca_file` must be the path of a PEM file")
    retry = parse_duration(value.get("retry_seconds", 300.0))
    return SchemaRegistryConfig(url=url, basic_auth=auth, ca_file=ca_file, retry_seconds=retry)


def _schema(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ValueError
    return {str(k): v for k, v in value.items()}  # each type is checked by parse(), naming its line


def _partition_by(value: Any) -> tuple[PartitionBy, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or tuple(value) not in ((), ("date",), ("date", "hour")):
        raise ValueError
    return tuple(PartitionBy(v) for v in value)


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Key:
    """What the loader and the docs know of one config key, beside its name, type and default (the field's)."""

    doc: str  # one line of Markdown: docs/configuration.md's "meaning" column
    parse: Callable[[Any], Any]  # the YAML value -> the field's value; ValueError or TypeError when not valid
    choices: tuple[str, ...] = ()  # a closed set's values, in order
    expected: str = ""  # what is valid, when the parser's own words are not the ones to show
    shown_default: str = ""  # the default as the docs show it


_KEY = "kingest.key"  # where a field's metadata holds its Key
_REQUIRED: Any = dataclasses.MISSING


def setting(
    doc: str,
    parse: Callable[[Any], Any] | type[StrEnum],
    *,
    default: Any = _REQUIRED,
    expected: str = "",
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """One config key: a dataclass field with its documentation, parser and default, declared once.

    ``default`` is written as in the YAML (``"64MiB"``, ``"30s"``) and parsed like a value from the file: the
    docs show it as written, the field holds it parsed. None: unset; no default: the key must be given.
    ``parse`` is a parser, or a StrEnum for a closed set. ``shown`` replaces the default in the docs when it
    is computed elsewhere (``kingest-<pipeline>``). A ``secret`` value stays out of the dataclass's repr.
    """
    choices: tuple[str, ...] = ()
    parser: Callable[[Any], Any] = parse
    if isinstance(parse, type) and issubclass(parse, StrEnum):  # a closed set: one of its values
        choices, parser = tuple(member.value for member in parse), _choice(parse)
    metadata = {_KEY: Key(doc, parser, choices, expected, shown or _shown(default))}
    if default is _REQUIRED:
        return field(metadata=metadata, repr=not secret)
    value = None if default is None else parser(default)
    if isinstance(value, dict):
        return field(default_factory=lambda: dict(value), metadata=metadata, repr=not secret)
    return field(default=value, metadata=metadata, repr=not secret)


T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(setting, field))
def model(cls: type[T]) -> type[T]:
    """A section of the config: a frozen dataclass whose fields are declared with :func:`setting` (so that
    mypy, too, knows which keys have a default)."""
    return dataclass(frozen=True)(cls)


def _shown(default: Any) -> str:
    if default is _REQUIRED:
        return "(required)"
    if default is None:
        return "(none)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, list | tuple):
        return f"`[{', '.join(str(v) for v in default)}]`"
    return f"`{default}`"


def _choice(kind: type[StrEnum]) -> Callable[[Any], Any]:
    values = tuple(member.value for member in kind)

    def parse(value: Any) -> StrEnum:
        if not isinstance(value, str) or value not in values:
            raise ValueError(f"use one of {', '.join(values)}")
        return kind(value)

    return parse


@model
class KafkaConfig:
    """``kafka:`` the brokers, the topics and the consumer's settings."""

    bootstrap_servers: tuple[str, ...] = setting(
        "`host:port`, a list of them, or a comma-separated string.",
        _string_list,
        expected="host:port, such as localhost:9092",
    )
    topics: tuple[str, ...] = setting(
        "The topics to ingest: a list, or a comma-separated string.", _string_list, expected="a list of topic names"
    )
    # parse() gives it its default, kingest-<pipeline>, from another key
    group_id: str = setting(
        "The consumer group. Instances sharing it share the partitions.", _string, shown="`kingest-<pipeline>`"
    )
    auto_offset_reset: OffsetReset = setting(
        "Where a partition with no saved position starts: `earliest` or `latest`.", OffsetReset, default="earliest"
    )
    isolation_level: IsolationLevel = setting(
        "`read_committed` skips aborted transactional records; `read_uncommitted` reads everything.",
        IsolationLevel,
        default="read_committed",
    )
    group_instance_id: str | None = setting(
        "Static membership: a stable, unique name per instance (see docs/scaling.md).", _name, default=None
    )
    client_id: str = setting(
        "The client id the broker logs and shows in group descriptions.", _string, default="kingest"
    )
    security_protocol: SecurityProtocol = setting(
        "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.", SecurityProtocol, default="PLAINTEXT"
    )
    sasl_mechanism: SaslMechanism | None = setting(
        "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `SASL_*` protocol.", SaslMechanism, default=None
    )
    sasl_plain_username: str | None = setting("SASL user name.", _string, default=None)
    sasl_plain_password: str | None = setting(
        "SASL password: use `${VAR}`. Never printed.", _string, default=None, secret=True
    )
    ssl_cafile: str | None = setting("CA bundle (PEM) to verify the brokers.", _string, default=None)
    ssl_certfile: str | None = setting("Client certificate (PEM), for mutual TLS.", _string, default=None)
    ssl_keyfile: str | None = setting("Client private key (PEM).", _string, default=None)
    ssl_password: str | None = setting(
        "Password of the private key. Never printed.", _string, default=None, secret=True
    )
    ssl_check_hostname: bool = setting(
        "Check that the broker's certificate matches its host name.", _bool, default=True
    )
    session_timeout_ms: int = setting(
        "How long the group waits for a silent member before giving its partitions away.", _int(1), default=45000
    )
    max_poll_interval_ms: int = setting(
        "Longest time between polls before the member is considered stuck.", _int(1), default=300000
    )
    heartbeat_interval_ms: int = setting("Heartbeat period (well under `session_timeout_ms`).", _int(1), default=3000)
    request_timeout_ms: int = setting("Timeout of one broker request.", _int(1), default=30000)
    fetch_min_bytes: int = setting(
        "A fetch waits for at least this much data (or `fetch_max_wait_ms`).", _int(1), default=1
    )
    fetch_max_wait_ms: int = setting("Longest wait of a fetch for `fetch_min_bytes`.", _int(0), default=500)
    fetch_max_bytes: int = setting("Largest fetch response, all partitions together.", _int(1), default=52428800)
    # 1 MiB, Kafka's own default: kafka-python holds several fetches' worth of records per partition, and at 4 MiB
    # peak RSS was ~90 MB higher for the same CPU per record (benchmarks/, docs/performance.md).
    max_partition_fetch_bytes: int = setting(
        "Largest fetch per partition (more costs memory, not speed: docs/performance.md).", _int(1), default=1024 * 1024
    )
    max_poll_records: int = setting("Most records one poll returns.", _int(1), default=10000)
    check_crcs: bool = setting(
        "Check record CRCs (costs CPU; off only if the network is trusted).", _bool, default=True
    )
    client: Client = setting(
        "The consumer library: `kafka-python`, or `confluent` (librdkafka through confluent-kafka: much less CPU "
        "a record; install it with `pip install 'kingest[fast]'`). The same guarantees either way; see "
        "[the faster consumer](#the-faster-consumer-kafkaclient-confluent).",
        Client,
        default="kafka-python",
    )
    consumer: Mapping[str, Any] = setting(
        "Any other consumer setting, passed through as is: kafka-python's keyword arguments "
        "(`reconnect_backoff_ms`), or with `kafka.client: confluent` librdkafka's properties "
        "(`queued.max.messages.kbytes`). What kingest sets itself is refused here (`enable_auto_commit`, "
        "`group_id`, `bootstrap_servers`, and their librdkafka names, `enable.auto.offset.store` too). "
        "Never printed.",
        _mapping,
        default={},
        secret=True,
    )

    def consumer_settings(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaConsumer (secrets included: never print this)."""
        settings: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "group_id": self.group_id,
            "auto_offset_reset": self.auto_offset_reset.value,
            "isolation_level": self.isolation_level.value,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol.value,
            "session_timeout_ms": self.session_timeout_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "fetch_min_bytes": self.fetch_min_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "max_poll_records": self.max_poll_records,
            "check_crcs": self.check_crcs,
            "ssl_check_hostname": self.ssl_check_hostname,
        }
        optional = {
            "group_instance_id": self.group_instance_id,
            "sasl_mechanism": self.sasl_mechanism and self.sasl_mechanism.value,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        if self.client == Client.kafka_python:
            settings.update(self.consumer)
        return settings

    def librdkafka_settings(self) -> dict[str, Any]:
        """librdkafka configuration properties for confluent-kafka's Consumer (``kafka.client: confluent``), the
        same settings as consumer_settings() under librdkafka's names; ``kafka.consumer`` holds librdkafka
        properties then and is applied last. Secrets included: never print this. ``max_poll_records`` is no
        librdkafka property: the source uses it as the number of messages one consume() call returns at most."""
        settings: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.bootstrap_servers),
            "group.id": self.group_id,
            "client.id": self.client_id,
            # kingest commits explicit offsets itself, synchronously, when the semantics says so.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset.value,
            "isolation.level": self.isolation_level.value,
            "security.protocol": self.security_protocol.value.lower(),
            "session.timeout.ms": self.session_timeout_ms,
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "socket.timeout.ms": self.request_timeout_ms,
            "fetch.min.bytes": self.fetch_min_bytes,
            "fetch.wait.max.ms": self.fetch_max_wait_ms,
            "fetch.max.bytes": self.fetch_max_bytes,
            "max.partition.fetch.bytes": self.max_partition_fetch_bytes,
            "check.crcs": self.check_crcs,
        }
        if self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
            settings["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        optional = {
            "group.instance.id": self.group_instance_id,
            "sasl.mechanism": self.sasl_mechanism and self.sasl_mechanism.value,
            "sasl.username": self.sasl_plain_username,
            "sasl.password": self.sasl_plain_password,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
            "ssl.key.password": self.ssl_password,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        if self.client == Client.confluent:
            settings.update(self.consumer)
        return settings


@model
class RecordsConfig:
    """``records:`` how a record's value becomes a row."""

    format: RecordFormat = setting(
        "`raw` (the value's bytes, a `binary` column), `string` (UTF-8 text, a `string` column), `json` (a JSON "
        "object per record, one column per field), `avro` (Avro in the Confluent wire format, schemas from "
        "`schema_registry`; or plain Avro with `schema_file`), `protobuf` or `json-schema` (Protobuf, JSON in the "
        "Confluent wire format, schemas from `schema_registry`). "
        "See [Avro and the schema registry](#avro-and-the-schema-registry).",
        RecordFormat,
        default="json",
    )
    schema_registry: SchemaRegistryConfig | None = setting(
        "`avro`, `protobuf`, `json-schema`: the schema registry (Confluent REST API): `url`, `basic_auth` "
        "(`user:password`, as `${VAR}`; never printed), `ca_file` (PEM, for https), `retry_seconds` (how long to "
        "wait for a registry that does not answer, default 300). A URL alone may be given as the value.",
        _schema_registry,
        default=None,
        secret=True,
    )
    key_format: RecordFormat = setting(
        "How the key is read: `raw` (kept as bytes in `kafka_key`, and nothing more), or `string`, `json`, `avro`, "
        "`protobuf`, `json-schema`: the key decoded as a value is, as one more column `kafka_key_decoded` (the key's "
        "fields as a struct, or its text), `kafka_key` still holding the bytes. A key that cannot be decoded makes "
        "its record bad.",
        RecordFormat,
        default="raw",
    )
    schema_file: str | None = setting(
        "`avro` without a registry: the Avro schema (`.avsc`) every record was written with, values as plain Avro "
        "binary (no wire-format header).",
        _string,
        default=None,
    )
    schema: Mapping[str, SchemaType] | None = setting(
        "`json` only: `field: type` for the columns to keep, values coerced to these types (below). Types: "
        + ", ".join(f"`{t}`" for t in SchemaType)
        + ".",
        _schema,
        default=None,  # each type is checked by parse(), naming its line
        expected=f"a mapping of field: type, types: {', '.join(SchemaType)}",
        shown="(none: inferred)",
    )
    on_error: OnError = setting(
        "A record that cannot be decoded: `fail` stops the run, `skip` drops it, `dead-letter` keeps it under "
        "`_dead_letters/` (below).",
        OnError,
        default="fail",
    )


@model
class LakeConfig:
    """``lake:`` where the Parquet files go."""

    path: str = setting(
        "A local folder or `s3://bucket/prefix` (any fsspec URL). Data goes to `topic=<t>/partition=<p>/` below it.",
        _string,
        expected="./lake/NAME or s3://bucket/prefix",
    )
    storage_options: Mapping[str, Any] = setting(
        "Passed to fsspec/s3fs: `endpoint_url`, `key`, `secret`, `client_kwargs`, ... Without keys, S3 uses the "
        "standard AWS chain. Never printed.",
        _mapping,
        default={},
        secret=True,
    )
    format: LakeFormat = setting(
        "`parquet` (a folder of Parquet files; exactly-once keeps its offsets manifest under `_kingest/`) or "
        "`delta` (a Delta Lake table at lake.path: exactly-once keeps the offsets in the table's own commits). "
        "`delta` needs `pip install 'kingest[delta]'`.",
        LakeFormat,
        default="parquet",
    )
    compression: Compression = setting(
        "Parquet compression: `zstd`, `snappy`, `gzip`, `lz4`, `brotli` or `none`.", Compression, default="zstd"
    )
    compress_min_bytes: int = setting(
        "A file whose records take less than this in memory is written uncompressed (`0`: every file is "
        "compressed). Compressing a small file costs more than it saves: zstd doubles the CPU of writing a file of "
        "63 records (~0.35 ms more) to make it 6 KB smaller, and an object store's request takes its latency, "
        "10-50 ms, whether 13 KB or 7 KB. Wide topics flush many such files; `kingest compact` merges them into "
        "larger ones, compressed from this size on (a Delta table's compaction is delta-rs's own, compressed).",
        parse_size_or_zero,
        default="64KiB",
    )
    partition_by: tuple[PartitionBy, ...] = setting(
        "`[date]` or `[date, hour]`: folders `date=YYYY-MM-DD[/hour=HH]` from the record timestamp (UTC), in place "
        "of `partition=<p>` (a Delta table: partition columns `date`, `hour` after kafka_topic, kafka_partition).",
        _partition_by,
        default=[],
        expected="[date] or [date, hour] (from the record timestamp)",
    )
    max_concurrency: int = setting(
        "How many partitions of a flush are saved side by side (each partition's own steps stay in order). An "
        "object store answers each request in 10-50 ms: a wide topic needs many in flight (64: a flush of up to 64 "
        "partitions is saved in one wave of requests). 1 saves one partition after another.",
        _int(1),
        default=64,
    )


@model
class BatchConfig:
    """``batch:`` a partition's batch is written when it reaches any of these."""

    max_records: int = setting(
        "A partition's batch is written when it holds this many records.", _int(1), default=100_000
    )
    max_bytes: int = setting(
        "... or when all buffers together hold this many bytes (then every batch is written). A topic whose "
        "records take more memory decoded than typical JSON's do (compact Avro or Protobuf: about twice; JSON "
        "whose records each hold few of the topic's many fields) counts its bytes as much more, as measured on "
        "its batches.",
        parse_size,
        default="64MiB",
    )
    max_age: float = setting(
        "... or when its oldest record is this old, even if no new record arrives.", parse_duration, default="30s"
    )


@model
class Config:
    """The whole file: two keys and four sections (SECTIONS)."""

    pipeline: str = setting(
        "The pipeline's name: letters, digits, `.`, `_`, `-`. Names the default group and the manifest folder "
        "`_kingest/<pipeline>/`.",
        _name,
        expected="a name such as orders",
    )
    kafka: KafkaConfig
    records: RecordsConfig
    lake: LakeConfig
    batch: BatchConfig
    semantics: Semantics = setting(
        "When offsets are saved: `at-most-once` (before writing), `at-least-once` (after), `exactly-once` (in the "
        "lake's offsets manifest, with the data). `--semantics` overrides it.",
        Semantics,
        default="at-least-once",
    )
    source_path: str | None = None  # the file it was read from: not a key

    def with_semantics(self, semantics: str | None) -> Config:
        if semantics is None:
            return self
        if semantics not in tuple(Semantics):
            raise ConfigError(f"--semantics: {semantics!r} is not valid; use one of {', '.join(Semantics)}")
        return replace(self, semantics=Semantics(semantics))

    def secrets(self) -> list[str]:
        """Every secret value in this config, so that output can be scrubbed of them."""
        found = [self.kafka.sasl_plain_password, self.kafka.ssl_password]
        found += [v for k, v in _walk(self.lake.storage_options) if is_secret_key(k)]
        found += [v for k, v in _walk(self.kafka.consumer) if is_secret_key(k)]
        registry = self.records.schema_registry
        if registry is not None and registry.basic_auth:
            found += [registry.basic_auth, registry.basic_auth.split(":", 1)[1]]
        if registry is not None:
            embedded = re.match(r"https?://[^/@]*:([^/@]+)@", registry.url)  # http://user:password@host/...
            if embedded:
                found.append(embedded.group(1))
        return [str(v) for v in found if v not in (None, "")]


SECTIONS: dict[str, type] = {"kafka": KafkaConfig, "records": RecordsConfig, "lake": LakeConfig, "batch": BatchConfig}


def keys() -> Iterator[tuple[str, dataclasses.Field[Any], Key]]:
    """Every key of the config, in the docs' order: ``(dotted name, dataclass field, Key)``."""
    for f in dataclasses.fields(Config):
        if _KEY in f.metadata:
            yield f.name, f, f.metadata[_KEY]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f, f.metadata[_KEY]


def _walk(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out += _walk(value)
        else:
            out.append((str(key), value))
    return out


# ---------------------------------------------------------------------------------------------- docs

_TABLE_START = "<!-- The table below is generated from kingest/config.py by `make docs`: edit the docs there. -->"
_TABLE_END = "<!-- End of the generated table. -->"


def reference_table() -> str:
    """docs/configuration.md's table of every key, its default and its meaning, from the model."""
    rows = [f"| `{name}` | {key.shown_default} | {key.doc} |" for name, _, key in keys()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows]) + "\n"


def with_reference_table(markdown: str) -> str:
    """``markdown`` (docs/configuration.md) with the generated table between its markers replaced by the model's."""
    start, end = markdown.index(_TABLE_START) + len(_TABLE_START), markdown.index(_TABLE_END)
    return markdown[:start] + "\n" + reference_table() + markdown[end:]


# ---------------------------------------------------------------------------------------------- loading


class _Doc:
    """The parsed YAML with the line of every key, and which values came from the environment."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self.from_env: set[str] = set()
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"{source}: not valid YAML{where}: {problem}",
                "Check indentation and quoting around that line.",
            ) from None
        except RecursionError:
            raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
        self._nodes = 0
        self._open: set[int] = set()  # nodes being built: an alias back to one of them is a cycle
        self._merged: dict[int, int] = {}  # mapping node -> how many of its pairs came from merge keys
        try:
            self.data = self._build(node, "") if node is not None else {}
        except RecursionError:
            raise ConfigError(f"{source}: the config is nested too deeply") from None

    def _build(self, node: yaml.Node, path: str) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise ConfigError(f"{self.source}: the config is too large ({_MAX_NODES}+ values, aliases expanded)")
        if id(node) in self._open:
            raise ConfigError(f"{self.where_node(node)}: `{path}` refers to itself (a recursive YAML alias)")
        self._open.add(id(node))
        try:
            return self._build_node(node, path)
        finally:
            self._open.discard(id(node))

    def _build_node(self, node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            merged = self._flatten(node, path)
            out: dict[str, Any] = {}
            written: set[str] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ConfigError(f"{self.where_node(key_node)}: a key must be a plain name, not a list or mapping")
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                if index >= merged:  # merged-in keys may repeat (the later wins); keys written out may not
                    if key in written:
                        raise ConfigError(f"{self.source}:{key_node.start_mark.line + 1}: `{child}` is given twice")
                    written.add(key)
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self._build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        value = self._scalar(node, path)
        if isinstance(value, str) and "${" in value:
            value = self._interpolate(value, path)
        return value

    def _flatten(self, node: yaml.MappingNode, path: str) -> int:
        """Apply merge keys (``<<: *defaults``) in place, once per node; returns how many pairs, at the front,
        were merged in (the keys written out after them override them)."""
        if id(node) not in self._merged:
            written = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
            try:
                yaml.SafeLoader("").flatten_mapping(node)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{self.where_node(node)}: `{path or 'the config'}`: {_yaml_problem(exc)}") from None
            self._merged[id(node)] = len(node.value) - written
        return self._merged[id(node)]

    def _scalar(self, node: yaml.Node, path: str, plain: bool = False) -> Any:
        try:
            return _construct_scalar(node, plain)
        except Exception as exc:  # PyYAML's constructors fail in assorted ways on bad tagged values (!!timestamp x)
            shown = "(value hidden: it comes from the environment)" if plain else repr(node.value)
            raise ConfigError(
                f"{self.where(path) if plain else self.where_node(node)}: `{path or 'the config'}` = {shown} "
                f"cannot be read: {_yaml_problem(exc)}",
                "Quote the value if it is meant as text.",
            ) from None

    def where_node(self, node: yaml.Node) -> str:
        mark = getattr(node, "start_mark", None)
        return f"{self.source}:{mark.line + 1}" if mark is not None else self.source

    def _interpolate(self, value: str, path: str) -> Any:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(3)
            if name in os.environ and (os.environ[name] != "" or default is None):
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{self.where(path)}: `{path}` uses ${{{name}}} but the environment variable {name} is not set",
                f"Set it (export {name}=...) or give a default: ${{{name}:-value}}.",
            )

        self.from_env.add(path)
        result = _ENV_REF.sub(substitute, value)
        if result != value and _ENV_REF.fullmatch(value):
            # A whole-value reference keeps YAML typing: ${BATCH:-10} is the number 10.
            return self._scalar(yaml.ScalarNode("tag:yaml.org,2002:str", result), path, plain=True)
        return result

    def where(self, path: str) -> str:
        line = self.lines.get(path)
        return f"{self.source}:{line}" if line else self.source


_MAX_NODES = 100_000


def _yaml_problem(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return str(problem)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def _construct_scalar(node: yaml.Node, plain: bool = False) -> Any:
    if plain:
        resolved = yaml.resolver.Resolver().resolve(yaml.ScalarNode, node.value, (True, False))
        node = yaml.ScalarNode(resolved, node.value)
    return yaml.SafeLoader("").construct_object(node, deep=True)


class _Section:
    """Reads one mapping of the config, checking types and reporting unknown keys."""

    def __init__(self, doc: _Doc, data: Any, path: str, known: tuple[str, ...]) -> None:
        self.doc = doc
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{doc.where(path)}: `{path}` must be a mapping (key: value lines), not {_kind(data)}")
        self.data = data
        for key in data:
            if key not in known:
                full = f"{path}.{key}" if path else key
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"Did you mean `{close[0]}`?" if close else f"Valid keys here: {', '.join(known)}."
                raise ConfigError(f"{doc.where(full)}: unknown key `{full}`. {hint}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def shown(self, name: str, value: Any) -> str:
        full = self.key(name)
        from_env = any(p == full or p.startswith((f"{full}.", f"{full}[")) for p in self.doc.from_env)
        # storage_options and consumer hold credentials under free-form keys: never echo them back either.
        if from_env or is_secret_key(name) or name in ("storage_options", "consumer", "schema_registry"):
            return "(value hidden: it is a secret or comes from the environment)"
        return repr(value)

    def fail(self, name: str, value: Any, expected: str) -> ConfigError:
        full = self.key(name)
        return ConfigError(f"{self.doc.where(full)}: `{full}` = {self.shown(name, value)} is not valid: {expected}")

    def get(self, name: str, parse: Callable[[Any], Any], default: Any = ..., expected: str = "") -> Any:
        if name not in self.data or self.data[name] is None:
            if default is ...:
                raise ConfigError(
                    f"{self.doc.where(self.path) if self.path else self.doc.source}: "
                    f"`{self.key(name)}` is required" + (f" ({expected})" if expected else "")
                )
            return default
        value = self.data[name]
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(name, value, expected or str(exc)) from None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check_schemas(doc: _Doc, records: RecordsConfig) -> None:
    """records.format, schema_registry and schema_file agree; a schema file is a readable Avro schema."""
    fmt = records.format
    key = records.key_format
    if records.schema_registry is not None and fmt not in REGISTRY_FORMATS and key not in REGISTRY_FORMATS:
        raise ConfigError(
            f"{doc.where('records.schema_registry')}: `records.schema_registry` applies only to "
            f"`records.format` (or `key_format`) `avro`, `protobuf` or `json-schema`, not {fmt}",
            "Set records.format to the format the topic's records are written in.",
        )
    if key in REGISTRY_FORMATS and records.schema_registry is None:
        raise ConfigError(
            f"{doc.where('records.key_format')}: `records.key_format: {key}` needs `records.schema_registry`",
            "For example:  schema_registry: {url: http://127.0.0.1:8081/apis/ccompat/v7}",
        )
    if records.schema_file is not None:
        where = doc.where("records.schema_file")
        if fmt != RecordFormat.avro:
            raise ConfigError(f"{where}: `records.schema_file` applies only to `records.format: avro`")
        if records.schema_registry is not None:
            raise ConfigError(
                f"{where}: give either `records.schema_file` (plain Avro values) or `records.schema_registry` "
                "(values in the Confluent wire format, with a schema id), not both"
            )
        from .avro import AvroSchemaError, load_schema_file

        try:
            load_schema_file(records.schema_file)
        except AvroSchemaError as exc:
            raise ConfigError(
                f"{where}: `records.schema_file`: {exc}", "Give the path of an Avro schema (.avsc, JSON)."
            ) from None
    elif fmt in REGISTRY_FORMATS and records.schema_registry is None:
        more = " or `records.schema_file` (plain Avro values)" if fmt == RecordFormat.avro else ""
        raise ConfigError(
            f"{doc.where('records.format')}: `records.format: {fmt}` needs `records.schema_registry`{more}",
            "For example:  schema_registry: {url: http://127.0.0.1:8081/apis/ccompat/v7}",
        )


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a pipeline config. ``path`` defaults to $KINGEST_CONFIG, then ./kingest.yaml."""
    chosen = Path(path or os.environ.get("KINGEST_CONFIG") or "kingest.yaml")
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {chosen} not found",
            "Pass one with -c PATH, set KINGEST_CONFIG, or create one with `kingest init`.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {chosen} cannot be read: {exc}") from None
    return parse(text, str(chosen))


def _read(section: _Section, cls: type, names: tuple[str, ...] = (), **defaults: Any) -> dict[str, Any]:
    """The values of ``cls``'s keys (or of ``names``) in this section, parsed; absent ones get their default
    (``defaults`` replaces the field's: a default computed from other keys)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get(_KEY)
        if key is None or (names and f.name not in names):
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...  # required
        values[f.name] = section.get(f.name, key.parse, default, key.expected)
    return values


def _section(doc: _Doc, data: Any, path: str, cls: type) -> _Section:
    return _Section(doc, data, path, tuple(f.name for f in dataclasses.fields(cls) if _KEY in f.metadata))


def parse(text: str, source: str = "<config>") -> Config:
    """Validate config text (see :func:`load`). Each key is read as its field in the model says; what follows
    each section's reading is what spans several keys."""
    doc = _Doc(text, source)
    top = _Section(doc, doc.data, "", tuple(f.name for f in dataclasses.fields(Config) if f.name != "source_path"))
    pipeline = _read(top, Config, ("pipeline",))["pipeline"]

    kafka = _section(doc, top.data.get("kafka"), "kafka", KafkaConfig)
    if "kafka" not in top.data:
        raise ConfigError(f"{source}: `kafka` is required (bootstrap_servers and topics)")
    kafka_config = KafkaConfig(**_read(kafka, KafkaConfig, group_id=f"kingest-{pipeline}"))
    consumer = kafka_config.consumer
    for reserved in RESERVED_CONSUMER_SETTINGS:
        if reserved in consumer:
            raise ConfigError(
                f"{doc.where('kafka.consumer.' + reserved)}: `kafka.consumer.{reserved}` cannot be set here",
                "kingest commits offsets itself; set group_id and bootstrap_servers under `kafka:`.",
            )
    if kafka_config.client == Client.confluent:
        for name, value in consumer.items():
            if isinstance(value, dict | list):
                raise ConfigError(
                    f"{doc.where('kafka.consumer.' + str(name))}: `kafka.consumer.{name}` is not valid: "
                    "with `kafka.client: confluent`, kafka.consumer holds librdkafka properties, each a plain "
                    "value (a string, number or boolean)",
                    "See https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md.",
                )
        strategy = "partition.assignment.strategy"
        if "cooperative" in str(consumer.get(strategy, "")):
            raise ConfigError(
                f"{doc.where('kafka.consumer.' + strategy)}: `kafka.consumer.{strategy}` = "
                f"{consumer[strategy]!r} is not supported: kingest saves a partition's batch when the group takes "
                "it back, as the eager protocol does; the cooperative protocol is not supported (not tested)",
                "Use range, roundrobin (the default) or both.",
            )
    if kafka_config.security_protocol.startswith("SASL") and not kafka_config.sasl_mechanism:
        raise ConfigError(
            f"{doc.where('kafka.security_protocol')}: `kafka.security_protocol` is "
            f"{kafka_config.security_protocol} but `kafka.sasl_mechanism` is not set",
            f"Set kafka.sasl_mechanism to one of {', '.join(SaslMechanism)}.",
        )

    records = _section(doc, top.data.get("records"), "records", RecordsConfig)
    records_config = RecordsConfig(**_read(records, RecordsConfig))
    if records_config.schema is not None:
        declared: dict[str, SchemaType] = {}
        for name, kind in records_config.schema.items():
            where = doc.where(f"records.schema.{name}")
            if kind not in SCHEMA_TYPES:
                raise ConfigError(
                    f"{where}: `records.schema.{name}` = {kind!r} is not valid: use one of {', '.join(SCHEMA_TYPES)}"
                )
            if name in RESERVED_COLUMNS:
                raise ConfigError(
                    f"{where}: `records.schema.{name}`: {name} is the name of a column kingest adds to every row",
                    f"Its columns are {', '.join(RESERVED_COLUMNS)}; a record field of that name cannot be stored.",
                )
            declared[name] = SchemaType(kind)
        if records_config.format != RecordFormat.json:
            raise ConfigError(f"{doc.where('records.schema')}: `records.schema` applies only to `records.format: json`")
        records_config = replace(records_config, schema=declared)
    _check_schemas(doc, records_config)

    if "lake" not in top.data:
        raise ConfigError(f"{source}: `lake` is required (lake.path: ./lake/NAME or s3://bucket/prefix)")
    lake = _section(doc, top.data.get("lake"), "lake", LakeConfig)
    lake_config = LakeConfig(**_read(lake, LakeConfig))
    if lake_config.format == LakeFormat.delta:
        if records_config.on_error == "dead-letter":
            raise ConfigError(
                f"{doc.where('records.on_error')}: `records.on_error: dead-letter` is not supported with "
                "`lake.format: delta` yet",
                "Use `records.on_error: fail` or `skip`, or lake.format: parquet.",
            )

    batch = _section(doc, top.data.get("batch"), "batch", BatchConfig)
    batch_config = BatchConfig(**_read(batch, BatchConfig))

    return Config(
        pipeline=pipeline,
        kafka=kafka_config,
        records=records_config,
        lake=lake_config,
        batch=batch_config,
        semantics=_read(top, Config, ("semantics",))["semantics"],
        source_path=source,
    )
