"""The idgen client's sans-I/O parts alone: no sockets, no threads, no clock.

idgen's error rules and failover policy (idgen/client_core.py: `RULES`, `POLICY`, `_pool`)
decide, through core/failover.py, what one attempt on a server means (return, raise a usage
error, or mark the server down and try the next) and which server comes next; `_RefillCore`
decides when a waiting take gives up and what a failed refill leaves behind. Time is the
`now` each test passes in, so backoffs are checked exactly without waiting. `drive` below
runs one request through the real loop both callers use (core/failover_io.call_blocking)
over fake connections whose answers are scripted.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Mapping

import pytest

from core.failover import Refused
from core.failover_io import call_blocking, connection_set_up
from core.resp_client import ProtocolError, ReplyError
from idgen.client_core import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CLOSED_MESSAGE,
    RAISES,
    RETRY_PAUSE_MAX_S,
    RETRY_PAUSE_MIN_S,
    IdgenError,
    IdgenUnavailable,
    IdgenUsageError,
    _CallerCore,
    _pool,
    _refill_error,
    _RefillCore,
)

A, B, C = 0, 1, 2
ADDRESSES = [("127.0.0.2", 7001), ("127.0.0.3", 7002), ("127.0.0.4", 7003)]

Answer = object | BaseException


class Script:
    """The answers of the current request, per server index, and the servers it tried."""

    def __init__(self) -> None:
        self.answers: Mapping[int, Answer] = {}
        self.tried: list[int] = []


class FakeConn:
    """Stands for a connection: its server's scripted answer to every command."""

    def __init__(self, script: Script, index: int) -> None:
        self.script = script
        self.index = index
        self.closed = False

    def call(self, *args: object) -> object:
        self.script.tried.append(self.index)
        answer = self.script.answers[self.index]  # KeyError if unscripted: not an attempt error
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


class Core(_CallerCore[FakeConn]):
    script: Script


def make_core(count: int = 3) -> Core:
    core = Core(_pool(ADDRESSES[:count], random.Random(1)), None, 1.0)
    core.script = Script()
    for index in range(count):
        core.pool.keep(index, FakeConn(core.script, index))
    return core


def drive(
    core: Core, answers: Mapping[int, Answer], now: float = 0.0
) -> tuple[object, list[int], list[FakeConn]]:
    """One request as the real callers run it, each server's outcome taken from `answers`.
    Returns (result, servers tried in order, connections closed)."""
    script = core.script
    script.answers, script.tried = answers, []
    held = [core.pool.live(i) for i in range(len(core.pool.nodes))]

    def connect(host: str, port: int) -> FakeConn:
        return FakeConn(script, ADDRESSES.index((host, port)))

    core.check_open()
    result = call_blocking(core.pool, ("NEXT",), lambda r: r, connect,  # type: ignore[arg-type]
                           RAISES, clock=lambda: now)
    closed = [conn for conn in held if conn is not None and conn.closed]
    return result, list(script.tried), closed


# -- what one attempt's error means --

USAGE = [
    "ERR wrong number of arguments for 'next' command",
    "ERR unknown command 'FOO'",
    "ERR value is not an integer or out of range",
]
SERVER_FAILURES: list[BaseException] = [
    ReplyError("CLOCK clock moved backwards by 5 ms"),
    ReplyError("CONFLICT worker 3 is held by another node"),
    ReplyError("NOAUTH Authentication required."),
    ReplyError("LOADING the daemon is starting"),
    ReplyError("ERR max number of clients reached"),
    ReplyError("ERR internal error"),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
    ProtocolError("NEXT answered b'x', not an integer"),
    Refused("connection set-up refused: WRONGPASS invalid password"),
]


@pytest.mark.parametrize("message", USAGE)
def test_usage_error_keeps_the_server_up_and_stops(message: str) -> None:
    core = make_core()
    conn = core.pool.live(A)
    with pytest.raises(IdgenUsageError) as info:
        drive(core, {A: ReplyError(message), B: 7})
    assert str(info.value) == message
    assert info.value.__suppress_context__  # raised `from None`, as before the core
    server = core.pool.nodes[A]
    assert (server.down_until, server.backoff, server.last_error) == (0.0, 0.0, None)
    assert core.pool.live(A) is conn  # the connection stays: the server answered
    assert core.pool.order(0.0) == [A, B, C]


