"""The asyncio client: `AsyncIdgenClient`, with a failover caller and a refiller task.

`_AsyncCaller` serialises requests (an asyncio lock) over one connection per server,
failing over as idgen/client_core.py's `_Pool` decides; `_AsyncRefiller` is the task that
keeps the prefetch buffer above its low-water mark. Strategy: idgen/client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from core.resp_client import AsyncRespConnection, ProtocolError, ReplyError
from idgen.client_core import (
    DEFAULT_TIMEOUT_S,
    RETRY_PAUSE_MAX_S,
    RETRY_PAUSE_MIN_S,
    IdgenError,
    IdgenUnavailable,
    IdgenUsageError,
    T,
    _check_many,
    _check_one,
    _check_parsed,
    _ClientBase,
    _copy_error,
    _count_ids,
    _is_usage_error,
    _Pool,
    _Refused,
    log,
)
from idgen.layout import ParsedId


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
