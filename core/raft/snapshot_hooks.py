"""What a state machine's snapshot hooks return and take, and the driver's snapshot data.

A machine's `snapshot()` hook returns one of:
- bytes: the whole state, encoded on the event loop (small machines);
- a zero-argument encoder returning bytes, run in a worker thread over a view the hook
  captured (driver_types.SnapshotHook);
- a `StreamedSnapshot`: its `write(sink)` runs in a worker thread and writes the state in
  pieces to a sink that holds at most a chunk in memory before it reaches the file
  (core/raft/snapshot_file.py); `release()` is called once it is written or abandoned.
  A machine whose state is larger than memory uses this.

A machine's `restore` hook takes the bytes, unless it is marked with
`@restores_from_reader`: then it takes a SnapshotReader positioned at its data and reads
what it needs, in the ranges it chooses. The blob hooks are adapters over the same files:
the driver reads the data into one bytes object for them.

The driver's data (what a snapshot file holds and a leader streams), format 2:
DATA_MAGIC, a u32 big-endian length, the msgpack address book, then the machine's bytes to
the end. Format 1 (before streaming), still read: msgpack [1, address book, blob].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from core.raft.driver_types import SNAPSHOT_FORMAT
from core.raft.errors import RaftError
from core.raft.snapshot_file import SnapshotFormatError, SnapshotReader, SnapshotSink
from core.raft.snapshot_source import BytesSource

__all__ = [
    "DATA_MAGIC",
    "MachineSnapshot",
    "StreamedSnapshot",
    "fill_driver_data",
    "open_driver_data",
    "reads_snapshot_stream",
    "restores_from_reader",
]

DATA_MAGIC = b"RSD2"  # never the first bytes of format 1 (a msgpack array starts 0x9_)
_BOOK_LENGTH_BYTES = 4
_READER_FLAG = "_restores_from_reader"
F = TypeVar("F", bound=Callable[..., Any])


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class StreamedSnapshot:
    """A machine's snapshot written in pieces (see the module header). Calling it returns
    the whole state as bytes, for callers that want one blob (tests, a copy in memory)."""

    write: Callable[[SnapshotSink], None]
    release: Callable[[], None] = _nothing

    def __call__(self) -> bytes:
        out = _Blob()
        try:
            self.write(out)
        finally:
            self.release()
        return bytes(out.data)


MachineSnapshot = bytes | Callable[[], bytes] | StreamedSnapshot


class _Blob:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data


def restores_from_reader(fn: F) -> F:
    """Mark a restore hook that takes a SnapshotReader instead of bytes."""
    setattr(fn, _READER_FLAG, True)
    return fn


def reads_snapshot_stream(restore: Callable[..., Any]) -> bool:
    """True if `restore` was marked with `restores_from_reader` (a bound method too)."""
    return bool(getattr(restore, _READER_FLAG, False))


def fill_driver_data(book: dict[int, list[Any]],
                     machine: MachineSnapshot) -> Callable[[SnapshotSink], None]:
    """The writer of the driver's data: the address book, then the machine's snapshot
    (an encoder or a StreamedSnapshot runs when the returned function does)."""
    def fill(sink: SnapshotSink) -> None:
        packed = msgpack.packb(book)
        sink.write(DATA_MAGIC + len(packed).to_bytes(_BOOK_LENGTH_BYTES, "big") + packed)
        if isinstance(machine, StreamedSnapshot):
            machine.write(sink)
        elif callable(machine):
            sink.write(machine())
        else:
            sink.write(machine)
    return fill


def open_driver_data(reader: SnapshotReader) -> tuple[dict[int, Any], SnapshotReader]:
    """(address book, a reader at the machine's bytes) of the driver's data in `reader`.
    RaftError if it is in neither format."""
    try:
        head = reader.read(len(DATA_MAGIC))
        if head == DATA_MAGIC:
            length = int.from_bytes(reader.read_exact(_BOOK_LENGTH_BYTES), "big")
            book = msgpack.unpackb(reader.read_exact(length), strict_map_key=False)
            return dict(book), reader
        fmt, book, blob = msgpack.unpackb(head + reader.read(), strict_map_key=False)
    except (SnapshotFormatError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RaftError(f"the snapshot's data does not decode: {exc}") from exc
    if fmt != SNAPSHOT_FORMAT:
        raise RaftError(f"unknown snapshot format {fmt!r}")
    reader.close()
    return dict(book), SnapshotReader(BytesSource(blob))
