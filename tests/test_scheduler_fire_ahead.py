"""Fire-ahead, sans I/O (`scheduler serve --fire-ahead-ms`, see scheduler/fireloop.py): a job
with CONCURRENCY allow is committed and claimed up to the window before its slot, and its
worker starts it at the slot; forbid and replace jobs fire at their slot.

The firing loop's planning (`FiringLoop._fire_fields` on a `FirePlanner`) is driven here
against the real state machine with a simulated clock; the daemon-level check (a handler
never starts before its slot) is in tests/test_scheduler_embedded.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.clock import ManualClock, SystemClock
from scheduler import state as S
from scheduler.fireloop import FiringLoop
from scheduler.firing import FirePlanner
from scheduler.jobs import parse_job_add
from scheduler.planning import plan_ahead
from scheduler.runs import SKIPPED, STARTED, timeout_at_ms
from scheduler.state import SchedulerState
from scheduler.state_apply import MSG_PAUSED_AHEAD
from scheduler.worker import Run, Worker, start_delay

T0 = 1_700_000_000_000  # a whole second
HANG_S = 30.0


class Planning(FiringLoop):
    """The firing loop's planning step with no server and no Raft group around it."""

    def __init__(self, state: SchedulerState, fire_ahead_ms: int) -> None:
        super().__init__(state, SystemClock(), {"fires_planned_ahead": 0},
                         worker_timeout_ms=10_000, fire_ahead_ms=fire_ahead_ms)

    def live_workers(self, now_ms: int) -> list[str]:
        return []

    def turn(self, now_ms: int) -> list[dict[str, Any]]:
        """One loop turn at `now_ms`: plan the due jobs, commit their fires (at once)."""
        self.planner.refresh(self.state)
        taken = self.planner.take_due(self.state, now_ms)
        fires = [f for name, job in taken if (f := self._fire_fields(name, job, now_ms))]
        fired = self.state.apply_entry(S.encode_fire_many(fires))["fired"] if fires else []
        self.planner.settled(self.state, [name for name, _ in taken])
        return fired


def state_with(*jobs: list[str]) -> SchedulerState:
    state = SchedulerState()
    for args in jobs:
        assert state.apply_entry(S.encode_add(parse_job_add(args, T0))) is None
    return state


def test_an_allow_job_is_due_its_lead_before_the_slot_and_forbid_or_replace_are_not() -> None:
    state = state_with(["allow", "@every 1s", "true"],
                       ["forbid", "@every 1s", "true", "CONCURRENCY", "FORBID"],
                       ["replace", "@every 1s", "true", "CONCURRENCY", "REPLACE"])
    planner = FirePlanner(200)
    planner.refresh(state)
    assert planner.soonest() == T0 + 800
    assert planner.take_due(state, T0 + 799) == []
    assert [name for name, _ in planner.take_due(state, T0 + 800)] == ["allow"]
    assert planner.take_due(state, T0 + 999) == []
    assert sorted(name for name, _ in planner.take_due(state, T0 + 1000)) == [
        "forbid", "replace"]


def test_plan_ahead_fires_the_one_slot_and_hands_over_the_next() -> None:
    job = parse_job_add(["j", "@every 1s", "true"], T0)
    plan = plan_ahead(job, T0 + 1000)
    assert (plan.fire, plan.missed, plan.handled_ms, plan.next_ms) == (
        (T0 + 1000,), 0, T0 + 1000, T0 + 2000)


def test_a_run_fired_ahead_is_claimed_with_its_wait_and_starts_at_the_slot() -> None:
    state = state_with(["j", "@every 1s", "true", "TIMEOUT", "5"])
    loop = Planning(state, 200)
    [run] = loop.turn(T0 + 810)
    assert (run["slot_ms"], run["fired_ms"]) == (T0 + 1000, T0 + 810)
    assert loop.counters["fires_planned_ahead"] == 1  # (INFO reports it)
    [claimed] = state.apply_entry(S.encode_claim("w1", [], T0 + 830))
    assert claimed["start_in_ms"] == 170
    record = state.runs["j"][claimed["run_id"]]
    assert (record.state, record.started_ms) == (STARTED, T0 + 1000)
    # TIMEOUT counts from the slot, when the worker starts it, not from the claim
    assert timeout_at_ms(state.jobs["j"], record) == T0 + 1000 + 5000
    # delivered again after a lost reply: the wait left, from the new claim's time
    [again] = state.apply_entry(S.encode_claim("w1", [], T0 + 900, resync=True))
    assert (again["run_id"], again["start_in_ms"]) == (claimed["run_id"], 100)


def test_a_pause_kills_the_runs_fired_ahead_that_no_worker_took() -> None:
    state = state_with(["held", "@every 1s", "true", "TARGET", "a"],
                       ["waiting", "@every 1s", "true", "TARGET", "b"])
    assert len(Planning(state, 200).turn(T0 + 850)) == 2  # both fired for T0 + 1000
    [held] = state.apply_entry(S.encode_claim("w1", ["a"], T0 + 860))
    for name in ("held", "waiting"):
        assert state.apply_entry(S.encode_name(S.OP_PAUSE, name, T0 + 900)) is None
    [waiting] = state.runs["waiting"].values()
    assert (waiting.state, waiting.message) == ("killed", MSG_PAUSED_AHEAD)
    assert state.apply_entry(S.encode_claim("w2", ["b"], T0 + 950)) == []
    # the run a worker holds starts at its slot, as the worker will start it
    assert state.runs["held"][held["run_id"]].state == STARTED


