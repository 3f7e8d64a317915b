"""Where a snapshot's bytes are read from (memory, or a window of a file), and its file format.

`SnapshotSender` (core/raft/snapshot_stream.py) and `SnapshotReader`
(core/raft/snapshot_file.py) read one range at a time through the `SnapshotSource`
protocol, so a snapshot on disk is never loaded whole: `FileSource` preads a window of a
file it opened once (a rename over the path later does not change what it reads), and
`snapshot_file_source` finds the data inside a snapshot file after checking which snapshot
it is.

The snapshot file (core/raft/disk.py's `raft.snapshot`, and a received snapshot before it
is moved there):

    [8s FILE_MAGIC][u64 LE data size][u64 LE xxh64(data)][u32 LE meta length]
    [meta: u64 LE index, u64 LE term, u32 LE voter count, u64 LE voter id each][data]

The size and digest are zero while the data is written and filled in before the fsync, so
the data is never held in memory to learn them; the size is 64 bits, so a snapshot has no
4 GiB cap. The legacy format (msgpack [index, term, voters, data], data a msgpack bin) is
still read, in place.

`SNAPSHOT_BUFFERS` records the largest buffer any snapshot reader, writer or receiver held
at once: tests assert on it that a snapshot's memory is bounded by its chunks.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Protocol

import msgpack

__all__ = [
    "FILE_MAGIC",
    "SNAPSHOT_BUFFERS",
    "SNAPSHOT_HEADER_PROBE_BYTES",
    "BufferPeak",
    "BytesSource",
    "FileHeader",
    "FileSource",
    "SnapshotSource",
    "encode_file_header",
    "read_file_header",
    "seal_file_header",
    "snapshot_file_source",
]

SNAPSHOT_HEADER_PROBE_BYTES = 64 * 1024  # read to find the data in a raft.snapshot file
FILE_MAGIC = b"RAFTSNP2"
FILE_HEADER = struct.Struct("<8sQQI")  # magic, data size, xxh64(data), meta length
SEAL = struct.Struct("<QQ")  # the size and digest, written over the zeros at SEAL_OFFSET
SEAL_OFFSET = len(FILE_MAGIC)
META = struct.Struct("<QQI")  # index, term, voter count; the voter ids follow
VOTER = struct.Struct("<Q")
MAX_META_BYTES = 64 * 1024  # the meta of a snapshot file: index, term, voters
ERR_NOT_SNAPSHOT = "not a raft snapshot file: {}"


class BufferPeak:
    """The largest buffer (in bytes) noted since the last `reset`."""

    def __init__(self) -> None:
        self.peak = 0

    def note(self, size: int) -> None:
        if size > self.peak:
            self.peak = size

    def reset(self) -> None:
        self.peak = 0


SNAPSHOT_BUFFERS = BufferPeak()  # every snapshot reader, writer and receiver notes here


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
        SNAPSHOT_BUFFERS.note(length)
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


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a snapshot file says about itself: the snapshot's identity and where its data
    lies (`offset`, `size`); `digest` is None in the legacy format."""

    index: int
    term: int
    voters: tuple[int, ...]
    offset: int
    size: int
    digest: int | None


def encode_file_header(index: int, term: int, voters: tuple[int, ...]) -> bytes:
    """The start of a snapshot file whose data follows, with size and digest zero until
    `seal_file_header`."""
    meta = META.pack(index, term, len(voters)) + b"".join(VOTER.pack(v) for v in voters)
    return FILE_HEADER.pack(FILE_MAGIC, 0, 0, len(meta)) + meta


def seal_file_header(fd: int, size: int, digest: int) -> None:
    """Write the data's size and digest into the header of the file open at `fd` (the
    caller fsyncs afterwards). OSError if it cannot."""
    if os.pwrite(fd, SEAL.pack(size, digest), SEAL_OFFSET) != SEAL.size:
        raise OSError("short write of the snapshot file's header")


def read_file_header(source: FileSource) -> FileHeader:
    """The header of the snapshot file `source` reads (either format). ValueError if it is
    not a snapshot file, OSError if it cannot be read or is cut short."""
    head = source.read(0, min(source.size(), SNAPSHOT_HEADER_PROBE_BYTES))
    if head.startswith(FILE_MAGIC):
        return _header_v2(head, source.size())
    return _header_legacy(source, head)


def _header_v2(head: bytes, file_size: int) -> FileHeader:
    if len(head) < FILE_HEADER.size:
        raise ValueError(ERR_NOT_SNAPSHOT.format("the header is cut short"))
    _magic, size, digest, meta_len = FILE_HEADER.unpack_from(head)
    offset = FILE_HEADER.size + meta_len
    if meta_len > MAX_META_BYTES or offset > len(head):
        raise ValueError(ERR_NOT_SNAPSHOT.format(f"a meta of {meta_len} bytes"))
    if offset + size != file_size:  # cut short, or not sealed (a crash while written)
        raise OSError(f"the snapshot file holds {file_size} bytes, its header says "
                      f"{offset + size}")
    if meta_len < META.size:
        raise ValueError(ERR_NOT_SNAPSHOT.format(f"a meta of {meta_len} bytes"))
    index, term, count = META.unpack_from(head, FILE_HEADER.size)
    if META.size + count * VOTER.size != meta_len:
        raise ValueError(ERR_NOT_SNAPSHOT.format(f"{count} voters in {meta_len} bytes"))
    start = FILE_HEADER.size + META.size
    ids = tuple(VOTER.unpack_from(head, start + k * VOTER.size)[0] for k in range(count))
    return FileHeader(index, term, ids, offset, size, digest)


def _header_legacy(source: FileSource, head: bytes) -> FileHeader:
    unpacker = msgpack.Unpacker()
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() != 4:
            raise ValueError("not a 4-item array")
        index, term, voters = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
        header_end = unpacker.tell()
        ids = tuple(int(v) for v in voters)
    except (msgpack.UnpackException, msgpack.OutOfData, ValueError, TypeError) as exc:
        raise ValueError(ERR_NOT_SNAPSHOT.format(exc)) from exc
    if type(index) is not int or type(term) is not int:
        raise ValueError(ERR_NOT_SNAPSHOT.format("index and term must be ints"))
    length, header_bytes = _bin_header(source.read(header_end, min(
        _MAX_BIN_HEADER_BYTES, source.size() - header_end)))
    offset = header_end + header_bytes
    if offset + length > source.size():
        raise ValueError(ERR_NOT_SNAPSHOT.format("the data runs past the end of the file"))
    return FileHeader(index, term, ids, offset, length, None)


def snapshot_file_source(path: str | os.PathLike[str], index: int, term: int) -> FileSource:
    """The data of the snapshot stored at `path` (either format, see the module header),
    without loading it. Raises ValueError if the file holds another snapshot than
    (`index`, `term`) (a newer one replaced it: send that one instead) or is not a
    snapshot file, OSError if it cannot be read."""
    source = FileSource(path)  # opened once: what is checked here is what is sent
    try:
        header = read_file_header(source)
        stored = (header.index, header.term)
        if stored != (index, term):
            raise ValueError(f"the file holds snapshot {stored}, not ({index}, {term})")
        source.narrow(header.offset, header.size)
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
