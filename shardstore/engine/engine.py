"""The shard storage engine: Bitcask-like segments on disk, a keydir of positions in memory.

Strategy:
- Every `write` batch becomes one checksummed frame appended to the active segment
  (records.py), followed by one fsync with fsync="always"; only then does the keydir change,
  so a reader never sees a write that is not on disk. The applied index travels in the frame.
- The keydir maps key -> (segment, value offset, value length, expire, seq): keys and
  positions in memory, values on disk (one pread per get). It is ordered (keydir.py: packed
  sorted runs plus a small delta), so scans and SCAN cursors walk keys in order without a
  second index, in a few tens of bytes per key beyond the key itself.
- Opening rebuilds the keydir from the hint files of compaction outputs (hints.py) and by
  scanning the other segments (segments.py): a torn tail of the newest written segment is
  truncated, any other bad frame refuses to open (CorruptStore).
- Compaction (compaction.py) rewrites sealed segments with many dead bytes in a background
  thread and swaps keydir entries under the lock only where they still point at the old copy,
  so a write racing it always wins. Dumps (snapshot.py) freeze the keydir and pin segments.
- An OSError from a write, fsync, rename or unlink fails the engine for good (StorageFailed);
  later writes raise it again without touching the disk. Reads keep working.

Thread-safety: every public method takes one lock; the compaction thread takes it only for
short steps. The directory lock (core.storage.DataDirLock) is the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from shardstore.engine.compaction import (
    Background,
    compact_all,
    maybe_start_background,
    stop_background,
)
from shardstore.engine.errors import EngineError, StorageFailed
from shardstore.engine.files import FileLayer, OsFiles
from shardstore.engine.keydir import Keydir
from shardstore.engine.records import encode_frame, entry_bytes
from shardstore.engine.segments import (
    KIND_WRITTEN,
    Location,
    Segment,
    read_generation,
    recover,
    remove_other_generations,
    segment_path,
)
from shardstore.engine.snapshot import dump_pieces, load_generation

__all__ = ["FSYNC_MODES", "Batch", "Engine"]

FSYNC_ALWAYS = "always"
FSYNC_EVERYSEC = "everysec"
FSYNC_NO = "no"
FSYNC_MODES = (FSYNC_ALWAYS, FSYNC_EVERYSEC, FSYNC_NO)
DEFAULT_MAX_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_DEAD_RATIO = 0.5
DEFAULT_COMPACT_MIN_DEAD_BYTES = 4 * 1024 * 1024
NO_EXPIRY = 0
COMPACT_CHECK_EVERY = 64  # writes between two looks at the dead bytes (a sum over segments)

Batch = Sequence[tuple[bytes, bytes | None, int]]
T = TypeVar("T")


class Engine:
    """One shard replica's key-value store; see the module header. Open with `Engine.open`.

    Values are opaque bytes; expire_at_ms is stored, never judged (0 = no expiry).
    """

    def __init__(self, directory: Path, gen: int, layer: FileLayer, *,
                 fsync: str = FSYNC_ALWAYS,
                 max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
                 compact_dead_ratio: float = DEFAULT_COMPACT_DEAD_RATIO,
                 compact_min_dead_bytes: int = DEFAULT_COMPACT_MIN_DEAD_BYTES,
                 background_compaction: bool = True) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        if max_segment_bytes <= 0 or not 0 < compact_dead_ratio <= 1:
            raise ValueError("max_segment_bytes must be positive, compact_dead_ratio in (0, 1]")
        self.directory = directory
        self.gen = gen
        self.layer = layer
        self.fsync_mode = fsync
        self.max_segment_bytes = max_segment_bytes
        self.compact_dead_ratio = compact_dead_ratio
        self.compact_min_dead_bytes = compact_min_dead_bytes
        self.background_compaction = background_compaction
        self.lock = threading.RLock()
        self.segments: dict[int, Segment] = {}
        self.keydir = Keydir()
        self.active: Segment | None = None
        self.next_seq = 1
        self.next_segment_id = 1
        self._applied_index = 0
        self._dirty = False
        self._writes_unchecked = 0
        self._failure: StorageFailed | None = None
        self._closed = False
        self.counters = {"compactions": 0, "fsyncs": 0}
        self.compactor: Background | None = None  # the compaction thread, started lazily
        self.compaction_mutex = threading.Lock()  # one compaction at a time
        self.compact_floor = 0  # dead bytes left by the last compaction (kept tombstones)

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, fsync: str = FSYNC_ALWAYS,
             max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
             file_layer: FileLayer | None = None,
             compact_dead_ratio: float = DEFAULT_COMPACT_DEAD_RATIO,
             compact_min_dead_bytes: int = DEFAULT_COMPACT_MIN_DEAD_BYTES,
             background_compaction: bool = True) -> Engine:
        """Open the store in `directory` (which must exist; the caller holds its lock).

        Rebuilds the keydir from the segments, truncating a torn tail of the newest one.
        Raises CorruptStore on corruption anywhere else, StorageFailed if a repair fails.
        `background_compaction` starts a thread when the dead bytes pass the ratio and the
        minimum; with False compaction runs only when `compact()` is called.
        """
        layer = file_layer if file_layer is not None else OsFiles()
        directory = Path(directory)
        gen = read_generation(layer, directory)
        remove_other_generations(layer, directory, gen)
        return cls.open_generation(directory, gen, layer, fsync=fsync,
                                   max_segment_bytes=max_segment_bytes,
                                   compact_dead_ratio=compact_dead_ratio,
                                   compact_min_dead_bytes=compact_min_dead_bytes,
                                   background_compaction=background_compaction)

    @classmethod
    def open_generation(cls, directory: Path, gen: int, layer: FileLayer,
                        **options: object) -> Engine:
        """Open generation `gen` as it is on disk, deleting nothing (for snapshot restore)."""
        engine = cls(directory, gen, layer, **options)  # type: ignore[arg-type]
        state = recover(layer, directory, gen)
        engine.segments = state.segments
        engine.keydir = state.keydir
        engine.next_seq = state.next_seq
        engine.next_segment_id = state.next_segment_id
        engine._applied_index = max(state.applied_index, 0)
        return engine

    @classmethod
    def load(cls, directory: Path, pieces: Iterable[bytes], applied_index: int,
             **options: object) -> Engine:
        """Replace the store in `directory` by a snapshot's pieces (from `dump`); return it open.

        Any engine open on `directory` must be closed first. The new contents become a new
        generation switched to atomically: a crash leaves the old contents or the new ones.
        `options` are those of `open`. Raises CorruptStore on a damaged piece.
        """
        engine = load_generation(cls, Path(directory), pieces, applied_index, options)
        assert isinstance(engine, Engine)
        return engine

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, expire_at_ms) of a live key, or None. Expiry is not judged here."""
        with self.lock:  # every GET comes here: the checks of _check_open and _read_value inline
            if self._closed:
                self._check_open()
            loc = self.keydir.get(key)
            if loc is None:
                return None
            data = self.layer.pread(self.segments[loc[0]].handle, loc[2], loc[1])
            if len(data) != loc[2]:
                raise EngineError(f"{self.segments[loc[0]].path}: short read at byte offset "
                                  f"{loc[1]}")
            return data, loc[3]

    def _read_value(self, loc: Location) -> bytes:
        seg = self.segments[loc[0]]
        data = self.layer.pread(seg.handle, loc[2], loc[1])
        if len(data) != loc[2]:
            raise EngineError(f"{seg.path}: short read at byte offset {loc[1]}")
        return data

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        """Live (key, value, expire_at_ms) with start <= key < end, in key order, at most limit."""
        with self.lock:
            self._check_open()
            out = []
            for key, loc in self.keydir.items(start, end):
                if limit is not None and len(out) >= limit:
                    break
                out.append((key, self._read_value(loc), loc[3]))
            return out

    def count(self) -> int:
        """The number of live keys (expired ones included: expiry is not judged here)."""
        with self.lock:
            return len(self.keydir)

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        """Up to `limit` live keys in key order, each strictly greater than `cursor`.

        Resume with the last key returned. b"" is the lowest key, so a walk that must include
        the empty key starts with `scan(b"", limit=...)` or checks `get(b"")` first.
        """
        with self.lock:
            out: list[bytes] = []
            if limit <= 0:
                return out
            for key, _loc in self.keydir.items(cursor, after=True):
                out.append(key)
                if len(out) >= limit:
                    break
            return out

    def locate(self, key: bytes) -> Location | None:
        """The keydir entry of `key` (segment id, value offset, length, expire, seq); for tests."""
        with self.lock:
            return self.keydir.get(key)

    @property
    def applied_index(self) -> int:
        """The applied index of the last write that carried one (0 if none ever did)."""
        return self._applied_index

    # -- writes --------------------------------------------------------------------------------

    def write(self, batch: Batch, applied_index: int | None = None, *,
              sync: bool = True) -> None:
        """Apply (key, value or None to delete, expire_at_ms) items as one atomic append.

        With fsync="always" the batch is durable when this returns (one fsync), unless `sync`
        is False: then the caller groups several writes and calls `sync()` once before it
        acknowledges any of them (group commit). An empty batch still records
        `applied_index`. Raises StorageFailed if the disk fails (then and on every later
        call), EngineError if the engine is closed.
        """
        with self.lock:
            self._check_writable()
            seg = self._active_segment()
            items = [(key, value, expire, self.next_seq + i)
                     for i, (key, value, expire) in enumerate(batch)]
            frame, offsets = encode_frame(items, applied_index, seg.size)
            self._guard(f"append to {seg.path}", self.layer.append, seg.handle, frame)
            self._dirty = True
            if sync and self.fsync_mode == FSYNC_ALWAYS:
                self._sync_active()
            seg.size += len(frame)
            self.next_seq += len(items)
            self._index(seg, items, offsets)
            if applied_index is not None:
                self._applied_index = applied_index
                seg.applied_index = max(seg.applied_index, applied_index)
        self._maybe_compact_in_background()

    def _index(self, seg: Segment, items: list[tuple[bytes, bytes | None, int, int]],
               offsets: list[int]) -> None:
        if items and seg.min_seq > items[0][3]:
            seg.min_seq = items[0][3]
        for (key, value, expire, seq), offset in zip(items, offsets, strict=True):
            if value is None:
                old = self.keydir.pop(key)
            else:
                old = self.keydir.put(key, (seg.seg_id, offset, len(value), expire, seq))
                seg.live_bytes += entry_bytes(len(key), len(value))
            if old is not None:
                self.segments[old[0]].live_bytes -= entry_bytes(len(key), old[2])

    def sync(self) -> None:
        """fsync the active segment now if anything was written since the last fsync."""
        with self.lock:
            self._check_writable()
            if self._dirty:
                self._sync_active()

    def _sync_active(self) -> None:
        if self.active is not None:
            self._guard(f"fsync of {self.active.path}", self.layer.fsync, self.active.handle)
            self.counters["fsyncs"] += 1
        self._dirty = False

    def _active_segment(self) -> Segment:
        """The segment to append to, sealing a full one and creating a new one as needed."""
        if self.active is not None and self.active.size < self.max_segment_bytes:
            return self.active
        if self.active is not None:
            if self.fsync_mode != FSYNC_NO:
                self._sync_active()
            self.active.sealed = True
            self.active = None
        seg_id = self.allocate_segment_id()
        path = segment_path(self.directory, self.gen, seg_id, KIND_WRITTEN)
        handle = self._guard(f"create {path}", self.layer.open, path, create=True)
        seg = Segment(seg_id, KIND_WRITTEN, path, handle, 0, sealed=False)
        self.segments[seg_id] = seg
        self.active = seg
        if self.fsync_mode != FSYNC_NO:
            self._guard(f"fsync of {self.directory}", self.layer.fsync_dir, self.directory)
        return seg

    def seal_active(self) -> None:
        """Seal the active segment (fsynced unless fsync="no"); the next write starts a new one."""
        with self.lock:
            self._check_writable()
            if self.active is not None:
                if self.fsync_mode != FSYNC_NO:
                    self._sync_active()
                self.active.sealed = True
                self.active = None

    def allocate_segment_id(self) -> int:
        with self.lock:
            seg_id = self.next_segment_id
            self.next_segment_id += 1
            return seg_id

    # -- failure -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"{self.directory}: engine is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise StorageFailed(f"{self.directory}: storage failed earlier "
                                f"({self._failure}); refusing writes") from self._failure

    def _guard(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one I/O step; an OSError fails the engine for good."""
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            self.fail(StorageFailed(f"{self.directory}: {what} failed: {exc}"))
            raise self._failure from exc  # type: ignore[misc]

    def fail(self, failure: StorageFailed) -> None:
        """Refuse every later write (called on any disk error, also by compaction)."""
        with self.lock:
            if self._failure is None:
                self._failure = failure

    @property
    def failed(self) -> bool:
        return self._failure is not None

    # -- compaction, snapshots, stats ----------------------------------------------------------

    def compact(self, dead_ratio: float | None = None) -> None:
        """Compact now, in this thread: seal the active segment, then rewrite every sealed
        segment that has dead bytes (or is small) into as few new ones as fit; with
        `dead_ratio`, only the segments whose dead share reaches it (what the background
        thread picks). Reads and writes from other threads go on meanwhile."""
        compact_all(self, dead_ratio)

    def _maybe_compact_in_background(self) -> None:
        """Every COMPACT_CHECK_EVERY writes, start the thread if enough is dead."""
        self._writes_unchecked += 1
        if not self.background_compaction or self._writes_unchecked < COMPACT_CHECK_EVERY:
            return
        self._writes_unchecked = 0
        maybe_start_background(self)

    def dump(self) -> Iterator[bytes]:
        """Snapshot pieces of every live record as of this call, even while writes continue.

        The keydir is frozen now and the segments it points into are pinned until the
        iterator is exhausted or closed (compaction defers deleting them).
        """
        return dump_pieces(self)

    @property
    def stats(self) -> dict[str, int]:
        """keys, live_bytes, dead_bytes, segments, compactions, fsyncs, applied_index, and
        the keydir's figures (Keydir.stats: its bytes, its keys' own bytes, delta keys,
        merges)."""
        with self.lock:
            live = sum(s.live_bytes for s in self.segments.values())
            dead = sum(s.dead_bytes for s in self.segments.values())
            return {"keys": len(self.keydir), "live_bytes": live, "dead_bytes": dead,
                    "segments": len(self.segments), **self.counters,
                    "applied_index": self._applied_index, **self.keydir.stats()}

    def close(self) -> None:
        """Stop compaction, fsync (unless fsync="no" or failed) and close every file."""
        stop_background(self)
        with self.lock:
            if self._closed:
                return
            try:
                if self._failure is None and self.fsync_mode != FSYNC_NO and self._dirty:
                    self._sync_active()
            finally:
                self._closed = True
                for seg in self.segments.values():
                    if seg.pins == 0:
                        self.layer.close(seg.handle)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"Engine({str(self.directory)!r}, gen={self.gen}, keys={len(self.keydir)}, "
                f"segments={len(self.segments)})")

