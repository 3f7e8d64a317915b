"""The blocking client: `IdgenClient`, with a failover caller and a refiller thread.

`_Caller` sends one request at a time (a lock) over one connection per server through
core/failover_io.py, failing over as core/failover.py decides (its header says how);
`_Refiller` is the daemon thread that keeps the prefetch buffer above its low-water mark, as
idgen/client_core.py's `_RefillCore` decides. Both only do the I/O and the locking here.
Strategy: idgen/client.py.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from core.failover import Failover
from core.failover_io import call_blocking
from core.resp_client import RespConnection
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


class _Caller(_CallerCore[RespConnection]):
    """Blocking requests with failover; one connection per server; thread-safe by a lock."""

    def __init__(self, pool: Failover[RespConnection], password: str | None,
                 timeout: float) -> None:
        super().__init__(pool, password, timeout)
        self._lock = threading.Lock()

    def call(self, check: Callable[[object], T], *args: str | int) -> T:
        with self._lock:
            self.check_open()
            return call_blocking(self.pool, args, check, self._connect, RAISES)

    def _connect(self, host: str, port: int) -> RespConnection:
        return RespConnection.connect(host, port, self.timeout, password=self.password)

    def close(self) -> None:
        self.closed = True
        # A request in flight ends within its timeout; wait for it rather than pull its socket.
        got = self._lock.acquire(timeout=self.timeout * 2 * len(self.pool.nodes) + 1)
        try:
            for conn in self.pool.detach_all():
                conn.close()
        finally:
            if got:
                self._lock.release()


class _Refiller(_RefillCore):
    """The background side of prefetching: a daemon thread that keeps `len(buf) >= low`.

    Consumers call `wake()` after taking an id that may have left fewer than `low`, and
    `take()` when the buffer is empty. The thread holds no reference to the client, so a
    dropped client can be collected (a finalizer then stops the thread).
    """

    caller: _Caller

    def __init__(
        self, caller: _Caller, buf: deque[int], low: int, batch: int, wait_s: float
    ) -> None:
        super().__init__(caller, buf, low, batch, wait_s)
        self.cond = threading.Condition()
        # Invariant: while the thread waits for work, wake_pending is False or a notify is due.
        self.wake_pending = False
        self.thread = threading.Thread(target=self._run, name="idgen-prefetch", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            with self.cond:
                self.cond.notify_all()

    def take(self) -> int:
        """An id, waiting up to `wait_s` for a refill; raises the refill's failure."""
        with self.cond:
            seen, deadline = self.failures, time.monotonic() + self.wait_s
            while (id_ := self.poll(seen, deadline, time.monotonic())) is None:
                self.cond.wait(deadline - time.monotonic())
            return id_

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
                error = _refill_error(exc)
                with cond:
                    pause = self.refill_failed(error, time.monotonic())
                    cond.notify_all()
                    if not self.closed:
                        cond.wait(pause)
                continue
            buf.extend(ids)
            with cond:
                cond.notify_all()
        self.caller.close()  # this thread was the last user of the connections



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
        self._caller = _Caller(_pool(addresses), password, timeout)
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
