"""The connecting end: one persistent, authenticated connection per peer, with a bounded
queue, reconnects with backoff, fire-and-forget sends and requests with timeouts.

A `Peer` connects lazily (on the first send or request) and then keeps a connection up:
when it breaks, it reconnects with exponential backoff and jitter (`backoff_min` up to
`backoff_max`). Frames are encoded when queued and written in one `transport.write` per
event-loop iteration. The queue is bounded in frames and bytes: while the peer is down or
not reading (its TCP window and our transport buffer are full), the oldest frames are
dropped and counted (`stats["dropped"]`). Raft resends what matters, so dropping the oldest
is the right policy for its traffic; a request whose frame is dropped times out.

`send` returns False when the peer is not connected right now ("unreachable": the caller
may tell Raft, `Node.report_unreachable`). `request` raises PeerUnavailable at once when
the last connection attempt failed, when the next attempt fails, or when the connection
breaks while it waits; its `sent` tells whether the request reached a transport (if not,
it never ran and may be retried). RpcTimeout after `timeout` (it may or may not have run;
a request that timed out before being written is never sent late).

`RpcClient` is the set of peers of one node, keyed by node id, with their addresses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from collections.abc import Mapping
from typing import Any

from core.rpc.auth import (
    DEFAULT_AUTH_TIMEOUT_S,
    ConnectorHandshake,
    check_auth_allowed,
    new_nonce,
    normalize_secret,
)
from core.rpc.connection import KIND_MESSAGE, KIND_REQUEST, KIND_RESPONSE, FramedProtocol, log
from core.rpc.errors import (
    AuthError,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RpcError,
    RpcTimeout,
)
from core.rpc.framing import DEFAULT_MAX_FRAME_BYTES, encode_frame

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "Address",
    "Peer",
    "RpcClient",
]

Address = tuple[str, int]

DEFAULT_MAX_QUEUE_FRAMES = 4096
DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_BACKOFF_MIN_S = 0.05
DEFAULT_BACKOFF_MAX_S = 2.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0


class OutboundConnection(FramedProtocol):
    """The connector's side: runs the handshake, then routes responses to its Peer."""

    def __init__(self, peer: Peer, handshake: ConnectorHandshake) -> None:
        super().__init__(peer.max_frame_bytes)
        self.peer = peer
        self.handshake = handshake
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Whoever awaited it may be gone (cancelled): never warn about an unread failure.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.open = False

    def frame_received(self, frame: dict[str, Any]) -> None:
        if self.open:
            if frame.get("t") == KIND_RESPONSE and type(frame.get("id")) is int:
                self.peer._response(frame)
            else:
                self.close(f"protocol error: unexpected frame {frame.get('t')!r}")
            return
        try:
            if frame.get("t") == "hello":
                self.write_frame(self.handshake.receive_hello(frame))
                return
            self.handshake.receive_ok(frame)
        except AuthError as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            self.close()
            return
        self.open = True
        self.authenticated()
        if not self.ready.done():
            self.ready.set_result(None)

    def lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection closed during handshake "
                                                     f"({exc or 'by the peer'})"))
        self.peer._lost(self)

    def writable(self) -> None:
        self.peer._schedule_flush()


