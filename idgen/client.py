"""Client library for idgen: `IdgenClient` (blocking) and `AsyncIdgenClient` (asyncio).

Strategy
- Failover. Servers are tried in order, starting from the one that answered last. A server
  that cannot be reached, times out, breaks the protocol or answers one of the "cannot issue
  now" errors (CLOCK, CONFLICT, SKEW, OVERFLOW, NOAUTH, IOERR, ...) is marked down for a
  backoff (1 s, doubling up to 30 s) and the next one is tried. When every server is marked
  down, the one whose backoff ends first is probed; if nothing answers, `IdgenUnavailable`.
  An `-ERR` reply is the caller's mistake and raises `IdgenUsageError` without failover.
- Prefetch. With `prefetch=P`, ids wait in a local deque and `next_id()` pops one: a length
  check and a `popleft` on the fast path. Once the deque holds fewer than P//2 ids, a
  background refiller (a daemon thread, or an asyncio task) asks for `NEXT batch` until it
  holds at least P//2 again. An empty deque makes `next_id()` wait for the refill.
- Ordering. Servers have distinct worker ids, so ids are unique across servers, and each
  server's ids are strictly increasing. Ids handed out by one client may come from several
  servers (after a failover, or through the prefetch buffer), so they are unique but not
  globally increasing. Ids fetched but never handed out (buffer left at `close()`, replies
  lost to a timeout) are simply skipped; no id is ever handed out twice.

Offline decoding is `idgen.layout.parse`, re-exported here as `parse`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from core.resp_client import (
    AsyncRespConnection,
    ProtocolError,
    ReplyError,
    RespConnection,
)
from idgen import layout
from idgen.layout import ParsedId

__all__ = [
    "AsyncIdgenClient",
    "IdgenClient",
    "IdgenError",
    "IdgenUnavailable",
    "IdgenUsageError",
    "ParsedId",
    "parse",
]

parse = layout.parse

log = logging.getLogger(__name__)

MAX_BATCH: Final = 100_000  # the most ids one `NEXT n` may ask for
BACKOFF_INITIAL_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
RETRY_PAUSE_MIN_S: Final = 0.05  # refiller pause after a failed refill, bounds
RETRY_PAUSE_MAX_S: Final = 1.0
DEFAULT_TIMEOUT_S: Final = 1.0
# Error codes meaning "this server cannot issue ids now; another one may".
CANNOT_ISSUE_CODES: Final = frozenset(
    {"CLOCK", "CONFLICT", "SKEW", "OVERFLOW", "NOAUTH", "WRONGPASS", "IOERR", "LOADING", "BUSY"}
)
# -ERR replies that are the server's trouble rather than the caller's.
SERVER_TROUBLE_PREFIXES: Final = ("ERR max number of clients", "ERR internal error")

T = TypeVar("T")


class IdgenError(Exception):
    """Base of everything the idgen client raises."""


class IdgenUsageError(IdgenError, ValueError):
    """The server refused the request itself (`-ERR ...`): bad arguments, unknown command."""


class IdgenUnavailable(IdgenError, ConnectionError):
    """No server could issue ids. `errors` maps each server to its last failure."""

    def __init__(self, message: str, errors: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = dict(errors or {})

    def __str__(self) -> str:
        return self.message


class _Refused(Exception):
    """A server refused the connection set-up (AUTH); counts as a server failure."""


def parse_servers(servers: str | Sequence[str]) -> list[tuple[str, int]]:
    """`"h:p,h:p"` or `["h:p", ...]` (IPv6 as `[::1]:p`) as (host, port) pairs."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out: list[tuple[str, int]] = []
    for item in items:
        text = item.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"server must be HOST:PORT, not {item!r}")
        out.append((host.removeprefix("[").removesuffix("]"), int(port_text)))
    if not out:
        raise ValueError("at least one server is needed")
    return out


