"""The client's ceiling: a bare consumer loop that reads a topic to its end and does nothing else.

    .venv/bin/python benchmarks/bare_consumer.py --topic T --group G [--bootstrap 127.0.0.1:9092]
    .venv/bin/python benchmarks/bare_consumer.py --topic T --group G --client confluent   # librdkafka's

With kafka-python (the default) or confluent-kafka (`--client confluent`, what `kafka.client: confluent` runs).

It consumes the way ``kingest run --until-caught-up`` does, so that the two compare fairly: the same consumer
settings (``KafkaConfig.consumer_settings()`` plus what ``KafkaSource.open`` adds), in a consumer group (a fresh
group id: the join, the offset fetch and the heartbeats are part of the client's cost), from the earliest
offset, stopping once every assigned partition reaches the log end offset seen at assignment. Per polled chunk
it only counts the records. Prints one JSON line: records, and the seconds from start to the first record and
to the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

STARTED = time.monotonic()  # before the imports: kingest's figures include its imports too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    args = parser.parse_args(argv)
    if args.client == "confluent":
        records, first = confluent_loop(args)
    else:
        records, first = kafka_python_loop(args)
    ended = time.monotonic()
    print(
        json.dumps(
            {
                "records": records,
                "first_record_s": None if first is None else round(first - STARTED, 4),
                "end_s": round(ended - STARTED, 4),
            }
        )
    )
    return 0


def kafka_python_loop(args: argparse.Namespace) -> tuple[int, float | None]:

    import kafka

    from kingest.config import KafkaConfig

    config = KafkaConfig(bootstrap_servers=(args.bootstrap,), topics=(args.topic,), group_id=args.group)
    settings = config.consumer_settings()
    # What kingest.sources.kafka_python.KafkaSource.open adds to the config's settings.
    settings["enable_auto_commit"] = False
    settings.setdefault("bootstrap_timeout_ms", min(15000, config.request_timeout_ms))
    settings.setdefault("reconnect_backoff_max_ms", 1000)
    consumer = kafka.KafkaConsumer(**settings)
    targets: dict[tuple[str, int], int] = {}

    class Listener(kafka.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: object) -> None:
            pass

        def on_partitions_assigned(self, assigned: object) -> None:
            pass

    consumer.subscribe([args.topic], listener=Listener())
    records = 0
    first: float | None = None
    try:
        while True:
            assigned = consumer.assignment()
            if assigned and not targets:
                ends = consumer.end_offsets(list(assigned))
                targets = {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
            if targets and all(consumer.position(tp) >= targets[(tp.topic, tp.partition)] for tp in assigned):
                break
            polled = consumer.poll(timeout_ms=1000)
            for chunk in polled.values():
                if first is None:
                    first = time.monotonic()
                records += len(chunk)
    finally:
        consumer.close(autocommit=False)
    return records, first


def confluent_loop(args: argparse.Namespace) -> tuple[int, float | None]:
    """The same with confluent-kafka: kingest's librdkafka settings (kingest.sources.confluent.librdkafka_settings:
    the config's and what ConfluentSource adds, such as its 8 MiB pre-fetch queue), consume() in chunks of
    max_poll_records, stopping at the log end offsets seen at assignment. Per chunk it only counts the messages
    and notes the last offset of each partition."""
    import confluent_kafka as ck

    from kingest.config import KafkaConfig
    from kingest.sources.confluent import librdkafka_settings

    config = KafkaConfig(
        bootstrap_servers=(args.bootstrap,), topics=(args.topic,), group_id=args.group, client="confluent"
    )
    consumer = ck.Consumer(librdkafka_settings(config))
    targets: dict[int, int] = {}
    done: set[int] = set()

    def on_assign(c: object, partitions: list) -> None:
        for p in partitions:
            low, high = consumer.get_watermark_offsets(p, timeout=10, cached=False)
            targets[p.partition] = high
            if high <= low:
                done.add(p.partition)

    consumer.subscribe([args.topic], on_assign=on_assign)
    records = 0
    first: float | None = None
    try:
        while not targets or len(done) < len(targets):
            messages = consumer.consume(config.max_poll_records, 1.0)
            if not messages:
                continue
            if first is None:
                first = time.monotonic()
            records += len(messages)
            # Each partition's last offset in the chunk (a dict keeps the last value of a key), in C loops.
            last = dict(zip(map(ck.Message.partition, messages), map(ck.Message.offset, messages), strict=True))
            for partition, offset in last.items():
                if offset + 1 >= targets.get(partition, offset + 2):
                    done.add(partition)
    finally:
        consumer.close()
    return records, first


if __name__ == "__main__":
    sys.exit(main())
