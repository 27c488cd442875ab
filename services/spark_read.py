"""Read a kingest Delta table with Apache Spark (delta-spark), the way a Spark user would, and check that Spark
sees what delta-rs sees: the same rows per topic-partition, and each partition's offsets once.

    python services/spark_read.py lake/orders-delta        (make spark-read TABLE=lake/orders-delta)

Needs pyspark (make spark-read installs it) and Java 17; delta-spark's jars come from Maven Central through
Spark's own --packages. Exit 0 when Spark and delta-rs agree, 1 when they do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

DELTA_SPARK = "io.delta:delta-spark_2.12:3.2.1"  # for Spark 3.5 (Scala 2.12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="the Delta table's path (local)")
    args = parser.parse_args(argv)
    path = os.path.abspath(args.table)

    import pyarrow.fs as fs
    from deltalake import DeltaTable
    from pyspark.sql import SparkSession

    started = time.monotonic()
    spark = (
        SparkSession.builder.appName("kingest-spark-read")
        .master("local[2]")
        .config("spark.jars.packages", DELTA_SPARK)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.format("delta").load(path)
    rows = df.groupBy("kafka_topic", "kafka_partition").count().collect()
    by_spark = {(r["kafka_topic"], r["kafka_partition"]): r["count"] for r in rows}
    distinct = df.select("kafka_topic", "kafka_partition", "kafka_offset").distinct().count()
    version = spark.sql(f"describe history delta.`{path}` limit 1").collect()[0]["version"]
    spark_version = spark.version
    spark.stop()

    local = fs.SubTreeFileSystem(path, fs.LocalFileSystem())  # delta-rs' own aborts at exit now and then (#2184)
    table = DeltaTable(path).to_pyarrow_dataset(filesystem=local).to_table(columns=["kafka_topic", "kafka_partition"])
    topics, partitions = table.column("kafka_topic").to_pylist(), table.column("kafka_partition").to_pylist()
    by_rs = Counter(zip(topics, partitions, strict=True))

    print(f"Spark {spark_version} with {DELTA_SPARK}, table version {version}:")
    for tp in sorted(by_spark):
        print(f"  {tp[0]}[{tp[1]}]: {by_spark[tp]:,} rows (delta-rs: {by_rs.get(tp, 0):,})")
    total = sum(by_spark.values())
    print(f"  {total:,} rows, {distinct:,} distinct offsets; {time.monotonic() - started:.1f}s")
    if by_spark != dict(by_rs) or distinct != total:
        print("Spark and delta-rs disagree, or an offset is there twice", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