@dataclass
class _Server:
    host: str
    port: int
    down_until: float = 0.0  # monotonic seconds; the server is skipped before then
    backoff: float = 0.0  # length of the last down period; 0 while healthy
    last_error: BaseException | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class _Pool:
    """Which server to try next and which are marked down. Pure: `now` is passed in."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.servers = [_Server(host, port) for host, port in addresses]
        self.current = 0

    def order(self, now: float) -> list[int]:
        """Servers to try, from the current one on, skipping those marked down; if all are
        down, only the one whose backoff ends first (a probe)."""
        count = len(self.servers)
        rotation = [(self.current + i) % count for i in range(count)]
        ready = [i for i in rotation if self.servers[i].down_until <= now]
        if ready:
            return ready
        return [min(rotation, key=lambda i: self.servers[i].down_until)]

    def succeeded(self, index: int) -> None:
        self.current = index
        server = self.servers[index]
        if server.backoff:
            log.info("idgen server %s is answering again", server.name)
            server.backoff = 0.0
            server.down_until = 0.0

    def failed(self, index: int, now: float, error: BaseException) -> None:
        server = self.servers[index]
        was_up = not server.backoff
        server.backoff = min(max(server.backoff * 2, BACKOFF_INITIAL_S), BACKOFF_MAX_S)
        server.down_until = now + server.backoff
        server.last_error = error
        log.log(
            logging.WARNING if was_up else logging.DEBUG,
            "idgen server %s marked down for %.0f s: %s", server.name, server.backoff, error,
        )

    def retry_in(self, now: float) -> float:
        """Seconds until the first marked-down server may be tried again (0: one is up)."""
        return max(0.0, min(s.down_until for s in self.servers) - now)

    def unavailable(self) -> IdgenUnavailable:
        errors: dict[str, BaseException] = {
            s.name: s.last_error for s in self.servers if s.last_error is not None
        }
        detail = "; ".join(f"{name}: {error}" for name, error in errors.items())
        return IdgenUnavailable(f"no idgen server can issue ids ({detail})", errors)


def _is_usage_error(error: ReplyError) -> bool:
    if error.code in CANNOT_ISSUE_CODES:
        return False
    return not error.message.startswith(SERVER_TROUBLE_PREFIXES)


def _check_one(reply: object) -> int:
    if type(reply) is not int:
        raise ProtocolError(f"NEXT answered {reply!r:.80}, not an integer")
    return reply


def _check_many(count: int) -> Callable[[object], list[int]]:
    def check(reply: object) -> list[int]:
        if (
            type(reply) is not list
            or len(reply) != count
            or type(reply[0]) is not int
            or type(reply[-1]) is not int
        ):
            raise ProtocolError(f"NEXT {count} answered {reply!r:.80}, not {count} integers")
        return reply

    return check


def _check_parsed(reply: object) -> ParsedId:
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    if not isinstance(reply, dict):
        raise ProtocolError(f"PARSE answered {reply!r:.80}")
    fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in reply.items()}
    try:
        return ParsedId(
            int(fields["id"]), int(fields["time_ms"]), int(fields["worker"]),
            int(fields["sequence"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"PARSE answered {reply!r:.80}") from exc


def _prefetch_plan(prefetch: int, batch: int | None) -> tuple[int, int]:
    """(batch, low water) for a prefetch target; checks the arguments.

    The refiller fetches while the buffer holds fewer than `low` ids (at least 1)."""
    if prefetch < 0:
        raise ValueError("prefetch must be >= 0")
    if batch is None:
        batch = min(MAX_BATCH, max(1, prefetch - prefetch // 2))
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be within 1..{MAX_BATCH}")
    return batch, max(1, prefetch // 2)


def _copy_error(error: IdgenError) -> IdgenError:
    """A fresh exception to raise in another thread or task, chained to the original."""
    if isinstance(error, IdgenUnavailable):
        fresh: IdgenError = IdgenUnavailable(error.message, error.errors)
    else:
        fresh = type(error)(*error.args)
    fresh.__cause__ = error
    return fresh


def _count_ids(n: int) -> list[int]:
    if n < 0:
        raise ValueError("n must be >= 0")
    return [min(MAX_BATCH, n - done) for done in range(0, n, MAX_BATCH)]


# -- blocking ----------------------------------------------------------------------------


class _Caller:
    """Blocking requests with failover; one connection per server; thread-safe by a lock."""

    def __init__(self, pool: _Pool, password: str | None, timeout: float) -> None:
        self.pool = pool
        self.password = password
        self.timeout = timeout
        self.closed = False
        self._lock = threading.Lock()
        self._conns: list[RespConnection | None] = [None] * len(pool.servers)

    def call(self, check: Callable[[object], T], *args: str | int) -> T:
        with self._lock:
            if self.closed:
                raise IdgenError("the idgen client is closed")
            pool = self.pool
            for index in pool.order(time.monotonic()):
                try:
                    result = check(self._conn(index).call(*args))
                except ReplyError as exc:
                    if _is_usage_error(exc):
                        pool.succeeded(index)
                        raise IdgenUsageError(exc.message) from None
                    failure: BaseException = exc
                except (OSError, ProtocolError, _Refused) as exc:
                    failure = exc
                else:
                    pool.succeeded(index)
                    return result
                self._drop(index)
                pool.failed(index, time.monotonic(), failure)
            raise pool.unavailable()

    def _conn(self, index: int) -> RespConnection:
        conn = self._conns[index]
        if conn is None or conn.closed:
            server = self.pool.servers[index]
            try:
                conn = RespConnection.connect(
                    server.host, server.port, self.timeout, password=self.password
                )
            except ReplyError as exc:
                raise _Refused(f"connection set-up refused: {exc}") from exc
            self._conns[index] = conn
        return conn

    def _drop(self, index: int) -> None:
        conn, self._conns[index] = self._conns[index], None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self.closed = True
        # A request in flight ends within its timeout; wait for it rather than pull its socket.
        got = self._lock.acquire(timeout=self.timeout * 2 * len(self._conns) + 1)
        try:
            for index in range(len(self._conns)):
                self._drop(index)
        finally:
            if got:
                self._lock.release()


class _Refiller:
    """The background side of prefetching: a daemon thread that keeps `len(buf) >= low`.

    Consumers call `wake()` after taking an id that may have left fewer than `low`, and
    `take()` when the buffer is empty. The thread holds no reference to the client, so a
    dropped client can be collected (a finalizer then stops the thread).
    """

    def __init__(
        self, caller: _Caller, buf: deque[int], low: int, batch: int, wait_s: float
    ) -> None:
        self.caller = caller
        self.buf = buf
        self.low = low
        self.batch = batch
        self.wait_s = wait_s
        self.cond = threading.Condition()
        self.closed = False
        # Invariant: while the thread waits for work, wake_pending is False or a notify is due.
        self.wake_pending = False
        self.error: IdgenError | None = None
        self.failures = 0  # failed refills so far; take() raises on a change
        self.thread = threading.Thread(target=self._run, name="idgen-prefetch", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            with self.cond:
                self.cond.notify_all()

    def take(self) -> int:
        """An id, waiting up to `wait_s` for a refill; raises the refill's failure."""
        buf = self.buf
        with self.cond:
            seen = self.failures
            deadline = time.monotonic() + self.wait_s
            while True:
                if buf:
                    return buf.popleft()
                if self.closed:
                    raise IdgenError("the idgen client is closed")
                if self.failures != seen and self.error is not None:
                    raise _copy_error(self.error)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise IdgenUnavailable(f"no prefetched id arrived within {self.wait_s:.1f} s")
                self.cond.wait(remaining)

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _run(self) -> None:
        cond = self.cond
        buf = self.buf
        check = _check_many(self.batch)
        while True:
            with cond:
                while not self.closed and len(buf) >= self.low:
                    self.wake_pending = False
                    cond.wait()
                if self.closed:
                    break
            try:
                ids = self.caller.call(check, "NEXT", self.batch)
            except Exception as exc:
                if not isinstance(exc, IdgenError):
                    log.exception("idgen prefetch failed unexpectedly")
                    exc = IdgenUnavailable(f"prefetch failed: {exc!r}")
                with cond:
                    self.error = exc
                    self.failures += 1
                    cond.notify_all()
                    pause = self.caller.pool.retry_in(time.monotonic())
                    if not self.closed:
                        cond.wait(min(max(pause, RETRY_PAUSE_MIN_S), RETRY_PAUSE_MAX_S))
                continue
            buf.extend(ids)
            with cond:
                cond.notify_all()
        self.caller.close()  # this thread was the last user of the connections


