"""Durable-storage primitives shared by every daemon: record logs, atomic files, data-dir locks.

Strategy (the "nothing acknowledged is lost" rule of DESIGN.md):

- State that must survive a restart goes to a `RecordLog`, an append-only file of records
  `[u32 LE payload length][u64 LE xxh64(payload)][payload]`. Appends are one `os.write` on an
  O_APPEND fd followed by `fsync`; the caller acknowledges only after `append` returns.
- Recovery replays the log from the start. A torn tail (the last write cut short by a crash)
  is truncated away; a bad record with more bytes after it is corruption in the middle and
  opening refuses with `CorruptLogError`, because truncating there would drop records that
  were acknowledged.
- Small whole-file state (snapshots, high-water marks) is replaced with `atomic_write`:
  temp file in the same directory, fsync, rename over the target, fsync the directory.
- An error from write or fsync raises `FatalStorageError` and is never retried: after a failed
  fsync the kernel may have dropped the dirty pages, so a retry can "succeed" without the
  data on disk. The object that saw it refuses further writes; the caller must exit.
- A data directory is owned by one process through `flock` on `<dir>/LOCK`, held by an open
  fd for the process lifetime, so the kernel releases it even on SIGKILL.

Everything here is synchronous and single-threaded: daemons call it from their event loop
and accept the fsync latency. Callers hold the `DataDirLock` of the directory they write in.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, TypeVar

import xxhash

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "CorruptLogError",
    "DataDirLock",
    "DataDirLockedError",
    "FatalStorageError",
    "RecordLog",
    "StorageError",
    "atomic_write",
    "fsync_dir",
    "read_file",
    "remove_stale_temp_files",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
RECORD_HEADER = struct.Struct("<IQ")  # payload length, xxh64(payload)
MAX_LENGTH_FIELD = 2**32 - 1
LOCK_FILE_NAME = "LOCK"
DATA_DIR_MODE = 0o700
DATA_FILE_MODE = 0o600
TEMP_INFIX = ".tmp."  # temp files are named ".<target name>.tmp.<random>"
REPLAY_BUFFER_BYTES = 1024 * 1024

PathLike = str | os.PathLike[str]
T = TypeVar("T")


class StorageError(Exception):
    """Base class of every error this module raises on purpose."""


class CorruptLogError(StorageError):
    """A bad record in the middle of a log: the daemon must refuse to start.

    `path` and `offset` (byte offset of the bad record's header) locate it.
    """

    def __init__(self, path: PathLike, offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        super().__init__(f"{self.path}: corrupt record at byte offset {offset}: {reason}")


class DataDirLockedError(StorageError):
    """Another open file description holds the data directory's lock.

    `pid` is the pid recorded in the LOCK file, or None if it could not be read.
    """

    def __init__(self, data_dir: PathLike, pid: int | None) -> None:
        self.data_dir = os.fspath(data_dir)
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(f"data dir {self.data_dir} is locked by {holder}")


class FatalStorageError(StorageError):
    """A write or fsync failed. Never retry: the caller must exit. The OSError is chained."""


# ---------------------------------------------------------------------------------------------
# Files and directories


def fsync_dir(path: PathLike) -> None:
    """Make the entries of directory `path` (creations, renames, unlinks) durable.

    Raises FatalStorageError on any OSError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FatalStorageError(f"fsync of directory {os.fspath(path)} failed: {exc}") from exc


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written; OSError propagates (callers wrap it)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"os.write wrote {written} bytes")
        view = view[written:]


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_INFIX}{os.urandom(6).hex()}")


def _write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist), write `data` and fsync it; unlink it on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DATA_FILE_MODE)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _replace_with(path: Path, data: bytes) -> None:
    """The atomic replacement itself; OSError propagates (callers wrap it)."""
    temp = _temp_path(path)
    _write_new_file(temp, data)
    try:
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, data: bytes) -> None:
    """Replace the contents of `path` with `data` so that a crash leaves old or new, never a mix.

    On return the new content is durable. Raises FatalStorageError on any OSError (the old
    content or the new one is then in place; no temp file is left behind by this call).
    """
    target = Path(path)
    try:
        _replace_with(target, data)
    except OSError as exc:
        raise FatalStorageError(f"atomic write of {target} failed: {exc}") from exc


