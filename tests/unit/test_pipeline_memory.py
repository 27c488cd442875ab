"""The pipeline's semantics on the in-memory source and an fsspec memory:// lake (fast; no services).

The same behaviours are tested against the real broker and S3 server in tests/integration/test_run.py.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kingest import config as config_module
from kingest.batcher import Batch, Record
from kingest.errors import BadRecord, SourceUnavailable
from kingest.lake import Lake
from kingest.manifest import ManifestStore
from kingest.pipeline import Pipeline
from kingest.sources import MemorySource

SEMANTICS = ["at-most-once", "at-least-once", "exactly-once"]


def make_config(lake_url: str, semantics: str, **batch: object) -> config_module.Config:
    batch_yaml = ", ".join(f"{k}: {v}" for k, v in ({"max_records": 300} | batch).items())
    return config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
lake: {{path: "{lake_url}"}}
batch: {{{batch_yaml}}}
semantics: {semantics}
"""
    )


def topic(partitions: int = 3, records: int = 1000, value=None) -> dict[str, list[list[Record]]]:
    value = value or (lambda p, o: json.dumps({"id": o, "p": p, "amount": o * 1.5}).encode())
    return {
        "orders": [
            [Record("orders", p, o, 1_700_000_000_000 + o, f"k{o}".encode(), value(p, o), []) for o in range(records)]
            for p in range(partitions)
        ]
    }


def lake_offsets(lake: Lake, paths: list[str] | None = None) -> dict[int, list[int]]:
    if paths is None:
        paths = [p for p in lake.find() if p.endswith(".parquet") and not p.startswith("_")]
    table = ds.dataset([lake.full(p) for p in paths], filesystem=lake.fs, format="parquet").to_table(
        columns=["kafka_partition", "kafka_offset"]
    )
    out: dict[int, list[int]] = {}
    for p, o in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
        out.setdefault(p, []).append(o)
    return {p: sorted(v) for p, v in out.items()}


@pytest.fixture
def lake_url(tmp_path) -> str:
    return str(tmp_path / "lake")


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("where", ["memory", "local"])
def test_every_offset_lands_once_and_offsets_are_committed(semantics, where, lake_url):
    url = f"memory://lake-{uuid.uuid4().hex}" if where == "memory" else lake_url
    data, group = topic(), {}
    stats = Pipeline(make_config(url, semantics), source=MemorySource(data, group), until_caught_up=True).run()
    lake = Lake(url)
    assert stats.written == 3000
    assert lake_offsets(lake) == {p: list(range(1000)) for p in range(3)}
    assert group == {("orders", p): 1000 for p in range(3)}
    if semantics == "exactly-once":
        store = ManifestStore(lake, "orders")
        for p in range(3):
            state = store.load("orders", p)
            assert state.next_offset == 1000
            assert sorted(lake_offsets(lake, list(state.files))[p]) == list(range(1000))

    files_before = lake.find()
    again = Pipeline(make_config(url, semantics), source=MemorySource(data, group), until_caught_up=True).run()
    assert again.written == 0
    assert lake.find() == files_before  # nothing written: no data file, no manifest version
    assert group == {("orders", p): 1000 for p in range(3)}


