"""The proxy's asyncio layer: the listener, client connections, and `stats`.

Per client connection, each request takes a slot in a FIFO as it is parsed (kvcache/
protocol.py's parser, then kvcache/proxy_plan.py and kvcache/proxy_exec.py); a slot holds a
reply, a future of one, or (most requests, one backend) the reply the backend connection
delivers into it, and replies are written strictly in slot order, so a slow backend delays
only the replies after it on that connection. With `--replicas` > 1 a request for a key
that an earlier read may still ask another copy for waits, with the requests after it, until
that read answered (kvcache/proxy_order.py). Replies completed in one event-loop tick leave
in one write per connection: connections with replies to write are flushed together, once
per tick, after the tick's backend reads; a reply that is the only one its client waits
for goes at once, from the backend's read (nothing could join its write). A read that is one
plain get or set, while the parser holds nothing, skips the parser and the plan (the lane,
kvcache/proxylane_pure.py). At most MAX_INFLIGHT slots wait per connection:
the proxy then stops reading it (requests already buffered wait in the parser, bounded by
its framing limits); a client that does not read its replies is paused at WRITE_HIGH_WATER
bytes. `quit` closes after the replies before it are written; so does the client's half-close
(EOF, `shutdown(SHUT_WR)`, `nc -q1`): the requests it sent before the FIN are all run and
answered, in order, then the proxy closes, as memcached does. Listening, admission (-c),
that pause and shutdown are core/connections.py's, as for every daemon.

`stats` answers the proxy's own figures (memcached's names where they mean the same, then
`backend:<host:port>:<figure>` for each backend: state up/down, weight, requests, errors,
timeouts, consecutive failures, times marked down, probes, open connections, requests in
flight, latency p50/p99 in microseconds at power-of-two resolution, one sample per backend
read: the oldest request it answered). `stats reset`,
`stats settings` and `stats backends` work too; other arguments get ERROR. It is computed
when its turn comes, after every earlier reply of the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from core import daemon
from core.connections import Connections, Listeners
from core.stats import LatencyHistogram, ProcessFigures
from kvcache import replies
from kvcache.protocol import Reject, RequestParser, Store
from kvcache.proxy_backend import BackendConn, BackendPool
from kvcache.proxy_exec import Answer, Executor, ProxyCounters, Slot
from kvcache.proxy_lane import may_hold_a_block
from kvcache.proxy_order import ReadFence
from kvcache.proxy_plan import CLOSE_NOW, QUIT, VERSION_LINE, Plan, plan
from kvcache.settings import DEFAULT_ITEM_SIZE_MAX, DEFAULT_MAX_CONNECTIONS

log = logging.getLogger("kvcache.proxy")

MAX_INFLIGHT = 256  # requests per client connection waiting for their replies
WRITE_HIGH_WATER = 1024 * 1024
GRACE_S = 5.0


@dataclass
class ProxyConfig:
    servers: list[tuple[str, int, int]]
    replicas: int = 1
    on_down: Literal["fail", "remap"] = "fail"
    timeout: float = 1.0
    failure_threshold: int = 3
    retry_backoff: tuple[float, float] = (0.5, 30.0)
    pool_size: int = 1  # one connection per backend carries every client's requests
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    item_size_max: int = DEFAULT_ITEM_SIZE_MAX

    def validate(self) -> None:
        if not self.servers:
            raise daemon.ConfigError("--servers: at least one backend is needed")
        if not 1 <= self.replicas <= len(self.servers):
            raise daemon.ConfigError("--replicas must be between 1 and the number of servers")
        if self.timeout <= 0 or self.pool_size < 1 or self.failure_threshold < 1:
            raise daemon.ConfigError("--timeout, --pool-size, --failure-threshold must be > 0")
        low, high = self.retry_backoff
        if not 0 < low <= high:
            raise daemon.ConfigError("--retry-backoff MIN,MAX needs 0 < MIN <= MAX")
        if self.max_connections < 1:
            raise daemon.ConfigError("-c must be at least 1")


class ProxyServer:
    """The listener, the client connections, the backend pool and the figures."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.pool = BackendPool(
            list(config.servers), timeout=config.timeout, pool_size=config.pool_size,
            failure_threshold=config.failure_threshold, retry_backoff=config.retry_backoff,
            on_down=config.on_down,
            # a backend back from down may hold values older than the copies written
            # elsewhere meanwhile (kvcache/proxy_backend.py)
            flush_on_return=config.on_down == "remap" or config.replicas > 1,
        )
        self.counters = ProxyCounters()
        self.executor = Executor(self.pool, config.replicas, self.counters, self.stats_reply)
        self.process = ProcessFigures()
        self.clients = Connections("kvcache proxy", config.max_connections,
                                   replies.line(replies.TOO_MANY_CONNECTIONS), WRITE_HIGH_WATER)
        self.bytes_read = 0
        self.bytes_written = 0
        self._ids = itertools.count()
        self._listeners = Listeners()
        self._ready: list[ClientConnection] = []  # connections with replies to write
        self._loop = asyncio.get_running_loop()
        self._probe_task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, hosts: list[str], port: int) -> None:
        port = await self._listeners.tcp(lambda: ClientConnection(self), hosts, port)
        self.port = port
        self._probe_task = asyncio.get_running_loop().create_task(self.pool.probe_forever())
        for host in hosts:
            log.info("proxy listening on %s:%d for %d backends (replicas %d, on-down %s)",
                     host, port, len(self.pool.servers), self.config.replicas,
                     self.config.on_down)

    async def close(self) -> None:
        """Stop accepting; let queued replies be written (up to GRACE_S); close everything."""
        await self._listeners.shutdown(self.clients, GRACE_S, finish=ClientConnection.drain)
        if self._probe_task is not None:
            self._probe_task.cancel()
        self.pool.close()

    def next_index(self) -> int:
        return next(self._ids)

    def reply_ready(self, conn: ClientConnection) -> None:
        """`conn` has replies to write: every such connection is flushed once, after this
        event-loop tick's callbacks (one read from a backend answers many clients)."""
        ready = self._ready
        if not ready:
            self._loop.call_soon(self._flush_ready)
        ready.append(conn)

    def _flush_ready(self) -> None:
        ready, self._ready = self._ready, []
        for conn in ready:
            conn.after_replies()

    # -- stats ---------------------------------------------------------------------------
    def stats_reply(self, tokens: list[bytes]) -> bytes:
        args = tokens[1:]
        if not args:
            lines = self._general() + self._backends()
        elif args == [b"reset"]:
            self.counters.reset()
            for backend in self.pool.backends.values():
                backend.latency = LatencyHistogram()
                backend.timeouts = backend.marked_down = backend.probes = 0
            return replies.RESET
        elif args == [b"settings"]:
            lines = self._settings()
        elif args == [b"backends"]:
            lines = self._backends()
        else:
            return replies.ERROR
        return b"".join(b"STAT %s %s\r\n" % (name.encode(), str(value).encode())
                        for name, value in lines) + replies.END

    def _general(self) -> list[tuple[str, object]]:
        proc = self.process.info()
        counters = self.counters
        down = [s for s in self.pool.servers if self.pool.is_down(s)]
        lines: list[tuple[str, object]] = [
            ("pid", proc["process_id"]),
            ("uptime", proc["uptime_in_seconds"]),
            ("time", int(time.time())),
            ("version", VERSION_LINE[8:-2].decode()),
            ("pointer_size", 64),
            ("rusage_user", proc["used_cpu_user"]),
            ("rusage_system", proc["used_cpu_sys"]),
            ("rss", proc["used_memory_rss"]),
            ("max_connections", self.config.max_connections),
            ("curr_connections", len(self.clients)),
            ("total_connections", self.clients.total),
            ("rejected_connections", self.clients.rejected),
            ("cmd_get", counters.cmd_get),
            ("cmd_set", counters.cmd_set),
            ("cmd_flush", counters.cmd_flush),
            ("cmd_touch", counters.cmd_touch),
            ("get_hits", counters.get_hits),
            ("get_misses", counters.get_misses),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("threads", 1),
            ("proxy_errors", counters.proxy_errors),
            ("proxy_replicas", self.config.replicas),
            ("proxy_on_down", self.config.on_down),
            ("backends", len(self.pool.servers)),
            ("backends_down", len(down)),
        ]
        lines += [(f"proxy_cmd_{name.decode()}", n)
                  for name, n in sorted(counters.commands.items())]
        return lines

    def _backends(self) -> list[tuple[str, object]]:
        lines: list[tuple[str, object]] = []
        for address, backend in self.pool.backends.items():
            health = self.pool.router.health[address]
            hist = backend.latency
            prefix = f"backend:{address}:"
            lines += [
                (prefix + "state", "down" if health.down else "up"),
                (prefix + "weight", self.pool.router.ring.weight(address)),
                (prefix + "requests", hist.calls),
                (prefix + "errors", hist.errors),
                (prefix + "timeouts", backend.timeouts),
                (prefix + "failures", health.failures),
                (prefix + "marked_down", backend.marked_down),
                (prefix + "probes", backend.probes),
                (prefix + "connections", backend.open_connections()),
                (prefix + "inflight", backend.inflight()),
                (prefix + "latency_p50_us", hist.percentile(0.5)),
                (prefix + "latency_p99_us", hist.percentile(0.99)),
            ]
        return lines

    def _settings(self) -> list[tuple[str, object]]:
        config = self.config
        return [
            ("tcpport", self.port),
            ("maxconns", config.max_connections),
            ("item_size_max", config.item_size_max),
            ("proxy_servers", ",".join(self.pool.servers)),
            ("proxy_replicas", config.replicas),
            ("proxy_on_down", config.on_down),
            ("proxy_timeout", config.timeout),
            ("proxy_failure_threshold", config.failure_threshold),
            ("proxy_retry_backoff", "{:g},{:g}".format(*config.retry_backoff)),
            ("proxy_pool_size", config.pool_size),
        ]


