"""The pipeline config: a YAML file, validated once at load into frozen dataclasses.

Every error names the key (``batch.max_bytes``), the line in the file, the bad value and what is valid.
``${VAR}`` and ``${VAR:-default}`` in string values are read from the environment; values that came from
the environment, and keys that hold secrets, are never echoed back in a message.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SEMANTICS = ("at-most-once", "at-least-once", "exactly-once")
FORMATS = ("raw", "string", "json")
ON_ERROR = ("fail", "skip", "dead-letter")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
PARTITION_BY = ("date", "hour")
SCHEMA_TYPES = (
    "string",
    "int8",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "bool",
    "timestamp",
    "date",
    "binary",
)
# The metadata columns the encoder puts first in every row (encoder.METADATA_FIELDS; a test keeps them equal).
RESERVED_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "kafka_headers")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The consumer library: kafka-python (pure Python, always installed) or confluent-kafka (librdkafka, C; the
# `fast` extra). Both sit behind the Source protocol of kingest/sources/.
CLIENTS = ("kafka-python", "confluent")
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
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """``64MiB`` -> 67108864. Plain integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("a size such as 64MiB, 500KB or 1048576 (bytes)")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[(unit or "b").lower()])
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_duration(value: object) -> float:
    """``10s`` -> 10.0 seconds. Units: ms, s, m, h; a plain number is seconds."""
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


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: tuple[str, ...]
    topics: tuple[str, ...]
    group_id: str
    auto_offset_reset: str = "earliest"
    isolation_level: str = "read_committed"
    group_instance_id: str | None = None
    client_id: str = "kingest"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 45000
    max_poll_interval_ms: int = 300000
    heartbeat_interval_ms: int = 3000
    request_timeout_ms: int = 30000
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 500
    fetch_max_bytes: int = 52428800
    # 1 MiB, Kafka's own default: kafka-python holds several fetches' worth of records per partition, and at 4 MiB
    # peak RSS was ~90 MB higher for the same CPU per record (benchmarks/, docs/performance.md).
    max_partition_fetch_bytes: int = 1024 * 1024
    max_poll_records: int = 10000
    check_crcs: bool = True
    client: str = "kafka-python"
    consumer: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def consumer_settings(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaConsumer (secrets included: never print this)."""
        settings: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "group_id": self.group_id,
            "auto_offset_reset": self.auto_offset_reset,
            "isolation_level": self.isolation_level,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
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
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        if self.client == "kafka-python":
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
            "auto.offset.reset": self.auto_offset_reset,
            "isolation.level": self.isolation_level,
            "security.protocol": self.security_protocol.lower(),
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
        if self.security_protocol in ("SSL", "SASL_SSL"):
            settings["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        optional = {
            "group.instance.id": self.group_instance_id,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_plain_username,
            "sasl.password": self.sasl_plain_password,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
            "ssl.key.password": self.ssl_password,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        if self.client == "confluent":
            settings.update(self.consumer)
        return settings


@dataclass(frozen=True)
class RecordsConfig:
    format: str = "json"
    schema: Mapping[str, str] | None = None
    on_error: str = "fail"


@dataclass(frozen=True)
class LakeConfig:
    path: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    compression: str = "zstd"
    partition_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchConfig:
    max_records: int = 100_000
    max_bytes: int = 64 * 2**20
    max_age: float = 30.0


@dataclass(frozen=True)
class Config:
    pipeline: str
    kafka: KafkaConfig
    records: RecordsConfig
    lake: LakeConfig
    batch: BatchConfig
    semantics: str = "at-least-once"
    source_path: str | None = None

    def with_semantics(self, semantics: str | None) -> Config:
        if semantics is None:
            return self
        if semantics not in SEMANTICS:
            raise ConfigError(f"--semantics: {semantics!r} is not valid; use one of {', '.join(SEMANTICS)}")
        return replace(self, semantics=semantics)

    def secrets(self) -> list[str]:
        """Every secret value in this config, so that output can be scrubbed of them."""
        found = [self.kafka.sasl_plain_password, self.kafka.ssl_password]
        found += [v for k, v in _walk(self.lake.storage_options) if is_secret_key(k)]
        found += [v for k, v in _walk(self.kafka.consumer) if is_secret_key(k)]
        return [str(v) for v in found if v not in (None, "")]


def _walk(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out += _walk(value)
        else:
            out.append((str(key), value))
    return out


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
        if from_env or is_secret_key(name) or name in ("storage_options", "consumer"):
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

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> Any:
        def parse(value: Any) -> str:
            if value not in choices:
                raise ValueError
            return str(value)

        return self.get(name, parse, default, f"use one of {', '.join(choices)}")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


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


_KAFKA_KEYS = tuple(f for f in KafkaConfig.__dataclass_fields__)
_INT_SETTINGS = {
    "session_timeout_ms": 1,
    "max_poll_interval_ms": 1,
    "heartbeat_interval_ms": 1,
    "request_timeout_ms": 1,
    "fetch_min_bytes": 1,
    "fetch_max_wait_ms": 0,
    "fetch_max_bytes": 1,
    "max_partition_fetch_bytes": 1,
    "max_poll_records": 1,
}


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


def parse(text: str, source: str = "<config>") -> Config:
    """Validate config text (see :func:`load`)."""
    doc = _Doc(text, source)
    top = _Section(doc, doc.data, "", ("pipeline", "kafka", "records", "lake", "batch", "semantics"))
    pipeline = top.get("pipeline", _name, expected="a name such as orders")

    kafka = _Section(doc, top.data.get("kafka"), "kafka", _KAFKA_KEYS)
    if "kafka" not in top.data:
        raise ConfigError(f"{source}: `kafka` is required (bootstrap_servers and topics)")
    ints = {name: kafka.get(name, _int(minimum), getattr(KafkaConfig, name)) for name, minimum in _INT_SETTINGS.items()}
    consumer = kafka.get("consumer", _mapping, {})
    for reserved in RESERVED_CONSUMER_SETTINGS:
        if reserved in consumer:
            raise ConfigError(
                f"{doc.where('kafka.consumer.' + reserved)}: `kafka.consumer.{reserved}` cannot be set here",
                "kingest commits offsets itself; set group_id and bootstrap_servers under `kafka:`.",
            )
    client = kafka.choice("client", CLIENTS, "kafka-python")
    if client == "confluent":
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
    kafka_config = KafkaConfig(
        bootstrap_servers=kafka.get("bootstrap_servers", _string_list, expected="host:port, such as localhost:9092"),
        topics=kafka.get("topics", _string_list, expected="a list of topic names"),
        group_id=kafka.get("group_id", _string, f"kingest-{pipeline}"),
        auto_offset_reset=kafka.choice("auto_offset_reset", ("earliest", "latest"), "earliest"),
        isolation_level=kafka.choice("isolation_level", ("read_committed", "read_uncommitted"), "read_committed"),
        group_instance_id=kafka.get("group_instance_id", _name, None),
        client_id=kafka.get("client_id", _string, "kingest"),
        security_protocol=kafka.choice("security_protocol", SECURITY_PROTOCOLS, "PLAINTEXT"),
        sasl_mechanism=kafka.choice("sasl_mechanism", SASL_MECHANISMS, None),
        sasl_plain_username=kafka.get("sasl_plain_username", _string, None),
        sasl_plain_password=kafka.get("sasl_plain_password", _string, None),
        ssl_cafile=kafka.get("ssl_cafile", _string, None),
        ssl_certfile=kafka.get("ssl_certfile", _string, None),
        ssl_keyfile=kafka.get("ssl_keyfile", _string, None),
        ssl_password=kafka.get("ssl_password", _string, None),
        ssl_check_hostname=kafka.get("ssl_check_hostname", _bool, True),
        check_crcs=kafka.get("check_crcs", _bool, True),
        client=client,
        consumer=consumer,
        **ints,
    )
    if kafka_config.security_protocol.startswith("SASL") and not kafka_config.sasl_mechanism:
        raise ConfigError(
            f"{doc.where('kafka.security_protocol')}: `kafka.security_protocol` is "
            f"{kafka_config.security_protocol} but `kafka.sasl_mechanism` is not set",
            f"Set kafka.sasl_mechanism to one of {', '.join(SASL_MECHANISMS)}.",
        )

    records = _Section(doc, top.data.get("records"), "records", ("format", "schema", "on_error"))
    schema = records.get("schema", _schema, None, f"a mapping of field: type, types: {', '.join(SCHEMA_TYPES)}")
    for name, kind in (schema or {}).items():
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
    records_config = RecordsConfig(
        format=records.choice("format", FORMATS, "json"),
        schema=schema,
        on_error=records.choice("on_error", ON_ERROR, "fail"),
    )
    if schema is not None and records_config.format != "json":
        raise ConfigError(f"{doc.where('records.schema')}: `records.schema` applies only to `records.format: json`")

    if "lake" not in top.data:
        raise ConfigError(f"{source}: `lake` is required (lake.path: ./lake/NAME or s3://bucket/prefix)")
    lake = _Section(doc, top.data.get("lake"), "lake", ("path", "storage_options", "compression", "partition_by"))
    partition_by = lake.get("partition_by", _partition_by, (), "[date] or [date, hour] (from the record timestamp)")
    lake_config = LakeConfig(
        path=lake.get("path", _string, expected="./lake/NAME or s3://bucket/prefix"),
        storage_options=lake.get("storage_options", _mapping, {}),
        compression=lake.choice("compression", COMPRESSIONS, "zstd"),
        partition_by=partition_by,
    )

    batch = _Section(doc, top.data.get("batch"), "batch", ("max_records", "max_bytes", "max_age"))
    batch_config = BatchConfig(
        max_records=batch.get("max_records", _int(1), BatchConfig.max_records),
        max_bytes=batch.get("max_bytes", parse_size, BatchConfig.max_bytes),
        max_age=batch.get("max_age", parse_duration, BatchConfig.max_age),
    )

    return Config(
        pipeline=pipeline,
        kafka=kafka_config,
        records=records_config,
        lake=lake_config,
        batch=batch_config,
        semantics=top.choice("semantics", SEMANTICS, "at-least-once"),
        source_path=source,
    )


def _schema(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise ValueError
    return {str(k): v for k, v in value.items()}  # each type is checked by the caller, naming its line


def _partition_by(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or tuple(value) not in ((), ("date",), ("date", "hour")):
        raise ValueError
    return tuple(value)
