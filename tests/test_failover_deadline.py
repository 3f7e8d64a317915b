"""core/failover_io.py's deadline against servers that hang: three listening sockets that
never accept (a connect completes, no reply ever comes, as from a stopped server), or whose
accept queue is full (the connect itself hangs, as behind a partition). A call, blocking or
asyncio, whose attempt hangs in the connect, in its AUTH or in the command, gives up
because its deadline passed, after one attempt bounded by what the request had left, not
after the connection timeout per server and per step: the timeout the error quotes is the
request's time left; the elapsed time is checked only coarsely (10x the deadline), which
the old behaviour, 30 s per server, breaks. Also the core pieces alone:
`Request.attempt_seconds`, `GiveUp.expired` and core/attempt_deadline.py's `bounded`.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Iterator

import pytest

from core import attempt_deadline
from core.attempt_deadline import SPENT_TIMEOUT_S
from core.failover import Failover, GiveUp, RetryPolicy
from core.failover_io import Raises, call_async, call_blocking
from core.resp_client import AsyncRespConnection, ReplyError, RespConnection, RespTimeoutError

DEADLINE_S = 1.0
MIN_ATTEMPT_S = 0.3
CONN_TIMEOUT_S = 30.0  # each server would hold a call this long per step without the bound
COARSE_LIMIT_S = 10 * DEADLINE_S  # only detects the old behaviour


class Unavailable(Exception):
    def __init__(self, give_up: GiveUp) -> None:
        super().__init__(give_up.detail)
        self.give_up = give_up


class Usage(Exception):
    """What the failover core raises for an error reply (the caller's mistake, no failover)."""


def _usage(error: ReplyError) -> Exception:
    return Usage(str(error))


RAISES = Raises(usage=_usage, unavailable=Unavailable)


HANGS = ["command", "AUTH", "connect"]  # where an attempt on a hung server waits
PASSWORD = {"command": None, "AUTH": "secret", "connect": None}


@pytest.fixture(params=HANGS)
def hang(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def hung_servers(hang: str) -> Iterator[list[tuple[str, int]]]:
    """Three servers that never answer. For "connect", each one's accept queue (backlog 0)
    is filled by one connection held here, so a further connect is never completed (a
    server cut off by a partition)."""
    socks = [socket.create_server(("127.0.0.1", 0), backlog=0) for _ in range(3)]
    servers = [("127.0.0.1", s.getsockname()[1]) for s in socks]
    fillers = [socket.create_connection(server) for server in servers] \
        if hang == "connect" else []
    try:
        yield servers
    finally:
        for s in [*fillers, *socks]:
            s.close()


def _failover(servers: list[tuple[str, int]]) -> Failover[object]:
    policy = RetryPolicy(deadline_s=DEADLINE_S, min_attempt_s=MIN_ATTEMPT_S)
    return Failover(servers, random.Random(7), policy=policy, label="hung server")


def _check_gave_up(error: Unavailable, connects: list[tuple[str, int]],
                   servers: list[tuple[str, int]], hang: str, elapsed: float) -> None:
    give_up = error.give_up
    assert give_up.expired  # the deadline ended it, not one round without answers
    assert connects == servers[:1]  # one attempt took what the request had left
    (name, failure), = give_up.errors.items()
    assert name == "{}:{}".format(*servers[0])
    assert isinstance(failure, RespTimeoutError)
    assert str(failure).startswith("connect to") == (hang == "connect"), failure
    bound = float(re.findall(r"(?:within|after) ([0-9.e-]+)s", str(failure))[0])
    assert bound <= DEADLINE_S, failure  # the request's time left, not the 30 s timeout
    assert elapsed < COARSE_LIMIT_S


def test_a_blocking_call_to_hung_servers_ends_by_its_deadline(
        hung_servers: list[tuple[str, int]], hang: str) -> None:
    password = PASSWORD[hang]
    connects: list[tuple[str, int]] = []

    def connect(host: str, port: int) -> RespConnection:
        connects.append((host, port))
        return RespConnection.connect(host, port, CONN_TIMEOUT_S, password=password)

    failover = _failover(hung_servers)
    start = time.monotonic()
    with pytest.raises(Unavailable) as info:
        call_blocking(failover, ("PING",), str, connect, RAISES)  # type: ignore[arg-type]
    _check_gave_up(info.value, connects, hung_servers, hang, time.monotonic() - start)


def test_an_async_call_to_hung_servers_ends_by_its_deadline(
        hung_servers: list[tuple[str, int]], hang: str) -> None:
    password = PASSWORD[hang]
    connects: list[tuple[str, int]] = []

    async def connect(host: str, port: int) -> AsyncRespConnection:
        connects.append((host, port))
        return await AsyncRespConnection.connect(host, port, CONN_TIMEOUT_S, password=password)

    async def go() -> Unavailable:
        failover = _failover(hung_servers)
        try:
            await call_async(failover, ("PING",), str, connect, RAISES)  # type: ignore[arg-type]
        except Unavailable as error:
            return error
        finally:
            for conn in failover.detach_all():
                conn.abort()  # type: ignore[attr-defined]
        raise AssertionError("a hung server answered")

    start = time.monotonic()
    error = asyncio.run(go())
    _check_gave_up(error, connects, hung_servers, hang, time.monotonic() - start)


def test_an_attempt_gets_what_the_request_has_left_but_at_least_the_minimum() -> None:
    failover = _failover([("10.0.0.1", 1), ("10.0.0.2", 2)])
    request = failover.begin(100.0)
    assert request.attempt_seconds(100.0) == DEADLINE_S
    assert request.attempt_seconds(100.0 + DEADLINE_S - 0.1) == MIN_ATTEMPT_S
    assert request.attempt_seconds(100.0 + 5 * DEADLINE_S) == MIN_ATTEMPT_S
    unbounded = Failover([("10.0.0.1", 1)], random.Random(1), policy=RetryPolicy(None))
    assert unbounded.begin(0.0).attempt_seconds(0.0) is None


def test_a_give_up_says_whether_the_deadline_passed() -> None:
    failover = _failover([("10.0.0.1", 1)])
    request = failover.begin(0.0)
    step = request.next(0.0)
    request.failed(step, OSError("refused"), DEADLINE_S)  # type: ignore[arg-type]
    assert request.next(DEADLINE_S) == GiveUp(failover.errors(), 0, True)
    one_round = Failover([("10.0.0.1", 1)], random.Random(1), policy=RetryPolicy(None))
    request = one_round.begin(0.0)
    request.failed(request.next(0.0), OSError("refused"), 0.0)  # type: ignore[arg-type]
    give_up = request.next(0.0)
    assert isinstance(give_up, GiveUp) and not give_up.expired


def test_bounded_shortens_timeouts_only_inside_an_attempt() -> None:
    assert attempt_deadline.bounded(30.0) == 30.0
    with attempt_deadline.within(5.0):
        assert 4.0 < attempt_deadline.bounded(30.0) <= 5.0
        assert attempt_deadline.bounded(1.0) == 1.0
        with attempt_deadline.within(None):
            assert attempt_deadline.bounded(30.0) <= 5.0
    with attempt_deadline.within(-1.0):
        assert attempt_deadline.bounded(30.0) == SPENT_TIMEOUT_S
    assert attempt_deadline.bounded(30.0) == 30.0
