"""The asyncio client: `AsyncIdgenClient`, with a failover caller and a refiller task.

`_AsyncCaller` serialises requests (an asyncio lock) over one connection per server through
core/failover_io.py, failing over as core/failover.py decides (its header says how);
`_AsyncRefiller` is the task that keeps the prefetch buffer above its low-water mark, as
idgen/client_core.py's `_RefillCore` decides. Both only do the I/O and the waiting here.
Strategy: idgen/client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from core.failover import Failover
from core.failover_io import call_async
from core.resp_client import AsyncRespConnection
from idgen.client_core import (
    DEFAULT_TIMEOUT_S,
    RAISES,
    T,
    _CallerCore,
    _check_many,
    _check_one,
    _check_parsed,
    _ClientBase,
    _count_ids,
    _pool,
    _refill_error,
    _RefillCore,
)
from idgen.layout import ParsedId


class _AsyncCaller(_CallerCore[AsyncRespConnection]):
    """Async requests with failover; one connection per server; requests serialised by a lock."""

    def __init__(self, pool: Failover[AsyncRespConnection], password: str | None,
                 timeout: float) -> None:
        super().__init__(pool, password, timeout)
        self._lock = asyncio.Lock()

    async def call(self, check: Callable[[object], T], *args: str | int) -> T:
        async with self._lock:
            self.check_open()
            return await call_async(self.pool, args, check, self._connect, RAISES)

    async def _connect(self, host: str, port: int) -> AsyncRespConnection:
        return await AsyncRespConnection.connect(host, port, self.timeout,
                                                 password=self.password)

    async def close(self) -> None:
        self.closed = True
        async with self._lock:
            for conn in self.pool.detach_all():
                await conn.close()


class _AsyncRefiller(_RefillCore):
    """The background side of async prefetching: a task that keeps `len(buf) >= low`."""

    caller: _AsyncCaller

    def __init__(
        self, caller: _AsyncCaller, buf: deque[int], low: int, batch: int, wait_s: float
    ) -> None:
        super().__init__(caller, buf, low, batch, wait_s)
        self.task: asyncio.Task[None] | None = None
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
        loop = asyncio.get_running_loop()
        seen, deadline = self.failures, loop.time() + self.wait_s
        while (id_ := self.poll(seen, deadline, loop.time())) is None:
            self._filled.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._filled.wait()
            except TimeoutError:
                pass
        return id_

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
                pause = self.refill_failed(_refill_error(exc), time.monotonic())
                self._filled.set()
                await asyncio.sleep(pause)
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
        self._caller = _AsyncCaller(_pool(addresses), password, timeout)
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