class Peer:
    """The connection to node `peer_id` at `address` (see the module header)."""

    def __init__(self, node_id: int, peer_id: int, address: Address,
                 secret: str | bytes | None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 auth_timeout: float = DEFAULT_AUTH_TIMEOUT_S,
                 backoff_min: float = DEFAULT_BACKOFF_MIN_S,
                 backoff_max: float = DEFAULT_BACKOFF_MAX_S) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.secret = normalize_secret(secret)
        check_auth_allowed(address[0], self.secret)
        self.address = address
        self.max_frame_bytes = max_frame_bytes
        self.max_queue_frames = max_queue_frames
        self.max_queue_bytes = max_queue_bytes
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stats = {"sent": 0, "dropped": 0, "connects": 0, "failures": 0}
        self.down_reason: str | None = None  # why the last attempt failed; None if it did not
        self._queue: deque[tuple[bytes, int]] = deque()  # (frame, request id or 0)
        self._queued_bytes = 0
        self._conn: OutboundConnection | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._written: set[int] = set()  # ids of pending requests handed to a transport
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._closed = False
        self._rng = random.Random()

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """An authenticated connection is up now."""
        return self._conn is not None

    @property
    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue)

    def set_address(self, address: Address) -> None:
        """Point at a new address; an existing connection is dropped and re-made."""
        if address == self.address:
            return
        check_auth_allowed(address[0], self.secret)
        self.address = address
        if self._conn is not None:
            self._conn.close(f"node {self.peer_id} moved to {address[0]}:{address[1]}",
                             logging.INFO)

    # -- sending -------------------------------------------------------------------------------

    def send(self, body: Any) -> bool:
        """Queue a one-way message. True if connected now, False if the peer is unreachable
        (the frame stays queued, within bounds). Raises FrameTooLarge or TypeError for a
        body that cannot be sent at all."""
        self._enqueue(encode_frame({"t": KIND_MESSAGE, "b": body}, self.max_frame_bytes), 0)
        return self._conn is not None

    async def request(self, body: Any, timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> Any:
        """Send a request and wait for its response body. Raises PeerUnavailable,
        RpcTimeout, RemoteError (the handler raised) or FrameTooLarge/TypeError."""
        if self._conn is None and self.down_reason is not None:
            raise PeerUnavailable(f"node {self.peer_id} is unreachable: {self.down_reason}",
                                  sent=False)
        request_id = next(self._ids)
        frame = encode_frame({"t": KIND_REQUEST, "id": request_id, "b": body},
                             self.max_frame_bytes)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._enqueue(frame, request_id)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise RpcTimeout(f"no response from node {self.peer_id} within {timeout}s") from None
        finally:
            self._pending.pop(request_id, None)
            self._written.discard(request_id)

    def _enqueue(self, frame: bytes, request_id: int) -> None:
        if self._closed:
            raise PeerUnavailable(f"peer {self.peer_id} is closed")
        queue = self._queue
        queue.append((frame, request_id))
        self._queued_bytes += len(frame)
        while len(queue) > 1 and (len(queue) > self.max_queue_frames
                                  or self._queued_bytes > self.max_queue_bytes):
            self._queued_bytes -= len(queue.popleft()[0])
            self.stats["dropped"] += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._conn is not None and self._queue:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._conn
        if conn is None or conn.paused or not self._queue:
            return
        pending = self._pending
        # A request that already failed (timeout, lost connection) is not sent late.
        frames = [frame for frame, rid in self._queue
                  if not rid or (rid in pending and not pending[rid].done())]
        self._written.update(rid for _, rid in self._queue if rid in pending)
        data = b"".join(frames)
        self.stats["sent"] += len(frames)
        self._queue.clear()
        self._queued_bytes = 0
        conn.write_bytes(data)

    # -- responses and connection life ---------------------------------------------------------

    def _response(self, frame: dict[str, Any]) -> None:
        future = self._pending.get(frame["id"])
        if future is None or future.done():
            return  # it timed out meanwhile
        if "e" in frame:
            future.set_exception(RemoteError(str(frame["e"])))
        else:
            future.set_result(frame.get("b"))

    def _lost(self, conn: OutboundConnection) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        self._fail_pending(f"connection to node {self.peer_id} lost with the request "
                           "outstanding (it may or may not have run)")

    def _fail_pending(self, reason: str) -> None:
        for request_id, future in self._pending.items():
            if not future.done():
                future.set_exception(PeerUnavailable(reason, request_id in self._written))

    async def _run(self) -> None:
        """Keep a connection up until `close`, reconnecting with backoff."""
        backoff = self.backoff_min
        while not self._closed:
            try:
                conn = await self._connect()
            except (OSError, TimeoutError, RpcError, ConnectionError) as exc:
                self._failed(exc)
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            backoff = self.backoff_min
            if self.down_reason is not None or self.stats["connects"] == 0:
                log.info("rpc: node %d connected to node %d at %s:%d", self.node_id,
                         self.peer_id, *self.address)
            self.stats["connects"] += 1
            self.down_reason = None
            self._conn = conn
            self._schedule_flush()
            await conn.closed
            self._lost(conn)

    async def _connect(self) -> OutboundConnection:
        loop = asyncio.get_running_loop()
        handshake = ConnectorHandshake(self.node_id, self.peer_id, self.secret, new_nonce())
        host, port = self.address
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: OutboundConnection(self, handshake),
                                                   host, port)
        try:
            async with asyncio.timeout(self.auth_timeout):
                await conn.ready
        except BaseException:
            if not conn.ready.done():
                conn.ready.cancel()  # nobody will read an exception set later
            conn.close()
            raise
        return conn

    def _failed(self, exc: BaseException) -> None:
        self.stats["failures"] += 1
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, AuthError | ProtocolError):
            level = logging.ERROR  # a misconfiguration, not an outage
        else:
            level = logging.WARNING
        if reason != self.down_reason:
            log.log(level, "rpc: node %d cannot reach node %d at %s:%d: %s", self.node_id,
                    self.peer_id, *self.address, reason)
        self.down_reason = reason
        self._fail_pending(f"node {self.peer_id} is unreachable: {reason}")

    async def close(self) -> None:
        """Drop the queue, fail pending requests and stop reconnecting."""
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        if self._conn is not None:
            self._conn.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail_pending(f"peer {self.peer_id} closed")


class RpcClient:
    """The peers of node `node_id`, by id. `peer_options` go to every Peer."""

    def __init__(self, node_id: int, secret: str | bytes | None,
                 addresses: Mapping[int, Address] | None = None, **peer_options: Any) -> None:
        self.node_id = node_id
        self.secret = normalize_secret(secret)
        self.peer_options = peer_options
        self.addresses: dict[int, Address] = dict(addresses or {})
        self.peers: dict[int, Peer] = {}
        for address in self.addresses.values():
            check_auth_allowed(address[0], self.secret)

    def set_address(self, peer_id: int, address: Address) -> None:
        self.addresses[peer_id] = address
        if peer_id in self.peers:
            self.peers[peer_id].set_address(address)

    def peer(self, peer_id: int) -> Peer:
        """The Peer for `peer_id` (made on first use). KeyError if its address is unknown."""
        peer = self.peers.get(peer_id)
        if peer is None:
            peer = Peer(self.node_id, peer_id, self.addresses[peer_id], self.secret,
                        **self.peer_options)
            self.peers[peer_id] = peer
        return peer

    def send(self, peer_id: int, body: Any) -> bool:
        """Fire and forget; False if the peer is unreachable or its address unknown."""
        if peer_id not in self.addresses:
            return False
        return self.peer(peer_id).send(body)

    async def request(self, peer_id: int, body: Any,
                      timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> Any:
        if peer_id not in self.addresses:
            raise PeerUnavailable(f"no address known for node {peer_id}", sent=False)
        return await self.peer(peer_id).request(body, timeout)

    async def remove(self, peer_id: int) -> None:
        """Forget `peer_id`: close its connection and its address."""
        self.addresses.pop(peer_id, None)
        peer = self.peers.pop(peer_id, None)
        if peer is not None:
            await peer.close()

    async def close(self) -> None:
        peers, self.peers = list(self.peers.values()), {}
        await asyncio.gather(*(peer.close() for peer in peers))
