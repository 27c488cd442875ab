"""The offsets manifest (kingest/manifest.py) on an fsspec memory:// lake and on local disk: commit, load,
claim (fencing), checkpoints, recovery, and the state errors a damaged manifest must raise.

Concurrent commits against the real S3 server and many processes: tests/integration/test_manifest_race.py."""

from __future__ import annotations

import json
import uuid

import pytest

from kingest.errors import ManifestConflict, StateError
from kingest.lake import Lake
from kingest.manifest import CHECKPOINT_EVERY, FORMAT_VERSION, ManifestStore, PartitionState

TOPIC = "orders"


@pytest.fixture(params=["memory", "local"])
def lake(request, tmp_path) -> Lake:
    if request.param == "memory":
        return Lake(f"memory://manifest-{uuid.uuid4().hex[:12]}")
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def store(lake: Lake) -> ManifestStore:
    return ManifestStore(lake, "orders-pipeline")


def entry(path: str, first: int, last: int) -> dict:
    return {"path": path, "first_offset": first, "last_offset": last, "rows": last - first + 1, "bytes": 100}


def write_versions(store: ManifestStore, count: int, partition: int = 0, owner: str = "w1") -> PartitionState:
    """``count`` write versions of 10 offsets each, one file per version."""
    state = store.load(TOPIC, partition)
    for i in range(count):
        first = i * 10
        path = f"topic={TOPIC}/partition={partition}/f-{first}.parquet"
        state = store.commit(
            state, operation="write", owner=owner, next_offset=first + 10, add=[entry(path, first, first + 9)]
        )
    return state


def same(a: PartitionState, b: PartitionState) -> bool:
    return (a.version, a.next_offset, a.files, a.owner) == (b.version, b.next_offset, b.files, b.owner)


# ---------------------------------------------------------------------------------------------- load and commit


def test_a_partition_without_manifest_loads_empty(store):
    state = store.load(TOPIC, 0)
    assert (state.version, state.next_offset, state.files, state.owner) == (0, None, {}, None)
    assert store.partitions() == []


def test_commits_load_back_as_committed(store):
    state = write_versions(store, 3)
    assert state.version == 3 and state.next_offset == 30 and len(state.files) == 3
    # A version may remove files (a rewind, a compaction): they leave the state.
    gone = f"topic={TOPIC}/partition=0/f-0.parquet"
    state = store.commit(state, operation="write", owner="w1", next_offset=30, remove=[gone])
    loaded = store.load(TOPIC, 0)
    assert same(loaded, state)
    assert gone not in loaded.files and loaded.rows == 20
    assert store.partitions() == [(TOPIC, 0)]


def test_each_version_file_carries_the_format_version(store, lake):
    write_versions(store, 1)
    doc = json.loads(lake.read(store.version_path(TOPIC, 0, 1)) or b"")
    assert doc["format_version"] == FORMAT_VERSION and doc["version"] == 1 and doc["next_offset"] == 10


def test_partitions_have_independent_versions(store):
    write_versions(store, 2, partition=0)
    write_versions(store, 5, partition=1)
    assert store.load(TOPIC, 0).version == 2
    assert store.load(TOPIC, 1).version == 5
    assert store.partitions() == [(TOPIC, 0), (TOPIC, 1)]


def test_a_commit_on_a_stale_state_conflicts_and_changes_nothing(store):
    stale = write_versions(store, 2)
    current = store.commit(stale, operation="write", owner="w2", next_offset=25)
    with pytest.raises(ManifestConflict) as raised:
        store.commit(stale, operation="write", owner="w1", next_offset=99, add=[entry("x.parquet", 20, 98)])
    assert raised.value.version == 3
    assert same(store.load(TOPIC, 0), current)


# ---------------------------------------------------------------------------------------------- claims


def test_a_claim_fences_the_previous_owner(store):
    previous = write_versions(store, 2, owner="old")
    claimed = store.claim(TOPIC, 0, "new")
    assert (claimed.version, claimed.next_offset, claimed.owner) == (3, 20, "new")
    assert claimed.files == previous.files  # a claim moves no offset and no file
    with pytest.raises(ManifestConflict):
        store.commit(previous, operation="write", owner="old", next_offset=30)
    assert same(store.load(TOPIC, 0), claimed)


def test_a_claim_goes_on_top_of_the_previous_owners_last_writes(store):
    """Assigned at version 2; the previous owner (frozen, then resumed) commits version 3 before our claim:
    a valid commit of the records after version 2, so the claim goes on top and says where to resume."""
    assigned = write_versions(store, 2, owner="old")
    store.commit(assigned, operation="write", owner="old", next_offset=25)
    claimed = store.claim(TOPIC, 0, "new", since=assigned)
    assert (claimed.version, claimed.next_offset, claimed.owner) == (4, 25, "new")


