"""Delta tables (kingest/delta.py) on local disk: txn positions, commits checked on the snapshot they read from,
races between stores (in one process, and two spawned processes for the version-0 race), schema evolution,
type conflicts, rewind, and commits whose outcome is unknown.

deltalake panics in a forked child of a process that used it: cross-process tests use spawn."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError

from kingest import delta
from kingest.delta import (
    CommitAttempt,
    DeltaConflict,
    DeltaSetupError,
    DeltaTableDamaged,
    DeltaTableStore,
    DeltaTypeConflict,
    DeltaUnavailable,
    delta_storage_options,
)
from kingest.errors import ManifestConflict, RewindConflict, SetupError, StateError

TOPIC = "orders"
TP0, TP1 = (TOPIC, 0), (TOPIC, 1)
SCHEMA = pa.schema(
    [
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("amount", pa.float64()),
    ]
)


def batch(tp: tuple[str, int], first: int, count: int, **columns: pa.Array) -> pa.Table:
    data = {
        "kafka_topic": pa.array([tp[0]] * count),
        "kafka_partition": pa.array([tp[1]] * count, pa.int32()),
        "kafka_offset": pa.array(range(first, first + count), pa.int64()),
        "kafka_timestamp": pa.array([1_765_000_000_000 + i for i in range(count)], pa.timestamp("ms", tz="UTC")),
        "amount": pa.array([float(i) / 4 for i in range(count)]),
    }
    data.update(columns)
    return pa.table(data)


def new_store(path: Path, **kwargs) -> DeltaTableStore:
    store = DeltaTableStore(str(path), None, "pipe", **kwargs)
    store.ensure_table(SCHEMA)
    return store


def write(store: DeltaTableStore, tp, first: int, count: int, expected: int | None, **columns) -> int:
    files = store.stage(tp, batch(tp, first, count, **columns))
    return store.commit(files, {tp: first + count}, {tp: expected})


def offsets(store: DeltaTableStore, tp) -> list[int]:
    return sorted(store.live_offsets([tp]).get(tp, pa.array([], pa.int64())).to_pylist())


def operations(path: Path) -> list[str]:
    ops = []
    for name in sorted(os.listdir(path / "_delta_log")):
        if name.endswith(".json"):
            for line in (path / "_delta_log" / name).read_text().splitlines():
                info = json.loads(line).get("commitInfo")
                if info:
                    ops.append(info["operation"])
    return ops


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return tmp_path / "table"


# ---------------------------------------------------------------------------------------------- options


def test_s3fs_options_become_object_store_options():
    got = delta_storage_options(
        "s3://bucket/lake",
        {"endpoint_url": "http://127.0.0.1:8333", "key": "k", "secret": "s", "config_kwargs": {"retries": 3}},
    )
    assert got == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    https = delta_storage_options(
        "s3://b/p", {"endpoint_url": "https://s3.example", "client_kwargs": {"region_name": "eu-west-1"}}
    )
    assert "AWS_ALLOW_HTTP" not in https and https["AWS_REGION"] == "eu-west-1"
    assert delta_storage_options("/tmp/lake", None) == {}


@pytest.mark.parametrize("option", ["AWS_S3_LOCKING_PROVIDER", "aws_s3_allow_unsafe_rename"])
def test_lock_and_unsafe_rename_options_are_refused(option):
    with pytest.raises(DeltaSetupError, match="not supported with lake.format: delta") as err:
        delta_storage_options("s3://b/p", {option: "dynamodb"})
    assert isinstance(err.value, SetupError) and "If-None-Match" in (err.value.hint or "")


def test_an_s3fs_option_without_equivalent_is_named():
    with pytest.raises(DeltaSetupError, match="lake.storage_options.use_ssl"):
        delta_storage_options("s3://b/p", {"use_ssl": False})


# ---------------------------------------------------------------------------------------------- positions


def test_positions_follow_the_commits(table):
    store = DeltaTableStore(str(table), None, "pipe")
    assert store.positions([TP0]) == {TP0: None}  # no table yet: nothing committed, nothing created
    assert not table.exists()
    store.ensure_table(SCHEMA)
    assert operations(table) == ["CREATE TABLE"]
    write(store, TP0, 0, 10, None)
    write(store, TP1, 0, 3, None)
    write(store, TP0, 10, 5, 10)
    assert store.positions([TP0, TP1, (TOPIC, 2)]) == {TP0: 15, TP1: 3, (TOPIC, 2): None}
    assert DeltaTableStore(str(table), None, "pipe").positions([TP0]) == {TP0: 15}  # from the table alone
    assert DeltaTableStore(str(table), None, "other").positions([TP0]) == {TP0: None}  # its own appIds
    assert DeltaTable(str(table)).transaction_version("kingest-pipe-orders-0") == 15
    assert offsets(store, TP0) == list(range(15))
    assert operations(table).count("CREATE TABLE") == 1


def test_one_commit_carries_every_partition_and_the_files_land_in_hive_folders(table):
    store = new_store(table)
    files = store.stage(TP0, batch(TP0, 0, 4)) + store.stage(TP1, batch(TP1, 7, 2))
    assert [f.path.rsplit("/", 1)[0] for f in files] == [
        "kafka_topic=orders/kafka_partition=0",
        "kafka_topic=orders/kafka_partition=1",
    ]
    assert DeltaTable(str(table)).file_uris() == []  # staged: no reader sees them
    store.commit(files, {TP0: 4, TP1: 9}, {TP0: None, TP1: None})
    assert operations(table) == ["CREATE TABLE", "WRITE"]
    assert store.positions([TP0, TP1]) == {TP0: 4, TP1: 9}
    stats = json.loads(files[0].add.stats)
    assert stats["numRecords"] == 4 and stats["minValues"]["kafka_offset"] == 0
    assert "kafka_partition" not in pa.parquet.read_schema(table / files[0].path).names  # only in the folder
    assert DeltaTable(str(table)).count() == 6


def test_a_staged_file_smaller_than_compress_min_bytes_is_uncompressed_and_the_table_reads_it(table):
    store = new_store(table, compression="zstd", compress_min_bytes=64 * 1024)
    [small] = store.stage(TP0, batch(TP0, 0, 10))
    [large] = store.stage(TP1, batch(TP1, 0, 20_000))
    store.commit([small, large], {TP0: 10, TP1: 20_000}, {TP0: None, TP1: None})

    def codecs(path: str) -> set[str]:
        metadata = pa.parquet.read_metadata(table / path)
        return {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)}

    assert codecs(small.path) == {"UNCOMPRESSED"} and codecs(large.path) == {"ZSTD"}
    assert DeltaTable(str(table)).count() == 20_010


def test_a_fresh_table_object_every_reload_every_commits(table, monkeypatch):
    monkeypatch.setattr(delta, "RELOAD_EVERY", 2)
    store = new_store(table)
    seen = set()
    for i in range(5):
        write(store, TP0, i * 2, 2, i * 2 or None)
        seen.add(id(store._dt))
    assert len(seen) >= 2 and offsets(store, TP0) == list(range(10))


# ---------------------------------------------------------------------------------------------- races


def test_a_stale_writer_gets_the_conflict_and_commits_nothing(table):
    a, b = new_store(table), new_store(table)
    assert a.positions([TP0]) == b.positions([TP0]) == {TP0: None}
    write(a, TP0, 0, 10, None)
    staged = b.stage(TP0, batch(TP0, 0, 10))  # b read the same records and expects the same start
    version = DeltaTable(str(table)).version()
    with pytest.raises(DeltaConflict) as err:
        b.commit(staged, {TP0: 10}, {TP0: None})
    assert isinstance(err.value, ManifestConflict)
    assert err.value.taken == {TP0: (None, 10)} and "orders[0] (expected None, table has 10)" in str(err.value)
    assert DeltaTable(str(table)).version() == version
    assert not (table / staged[0].path).exists()  # it can never be committed: deleted
    assert offsets(a, TP0) == list(range(10))
    assert b.positions([TP0]) == {TP0: 10}  # where b re-seeks


def test_a_commit_between_the_check_and_the_commit_makes_it_fail(table, monkeypatch):
    """The check and the commit are atomic: a winner landing after the loser's check (on the loser's snapshot)
    makes delta-rs refuse the loser's entry, and the loser is told which partition it lost."""
    a, b = new_store(table), new_store(table)
    write(a, TP0, 0, 5, None)
    staged_a = a.stage(TP0, batch(TP0, 5, 5))
    staged_b = b.stage(TP0, batch(TP0, 5, 5))
    check = b._taken
    calls = []

    def interleaved(dt, expected):
        calls.append(dt.version())
        taken = check(dt, expected)
        if len(calls) == 1:  # b's check passed: a commits before b's entry
            assert not taken
            a.commit(staged_a, {TP0: 10}, {TP0: 5})
        return taken

    monkeypatch.setattr(b, "_taken", interleaved)
    with pytest.raises(DeltaConflict) as err:
        b.commit(staged_b, {TP0: 10}, {TP0: 5})
    assert err.value.taken == {TP0: (5, 10)}
    assert offsets(a, TP0) == list(range(10))
    assert not (table / staged_b[0].path).exists()


