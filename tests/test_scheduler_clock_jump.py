"""A leader whose wall clock jumps forward does not call a live worker's runs lost.

The `lose` entry's silence is measured between wall times (the proposer's clock), so a
leader whose clock stepped forward by more than the worker timeout found every worker silent
and retried their running attempts elsewhere while they still ran (the fault drill's clock
jump). The firing loop now proposes a `lose` only for a worker whose replicated last-heard
time has also not moved for the worker timeout by its own monotonic clock. Sans I/O: the
loop's check on the real state machine with a ManualClock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from core.clock import ManualClock
from scheduler import fireloop
from scheduler import state as S
from scheduler.fireloop import FiringLoop
from scheduler.jobs import parse_job_add
from scheduler.state import SchedulerState
from scheduler.worker_links import NodeLinks

T0 = 1_700_000_000_000
TIMEOUT_MS = 3000


def loop_with_a_started_run() -> tuple[FiringLoop, ManualClock]:
    state = SchedulerState()
    assert state.apply_entry(S.encode_add(parse_job_add(["j", "@every 1h", "true"], T0))) is None
    state.apply_entry(S.encode_run("j", T0))
    [claimed] = state.apply_entry(S.encode_claim("w1", [], T0))
    assert claimed["job"] == "j"
    clock = ManualClock(T0)
    return FiringLoop(state, clock, {}, worker_timeout_ms=TIMEOUT_MS), clock


def loses(loop: FiringLoop, clock: ManualClock) -> list[str]:
    entries = loop.state.due_entries(clock.wall_ms(), TIMEOUT_MS, loop._silent_here())
    return [e["run_id"] for e in map(msgpack.unpackb, entries) if e["op"] == S.OP_LOSE]


def test_a_wall_clock_jump_alone_loses_no_run() -> None:
    loop, clock = loop_with_a_started_run()
    assert loses(loop, clock) == []
    clock.step_wall(10 * TIMEOUT_MS)  # the leader's clock jumps; no time passes
    assert loses(loop, clock) == []
    clock.advance(TIMEOUT_MS)  # now the worker has been silent by this node's clock too
    assert len(loses(loop, clock)) == 1


def test_a_worker_heard_meanwhile_is_not_silent() -> None:
    loop, clock = loop_with_a_started_run()
    assert loses(loop, clock) == []
    clock.advance(TIMEOUT_MS - 1)
    loop.state.apply_entry(S.encode_beat("w1", clock.wall_ms()))
    clock.step_wall(10 * TIMEOUT_MS)
    clock.advance(TIMEOUT_MS - 1)
    assert loses(loop, clock) == []  # heard 2.999 s ago by the monotonic clock


def test_a_long_walk_of_the_active_runs_spaces_out_the_next(monkeypatch: Any) -> None:
    """The expire/lose/retry walk takes at most CHECK_RUNS_SHARE of the loop: a walk of
    0.5 s (read from a stand-in perf_counter) puts the next 0.5 / share s later."""
    loop, _ = loop_with_a_started_run()
    readings = iter([10.0, 10.5])
    monkeypatch.setattr(fireloop.time, "perf_counter", lambda: next(readings))

    async def walk() -> float:
        await loop._expire_and_retry()
        return asyncio.get_running_loop().time()

    now = asyncio.run(walk())
    assert loop._runs_check_at >= now + 0.5 / fireloop.CHECK_RUNS_SHARE - 0.5


def test_a_poll_with_no_leader_found_keeps_the_long_timeout() -> None:
    """Heartbeats and reports leave an unanswering node after the short side timeout; the
    poll channel, even on a node picked with no leader found, keeps the long one (a long
    poll and a forwarded claim)."""
    links = NodeLinks([("127.0.0.1", 1), ("127.0.0.1", 2)], 3, 0, password=None,
                      call_timeout_s=15.0, find_timeout_s=1.0, as_dict=dict,
                      side_timeout_s=3.0)
    opened: list[float] = []

    async def fake_open(index: int, timeout: float) -> Any:
        opened.append(timeout)
        return object()

    async def no_leader() -> None:
        return None

    links._open = fake_open  # type: ignore[method-assign]
    links._find_leader = no_leader  # type: ignore[method-assign]

    async def connect() -> None:
        for channel in (0, 1, 2):
            await links._connect_spread(channel)

    asyncio.run(connect())
    assert opened == [15.0, 3.0, 3.0]