def test_a_claim_by_a_newer_owner_makes_ours_a_zombie_claim(store):
    """Assigned at version 2, but another writer claimed since: the group gave it the partition after us."""
    assigned = write_versions(store, 2, owner="old")
    newer = store.claim(TOPIC, 0, "newer")
    with pytest.raises(ManifestConflict):
        store.claim(TOPIC, 0, "zombie", since=assigned)
    assert same(store.load(TOPIC, 0), newer)
    # Our own earlier claim does not count against us.
    again = store.claim(TOPIC, 0, "newer", since=assigned)
    assert again.version == newer.version + 1


# ---------------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_every_25_versions_and_load_reads_it_plus_later_versions(store, lake):
    final = write_versions(store, 2 * CHECKPOINT_EVERY + 10)
    folder = f"{store.prefix}/checkpoints/topic={TOPIC}/partition=0"
    assert sorted(lake.listdir(folder)) == [f"{v:020d}.json" for v in (CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY)]
    # The versions the latest checkpoint covers are not read: load still works without them.
    lake.delete([store.version_path(TOPIC, 0, v) for v in range(1, 2 * CHECKPOINT_EVERY + 1)])
    loaded = store.load(TOPIC, 0)
    assert same(loaded, final)
    assert loaded.version == 2 * CHECKPOINT_EVERY + 10 and len(loaded.files) == 2 * CHECKPOINT_EVERY + 10


def test_a_checkpoint_ahead_of_the_versions_is_not_used(store, lake):
    """A checkpoint is derived data written after its version: one for a version that does not exist (a
    copy restored from elsewhere) must not be trusted."""
    final = write_versions(store, 3)
    bogus = {"format_version": FORMAT_VERSION, "version": 40, "next_offset": 4000, "files": []}
    lake.put(f"{store.prefix}/checkpoints/topic={TOPIC}/partition=0/{40:020d}.json", json.dumps(bogus).encode())
    assert same(store.load(TOPIC, 0), final)


# ---------------------------------------------------------------------------------------------- damaged state


def test_a_missing_version_is_a_state_error(store, lake):
    write_versions(store, 5)
    lake.delete([store.version_path(TOPIC, 0, 3)])
    with pytest.raises(StateError, match=r"missing version\(s\) \[3\]"):
        store.load(TOPIC, 0)


def test_a_missing_version_after_the_checkpoint_is_a_state_error(store, lake):
    write_versions(store, CHECKPOINT_EVERY + 5)
    lake.delete([store.version_path(TOPIC, 0, CHECKPOINT_EVERY + 2)])
    with pytest.raises(StateError, match="missing version"):
        store.load(TOPIC, 0)


def test_an_unknown_format_version_is_a_state_error(store, lake):
    write_versions(store, 2)
    rel = store.version_path(TOPIC, 0, 2)
    doc = json.loads(lake.read(rel) or b"")
    lake.put(rel, json.dumps({**doc, "format_version": 99}).encode())
    with pytest.raises(StateError, match="format_version 99") as raised:
        store.load(TOPIC, 0)
    assert "Upgrade kingest" in (raised.value.hint or "")


def test_an_unknown_checkpoint_format_version_is_a_state_error(store, lake):
    write_versions(store, CHECKPOINT_EVERY)
    rel = f"{store.prefix}/checkpoints/topic={TOPIC}/partition=0/{CHECKPOINT_EVERY:020d}.json"
    doc = json.loads(lake.read(rel) or b"")
    lake.put(rel, json.dumps({**doc, "format_version": FORMAT_VERSION + 1}).encode())
    with pytest.raises(StateError, match="format_version"):
        store.load(TOPIC, 0)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"version": 1}'])
def test_a_corrupted_version_is_a_state_error(store, lake, content):
    write_versions(store, 1)
    lake.put(store.version_path(TOPIC, 0, 1), content)
    with pytest.raises(StateError):
        store.load(TOPIC, 0)


# ---------------------------------------------------------------------------------------------- recovery


