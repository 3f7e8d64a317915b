"""The file layer under the engine: every byte the engine reads or writes goes through it.

Strategy: the engine never calls `os` directly for its data files; it calls a `FileLayer`.
`OsFiles` is the real one (O_APPEND fds, pread, fsync). `shardstore.engine.powercut` holds a
wrapper that keeps unsynced appends in a buffer it can drop, so tests can cut the power at any
operation and check what survives. Errors are plain OSErrors here; the engine decides which
ones are fatal.

A handle is an opaque object the layer hands out; only the layer looks inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from core.storage import atomic_write, fsync_dir

__all__ = ["FileHandle", "FileLayer", "OsFiles"]

DATA_FILE_MODE = 0o600


class FileHandle(Protocol):
    """An open file of a layer; opaque to the engine apart from its path."""

    path: Path


class FileLayer(Protocol):
    """What the engine needs from a file system. Every method may raise OSError."""

    def open(self, path: Path, *, create: bool) -> FileHandle:
        """Open `path` for reads and appends; with `create` it must not exist yet."""
        ...

    def append(self, handle: FileHandle, data: bytes) -> None:
        """Append every byte of `data` at the end of the file (not yet durable)."""
        ...

    def pread(self, handle: FileHandle, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
        ...

    def size(self, handle: FileHandle) -> int:
        """The file's length in bytes, appends not yet synced included."""
        ...

    def fsync(self, handle: FileHandle) -> None:
        """Make every byte appended so far durable."""
        ...

    def truncate(self, handle: FileHandle, length: int) -> None:
        """Cut the file to `length` bytes, durably."""
        ...

    def close(self, handle: FileHandle) -> None:
        """Close without syncing."""
        ...

    def listdir(self, directory: Path) -> list[str]:
        """Names of the entries of `directory`."""
        ...

    def rename(self, src: Path, dst: Path) -> None:
        """Rename atomically (not yet durable: call fsync_dir)."""
        ...

    def unlink(self, path: Path) -> None:
        """Remove a file (not yet durable: call fsync_dir)."""
        ...

    def fsync_dir(self, directory: Path) -> None:
        """Make renames, creations and removals in `directory` durable."""
        ...

    def read_small(self, path: Path) -> bytes | None:
        """The whole content of a small file, or None if it does not exist."""
        ...

    def write_small(self, path: Path, data: bytes) -> None:
        """Replace a small file atomically and durably (old or new content after a crash)."""
        ...


class _OsHandle:
    __slots__ = ("path", "fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd


class OsFiles:
    """The real file system. Handles are fds opened O_RDWR|O_APPEND; reads use pread."""

    def open(self, path: Path, *, create: bool) -> _OsHandle:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return _OsHandle(path, os.open(path, flags, DATA_FILE_MODE))

    def append(self, handle: _OsHandle, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(handle.fd, view)
            if written <= 0:
                raise OSError(f"os.write wrote {written} bytes")
            view = view[written:]

    def pread(self, handle: _OsHandle, length: int, offset: int) -> bytes:
        return os.pread(handle.fd, length, offset)

    def size(self, handle: _OsHandle) -> int:
        return os.fstat(handle.fd).st_size

    def fsync(self, handle: _OsHandle) -> None:
        os.fsync(handle.fd)

    def truncate(self, handle: _OsHandle, length: int) -> None:
        os.ftruncate(handle.fd, length)
        os.fsync(handle.fd)

    def close(self, handle: _OsHandle) -> None:
        os.close(handle.fd)

    def listdir(self, directory: Path) -> list[str]:
        return os.listdir(directory)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, directory: Path) -> None:
        fsync_dir(directory)

    def read_small(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write_small(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)