@pytest.mark.parametrize("error", SERVER_FAILURES, ids=lambda e: type(e).__name__)
def test_server_failure_marks_down_and_moves_on(error: BaseException) -> None:
    core = make_core()
    conn = core.pool.live(A)
    result, tried, closed = drive(core, {A: error, B: 42}, now=10.0)
    assert (result, tried, closed) == (42, [A, B], [conn])
    server = core.pool.nodes[A]
    assert server.down_until == 10.0 + BACKOFF_INITIAL_S
    assert server.last_error is error
    assert core.pool.live(A) is None  # handed back to be closed; the next attempt reconnects
    # B answered: it is the current server, and A is skipped until its backoff ends.
    assert core.pool.order(10.5) == [B, C]
    assert core.pool.order(10.0 + BACKOFF_INITIAL_S) == [B, C, A]


def test_an_error_outside_the_attempt_errors_leaves_the_pool_alone() -> None:
    core = make_core()
    with pytest.raises(KeyError):  # a bug in a check, say: not the server's fault
        drive(core, {B: 1})
    assert core.pool.nodes[A].down_until == 0.0
    assert core.pool.live(A) is not None


def test_answered_makes_the_server_current_and_closes_what_failed() -> None:
    core = make_core()
    conns = [core.pool.live(A), core.pool.live(B)]
    result, tried, closed = drive(core, {A: OSError("reset"), B: OSError("reset"), C: 5})
    assert (result, tried, closed) == (5, [A, B, C], conns)
    assert core.pool.preferred == C
    assert core.pool.order(0.5) == [C]


def test_a_failure_without_a_connection_hands_back_none() -> None:
    core = _CallerCore(_pool(ADDRESSES[:2]), None, 1.0)
    assert core.pool.live(A) is None
    refused = ConnectionRefusedError(111, "Connection refused")
    assert core.pool.mark_down(A, refused, 0.0) is None
    assert core.pool.nodes[A].last_error is refused


def test_a_closed_connection_is_not_live() -> None:
    core = make_core(1)
    conn = core.pool.live(A)
    assert conn is not None
    conn.closed = True
    assert core.pool.live(A) is None
    assert core.pool.address(A) == ADDRESSES[0]


def test_a_refused_set_up_is_a_server_failure_not_a_usage_error() -> None:
    core = make_core(2)
    with pytest.raises(Refused) as info:
        with connection_set_up():
            raise ReplyError("WRONGPASS invalid username-password pair")
    assert str(info.value) == (
        "connection set-up refused: WRONGPASS invalid username-password pair"
    )
    assert isinstance(info.value.__cause__, ReplyError)
    assert drive(core, {A: info.value, B: 3})[:2] == (3, [A, B])
    assert core.pool.nodes[A].backoff == BACKOFF_INITIAL_S


def test_set_up_lets_other_errors_through() -> None:
    with pytest.raises(ConnectionRefusedError):
        with connection_set_up():
            raise ConnectionRefusedError(111, "Connection refused")


def test_closed_caller_refuses_before_any_attempt() -> None:
    core = make_core()
    core.closed = True
    with pytest.raises(IdgenError, match=CLOSED_MESSAGE):
        drive(core, {A: 1})
    assert core.script.tried == []


def test_detach_empties_the_slot() -> None:
    core = make_core(2)
    conn = core.pool.live(B)
    assert core.pool.detach(B) is conn
    assert core.pool.detach(B) is None
    assert core.pool.live(A) is not None


# -- which server next, backoff, the probe --


def test_all_down_gives_a_probe_of_the_soonest() -> None:
    core = make_core()
    down = {A: OSError("a"), B: OSError("b"), C: OSError("c")}
    with pytest.raises(IdgenUnavailable):
        drive(core, down, now=0.0)
    # A failed again later, so its second, doubled backoff ends last; B's ends first.
    core.pool.mark_down(A, OSError("a again"), 0.5)
    assert core.pool.nodes[A].backoff == 2 * BACKOFF_INITIAL_S
    assert core.pool.order(0.6) == [B]
    assert core.pool.retry_in(0.6) == pytest.approx(BACKOFF_INITIAL_S - 0.6)
    # The probe fails: B is marked down longer, and C is now the soonest.
    with pytest.raises(IdgenUnavailable):
        drive(core, {B: TimeoutError("timed out")}, now=0.6)
    assert core.pool.order(0.7) == [C]