def test_writers_of_different_partitions_both_land(table):
    a, b = new_store(table), new_store(table)
    a.positions([TP0])
    b.positions([TP1])  # b's snapshot is older than a's commit: its commit rebases
    write(a, TP0, 0, 10, None)
    write(b, TP1, 0, 7, None)
    assert a.positions([TP0, TP1]) == {TP0: 10, TP1: 7}
    assert offsets(a, TP0) == list(range(10)) and offsets(a, TP1) == list(range(7))


def test_a_schema_change_by_another_writer_is_retried_not_a_conflict(table, monkeypatch):
    a, b = new_store(table), new_store(table)
    staged_b = b.stage(TP1, batch(TP1, 0, 3))
    original = DeltaTable.create_write_transaction
    calls = []

    def interleaved(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 1:  # a adds a column (a metadata change) before b's entry
            write(a, TP0, 0, 2, None, note=pa.array(["x", "y"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", interleaved)
    b.commit(staged_b, {TP1: 3}, {TP1: None})
    assert len(calls) == 3  # b's first entry lost to "Metadata changed", a's, b's retry
    assert b.positions([TP0, TP1]) == {TP0: 2, TP1: 3}
    assert offsets(b, TP1) == [0, 1, 2]


def _race(path: str, barrier, who: int, rounds: int, results) -> None:
    """One of two processes: per round, create the table (racing) and commit offsets [0, 10) of one partition
    from nothing."""
    out = []
    for round_ in range(rounds):
        store = DeltaTableStore(f"{path}/r{round_}", None, "pipe", writer=f"w{who}")
        barrier.wait()
        store.ensure_table(SCHEMA)
        before = store.positions([TP0])[TP0]
        files = store.stage(TP0, batch(TP0, 0, 10))
        barrier.wait()
        try:
            store.commit(files, {TP0: 10}, {TP0: before})
            out.append("won")
        except DeltaConflict:
            out.append("lost")
    results.put((who, out))


def test_two_processes_creating_and_committing_at_once_land_each_offset_once(tmp_path):
    """The version-0 race: a table created by a data commit skips the txn check (both land). ensure_table
    creates it alone, without retry: one CREATE, then one winner per round."""
    rounds = 4
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, who, rounds, results)) for who in (0, 1)]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    for round_ in range(rounds):
        path = tmp_path / f"r{round_}"
        assert sorted([outcomes[0][round_], outcomes[1][round_]]) == ["lost", "won"]
        assert operations(path).count("CREATE TABLE") == 1
        store = DeltaTableStore(str(path), None, "pipe")
        assert offsets(store, TP0) == list(range(10))
        assert store.positions([TP0]) == {TP0: 10}


# ---------------------------------------------------------------------------------------------- schema


def test_a_new_field_becomes_a_nullable_column_without_data_of_its_own(table):
    store = new_store(table)
    write(store, TP0, 0, 3, None)
    write(store, TP0, 3, 2, 3, coupon=pa.array(["A", None]), empty=pa.nulls(2))
    assert operations(table) == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"]
    evolve = [json.loads(line) for line in (table / "_delta_log" / f"{2:020d}.json").read_text().splitlines()]
    assert any("metaData" in a for a in evolve) and not any("add" in a or "txn" in a for a in evolve)
    schema = store.schema()
    assert schema.field("coupon").type == pa.string() and schema.field("coupon").nullable
    assert "empty" not in schema.names  # all null: no `void` column
    rows = store.dataset().to_table(columns=["kafka_offset", "coupon"]).sort_by("kafka_offset").to_pylist()
    assert [r["coupon"] for r in rows] == [None, None, None, "A", None]


def test_widening_is_cast_and_a_type_conflict_is_refused_before_anything_is_written(table):
    store = new_store(table)
    write(store, TP0, 0, 2, None, amount=pa.array([1, 2], pa.int32()))  # ints into a double column: exact
    assert store.dataset().to_table(columns=["amount"]).column(0).type == pa.float64()
    for values, found in [
        (pa.array(["7.9", "1"]), "string"),
        (pa.array([True, False]), "bool"),
        (pa.array([2**53 + 1, 1], pa.int64()), "int64"),  # not exact as a double
    ]:
        with pytest.raises(
            DeltaTypeConflict, match=f"column 'amount' is double in the table, the records give {found}"
        ):
            store.stage(TP0, batch(TP0, 2, 2, amount=values))
    with pytest.raises(DeltaTypeConflict, match="names differ in case"):
        store.stage(TP0, batch(TP0, 2, 2, Amount=pa.array([1.0, 2.0])))
    assert store.positions([TP0]) == {TP0: 2} and offsets(store, TP0) == [0, 1]
    assert len(list((table / "kafka_topic=orders" / "kafka_partition=0").iterdir())) == 1  # no file written


def test_a_column_another_writer_added_with_another_type_is_a_type_conflict_at_commit(table):
    a, b = new_store(table), new_store(table)
    staged = a.stage(TP0, batch(TP0, 0, 2, code=pa.array(["x", "y"])))  # a new column, as a string
    write(b, TP1, 0, 2, None, code=pa.array([1, 2], pa.int64()))  # b adds it as a long first
    version = DeltaTable(str(table)).version()
    with pytest.raises(DeltaTypeConflict, match="column 'code' is int64 in the table, the records give string"):
        a.commit(staged, {TP0: 2}, {TP0: None})
    assert DeltaTable(str(table)).version() == version and a.positions([TP0]) == {TP0: None}


# ---------------------------------------------------------------------------------------------- rewind


def test_rewind_deletes_the_rows_past_the_target_and_sets_the_txn_in_one_commit(table):
    store = new_store(table)
    write(store, TP0, 0, 10, None)
    write(store, TP0, 10, 10, 10)
    write(store, TP1, 0, 10, None)
    result = store.rewind(TP0, 15, expected=20)
    assert (result.previous_next_offset, result.next_offset, result.deleted_rows) == (20, 15, 5)
    log = DeltaTable(str(table)).history(1)[0]
    assert log["operation"] == "DELETE" and log["kingest.op"] == "rewind"
    assert store.positions([TP0, TP1]) == {TP0: 15, TP1: 10}
    assert offsets(store, TP0) == list(range(15)) and offsets(store, TP1) == list(range(10))
    write(store, TP0, 15, 10, 15)  # the replay lands every offset once
    assert offsets(store, TP0) == list(range(25))


def test_rewind_with_no_row_past_the_target_is_a_txn_only_commit(table):
    store = new_store(table)
    write(store, TP0, 0, 10, None)
    files = set(store.committed_files())
    before = DeltaTable(str(table)).version()
    result = store.rewind(TP0, 30)  # forward: skip offsets 10..29
    assert result.deleted_rows == 0 and result.version == before + 1
    assert store.positions([TP0]) == {TP0: 30} and set(store.committed_files()) == files
    assert store.rewind(TP0, 10).deleted_rows == 0 and store.positions([TP0]) == {TP0: 10}


def test_a_writer_running_during_a_rewind_loses_its_next_commit(table):
    writer, admin = new_store(table), new_store(table)
    write(writer, TP0, 0, 10, None)
    staged = writer.stage(TP0, batch(TP0, 10, 5))
    admin.rewind(TP0, 4)
    with pytest.raises(DeltaConflict):
        writer.commit(staged, {TP0: 15}, {TP0: 10})
    assert offsets(admin, TP0) == [0, 1, 2, 3] and admin.positions([TP0]) == {TP0: 4}


def test_a_rewind_planned_before_a_commit_is_refused(table):
    store = new_store(table)
    write(store, TP0, 0, 10, None)
    with pytest.raises(RewindConflict, match="since the rewind was planned"):
        store.rewind(TP0, 5, expected=8)
    assert store.positions([TP0]) == {TP0: 10}


# ---------------------------------------------------------------------------------------------- outcome unknown


def _raising(monkeypatch, error: BaseException, *, after: bool):
    original = DeltaTable.create_write_transaction

    def fail(self, *args, **kwargs):
        if after:
            original(self, *args, **kwargs)
        raise error

    monkeypatch.setattr(DeltaTable, "create_write_transaction", fail)


@pytest.mark.parametrize(
    "error",
    [OSError("connection reset"), CommitFailedError("Failed to commit transaction: Concurrent transaction failed.")],
    ids=["timeout", "own-entry-met-on-retry"],
)
def test_an_error_after_the_entry_landed_is_settled_as_committed(table, monkeypatch, error):
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    staged = store.stage(TP0, batch(TP0, 5, 5))
    _raising(monkeypatch, error, after=True)
    version = store.commit(staged, {TP0: 10}, {TP0: 5})
    monkeypatch.undo()
    assert version == DeltaTable(str(table)).version()
    assert store.positions([TP0]) == {TP0: 10} and offsets(store, TP0) == list(range(10))
    write(store, TP0, 10, 1, 10)  # and the writer goes on


def test_an_error_before_the_entry_landed_commits_nothing_and_keeps_the_files(table, monkeypatch):
    store = new_store(table)
    staged = store.stage(TP0, batch(TP0, 0, 5))
    _raising(monkeypatch, OSError("connection refused"), after=False)
    with pytest.raises(DeltaUnavailable, match="did not land") as err:
        store.commit(staged, {TP0: 5}, {TP0: None})
    assert err.value.retryable
    monkeypatch.undo()
    assert store.positions([TP0]) == {TP0: None} and operations(table) == ["CREATE TABLE"]
    assert (table / staged[0].path).exists()  # a late write of the entry could still name it: left to gc
    store.commit(staged, {TP0: 5}, {TP0: None})  # the same files, again: once
    assert offsets(store, TP0) == list(range(5))


def test_an_entry_landing_after_the_call_said_it_did_not_is_found_by_the_retry_of_the_same_attempt(table, monkeypatch):
    """The pipeline retries a commit that raised DeltaUnavailable. If the first try's PUT lands late (after the
    log was read), the retry must find it as its own: with a new id it would take it for another writer's, raise
    DeltaConflict and delete the staged files that the landed entry names (a loss)."""
    store = new_store(table)
    staged = store.stage(TP0, batch(TP0, 0, 5))
    attempt = CommitAttempt()
    _raising(monkeypatch, OSError("connection refused"), after=False)
    with pytest.raises(DeltaUnavailable):
        store.commit(staged, {TP0: 5}, {TP0: None}, attempt)
    monkeypatch.undo()
    assert attempt.since is not None
    # The first try's entry lands now: the same files, txn and commit id.
    late = DeltaTable(str(table))
    late.create_write_transaction(
        [f.add for f in staged],
        "append",
        late.schema(),
        partition_by=late.metadata().partition_columns,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(store.app_id(TP0), 5)], custom_metadata={"kingest.commit": attempt.id}
        ),
    )
    version = store.commit(staged, {TP0: 5}, {TP0: None}, attempt)
    assert version == DeltaTable(str(table)).version()
    assert all((table / f.path).exists() for f in staged), "the files the landed entry names are kept"
    assert offsets(store, TP0) == list(range(5)) and store.positions([TP0]) == {TP0: 5}
    # A new attempt cannot tell the late entry from another writer's: it is a conflict.
    with pytest.raises(DeltaConflict):
        store.commit(staged, {TP0: 5}, {TP0: None})