class StalledEnds(MemorySource):
    """A broker that gives no log end offsets for the first ``failures`` asks (a broker stalled past the request
    timeout each time, as the confluent source reports it: SourceUnavailable)."""

    def __init__(self, *args, failures: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.asked = 0

    def end_offsets(self, tps):
        self.asked += 1
        if self.asked <= self.failures:
            raise SourceUnavailable("reading the log offsets of orders[0] failed: Local: Unknown partition")
        return super().end_offsets(tps)


@pytest.mark.parametrize("failures", [0, 2])
@pytest.mark.parametrize("semantics", ["at-least-once", "exactly-once"])
def test_a_run_goes_on_when_the_log_end_offsets_are_not_given_at_assignment(semantics, failures, lake_url, monkeypatch):
    """A run whose assignment cannot read the partitions' log end offsets (which exactly-once wants to decide on
    a claim, and --until-caught-up for its targets) goes on: it claims at once, asks for its targets again, and
    stops once caught up, every offset in the lake once. Partition 2 is empty: idle, it is claimed only when its
    log end is not known (with it known, a run with nothing to write writes nothing for it)."""
    monkeypatch.setattr("kingest.pipeline.ENDS_RETRY_SECONDS", 0.0)
    data, group = topic(), {}
    data["orders"][2] = []
    source = StalledEnds(data, group, failures=failures)
    stats = Pipeline(make_config(lake_url, semantics), source=source, until_caught_up=True).run()
    assert source.asked == failures + 1 and stats.errors["SourceUnavailable"] == failures
    assert stats.written == 2000
    lake = Lake(lake_url)
    assert lake_offsets(lake) == {p: list(range(1000)) for p in range(2)}
    assert {tp: o for tp, o in group.items() if o} == {("orders", p): 1000 for p in range(2)}
    if semantics == "exactly-once":
        idle = ManifestStore(lake, "orders").load("orders", 2)
        assert (idle.version > 0) == (failures > 0)  # a claim version, or nothing
        assert idle.next_offset in (None, 0) and idle.files == {}


@pytest.mark.parametrize(
    "semantics, expected",
    [
        ("at-most-once", ["group commit", "data"]),
        ("at-least-once", ["data", "group commit"]),
        # claim at assignment (something to consume), then per batch: announce, write, commit the version; the
        # group's offsets follow for lag tools only
        ("exactly-once", ["manifest claim", "pending", "data", "manifest write", "group commit"]),
    ],
)
def test_the_order_of_commit_and_write_is_the_semantics(semantics, expected, lake_url):
    source = MemorySource(topic(partitions=1, records=10), {})
    order: list[str] = []
    pipeline = Pipeline(make_config(lake_url, semantics), source=source, until_caught_up=True)
    commit, put, create = source.commit, pipeline.lake.put, pipeline.lake.create

    def commit_(offsets, **k):  # type: ignore[no-untyped-def]
        order.append("group commit")
        return commit(offsets, **k)

    def put_(path, *a, **k):  # type: ignore[no-untyped-def]
        if path.endswith(".parquet"):
            order.append("data")
        elif "/pending-v2/" in path:
            order.append("pending")
        return put(path, *a, **k)

    def create_(path, data, *a, **k):  # type: ignore[no-untyped-def]
        if "/manifest/" in path:
            order.append(f"manifest {json.loads(data)['operation']}")
        return create(path, data, *a, **k)

    source.commit = commit_  # type: ignore[method-assign]
    pipeline.lake.put = put_  # type: ignore[method-assign]
    pipeline.lake.create = create_  # type: ignore[method-assign]
    pipeline.run()
    assert order == expected


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_bad_json_stops_with_its_offset_and_commits_only_before_it(semantics, lake_url):
    def value(p, o):
        return b"{not json" if (p, o) == (1, 137) else json.dumps({"id": o}).encode()

    group: dict = {}
    pipeline = Pipeline(
        make_config(lake_url, semantics, max_records=1000),
        source=MemorySource(topic(records=400, value=value), group),
        until_caught_up=True,
    )
    with pytest.raises(BadRecord) as caught:
        pipeline.run()
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("orders", 1, 137)
    assert "orders[1]@137" in str(caught.value)
    assert group[("orders", 1)] == 137  # the good records before it are saved, nothing at or after it
    assert lake_offsets(Lake(lake_url))[1] == list(range(137))
    if semantics == "exactly-once":
        assert ManifestStore(Lake(lake_url), "orders").load("orders", 1).next_offset == 137


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_a_bad_record_stops_its_partition_when_a_flush_is_encoded_in_parallel(semantics, lake_url):
    """A flush of many batches per partition (max_records 50, 500-record polls), partitions encoded side by side:
    the partition's batches after the one with the bad record are neither encoded nor saved."""

    def value(p, o):
        return b"[1, 2" if (p, o) == (1, 37) else json.dumps({"id": o}).encode()

    group: dict = {}
    source = MemorySource(topic(records=400, value=value), group)
    assert source.encoders > 1
    pipeline = Pipeline(make_config(lake_url, semantics, max_records=50), source=source, until_caught_up=True)
    with pytest.raises(BadRecord) as caught:
        pipeline.run()
    assert (caught.value.partition, caught.value.offset) == (1, 37)
    assert group[("orders", 1)] == 37
    offsets = lake_offsets(Lake(lake_url))
    assert offsets[1] == list(range(37))
    assert 0 in offsets  # polled with partition 1: its batches of that flush were saved, in order, without a gap
    for p, saved in offsets.items():
        if p != 1:
            assert saved == list(range(len(saved))) and group[("orders", p)] == len(saved)


class _ClosingRevokes(MemorySource):
    """Like kafka-python's consumer: close() calls the revoke callback for the partitions still assigned."""

    def close(self) -> None:
        if self._revoke is not None:
            self._revoke(sorted(self.positions))
        self._revoke = None


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_a_bad_record_stops_the_run_and_nothing_after_it_is_saved_when_the_consumer_closes(semantics, lake_url):
    """A flush is formed and encoded while the one before it is saved (Pipeline._flush). When that save stops at
    a bad record, the next flush, already encoded, must never be saved: not by the run, and not by the revoke
    that closing the consumer calls (kafka-python's close() does). Saving it would commit past the gap that the
    bad record left (records 137..199 of a 100-record batch). The encoder is slowed so that the next flush is in
    flight when the bad record is raised."""

    def value(p, o):
        return b"{not json" if o == 137 else json.dumps({"id": o}).encode()

    group: dict = {}
    source = _ClosingRevokes(topic(partitions=1, records=400, value=value), group, max_poll_records=100)
    pipeline = Pipeline(make_config(lake_url, semantics, max_records=100), source=source, until_caught_up=True)
    encode = pipeline._encode

    def slow_encode(batches):
        time.sleep(0.3)
        return encode(batches)

    pipeline._encode = slow_encode  # type: ignore[method-assign]
    with pytest.raises(BadRecord) as caught:
        pipeline.run()
    assert caught.value.offset == 137
    assert group[("orders", 0)] == 137
    assert lake_offsets(Lake(lake_url))[0] == list(range(137))
    if semantics == "exactly-once":
        assert ManifestStore(Lake(lake_url), "orders").load("orders", 0).next_offset == 137


def test_a_partitions_batches_evolve_the_schema_in_offset_order_when_encoded_in_parallel(lake_url):
    """Two batches of one partition in a flush, partitions encoded side by side: the first file keeps the first
    batch's own columns and types (the second batch, which adds a field and widens another, cannot race ahead).
    Only partition 0 evolves: across partitions there is no order to keep (Kafka has none), and a field that
    another partition's batch brings may or may not be in the file, depending on which was encoded first."""

    def value(p, o):
        if p != 0 or o < 5:
            return json.dumps({"id": o, "amount": o}).encode()
        return json.dumps({"id": o, "amount": o + 0.5, "coupon": f"c{o}"}).encode()

    for attempt in range(5):  # the race this guards against depended on thread timing
        lake = f"{lake_url}-{attempt}"
        source = MemorySource(topic(partitions=2, records=10, value=value), {})
        Pipeline(make_config(lake, "at-least-once", max_records=5), source=source, until_caught_up=True).run()
        files = sorted(p for p in Lake(lake).find() if "partition=0" in p and p.endswith(".parquet"))
        assert len(files) == 2
        first, second = (pq.read_schema(Lake(lake).full(f)) for f in files)
        assert "coupon" not in first.names and first.field("amount").type == pa.int64()
        assert second.field("coupon").type == pa.string() and second.field("amount").type == pa.float64()


@pytest.mark.parametrize(("setting", "expected"), [("", {"UNCOMPRESSED"}), ("compress_min_bytes: 0", {"ZSTD"})])
def test_small_files_are_written_uncompressed_unless_compress_min_bytes_is_0(setting, expected, lake_url):
    data, group = topic(partitions=2, records=200), {}
    config = make_config(lake_url, "exactly-once", max_records=50)
    if setting:
        config = config_module.parse(
            f"pipeline: orders\nkafka: {{bootstrap_servers: 'unused:9092', topics: [orders]}}\n"
            f"lake: {{path: '{lake_url}', {setting}}}\nbatch: {{max_records: 50}}\nsemantics: exactly-once\n"
        )
    Pipeline(config, source=MemorySource(data, group), until_caught_up=True).run()
    lake = Lake(lake_url)
    files = [p for p in lake.find("topic=orders") if p.endswith(".parquet")]
    assert len(files) == 8
    codecs = set()
    for path in files:
        metadata = pq.read_metadata(lake.full(path), filesystem=lake.fs)
        codecs |= {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)}
    assert codecs == expected
    assert lake_offsets(lake) == {0: list(range(200)), 1: list(range(200))}


