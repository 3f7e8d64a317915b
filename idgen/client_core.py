"""What the blocking and the asyncio idgen clients share; no sockets, no clock, no threads.

Errors, limits, the server list and its failover state (`_Pool`, fed `now` by the caller),
reply checks, prefetch arithmetic and `_ClientBase` (settings and the prefetch buffer).
Every decision of a request with failover sits in `_CallerCore` (which server next, what an
attempt's outcome means: return, raise a usage error, or mark the server down and try the
next) and every decision of prefetching in `_RefillCore` (when a waiting `take()` gives up,
what a failed refill leaves behind, how long to pause after it). idgen/client_sync.py and
idgen/client_async.py subclass both and only connect, send, close, wait and wake, so the
two clients can not drift apart. idgen/client.py documents the strategy and re-exports the
public names.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from core.resp_client import ProtocolError, ReplyError
from idgen import layout
from idgen.layout import ParsedId

# One logger for the three client modules, under the name it had before the split, so
# logging set-ups that name "idgen.client" still reach all of them.
log = logging.getLogger("idgen.client")

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
CLOSED_MESSAGE: Final = "the idgen client is closed"

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


# What ends one attempt on a server (`_CallerCore.failed` judges it): an error reply, a
# socket failure or timeout, a reply that breaks the protocol or fails its check, a refused
# set-up. Anything else (a bug, a cancellation) passes through and leaves the pool alone.
ATTEMPT_ERRORS: Final = (ReplyError, OSError, ProtocolError, _Refused)


@contextmanager
def _set_up() -> Iterator[None]:
    """Around a connect: an error reply to its AUTH or HELLO is the server refusing us, a
    server failure, not the caller's usage error that the same reply to a request would be."""
    try:
        yield
    except ReplyError as exc:
        raise _Refused(f"connection set-up refused: {exc}") from exc


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


class _Link(Protocol):
    """What the core needs of a connection: whether it is still usable."""

    @property
    def closed(self) -> bool: ...


L = TypeVar("L", bound=_Link)


class _CallerCore(Generic[L]):
    """A failover caller's state and decisions: the pool and one connection slot per server.

    The blocking and the asyncio callers subclass it and carry out one request as:
    for each index of `attempts(now)`: connect if `live(index)` is None (under `_set_up()`,
    then `keep`), send, check the reply; then `answered(index, result)` and return it, or on
    one of ATTEMPT_ERRORS `failed(index, error, now)` and close what it hands back. Once
    every index is spent, raise `pool.unavailable()`.
    """

    def __init__(self, pool: _Pool, password: str | None, timeout: float) -> None:
        self.pool = pool
        self.password = password
        self.timeout = timeout
        self.closed = False
        self._conns: list[L | None] = [None] * len(pool.servers)

    def attempts(self, now: float) -> list[int]:
        """The servers one request may try, in order; IdgenError once the caller is closed."""
        if self.closed:
            raise IdgenError(CLOSED_MESSAGE)
        return self.pool.order(now)

    def live(self, index: int) -> L | None:
        """The open connection to server `index`, or None: connect first."""
        conn = self._conns[index]
        return None if conn is None or conn.closed else conn

    def address(self, index: int) -> tuple[str, int]:
        server = self.pool.servers[index]
        return server.host, server.port

    def keep(self, index: int, conn: L) -> None:
        """Hold a new connection to server `index` for the next requests."""
        self._conns[index] = conn

    def answered(self, index: int, result: T) -> T:
        """Server `index` answered and its reply passed the check: it becomes the current one."""
        self.pool.succeeded(index)
        return result

    def failed(self, index: int, error: BaseException, now: float) -> L | None:
        """An attempt on server `index` ended with `error`, one of ATTEMPT_ERRORS.

        An error reply that is the caller's mistake raises IdgenUsageError: the server
        answered, so it stays current and keeps its connection, and no other server is tried.
        Anything else is the server's failure: it is marked down and its connection (None if
        there was none) is handed back, out of its slot, to be closed; try the next index."""
        if isinstance(error, ReplyError) and _is_usage_error(error):
            self.pool.succeeded(index)
            raise IdgenUsageError(error.message) from None
        conn = self.detach(index)
        self.pool.failed(index, now, error)
        return conn

    def detach(self, index: int) -> L | None:
        """Take server `index`'s connection (or None) out of its slot, for the caller to close."""
        conn, self._conns[index] = self._conns[index], None
        return conn


class _RefillCore:
    """A refiller's state and decisions: the buffer, its low-water mark, the last failure.

    The thread (idgen/client_sync.py) and the task (idgen/client_async.py) subclass it and
    only wait and wake: a consumer's `take()` loops on `poll`, waiting for a refill in
    between; a failed refill goes through `_refill_error` and `refill_failed`, then pauses.
    """

    def __init__(
        self, caller: _CallerCore[Any], buf: deque[int], low: int, batch: int, wait_s: float
    ) -> None:
        self.caller = caller
        self.buf = buf
        self.low = low
        self.batch = batch
        self.wait_s = wait_s
        self.closed = False
        self.error: IdgenError | None = None
        self.failures = 0  # failed refills so far; take() raises on a change

    def poll(self, seen: int, deadline: float, now: float) -> int | None:
        """One look of a `take()` that began when `failures` was `seen`: an id from the
        buffer, or None to wait for a refill until `deadline`. Raises once the refiller is
        closed, when a refill failed since the take began, or when the deadline is past."""
        if self.buf:
            return self.buf.popleft()
        if self.closed:
            raise IdgenError(CLOSED_MESSAGE)
        if self.failures != seen and self.error is not None:
            raise _copy_error(self.error)
        if deadline - now <= 0:
            raise IdgenUnavailable(f"no prefetched id arrived within {self.wait_s:.1f} s")
        return None

    def refill_failed(self, error: IdgenError, now: float) -> float:
        """Record a failed refill for the waiting `take()`s to raise; the pause before the
        next refill: until the first marked-down server may be tried again, within bounds."""
        self.error = error
        self.failures += 1
        pause = self.caller.pool.retry_in(now)
        return min(max(pause, RETRY_PAUSE_MIN_S), RETRY_PAUSE_MAX_S)


def _refill_error(exc: Exception) -> IdgenError:
    """A failed refill's exception as the IdgenError a consumer gets; a surprise is logged.
    Call it while `exc` is being handled, so the log carries its traceback."""
    if isinstance(exc, IdgenError):
        return exc
    log.exception("idgen prefetch failed unexpectedly")
    return IdgenUnavailable(f"prefetch failed: {exc!r}")


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