class _ClientBase:
    """What the blocking and the asyncio client share: settings and the prefetch buffer."""

    __slots__ = ("_buf", "_low", "servers", "timeout", "prefetch", "batch")

    parse = staticmethod(layout.parse)

    def _setup(
        self, servers: str | Sequence[str], timeout: float, prefetch: int, batch: int | None
    ) -> tuple[list[tuple[str, int]], int, float]:
        """Validate and store the settings; (addresses, low-water mark, refill wait)."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        addresses = parse_servers(servers)
        self.servers = [f"{host}:{port}" for host, port in addresses]
        self.timeout = timeout
        self.prefetch = prefetch
        self.batch, low = _prefetch_plan(prefetch, batch)
        self._buf: deque[int] = deque()
        # Invariants: the fast path pops only while more than _low ids are held, so it never
        # leaves fewer than _low (the refiller's threshold) behind. Without prefetch _low is 0
        # and _buf stays empty, so next_id always takes the slow path.
        self._low = low if prefetch else 0
        return addresses, low, 2 * timeout * len(addresses)

    @property
    def buffered(self) -> int:
        """Prefetched ids held locally right now."""
        return len(self._buf)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {','.join(self.servers)} prefetch={self.prefetch}>"


class IdgenClient(_ClientBase):
    """Blocking idgen client with failover and optional prefetching; safe to share by threads.

    `servers`: "host:port", a comma-separated list of them, or a list. `timeout` bounds each
    connect and each request, per server tried. `prefetch=P > 0` keeps up to about P ids
    locally (see the module docstring); `batch` ids are requested per refill (default P - P//2).
    """

    __slots__ = ("_caller", "_refiller", "_finalizer", "__weakref__")

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        prefetch: int = 0,
        batch: int | None = None,
    ) -> None:
        addresses, low, wait_s = self._setup(servers, timeout, prefetch, batch)
        self._caller = _Caller(_Pool(addresses), password, timeout)
        self._refiller: _Refiller | None = None
        if prefetch:
            self._refiller = _Refiller(self._caller, self._buf, low, self.batch, wait_s)
        self._finalizer = weakref.finalize(self, _shutdown, self._caller, self._refiller)

    def next_id(self) -> int:
        """One new id. IdgenUnavailable if no server can issue one in time."""
        buf = self._buf
        if len(buf) > self._low:
            return buf.popleft()
        return self._next_id_slow()

    def _next_id_slow(self) -> int:
        refiller = self._refiller
        if refiller is None:
            return self._caller.call(_check_one, "NEXT")
        try:
            id_ = self._buf.popleft()
        except IndexError:
            refiller.wake()
            return refiller.take()
        refiller.wake()  # after the pop, so the refiller sees the buffer below its mark
        return id_

    def next_ids(self, n: int) -> list[int]:
        """`n` new ids straight from a server (not from the prefetch buffer).

        Strictly increasing when n <= 100,000 (one request); larger counts take several
        requests, possibly answered by different servers after a failover.
        """
        out: list[int] = []
        for count in _count_ids(n):
            out.extend(self._caller.call(_check_many(count), "NEXT", count))
        return out

    def server_parse(self, id_: int) -> ParsedId:
        """A server's decoding of `id_` (PARSE); IdgenUsageError if it is not a valid id."""
        return self._caller.call(_check_parsed, "PARSE", id_)

    def close(self) -> None:
        """Stop prefetching and close the connections; prefetched ids are dropped."""
        self._finalizer.detach()
        refiller = self._refiller
        if refiller is not None:
            refiller.stop()
            refiller.thread.join(self.timeout * 2 * len(self.servers) + 1)
        self._buf.clear()
        self._caller.close()

    def __enter__(self) -> IdgenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shutdown(caller: _Caller, refiller: _Refiller | None) -> None:
    """Finalizer of a client dropped without close(): stop the thread, which owns no client."""
    if refiller is not None:
        refiller.stop()  # the thread closes the connections as it ends
    else:
        caller.close()


# -- asyncio -----------------------------------------------------------------------------


class _AsyncCaller:
    """Async requests with failover; one connection per server; requests serialised by a lock."""

    def __init__(self, pool: _Pool, password: str | None, timeout: float) -> None:
        self.pool = pool
        self.password = password
        self.timeout = timeout
        self.closed = False
        self._lock = asyncio.Lock()
        self._conns: list[AsyncRespConnection | None] = [None] * len(pool.servers)

    async def call(self, check: Callable[[object], T], *args: str | int) -> T:
        async with self._lock:
            if self.closed:
                raise IdgenError("the idgen client is closed")
            pool = self.pool
            for index in pool.order(time.monotonic()):
                try:
                    result = check(await (await self._conn(index)).call(*args))
                except ReplyError as exc:
                    if _is_usage_error(exc):
                        pool.succeeded(index)
                        raise IdgenUsageError(exc.message) from None
                    failure: BaseException = exc
                except (OSError, ProtocolError, _Refused) as exc:
                    failure = exc
                else:
                    pool.succeeded(index)
                    return result
                self._drop(index)
                pool.failed(index, time.monotonic(), failure)
            raise pool.unavailable()

    async def _conn(self, index: int) -> AsyncRespConnection:
        conn = self._conns[index]
        if conn is None or conn.closed:
            server = self.pool.servers[index]
            try:
                conn = await AsyncRespConnection.connect(
                    server.host, server.port, self.timeout, password=self.password
                )
            except ReplyError as exc:
                raise _Refused(f"connection set-up refused: {exc}") from exc
            self._conns[index] = conn
        return conn

    def _drop(self, index: int) -> None:
        conn, self._conns[index] = self._conns[index], None
        if conn is not None:
            conn.abort()

    async def close(self) -> None:
        self.closed = True
        async with self._lock:
            conns, self._conns = self._conns, [None] * len(self._conns)
            for conn in conns:
                if conn is not None:
                    await conn.close()


class _AsyncRefiller:
    """The background side of async prefetching: a task that keeps `len(buf) >= low`."""

    def __init__(
        self, caller: _AsyncCaller, buf: deque[int], low: int, batch: int, wait_s: float
    ) -> None:
        self.caller = caller
        self.buf = buf
        self.low = low
        self.batch = batch
        self.wait_s = wait_s
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.error: IdgenError | None = None
        self.failures = 0
        self._wake = asyncio.Event()
        self._filled = asyncio.Event()

    def start(self) -> None:
        """Start the task on the running loop (once)."""
        if self.task is None and not self.closed:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="idgen-prefetch")

    def wake(self) -> None:
        self._wake.set()

    async def take(self) -> int:
        """An id, waiting up to `wait_s` for a refill; raises the refill's failure."""
        buf = self.buf
        seen = self.failures
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            if buf:
                return buf.popleft()
            if self.closed:
                raise IdgenError("the idgen client is closed")
            if self.failures != seen and self.error is not None:
                raise _copy_error(self.error)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IdgenUnavailable(f"no prefetched id arrived within {self.wait_s:.1f} s")
            self._filled.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._filled.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self.closed = True
        self._filled.set()
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        buf = self.buf
        check = _check_many(self.batch)
        while True:
            while len(buf) >= self.low:
                self._wake.clear()
                await self._wake.wait()
            try:
                ids = await self.caller.call(check, "NEXT", self.batch)
            except Exception as exc:
                if not isinstance(exc, IdgenError):
                    log.exception("idgen prefetch failed unexpectedly")
                    exc = IdgenUnavailable(f"prefetch failed: {exc!r}")
                self.error = exc
                self.failures += 1
                self._filled.set()
                pause = self.caller.pool.retry_in(time.monotonic())
                await asyncio.sleep(min(max(pause, RETRY_PAUSE_MIN_S), RETRY_PAUSE_MAX_S))
                continue
            buf.extend(ids)
            self._filled.set()