def test_age_flush_fires_without_new_records(lake_url):
    data = topic(partitions=1, records=5)
    source = MemorySource(data, {})
    pipeline = Pipeline(make_config(lake_url, "at-least-once", max_records=1000, max_age="200ms"), source=source)
    polls = 0
    poll = source.poll

    def counting_poll(timeout):
        nonlocal polls
        polls += 1
        if source.group.get(("orders", 0)) == 5:
            pipeline.request_stop()
        if polls > 200:
            pytest.fail("the age flush never fired")
        return poll(timeout)

    source.poll = counting_poll  # type: ignore[method-assign]
    pipeline.run()
    assert source.commits == [{("orders", 0): 5}]  # committed by age, before the stop's final flush
    assert lake_offsets(Lake(lake_url)) == {0: [0, 1, 2, 3, 4]}


def test_max_bytes_bounds_all_buffers_together(lake_url):
    big = topic(partitions=3, records=100, value=lambda p, o: json.dumps({"pad": "x" * 1000}).encode())
    source = MemorySource(big, {}, max_poll_records=30)
    Pipeline(
        make_config(lake_url, "at-least-once", max_records=10_000, max_bytes="20KB", max_age="1h"),
        source=source,
        until_caught_up=True,
    ).run()
    assert len(source.commits) > 3  # flushed by size long before the end
    assert lake_offsets(Lake(lake_url)) == {p: list(range(100)) for p in range(3)}