def test_backoff_doubles_up_to_its_cap_and_clears_on_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = make_core(1)
    now = 0.0
    seen = []
    with caplog.at_level(logging.DEBUG, logger="idgen.client"):
        for _ in range(8):
            with pytest.raises(IdgenUnavailable):
                drive(core, {A: OSError("down")}, now)
            seen.append(core.pool.nodes[A].backoff)
            now = core.pool.nodes[A].down_until
    assert seen == [min(BACKOFF_INITIAL_S * 2**i, BACKOFF_MAX_S) for i in range(8)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first mark-down warns; the repeats are debug
    assert warnings[0].getMessage() == "idgen server 127.0.0.2:7001 marked down for 1 s: down"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="idgen.client"):
        assert drive(core, {A: 9}, now)[0] == 9
    assert [r.getMessage() for r in caplog.records] == [
        "idgen server 127.0.0.2:7001 is answering again"
    ]
    assert (core.pool.nodes[A].backoff, core.pool.nodes[A].down_until) == (0.0, 0.0)


def test_unavailable_error_lists_each_servers_last_error() -> None:
    core = make_core()
    first_b = ReplyError("CLOCK clock moved backwards")
    errors = {A: OSError("reset by peer"), B: first_b, C: ProtocolError("bad reply")}
    with pytest.raises(IdgenUnavailable) as info:
        drive(core, errors)
    assert info.value.errors == {
        "127.0.0.2:7001": errors[A],
        "127.0.0.3:7002": first_b,
        "127.0.0.4:7003": errors[C],
    }
    assert str(info.value) == (
        "no idgen server can issue ids (127.0.0.2:7001: reset by peer; "
        "127.0.0.3:7002: CLOCK clock moved backwards; 127.0.0.4:7003: bad reply)"
    )
    # All down: the probe (A, first of those whose backoff ends soonest) fails; its entry is
    # replaced and the others are kept.
    again = TimeoutError("timed out")
    with pytest.raises(IdgenUnavailable) as info:
        drive(core, {A: again}, now=0.5)
    assert info.value.errors["127.0.0.2:7001"] is again
    assert info.value.errors["127.0.0.3:7002"] is first_b


# -- prefetching: take() and failed refills --


def make_refill(buf: deque[int] | None = None, wait_s: float = 2.0) -> _RefillCore:
    return _RefillCore(make_core(), deque() if buf is None else buf, 4, 8, wait_s)


def test_poll_hands_out_buffered_ids_first() -> None:
    refill = make_refill(deque([5, 6]))
    refill.closed = True  # even a closed refiller's buffer is drained first
    assert [refill.poll(0, 0.0, 99.0), refill.poll(0, 0.0, 99.0)] == [5, 6]
    with pytest.raises(IdgenError, match=CLOSED_MESSAGE):
        refill.poll(0, 0.0, 99.0)


def test_poll_waits_until_the_deadline_then_gives_up() -> None:
    refill = make_refill(wait_s=2.0)
    assert refill.poll(0, 2.0, 1.9) is None
    with pytest.raises(IdgenUnavailable, match=r"no prefetched id arrived within 2\.0 s"):
        refill.poll(0, 2.0, 2.0)


def test_poll_raises_a_failure_only_once_it_happened_since_the_take_began() -> None:
    refill = make_refill()
    first = IdgenUnavailable("first")
    refill.refill_failed(first, 0.0)
    assert refill.poll(1, 5.0, 0.0) is None  # that failure predates this take
    second = IdgenUsageError("ERR bad")
    refill.refill_failed(second, 0.0)
    with pytest.raises(IdgenUsageError) as info:
        refill.poll(1, 5.0, 0.0)
    assert info.value is not second and info.value.__cause__ is second  # a fresh copy


def test_refill_pause_follows_the_pool_within_bounds() -> None:
    refill = make_refill()
    pool = refill.caller.pool
    error = IdgenUnavailable("down")
    assert refill.refill_failed(error, 0.0) == RETRY_PAUSE_MIN_S  # a server is up
    for index in range(len(pool.nodes)):
        pool.mark_down(index, OSError("down"), 0.0)
    assert refill.refill_failed(error, 0.5) == pytest.approx(BACKOFF_INITIAL_S - 0.5)
    for _ in range(3):
        for index in range(len(pool.nodes)):
            pool.mark_down(index, OSError("down"), 0.0)
    assert refill.refill_failed(error, 0.0) == RETRY_PAUSE_MAX_S
    assert (refill.failures, refill.error) == (3, error)


def test_refill_error_keeps_idgen_errors_and_wraps_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = IdgenUsageError("ERR bad")
    assert _refill_error(usage) is usage
    with caplog.at_level(logging.ERROR, logger="idgen.client"):
        try:
            raise RuntimeError("surprise")
        except RuntimeError as exc:
            wrapped = _refill_error(exc)
    assert type(wrapped) is IdgenUnavailable
    assert str(wrapped) == "prefetch failed: RuntimeError('surprise')"
    [record] = caplog.records
    assert record.getMessage() == "idgen prefetch failed unexpectedly"
    assert record.exc_info is not None

