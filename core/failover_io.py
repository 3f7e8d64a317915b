"""The I/O loop around core/failover.py's `Request`, once blocking and once for asyncio.

Every RESP daemon's client sends a request with failover by `call_blocking` or
`call_async`: they connect on demand (one connection per node, held in the `Failover`),
send `ASKING` before an ASK redirect's attempt, run the caller's reply check, sleep the
pauses the core asks for, close the connections it hands back, and raise the client's own
errors (`Raises`) for a usage verdict and for giving up. Every decision is the core's;
the strategy is written in core/failover.py's header.

Each attempt runs inside `attempt_deadline.within(request.attempt_seconds(now))`, so its
connect (AUTH included, whatever `connect` the client passes), ASKING and command together
end by what the request has left: the request's deadline holds even when every node hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from core import attempt_deadline
from core.failover import ATTEMPT_ERRORS, Attempt, Failover, GiveUp, Pause, Refused, Verdict
from core.resp_client import AsyncRespConnection, ReplyError, RespConnection

__all__ = ["Raises", "call_async", "call_blocking", "connection_set_up"]

T = TypeVar("T")
Check = Callable[[object], T]
ASKING: str = "ASKING"


@dataclass(frozen=True)
class Raises:
    """A client's own errors: for a usage verdict (the error reply) and for a give-up."""

    usage: Callable[[ReplyError], Exception]
    unavailable: Callable[[GiveUp], Exception]


@contextmanager
def connection_set_up() -> Iterator[None]:
    """Around a connect: an error reply to its AUTH or HELLO is the node refusing us (a node
    failure, `Refused`), not the caller's usage error the same reply to a request would be."""
    try:
        yield
    except ReplyError as exc:
        raise Refused(f"connection set-up refused: {exc}") from exc


def _usage(raises: Raises, error: BaseException) -> Exception:
    assert isinstance(error, ReplyError)  # only an error reply is a usage verdict
    return raises.usage(error)


def call_blocking(
    failover: Failover[RespConnection],
    args: tuple[object, ...],
    check: Check[T],
    connect: Callable[[str, int], RespConnection],
    raises: Raises,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    slot: int | None = None,
) -> T:
    """One command with failover over blocking connections; `connect(host, port)` opens one
    (AUTH included), `check(reply)` returns the result or raises ProtocolError; `slot` routes
    it to the slot's known node first (`Failover.begin`)."""
    request = failover.begin(clock(), slot)
    while True:
        step = request.next(clock())
        if isinstance(step, GiveUp):
            raise raises.unavailable(step)
        if isinstance(step, Pause):
            sleep(step.seconds)
            continue
        try:
            with attempt_deadline.within(request.attempt_seconds(clock())):
                reply = _send_blocking(failover, step, args, connect)
            result = check(reply)
        except ATTEMPT_ERRORS as exc:
            failure = request.failed(step, exc, clock())
            if failure.close is not None:
                failure.close.close()
            if failure.verdict is Verdict.USAGE:
                raise _usage(raises, exc) from None
        else:
            request.answered(step)
            return result


def _send_blocking(failover: Failover[RespConnection], step: Attempt, args: tuple[object, ...],
                   connect: Callable[[str, int], RespConnection]) -> object:
    conn = failover.live(step.index)
    if conn is None:
        with connection_set_up():
            conn = connect(*failover.address(step.index))
        failover.keep(step.index, conn)
    if step.asking:
        conn.call(ASKING)
    return conn.call(*args)  # type: ignore[arg-type]


async def call_async(
    failover: Failover[AsyncRespConnection],
    args: tuple[object, ...],
    check: Check[T],
    connect: Callable[[str, int], Awaitable[AsyncRespConnection]],
    raises: Raises,
    clock: Callable[[], float] = time.monotonic,
    slot: int | None = None,
) -> T:
    """`call_blocking` for asyncio: the same steps, awaited; pauses are asyncio sleeps."""
    request = failover.begin(clock(), slot)
    while True:
        step = request.next(clock())
        if isinstance(step, GiveUp):
            raise raises.unavailable(step)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            continue
        try:
            with attempt_deadline.within(request.attempt_seconds(clock())):
                reply = await _send_async(failover, step, args, connect)
            result = check(reply)
        except ATTEMPT_ERRORS as exc:
            failure = request.failed(step, exc, clock())
            if failure.close is not None:
                failure.close.abort()
            if failure.verdict is Verdict.USAGE:
                raise _usage(raises, exc) from None
        else:
            request.answered(step)
            return result


async def _send_async(
    failover: Failover[AsyncRespConnection], step: Attempt, args: tuple[object, ...],
    connect: Callable[[str, int], Awaitable[AsyncRespConnection]],
) -> object:
    conn = failover.live(step.index)
    if conn is None:
        with connection_set_up():
            conn = await connect(*failover.address(step.index))
        failover.keep(step.index, conn)
    if step.asking:
        await conn.call(ASKING)
    return await conn.call(*args)  # type: ignore[arg-type]