class ClientConnection(asyncio.Protocol):
    """One client: parse, plan, run, and write the replies in request order."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.parser = RequestParser(proxy.config.item_size_max)
        self.index = proxy.next_index()
        self.queue: deque[Slot | Answer] = deque()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = "?"
        self.closed = False
        self._admitted = False
        self._quitting = False  # no more requests: close once the queue is written
        self._write_paused = False
        self._reading = True
        self._eof = False  # the client half-closed: no more bytes will come
        self._barrier: Slot | Answer | asyncio.Future[Any] | None = None
        # replicated reads that may still ask another copy; a later request for one of
        # their keys is held (`_held`) until they answer (kvcache/proxy_order.py)
        self._fence = ReadFence()
        self._held: Plan | None = None
        self._notify = self._on_answer  # made once, not per request
        self._flush_soon = False
        # The lane may take the next read: the parser holds nothing (no byte, no block it
        # waits for or swallows). Recomputed after each read the parser takes.
        self._lane_open = True
        self._lane = proxy.executor.lane
        self._value_max = self.parser.lane_value_max
        self._swallowing = False  # the parser's last request may have begun a swallow
        self._conns: dict[str, BackendConn] = {}  # the lane's backend connections, by server

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = str(transport.get_extra_info("peername"))
        if not self.proxy.clients.admit(self, self.peer):
            return
        self._admitted = True
        log.debug("client %s connected", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._admitted:
            return
        self.proxy.clients.release(self)
        for slot in self.queue:  # their replies have nowhere to go; writes still finish
            if slot.fut is not None:
                slot.fut.add_done_callback(_consume)
        self.queue.clear()
        log.debug("client %s disconnected%s", self.peer, f": {exc}" if exc else "")

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self._quitting:
            return
        self.proxy.bytes_read += len(data)
        if self._lane_open and self._held is None and not self._blocked():
            slot = self._lane(data, self.index, self._value_max, self._conns)
            if slot is not None:
                self.queue.append(slot)
                if slot.waiting:
                    slot.notify = self._notify
                else:  # failed at once (busy, or a connection already broken)
                    self._flush()
                if len(self.queue) >= MAX_INFLIGHT:
                    self._set_reading()
                return
        parser = self.parser
        held_before = parser.buffered() > 0
        parser.feed(data)
        self._process()
        self._lane_open = (parser.buffered() == 0 and not parser.closed
                           and not self._swallowing and not may_hold_a_block(data, held_before))

    def eof_received(self) -> bool:
        """The client half-closed: answer every complete request it sent, then close
        (a partial request left in the parser is dropped, as memcached drops it). True keeps
        the transport open for those replies."""
        self._eof = True
        if self._admitted and not self.closed:
            self._process()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._process()

    # -- the request loop ------------------------------------------------------------------
    def _blocked(self) -> bool:
        barrier = self._barrier
        return (self._write_paused or len(self.queue) >= MAX_INFLIGHT
                or (barrier is not None and not barrier.done()))

    def _process(self) -> None:
        """Run the buffered requests until the parser needs bytes or a limit holds them back
        (MAX_INFLIGHT, a barrier, a full socket); reading stays paused while one does."""
        parser = self.parser
        run = self.proxy.executor.run
        queue = self.queue
        while True:
            held = False
            while not self._quitting and not self.closed:
                if self._blocked():
                    held = True
                    break
                action = self._held
                if action is not None:  # the read it waited for answered; others may not
                    self._held = None
                else:
                    request = parser.next_request()
                    if request is None:
                        if self._eof:  # nothing more can come: close once answered
                            self._quitting = True
                        break
                    kind = type(request)
                    self._swallowing = kind is Reject or (kind is Store and request.too_large)
                    action = plan(request)
                    if action is QUIT:
                        self._quitting = True
                        break
                    if action is CLOSE_NOW:
                        log.info("closing %s: %s", self.peer,
                                 getattr(request, "reason", "HTTP"))
                        self.transport.close()
                        return
                if self._fence.reads:
                    wait = self._fence.hold(action)
                    if wait is not None:  # a read of its key may still ask a replica
                        self._held, self._barrier, held = action, wait, True
                        break
                try:
                    slot = run(action, self.index)
                except Exception:
                    log.exception("request %.200r failed; closing the connection", action)
                    self._write([replies.line(replies.INTERNAL_ERROR)])
                    self.transport.close()
                    return
                queue.append(slot)
                if slot.waiting:
                    slot.notify = self._notify  # type: ignore[union-attr]
                elif slot.fut is not None:
                    slot.fut.add_done_callback(self._on_done)
                    if slot.barrier:
                        self._barrier = slot
                    if slot.reads is not None:
                        self._fence.add(slot.reads, slot.fut)
            if (queue and queue[0].done()) or self._quitting:  # most wait for a backend
                self._flush()
            # Writing may have freed room: requests already buffered must not wait for
            # more bytes from the client (which may have sent its whole pipeline).
            if not held or self._blocked() or self._quitting or self.closed:
                break
        self._set_reading()

    def _on_done(self, _fut: asyncio.Future[Any]) -> None:
        self._on_reply()

    def _on_answer(self, slot: Answer) -> None:
        """`slot` (an Answer of this connection) just got its reply or failure."""
        queue = self.queue
        if (len(queue) == 1 and queue[0] is slot and self._reading and not self._flush_soon
                and not self._quitting and not self._eof and not self.closed):
            # The only reply this client waits for: nothing could join its write, so it
            # goes now, with no flush scheduled and nothing held back. (Only the slot that
            # just completed: a future's done callback runs a tick late, when its slot may
            # be written and the only one left a request still waiting.)
            queue.pop()
            reply = slot.result(self.proxy.counters)
            if reply:
                self.proxy.bytes_written += len(reply)
                self.transport.write(reply)
            return
        self._on_reply()

    def _on_reply(self) -> None:
        # Replies that complete in one tick (one backend read answers many) go out in one
        # write: the flush runs once, after this tick's callbacks.
        if not self._flush_soon and not self.closed:
            self._flush_soon = True
            self.proxy.reply_ready(self)

    def after_replies(self) -> None:
        self._flush_soon = False
        if self.closed:
            return
        if not self._reading or self._eof:  # requests held back (MAX_INFLIGHT, a barrier)
            self._process()
        else:
            self._flush()

    def _flush(self) -> None:
        queue = self.queue
        out = []
        counters = self.proxy.counters
        while queue and queue[0].done():
            reply = queue.popleft().result(counters)
            if reply:
                out.append(reply)
        if out:
            self._write(out)
        if self._quitting and not queue and not self.closed:
            self.transport.close()

    def _write(self, out: list[bytes]) -> None:
        if out and not self.closed:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.proxy.bytes_written += len(data)
            self.transport.write(data)

    def _set_reading(self) -> None:
        if self.closed or self._eof:  # after EOF the transport reads nothing (resuming
            return  # it would deliver the EOF again)
        want = not self._blocked() and not self._quitting
        if want != self._reading:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def drain(self) -> None:
        """Shutdown: take no more requests; close once the queued replies are written."""
        self._quitting = True
        self._set_reading()
        self._flush()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