def test_records_whose_columns_take_more_memory_than_their_bytes_count_more_against_max_bytes(tmp_path):
    """A flush is sized by what its records take decoded, not by their bytes: Avro records of 100 small longs
    (~100 bytes, 800 as columns) flush several times as often as the same bytes read raw, for the same
    batch.max_bytes; JSON records like the bench's (their columns smaller than their bytes) weigh their bytes."""
    import fastavro

    from kingest.pipeline import JSON_EXPANSION

    schema = {"type": "record", "name": "Row", "fields": [{"name": f"f{i}", "type": "long"} for i in range(100)]}
    (tmp_path / "row.avsc").write_text(json.dumps(schema))
    parsed = fastavro.parse_schema(schema)

    def value(p: int, o: int) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, {f"f{i}": (o + i) % 60 for i in range(100)})
        return out.getvalue()

    commits, weights = {}, {}
    for fmt in ("raw", "avro"):
        schema_file = f", schema_file: {tmp_path / 'row.avsc'}" if fmt == "avro" else ""
        config = config_module.parse(
            f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
records: {{format: {fmt}{schema_file}}}
lake: {{path: "{tmp_path / fmt}"}}
batch: {{max_records: 100000, max_bytes: 400KB, max_age: 1h}}
semantics: at-least-once
"""
        )
        source = MemorySource(topic(partitions=1, records=6000, value=value), {}, max_poll_records=50)
        pipeline = Pipeline(config, source=source, until_caught_up=True)
        pipeline.run()
        commits[fmt], weights[fmt] = len(source.commits), pipeline._weight("orders")
        assert lake_offsets(Lake(str(tmp_path / fmt))) == {0: list(range(6000))}
    assert weights["raw"] == 1.0 and weights["avro"] > 3.0, weights
    assert commits["avro"] >= 2.5 * commits["raw"], commits
    # JSON like the bench's: its columns take less than its bytes, which weigh as they are
    pipeline = Pipeline(make_config(str(tmp_path / "json"), "at-least-once"), source=MemorySource(topic(), {}))
    pipeline.encoder.expansion["orders"] = JSON_EXPANSION * 0.9
    assert pipeline._weight("orders") == 1.0


def test_exactly_once_resumes_from_the_manifest_not_the_group(lake_url):
    data = topic(partitions=1, records=100)
    cfg = make_config(lake_url, "exactly-once", max_records=40)
    Pipeline(cfg, source=MemorySource(data, {}), until_caught_up=True).run()
    # A consumer group that lies (reset to 0, or ahead) must not change where exactly-once resumes.
    for lying_group in ({("orders", 0): 0}, {("orders", 0): 90}):
        stats = Pipeline(cfg, source=MemorySource(data, lying_group), until_caught_up=True).run()
        assert stats.written == 0
    assert lake_offsets(Lake(lake_url)) == {0: list(range(100))}


def test_exactly_once_recovery_removes_uncommitted_files(lake_url):
    data = topic(partitions=1, records=100)
    cfg = make_config(lake_url, "exactly-once", max_records=50)
    lake = Lake(lake_url)
    # A crashed attempt: announced and wrote a file, never committed the manifest version.
    store = ManifestStore(lake, "orders")
    store.write_pending("orders", 0, "crashed-writer", ["topic=orders/partition=0/orphan.parquet"], version=1)
    lake.put("topic=orders/partition=0/orphan.parquet", b"half a batch")
    Pipeline(cfg, source=MemorySource(data, {}), until_caught_up=True).run()
    assert "topic=orders/partition=0/orphan.parquet" not in lake.find()
    assert lake_offsets(lake) == {0: list(range(100))}


def test_headers_keys_and_tombstones_are_kept(lake_url):
    records = [
        Record("orders", 0, 0, 1_700_000_000_000, b"k0", b'{"a": 1}', [("trace", b"abc"), ("n", b"")]),
        Record("orders", 0, 1, 1_700_000_000_001, None, None, []),
    ]
    Pipeline(
        make_config(lake_url, "at-least-once"), source=MemorySource({"orders": [records]}, {}), until_caught_up=True
    ).run()
    table = ds.dataset(lake_url, format="parquet").to_table()
    rows = table.to_pylist()
    assert rows[0]["kafka_headers"] == [{"key": "trace", "value": b"abc"}, {"key": "n", "value": b""}]
    assert rows[0]["kafka_key"] == b"k0" and rows[0]["a"] == 1
    assert rows[1]["kafka_key"] is None and rows[1]["a"] is None and rows[1]["kafka_headers"] == []


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_a_full_disk_stops_the_run_saying_so_and_keeps_the_promise(semantics, lake_url, monkeypatch):
    """ENOSPC in the middle of the second data file: the run stops with "the disk ... is full" (exit 1: it
    stopped part-way; not retryable until someone frees space), nothing past what was written is committed,
    and a run once space is back keeps the semantics' promise."""
    import errno
    import os

    from kingest.errors import LakeUnavailable

    data, group = topic(partitions=1, records=1000), {}
    real_fsync = os.fsync
    data_files: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(".tmp") and ".parquet." in target:
            if target not in data_files:
                data_files.append(target)
            if data_files.index(target) == 1:  # the second data file: half written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("kingest.lake.os.fsync", fsync)
    config = make_config(lake_url, semantics, max_records=300)
    with pytest.raises(LakeUnavailable) as caught:
        Pipeline(config, source=MemorySource(data, group), until_caught_up=True).run()
    assert "is full ([Errno 28] No space left on device)" in caught.value.message
    assert caught.value.exit_code == 1 and not caught.value.retryable
    lake = Lake(lake_url)
    assert not [p for p in lake.find() if p.endswith(".tmp")]
    saved = lake_offsets(lake).get(0, [])
    assert saved == list(range(300))  # the first file only; the half second one is gone
    if semantics == "at-least-once":
        assert group.get(("orders", 0), 0) <= 300  # nothing committed past what was written
    if semantics == "exactly-once":
        assert ManifestStore(lake, "orders").load("orders", 0).next_offset == 300

    monkeypatch.setattr("kingest.lake.os.fsync", real_fsync)  # space is back
    Pipeline(config, source=MemorySource(data, group), until_caught_up=True).run()
    found = lake_offsets(lake)[0]
    if semantics != "at-most-once":
        assert set(found) == set(range(1000))
    if semantics != "at-least-once":
        assert len(found) == len(set(found))


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("on_error", ["fail", "skip", "dead-letter"])
def test_a_field_that_changes_type_in_a_later_run_is_a_bad_record_as_within_one_run(semantics, on_error):
    """The inferred schema starts from the lake's: `amount` written as a number by one run, then a string in the
    first record of a later run, is a bad record as it would be within one run (and the numbers after it are
    not). It used to land (the second run inferred anew), and the numbers after it were the bad records; with
    the string landed, pyarrow.dataset could not read the lake (Failed to parse string: '99.5 EUR' as int64)."""
    url = f"memory://lake-{uuid.uuid4().hex}"
    cfg = config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
records: {{format: json, on_error: {on_error}}}
lake: {{path: "{url}"}}
semantics: {semantics}
"""
    )

    def value(p, o):
        return json.dumps({"id": o, "amount": "99.5 EUR" if o == 5 else o}).encode()

    group: dict = {}
    first = Pipeline(cfg, source=MemorySource(topic(partitions=1, records=5, value=value), group), until_caught_up=True)
    assert first.run().written == 5
    second = Pipeline(
        cfg, source=MemorySource(topic(partitions=1, records=10, value=value), group), until_caught_up=True
    )
    lake = Lake(url)
    if on_error == "fail":
        with pytest.raises(BadRecord) as caught:
            second.run()
        assert (caught.value.partition, caught.value.offset) == (0, 5)
        assert "type conflict: field `amount` is a number in earlier records, a string in this one" in str(caught.value)
        assert group[("orders", 0)] == 5  # nothing committed at or past it
        assert lake_offsets(lake) == {0: list(range(5))}
        if semantics == "exactly-once":
            assert ManifestStore(lake, "orders").load("orders", 0).next_offset == 5
    else:
        stats = second.run()
        assert (stats.skipped, stats.dead_letters) == ((1, 0) if on_error == "skip" else (0, 1))
        assert group[("orders", 0)] == 10
        assert lake_offsets(lake) == {0: [0, 1, 2, 3, 4, 6, 7, 8, 9]}
    # Every column of the lake reads back, in the type the first run gave it.
    paths = [lake.full(p) for p in lake.find() if p.endswith(".parquet") and not p.startswith("_")]
    table = ds.dataset(paths, filesystem=lake.fs, format="parquet").to_table()
    assert table.schema.field("amount").type == pa.int64()
    assert sorted(table.column("amount").to_pylist()) == sorted(table.column("kafka_offset").to_pylist())


def test_exactly_once_runs_start_from_the_schema_of_a_committed_file(lake_url):
    """An uncommitted file (a crashed attempt's, past the manifest's offsets) does not teach the next run its
    columns: the offsets manifest's newest file does."""
    from kingest.encoder import Encoder
    from kingest.reader import lake_schemas

    Pipeline(make_config(lake_url, "exactly-once"), source=MemorySource(topic(1, 5), {}), until_caught_up=True).run()
    lake = Lake(lake_url)
    orphan = Encoder("json", file_tag="crashed").encode_batch(
        Batch("orders", 0, [5], [1_700_000_000_005], [None], [b'{"id": "five", "amount": "7.5 EUR"}'], [None])
    )
    [file] = orphan.files
    lake.put(file.path, file.data)
    committed = lake_schemas(lake, ["orders"], ManifestStore(lake, "orders"))["orders"]
    assert committed.field("id").type == pa.int64() and committed.field("amount").type == pa.float64()
    newest = lake_schemas(lake, ["orders"])["orders"]  # without the manifest: the newest file by its offsets
    assert newest.field("id").type == pa.string()
    assert lake_schemas(lake, ["other"]) == {}


@pytest.mark.parametrize("semantics", ["exactly-once", "at-least-once"])
def test_a_run_on_a_delta_table_partitioned_by_date_it_made(semantics, tmp_path):
    """lake.partition_by [date, hour] are the table's columns, computed from kafka_timestamp: a later run learns
    the table's columns without them (it once took them for record fields, and refused every record as one
    whose field collides with a partition column)."""
    import deltalake

    url = str(tmp_path / "table")
    cfg = config_module.parse(
        f"""
pipeline: orders
kafka: {{bootstrap_servers: "unused:9092", topics: [orders]}}
lake: {{path: "{url}", format: delta, partition_by: [date, hour]}}
batch: {{max_records: 50}}
semantics: {semantics}
"""
    )
    group: dict = {}
    first = Pipeline(cfg, source=MemorySource(topic(partitions=1, records=100), group), until_caught_up=True).run()
    assert first.written == 100
    second = Pipeline(cfg, source=MemorySource(topic(partitions=1, records=250), group), until_caught_up=True).run()
    assert second.written == 150 and not second.errors
    table = deltalake.DeltaTable(url).to_pyarrow_table()
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(250))
    assert set(table.column("date").to_pylist()) == {"2023-11-14"}
