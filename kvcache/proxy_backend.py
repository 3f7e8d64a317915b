"""The proxy's backends: a small pipelined connection pool per backend, health and probes.

Connections: each backend has `pool_size` connection slots; client connection number i
always uses slot i % pool_size, so one client's requests to one backend travel in order on
one TCP connection (memcached answers a connection in order), which is what keeps `set k
noreply` followed by `get k` coherent. Many clients share a slot: requests are pipelined,
each connection is a FIFO of (waiter, reply shape, deadline) answered in order by
kvcache/proxy_wire.py's framer (a waiter is a future or the client's reply slot itself). A
slot connects on first use and again after a failure.

Bounds: at most MAX_PENDING_PER_CONN requests wait on one connection (more are refused with
`SERVER_ERROR backend busy`, without counting against the backend's health); each client
connection bounds its own in-flight requests (kvcache/proxy.py), so the bytes queued toward
a backend are bounded too. Reply lines and values are bounded by the framer.

Timeouts and failures: every request has a deadline (`timeout` after it was sent). When the
oldest request of a connection passes it, or the connection fails (connect error, reset,
closed with requests pending, a reply that breaks the protocol), the connection is dropped
and every request on it fails: a late reply can never be taken for another request's. Each
such event is one failure for the backend's `Router` health (kvcache/ring.py): at
`failure_threshold` consecutive failures the backend is marked down; a reply resets the
count. A down backend is sent no request but its probe, `version` on a fresh connection on
the Router's backoff, and only that probe marks it up (a late reply to a request sent
before it went down does not: in remap mode it would come back without its flush).
With `flush_on_return` (the proxy sets it for `--on-down remap` and for `--replicas` > 1)
the probe then sends `flush_all` before the backend is marked up: while it was down its
keys were written elsewhere only (its ring successor, or the other replicas), so what it
kept through a hang (SIGSTOP) or a cut may be older than the last write; dropping it costs
hits, never a wrong value (with replicas a miss is asked of the next replica, see
kvcache/proxy_exec.py, so it costs no hits there). In remap mode the copies written on the
successors meanwhile would be read, older than the home's, in the backend's next outage, so
once it is back the proxy deletes them there (`kvcache.ring.Router` remembers which; past
its bound those backends are flushed).
Requests are never retried here (a timed-out write may have been applied); the caller
decides (reads fail over to the next replica, see kvcache/proxy_exec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from asyncio import Future
from collections import deque
from time import perf_counter_ns
from typing import Literal, Protocol, TypeVar, overload

from core.stats import LatencyHistogram
from kvcache import proxy_plan
from kvcache.proxy_lane import deliver
from kvcache.proxy_wire import FENCED, LINE, ReplyFramer, Values, WholeValues
from kvcache.ring import Router, ServerSpec, parse_server

log = logging.getLogger("kvcache.proxy")

MAX_PENDING_PER_CONN = 4096
PROBE_TICK_S = 0.1
PROBE_REPLY_BYTES = 256

Reply = bytes | Values | WholeValues
W = TypeVar("W", bound="Waiter")


class BackendFailure(Exception):
    """A request that got no reply from `server`; `line` is what the client is told."""

    def __init__(self, server: str, line: bytes, reason: str) -> None:
        super().__init__(f"{server}: {reason}")
        self.server = server
        self.line = line


def _consume(fut: asyncio.Future[Reply]) -> None:
    """Done callback of a future nobody awaits: retrieve its exception (no warning)."""
    if not fut.cancelled():
        fut.exception()


def ignore(fut: asyncio.Future[Reply]) -> None:
    """Let a request run for its side effect only."""
    fut.add_done_callback(_consume)


class Waiter(Protocol):
    """What gets a request's reply: an asyncio.Future, or the client's reply slot itself
    (kvcache/proxylane_pure.py `Answer`: no future and no callback per request on the hot
    path). `set_result`/`set_exception` are called at most once, never when `done()`."""

    def done(self) -> bool: ...
    def set_result(self, reply: Reply, /) -> None: ...
    def set_exception(self, exc: BaseException, /) -> None: ...


# A request written and not answered yet: (waiter, reply shape, deadline on the loop's
# clock, perf_counter_ns when sent). A plain tuple: one is made per request.
_Pending = tuple[Waiter, str, float, int]


class BackendConn(asyncio.Protocol):
    """One pipelined connection to a backend. Invariant: `pending` holds the requests
    written (or queued in `_out` while connecting) and not yet answered, oldest first."""

    def __init__(self, backend: Backend, slot: int) -> None:
        self.backend = backend
        self.pool = backend.pool
        self.slot = slot
        self.loop = asyncio.get_running_loop()
        self.pending: deque[_Pending] = deque()
        self.framer = ReplyFramer()
        self._framer_idle = True  # framer.idle() as of the end of the last read it took
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._out: list[bytes] = []  # written once connected, or at the end of this tick
        self._flush_soon = False
        self._timer: asyncio.TimerHandle | None = None
        self._connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        backend = self.backend
        try:
            async with asyncio.timeout(self.pool.timeout):
                await self.loop.create_connection(lambda: self, backend.host, backend.port)
        except TimeoutError:
            self._break(proxy_plan.TIMEOUT, "connect timed out")
        except OSError as exc:
            self._break(proxy_plan.CONNECTION_ERROR, f"connect failed: {exc.strerror or exc}")

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._write_out()

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        now = perf_counter_ns()  # the replies in this read all arrived by now
        first = pending[0][3] if pending else now  # when the oldest request was sent
        answered = 0
        if self._framer_idle:  # the plainest replies straight from the read's bytes
            pos, answered = deliver(data, pending, Future)
            if pos == len(data):
                if answered:
                    self._answered(now - first)
                return
            if pos:
                data = data[pos:]
        framer = self.framer
        framer.feed(data)
        try:
            while pending:
                waiter, shape, _, _ = pending[0]
                reply = framer.take(shape)
                if reply is None:
                    break
                pending.popleft()
                answered += 1
                if type(waiter) is not Future or not waiter.done():
                    waiter.set_result(reply)
            else:
                if framer.buffered():
                    raise ValueError("reply without a request")
        except ValueError as exc:
            self._break(proxy_plan.PROTOCOL_ERROR, f"bad reply: {exc}")
            return
        self._framer_idle = framer.idle()
        if answered:
            self._answered(now - first)

    def _answered(self, nanos: int) -> None:
        """A read answered requests: the backend replied (health), and the latency of the
        oldest of them is the read's sample (one per read, not one per reply)."""
        backend = self.backend
        backend.latency.record(nanos)
        self.pool.replied(backend.address)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if self.pending:
            self._break(proxy_plan.CONNECTION_ERROR, f"connection lost: {exc or 'closed'}")
        else:
            self.closed = True
            self.backend.detach(self)
            log.info("backend %s closed an idle connection", self.backend.address)

    # -- requests ------------------------------------------------------------------------
    def send(self, payload: bytes, shape: str, waiter: Waiter) -> None:
        """Queue `payload`; `waiter` gets the reply (or a BackendFailure)."""
        if len(self.pending) >= MAX_PENDING_PER_CONN:
            waiter.set_exception(BackendFailure(self.backend.address, proxy_plan.BUSY, "busy"))
            return
        deadline = self.loop.time() + self.pool.timeout
        self.pending.append((waiter, shape, deadline, perf_counter_ns()))
        self.backend.latency.calls += 1
        # Requests made in one event-loop tick leave in one write (one syscall, not one each).
        self._out.append(payload)
        if self.transport is not None and not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._write_out)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _write_out(self) -> None:
        self._flush_soon = False
        if self._out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._out))
            self._out = []

    def _check_deadline(self) -> None:
        self._timer = None
        if self.closed or not self.pending:
            return
        deadline = self.pending[0][2]
        if deadline <= self.loop.time():
            self.backend.timeouts += 1
            self._break(proxy_plan.TIMEOUT, f"no reply within {self.pool.timeout:g}s")
            return
        self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _break(self, line: bytes, reason: str, count: bool = True) -> None:
        """Drop the connection and fail every request on it; one failure for health."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, deque()
        backend = self.backend
        backend.latency.errors += len(pending)
        backend.detach(self)
        for waiter, _, _, _ in pending:
            if not waiter.done():
                waiter.set_exception(BackendFailure(backend.address, line, reason))
        if count:
            self.pool.connection_failed(backend.address, reason, len(pending))

    def abort(self) -> None:
        """Close now (proxy shutdown): requests still waiting fail."""
        self._connecting.cancel()
        self._break(proxy_plan.CONNECTION_ERROR, "proxy shutting down", count=False)


class Backend:
    """One backend: its connection slots and its figures."""

    def __init__(self, pool: BackendPool, address: str, pool_size: int) -> None:
        self.pool = pool
        self.address = address
        self.host, self.port, _ = parse_server(address)
        self.conns: list[BackendConn | None] = [None] * pool_size
        self.latency = LatencyHistogram()  # calls: requests sent; errors: requests failed
        self.timeouts = 0
        self.marked_down = 0
        self.probes = 0

    def conn(self, index: int) -> BackendConn:
        slot = index % len(self.conns)
        conn = self.conns[slot]
        if conn is None or conn.closed:
            conn = self.conns[slot] = BackendConn(self, slot)
        return conn

    def detach(self, conn: BackendConn) -> None:
        if self.conns[conn.slot] is conn:
            self.conns[conn.slot] = None

    def open_connections(self) -> int:
        return sum(1 for c in self.conns if c is not None and c.transport is not None)

    def inflight(self) -> int:
        return sum(len(c.pending) for c in self.conns if c is not None)


class BackendPool:
    """Every backend, the Router that knows their health, and the probe loop."""

    def __init__(
        self,
        servers: list[ServerSpec],
        *,
        timeout: float,
        pool_size: int,
        failure_threshold: int,
        retry_backoff: tuple[float, float],
        on_down: Literal["fail", "remap"],
        flush_on_return: bool = False,
    ) -> None:
        self.router = Router(servers, failure_threshold, retry_backoff, on_down, time.monotonic)
        self.timeout = timeout
        self.flush_on_return = flush_on_return
        self.backends = {a: Backend(self, a, pool_size) for a in self.router.ring.servers}
        self._probes: dict[str, asyncio.Task[None]] = {}  # at most one running per backend

    @property
    def servers(self) -> tuple[str, ...]:
        return self.router.ring.servers

    def is_down(self, server: str) -> bool:
        return self.router.health[server].down

    @overload
    def send(self, server: str, index: int, payload: bytes, shape: str) -> asyncio.Future[Reply]:
        ...

    @overload
    def send(self, server: str, index: int, payload: bytes, shape: str, waiter: W) -> W: ...

    def send(self, server: str, index: int, payload: bytes, shape: str,
             waiter: Waiter | None = None) -> Waiter:
        """Send on client connection `index`'s slot of `server`; the reply (BackendFailure
        if none comes) goes to `waiter`, by default a new future; returns the waiter."""
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        self.backends[server].conn(index).send(payload, shape, waiter)
        return waiter

    def targets(self, key: bytes, replicas: int, write: bool = False) -> list[str]:
        """The backends for `key` now, in ring order: its home and up to replicas-1
        successors, without the ones marked down ("remap": the ring without them). For a
        `write`, the Router remembers the backends that take it in a down one's place."""
        router = self.router
        if replicas == 1:
            server = router.route(key)
            servers = [] if server is None else [server]
        else:
            ring = router.live if router.on_down == "remap" else router.ring
            successors = ring.get_servers(key, replicas) if len(ring) else []
            servers = [s for s in successors if not router.health[s].down]
        if write and router.any_down:
            for server in servers:
                router.wrote(key, server, replicas)
        return servers

    # -- health --------------------------------------------------------------------------
    def replied(self, server: str) -> None:
        if self.router.health[server].failures:  # cheap test first: this is the hot path
            self.router.answered(server)

    def connection_failed(self, server: str, reason: str, requests: int) -> None:
        health = self.router.health[server]
        was_down = health.down
        self.router.failed(server)
        if was_down:
            log.debug("backend %s (down): %s", server, reason)
            return
        log.warning("backend %s: %s; %d request(s) failed (%d consecutive failure(s))",
                    server, reason, requests, health.failures)
        if health.down:
            self.backends[server].marked_down += 1
            log.warning("backend %s marked down after %d consecutive failures; probing "
                        "with version every %g s or more", server, health.failures,
                        health.backoff)

    async def probe_forever(self) -> None:
        """Start the probes the Router says are due, every PROBE_TICK_S."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROBE_TICK_S)
            for server in self.router.due_probes():
                # One probe at a time: a probe can outlast the claim (timeout > backoff cap),
                # and a second one's stale outcome would count a failure against, or flush,
                # a backend the first had just brought back.
                if server not in self._probes:
                    task = self._probes[server] = loop.create_task(self._probe(server))
                    task.add_done_callback(lambda _, s=server: self._probes.pop(s, None))

    async def _probe(self, server: str) -> None:
        backend = self.backends[server]
        backend.probes += 1
        line = flushed = b""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(backend.host, backend.port)
                try:
                    line = await _ask(reader, writer, b"version\r\n")
                    if line.startswith(b"VERSION ") and self.flush_on_return:
                        flushed = await _ask(reader, writer, b"flush_all\r\n")
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            log.debug("probe of %s failed: %r", server, exc)
        if line.startswith(b"VERSION ") and (flushed == b"OK\r\n" or not self.flush_on_return):
            self.router.succeeded(server)
            log.warning("backend %s is up again (probe answered %s)", server,
                        line.strip().decode(errors="replace"))
            self._clean_up_after(server)
        else:
            self.router.failed(server)

    def _clean_up_after(self, home: str) -> None:
        """Delete the copies written elsewhere in `home`'s place while it was down (remap),
        or flush a backend that got too many to name: read later, in a next outage of
        `home`, they would be older than its value."""
        keys, flooded = self.router.take_moved(home)
        for server in flooded:
            if not self.is_down(server):  # a down one is flushed on its own return
                ignore(self.send(server, 0, b"flush_all\r\n", LINE))
        for server, names in keys.items():
            if server not in flooded and not self.is_down(server):
                for key in names:
                    ignore(self.send(server, 0, proxy_plan.delete_quietly(key).payload, FENCED))
        if keys or flooded:
            log.info("backend %s is back: cleaned %d copies written in its place elsewhere%s",
                     home, sum(map(len, keys.values())),
                     f", flushed {', '.join(sorted(flooded))}" if flooded else "")

    def close(self) -> None:
        for task in list(self._probes.values()):
            task.cancel()
        for backend in self.backends.values():
            for conn in list(backend.conns):
                if conn is not None:
                    conn.abort()


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    """One request line on a probe's connection, and its one-line reply."""
    writer.write(line)
    return await reader.readuntil(b"\r\n")
