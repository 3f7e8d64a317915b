"""The accepting end of node-to-node traffic: authenticate, then hand frames to a handler.

Per connection: send the hello challenge at once; until the connector has proven the
cluster secret, frames are limited to MAX_HANDSHAKE_FRAME_BYTES and anything but the
"auth" frame closes the connection (no message is accepted before authentication). No
answer within `auth_timeout` closes it; a wrong answer is refused after
`auth_failure_delay` (a "denied" frame, then close), which slows down online guessing.

After authentication, one-way messages go to `handler.on_message(peer_id, body)` inline
(no task per message: Raft traffic is many small frames) and requests to
`await handler.on_request(peer_id, body)` in a task each, answered in completion order.
A connection stops reading while `max_inflight_requests` of its requests run or while its
responses cannot be written, so memory stays bounded. A newer authenticated connection
from the same node id replaces the older one (a half-open connection left by a crash).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from core.rpc.auth import (
    DEFAULT_AUTH_TIMEOUT_S,
    AcceptorHandshake,
    check_auth_allowed,
    new_nonce,
    normalize_secret,
)
from core.rpc.connection import KIND_MESSAGE, KIND_REQUEST, KIND_RESPONSE, FramedProtocol, log
from core.rpc.errors import AuthError, FrameTooLarge, RequestRefused
from core.rpc.framing import DEFAULT_MAX_FRAME_BYTES

__all__ = [
    "DEFAULT_AUTH_FAILURE_DELAY_S",
    "DEFAULT_AUTH_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INFLIGHT_REQUESTS",
    "RpcHandler",
    "RpcServer",
]

DEFAULT_AUTH_FAILURE_DELAY_S = 0.2
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_INFLIGHT_REQUESTS = 1024


class RpcHandler(Protocol):
    """What an RpcServer delivers to. Exceptions are logged (messages) or sent back as a
    RemoteError (requests); they never close the connection."""

    def on_message(self, peer_id: int, body: Any) -> None:
        """A one-way message from authenticated node `peer_id`."""
        ...

    async def on_request(self, peer_id: int, body: Any) -> Any:
        """A request; the return value (msgpack-encodable) is the response body."""
        ...


class RpcServer:
    """Listens on `host:port` for authenticated peers (see the module header).

    `secret` None means no authentication, refused unless `host` is a loopback address.
    `port` 0 picks a free port; read `port` after `start()`.
    """

    def __init__(self, node_id: int, host: str, port: int, secret: str | bytes | None,
                 handler: RpcHandler, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 auth_timeout: float = DEFAULT_AUTH_TIMEOUT_S,
                 auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_inflight_requests: int = DEFAULT_MAX_INFLIGHT_REQUESTS) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self.secret = normalize_secret(secret)
        check_auth_allowed(host, self.secret)
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.auth_timeout = auth_timeout
        self.auth_failure_delay = auth_failure_delay
        self.max_connections = max_connections
        self.max_inflight_requests = max_inflight_requests
        self.connections: set[InboundConnection] = set()
        self.by_peer: dict[int, InboundConnection] = {}
        self.stats = {"accepted": 0, "authenticated": 0, "refused": 0, "messages": 0,
                      "requests": 0}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: InboundConnection(self),
                                                self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("rpc: node %d listening on %s:%d (%s)", self.node_id, self.host, self.port,
                 "cluster secret" if self.secret else "no auth, loopback only")

    async def close(self) -> None:
        """Stop accepting and close every connection (in-flight requests are cancelled)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def peers(self) -> list[int]:
        """Node ids with an authenticated connection to us now."""
        return sorted(self.by_peer)

    def _authenticated(self, conn: InboundConnection) -> None:
        assert conn.peer_id is not None
        self.stats["authenticated"] += 1
        old = self.by_peer.get(conn.peer_id)
        self.by_peer[conn.peer_id] = conn
        if old is not None and old is not conn:
            old.close(f"replaced by a newer connection from node {conn.peer_id}",
                      logging.INFO)

    def _forget(self, conn: InboundConnection) -> None:
        self.connections.discard(conn)
        if conn.peer_id is not None and self.by_peer.get(conn.peer_id) is conn:
            del self.by_peer[conn.peer_id]


