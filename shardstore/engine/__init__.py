"""The shardstore storage engine: one shard replica's durable key-value store.

Bitcask-like: append-only segment files of checksummed frames on disk, a keydir of positions
(ordered, for range scans) in memory, background compaction, streamed snapshots. See
engine.py for the strategy and the contract; everything public is re-exported here.
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
