"""`kingest check`: validate a config and try everything it names, before a run depends on it.

One result per check, in order: the config loads; the broker answers (with TLS: what its certificate is, or why
the handshake fails); each topic exists; the lake is
writable (a probe object written, read and removed); the store enforces exclusive create (exactly-once's
manifest commit depends on it); under exactly-once, the offsets manifest of each partition is readable. A check
that cannot run because an earlier one failed is reported as not run. Nothing here prints: cli.py does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import config as config_module
from .config import Config
from .errors import KingestError


@dataclass(frozen=True)
class Check:
    """The outcome of one check. ``ok`` False fails `kingest check`; ``note`` marks a pass with a caveat."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None
    note: bool = False


def run_checks(
    path: str | os.PathLike[str] | None,
    semantics: str | None = None,
    on_config: Callable[[Config], Any] | None = None,
) -> Iterator[Check]:
    """The checks of the config at ``path`` (default: $KINGEST_CONFIG, then ./kingest.yaml), one by one."""
    try:
        config = config_module.load(path).with_semantics(semantics)
    except KingestError as error:
        yield Check("config", False, error.message, error.hint)
        return
    if on_config is not None:
        on_config(config)
    schema = f", schema of {len(config.records.schema)} fields" if config.records.schema else ""
    yield Check(
        "config",
        True,
        f"{config.source_path}: pipeline {config.pipeline}, {config.semantics}, "
        f"records {config.records.format}{schema}, on_error {config.records.on_error}",
    )
    yield from _kafka_checks(config)
    yield from _registry_checks(config)
    yield from _lake_checks(config)


def _registry_checks(config: Config) -> Iterator[Check]:
    """records.schema_registry: the registry answers, and each topic's subject (``<topic>-value``, the
    Confluent serializers' default TopicNameStrategy) holds a schema of the format's type."""
    settings = config.records.schema_registry
    if settings is None:
        return
    from .registry import Registry

    registry = Registry.from_config(settings, retry_seconds=0, timeout=5)
    kinds = {"avro": "AVRO", "protobuf": "PROTOBUF", "json-schema": "JSON"}
    subjects = [
        (f"{topic}-{part}", kinds[fmt])
        for topic in config.kafka.topics
        for part, fmt in (("value", config.records.format), ("key", config.records.key_format))
        if fmt in kinds
    ]
    for subject, kind in subjects:
        try:
            latest = registry.latest(subject)
        except KingestError as error:
            hint = error.hint
            if error.retryable:
                hint = "Check records.schema_registry.url and that the registry is up (the dev registry: make up)."
            yield Check(f"schema registry: {subject}", False, error.message, hint)
            return
        if latest is None:
            yield Check(
                f"schema registry: {subject}",
                True,
                f"{registry.shown} answers; no subject {subject} yet (records are decoded by the schema id each "
                "one carries, whatever its subject)",
                note=True,
            )
        elif latest.type != kind:
            yield Check(
                f"schema registry: {subject}",
                False,
                f"the latest schema of {subject} (id {latest.id}) is {latest.type}, not {kind}",
                f"Set records.{'key_format' if subject.endswith('-key') else 'format'} to the format the topic's "
                "records are written in (avro, protobuf, json-schema).",
            )
        else:
            yield Check(f"schema registry: {subject}", True, f"{registry.shown}: latest schema id {latest.id} ({kind})")


def _kafka_checks(config: Config) -> Iterator[Check]:
    from . import kafka_admin
    from .sources import tls

    where = ", ".join(config.kafka.bootstrap_servers)
    if config.kafka.client == "confluent":
        from .sources import confluent as confluent_source

        try:
            yield Check("kafka client", True, confluent_source.check_settings(config.kafka))
        except KingestError as error:
            yield Check("kafka client", False, error.message, error.hint)
    try:
        with kafka_admin.inspection_consumer(config) as consumer:
            try:
                existing = consumer.topics()
                partitions = {t: consumer.partitions_for_topic(t) for t in config.kafka.topics if t in existing}
            except Exception as exc:  # a kafka-python error: the broker answered the connection, not the request
                if type(exc).__module__.split(".")[0] != "kafka":
                    raise  # a bug, not Kafka's answer: the CLI shows it as one
                raise kafka_admin.setup_error(exc, config) from None
    except KingestError as error:
        yield Check("kafka", False, error.message, error.hint)
        yield Check("topics", False, "not checked: the broker did not answer", note=True)
        return
    yield Check(
        "kafka", True, f"broker at {where} answered ({config.kafka.security_protocol}, {len(existing)} topics visible)"
    )
    if tls.uses_tls(config.kafka):
        try:
            yield Check("tls", True, tls.describe(config.kafka))
        except KingestError as error:
            yield Check("tls", False, error.message, error.hint)
    for topic in config.kafka.topics:
        if topic in partitions:
            yield Check(f"topic {topic}", True, f"exists, {len(partitions[topic] or ())} partitions")
        else:
            yield Check(
                f"topic {topic}",
                False,
                f"topic {topic} not found on {where}",
                "Create the topic, or fix kafka.topics in the config (a user without Describe rights sees none).",
            )


def _lake_checks(config: Config) -> Iterator[Check]:
    from .lake import Lake
    from .offsets import offset_store

    try:
        lake = Lake(config.lake.path, config.lake.storage_options)
        exclusive = lake.probe()
    except KingestError as error:
        yield Check("lake", False, error.message, error.hint)
        return
    try:
        store = offset_store(config, lake)
    except KingestError as error:  # lake.format: delta without the deltalake package
        yield Check("lake", False, error.message, error.hint)
        return
    delta = config.lake.format == "delta"
    # A store that commits the files it names needs exclusive create; a Delta table always does: each log entry
    # is a create of the next version, whatever the semantics.
    needed = store.names_files or delta
    yield Check("lake", True, f"{lake.display()} is writable (a probe object was written, read and removed)")
    if exclusive:
        yield Check(
            "exclusive create",
            True,
            "the store refuses a second create of the same name (If-None-Match: *): "
            + ("Delta commits are safe" if delta else "exactly-once is safe"),
        )
    else:
        yield Check(
            "exclusive create",
            not needed,
            f"the store at {lake.display()} does not enforce exclusive create: "
            + ("two Delta commits could overwrite each other" if delta else "exactly-once would be unsafe there")
            + ("" if needed else f" (fine for {config.semantics})"),
            "Use a store that honours If-None-Match: * (AWS S3, SeaweedFS, local disk)"
            + ("." if delta else ", or another semantics.")
            if needed
            else None,
            note=not needed,
        )
    if not store.names_files:
        return
    try:
        partitions = store.readable(config.kafka.topics)
    except KingestError as error:
        yield Check(store.name, False, error.message, error.hint)
        return
    if partitions:
        yield Check(store.name, True, f"readable for {partitions} partition(s)")
    else:
        yield Check(store.name, True, "none yet: the first run starts per kafka.auto_offset_reset")
