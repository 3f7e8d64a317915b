"""A chunk server's chunks on disk: one data file and one checksum file per chunk replica.

Strategy: chunk `c` at version `v` is `chunks/c_v.data` (the bytes) beside `chunks/c_v.meta`
(msgpack: version, size, the checksum of every 64 KiB block of the data, and the name of
that checksum: "xxh3", the xxh3_64 of the block, for every replica written now; a meta file
without a name, as written before, holds xxh64 checksums and is still read). A replica is
written to `c_v.part` first; `finish` checks its size and whole-chunk digest, fsyncs it,
renames it to `.data`, then writes the `.meta` atomically (core/storage.atomic_write:
temporary file, fsync, rename, directory fsync). So a replica exists exactly when its meta
file does; `open` deletes parts, data without meta, and every version of a chunk older than
its newest. Every read checks each block it touches against its stored checksum and
raises ChecksumError on a mismatch: damaged bytes are never returned.

The index (chunk id -> `Replica`) lives in memory. Blocking file calls only: the server
runs the slow ones (fsync, big reads, scrubbing) in a thread. A replica is installed by
`finish` on such a thread while the event loop reports, counts and deletes, so the index
changes and is copied only under the store's lock (a report iterating it while a copy's
`finish` added a replica raised "dictionary changed size during iteration" and killed the
chunk server's heartbeat loop: the master then declared a live server dead for good).

Reports: `take_report` gives every replica (a full report) or only what changed since the
last report taken (a chunk's replica now, or its removal), so a heartbeat's size follows
the changes, not the number of chunks held. The store keeps those changes, and the bytes
held, under the same lock as the index.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from core.storage import atomic_write, fsync_dir

__all__ = ["BLOCK_BYTES", "ChecksumError", "ChunkStore", "ChunkWriter", "Replica"]

BLOCK_BYTES = 64 * 1024  # one checksum per block
BLOCK_HASH = "xxh3"  # new replicas' block checksum: xxh3_64, several times xxh64's speed
OLD_BLOCK_HASH = "xxh64"  # meta files with no checksum name
BLOCK_HASHES: dict[str, Callable[[Any], int]] = {
    "xxh3": xxhash.xxh3_64_intdigest, "xxh64": xxhash.xxh64_intdigest}
DATA, META, PART = ".data", ".meta", ".part"
ERR_SIZE = "chunk {} arrived with {} bytes, the writer announced {}"
ERR_DIGEST = "chunk {} arrived damaged: digest {:x} != {:x}"


class ChecksumError(IOError):
    """A block whose bytes do not match its stored checksum."""

    def __init__(self, chunk: int, block: int) -> None:
        super().__init__(f"chunk {chunk} block {block}")
        self.chunk = chunk
        self.block = block


@dataclass
class Replica:
    """One chunk replica held here."""

    chunk: int
    version: int
    size: int
    sums: list[int]
    hash: str = BLOCK_HASH  # the name of the block checksum (BLOCK_HASHES)

    def check(self, block: int, data: Any) -> bool:
        """True when `data` (the bytes of block number `block`) matches its checksum."""
        return BLOCK_HASHES[self.hash](data) == self.sums[block]


def _name(chunk: int, version: int) -> str:
    return f"{chunk}_{version}"


class ChunkStore:
    """The replicas under `root/chunks` (see the module header). `open()` first."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "chunks"
        self.replicas: dict[int, Replica] = {}  # changed only under `_lock`
        self._lock = threading.Lock()
        # since the last report taken: chunk -> its replica now, or None when dropped
        self._changes: dict[int, Replica | None] = {}
        self._used = 0  # bytes of chunk data held

    def open(self) -> ChunkStore:
        """Create the directory, clean up what a crash left, load the index."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob("*" + PART):
            path.unlink()
        for meta in sorted(self.dir.glob("*" + META)):
            self._load(meta)
        kept = {self._path(r.chunk, r.version, DATA).name for r in self.replicas.values()}
        self._used = sum(r.size for r in self.replicas.values())
        for data in self.dir.glob("*" + DATA):
            if data.name not in kept:
                data.unlink()
        return self

    def _load(self, meta: Path) -> None:
        try:
            version, size, sums, *named = msgpack.unpackb(meta.read_bytes())
            hash_name = named[0] if named else OLD_BLOCK_HASH
            chunk = int(meta.stem.split("_")[0])
            data = self._path(chunk, version, DATA)
            usable = (data.exists() and data.stat().st_size == size
                      and hash_name in BLOCK_HASHES)
        except (ValueError, TypeError, msgpack.UnpackException, OSError):
            usable = False
        if not usable:
            meta.unlink()
            return
        held = self.replicas.get(chunk)
        if held is not None and held.version >= version:
            self._remove_files(chunk, version)
            return
        if held is not None:
            self._remove_files(chunk, held.version)
        self.replicas[chunk] = Replica(chunk, version, size, list(sums), hash_name)

    def _path(self, chunk: int, version: int, suffix: str) -> Path:
        return self.dir / (_name(chunk, version) + suffix)

    def _remove_files(self, chunk: int, version: int) -> None:
        for suffix in (META, DATA):
            self._path(chunk, version, suffix).unlink(missing_ok=True)

    # -- what the server asks ---------------------------------------------------------------

    def get(self, chunk: int) -> Replica | None:
        """The replica of `chunk` held here, if any."""
        return self.replicas.get(chunk)

    def _held(self) -> list[Replica]:
        """The replicas held now (a copy: safe while another thread installs one)."""
        with self._lock:
            return list(self.replicas.values())

    def report(self) -> list[list[int]]:
        """[chunk, version, size] of every replica."""
        return [_row(r) for r in self._held()]

    def take_report(self, full: bool) -> dict[str, list[Any]]:
        """The heartbeat's replicas: with `full`, {"chunks": every replica's [chunk,
        version, size]}; else {"added": rows of the replicas installed since the last report
        taken, "removed": the chunks dropped since}. Either way the changes start over."""
        with self._lock:
            changes, self._changes = self._changes, {}
            if full:
                return {"chunks": [_row(r) for r in self.replicas.values()]}
        return {"added": [_row(r) for r in changes.values() if r is not None],
                "removed": [chunk for chunk, r in changes.items() if r is None]}

    def used(self) -> int:
        """Bytes of chunk data held."""
        return self._used

    def free(self) -> int:
        """Bytes free on the file system under the store."""
        return shutil.disk_usage(self.dir).free

    def writer(self, chunk: int, version: int) -> ChunkWriter:
        """A writer of a new replica (it replaces an older version when finished)."""
        return ChunkWriter(self, chunk, version)

    def delete(self, chunk: int) -> bool:
        """Drop the replica of `chunk`; False if none was held."""
        with self._lock:
            replica = self.replicas.pop(chunk, None)
            if replica is not None:
                self._changes[chunk] = None
                self._used -= replica.size
        if replica is None:
            return False
        self._remove_files(chunk, replica.version)
        return True

    def open_data(self, chunk: int, version: int) -> int | None:
        """A read-only descriptor of the data file of (chunk, version), or None when that
        replica is not held here (the caller closes it)."""
        replica = self.replicas.get(chunk)
        if replica is None or replica.version != version:
            return None
        try:
            return os.open(self._path(chunk, version, DATA), os.O_RDONLY)
        except FileNotFoundError:
            return None  # deleted just now

    def read(self, chunk: int, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer at the end), every block checked.
        KeyError when the replica is not here; ChecksumError on damage."""
        replica = self.replicas[chunk]
        end = min(replica.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        with open(self._path(chunk, replica.version, DATA), "rb") as f:
            f.seek(first * BLOCK_BYTES)
            data = f.read((last + 1 - first) * BLOCK_BYTES)
        for block in range(first, last + 1):
            start = (block - first) * BLOCK_BYTES
            if not replica.check(block, data[start:start + BLOCK_BYTES]):
                raise ChecksumError(chunk, block)
        skip = offset - first * BLOCK_BYTES
        return data[skip:skip + end - offset]

    def verify(self, chunk: int) -> bool:
        """Reread the whole replica (the scrubber): True when every block matches."""
        replica = self.replicas.get(chunk)
        if replica is None:
            return True
        try:
            for offset in range(0, replica.size, BLOCK_BYTES * 16):
                self.read(chunk, offset, BLOCK_BYTES * 16)
        except ChecksumError:
            return False
        except OSError:
            return False
        return True

    def iter_chunks(self) -> Iterator[int]:
        """The chunk ids held now (a copy: safe while the store changes)."""
        with self._lock:
            return iter(list(self.replicas))

    def _install(self, replica: Replica, part: Path) -> None:
        os.replace(part, self._path(replica.chunk, replica.version, DATA))
        atomic_write(self._path(replica.chunk, replica.version, META),
                     msgpack.packb([replica.version, replica.size, replica.sums,
                                    replica.hash]))
        fsync_dir(self.dir)
        with self._lock:
            old = self.replicas.get(replica.chunk)
            self.replicas[replica.chunk] = replica
            self._changes[replica.chunk] = replica
            self._used += replica.size - (old.size if old is not None else 0)
        if old is not None and old.version != replica.version:
            self._remove_files(old.chunk, old.version)


def _row(replica: Replica) -> list[int]:
    return [replica.chunk, replica.version, replica.size]


class ChunkWriter:
    """Writes one replica: `write` the bytes in order, then `finish` (or `abort`)."""

    def __init__(self, store: ChunkStore, chunk: int, version: int) -> None:
        self.store = store
        self.chunk = chunk
        self.version = version
        self.part = store._path(chunk, version, PART)
        self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.sums: list[int] = []
        self._block = xxhash.xxh3_64()
        self._in_block = 0
        self._digest = xxhash.xxh3_64()

    def write(self, data: bytes) -> None:
        """Append `data` (checksums and the digest follow along)."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self._hash(view[:written])
            view = view[written:]

    def _hash(self, view: memoryview) -> None:
        self._digest.update(view)
        self.size += len(view)
        while view:
            take = min(len(view), BLOCK_BYTES - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == BLOCK_BYTES:
                self.sums.append(self._block.intdigest())
                self._block, self._in_block = xxhash.xxh3_64(), 0

    def finish(self, size: int, digest: int) -> Replica:
        """Check size and digest, fsync, install (see the module header). ValueError when
        the bytes are not what the writer announced (the part is dropped)."""
        try:
            if size != self.size:
                raise ValueError(ERR_SIZE.format(self.chunk, self.size, size))
            if digest != self._digest.intdigest():
                raise ValueError(ERR_DIGEST.format(self.chunk, self._digest.intdigest(), digest))
            if self._in_block:
                self.sums.append(self._block.intdigest())
            os.fsync(self.fd)
        except BaseException:
            self.abort()
            raise
        os.close(self.fd)
        self.fd = -1
        replica = Replica(self.chunk, self.version, self.size, self.sums, BLOCK_HASH)
        self.store._install(replica, self.part)
        return replica

    def abort(self) -> None:
        """Drop the part written so far."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.part.unlink(missing_ok=True)
