"""Where a leader reads a snapshot it streams: memory, or a window of a file.

`SnapshotSender` (core/raft/snapshot_stream.py) reads one chunk at a time through the
`SnapshotSource` protocol, so a snapshot on disk is never loaded whole: `FileSource` preads
a window of a file it opened once (a rename over the path later does not change what it
reads), and `snapshot_file_source` finds the data inside core/raft/disk.py's snapshot file
(msgpack [index, term, voters, data], the data last) after checking which snapshot it is.
"""

from __future__ import annotations

import os
from typing import Protocol

import msgpack

__all__ = [
    "SNAPSHOT_HEADER_PROBE_BYTES",
    "BytesSource",
    "FileSource",
    "SnapshotSource",
    "snapshot_file_source",
]

SNAPSHOT_HEADER_PROBE_BYTES = 64 * 1024  # read to find the data in a raft.snapshot file


class SnapshotSource(Protocol):
    """Where a sender reads the snapshot from: `size` bytes, read by ranges."""

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length), all of them; OSError if they cannot be read."""
        ...

    def close(self) -> None: ...


class BytesSource:
    """A snapshot held in memory (today's `Snapshot.data`)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)

    def size(self) -> int:
        return len(self._view)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._view[offset:offset + length])

    def close(self) -> None:
        self._view.release()


class FileSource:
    """Bytes [offset, offset + length) of a file, read with pread one range at a time.

    The file is opened here, so a later rename over its path (a newer snapshot) does not
    change what this source reads. Raises OSError if the file cannot be opened or is
    shorter than the window."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0,
                 length: int | None = None) -> None:
        self._name = os.fspath(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._file_size = os.fstat(self._fd).st_size
            self._base, self._size = 0, self._file_size
            self.narrow(offset, self._file_size - offset if length is None else length)
        except BaseException:
            self.close()
            raise

    def narrow(self, offset: int, length: int) -> None:
        """From now on read only bytes [offset, offset + length) of the current window.
        OSError if that is not inside it."""
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OSError(f"{self._name}: window [{self._base + offset}, +{length}) is not "
                          f"inside [{self._base}, +{self._size}) of the file")
        self._base += offset
        self._size = length

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        at, left = self._base + offset, length
        while left > 0:
            part = os.pread(self._fd, left, at)
            if not part:
                raise OSError(f"the snapshot file ended {left} bytes early")
            parts.append(part)
            at += len(part)
            left -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def snapshot_file_source(path: str | os.PathLike[str], index: int, term: int) -> FileSource:
    """The data of the snapshot stored at `path` in core/raft/disk.py's format (msgpack
    [index, term, voters, data], data last), without loading it. Raises ValueError if the
    file holds another snapshot than (`index`, `term`) (a newer one replaced it: send that
    one instead), OSError if it cannot be read."""
    source = FileSource(path)  # opened once: what is checked here is what is sent
    try:
        unpacker = msgpack.Unpacker()
        unpacker.feed(source.read(0, min(source.size(), SNAPSHOT_HEADER_PROBE_BYTES)))
        try:
            if unpacker.read_array_header() != 4:
                raise ValueError("not a raft snapshot file")
            stored = (unpacker.unpack(), unpacker.unpack())
            unpacker.skip()  # voters
            header_end = unpacker.tell()
        except (msgpack.UnpackException, msgpack.OutOfData, ValueError) as exc:
            raise ValueError(f"not a raft snapshot file: {exc}") from exc
        if stored != (index, term):
            raise ValueError(f"the file holds snapshot {stored}, not ({index}, {term})")
        length, header_bytes = _bin_header(source.read(header_end, min(
            _MAX_BIN_HEADER_BYTES, source.size() - header_end)))
        source.narrow(header_end + header_bytes, length)
    except BaseException:
        source.close()
        raise
    return source


_BIN_HEADER_BYTES = {0xC4: 2, 0xC5: 3, 0xC6: 5}  # msgpack bin 8/16/32: type byte + length
_MAX_BIN_HEADER_BYTES = 5


def _bin_header(head: bytes) -> tuple[int, int]:
    """(data length, header length) of the msgpack bin header at the start of `head`."""
    if not head or head[0] not in _BIN_HEADER_BYTES:
        raise ValueError("the snapshot's data is not a msgpack bin")
    header_bytes = _BIN_HEADER_BYTES[head[0]]
    if len(head) < header_bytes:
        raise ValueError("the snapshot file ends inside its data header")
    return int.from_bytes(head[1:header_bytes], "big"), header_bytes
