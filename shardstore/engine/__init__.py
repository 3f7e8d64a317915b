"""The shardstore storage engine: one shard replica's durable key-value store.

Bitcask-like: append-only segment files of checksummed frames on disk, a keydir of positions
(ordered, for range scans) in memory, background compaction, streamed snapshots. engine.py
states the strategy; everything public is re-exported here.

The contract of issue 12's shared plan, as built (additions and precisions marked +):
- `Engine.open(directory, *, fsync="always"|"everysec"|"no", max_segment_bytes, file_layer)`
  + `compact_dead_ratio`, `compact_min_dead_bytes`, `background_compaction` (default True).
  The directory must exist; the caller holds its lock.
- `get`, `write(batch, applied_index=None)`, `sync`, `applied_index`, `scan`, `count`,
  `keys_after`, `stats`, `close` as agreed. + `keys_after(cursor, limit)` returns keys
  strictly after `cursor`, so the empty key is never returned (callers check `get(b"")`).
  + Reads after `close` raise EngineError. + `write(..., sync=False)` skips the fsync of
  "always" so a caller can group several writes under one `sync()` (group commit).
- `dump()` returns a `SnapshotReader`: an iterator of pieces with `close()` (also on
  exhaustion or garbage collection) that releases the segments it pins.
- `Engine.load(directory, pieces, applied_index, **open_options)` is a classmethod: close
  the old engine first; it returns the new one, open. A crash midway leaves the old contents.
- `compact(dead_ratio=None)`: + with a ratio, only segments at least that dead.
- Errors: `EngineError` (base), `CorruptStore` (path, offset), and + `StorageFailed` for a
  failed write/fsync (also a core.storage.FatalStorageError): the engine refuses writes.
- + `shardstore.engine.powercut.PowerCutFiles`: the file layer for power-cut tests.
"""

from shardstore.engine.engine import FSYNC_MODES, Batch, Engine
from shardstore.engine.errors import CorruptStore, EngineError, StorageFailed
from shardstore.engine.files import FileLayer, OsFiles
from shardstore.engine.snapshot import SnapshotReader

__all__ = [
    "FSYNC_MODES",
    "Batch",
    "CorruptStore",
    "Engine",
    "EngineError",
    "FileLayer",
    "OsFiles",
    "SnapshotReader",
    "StorageFailed",
]
