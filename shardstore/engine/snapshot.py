"""Snapshots for Raft: a stream of pieces out of a live engine, and a store rebuilt from them.

Strategy:
- `dump_pieces` freezes the keydir (`Keydir.view`: its packed runs are shared, only the
  small delta is copied) and pins every segment under the engine lock, then reads values
  lazily as the pieces are consumed. Segments are append-only and a pinned one is never
  deleted, so the view stays exactly that of the call while writes and compactions go on.
  The pins go when the iterator ends or is closed.
- A piece is `[4-byte magic][u64 LE xxh64(body)][body]`, the body a run of entries in the
  segment entry format (records.py) with seq 0; a piece never splits an entry.
- `load_generation` writes the pieces as a new generation of segments, fsyncs them, then
  switches CURRENT to it atomically and deletes the old generation: a crash midway leaves the
  old contents (the half-written generation is removed on the next open) or the new.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import xxhash

from shardstore.engine.compaction import release_segment
from shardstore.engine.errors import CorruptStore
from shardstore.engine.files import FileLayer, OsFiles
from shardstore.engine.host import EngineFactory, EngineHost
from shardstore.engine.records import ENTRY_HEADER
from shardstore.engine.segments import (
    CURRENT_FILE,
    Location,
    Segment,
    read_generation,
    remove_generation,
    remove_other_generations,
)

__all__ = ["PIECE_MAGIC", "SnapshotReader", "decode_piece", "dump_pieces", "load_generation"]

PIECE_MAGIC = b"SSD1"
PIECE_HEADER = struct.Struct("<4sQ")
PIECE_TARGET_BYTES = 1024 * 1024  # a piece is cut once its body passes this
LOAD_BATCH_ENTRIES = 1024  # entries per write() while loading
PIECE_NAME = "<snapshot piece {}>"


class SnapshotReader:
    """The iterator `Engine.dump` returns: pieces of a frozen view; `close` releases the pins.

    Closing (or exhausting, or garbage-collecting) it lets compaction delete the segments it
    pinned. Close it before closing the engine.
    """

    def __init__(self, engine: EngineHost, items: Iterator[tuple[bytes, Location]],
                 segments: dict[int, Segment]) -> None:
        self._engine = engine
        self._segments: dict[int, Segment] | None = segments
        self._pieces = self._generate(items)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._pieces)
        except BaseException:
            self.close()
            raise

    def _generate(self, items: Iterator[tuple[bytes, Location]]) -> Iterator[bytes]:
        layer = self._engine.layer
        body: list[bytes] = []
        size = 0
        for key, loc in items:
            segments = self._segments
            assert segments is not None, "snapshot reader used after close"
            value = layer.pread(segments[loc[0]].handle, loc[2], loc[1])
            body.append(ENTRY_HEADER.pack(0, 0, loc[3], len(key), len(value)))
            body.append(key)
            body.append(value)
            size += ENTRY_HEADER.size + len(key) + len(value)
            if size >= PIECE_TARGET_BYTES:
                yield encode_piece(b"".join(body))
                body, size = [], 0
        if body:
            yield encode_piece(b"".join(body))

    def close(self) -> None:
        """Release the pinned segments. Idempotent."""
        segments, self._segments = self._segments, None
        if segments is not None:
            for seg in segments.values():
                release_segment(self._engine, seg)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the engine may be gone
            self.close()


def encode_piece(body: bytes) -> bytes:
    return PIECE_HEADER.pack(PIECE_MAGIC, xxhash.xxh64_intdigest(body)) + body


def dump_pieces(engine: EngineHost) -> SnapshotReader:
    """Freeze the keydir and pin every segment now; see SnapshotReader."""
    with engine.lock:
        items = engine.keydir.view().items()
        segments = dict(engine.segments)
        for seg in segments.values():
            seg.pins += 1
    return SnapshotReader(engine, items, segments)


def decode_piece(piece: bytes, number: int) -> list[tuple[bytes, bytes, int]]:
    """The (key, value, expire_at_ms) entries of a piece; CorruptStore if it is damaged."""
    name = PIECE_NAME.format(number)
    if len(piece) < PIECE_HEADER.size:
        raise CorruptStore(name, 0, "shorter than its header")
    magic, checksum = PIECE_HEADER.unpack_from(piece, 0)
    body = memoryview(piece)[PIECE_HEADER.size:]
    if magic != PIECE_MAGIC or xxhash.xxh64_intdigest(body) != checksum:
        raise CorruptStore(name, 0, "bad magic or checksum")
    entries = []
    pos = 0
    while pos < len(body):
        if pos + ENTRY_HEADER.size > len(body):
            raise CorruptStore(name, PIECE_HEADER.size + pos, "entry header cut short")
        _flags, _seq, expire, klen, vlen = ENTRY_HEADER.unpack_from(body, pos)
        start = pos + ENTRY_HEADER.size
        pos = start + klen + vlen
        if pos > len(body):
            raise CorruptStore(name, PIECE_HEADER.size + start, "entry runs past the piece")
        entries.append((bytes(body[start:start + klen]), bytes(body[start + klen:pos]), expire))
    return entries


def load_generation(cls: EngineFactory, directory: Path, pieces: Iterable[bytes],
                    applied_index: int, options: dict[str, object]) -> EngineHost:
    """Write `pieces` as the next generation, switch CURRENT to it, return it open."""
    layer: FileLayer = options.pop("file_layer", None) or OsFiles()  # type: ignore[assignment]
    old = read_generation(layer, directory)
    new = old + 1
    remove_generation(layer, directory, new)
    engine = cls.open_generation(directory, new, layer, **options)
    mode, background = engine.fsync_mode, engine.background_compaction
    engine.fsync_mode, engine.background_compaction = "everysec", False
    try:
        _write_pieces(engine, pieces, applied_index)
        engine.seal_active()
        layer.fsync_dir(directory)
        layer.write_small(directory / CURRENT_FILE, f"{new}\n".encode("ascii"))
        remove_other_generations(layer, directory, new)
    except BaseException:
        engine.close()
        raise
    engine.fsync_mode, engine.background_compaction = mode, background
    return engine


def _write_pieces(engine: EngineHost, pieces: Iterable[bytes], applied_index: int) -> None:
    for number, piece in enumerate(pieces):
        entries = decode_piece(piece, number)
        for start in range(0, len(entries), LOAD_BATCH_ENTRIES):
            engine.write(entries[start:start + LOAD_BATCH_ENTRIES])
    engine.write([], applied_index)
