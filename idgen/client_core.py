"""What the blocking and the asyncio idgen clients share; no sockets, no clock, no threads.

Errors, limits, how idgen's error replies are read and its failover policy (for
core/failover.py, which decides which server next and what an attempt's outcome means),
reply checks, prefetch arithmetic and `_ClientBase` (settings and the prefetch buffer).
`_CallerCore` holds a caller's failover state and the errors it raises, and `_RefillCore`
every decision of prefetching (when a waiting `take()` gives up, what a failed refill leaves
behind, how long to pause after it). idgen/client_sync.py and idgen/client_async.py carry
a request through core/failover_io.py and only connect, wait and wake, so the two clients
can not drift apart. idgen/client.py documents the strategy and re-exports the public names.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, TypeVar

from core.failover import ErrorRules, Failover, GiveUp, Link, RetryPolicy, parse_address
from core.failover_io import Raises
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


def parse_servers(servers: str | Sequence[str]) -> list[tuple[str, int]]:
    """`"h:p,h:p"` or `["h:p", ...]` (IPv6 as `[::1]:p`) as (host, port) pairs."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out: list[tuple[str, int]] = []
    for item in items:
        try:
            out.append(parse_address(item))
        except ValueError:
            raise ValueError(f"server must be HOST:PORT, not {item!r}") from None
    if not out:
        raise ValueError("at least one server is needed")
    return out


# How idgen's replies are read: a "cannot issue now" code or a server-trouble -ERR marks the
# server down; idgen sends no TRYAGAIN and no redirects. One round per request: a caller that
# wants to wait retries (the refiller does).
RULES: Final = ErrorRules(not_now_codes=frozenset(), down_codes=CANNOT_ISSUE_CODES,
                          down_prefixes=SERVER_TROUBLE_PREFIXES)
POLICY: Final = RetryPolicy(deadline_s=None, node_backoff_initial_s=BACKOFF_INITIAL_S,
                            node_backoff_max_s=BACKOFF_MAX_S)


def _pool(addresses: list[tuple[str, int]], rng: random.Random | None = None) -> Failover[Any]:
    """The failover state of one idgen caller over `addresses`."""
    return Failover(addresses, rng or random.Random(), policy=POLICY, rules=RULES, log=log,
                    label="idgen server")


def _usage(error: ReplyError) -> IdgenUsageError:
    return IdgenUsageError(error.message)


def _unavailable(give_up: GiveUp) -> IdgenUnavailable:
    return IdgenUnavailable(f"no idgen server can issue ids ({give_up.detail})", give_up.errors)


RAISES: Final = Raises(usage=_usage, unavailable=_unavailable)

L = TypeVar("L", bound=Link)


class _CallerCore(Generic[L]):
    """A failover caller's state: its `Failover` (servers, health, one connection slot per
    server), credentials, timeout and whether it is closed. The blocking and the asyncio
    callers subclass it and send each request through core/failover_io.py with `RAISES`."""

    def __init__(self, pool: Failover[L], password: str | None, timeout: float) -> None:
        self.pool = pool
        self.password = password
        self.timeout = timeout
        self.closed = False

    def check_open(self) -> None:
        """IdgenError once the caller is closed."""
        if self.closed:
            raise IdgenError(CLOSED_MESSAGE)


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
