"""The thin asyncio layer: sockets in, requests through the engine, replies out.

The path of a `get`, socket to reply (every step in kvcache/; the compiled modules are
chosen in kvcache/twins.py, each beside its pure twin, which documents the same rules):
1. The event loop calls the connection's `data_received`, which is its `Lane`'s
   (kvcache/_mcproto.pyx, twin kvcache/mcproto_pure.py; installed in `Connection.__init__`).
2. A read that is exactly one plain `get`/`gets` line (one key or many) or one plain `set`
   with its data is answered there: `answer` reads the line and calls the storage
   (`Storage.get_reply` / `get_many_reply` / `store_command`, kvcache/_kvstore.pyx, twin
   kvcache/storage_pure.py), which counts it and returns the reply bytes; `Lane.send` writes
   them.
3. A read of simple commands in a pipeline (gets, sets with or without noreply, incr/decr,
   mn, and mg/ms/md/ma with their common flags) is answered there too, by the pipeline lane
   (kvcache/_mcpipe.pyx, twin kvcache/mcpipe_pure.py: its header lists the forms), in one
   write; a read ending inside a command is answered up to it, the rest going on to 4.
4. Any other read goes to `Connection._read`: the `RequestParser` (same modules) cuts it into
   requests and `_process` runs each through kvcache/commands.py (`dispatch` to `cmd_get`,
   which reads the same storage) and writes the queued replies with `Lane.send`.

Per connection: each request the parser yields is executed at once and its reply queued;
the queue is written in one call when the parser runs dry, so a pipeline of N commands costs
one write. Nothing waits inside a command, so replies keep the order of the requests by
construction; the lane answers only while nothing is queued or streaming (`_open_lane`).

Backpressure: when the socket's write buffer passes WRITE_HIGH_WATER the connection stops
parsing *and* reading; requests already buffered stay in the parser (bounded by the framing
limits of kvcache/protocol.py) and resume when the buffer drains. Multi-get replies come
from the engine as streams and are written piece by piece under the same rule.

Listening, admission, idle timeouts and shutdown are core/connections.py's, as for every
daemon: a client beyond the connection limit (-c) is told `ERROR Too many open connections`
and closed, as memcached's maxconns_fast does; with `-o idle_timeout=N` a client idle for more
than N seconds of cache time is closed (counted in idle_kicks), as memcached does.

With -U PORT the same engine also answers UDP datagrams on every interface, framed as
memcached frames them (kvcache/udp.py); UDP is off by default, as in memcached 1.6.

A maintenance task ticks the cache clock (whole seconds, memcached's `current_time`) and
runs the expiry crawler in small slices: a pass over the LRU every CRAWL_PASS_INTERVAL_S,
or at once after `lru_crawler crawl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator

import psutil

from core.clock import Clock
from core.connections import Connections, Listeners
from core.gcfreeze import GcFreezer
from kvcache import commands, replies, udp
from kvcache.commands import FLUSH_AFTER
from kvcache.engine import Closing, Engine, Stream
from kvcache.items import Item
from kvcache.latency import CommandLatency
from kvcache.protocol import Close, Lane, RequestParser
from kvcache.settings import Settings
from kvcache.slabs import SlabClasses
from kvcache.stats import ProcessView
from kvcache.storage import Storage

log = logging.getLogger("kvcache")

WRITE_HIGH_WATER = 1024 * 1024
WRITE_FLUSH_BYTES = 256 * 1024  # queued replies are written once they reach this much
WRITE_JOIN_MAX = 16 * 1024  # queued replies up to this size are joined; larger go as pieces
CRAWL_PASS_INTERVAL_S = 10.0
# The maintenance step's period is `lru_crawler sleep` (settings.crawl_interval_s) within
# these bounds: the cache clock must not fall behind, nor the loop spin.
MIN_TICK_S = 0.001
MAX_TICK_S = 0.1
UNLIMITED_SLICE = 1 << 30  # `lru_crawler tocrawl 0`: no limit per slice, as in memcached
GRACE_S = 5.0


class KvcacheServer:
    """One kvcache daemon: storage, engine, listeners and connections."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        now = clock.wall_ms() // 1000
        slabs = SlabClasses(settings.item_size_max, settings.growth_factor,
                            settings.slab_min_size)
        self.storage = Storage(settings.maxbytes, settings.item_size_max, now,
                               evict=settings.evict_to_free, slabs=slabs,
                               use_cas=settings.use_cas)
        self.stats = self.storage.stats
        self.latency = CommandLatency()  # the connections' timed reads, for the metrics
        process = psutil.Process(os.getpid())
        self.view = ProcessView(
            pid=process.pid,
            started=now,
            cpu_times=lambda: tuple(process.cpu_times()[:2]),  # type: ignore[arg-type,return-value]
            event_loop="asyncio",
            connections=self._connection_table,
        )
        self.stop_requested = asyncio.Event()
        self.engine = Engine(self.storage, settings, self.view,
                             on_shutdown=self.stop_requested.set,
                             on_verbosity=_follow_verbosity)
        self.clients = Connections("kvcache", settings.maxconns,
                                   replies.line(replies.TOO_MANY_CONNECTIONS), WRITE_HIGH_WATER)
        self.current: Connection | None = None  # the one whose requests are running
        self._listeners = Listeners(settings.backlog)
        self._maintenance: asyncio.Task[None] | None = None
        self._next_pass = 0.0
        # Connections, buffers and (with the pure storage twin) items are long-lived
        # objects the cyclic GC would traverse in every full collection: see core/gcfreeze.
        self._gc = GcFreezer(clock.monotonic())
        self.port = 0
        self.udp_port = 0
        self._udp: list[asyncio.DatagramTransport] = []

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, hosts: list[str], port: int) -> None:
        """Listen on `hosts`:`port` (port 0: any free one), or on the -s UNIX socket."""
        loop = asyncio.get_running_loop()
        self.view.event_loop = _event_loop_name(loop)
        path = self.settings.unix_socket
        if path:
            await self._listeners.unix(lambda: Connection(self), path, self.settings.unix_mask)
            self._maintenance = loop.create_task(self._maintain())
            log.info("listening on unix:%s", path)
            return
        port = await self._listeners.tcp(lambda: Connection(self), hosts, port)
        self.port = port
        self.settings.port = port
        if self.settings.udp_port:
            self._udp = await udp.listen(self.engine, self.settings.item_size_max, hosts,
                                         self.settings.udp_port)
            self.udp_port = self._udp[0].get_extra_info("sockname")[1]
            log.info("serving UDP on port %d", self.udp_port)
        self._maintenance = loop.create_task(self._maintain())
        for host in hosts:
            log.info("listening on %s:%d", host, port)

    async def close(self) -> None:
        """Stop accepting, flush what each client was sent, close everything (a client
        still open after GRACE_S is aborted)."""
        for transport in self._udp:
            transport.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self._listeners.shutdown(self.clients, GRACE_S)

    # -- maintenance ---------------------------------------------------------------------
    async def _maintain(self) -> None:
        settings = self.settings
        while True:  # the period is read each time: `lru_crawler sleep` changes it
            await asyncio.sleep(min(max(settings.crawl_interval_s, MIN_TICK_S), MAX_TICK_S))
            try:
                self.maintain_once()
            except Exception:  # never let the clock stop
                log.exception("maintenance step failed")

    def maintain_once(self) -> None:
        """Advance the cache clock; keep the garbage collector off the items; run one
        slice of the crawler when a pass is due."""
        storage = self.storage
        now = self.clock.wall_ms() // 1000
        if now != storage.now:
            storage.tick(now)
            if self.settings.slab_automove and self.settings.slab_reassign:
                storage.automove(self.settings.slab_automove)  # once a second
            if self.settings.idle_timeout:
                self._close_idle(now)
        mono = self.clock.monotonic()
        self._gc.tick(mono)
        if not self.engine.crawler_enabled:
            return
        if not storage.crawling and not self.engine.crawl_requested and mono < self._next_pass:
            return
        if not storage.crawling:
            self.engine.crawl_requested = False
            self.stats.crawler_starts += 1
        reclaimed = storage.crawl(self.settings.crawl_items_per_tick or UNLIMITED_SLICE)
        if reclaimed:
            log.debug("crawler reclaimed %d expired items", reclaimed)
        if not storage.crawling:
            self._next_pass = mono + CRAWL_PASS_INTERVAL_S

    # -- connections ---------------------------------------------------------------------
    def _close_idle(self, now: int) -> None:
        """memcached's idle_timeout: close every client idle for more than that many seconds."""
        kicked = self.clients.close_idle(now, self.settings.idle_timeout, Connection.idle_since)
        if kicked:
            self.stats.idle_kicks += kicked
            log.info("closed %d idle connection(s) (idle_timeout %d s)", kicked,
                     self.settings.idle_timeout)

    def admit(self, conn: Connection) -> bool:
        """Admit `conn` or refuse it (core/connections.py), counted in `stats`."""
        stats = self.stats
        if not self.clients.admit(conn, conn.peer):
            stats.rejected_connections += 1
            return False
        stats.total_connections += 1
        stats.curr_connections = len(self.clients)
        return True

    def release(self, conn: Connection) -> None:
        self.clients.release(conn)
        self.stats.curr_connections = len(self.clients)

    def _connection_table(self) -> list[tuple[int, str, str, str, int]]:
        now = self.storage.now
        rows = []
        for sock in self._listeners.sockets():
            rows.append((sock.fileno(), _address(sock.getsockname()), "", "conn_listening", 0))
        for conn in self.clients.open:
            state = "conn_parse_cmd" if conn is self.current else "conn_waiting"
            rows.append((conn.fd, conn.peer, conn.local, state,
                         max(0, now - conn.last_command)))
        return sorted(rows)


