"""kafka.client: the config key, the mapping of KafkaConfig to librdkafka properties, the choice of source, and
how the confluent source turns consumed messages into the batcher's columns (no broker needed)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from kingest import config
from kingest.batcher import Batch, Columns
from kingest.errors import ConfigError, SetupError
from kingest.sources import make_source
from kingest.sources.kafka_python import KafkaSource

BASE = "pipeline: p\nkafka:\n  bootstrap_servers: [h1:9092, h2:9092]\n  topics: [t]\n"
LAKE = "lake: {path: x}\n"


def parse(kafka: str = "") -> config.Config:
    return config.parse(BASE + kafka + LAKE)


def error(kafka: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(kafka)
    return str(info.value)


def test_the_default_client_is_kafka_python() -> None:
    assert parse().kafka.client == "kafka-python"
    assert parse("  client: confluent\n").kafka.client == "confluent"


def test_an_unknown_client_names_the_key_and_the_choices() -> None:
    message = error("  client: librdkafka\n")
    assert "<config>:5: `kafka.client` = 'librdkafka' is not valid: use one of kafka-python, confluent" in message


def test_librdkafka_properties_mirror_the_kafka_section() -> None:
    loaded = parse(
        "  client: confluent\n"
        "  group_id: g\n"
        "  group_instance_id: i-1\n"
        "  client_id: c\n"
        "  auto_offset_reset: latest\n"
        "  isolation_level: read_uncommitted\n"
        "  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n"
        "  sasl_plain_username: u\n"
        "  sasl_plain_password: pw\n"
        "  ssl_cafile: /ca.pem\n"
        "  ssl_certfile: /cert.pem\n"
        "  ssl_keyfile: /key.pem\n"
        "  ssl_password: kpw\n"
        "  ssl_check_hostname: false\n"
        "  session_timeout_ms: 10000\n"
        "  max_poll_interval_ms: 60000\n"
        "  heartbeat_interval_ms: 2000\n"
        "  request_timeout_ms: 20000\n"
        "  fetch_min_bytes: 10\n"
        "  fetch_max_wait_ms: 100\n"
        "  fetch_max_bytes: 1000000\n"
        "  max_partition_fetch_bytes: 500000\n"
        "  check_crcs: false\n"
    )
    assert loaded.kafka.librdkafka_settings() == {
        "bootstrap.servers": "h1:9092,h2:9092",
        "group.id": "g",
        "group.instance.id": "i-1",
        "client.id": "c",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "latest",
        "isolation.level": "read_uncommitted",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/cert.pem",
        "ssl.key.location": "/key.pem",
        "ssl.key.password": "kpw",
        "ssl.endpoint.identification.algorithm": "none",
        "session.timeout.ms": 10000,
        "max.poll.interval.ms": 60000,
        "heartbeat.interval.ms": 2000,
        "socket.timeout.ms": 20000,
        "fetch.min.bytes": 10,
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 1000000,
        "max.partition.fetch.bytes": 500000,
        "check.crcs": False,
    }


def test_librdkafka_defaults_follow_kingests_defaults() -> None:
    settings = parse("  client: confluent\n").kafka.librdkafka_settings()
    assert settings["group.id"] == "kingest-p"
    assert settings["isolation.level"] == "read_committed"
    assert settings["auto.offset.reset"] == "earliest"
    assert settings["security.protocol"] == "plaintext"
    assert settings["enable.auto.commit"] is False and settings["enable.auto.offset.store"] is False
    assert settings["max.partition.fetch.bytes"] == 1024 * 1024
    for absent in ("group.instance.id", "sasl.mechanism", "sasl.password", "ssl.ca.location"):
        assert absent not in settings
    assert "ssl.endpoint.identification.algorithm" not in settings  # only with SSL


def test_the_passthrough_goes_to_the_chosen_client_only() -> None:
    confluent = parse("  client: confluent\n  consumer: {queued.max.messages.kbytes: 16384, fetch.wait.max.ms: 50}\n")
    assert confluent.kafka.librdkafka_settings()["queued.max.messages.kbytes"] == 16384
    assert confluent.kafka.librdkafka_settings()["fetch.wait.max.ms"] == 50  # applied last: it wins
    assert "queued.max.messages.kbytes" not in confluent.kafka.consumer_settings()
    python = parse("  consumer: {reconnect_backoff_ms: 100}\n")
    assert python.kafka.consumer_settings()["reconnect_backoff_ms"] == 100
    assert "reconnect_backoff_ms" not in python.kafka.librdkafka_settings()


@pytest.mark.parametrize(
    "name", ["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers", "enable_auto_commit"]
)
def test_settings_kingest_owns_are_refused_in_the_passthrough(name: str) -> None:
    message = error(f"  client: confluent\n  consumer: {{{name}: x}}\n")
    assert f"`kafka.consumer.{name}` cannot be set here" in message


def test_a_librdkafka_property_must_be_a_plain_value() -> None:
    message = error("  client: confluent\n  consumer:\n    debug: [all]\n")
    assert "`kafka.consumer.debug` is not valid" in message and "librdkafka properties" in message


def test_the_cooperative_protocol_is_refused() -> None:
    message = error("  client: confluent\n  consumer: {partition.assignment.strategy: cooperative-sticky}\n")
    assert "<config>:6: `kafka.consumer.partition.assignment.strategy` = 'cooperative-sticky' is not supported" in (
        message
    )
    loaded = parse("  client: confluent\n  consumer: {partition.assignment.strategy: roundrobin}\n")
    assert loaded.kafka.librdkafka_settings()["partition.assignment.strategy"] == "roundrobin"


def test_the_passthrough_secrets_are_scrubbed_for_both_clients() -> None:
    loaded = parse("  client: confluent\n  consumer: {sasl.oauthbearer.client.secret: s3cr3t}\n")
    assert "s3cr3t" in loaded.secrets()


def test_make_source_picks_the_client() -> None:
    assert isinstance(make_source(parse().kafka), KafkaSource)
    from kingest.sources.confluent import ConfluentSource

    assert isinstance(make_source(parse("  client: confluent\n").kafka), ConfluentSource)


def test_confluent_without_the_library_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import confluent_kafka raises ImportError
    with pytest.raises(SetupError) as info:
        make_source(parse("  client: confluent\n").kafka)
    assert "confluent-kafka (librdkafka) is not installed" in str(info.value)
    assert "pip install 'kingest[fast]'" in (info.value.hint or "")


def test_kingest_help_does_not_import_confluent_kafka() -> None:
    import subprocess

    code = "import sys\nfrom kingest.cli import app\nprint('confluent_kafka' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- columns


def message(partition: int, offset: int, topic: str = "t", **fields: Any) -> Any:
    import confluent_kafka

    fields.setdefault("value", b'{"n": %d}' % offset)
    fields.setdefault("timestamp", (1, 1000 + offset))
    return confluent_kafka.Message(topic=topic, partition=partition, offset=offset, **fields)


def source(topics: tuple[str, ...] = ("t",)) -> Any:
    from kingest.sources.confluent import ConfluentSource

    kafka = parse("  client: confluent\n").kafka
    return ConfluentSource(config.KafkaConfig(**{**kafka.__dict__, "topics": topics}))


def as_lists(columns: Columns) -> list[list[Any]]:
    return [columns.offsets, columns.timestamps, columns.keys, columns.values, columns.headers]


def test_messages_become_columns_per_partition_in_offset_order() -> None:
    polled = [
        message(0, 10, key=b"a"),
        message(0, 11, headers=[("h", b"1")]),
        message(2, 5),
        message(2, 6, value=None),
        message(0, 12),  # a partition may come back later in the same batch
    ]
    got = source()._columns(polled)
    assert set(got) == {("t", 0), ("t", 2)}
    assert as_lists(got[("t", 0)]) == [
        [10, 11, 12],
        [1010, 1011, 1012],
        [b"a", None, None],
        [b'{"n": 10}', b'{"n": 11}', b'{"n": 12}'],
        [None, [("h", b"1")], None],
    ]
    assert as_lists(got[("t", 2)]) == [[5, 6], [1005, 1006], [None, None], [b'{"n": 5}', None], [None, None]]


def test_one_partition_batch_is_one_chunk() -> None:
    got = source()._columns([message(1, o) for o in range(5)])
    assert list(got) == [("t", 1)] and got[("t", 1)].offsets == [0, 1, 2, 3, 4]


def test_several_topics_are_told_apart() -> None:
    got = source(("a", "b"))._columns([message(0, 1, topic="a"), message(0, 7, topic="b"), message(0, 2, topic="a")])
    assert got[("a", 0)].offsets == [1, 2] and got[("b", 0)].offsets == [7]


def test_columns_extend_a_batch_like_records_do() -> None:
    batch = Batch("t", 0)
    batch.extend(Columns([1, 2], [10, 20], [None, b"k"], [b"x", b"yy"], [None, None]))
    # a replayed chunk (after a seek back) adds only what the batch does not hold yet
    batch.extend(Columns([2, 3], [20, 30], [b"k", None], [b"yy", b"zzz"], [None, [("h", b"")]]))
    assert batch.offsets == [1, 2, 3] and batch.timestamps == [10, 20, 30]
    assert batch.keys == [None, b"k", None] and batch.values == [b"x", b"yy", b"zzz"]
    assert batch.headers == [None, None, [("h", b"")]]
    reference = Batch("t", 0)
    from kingest.batcher import Record

    reference.extend(
        [Record("t", 0, o, o * 10, k, v, []) for o, k, v in zip(batch.offsets, batch.keys, batch.values, strict=True)]
    )
    assert batch.nbytes == reference.nbytes
    batch.extend(Columns([3], [30], [None], [b"zzz"], [None]))  # nothing new
    assert batch.offsets == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- commits


class _CoordinatorLoading:
    """A consumer whose broker answers metadata but whose group coordinator is still loading: the first
    ``refusals`` commits fail with COORDINATOR_LOAD_IN_PROGRESS (retried by kingest), then they succeed."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.commits = 0

    def commit(self, offsets: Any, asynchronous: bool) -> Any:
        import confluent_kafka

        self.commits += 1
        if self.commits <= self.refusals:
            error = confluent_kafka.KafkaError(confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
            raise confluent_kafka.KafkaException(error)
        return offsets

    def list_topics(self, topic: str, timeout: float) -> Any:
        return object()  # a broker answers (also stands for the source's probe client)


def test_a_commit_waiting_for_the_coordinator_does_not_report_kafka_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kingest.sources.common

    monkeypatch.setattr(kingest.sources.common.time, "sleep", lambda seconds: None)  # CommitRetry's backoff
    confluent = source()
    confluent.consumer = _CoordinatorLoading(refusals=2)
    confluent._probe = confluent.consumer  # the client that asks for metadata: a broker answers
    seen: list[int | None] = []
    monkeypatch.setattr(confluent.connection, "update", seen.append)
    confluent.commit({("t", 0): 5})
    assert confluent.consumer.commits == 3 and confluent.retries == 2
    # The broker answered all along: the ConnectionWatch must not be told that none does.
    assert seen and 0 not in seen, seen


class _Stop(Exception):
    pass


def test_the_connection_watch_sees_an_outage_while_a_commit_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker at all: librdkafka's synchronous commit waits for the coordinator for session.timeout.ms. While
    it waits, the source must notice that no broker answers. (confluent-kafka serializes the calls on one
    consumer: a list_topics() on the consumer from another thread waits until the commit returns.)"""
    import threading
    import time

    import confluent_kafka

    import kingest.sources.confluent as module

    kafka = parse("  client: confluent\n  session_timeout_ms: 8000\n  heartbeat_interval_ms: 1000\n").kafka
    confluent = module.ConfluentSource(config.KafkaConfig(**{**kafka.__dict__, "bootstrap_servers": ["127.0.0.1:1"]}))
    settings = module.librdkafka_settings(confluent.config)
    settings.update(logger=module._LogForwarder())
    confluent.consumer = confluent_kafka.Consumer(settings)

    def stop(self: Any, reason: str) -> None:
        raise _Stop(reason)

    monkeypatch.setattr(module.CommitRetry, "wait", stop)  # one attempt is enough
    failure: list[BaseException] = []

    def commit() -> None:
        try:
            confluent.commit({("t", 0): 5})
        except BaseException as exc:
            failure.append(exc)

    started = time.monotonic()
    committing = threading.Thread(target=commit)
    committing.start()
    try:
        while confluent.connection.connected and time.monotonic() - started < 6.0:
            time.sleep(0.1)
        noticed = not confluent.connection.connected
        assert committing.is_alive(), "the commit returned before the session timeout: the scenario did not happen"
    finally:
        committing.join(30)
        confluent.close()
    assert noticed, "no outage seen in the first 6 s of an 8 s commit wait"
    assert failure and isinstance(failure[0], _Stop)


def test_confluent_log_offsets_ask_again_while_a_leader_moves():
    """After a broker stalled, the first ListOffsets may answer NOT_LEADER_FOR_PARTITION: asked again within the
    request timeout, as kafka-python does, rather than stopping the run (seen in `make chaos`)."""
    ck = pytest.importorskip("confluent_kafka")
    from kingest.errors import SourceUnavailable
    from kingest.sources.confluent import ConfluentSource

    class Consumer:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        def get_watermark_offsets(self, tp, timeout):
            if self.failures:
                self.failures -= 1
                code = ck.KafkaError.NOT_LEADER_FOR_PARTITION if self.failures % 2 else ck.KafkaError._UNKNOWN_PARTITION
                raise ck.KafkaException(ck.KafkaError(code))
            return 3, 42

    source = ConfluentSource(parse("  client: confluent\n  request_timeout_ms: 2000\n").kafka)
    source.consumer = Consumer(failures=2)
    assert source.end_offsets([("orders", 0)]) == {("orders", 0): 42}
    source.consumer = Consumer(failures=10**6)  # never settles: a clear error once the request timeout is spent
    with pytest.raises(SourceUnavailable, match="reading the log offsets of orders\\[0\\] failed"):
        source.end_offsets([("orders", 0)])


def test_confluent_seeks_the_logical_offset_while_the_broker_gives_no_log_offsets():
    """A broker stalled as partitions are assigned: a seek to the log start (a fresh exactly-once partition) is
    handed to librdkafka as OFFSET_BEGINNING, which it resolves when it fetches, rather than stopping the run; one
    request timeout per assign callback, not one per partition; position() is -1 until the broker answers, then
    the log start. An error that asking again cannot mend (refused) stops the run."""
    ck = pytest.importorskip("confluent_kafka")
    from kingest.errors import SourceUnavailable
    from kingest.sources.confluent import ConfluentSource

    class Consumer:
        def __init__(self, code: int | None) -> None:
            self.code = code
            self.asked = 0

        def get_watermark_offsets(self, tp, timeout):
            self.asked += 1
            if self.code is not None:
                raise ck.KafkaException(ck.KafkaError(self.code))
            return 3, 42

        def position(self, tps):
            return [ck.TopicPartition(tps[0].topic, tps[0].partition, ck.OFFSET_INVALID)]

    source = ConfluentSource(parse("  client: confluent\n  request_timeout_ms: 300\n").kafka)
    consumer = source.consumer = Consumer(ck.KafkaError._TIMED_OUT)
    source._assigning, source._stalled = {}, False  # inside the assign callback (see ConfluentSource.open)
    with pytest.raises(SourceUnavailable):
        source.end_offsets([("orders", 0), ("orders", 1)])
    asked = consumer.asked
    source.seek_to_beginning(("orders", 0))
    source.seek_to_end(("orders", 1))
    assert consumer.asked == asked  # the callback asks no more once the broker did not answer
    assert source._assigning == {("orders", 0): ck.OFFSET_BEGINNING, ("orders", 1): ck.OFFSET_END}
    assert source.position(("orders", 0)) == -1
    asked, source._assigning = source._assigning, None
    source._start.update(asked)  # what the callback hands to assign() (see ConfluentSource.open)
    assert source.position(("orders", 0)) == -1  # still no answer: not known yet
    consumer.code = None
    assert (source.position(("orders", 0)), source.position(("orders", 1))) == (3, 42)

    consumer.code = ck.KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(SetupError, match="reading the log offsets of orders\\[0\\] failed") as refused:
        source.end_offsets([("orders", 0)])
    assert not isinstance(refused.value, SourceUnavailable)