def test_recovery_deletes_only_announced_but_uncommitted_files(store, lake):
    folder = f"topic={TOPIC}/partition=0"
    committed, orphan_1, orphan_2, unrelated = (f"{folder}/{n}.parquet" for n in ("committed", "o1", "o2", "other"))
    for rel in (committed, orphan_1, orphan_2, unrelated):
        lake.put(rel, b"PAR1")
    # Writer w1 committed one file (version 1), then announced two more for version 2 and died before committing.
    state = store.load(TOPIC, 0)
    store.write_pending(TOPIC, 0, "w1", [committed], version=1)
    state = store.commit(state, operation="write", owner="w1", next_offset=10, add=[entry(committed, 0, 9)])
    store.write_pending(TOPIC, 0, "w1", [orphan_1, orphan_2], version=2)

    claimed = store.claim(TOPIC, 0, "w2")  # version 2: w1's announced files can never be committed now
    # A writer that claimed after w2 has announced files for version 4 (in flight): recovery leaves them alone.
    in_flight = f"{folder}/w3-in-flight.parquet"
    store.write_pending(TOPIC, 0, "w3", [in_flight], version=4)
    lake.put(in_flight, b"PAR1")
    removed = store.recover(claimed)

    assert sorted(removed) == sorted([orphan_1, orphan_2])
    remaining = set(lake.find(folder))
    assert remaining == {committed, unrelated, in_flight}
    pending = lake.listdir(f"{store.prefix}/pending-v2/topic={TOPIC}/partition=0")
    assert set(pending) == {f"{4:020d}-w3.json"}  # the settled records are consumed; the one in flight is kept
    assert same(store.load(TOPIC, 0), claimed)


def test_recovery_keeps_announced_files_that_were_committed_later(store, lake):
    folder = f"topic={TOPIC}/partition=0"
    paths = [f"{folder}/a.parquet", f"{folder}/b.parquet"]
    for rel in paths:
        lake.put(rel, b"PAR1")
    state = store.load(TOPIC, 0)
    store.write_pending(TOPIC, 0, "w1", paths, version=1)
    store.commit(
        state, operation="write", owner="w1", next_offset=20, add=[entry(paths[0], 0, 9), entry(paths[1], 10, 19)]
    )
    claimed = store.claim(TOPIC, 0, "w2")
    assert store.recover(claimed) == []
    assert set(lake.find(folder)) == set(paths)


def test_recovery_with_a_stale_state_never_deletes_a_file_committed_since(store, lake):
    """The interleaving of issue 12: writer b claims (version 1) and is paused before its recovery; writer c
    claims (2), announces, writes and commits a file (3); b resumes and recovers with the state of its claim.
    b must not delete c's file: c's pending record is for version 3, which b's state does not settle."""
    folder = f"topic={TOPIC}/partition=0"
    b_claim = store.claim(TOPIC, 0, "b")
    c_state = store.claim(TOPIC, 0, "c")
    c_file = f"{folder}/c.parquet"
    store.write_pending(TOPIC, 0, "c", [c_file], version=c_state.version + 1)
    lake.put(c_file, b"PAR1")
    store.commit(c_state, operation="write", owner="c", next_offset=10, add=[entry(c_file, 0, 9)])

    assert store.recover(b_claim) == []  # b, resumed

    latest = store.load(TOPIC, 0)
    assert set(latest.files) == {c_file}
    assert c_file in lake.find(folder)


def test_recovery_with_a_stale_state_deletes_what_the_version_it_knows_settled(store, lake):
    """A paused writer's recovery still does its job for what its state settles: the files of a writer fenced
    by its claim, though a later writer has committed since."""
    folder = f"topic={TOPIC}/partition=0"
    a_state = store.claim(TOPIC, 0, "a")
    a_file = f"{folder}/a.parquet"
    store.write_pending(TOPIC, 0, "a", [a_file], version=a_state.version + 1)
    lake.put(a_file, b"PAR1")  # a is frozen here, before its commit
    b_claim = store.claim(TOPIC, 0, "b")  # version 2: a's commit of version 2 can never happen
    c_state = store.claim(TOPIC, 0, "c")
    store.commit(c_state, operation="write", owner="c", next_offset=5, add=[entry(f"{folder}/c.parquet", 0, 4)])
    lake.put(f"{folder}/c.parquet", b"PAR1")

    assert store.recover(b_claim) == [a_file]
    assert set(lake.find(folder)) == {f"{folder}/c.parquet"}


@pytest.mark.parametrize("content", [b"{not json", json.dumps({"format_version": 99, "paths": ["x"]}).encode()])
def test_a_pending_record_this_kingest_cannot_read_is_left_with_its_files(store, lake, content):
    folder = f"topic={TOPIC}/partition=0"
    lake.put(f"{folder}/x.parquet", b"PAR1")
    record = f"{store.prefix}/pending-v2/topic={TOPIC}/partition=0/{1:020d}-w1.json"
    lake.put(record, content)
    claimed = store.claim(TOPIC, 0, "w2")
    assert store.recover(claimed) == []
    assert lake.read(record) == content