def read_file(path: PathLike) -> bytes | None:
    """The whole content of `path`, or None if it does not exist. Other OSErrors propagate."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def remove_stale_temp_files(path: PathLike) -> list[Path]:
    """Delete temp files a crash left behind by `atomic_write(path)` or a log `rewrite`.

    Only call this while holding the data dir lock. Returns the paths removed.
    """
    target = Path(path)
    prefix = f".{target.name}{TEMP_INFIX}"
    stale = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    for p in stale:
        log.warning("removing stale temp file %s", p)
        _unlink_quietly(p)
    return stale


# ---------------------------------------------------------------------------------------------
# Data directory lock


class DataDirLock:
    """Exclusive ownership of a data directory via `flock(<dir>/LOCK)`.

    The lock belongs to the open file description, so it lasts while the fd is open (the
    whole process lifetime unless released) and the kernel drops it when the process dies,
    SIGKILL included. The fd is close-on-exec; a fork without exec shares the lock.
    """

    __slots__ = ("data_dir", "_fd")

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: PathLike) -> DataDirLock:
        """Create `data_dir` if missing (mode 0o700), lock it and record our pid in LOCK.

        Raises DataDirLockedError if another open file description holds the lock (another
        process, or another DataDirLock of this process).
        """
        directory = Path(data_dir)
        _make_data_dir(directory)
        fd = os.open(directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     DATA_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(directory, pid) from None
        except BaseException:
            os.close(fd)
            raise
        _record_pid(fd)
        return cls(directory, fd)

    @property
    def locked(self) -> bool:
        """True until `release` is called."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock by closing the fd. Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _make_data_dir(directory: Path) -> None:
    """mkdir -p with mode 0o700; fsync the parent when the directory is new."""
    if directory.is_dir():
        return
    directory.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    fsync_dir(directory.parent)