class AsyncIdgenClient(_ClientBase):
    """Asyncio idgen client with failover and optional prefetching, for one event loop.

    Same arguments and behaviour as `IdgenClient`; methods are coroutines. Prefetching starts
    at `async with` or at the first `next_id()`.
    """

    __slots__ = ("_caller", "_refiller")

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        prefetch: int = 0,
        batch: int | None = None,
    ) -> None:
        addresses, low, wait_s = self._setup(servers, timeout, prefetch, batch)
        self._caller = _AsyncCaller(_Pool(addresses), password, timeout)
        self._refiller: _AsyncRefiller | None = None
        if prefetch:
            self._refiller = _AsyncRefiller(self._caller, self._buf, low, self.batch, wait_s)

    async def next_id(self) -> int:
        """One new id. IdgenUnavailable if no server can issue one in time."""
        buf = self._buf
        if len(buf) > self._low:
            return buf.popleft()
        return await self._next_id_slow()

    async def _next_id_slow(self) -> int:
        refiller = self._refiller
        if refiller is None:
            return await self._caller.call(_check_one, "NEXT")
        refiller.start()
        if not self._buf:
            refiller.wake()
            return await refiller.take()
        id_ = self._buf.popleft()
        refiller.wake()
        await asyncio.sleep(0)  # a tight consumer loop never yields otherwise: let it refill
        return id_

    async def next_ids(self, n: int) -> list[int]:
        """`n` new ids straight from a server; see `IdgenClient.next_ids`."""
        out: list[int] = []
        for count in _count_ids(n):
            out.extend(await self._caller.call(_check_many(count), "NEXT", count))
        return out

    async def server_parse(self, id_: int) -> ParsedId:
        """A server's decoding of `id_` (PARSE); IdgenUsageError if it is not a valid id."""
        return await self._caller.call(_check_parsed, "PARSE", id_)

    async def close(self) -> None:
        """Stop prefetching and close the connections; prefetched ids are dropped."""
        if self._refiller is not None:
            await self._refiller.stop()
        self._buf.clear()
        await self._caller.close()

    async def __aenter__(self) -> AsyncIdgenClient:
        if self._refiller is not None:
            self._refiller.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