def test_pending_records_of_a_long_lived_owner_do_not_pile_up(store, lake):
    """One record per version: the owner's checkpoints settle them, so that a writer that never claims again
    leaves at most a checkpoint interval of them behind."""
    state = store.claim(TOPIC, 0, "w1")
    for i in range(CHECKPOINT_EVERY * 2):
        path = f"topic={TOPIC}/partition=0/f{i}.parquet"
        store.write_pending(TOPIC, 0, "w1", [path], version=state.version + 1)
        lake.put(path, b"PAR1")
        state = store.commit(state, operation="write", owner="w1", next_offset=i + 1, add=[entry(path, i, i)])
    pending = lake.listdir(f"{store.prefix}/pending-v2/topic={TOPIC}/partition=0")
    assert len(pending) < CHECKPOINT_EVERY
    assert len(lake.find(f"topic={TOPIC}/partition=0")) == CHECKPOINT_EVERY * 2


def test_recovery_with_nothing_pending_removes_nothing(store):
    claimed = store.claim(TOPIC, 0, "w1")
    assert store.recover(claimed) == []


# ---------------------------------------------------------------------------------------------- fewer requests


class _ReadLog(Lake):
    """A lake that notes every object read and every folder listed (what a store asks for)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[str] = []
        self.listings: list[str] = []

    def read(self, rel):
        self.reads.append(rel)
        return super().read(rel)

    def read_many(self, rels):
        rels = list(rels)
        self.reads += rels
        return super().read_many(rels)

    def listdir(self, rel):
        self.listings.append(rel)
        return super().listdir(rel)


def test_load_since_a_known_state_reads_only_the_versions_after_it_and_equals_a_full_load():
    lake = _ReadLog(f"memory://manifest-{uuid.uuid4().hex[:12]}")
    store = ManifestStore(lake, "orders-pipeline")
    known = write_versions(store, CHECKPOINT_EVERY + 3)  # a checkpoint at 25, then 26..28
    lake.reads.clear(), lake.listings.clear()
    assert same(store.load(TOPIC, 0, since=known), known)
    assert lake.reads == [] and len(lake.listings) == 1  # nothing new: one listing, no read

    later = store.commit(known, operation="write", owner="w2", next_offset=999, add=[entry("x.parquet", 280, 998)])
    lake.reads.clear(), lake.listings.clear()
    loaded = store.load(TOPIC, 0, since=known)
    assert lake.reads == [store.version_path(TOPIC, 0, later.version)]  # the one new version, no checkpoint
    assert same(loaded, later) and same(loaded, store.load(TOPIC, 0))

    assert same(store.load(TOPIC, 0, since=PartitionState(TOPIC, 0, version=later.version + 5)), later)  # ahead
    assert same(store.load(TOPIC, 0, since=PartitionState(TOPIC, 1, version=3)), later)  # another partition


def test_recovery_takes_the_stores_own_pending_records_from_memory_and_reads_the_others():
    """A checkpoint's recovery settles ~24 records of the owner's own: it knows what they name (a record is
    never rewritten), so it reads only the records of other writers (another process: another store)."""
    url = f"memory://manifest-{uuid.uuid4().hex[:12]}"
    lake = _ReadLog(url)
    store, other = ManifestStore(lake, "orders-pipeline"), ManifestStore(Lake(url), "orders-pipeline")
    folder = f"topic={TOPIC}/partition=0"
    orphan = f"{folder}/other-orphan.parquet"
    lake.put(orphan, b"PAR1")
    state = other.claim(TOPIC, 0, "w0")
    other.write_pending(TOPIC, 0, "w0", [orphan], version=2)  # w0 announced a file, then lost version 2
    state = store.claim(TOPIC, 0, "w1")
    for i in range(CHECKPOINT_EVERY - 3):  # up to version 24: the recovery below is the checkpoint's
        path = f"{folder}/f{i}.parquet"
        state = store.save(
            state,
            operation="write",
            owner="w1",
            next_offset=i + 1,
            files=[_File(path, i)],
        )
    lake.reads.clear()
    settled = state.version
    removed = store.recover(state)
    pending_reads = [r for r in lake.reads if "/pending-v2/" in r]
    assert pending_reads == [other._pending_rel(TOPIC, 0, 2, "w0")]  # w0's record only
    assert removed == [orphan]
    assert lake.listdir(f"{store.prefix}/pending-v2/{folder}") == {}
    assert set(lake.find(folder)) == {f"{folder}/f{i}.parquet" for i in range(settled - 2)}
    assert store._written == {}  # what it deleted, it forgets


class _File:
    """An EncodedFile's stand-in for ManifestStore.save."""

    def __init__(self, path: str, offset: int) -> None:
        self.path, self.data, self.offset = path, b"PAR1", offset

    def entry(self) -> dict:
        return entry(self.path, self.offset, self.offset)
