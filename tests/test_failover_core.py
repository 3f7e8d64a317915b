"""core/failover.py alone: no sockets, no clock, no threads.

Each node's answers are scripted; `drive` is the loop every client runs around a `Request`
(idgen/client_sync.py, scheduler/client.py ...), with `now` advanced by the pauses it is
told to take. The tables say, for one scripted request, which nodes were tried in what
order, whether ASKING went first, and how the request ended.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from core.failover import (
    ATTEMPT_ERRORS,
    LEADER_HINT_PREFIX,
    PAUSE_INITIAL_S,
    Attempt,
    ErrorRules,
    Failover,
    GiveUp,
    Pause,
    Refused,
    RetryPolicy,
    Verdict,
    describe_errors,
    leader_hint_suffix,
    parse_address,
)
from core.resp_client import ProtocolError, ReplyError

A, B, C = ("10.0.0.1", 7001), ("10.0.0.2", 7002), ("10.0.0.3", 7003)
D = ("10.0.0.4", 7004)  # not in the list at first: learnt from a hint or a redirect


class FakeConn:
    """Stands for a connection: the core only asks whether it is closed."""

    def __init__(self) -> None:
        self.closed = False


Script = Callable[[], object]  # one node's answer: a value, or an exception to raise


@dataclass
class Ran:
    """What one driven request did."""

    tried: list[tuple[str, bool]]  # (node name, ASKING sent first)
    result: object = None
    gave_up: GiveUp | None = None
    pauses: tuple[float, ...] = ()
    closed: tuple[FakeConn, ...] = ()


def make(nodes: Sequence[tuple[str, int]] = (A, B, C),
         **policy: float | None) -> Failover[FakeConn]:
    """A failover over `nodes` (a seeded random), each holding an open fake connection."""
    failover: Failover[FakeConn] = Failover(
        list(nodes), random.Random(7), policy=RetryPolicy(**policy)  # type: ignore[arg-type]
    )
    for index in range(len(nodes)):
        failover.keep(index, FakeConn())
    return failover


def drive(failover: Failover[FakeConn], answers: Mapping[tuple[str, int], object],
          now: float = 0.0, slot: int | None = None) -> Ran:
    """One request; answers per address: a value, an exception, or a list consumed in turn.
    Raises AssertionError on a USAGE verdict (as a client raises its usage error)."""
    queues = {k: list(v) if isinstance(v, list) else None for k, v in answers.items()}
    ran = Ran(tried=[])
    pauses: list[float] = []
    closed: list[FakeConn] = []
    request = failover.begin(now, slot)
    while True:
        step = request.next(now)
        if isinstance(step, GiveUp):
            ran.gave_up = step
            break
        if isinstance(step, Pause):
            pauses.append(step.seconds)
            now += step.seconds
            continue
        address = failover.address(step.index)
        ran.tried.append((failover.nodes[step.index].name, step.asking))
        queue = queues.get(address)
        answer = (queue.pop(0) if queue else answers.get(address, OSError("refused")))
        if queue is not None and not queue:
            queues[address] = [answer]  # the last answer repeats
        try:
            if isinstance(answer, BaseException):
                raise answer
        except ATTEMPT_ERRORS as exc:
            failure = request.failed(step, exc, now)
            if failure.close is not None:
                closed.append(failure.close)
            if failure.verdict is Verdict.USAGE:
                raise AssertionError(f"usage: {exc}") from None
        else:
            request.answered(step)
            ran.result = answer
            break
    ran.pauses, ran.closed = tuple(pauses), tuple(closed)
    return ran


def names(*pairs: tuple[str, int], asking: int | None = None) -> list[tuple[str, bool]]:
    return [(f"{h}:{p}", i == asking) for i, (h, p) in enumerate(pairs)]


def tryagain(leader: tuple[str, int] | None = None) -> ReplyError:
    hint = leader_hint_suffix(*leader) if leader else ""
    return ReplyError(f"TRYAGAIN the cluster has no leader now{hint}")


# -- what an attempt's error means: one table --

VERDICTS: list[tuple[BaseException, Verdict, tuple[str, int] | None, int | None]] = [
    (ConnectionRefusedError(111, "refused"), Verdict.NODE_DOWN, None, None),
    (TimeoutError("timed out"), Verdict.NODE_DOWN, None, None),
    (ProtocolError("not RESP"), Verdict.NODE_DOWN, None, None),
    (Refused("connection set-up refused: WRONGPASS"), Verdict.NODE_DOWN, None, None),
    (ReplyError("TRYAGAIN no leader"), Verdict.NOT_NOW, None, None),
    (ReplyError("LOADING the dataset is loading"), Verdict.NOT_NOW, None, None),
    (tryagain(D), Verdict.NOT_NOW, D, None),
    (ReplyError("TRYAGAIN the cluster cannot take the request now: no leader"
                " leader=10.0.0.4:7004"), Verdict.NOT_NOW, D, None),  # core/raft_service's
    (ReplyError("TRYAGAIN no leader leader=[::1]:7000"), Verdict.NOT_NOW, ("::1", 7000), None),
    (ReplyError("TRYAGAIN no leader leader=::1:7000"), Verdict.NOT_NOW, ("::1", 7000), None),
    (ReplyError("TRYAGAIN no leader leader=nonsense"), Verdict.NOT_NOW, None, None),
    (ReplyError("MOVED 3999 10.0.0.4:7004"), Verdict.MOVED, D, 3999),
    (ReplyError("ASK 12 10.0.0.4:7004"), Verdict.ASK, D, 12),
    (ReplyError("MOVED 3999 nowhere"), Verdict.USAGE, None, None),
    (ReplyError("ERR unknown command 'FOO'"), Verdict.USAGE, None, None),
    (ReplyError("ERR wrong number of arguments for 'get' command"), Verdict.USAGE, None, None),
    (ReplyError("NOAUTH Authentication required."), Verdict.USAGE, None, None),
]


@pytest.mark.parametrize(("error", "verdict", "address", "slot"), VERDICTS,
                         ids=[str(row[0])[:30] for row in VERDICTS])
def test_default_rules(error: BaseException, verdict: Verdict,
                       address: tuple[str, int] | None, slot: int | None) -> None:
    assert ErrorRules().verdict(error) == (verdict, address, slot)


def test_a_daemons_own_rules() -> None:
    rules = ErrorRules(not_now_codes=frozenset(), down_codes=frozenset({"CLOCK", "LOADING"}),
                       down_prefixes=("ERR max number of clients",))
    assert rules.verdict(ReplyError("CLOCK moved back"))[0] is Verdict.NODE_DOWN
    assert rules.verdict(ReplyError("LOADING wait"))[0] is Verdict.NODE_DOWN
    assert rules.verdict(ReplyError("ERR max number of clients reached"))[0] is Verdict.NODE_DOWN
    assert rules.verdict(ReplyError("ERR max"))[0] is Verdict.USAGE
    assert rules.verdict(ReplyError("TRYAGAIN x"))[0] is Verdict.USAGE


def test_leader_hint_format_round_trips() -> None:
    assert leader_hint_suffix("10.0.0.4", 7004) == f" {LEADER_HINT_PREFIX}10.0.0.4:7004"
    assert leader_hint_suffix("::1", 7) == " leader=[::1]:7"
    assert parse_address("[::1]:7") == ("::1", 7)
    for bad in ("x", "h:0", "h:65536", ":1", "h:p"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


# -- one request's path through the nodes: one table --

ROUTES: list[tuple[str, dict[tuple[str, int], object], list[tuple[str, bool]], object]] = [
    ("first answers", {A: 1}, names(A), 1),
    ("dead node, next", {A: OSError("reset"), B: 2}, names(A, B), 2),
    ("no leader, next", {A: tryagain(), B: tryagain(), C: 3}, names(A, B, C), 3),
    ("hint jumps to the leader", {A: tryagain(C), C: 3}, names(A, C), 3),
    ("hint to a new node", {A: tryagain(D), D: 4}, names(A, D), 4),
    ("hint to a node tried this round is not followed",
     {A: tryagain(), B: tryagain(A), C: 3}, names(A, B, C), 3),
    ("moved goes there", {A: ReplyError("MOVED 5 10.0.0.4:7004"), D: 4}, names(A, D), 4),
    ("ask goes there with ASKING", {A: ReplyError("ASK 5 10.0.0.4:7004"), D: 4},
     names(A, D, asking=1), 4),
]


@pytest.mark.parametrize(("answers", "tried", "result"), [r[1:] for r in ROUTES],
                         ids=[r[0] for r in ROUTES])
def test_routes(answers: dict[tuple[str, int], object], tried: list[tuple[str, bool]],
                result: object) -> None:
    ran = drive(make(), answers)
    assert (ran.tried, ran.result, ran.gave_up) == (tried, result, None)


def test_an_answer_makes_the_node_preferred_and_a_hint_too() -> None:
    failover = make()
    drive(failover, {A: OSError("x"), B: 2})
    assert failover.preferred == 1
    assert drive(failover, {B: 9}).tried == names(B)
    drive(failover, {B: tryagain(D), D: 4})
    assert failover.nodes[failover.preferred].name == "10.0.0.4:7004"
    assert [n.name for n in failover.nodes][3] == "10.0.0.4:7004"  # learnt, appended


def test_usage_error_stops_and_keeps_the_node() -> None:
    failover = make()
    conn = failover.live(0)
    with pytest.raises(AssertionError, match="usage: ERR unknown"):
        drive(failover, {A: ReplyError("ERR unknown command"), B: 2})
    assert failover.live(0) is conn and failover.nodes[0].backoff == 0.0


def test_node_down_drops_its_connection_and_is_skipped_for_its_backoff() -> None:
    failover = make()
    conn = failover.live(0)
    ran = drive(failover, {A: OSError("reset"), B: 2}, now=10.0)
    assert ran.closed == (conn,) and failover.live(0) is None
    assert failover.nodes[0].down_until == 11.0
    assert failover.order(10.5) == [1, 2]
    assert failover.order(11.0) == [1, 2, 0]


def test_not_now_keeps_the_connection_and_does_not_mark_down() -> None:
    failover = make()
    conn = failover.live(0)
    ran = drive(failover, {A: tryagain(), B: 2})
    assert ran.closed == () and failover.live(0) is conn
    assert failover.nodes[0].down_until == 0.0
    assert str(failover.nodes[0].last_error).startswith("TRYAGAIN")


def test_moved_updates_the_slot_map_which_routes_the_next_request() -> None:
    failover = make()
    drive(failover, {A: ReplyError("MOVED 42 10.0.0.3:7003"), C: 3})
    assert failover.slots == {42: 2}
    assert drive(failover, {C: 3}, slot=42).tried == names(C)
    assert drive(failover, {C: 3}, slot=41).tried[0][0] == "10.0.0.3:7003"  # C answered last
    failover.preferred = 0
    assert drive(failover, {A: 1}, slot=41).tried == names(A)  # unmapped: preferred first


def test_ask_leaves_the_slot_map_alone() -> None:
    failover = make()
    drive(failover, {A: ReplyError("ASK 42 10.0.0.3:7003"), C: 3})
    assert failover.slots == {}


def test_redirects_are_bounded() -> None:
    failover = make(max_redirects=2, deadline_s=None)
    loop = {A: ReplyError("MOVED 1 10.0.0.2:7002"), B: ReplyError("MOVED 1 10.0.0.1:7001"),
            C: ReplyError("MOVED 1 10.0.0.1:7001")}
    ran = drive(failover, loop)
    assert ran.tried == names(A, B, A, C)  # two redirects, then the round goes on
    assert ran.gave_up is not None and ran.gave_up.redirects == 2


# -- rounds, pauses, the deadline --

def test_one_round_without_a_deadline_then_give_up_listing_every_node() -> None:
    failover = make(deadline_s=None)
    errors = {A: OSError("reset"), B: tryagain(), C: ProtocolError("bad")}
    ran = drive(failover, errors)
    assert ran.tried == names(A, B, C) and ran.pauses == ()
    assert ran.gave_up is not None
    assert list(ran.gave_up.errors) == ["10.0.0.1:7001", "10.0.0.2:7002", "10.0.0.3:7003"]
    assert ran.gave_up.detail == describe_errors(ran.gave_up.errors) == (
        "10.0.0.1:7001: reset; 10.0.0.2:7002: TRYAGAIN the cluster has no leader now; "
        "10.0.0.3:7003: bad")


def test_rounds_pause_with_growing_jittered_backoff_until_the_deadline() -> None:
    failover = make(deadline_s=3.0, pause_initial_s=0.1, pause_max_s=0.4)
    ran = drive(failover, {A: tryagain(), B: tryagain(), C: tryagain()})
    assert ran.gave_up is not None and len(ran.pauses) >= 5
    bases = [min(0.4, 0.1 * 2**i) for i in range(len(ran.pauses))]
    for pause, base in zip(ran.pauses[:-1], bases, strict=False):
        assert base / 2 <= pause <= base  # jitter takes off up to half
    assert sum(ran.pauses) == pytest.approx(3.0)  # the last pause ends at the deadline
    assert len(ran.tried) == 3 * len(ran.pauses)


def test_jitter_comes_from_the_injected_random() -> None:
    paused = [drive(make(deadline_s=1.0), {}).pauses for _ in range(2)]
    assert paused[0] == paused[1]  # same seed, same pauses
    assert paused[0][0] != PAUSE_INITIAL_S


def test_a_node_back_within_the_deadline_answers() -> None:
    failover = make(deadline_s=10.0)
    ran = drive(failover, {A: [OSError("down")] * 3 + [7], B: tryagain(), C: tryagain()})
    assert ran.result == 7 and ran.pauses


def test_all_down_probes_the_soonest_only() -> None:
    failover = make(deadline_s=None)
    drive(failover, {})
    failover.mark_down(0, OSError("again"), 0.5)
    assert failover.nodes[0].backoff == 2.0
    assert failover.order(0.6) == [1]
    assert failover.retry_in(0.6) == pytest.approx(0.4)
    assert drive(failover, {}, now=0.6).tried == names(B)


def test_deadline_is_checked_before_each_attempt_after_the_first() -> None:
    failover = make(deadline_s=1.0)
    request = failover.begin(0.0)
    first = request.next(5.0)  # the first attempt is always made
    assert first == Attempt(0)
    request.failed(first, OSError("slow"), 5.0)
    assert isinstance(request.next(5.0), GiveUp)


def test_node_backoff_doubles_to_its_cap_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    failover = make((A,), deadline_s=None, node_backoff_initial_s=1.0, node_backoff_max_s=4.0)
    now, seen = 0.0, []
    with caplog.at_level(logging.DEBUG, logger="core.failover"):
        for _ in range(4):
            drive(failover, {}, now)
            seen.append(failover.nodes[0].backoff)
            now = failover.nodes[0].down_until
    assert seen == [1.0, 2.0, 4.0, 4.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["node 10.0.0.1:7001 marked down for 1 s: refused"]
    assert drive(failover, {A: 1}, now).result == 1
    assert failover.nodes[0].backoff == 0.0
