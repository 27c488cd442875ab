"""Small types that many modules share and no stage owns."""

from __future__ import annotations

TopicPartition = tuple[str, int]
"""A Kafka topic-partition as kingest passes it around: ``(topic, partition)``. kafka-python's and
confluent-kafka's own TopicPartition objects stay inside the source modules."""
