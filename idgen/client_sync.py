"""The blocking client: `IdgenClient`, with a failover caller and a refiller thread.

`_Caller` sends one request at a time (a lock) over one connection per server, failing
over as idgen/client_core.py's `_Pool` decides; `_Refiller` is the daemon thread that keeps
the prefetch buffer above its low-water mark. Strategy: idgen/client.py.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from core.resp_client import ProtocolError, ReplyError, RespConnection
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