def _record_pid(fd: int) -> None:
    """Write our pid into LOCK (informational, not fsynced); on failure drop the lock."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Record log


def _frame(payload: bytes, max_record_bytes: int) -> bytes:
    """Header + payload. Raises ValueError if the payload is larger than the limit."""
    if len(payload) > max_record_bytes:
        raise ValueError(f"record of {len(payload)} bytes exceeds max_record_bytes "
                         f"{max_record_bytes}")
    return RECORD_HEADER.pack(len(payload), xxhash.xxh64_intdigest(payload)) + payload


def _frame_all(payloads: Iterable[bytes], max_record_bytes: int) -> tuple[bytes, int]:
    """All frames joined, and how many. Validates every payload before returning."""
    frames = [_frame(p, max_record_bytes) for p in payloads]
    return b"".join(frames), len(frames)


def _replay(f: BinaryIO, path: Path, file_size: int,
            max_record_bytes: int) -> tuple[list[bytes], int]:
    """Read records from the start of `f`. Returns them and the end offset of the last good one.

    A record that is incomplete at EOF, or whose checksum fails and which ends exactly at EOF,
    is a torn tail: replay stops before it. Any other bad record raises CorruptLogError.
    An oversized length field is corruption wherever it is: no writer ever produced one, so it
    is a damaged header, and treating it as a torn tail would drop the records after it.
    """
    records: list[bytes] = []
    offset = 0
    while offset < file_size:
        header = f.read(RECORD_HEADER.size)
        if len(header) < RECORD_HEADER.size:
            break
        length, checksum = RECORD_HEADER.unpack(header)
        if length > max_record_bytes:
            raise CorruptLogError(path, offset, f"length field {length} exceeds "
                                  f"max_record_bytes {max_record_bytes}")
        end = offset + RECORD_HEADER.size + length
        if end > file_size:
            break
        payload = f.read(length)
        if len(payload) < length:
            break
        if xxhash.xxh64_intdigest(payload) != checksum:
            if end == file_size:
                break
            raise CorruptLogError(path, offset, f"checksum mismatch with {file_size - end} "
                                  "bytes after the record; refusing to truncate")
        records.append(payload)
        offset = end
    return records, offset


class RecordLog:
    """An append-only file of checksummed records; see the module header for the format.

    Invariants: `size` is the byte length of the file and ends on a record boundary;
    `count` is the number of records in it. After a FatalStorageError the log is failed and
    every later write or sync raises FatalStorageError again without touching the disk.
    Not thread-safe.
    """

    __slots__ = ("path", "max_record_bytes", "_fd", "_size", "_count", "_failure")

    def __init__(self, path: Path, fd: int, size: int, count: int,
                 max_record_bytes: int) -> None:
        self.path = path
        self.max_record_bytes = max_record_bytes
        self._fd: int | None = fd
        self._size = size
        self._count = count
        self._failure: FatalStorageError | None = None

    # -- opening and recovery ------------------------------------------------------------------

    @classmethod
    def open(cls, path: PathLike,
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> tuple[RecordLog, list[bytes]]:
        """Open (creating if missing) the log at `path` and replay it.

        Returns the log, positioned for appends, and every record in order. A torn tail is
        truncated away (ftruncate + fsync) and logged as a warning with the bytes dropped.
        Raises CorruptLogError on a bad record in the middle, FatalStorageError if the
        truncation or an fsync fails, ValueError on a bad limit; other OSErrors (permissions,
        read errors) propagate.
        """
        if not 0 < max_record_bytes <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_record_bytes must be in 1..{MAX_LENGTH_FIELD}")
        log_path = Path(path)
        remove_stale_temp_files(log_path)
        fd = _open_for_append(log_path)
        try:
            records, size = _recover(fd, log_path, max_record_bytes)
        except BaseException:
            os.close(fd)
            raise
        return cls(log_path, fd, size, len(records), max_record_bytes), records

    # -- writing -------------------------------------------------------------------------------

    def append(self, payload: bytes, sync: bool = True) -> None:
        """Append one record; with `sync`, it is durable when this returns.

        Raises ValueError if the payload exceeds max_record_bytes (nothing is written),
        FatalStorageError if the write or fsync fails.
        """
        self.append_many((payload,), sync=sync)

    def append_many(self, payloads: Iterable[bytes], sync: bool = True) -> None:
        """Append records with one write and (with `sync`) one fsync: a group commit.

        Every payload is checked first, so an oversized one raises ValueError before any
        byte is written. After a crash a prefix of the batch may survive, never a gap.
        """
        data, n = _frame_all(payloads, self.max_record_bytes)
        if n == 0:
            return
        fd = self._writable_fd()
        self._guard(f"write of {len(data)} bytes", _write_all, fd, data)
        self._size += len(data)
        self._count += n
        if sync:
            self.sync()

    def sync(self) -> None:
        """fsync the log: every record appended so far is durable when this returns."""
        fd = self._writable_fd()
        self._guard("fsync", os.fsync, fd)

    def rewrite(self, payloads: Iterable[bytes]) -> None:
        """Atomically replace the whole log with these records (compaction).

        Temp file, fsync, rename over the log, fsync the directory, reopen for appends.
        A crash leaves the old log or the new one. Raises ValueError on an oversized payload
        (nothing changes) and FatalStorageError on any OSError (the log is then failed).
        """
        data, n = _frame_all(payloads, self.max_record_bytes)
        old_fd = self._writable_fd()
        self._guard("rewrite", _replace_with, self.path, data)
        self._fd = self._guard("reopen after rewrite", _open_existing_for_append, self.path)
        os.close(old_fd)
        self._size = len(data)
        self._count = n

    def close(self) -> None:
        """Close the fd without syncing (call `sync` first if needed). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    # -- introspection -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in the log file, headers included."""
        return self._size

    @property
    def count(self) -> int:
        """Records in the log."""
        return self._count

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecordLog({str(self.path)!r}, size={self._size}, count={self._count})"

    # -- helpers -------------------------------------------------------------------------------

    def _writable_fd(self) -> int:
        if self._failure is not None:
            msg = f"{self.path}: log failed earlier ({self._failure}); not retrying"
            raise FatalStorageError(msg) from self._failure
        if self._fd is None:
            raise ValueError(f"{self.path}: log is closed")
        return self._fd

    def _guard(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """Run an I/O step; an OSError fails the log for good and becomes FatalStorageError."""
        try:
            return fn(*args)
        except OSError as exc:
            self._failure = FatalStorageError(f"{self.path}: {what} failed: {exc}")
            raise self._failure from exc


def _open_for_append(path: Path) -> int:
    """Open the log O_RDWR|O_APPEND, creating it (and fsyncing the directory) if missing."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, DATA_FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing_for_append(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)


def _recover(fd: int, path: Path, max_record_bytes: int) -> tuple[list[bytes], int]:
    """Replay the log behind `fd` and truncate a torn tail. Returns records and good size."""
    file_size = os.fstat(fd).st_size
    with os.fdopen(os.dup(fd), "rb", buffering=REPLAY_BUFFER_BYTES) as f:
        f.seek(0)
        records, good_end = _replay(f, path, file_size, max_record_bytes)
    if good_end < file_size:
        _truncate(fd, path, good_end, file_size)
    return records, good_end


def _truncate(fd: int, path: Path, good_end: int, file_size: int) -> None:
    try:
        os.ftruncate(fd, good_end)
        os.fsync(fd)
    except OSError as exc:
        raise FatalStorageError(f"{path}: truncating torn tail failed: {exc}") from exc
    log.warning("%s: dropped torn tail of %d bytes at byte offset %d",
                path, file_size - good_end, good_end)