class Connection(asyncio.Protocol):
    """One client. Read, parse, execute, write; nothing else lives here."""

    def __init__(self, server: KvcacheServer) -> None:
        self.server = server
        self.engine = server.engine
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = RequestParser(server.settings.item_size_max,
                                    use_cas=server.settings.use_cas)
        self.fd = -1
        self.peer = "?"
        self.local = "?"
        self._admitted = False
        self._write_paused = False
        self._stream: Iterator[bytes] | None = None
        self._pinned: set[Item] = set()  # see Engine.pinned
        self.lane = Lane(self.parser, server.storage, server.settings, self._pinned, self._read)
        self.lane.latency = server.latency  # one read in 8 timed (kvcache/latency.py)
        # The event loop calls this for every read: the lane, compiled, not a Python frame
        # (asyncio.Protocol's data_received is never reached).
        self.data_received = self.lane.data_received  # type: ignore[method-assign]

    @property
    def last_command(self) -> int:
        """The cache time of the last command served (stats conns)."""
        return self.lane.last_command  # type: ignore[no-any-return]

    def idle_since(self) -> int | None:
        """The cache time of the last command, or None while a reply is streaming or the
        client is not reading its replies: busy, never idle (memcached's rule too)."""
        if self._stream is not None or self._write_paused:
            return None
        return self.last_command  # type: ignore[no-any-return]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            self.local = _address(transport.get_extra_info("sockname"))
            self.peer = _address(transport.get_extra_info("peername"))
            if self.peer == "unix:":
                self.peer = self.local
        if not self.server.admit(self):
            return
        self._admitted = True
        self.lane.attach(transport)
        if self.server.settings.verbose:
            log.info("<%d new client connection from %s", self.fd, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        # Nothing may keep this object alive through a cycle: it is likely frozen out of
        # the garbage collector's reach (core/gcfreeze.py).
        self._stream = None
        self._pinned.clear()
        self.lane.release()
        if not self._admitted:
            return
        self.server.release(self)
        if self.server.current is self:
            self.server.current = None
        if self.server.settings.verbose:
            log.info("<%d connection closed%s", self.fd, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._open_lane()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport.is_closing():
            return
        self._process()
        self._open_lane()
        if not self._write_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def _open_lane(self) -> None:
        """The lane may answer while the connection is neither streaming nor paused:
        otherwise a reply of its own would overtake the queued ones."""
        self.lane.open = self._admitted and self._stream is None and not self._write_paused

    def _read(self, data: bytes) -> None:
        """A read the lane did not answer: through the parser and the request loop."""
        if not self._admitted:
            return
        self.server.stats.bytes_read += len(data)
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        """Run buffered requests until the parser needs bytes or the socket is full.

        Replies are queued and written in one call when the input runs dry (or the queue
        grows large). memcached writes its queue out after a retrieval or `mn`, every -R
        (reqs_per_event) commands and when its input runs dry, and loses what it has not
        written when it drops a connection; those points are kept as `committed` marks, so
        a connection dropped here loses exactly what memcached's would, without paying a
        system call per get."""
        if self._stream is not None and not self._drain_stream():
            return
        server = self.server
        server.current = self
        self.lane.last_command = server.storage.now
        engine = self.engine
        pinned = engine.pinned = self._pinned
        next_request = self.parser.next_request
        execute = commands.execute
        dispatch = commands.dispatch
        settings = server.settings
        reqs_per_event = settings.reqs_per_event
        out: list[bytes] = []
        size = 0
        committed = 0  # replies in out[:committed] are past a memcached write point
        count = 0  # commands since the last write point
        while not self._write_paused:
            request = next_request()
            if request is None:
                break
            if settings.verbose >= 2:  # per request: `verbosity 2` takes effect at once
                log.debug("<%d %r", self.fd, request)
            line = type(request) is list
            try:
                reply = dispatch(engine, request) if line else execute(engine, request)
            except Exception:
                log.exception("request %.200r failed; closing the connection", request)
                self._write([*out, replies.line(replies.INTERNAL_ERROR)])
                self.transport.close()
                return
            if type(reply) is bytes:
                if reply:
                    out.append(reply)  # type: ignore[arg-type]
                    size += len(reply)  # type: ignore[arg-type]
                count += 1
                if count >= reqs_per_event or (line and request and request[0] in FLUSH_AFTER):
                    committed = len(out)
                    count = 0
                    pinned.clear()
                if size >= WRITE_FLUSH_BYTES:
                    self._write(out, size)
                    out, size, committed = [], 0, 0
                continue
            if type(reply) is Stream:
                self._write(out, size)
                out, size, committed, count = [], 0, 0, 0
                self._stream = reply.chunks  # type: ignore[union-attr]
                self._open_lane()
                if not self._drain_stream():
                    return
                continue
            assert isinstance(reply, Closing)
            self._write(out if reply.flush else out[:committed])
            if type(request) is Close:
                log.info("closing %s: %s", self.peer, request.reason)
            self.transport.close()
            return
        self._write(out, size)

    def _drain_stream(self) -> bool:
        """Write stream pieces while the socket takes them; True when the stream is done."""
        stream = self._stream
        assert stream is not None
        for chunk in stream:
            self._write([chunk])
            if self._write_paused or self.transport.is_closing():
                return False
        self._stream = None
        self._open_lane()
        return True

    def _write(self, out: list[bytes], size: int = -1) -> None:
        """Queued replies (`size` bytes in all, -1: not counted yet) in one write, a write
        point (Lane.send). Small ones are joined; once they pass WRITE_JOIN_MAX they go to
        the transport as pieces in one gathered write, so a large value is never copied
        into a joined buffer."""
        if not out:
            return
        if len(out) == 1:
            self.lane.send(out[0])
            return
        if size < 0:
            size = sum(map(len, out))
        if size <= WRITE_JOIN_MAX:
            self.lane.send(b"".join(out))
        else:
            self.lane.send_parts(out, size)


def _follow_verbosity(level: int) -> None:
    """`verbosity 2` turns the per-command trace on, as -vv does; lower levels turn it off."""
    logging.getLogger().setLevel(logging.DEBUG if level >= 2 else logging.INFO)
    log.info("verbosity set to %d", level)


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"tcp:[{host}]:{addr[1]}" if ":" in host else f"tcp:{host}:{addr[1]}"
    if isinstance(addr, str | bytes):  # a UNIX socket path (empty for the client side)
        return f"unix:{addr.decode() if isinstance(addr, bytes) else addr}"
    return str(addr)


def _event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What `stats` prints where memcached prints its libevent version."""
    if type(loop).__module__.split(".")[0] == "uvloop":
        import uvloop

        return f"uvloop-{uvloop.__version__}"
    return "asyncio"
