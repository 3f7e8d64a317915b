"""The dfs data path's framing: what clients and chunk servers send each other, sans I/O.

Strategy: a frame is a 4-byte big-endian header length, a msgpack map (the header), then
exactly `header["len"]` raw bytes of payload (0 when the key is absent). Bulk data never
goes through msgpack or RESP, so a chunk server reads it straight into its file. The
header's "op" names the request (OP_*); a reply is a header with "ok" true, or with "err"
(an ERR_* text). Metadata (namespace, allocation) stays on RESP with the masters.

Requests a chunk server takes (one connection may carry many, one after the other):
- OP_PUT {chunk, version, chain, lease_ms}: then OP_DATA frames with the bytes, in order,
  then OP_END {size, digest}: the server streams every frame to the next server of the
  chain (the rest of `chain`, with the lease's time left in the PUT, in each DATA that
  renews it and in the END) while it writes, and replies once its own copy is fsynced
  and the next server has replied ok (so the first server's ok means every replica has it
  on disk). `digest` is the xxh3_64 of the whole chunk, checked by every replica.
- OP_GET {chunk, version, offset, length}: reply {ok, len} then the bytes; every 64 KiB
  block read is checked against its stored checksum first (ERR_CHECKSUM on a mismatch).
- OP_STAT: reply {ok, chunks, free, used}, for tests and `dfs admin`.

`FrameReader` is the parser: `feed(bytes)`, then `next_frame()` until it returns None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "ERR_BAD_FRAME", "ERR_CHECKSUM", "ERR_DIGEST", "ERR_HEADER_TOO_LONG", "ERR_LEASE",
    "ERR_NO_CHUNK", "ERR_PAYLOAD_TOO_LONG", "ERR_STALE", "ERR_UNKNOWN_OP", "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES", "OP_DATA", "OP_END", "OP_GET", "OP_PUT", "OP_STAT", "Frame",
    "FrameError", "FrameReader", "encode_frame",
]

HEADER_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024  # a header is a small map; more is a broken or hostile peer
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024  # one frame's data; a chunk goes in many frames

OP_PUT = "put"
OP_DATA = "data"
OP_END = "end"
OP_GET = "get"
OP_STAT = "stat"

ERR_BAD_FRAME = "ERR bad frame: {}"
ERR_HEADER_TOO_LONG = "ERR frame header of {} bytes is over the limit of {}"
ERR_PAYLOAD_TOO_LONG = "ERR frame payload of {} bytes is over the limit of {}"
ERR_UNKNOWN_OP = "ERR unknown data-path request {!r}"
ERR_CHECKSUM = "ERR checksum mismatch in chunk {} block {} on {}"
ERR_DIGEST = "ERR chunk {} arrived damaged: digest {} != {}"
ERR_NO_CHUNK = "ERR no chunk {} version {} on {}"
ERR_STALE = "ERR chunk {} version {} is older than the version {} held here"
ERR_LEASE = "ERR the lease of chunk {} has expired on {}"


class FrameError(ValueError):
    """A stream that breaks the framing; it cannot be resynchronised, so it is closed."""


@dataclass
class Frame:
    """One frame: its header map and payload."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def op(self) -> str:
        """The request's name ("" for a reply)."""
        return str(self.header.get("op", ""))


def encode_frame(header: dict[str, Any], payload: bytes | memoryview = b"") -> list[bytes]:
    """The frame's parts (write them in order): length + header, then the payload."""
    if payload:
        header = {**header, "len": len(payload)}
    packed = msgpack.packb(header)
    if len(packed) > MAX_HEADER_BYTES:
        raise FrameError(ERR_HEADER_TOO_LONG.format(len(packed), MAX_HEADER_BYTES))
    head = HEADER_LENGTH.pack(len(packed)) + packed
    if not payload:
        return [head]
    return [head, payload if isinstance(payload, bytes) else bytes(payload)]


class FrameReader:
    """Bytes in, frames out (see the module header). Limits are checked before memory for
    a header or payload is set aside; a violation raises FrameError."""

    def __init__(self, max_header: int = MAX_HEADER_BYTES,
                 max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        self.max_header = max_header
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._header: dict[str, Any] | None = None
        self._need = 0

    def feed(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a frame."""
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive."""
        if self._header is None and not self._read_header():
            return None
        assert self._header is not None
        if len(self._buffer) < self._need:
            return None
        payload = bytes(self._buffer[:self._need])
        del self._buffer[:self._need]
        frame = Frame(self._header, payload)
        self._header, self._need = None, 0
        return frame

    def _read_header(self) -> bool:
        if len(self._buffer) < HEADER_LENGTH.size:
            return False
        (size,) = HEADER_LENGTH.unpack_from(self._buffer)
        if size > self.max_header:
            raise FrameError(ERR_HEADER_TOO_LONG.format(size, self.max_header))
        end = HEADER_LENGTH.size + size
        if len(self._buffer) < end:
            return False
        self._header = decode_header(bytes(self._buffer[HEADER_LENGTH.size:end]))
        del self._buffer[:end]
        self._need = payload_length(self._header, self.max_payload)
        return True


def decode_header(raw: bytes) -> dict[str, Any]:
    """A header map; FrameError when it is not a msgpack map with string keys."""
    try:
        header = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(ERR_BAD_FRAME.format(f"header is not msgpack: {exc}")) from None
    if not isinstance(header, dict) or not all(isinstance(k, str) for k in header):
        raise FrameError(ERR_BAD_FRAME.format("header is not a map of names"))
    return header


def payload_length(header: dict[str, Any], limit: int) -> int:
    """The header's "len", checked against `limit`."""
    size = header.get("len", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FrameError(ERR_BAD_FRAME.format(f"bad payload length {size!r}"))
    if size > limit:
        raise FrameError(ERR_PAYLOAD_TOO_LONG.format(size, limit))
    return size
