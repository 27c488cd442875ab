"""kingest: ingest Kafka topics into a Parquet data lake with a chosen delivery guarantee."""

__version__ = "0.1.0"
