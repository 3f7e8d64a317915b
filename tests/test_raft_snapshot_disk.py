"""Raft snapshots on disk: written, sent, received and restored in bounded chunks.

A state machine that streams (core/raft/snapshot_hooks.py's StreamedSnapshot and
`restores_from_reader`) writes its snapshot through a SnapshotWriter, a leader sends it
from the file, a new follower receives it into a file and restores from a reader. Memory is
checked on `SNAPSHOT_BUFFERS`, the largest buffer any snapshot reader, writer or receiver
held (never on RSS or time); a machine that returns one blob is the contrast. A crash
while a snapshot is written (an error in the machine's writing, or SIGKILL) leaves the
previous snapshot usable, and a flipped byte fails the digest. The snapshot file's header
and the driver's data format are fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.raft import EntryType, HardState, Ready
from core.raft.disk import SNAPSHOT_NAME, DiskStorage
from core.raft.errors import RaftError
from core.raft.host import HostConfig, RaftHost
from core.raft.messages import Entry
from core.raft.snapshot_file import (
    SnapshotFile,
    SnapshotFormatError,
    SnapshotReader,
    SnapshotSink,
    data_bytes,
    open_reader,
)
from core.raft.snapshot_hooks import (
    DATA_MAGIC,
    StreamedSnapshot,
    open_driver_data,
    restores_from_reader,
)
from core.raft.snapshot_source import SNAPSHOT_BUFFERS, FileSource, read_file_header
from core.raft.snapshot_wire import DEFAULT_CHUNK_BYTES
from tests.conftest import find_free_port

SECRET = "snapshot disk secret"
HANG_S = 30.0
VALUE_BYTES = 64 * 1024
ENTRIES = 100  # 100 x 64 KiB; a snapshot at 80 entries is five chunks
ROOT = Path(__file__).resolve().parent.parent


class Records:
    """Each entry appends its bytes; the snapshot streams them one record at a time."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.largest_read = 0

    def apply(self, entries: Any) -> list[int]:
        for _, data in entries:
            self.items.append(data)
        return [len(self.items)] * len(entries)

    def snapshot(self) -> StreamedSnapshot:
        items = list(self.items)  # the view: the list is shared, the values are not copied

        def write(out: SnapshotSink) -> None:
            for item in items:
                out.write(len(item).to_bytes(4, "big"))
                out.write(item)

        return StreamedSnapshot(write)

    @restores_from_reader
    def restore(self, reader: SnapshotReader) -> None:
        self.items = []
        while reader.remaining:
            item = reader.read_exact(int.from_bytes(reader.read_exact(4), "big"))
            self.largest_read = max(self.largest_read, len(item))
            self.items.append(item)


class Blob(Records):
    """The same state, as a machine that returns one blob and restores from bytes."""

    def snapshot(self) -> bytes:  # type: ignore[override]
        return msgpack.packb(self.items)

    def restore(self, blob: bytes) -> None:  # type: ignore[override]
        self.items = msgpack.unpackb(blob)


