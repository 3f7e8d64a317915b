"""The dfs data path's sans-I/O parts and its disk store, without processes: the frame
parser (hypothesis: any split of a valid stream gives the same frames; garbage raises
FrameError, never anything else), the chunk store (checksums per block, damage detected on
read, crash leftovers cleaned, stale versions dropped, its index reported while another
thread installs replicas), the chunk table (allocation,
version bumps, complete, forget, snapshots) and the leader's placement (racks, safe mode,
orphans and stale replicas deleted, re-replication fewest-first).
"""

from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path

import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs import chunk_store
from dfs import chunk_wire as wire
from dfs import chunks as ct
from dfs import namespace as ns
from dfs.chunk_placement import Placement
from dfs.chunk_store import BLOCK_BYTES, ChecksumError, ChunkStore, Replica
from dfs.chunks import ChunkTable, MasterMachine
from dfs.namespace import Namespace

# -- framing ------------------------------------------------------------------------------------

headers = st.dictionaries(st.sampled_from(["op", "chunk", "version", "x"]),
                          st.one_of(st.integers(0, 2**40), st.text(max_size=8)), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(headers, st.binary(max_size=300)), max_size=5), st.data())
def test_frames_survive_any_split(frames: list[tuple[dict, bytes]], data: st.DataObject) -> None:
    stream = b"".join(b"".join(wire.encode_frame(h, p)) for h, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = wire.FrameReader()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed(stream[start:end])
        while (frame := reader.next_frame()) is not None:
            got.append((frame.header, frame.payload))
    assert [(p, {k: v for k, v in h.items() if k != "len"}) for h, p in got] == \
        [(p, {k: v for k, v in h.items() if k != "len"}) for h, p in frames]
    assert reader.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_frame_error_only(garbage: bytes) -> None:
    reader = wire.FrameReader(max_header=128, max_payload=1024)
    reader.feed(garbage)
    try:
        while reader.next_frame() is not None:
            pass
    except wire.FrameError:
        pass


def test_frame_limits_are_checked_before_reading() -> None:
    reader = wire.FrameReader(max_payload=10)
    reader.feed(b"".join(wire.encode_frame({"op": "data"}, b"x" * 11)))
    with pytest.raises(wire.FrameError, match="over the limit"):
        reader.next_frame()
    reader = wire.FrameReader(max_header=8)
    reader.feed(b"\x00\x00\x01\x00")
    with pytest.raises(wire.FrameError, match="over the limit"):
        reader.next_frame()
    reader = wire.FrameReader()
    reader.feed(b"\x00\x00\x00\x01\x05")  # a msgpack int, not a map
    with pytest.raises(wire.FrameError, match="not a map"):
        reader.next_frame()


# -- the store ----------------------------------------------------------------------------------

def _write(store: ChunkStore, chunk: int, version: int, data: bytes) -> None:
    writer = store.writer(chunk, version)
    for i in range(0, len(data), 10_000):
        writer.write(data[i:i + 10_000])
    writer.finish(len(data), xxhash.xxh3_64_intdigest(data))


def test_store_reads_back_and_checks_every_block(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path).open()
    data = os.urandom(3 * BLOCK_BYTES + 123)
    _write(store, 7, 1, data)
    assert store.read(7, 0, len(data)) == data
    assert store.read(7, BLOCK_BYTES - 5, 10) == data[BLOCK_BYTES - 5:BLOCK_BYTES + 5]
    assert store.report() == [[7, 1, len(data)]]
    path = store.dir / "7_1.data"
    raw = bytearray(path.read_bytes())
    raw[2 * BLOCK_BYTES + 9] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert store.read(7, 0, BLOCK_BYTES) == data[:BLOCK_BYTES]  # other blocks are fine
    with pytest.raises(ChecksumError) as info:
        store.read(7, 2 * BLOCK_BYTES, 1)
    assert info.value.block == 2
    assert not store.verify(7)
    reopened = ChunkStore(tmp_path).open()  # the index comes back from the meta files
    assert reopened.report() == [[7, 1, len(data)]]


def test_a_replica_with_xxh64_block_sums_from_before_still_reads(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path).open()
    data = os.urandom(2 * BLOCK_BYTES + 5)
    _write(store, 8, 3, data)
    meta = store.dir / "8_3.meta"
    assert msgpack.unpackb(meta.read_bytes())[3] == "xxh3"  # new replicas name theirs
    old_sums = [xxhash.xxh64_intdigest(data[i:i + BLOCK_BYTES])
                for i in range(0, len(data), BLOCK_BYTES)]
    meta.write_bytes(msgpack.packb([3, len(data), old_sums]))  # the format before names
    reopened = ChunkStore(tmp_path).open()
    assert reopened.read(8, 0, len(data)) == data
    path = reopened.dir / "8_3.data"
    raw = bytearray(path.read_bytes())
    raw[BLOCK_BYTES + 1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError):
        reopened.read(8, BLOCK_BYTES, 10)


def test_the_index_is_reported_while_a_thread_installs_replicas(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy's `finish` installs its replica on a worker thread while the event loop builds
    the heartbeat's report: that must never see the index change under it."""
    store = ChunkStore(tmp_path).open()
    for name in ("atomic_write", "fsync_dir"):  # only the index matters here, not the disk
        monkeypatch.setattr(chunk_store, name, lambda *args: None)
    monkeypatch.setattr(os, "replace", lambda *args: None)
    count = 5_000

    def install() -> None:
        for chunk in range(count):
            store._install(Replica(chunk, 1, 1, [0]), tmp_path / "part")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        thread = threading.Thread(target=install)
        thread.start()
        while thread.is_alive():
            store.report(), store.used(), list(store.iter_chunks())
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(store.report()) == count and store.used() == count


def test_store_refuses_a_damaged_arrival_and_cleans_up(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path).open()
    writer = store.writer(1, 1)
    writer.write(b"abc")
    with pytest.raises(ValueError, match="digest"):
        writer.finish(3, 12345)
    with pytest.raises(ValueError, match="3 bytes"):
        other = store.writer(1, 1)
        other.write(b"abc")
        other.finish(4, xxhash.xxh3_64_intdigest(b"abc"))
    assert store.report() == [] and list(store.dir.iterdir()) == []
    (store.dir / "9_1.part").write_bytes(b"half")  # a crash mid-write
    (store.dir / "8_1.data").write_bytes(b"no meta")
    _write(store, 5, 1, b"old")
    _write(store, 5, 2, b"new")  # a newer version replaces the old one
    reopened = ChunkStore(tmp_path).open()
    assert reopened.report() == [[5, 2, 3]] and reopened.read(5, 0, 3) == b"new"
    assert sorted(p.name for p in reopened.dir.iterdir()) == ["5_2.data", "5_2.meta"]


# -- the chunk table ----------------------------------------------------------------------------

def _machine() -> MasterMachine:
    namespace = Namespace()
    return MasterMachine(namespace, ChunkTable(namespace))


def _apply(machine: MasterMachine, entry: bytes) -> object:
    return machine.apply([(1, entry)])[0]


def test_chunk_table_allocates_bumps_completes_and_forgets() -> None:
    m = _machine()
    assert _apply(m, ns.encode_create(5, "/f")) is None
    assert _apply(m, ct.encode_alloc(6, "/f", 0)) == [1, 1]
    assert _apply(m, ct.encode_alloc(6, "/f", 1)) == [2, 1]
    assert _apply(m, ct.encode_alloc(7, "/f", 0)) == [1, 2]  # a retried chunk: new version
    assert _apply(m, ct.encode_alloc(7, "/f", 5)) == ct.ERR_BAD_INDEX.format("/f", 2, 5)
    assert _apply(m, ct.encode_complete(8, "/f", [10])) == ct.ERR_SIZES.format("/f", 2, 1)
    assert _apply(m, ct.encode_complete(8, "/f", [10, 4])) == 14
    assert _apply(m, ct.encode_alloc(9, "/f", 2)) == ct.ERR_COMPLETE.format("/f")
    assert m.namespace.stat("/f")["size"] == 14
    assert _apply(m, ct.encode_alloc(9, "/", 0)) == ns.ERR_IS_DIR.format("/")
    copy = _machine()
    copy.restore(m.snapshot())
    assert copy.table.snapshot() == m.table.snapshot()
    assert ct.dead_inodes(m.table) == []
    _apply(m, ns.encode_delete(10, "/f", False, 0))
    assert ct.dead_inodes(m.table) == []  # in the trash: still live
    _apply(m, ns.encode_purge(11))
    inode = next(iter(m.table.files))
    assert ct.dead_inodes(m.table) == [inode]
    assert _apply(m, ct.encode_forget(12, [inode])) == 2
    assert m.table.chunks == {} and m.table.next_chunk == 3


def test_a_snapshot_from_before_the_chunk_table_restores() -> None:
    namespace = Namespace()
    namespace.apply([(1, ns.encode_mkdir(1, "/d", False))])
    m = _machine()
    m.restore(namespace.snapshot())
    assert m.namespace.ls("/") == ["d/"] and m.table.files == {}


# -- placement ----------------------------------------------------------------------------------

def _report(sid: str, rack: str, chunks: list[list[int]]) -> dict:
    return {"id": sid, "addr": f"{sid}:1", "rack": rack, "free": 10**9, "used": 0,
            "chunks": chunks}


def test_placement_racks_safe_mode_orphans_and_re_replication() -> None:
    m = _machine()
    for entry in (ns.encode_create(1, "/f"), ct.encode_alloc(1, "/f", 0),
                  ct.encode_alloc(1, "/f", 1), ct.encode_complete(1, "/f", [5, 5])):
        _apply(m, entry)
    p = Placement(m.table, random.Random(1), min_servers=2)
    assert p.safe
    p.heartbeat(0.0, _report("a", "r1", [[1, 1, 5]]))
    assert p.safe and "1 of 2" in p.safe_mode_text()
    reply = p.heartbeat(0.0, _report("b", "r1", [[1, 1, 5], [2, 1, 5], [99, 1, 1]]))
    assert not p.safe
    assert reply == {"delete": [], "copy": []}  # chunk 99 is beyond the log: left be
    _apply(m, ct.encode_forget(2, []))
    reply = p.heartbeat(0.0, _report("c", "r2", [[7, 1, 5]]))  # 7 < next_chunk: an orphan?
    assert reply["delete"] == []  # (7 >= next_chunk 3: unknown, kept)
    p.heartbeat(0.0, _report("d", "r3", []))
    assert p.under_replicated() == [(2, 1), (1, 2)]  # the most endangered first
    assert p.plan(0.0) == 3  # as many copies as replicas are missing, at once
    copies = [c for s in p.servers.values() for c in s.copies]
    assert sorted(c[0] for c in copies) == [1, 2, 2]
    assert {c[2] for c in copies if c[0] == 2} == {"c:1", "d:1"}
    assert all(c[2] in ("c:1", "d:1") for c in copies)  # another rack than r1
    assert p.plan(1.0) == 0  # in flight: not asked again
    servers = p.grant(0.0, 3)
    assert len(servers) == 3 and len({p.servers[s.split(":")[0]].rack for s in servers}) == 3
    assert p.expire(100.0) == ["a", "b", "c", "d"]
    m.table.chunks[1].version = 2  # a newer lease: the old replica is stale
    assert p.heartbeat(100.0, _report("a", "r1", [[1, 1, 5], [2, 1, 5]]))["delete"] == [1]
    _apply(m, ns.encode_delete(3, "/f", False, 0))
    _apply(m, ns.encode_purge(4))
    _apply(m, ct.encode_forget(5, ct.dead_inodes(m.table)))
    assert p.heartbeat(101.0, _report("a", "r1", [[2, 1, 5]]))["delete"] == [2]  # an orphan


def test_a_copy_to_a_server_that_died_is_handed_out_again_at_once() -> None:
    m = _machine()
    for entry in (ns.encode_create(1, "/f"), ct.encode_alloc(1, "/f", 0),
                  ct.encode_complete(1, "/f", [5])):
        _apply(m, entry)
    p = Placement(m.table, random.Random(1), replication=2, dead_after_s=10)
    p.heartbeat(0.0, _report("a", "r1", [[1, 1, 5]]))
    p.heartbeat(0.0, _report("b", "r2", []))
    assert p.plan(0.0) == 1 and p.servers["a"].copies == [[1, 1, "b:1"]]
    p.heartbeat(5.0, _report("a", "r1", [[1, 1, 5]]))  # the order went out; b dies
    p.heartbeat(5.0, _report("c", "r3", []))
    assert p.plan(6.0) == 0  # the copy to b is in flight (copy_timeout_s is 30 s)
    assert p.expire(12.0) == ["b"]
    assert p.plan(12.0) == 1 and p.servers["a"].copies == [[1, 1, "c:1"]]


def test_abandoned_writes_are_found_after_their_writer_is_silent() -> None:
    m = _machine()
    for entry in (ns.encode_mkdir(1, "/d", False), ns.encode_create(1, "/d/a.1._COPYING_"),
                  ns.encode_create(1, "/d/b.2._COPYING_"), ns.encode_create(1, "/d/plain"),
                  ct.encode_alloc(1, "/d/b.2._COPYING_", 0),
                  ct.encode_complete(1, "/d/b.2._COPYING_", [3])):
        _apply(m, entry)
    writing = ct.writing_files(m.table)
    assert [path for path, _ in writing] == ["/d/a.1._COPYING_"]  # b is complete: renaming
    p = Placement(m.table, random.Random(0), abandon_after_s=10)
    assert p.abandoned(writing, 100.0) == []  # first seen now
    p.touch(writing[0][1], 105.0)  # its writer called
    assert p.abandoned(writing, 114.0) == []
    assert p.abandoned(writing, 115.5) == ["/d/a.1._COPYING_"]
    assert p.abandoned([], 200.0) == [] and p.activity == {}