def test_a_run_claimed_after_its_slot_starts_at_once() -> None:
    state = state_with(["j", "@every 1s", "true"])
    Planning(state, 200).turn(T0 + 850)
    [claimed] = state.apply_entry(S.encode_claim("w1", [], T0 + 1040))
    assert claimed["start_in_ms"] == 0
    assert state.runs["j"][claimed["run_id"]].started_ms == T0 + 1040


SCHEDULES = ["@every 100ms", "@every 250ms", "@every 1s", "* * * * * *", "*/2 * * * * *"]


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(SCHEDULES), concurrency=st.sampled_from(["ALLOW", "FORBID"]),
       lead=st.sampled_from([0, 50, 200, 900]),
       steps=st.lists(st.integers(1, 400), min_size=20, max_size=60))
def test_every_slot_fires_once_and_never_before_its_lead(schedule: str, concurrency: str,
                                                         lead: int, steps: list[int]) -> None:
    """Loop turns at random intervals (each under the on-time limit): every slot of the
    window fires exactly once, an allow job's no earlier than `lead` before it, a forbid
    job's not before it. MISFIRE ALL: a late turn fires every slot it finds due."""
    state = state_with(["j", schedule, "true", "CONCURRENCY", concurrency, "MISFIRE", "ALL",
                        "HISTORY", "10000"])
    loop = Planning(state, lead)
    now, fired = T0, []
    for step in steps:
        now += step
        fired += loop.turn(now)
        state.apply_entry(S.encode_claim("w1", [], now, 1024))  # each run runs at once
        for run in list(state.runs["j"].values()):
            if run.state == STARTED:
                state.apply_entry(S.encode_done("j", run.run_id, 0, "", now))
    slots = Counter(run["slot_ms"] for run in fired)
    assert all(count == 1 for count in slots.values())
    # forbid records a slot as skipped if an earlier one of the same turn is still active
    skipped = [r.slot_ms for r in state.runs["j"].values() if r.state == SKIPPED]
    job, expected = state.jobs["j"], []
    slot = job.next_fire(T0)
    while slot is not None and slot <= state.handled["j"]:
        expected.append(slot)
        slot = job.next_fire(slot)
    assert sorted([*slots, *skipped]) == expected
    earliest = lead if concurrency == "ALLOW" else 0
    for run in fired:
        assert run["fired_ms"] >= run["slot_ms"] - earliest


@pytest.mark.parametrize(("start_in_ms", "slot_in_s", "expected"), [
    (0, 0.5, 0.0),  # not fired ahead: at once, whatever the slot says
    (200, 0.15, 0.15),  # fired ahead: at the slot by this clock
    (200, 5.0, 0.2),  # this clock lags the leader's: no longer than the leader meant
    (200, -0.1, 0.0),  # this clock leads: the slot has passed here, at once
])
def test_a_worker_starts_a_run_at_its_slot_but_waits_no_longer_than_the_leader_meant(
        start_in_ms: int, slot_in_s: float, expected: float) -> None:
    now = T0 / 1000
    run = Run(job="j", scheduled_at_ms=round((now + slot_in_s) * 1000), run_id="j@1/0",
              attempt=1, start_in_ms=start_in_ms)
    assert start_delay(run, now) == pytest.approx(expected)


def test_runs_fired_ahead_start_only_once_the_workers_clock_reaches_the_slot() -> None:
    """The gate's timer runs on the loop's clock; the worker's wall clock decides. A wall
    clock held before the slot keeps the runs waiting however often the timer fires."""
    clock = ManualClock(wall_ms=T0)
    entered: list[str] = []

    async def executor(run: Run) -> tuple[int, bytes]:
        entered.append(run.run_id)
        return 0, b""

    async def all_entered() -> None:
        while len(entered) < 3:
            await asyncio.sleep(0.005)

    async def main() -> None:
        worker = Worker([("127.0.0.1", 1)], worker_id="w", executor=executor, clock=clock)
        for i in range(3):  # three runs of one slot, 30 ms ahead; one of the next slot
            worker._start([f"j{i}@{T0 + 30}/0", f"j{i}", "c", T0 + 30, 1, 0, 0, 1, 30])
        worker._start([f"k@{T0 + 1030}/0", "k", "c", T0 + 1030, 1, 0, 0, 1, 1030])
        assert worker._gates.pending() == {T0 + 30: 3, T0 + 1030: 1}
        await asyncio.sleep(0.1)  # the timers fired (loop clock); the wall clock did not move
        assert entered == []
        clock.step_wall(30)  # the slot, by the worker's clock
        await asyncio.wait_for(all_entered(), HANG_S)  # (only a hang fails here)
        assert sorted(entered) == [f"j{i}@{T0 + 30}/0" for i in range(3)]
        assert worker._gates.pending() == {T0 + 1030: 1}  # the next slot's run still waits
        for task in worker.tasks:
            task.cancel()

    asyncio.run(main())


def test_the_poll_reply_carries_the_wait_to_the_worker() -> None:
    raw = ["j@5/0", "j", "cmd", 5, 1, 0, 0, 1, 170]
    assert Run.from_wire(raw).start_in_ms == 170
    assert Run.from_wire(raw[:8]).start_in_ms == 0  # an older cluster: start at once


def test_the_system_clocks_fine_wall_reading_agrees_with_its_milliseconds() -> None:
    clock = SystemClock(offset_ms=120_000)  # shifted, as --clock-offset-ms does
    before = clock.wall_ms()
    fine = clock.wall_s() * 1000
    after = clock.wall_ms()
    assert before <= fine < after + 1
