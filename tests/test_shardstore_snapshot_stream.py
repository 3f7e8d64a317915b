"""A shard's Raft snapshot streams out of its engine and into a fresh one, a piece at a time.

The shard machine's `snapshot()` is a core StreamedSnapshot over the engine's dump (values
read from the data files in key order); core writes it to a Raft snapshot file through a
SnapshotWriter, and `restore` reads it back from a SnapshotReader into a new engine
generation. The largest snapshot buffer held (core's SNAPSHOT_BUFFERS) stays near one
engine piece while the state is several times larger; nothing is timed.
"""

from __future__ import annotations

from pathlib import Path

from core.raft import EntryType, HardState, Ready
from core.raft.disk import DiskStorage
from core.raft.messages import Entry
from core.raft.snapshot_file import SnapshotFile, open_reader
from core.raft.snapshot_hooks import StreamedSnapshot, fill_driver_data, open_driver_data
from core.raft.snapshot_source import SNAPSHOT_BUFFERS
from shardstore import commands
from shardstore.engine.snapshot import PIECE_TARGET_BYTES
from shardstore.machine import encode_command
from tests.shardstore_procs import engine_shard

KEYS = 3000
VALUE_BYTES = 2000  # about 6 MB of values: six engine pieces or more
BOUND = PIECE_TARGET_BYTES + 64 * 1024  # a piece is cut after the entry that passes the target


def _value(k: int) -> bytes:
    return (b"%06d" % k) * (VALUE_BYTES // 6)


def test_a_shard_snapshot_is_written_and_restored_a_piece_at_a_time(tmp_path: Path) -> None:
    source = engine_shard(tmp_path / "source")
    batch = [(k + 1, encode_command(0, [b"SET", b"key:%06d" % k, _value(k)]))
             for k in range(KEYS)]
    for start in range(0, KEYS, 500):
        source.apply(batch[start:start + 500])
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    disk = DiskStorage.open(raft_dir)
    disk.persist(Ready(entries=tuple(Entry(i, 1, EntryType.NORMAL, b"") for i in
                                     range(1, KEYS + 1)),
                       hard_state=HardState(1, 1, KEYS), must_sync=True))

    SNAPSHOT_BUFFERS.reset()
    out = source.snapshot()
    assert isinstance(out, StreamedSnapshot)
    try:
        snap = disk.create_snapshot_from(KEYS, (1,), fill_driver_data({}, out))
    finally:
        out.release()
    data = snap.data
    assert isinstance(data, SnapshotFile) and data.size > 5 * PIECE_TARGET_BYTES
    written_peak = SNAPSHOT_BUFFERS.peak
    assert 0 < written_peak <= BOUND, written_peak

    SNAPSHOT_BUFFERS.reset()
    target = engine_shard(tmp_path / "target")
    book, reader = open_driver_data(open_reader(data))
    with reader:
        assert book == {}
        target.restore(reader)
    assert 0 < SNAPSHOT_BUFFERS.peak <= BOUND, SNAPSHOT_BUFFERS.peak
    assert target.engine.applied_index == KEYS and target.engine.count() == KEYS
    for k in (0, 1234, KEYS - 1):
        assert commands.execute_read(target.engine, 0, [b"GET", b"key:%06d" % k]) == _value(k)
    disk.close()
    source.engine.close()
    target.engine.close()


def test_the_streamed_snapshot_called_as_a_blob_restores_the_same(tmp_path: Path) -> None:
    source = engine_shard(tmp_path / "source")
    source.apply([(1, encode_command(0, [b"MSET", b"a", b"1", b"b", b"2"]))])
    blob = source.snapshot()()
    target = engine_shard(tmp_path / "target")
    target.restore(blob)
    assert [k for k, _, _ in target.engine.scan()] == [b"a", b"b"]
    source.engine.close()
    target.engine.close()