async def until(predicate: Any, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_S
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def _host(tmp: Path, i: int, book: dict[int, tuple[str, int]]) -> RaftHost:
    return RaftHost(HostConfig(node_id=i, data_dir=tmp / f"n{i}", listen=book[i], peers=book,
                               secret=SECRET, tick_s=0.01, election_tick=10,
                               heartbeat_tick=2))


async def _stream_to_a_new_follower(tmp: Path, kind: type[Records]) -> tuple[int, int]:
    """Two voters take a snapshot of ENTRIES values and compact; a third host, new, joins
    and can only catch up from the snapshot, over the real transport. Returns (the
    snapshot's size, the largest snapshot buffer held meanwhile)."""
    book = {i: ("127.0.0.1", find_free_port()) for i in (1, 2, 3)}
    options = {"snapshot_every": 40, "compaction_margin": 0}
    hosts: dict[int, RaftHost] = {}
    machines: dict[int, Records] = {}
    try:
        for i in (1, 2):
            hosts[i] = _host(tmp, i, book)
            await hosts[i].start()
            machines[i] = kind()
            hosts[i].create_group(1, hosts[i].group_config(1, founders=(1, 2, 3), seed=i,
                                                           **options),
                                  machines[i].apply, machines[i].snapshot, machines[i].restore)
        SNAPSHOT_BUFFERS.reset()
        leader = await until(lambda: next((h for h in hosts.values()
                                           if h.groups[1].node is not None
                                           and h.groups[1].node.role.value == "leader"), None),
                             "a leader")
        for k in range(ENTRIES):
            await leader.groups[1].execute(bytes([k]) * VALUE_BYTES, forward=True)
        group = leader.groups[1]
        await until(lambda: group.storage is not None and group.storage.first_index() > 2,
                    "the leader compacting its log")
        hosts[3] = _host(tmp, 3, book)
        await hosts[3].start()
        machines[3] = kind()
        replica = hosts[3].create_group(1, hosts[3].group_config(1, founders=(1, 2, 3),
                                                                 **options),
                                        machines[3].apply, machines[3].snapshot,
                                        machines[3].restore)
        await until(lambda: len(machines[3].items) == ENTRIES, "the new follower catching up")
        assert machines[3].items == machines[leader.node_id].items
        assert replica.status()["snapshots_received"] == 1
        assert replica.storage is not None
        received = replica.storage.snapshot().data
        assert isinstance(received, SnapshotFile) and received.path.name == SNAPSHOT_NAME
        assert not list((tmp / "n3").rglob("*incoming*"))
        assert group.storage is not None
        size = group.storage.snapshot().data.size  # type: ignore[union-attr]
        return size, SNAPSHOT_BUFFERS.peak
    finally:
        for host in hosts.values():
            await host.stop(transfer=False)


def test_a_streamed_snapshot_reaches_a_new_follower_with_memory_bounded_by_a_chunk(
        tmp_path: Path) -> None:
    size, peak = asyncio.run(asyncio.wait_for(_stream_to_a_new_follower(tmp_path, Records),
                                              90))
    assert size > 4 * DEFAULT_CHUNK_BYTES
    assert 0 < peak <= DEFAULT_CHUNK_BYTES, (peak, size)


def test_a_blob_machine_still_works_through_the_adapter_and_holds_its_whole_state(
        tmp_path: Path) -> None:
    size, peak = asyncio.run(asyncio.wait_for(_stream_to_a_new_follower(tmp_path, Blob), 90))
    assert peak >= size - 1024  # the contrast: the blob is one buffer as large as it all
    assert size > 4 * DEFAULT_CHUNK_BYTES


# -- a crash while a snapshot is written ------------------------------------------------------


def _storage_with_a_snapshot(directory: Path) -> DiskStorage:
    disk = DiskStorage.open(directory)
    entries = tuple(Entry(i, 1, EntryType.NORMAL, b"%d" % i) for i in range(1, 21))
    disk.persist(Ready(entries=entries, hard_state=HardState(1, 1, 20), must_sync=True))
    disk.create_snapshot(8, (1, 2, 3), b"the state at 8" * 1000)
    return disk


def _assert_the_snapshot_at_8(directory: Path) -> None:
    disk = DiskStorage.open(directory)
    try:
        snap = disk.snapshot()
        assert (snap.index, snap.term, snap.voters) == (8, 1, (1, 2, 3))
        assert data_bytes(snap.data) == b"the state at 8" * 1000
        assert disk.last_index() == 20
    finally:
        disk.close()
    assert not [p for p in directory.iterdir() if ".tmp." in p.name]


def test_an_error_while_the_machine_writes_leaves_the_previous_snapshot(
        tmp_path: Path) -> None:
    disk = _storage_with_a_snapshot(tmp_path)

    def fails(out: SnapshotSink) -> None:
        out.write(b"x" * (3 * DEFAULT_CHUNK_BYTES))
        raise RuntimeError("the machine failed halfway")

    with pytest.raises(RuntimeError):
        disk.create_snapshot_from(15, (1, 2, 3), fails)
    assert disk.snapshot().index == 8
    disk.close()
    _assert_the_snapshot_at_8(tmp_path)


CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_raft_snapshot_disk import _storage_with_a_snapshot
disk = _storage_with_a_snapshot(Path({directory!r}))

def endless(out):
    for k in range(10**6):
        out.write(b"y" * 65536)
        if k == 64:
            print("writing", flush=True)
    time.sleep(60)

disk.create_snapshot_from(15, (1, 2, 3), endless)
"""


def test_sigkill_while_a_snapshot_is_written_leaves_the_previous_one(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), directory=str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        time.sleep(0.05)
        assert [p for p in tmp_path.iterdir() if ".tmp." in p.name]  # a temp file, half full
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    _assert_the_snapshot_at_8(tmp_path)  # the open removes the temp file


# -- the file header, fuzzed -------------------------------------------------------------------


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_bytes_as_a_snapshot_file_are_read_or_refused_clearly(tmp_path: Path,
                                                                  raw: bytes) -> None:
    path = tmp_path / "fuzzed.snapshot"
    path.write_bytes(raw)
    source = FileSource(path)
    try:
        header = read_file_header(source)
    except (ValueError, OSError):
        return
    finally:
        source.close()
    assert header.offset + header.size <= len(raw)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**63), st.integers(0, 2**63),
       st.lists(st.integers(0, 2**64 - 1), max_size=9), st.binary(max_size=3000))
def test_a_written_snapshot_file_reads_back(tmp_path: Path, index: int, term: int,
                                            voters: list[int], data: bytes) -> None:
    from core.raft.snapshot_file import open_snapshot_file, write_snapshot_file
    path = tmp_path / "written.snapshot"
    written = write_snapshot_file(path, index, term, tuple(voters),
                                  lambda out: out.write(data), chunk_bytes=1000)
    found = open_snapshot_file(path)
    assert found is not None
    handle, stored_voters = found
    assert handle == written and stored_voters == tuple(voters)
    assert data_bytes(handle) == data


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=300).map(lambda b: DATA_MAGIC + b)))
def test_any_bytes_as_driver_data_decode_or_raise_the_raft_error(raw: bytes) -> None:
    try:
        book, rest = open_driver_data(open_reader(raw))
    except RaftError:
        return
    assert isinstance(book, dict) and rest.remaining >= 0


def test_a_flipped_byte_in_a_snapshot_file_fails_its_digest_when_read(tmp_path: Path) -> None:
    disk = _storage_with_a_snapshot(tmp_path)
    data = disk.snapshot().data
    disk.close()
    assert isinstance(data, SnapshotFile)
    with open(data.path, "r+b") as f:
        f.seek(data.offset + 100)
        byte = f.read(1)
        f.seek(data.offset + 100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SnapshotFormatError):
        data.read_all()


class _Reports:
    """Stands for the leader's Node: records what the transfers report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, bool]] = []

    def report_snapshot(self, to: int, ok: bool) -> None:
        self.reports.append((to, ok))


def test_a_snapshot_file_replaced_before_its_stream_starts_fails_that_stream(
        tmp_path: Path) -> None:
    """The Node asked to send snapshot 8, but a newer one took its file meanwhile: the
    stream fails at once (the Node then sends the newer one), nothing wrong is sent."""
    from core.raft.group_snapshots import SnapshotTransfers
    from core.raft.messages import SnapshotRequest
    disk = _storage_with_a_snapshot(tmp_path)
    old = disk.snapshot()
    disk.create_snapshot(15, (1, 2, 3), b"newer")
    transfers = SnapshotTransfers(tmp_path, 1)
    transfers.start(SnapshotRequest(frm=1, to=2, term=1, snapshot=old))
    node = _Reports()
    assert transfers.drain(node) == []  # type: ignore[arg-type]
    assert node.reports == [(2, False)]
    transfers.start(SnapshotRequest(frm=1, to=2, term=1, snapshot=disk.snapshot()))
    [chunk] = [payload for _, payload in transfers.drain(node)]  # type: ignore[arg-type]
    assert chunk["index"] == 15 and chunk["data"].endswith(b"newer")
    transfers.close()
    disk.close()