class InboundConnection(FramedProtocol):
    """One accepted connection: HANDSHAKE -> OPEN (or DENIED -> closed)."""

    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.max_frame_bytes)
        self.server = server
        self.handshake = AcceptorHandshake(server.node_id, server.secret, new_nonce())
        self.state = "handshake"
        self.peer_id: int | None = None
        self.inflight = 0
        self.reading_paused = False
        self.tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        server.stats["accepted"] += 1
        if len(server.connections) >= server.max_connections:
            self.close(f"connection limit {server.max_connections} reached")
            return
        server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(server.auth_timeout, self._auth_timed_out)
        self.write_frame(self.handshake.hello())

    def lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        self.server._forget(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _auth_timed_out(self) -> None:
        if self.state == "handshake":
            self.server.stats["refused"] += 1
            self.close(f"no authentication within {self.server.auth_timeout}s")

    def frame_received(self, frame: dict[str, Any]) -> None:
        if self.state == "open":
            self._dispatch(frame)
        elif self.state == "handshake":
            self._handshake(frame)
        # "denied": ignore everything until the delayed close

    def _handshake(self, frame: dict[str, Any]) -> None:
        try:
            ok = self.handshake.receive_auth(frame)
        except AuthError as exc:
            self._deny(str(exc))
            return
        if self._timer is not None:
            self._timer.cancel()
        self.state = "open"
        self.peer_id = self.handshake.peer_id
        self.write_frame(ok)
        self.authenticated()
        self.server._authenticated(self)
        log.debug("rpc: node %s authenticated from %s", self.peer_id, self.peername)

    def _deny(self, reason: str) -> None:
        self.server.stats["refused"] += 1
        self.state = "denied"
        log.warning("rpc: refusing %s: %s", self.peername, reason)
        if self._timer is not None:
            self._timer.cancel()

        def deny() -> None:
            self.write_frame(AcceptorHandshake.denied(reason))
            self.close()

        self._timer = asyncio.get_running_loop().call_later(self.server.auth_failure_delay, deny)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        peer_id = self.peer_id
        assert peer_id is not None
        if kind == KIND_MESSAGE:
            self.server.stats["messages"] += 1
            try:
                self.server.handler.on_message(peer_id, frame.get("b"))
            except Exception:
                log.exception("rpc: handler failed on a message from node %d", peer_id)
        elif kind == KIND_REQUEST and type(frame.get("id")) is int:
            self.server.stats["requests"] += 1
            task = asyncio.get_running_loop().create_task(
                self._serve(frame["id"], frame.get("b")))
            self.tasks.add(task)
            self.inflight += 1
            self._flow()
        else:
            self.close(f"protocol error: unexpected frame {kind!r} from node {peer_id}")

    async def _serve(self, request_id: int, body: Any) -> None:
        peer_id = self.peer_id
        assert peer_id is not None
        try:
            result = await self.server.handler.on_request(peer_id, body)
            reply = {"t": KIND_RESPONSE, "id": request_id, "b": result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, RequestRefused):
                log.exception("rpc: handler failed on a request from node %d", peer_id)
            reply = {"t": KIND_RESPONSE, "id": request_id, "e": f"{type(exc).__name__}: {exc}"}
        finally:
            self.inflight -= 1
            task = asyncio.current_task()
            if task is not None:
                self.tasks.discard(task)
        try:
            self.write_frame(reply)
        except (TypeError, ValueError, FrameTooLarge) as exc:
            self.write_frame({"t": KIND_RESPONSE, "id": request_id,
                              "e": f"response cannot be encoded: {exc}"})
        self._flow()

    def writable(self) -> None:
        self._flow()

    def _flow(self) -> None:
        """Read only while few requests run and responses can be written."""
        if self.transport is None or self.transport.is_closing():
            return
        busy = self.inflight >= self.server.max_inflight_requests or self.paused
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not busy and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._flow()
