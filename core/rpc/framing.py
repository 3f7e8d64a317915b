"""Sans-I/O framing of node-to-node traffic: bytes in, frames (msgpack maps) out.

A frame on the wire is `[u32 big-endian payload length][payload]`, the payload one msgpack
map (str keys, `bytes` as bin, `str` as str). No sockets here: `FrameDecoder.feed(data)`
returns the complete frames so far and `encode_frame(obj)` returns the bytes, so both are
tested and fuzzed without a network (tests/test_rpc.py).

Errors: `feed` raises only `FrameError` (`FrameTooLarge` when a header announces more than
`max_frame_bytes`, `MalformedFrame` when a payload is not a msgpack map). Either way the
stream cannot be resynchronised: the caller closes the connection. After an error the
decoder stays failed and raises the same error again.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from core.rpc.errors import FrameError, FrameTooLarge, MalformedFrame

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_HEADER",
    "MAX_HANDSHAKE_FRAME_BYTES",
    "FrameDecoder",
    "decode_payload",
    "encode_frame",
]

FRAME_HEADER = struct.Struct(">I")  # payload length in bytes
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024  # Raft batches and snapshot chunks are far smaller
MAX_HANDSHAKE_FRAME_BYTES = 1024  # unauthenticated peers get a much tighter limit
_MAX_LENGTH_FIELD = 2**32 - 1


def encode_frame(obj: dict[str, Any], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """The frame carrying `obj`. Raises FrameTooLarge if its payload exceeds the limit
    (a local error: nothing was sent), TypeError if msgpack cannot encode `obj`."""
    if not isinstance(obj, dict):
        raise TypeError(f"a frame carries a dict, not {type(obj).__name__}")
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(len(payload), max_frame_bytes)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The map in one frame's payload; MalformedFrame for anything else."""
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise MalformedFrame(f"payload is not msgpack ({detail})") from None
    if not isinstance(obj, dict):
        raise MalformedFrame(f"payload is a {type(obj).__name__}, not a map")
    return obj


class FrameDecoder:
    """Accumulates bytes and cuts them into frames (see the module header).

    `max_frame_bytes` may be raised later (after authentication) by assigning it.
    Invariant: `_buf` holds no complete frame between calls to `feed`.
    """

    __slots__ = ("max_frame_bytes", "_buf", "_failure")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not 0 < max_frame_bytes <= _MAX_LENGTH_FIELD:
            raise ValueError(f"max_frame_bytes must be in 1..{_MAX_LENGTH_FIELD}")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._failure: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add `data`; return every frame now complete, in order. Raises FrameError."""
        if self._failure is not None:
            raise self._failure
        buf = self._buf
        buf += data
        frames: list[dict[str, Any]] = []
        pos = 0
        header = FRAME_HEADER.size
        try:
            while len(buf) - pos >= header:
                (length,) = FRAME_HEADER.unpack_from(buf, pos)
                if length > self.max_frame_bytes:
                    raise FrameTooLarge(length, self.max_frame_bytes)
                end = pos + header + length
                if end > len(buf):
                    break
                frames.append(decode_payload(bytes(buf[pos + header:end])))
                pos = end
        except FrameError as exc:
            self._failure = exc
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return frames
