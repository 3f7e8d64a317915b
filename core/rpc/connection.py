"""The asyncio protocol under both ends of a node-to-node connection: read, feed, write.

`FramedProtocol` feeds received bytes to a `FrameDecoder` and hands each frame to
`frame_received`; any FrameError closes the connection with the reason logged. It tracks
the transport's write flow control (`paused`) so senders can keep their own bounded
queues instead of letting the transport buffer grow without limit.

Kinds of frames after the handshake (core/rpc/auth.py); `b` is the body, any msgpack value:

    {"t": "m", "b": body}                 one-way message (Raft traffic), never answered
    {"t": "q", "id": n, "b": body}        request; answered by exactly one "r" frame
    {"t": "r", "id": n, "b": body}        response
    {"t": "r", "id": n, "e": "text"}      the remote handler raised (RemoteError)

Connections are one-directional in use: the connecting side sends messages and requests,
the accepting side receives them and answers requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from core.rpc.errors import FrameError
from core.rpc.framing import MAX_HANDSHAKE_FRAME_BYTES, FrameDecoder, encode_frame

__all__ = [
    "KIND_MESSAGE",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "WRITE_HIGH_WATER_BYTES",
    "FramedProtocol",
]

log = logging.getLogger("core.rpc")

KIND_MESSAGE = "m"
KIND_REQUEST = "q"
KIND_RESPONSE = "r"
WRITE_HIGH_WATER_BYTES = 1024 * 1024  # transport buffer above which senders hold back
WRITE_LOW_WATER_BYTES = 256 * 1024


class FramedProtocol(asyncio.Protocol):
    """Base of the inbound and outbound connections; subclasses implement `frame_received`.

    Starts with the handshake frame limit; `authenticated(max_frame_bytes)` raises it.
    `closed` is a future done when the connection is lost (for any reason).
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.decoder = FrameDecoder(min(MAX_HANDSHAKE_FRAME_BYTES, max_frame_bytes))
        self.transport: asyncio.Transport | None = None
        self.peername = "?"
        self.paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peername = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            self.close(f"bad frame: {exc}")
            return
        for frame in frames:
            if self.is_closing():
                return
            self.frame_received(frame)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.paused = False
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost(exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.writable()

    # -- for subclasses and owners -------------------------------------------------------------

    def frame_received(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    def lost(self, exc: Exception | None) -> None:
        """The connection is gone (called once)."""

    def writable(self) -> None:
        """The transport drained below its low-water mark after `pause_writing`."""

    def authenticated(self) -> None:
        self.decoder.max_frame_bytes = self.max_frame_bytes

    def write_frame(self, obj: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(obj, self.max_frame_bytes))

    def write_bytes(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self, reason: str | None = None, level: int = logging.WARNING) -> None:
        """Close after writing what is buffered; log `reason` (one line) if given."""
        if self.transport is None or self.transport.is_closing():
            return
        if reason:
            log.log(level, "rpc: closing connection with %s: %s", self.peername, reason)
        self.transport.close()
