"""The data path's frames over real connections: asyncio streams (chunk servers) and blocking
sockets (the blocking client), both on dfs/chunk_wire.py's format.

Strategy: read the 4-byte length, the header, then exactly the payload the header
announces, checking the limits before reading; write the parts as they are. A peer that
closes between frames ends the stream (None); one that closes inside a frame, or breaks the
format, raises (ConnectionError / FrameError) and the connection is dropped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from dfs.chunk_wire import (
    ERR_HEADER_TOO_LONG,
    HEADER_LENGTH,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    Frame,
    FrameError,
    decode_header,
    encode_frame,
    payload_length,
)

__all__ = ["ReplyError", "SyncLink", "check_reply", "read_frame", "write_frame"]

JOIN_BELOW_BYTES = 64 * 1024  # smaller frames go in one send
ERR_CLOSED = "the chunk server {} closed the connection"


class ReplyError(IOError):
    """A chunk server answered with an error; `failed` lists servers of the chain that
    could not be reached (the writer avoids them next time)."""

    def __init__(self, text: str, failed: list[str] | None = None) -> None:
        super().__init__(text)
        self.failed = failed or []


def check_reply(frame: Frame | None, peer: str) -> dict[str, Any]:
    """The header of an ok reply; ReplyError for an error reply, ConnectionError for none."""
    if frame is None:
        raise ConnectionError(ERR_CLOSED.format(peer))
    if not frame.header.get("ok"):
        raise ReplyError(str(frame.header.get("err", "ERR no reply")),
                         [str(a) for a in frame.header.get("failed", [])])
    return frame.header


def _header_size(head: bytes) -> int:
    (size,) = HEADER_LENGTH.unpack(head)
    if size > MAX_HEADER_BYTES:
        raise FrameError(ERR_HEADER_TOO_LONG.format(size, MAX_HEADER_BYTES))
    return int(size)


async def read_frame(reader: asyncio.StreamReader,
                     max_payload: int = MAX_PAYLOAD_BYTES) -> Frame | None:
    """The next frame, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ConnectionError("a frame was cut short") from None
    try:
        header = decode_header(await reader.readexactly(_header_size(head)))
        size = payload_length(header, max_payload)
        payload = await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        raise ConnectionError("a frame was cut short") from None
    return Frame(header, payload)


async def write_frame(writer: asyncio.StreamWriter, header: dict[str, Any],
                      payload: bytes | memoryview = b"") -> None:
    """Write one frame and wait for the buffer to drain (back-pressure)."""
    writer.writelines(encode_frame(header, payload))
    await writer.drain()


class SyncLink:
    """A blocking connection to one chunk server: `send` frames, `receive` a frame."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=256 * 1024)

    def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        """Write one frame (a large payload goes as it is, without a copy)."""
        parts = encode_frame(header, payload)
        if len(payload) < JOIN_BELOW_BYTES:
            self.sock.sendall(b"".join(parts))
            return
        for part in parts:
            self.sock.sendall(part)

    def receive(self, max_payload: int = MAX_PAYLOAD_BYTES) -> Frame | None:
        """The next frame, or None at a clean end of stream."""
        head = self.file.read(HEADER_LENGTH.size)
        if not head:
            return None
        if len(head) < HEADER_LENGTH.size:
            raise ConnectionError("a frame was cut short")
        raw = self.file.read(_header_size(head))
        header = decode_header(raw)
        size = payload_length(header, max_payload)
        payload = self.file.read(size) if size else b""
        if len(payload) != size:
            raise ConnectionError("a frame was cut short")
        return Frame(header, payload)

    def call(self, header: dict[str, Any]) -> Frame:
        """Send a request and read its reply (an ok header; ReplyError otherwise)."""
        self.send(header)
        frame = self.receive()
        check_reply(frame, self.address)
        assert frame is not None
        return frame

    def close(self) -> None:
        """Close the connection."""
        try:
            self.file.close()
        finally:
            self.sock.close()
