"""core.raft.disk.DiskStorage against real files: recovery, group commit, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from core.raft import Entry, EntryType, HardState, Ready, Role, Snapshot
from core.raft.disk import LOG_NAME, SNAPSHOT_NAME, DiskStorage
from core.raft.snapshot_file import data_bytes
from core.raft.testing import InMemoryNetwork
from core.storage import atomic_write


def entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(i, term, EntryType.NORMAL, b"%d@%d" % (i, term))
                 for i in range(first, last + 1))


def stored(storage: DiskStorage) -> list[tuple[int, int, bytes]]:
    first, last = storage.first_index(), storage.last_index()
    if last < first:
        return []
    return [(e.index, e.term, e.data) for e in storage.entries(first, last + 1)]


def reopen(storage: DiskStorage) -> DiskStorage:
    storage.close()
    return DiskStorage.open(storage.directory)


@pytest.fixture
def disk(tmp_path: Path) -> DiskStorage:
    return DiskStorage.open(tmp_path)


def test_entries_and_hard_state_survive_a_restart(disk: DiskStorage) -> None:
    disk.persist(Ready(entries=entries(1, 5, 1), hard_state=HardState(1, 2, 3), must_sync=True))
    again = reopen(disk)
    assert again.initial_state() == HardState(1, 2, 3)
    assert stored(again) == stored(disk) and again.last_index() == 5


def test_truncation_point_drops_the_conflicting_suffix(disk: DiskStorage) -> None:
    disk.persist(Ready(entries=entries(1, 5, 1), must_sync=True))
    disk.persist(Ready(entries=entries(3, 4, 2), hard_state=HardState(2, 0, 2), must_sync=True))
    expected = [(1, 1, b"1@1"), (2, 1, b"2@1"), (3, 2, b"3@2"), (4, 2, b"4@2")]
    assert stored(disk) == expected
    assert stored(reopen(disk)) == expected


def test_one_fsync_per_ready_and_none_for_a_commit_only_change(
        disk: DiskStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    disk.persist(Ready(entries=entries(1, 50, 1), hard_state=HardState(1, 1, 0), must_sync=True))
    assert len(calls) == 1  # group commit: 50 entries and the hard state, one fsync
    disk.persist(Ready(hard_state=HardState(1, 1, 50), must_sync=False))
    assert len(calls) == 1
    assert reopen(disk).initial_state().commit in (0, 50)  # written, not necessarily synced


def test_snapshot_and_compaction_survive_a_restart(disk: DiskStorage) -> None:
    disk.persist(Ready(entries=entries(1, 10, 1), hard_state=HardState(1, 1, 10), must_sync=True))
    snap = disk.create_snapshot(8, (1, 2, 3), b"state@8")
    disk.compact(6)
    assert disk.first_index() == 7
    again = reopen(disk)
    assert again.snapshot() == snap
    assert again.first_index() == 9  # recovery starts right after the snapshot
    assert stored(again) == [(9, 1, b"9@1"), (10, 1, b"10@1")]
    assert again.term(8) == 1 and again.initial_state() == HardState(1, 1, 10)
    assert (again.directory / LOG_NAME).stat().st_size < 400  # the log was rewritten


def test_installed_snapshot_replaces_the_log(disk: DiskStorage) -> None:
    disk.persist(Ready(entries=entries(1, 5, 1), hard_state=HardState(1, 0, 2), must_sync=True))
    snap = Snapshot(20, 3, (1, 2), b"leader state")
    disk.persist(Ready(snapshot=snap, entries=entries(21, 22, 3),
                       hard_state=HardState(3, 0, 20), must_sync=True))
    for storage in (disk, reopen(disk)):
        got = storage.snapshot()  # its data now in the storage's file
        assert (got.index, got.term, got.voters, data_bytes(got.data)) == (20, 3, (1, 2),
                                                                            b"leader state")
        assert stored(storage) == [(21, 3, b"21@3"), (22, 3, b"22@3")]
        assert storage.initial_state() == HardState(3, 0, 20)


@pytest.mark.parametrize("term_at_snapshot", [1, 2])
def test_interrupted_install_drops_a_log_that_does_not_continue_the_snapshot(
        disk: DiskStorage, term_at_snapshot: int) -> None:
    disk.persist(Ready(entries=entries(1, 6, 1), hard_state=HardState(1, 0, 1), must_sync=True))
    # Crash after the snapshot file was written, before the log was rewritten:
    atomic_write(disk.directory / SNAPSHOT_NAME,
                 msgpack.packb([4, term_at_snapshot, [1, 2, 3], b"s"]))
    again = reopen(disk)
    assert again.snapshot().index == 4
    if term_at_snapshot == 1:  # our entry 4 is the snapshot's: the tail continues it
        assert [i for i, _t, _d in stored(again)] == [5, 6]
    else:  # it is not: the old tail is dropped
        assert stored(again) == [] and again.last_index() == 4


def test_torn_tail_is_dropped(disk: DiskStorage) -> None:
    disk.persist(Ready(entries=entries(1, 3, 1), must_sync=True))
    disk.persist(Ready(entries=entries(4, 4, 1), must_sync=True))
    disk.close()
    log_path = disk.directory / LOG_NAME
    with open(log_path, "r+b") as f:
        f.truncate(log_path.stat().st_size - 3)
    assert DiskStorage.open(disk.directory).last_index() == 3


def test_cluster_on_disk_restarts_from_its_files(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"n{i}").mkdir()
    disks = {i: DiskStorage.open(tmp_path / f"n{i}") for i in (1, 2, 3)}
    net = InMemoryNetwork(storages=dict(disks), pre_vote=True, check_quorum=True)
    leader = net.elect(1)
    for k in range(20):
        net.propose(1, b"v%d" % k)
    follower = disks[2]
    snap_index = net.nodes[2].applied
    follower.create_snapshot(snap_index, net.nodes[2].voters_at(snap_index), b"app-state")
    follower.compact(snap_index - 2)
    net.crash(2)
    follower.close()
    net.propose(1, b"while down")
    restarted = net.start(2, (1, 2, 3), DiskStorage.open(tmp_path / "n2"))
    assert restarted.term == leader.term and restarted.applied == snap_index
    net.applied[2].clear()
    net.tick(1)
    assert net.data_applied(2)[-1] == b"while down"
    assert restarted.log.last_index() == leader.log.last_index()
    assert leader.role is Role.LEADER
