"""A Raft snapshot held on disk: the handle, and the writer and reader that stream it.

A snapshot's data is never one bytes object here. A state machine writes it through a
`SnapshotWriter`, which holds at most one chunk before it goes to the file; a leader sends
it by reading one chunk at a time (core/raft/snapshot_source.py's FileSource); a follower
receives it into a file (core/raft/snapshot_receive.py) that the storage then moves into
place; and the machine restores from a `SnapshotReader`, which reads the ranges it asks for
and nothing more. The file format is in core/raft/snapshot_source.py.

`write_snapshot_file` is the one way a snapshot file is made from a machine's bytes: a temp
file in the target's directory, the header with size and digest zero, the data through the
writer, then size and digest, fsync, rename over the target, fsync of the directory. A
crash (or an error in the machine's writing) before the rename leaves the previous
snapshot in place and a temp file that the next open removes (core.storage's temp naming).

`SnapshotFile` names the data of one snapshot file; `Snapshot.data` (core/raft/messages.py)
is a `SnapshotFile` for a snapshot on disk and bytes for one held in memory (the sans-I/O
tests). `open_reader` reads either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import xxhash

from core.raft.snapshot_source import (
    SNAPSHOT_BUFFERS,
    BytesSource,
    FileSource,
    SnapshotSource,
    encode_file_header,
    read_file_header,
    seal_file_header,
    snapshot_file_source,
)
from core.raft.snapshot_wire import DEFAULT_CHUNK_BYTES
from core.storage import TEMP_INFIX, FatalStorageError, fsync_dir

__all__ = [
    "SnapshotFile",
    "SnapshotFormatError",
    "SnapshotReader",
    "SnapshotSink",
    "SnapshotWriter",
    "data_bytes",
    "open_reader",
    "open_snapshot_file",
    "snapshot_size",
    "write_snapshot_file",
]

FILE_MODE = 0o600
ERR_SHORT = "the snapshot ended {} bytes early"
ERR_DIGEST = "the snapshot file {} does not match its digest"


class SnapshotFormatError(ValueError):
    """A snapshot's data does not hold what its reader expects (cut short, bad digest)."""


class SnapshotSink(Protocol):
    """Where a machine writes its snapshot: bytes appended in order."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """The data of snapshot (`index`, `term`): `size` bytes at `offset` of the file `path`,
    whose xxh64 is `digest` (None for the legacy format). `transient`: a received file the
    storage may move into place (else it copies it)."""

    path: Path
    index: int
    term: int
    offset: int
    size: int
    digest: int | None = None
    transient: bool = False

    def open_source(self) -> FileSource:
        """A source over the data. ValueError if the file now holds another snapshot (a
        newer one replaced it), OSError if it cannot be read."""
        return snapshot_file_source(self.path, self.index, self.term)

    def reader(self) -> SnapshotReader:
        """A reader of the data, from its start (same errors as `open_source`)."""
        return SnapshotReader(self.open_source(), self.digest)

    def read_all(self) -> bytes:
        """The whole data in memory: for machines that restore from bytes."""
        with self.reader() as reader:
            return reader.read()

    def moved_to(self, path: Path) -> SnapshotFile:
        return replace(self, path=path, transient=False)


class SnapshotWriter:
    """Appends a snapshot's data to the file open at `fd`, holding at most `chunk_bytes`
    in memory (a larger write goes straight to the file). OSError if the file fails."""

    def __init__(self, fd: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self._fd = fd
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._hasher = xxhash.xxh64()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data`."""
        self._hasher.update(data)
        self.written += len(data)
        if len(self._buffer) + len(data) < self._chunk_bytes:
            self._buffer += data
            SNAPSHOT_BUFFERS.note(len(self._buffer))
            return
        self.flush()
        if len(data) >= self._chunk_bytes:
            SNAPSHOT_BUFFERS.note(len(data))
            _write_all(self._fd, memoryview(data))
        else:
            self._buffer += data

    def flush(self) -> None:
        if self._buffer:
            _write_all(self._fd, memoryview(self._buffer))
            self._buffer = bytearray()

    @property
    def digest(self) -> int:
        return self._hasher.intdigest()


class SnapshotReader:
    """Reads a snapshot's data from its start, in the ranges the caller asks for. When the
    last byte is read and `digest` is given, the whole is checked against it
    (SnapshotFormatError). Use as a context manager, or `close()`."""

    def __init__(self, source: SnapshotSource, digest: int | None = None) -> None:
        self._source = source
        self._size = source.size()
        self._pos = 0
        self._digest = digest
        self._hasher = xxhash.xxh64() if digest is not None else None

    @property
    def remaining(self) -> int:
        return self._size - self._pos

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that remain if `n` < 0); b"" at the end."""
        n = self.remaining if n < 0 else min(n, self.remaining)
        data = self._source.read(self._pos, n) if n else b""
        SNAPSHOT_BUFFERS.note(len(data))
        self._pos += len(data)
        if self._hasher is not None:
            self._hasher.update(data)
            if not self.remaining and self._hasher.intdigest() != self._digest:
                raise SnapshotFormatError(ERR_DIGEST.format(self._source))
        return data

    def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes; SnapshotFormatError if fewer remain."""
        if n > self.remaining:
            raise SnapshotFormatError(ERR_SHORT.format(n - self.remaining))
        return self.read(n)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """The rest of the data, `chunk_bytes` at a time."""
        while self.remaining:
            yield self.read(chunk_bytes)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(data: bytes | SnapshotFile) -> SnapshotReader:
    """A reader of a snapshot's data, held in memory or on disk."""
    if isinstance(data, SnapshotFile):
        return data.reader()
    return SnapshotReader(BytesSource(data))


def snapshot_size(data: bytes | SnapshotFile) -> int:
    return data.size if isinstance(data, SnapshotFile) else len(data)


def open_snapshot_file(path: Path) -> tuple[SnapshotFile, tuple[int, ...]] | None:
    """(the data, the voters) of the snapshot file at `path` (either format), None if there
    is none. ValueError if it is not a snapshot file, OSError if it cannot be read."""
    try:
        source = FileSource(path)
    except FileNotFoundError:
        return None
    try:
        h = read_file_header(source)
    finally:
        source.close()
    return SnapshotFile(path, h.index, h.term, h.offset, h.size, h.digest), h.voters


def write_snapshot_file(target: Path, index: int, term: int, voters: tuple[int, ...],
                        fill: Callable[[SnapshotWriter], None],
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SnapshotFile:
    """Replace `target` by snapshot (`index`, `term`, `voters`) whose data `fill` writes
    (see the module header). Raises FatalStorageError if a file operation fails; an
    exception of `fill` propagates; either way the previous file stays."""
    temp = target.parent / f".{target.name}{TEMP_INFIX}{os.urandom(6).hex()}"
    header = encode_file_header(index, term, voters)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise FatalStorageError(f"cannot create {temp}: {exc}") from exc
    try:
        writer = SnapshotWriter(fd, chunk_bytes)
        _write_all(fd, memoryview(header))
        fill(writer)
        writer.flush()
        seal_file_header(fd, writer.written, writer.digest)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FatalStorageError(f"writing the snapshot {target} failed: {exc}") from exc
        raise
    return SnapshotFile(target, index, term, len(header), writer.written, writer.digest)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"os.write wrote {written} bytes")
        view = view[written:]


def data_bytes(data: bytes | SnapshotFile) -> bytes:
    """A snapshot's data as bytes, read whole from its file if it has one (for tests and
    small snapshots)."""
    return data.read_all() if isinstance(data, SnapshotFile) else bytes(data)