def test_a_lost_commit_without_a_taken_partition_is_retried_with_the_same_files(table, monkeypatch):
    store = new_store(table)
    staged = store.stage(TP0, batch(TP0, 0, 5))
    original = DeltaTable.create_write_transaction
    calls = []

    def busy_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise CommitFailedError("Failed to commit transaction: 15")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", busy_once)
    store.commit(staged, {TP0: 5}, {TP0: None})
    assert len(calls) == 2 and offsets(store, TP0) == list(range(5))


def test_a_file_staged_too_long_ago_is_written_again_before_its_commit(table):
    store = new_store(table, stage_max_age=0.0)
    staged = store.stage(TP0, batch(TP0, 0, 5))
    store.commit(staged, {TP0: 5}, {TP0: None})
    # The old file is not committed, and not deleted either: a try whose outcome was unknown may still land
    # naming it (CommitAttempt). Untracked, it is gc's.
    assert (table / staged[0].path).exists()
    assert staged[0].path not in store.committed_files() and offsets(store, TP0) == list(range(5))


def _frozen_across_gc(table: Path, monkeypatch, staged: list, gc: DeltaTableStore) -> list:
    """Patch the next commit: before its first try lands, gc fences and deletes ``staged`` (unreferenced)."""
    original = DeltaTable.create_write_transaction
    fenced: list = []

    def frozen_then_commit(self, *args, **kwargs):
        if not fenced:
            fenced.append(gc.gc_fence())
            for f in staged:
                os.remove(table / f.path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", frozen_then_commit)
    return fenced


@pytest.mark.parametrize("mode", ["exactly-once", "append", "first-commit"])
def test_a_writer_that_read_the_table_before_a_gc_fence_writes_its_files_again(table, monkeypatch, mode):
    """The writer stages, reads the table and freezes before its commit; gc fences and deletes the staged files
    (unreferenced, old). Whatever the commit (checked txns, an unchecked append, a partition's first commit), it
    must not name a deleted file: no clock involved (stage_max_age is an hour)."""
    store = new_store(table, stage_max_age=3600.0)
    write(store, TP0, 0, 5, None)
    tp, first = (TP1, 0) if mode == "first-commit" else (TP0, 5)
    staged = store.stage(tp, batch(tp, first, 5))
    fenced = _frozen_across_gc(table, monkeypatch, staged, DeltaTableStore(str(table), None, "pipe"))
    if mode == "append":
        store.append(staged)
    else:
        store.commit(staged, {tp: first + 5}, {tp: None if mode == "first-commit" else 5})
    monkeypatch.undo()
    assert fenced, "gc ran during the pause"
    live = DeltaTable(str(table)).get_add_actions(flatten=False).column("path").to_pylist()
    assert all((table / str(p)).exists() for p in live), "the table names a file gc deleted"
    assert offsets(store, tp) == list(range(first + 5)) if tp == TP0 else offsets(store, TP1) == list(range(5))
    assert store.fence_epoch() == 1


def test_a_compaction_that_read_the_table_before_a_gc_fence_fails(table):
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    write(store, TP0, 5, 5, 5)
    stale = DeltaTable(str(table))
    DeltaTableStore(str(table), None, "pipe").gc_fence()
    with pytest.raises(CommitFailedError):
        stale.optimize.compact()


def test_the_fence_epoch_survives_schema_evolution_compaction_and_rewind(table):
    """A lost epoch would let files staged before a later fence pass as fresh."""
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    store.gc_fence()
    store.gc_fence()
    write(store, TP0, 5, 2, 5, coupon=pa.array(["A", "B"]))  # a new column: a metadata commit
    write(store, TP0, 7, 1, 7, customer=pa.array([{"id": "a"}], pa.struct([("id", pa.string())])))
    write(
        store,
        TP0,
        8,
        1,
        8,
        customer=pa.array([{"id": "b", "n": 1}], pa.struct([("id", pa.string()), ("n", pa.int64())])),
    )
    store.compact(TP0)
    store.rewind(TP0, 6)
    assert DeltaTableStore(str(table), None, "pipe").fence_epoch(DeltaTable(str(table))) == 2
    assert DeltaTable(str(table)).metadata().name == "pipe"


def test_pinned_reads_nest(table):
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    with store.pinned():
        version = store.version()
        with store.pinned():
            pass
        DeltaTableStore(str(table), None, "pipe").rewind(TP0, 2)
        assert store.version() == version, "the outer pin still holds after an inner one ended"


# ---------------------------------------------------------------------------------------------- the table


def test_an_existing_table_of_another_layout_is_refused(table):
    new_store(table)
    with pytest.raises(DeltaSetupError, match=r"partitioned by \['kafka_topic', 'kafka_partition'\]"):
        DeltaTableStore(str(table), None, "pipe").ensure_table(SCHEMA, ["kafka_topic"])
    other = table.parent / "other"
    DeltaTable.create(str(other), pa.schema([pa.field("id", pa.int64())]))
    with pytest.raises(DeltaSetupError, match="not a kingest table"):
        DeltaTableStore(str(other), None, "pipe").ensure_table(SCHEMA, [])


def test_a_damaged_log_is_a_state_error(table):
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    (table / "_delta_log" / "00000000000000000001.json").write_text("{not json")
    with pytest.raises(DeltaTableDamaged) as err:
        DeltaTableStore(str(table), None, "pipe").positions([TP0])
    assert isinstance(err.value, StateError)


def test_compact_keeps_the_rows_and_the_txns(table):
    store = new_store(table)
    for i in range(4):
        write(store, TP0, i * 5, 5, i * 5 or None)
    assert len(store.committed_files()) == 4
    metrics = store.compact(TP0)
    assert metrics["numFilesRemoved"] == 4 and len(store.committed_files()) == 1
    assert store.positions([TP0]) == {TP0: 20} and offsets(store, TP0) == list(range(20))
    with pytest.raises(ValueError):
        store.vacuum(0)


def test_a_partition_without_files_moves_its_txn_alone(table):
    store = new_store(table)
    write(store, TP0, 0, 5, None)
    store.commit([], {TP0: 9}, {TP0: 5})  # offsets 5..8 were transaction markers
    assert store.positions([TP0]) == {TP0: 9} and offsets(store, TP0) == list(range(5))


def test_after_losing_one_partition_the_others_files_go_in_the_next_commit(table):
    a, b = new_store(table), new_store(table)
    write(a, TP0, 0, 5, None)
    write(b, TP1, 0, 5, None)
    staged = b.stage(TP0, batch(TP0, 0, 5)) + b.stage(TP1, batch(TP1, 5, 5))
    with pytest.raises(DeltaConflict) as err:
        b.commit(staged, {TP0: 5, TP1: 10}, {TP0: None, TP1: 5})
    assert set(err.value.taken) == {TP0}
    kept = [f for f in staged if f.tp not in err.value.taken]
    assert not (table / staged[0].path).exists() and (table / kept[0].path).exists()
    b.commit(kept, {TP1: 10}, {TP1: 5})
    assert offsets(b, TP0) == list(range(5)) and offsets(b, TP1) == list(range(10))


def test_append_commits_without_txns(table):
    store = new_store(table)
    store.append(store.stage(TP0, batch(TP0, 0, 3)))
    assert store.positions([TP0]) == {TP0: None} and offsets(store, TP0) == [0, 1, 2]


def test_a_lone_writer_checks_its_txns_without_reading_the_log_again(table, monkeypatch):
    """At the version of its own last commit a writer knows the txns; after anyone else's commit it reads them."""
    store, other = new_store(table), new_store(table)
    write(store, TP0, 0, 5, None)
    reads = []
    original = DeltaTable.transaction_version
    monkeypatch.setattr(DeltaTable, "transaction_version", lambda dt, app: reads.append(app) or original(dt, app))
    write(store, TP0, 5, 5, 5)
    write(store, TP0, 10, 5, 10)
    assert reads == []
    write(other, TP1, 0, 5, None)
    reads.clear()
    write(store, TP0, 15, 5, 15)
    assert reads == ["kingest-pipe-orders-0"]
    with pytest.raises(DeltaConflict):  # and a stale expectation is still caught at the known version
        write(store, TP0, 15, 5, 15)
    assert offsets(store, TP0) == list(range(20))


def test_a_struct_gaining_subfields_evolves_the_table_and_a_subfield_type_change_is_refused(table):
    """JSON objects grow fields over time, nested ones too (the bench's `customer` gained `lifetime_orders`)."""
    store = new_store(table)
    small = pa.array([{"id": "a"}] * 2, pa.struct([("id", pa.string())]))
    write(store, TP0, 0, 2, None, customer=small)
    wide = pa.array(
        [{"id": "b", "orders": 3, "tags": [{"k": "x", "n": 1}]}] * 2,
        pa.struct(
            [
                ("id", pa.string()),
                ("orders", pa.int64()),
                ("tags", pa.list_(pa.struct([("k", pa.string()), ("n", pa.int64())]))),
            ]
        ),
    )
    write(store, TP0, 2, 2, 2, customer=wide)
    deeper = pa.array(
        [{"id": "c", "tags": [{"k": "y", "extra": True}]}],
        pa.struct([("id", pa.string()), ("tags", pa.list_(pa.struct([("k", pa.string()), ("extra", pa.bool_())])))]),
    )
    write(store, TP0, 4, 1, 4, customer=deeper)
    rows = DeltaTable(str(table)).to_pyarrow_table().sort_by("kafka_offset").column("customer").to_pylist()
    assert [r["id"] for r in rows] == ["a", "a", "b", "b", "c"]
    assert rows[0]["orders"] is None and rows[2]["orders"] == 3
    assert rows[2]["tags"] == [{"k": "x", "n": 1, "extra": None}]
    assert rows[4]["tags"] == [{"k": "y", "n": None, "extra": True}]
    # One flush: a partition's records with the old struct, another's with a new subfield (the bench's case).
    files = store.stage(TP0, batch(TP0, 5, 1, customer=small.slice(0, 1))) + store.stage(
        TP1,
        batch(
            TP1,
            0,
            1,
            customer=pa.array([{"id": "d", "vip": True}], pa.struct([("id", pa.string()), ("vip", pa.bool_())])),
        ),
    )
    store.commit(files, {TP0: 6, TP1: 1}, {TP0: 5, TP1: None})
    assert offsets(store, TP0) == list(range(6)) and offsets(store, TP1) == [0]
    retyped = pa.array([{"id": 5}], pa.struct([("id", pa.int64())]))
    with pytest.raises(DeltaTypeConflict, match="customer"):
        write(store, TP0, 6, 1, 6, customer=retyped)
    assert store.positions([TP0]) == {TP0: 6}
