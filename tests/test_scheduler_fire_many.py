"""scheduler.state, scheduler.firing and scheduler.polls alone: several jobs' fires in one
entry, the claims of waiting polls riding on it, the index of AFTER children, the fast
plan of an on-time slot and the leader's heap of due jobs. No sockets, no clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import state as S
from scheduler.firing import FirePlanner
from scheduler.jobs import parse_job_add
from scheduler.planning import plan_due, plan_slots
from scheduler.polls import ParkedPolls
from scheduler.runs import STARTED, SUCCEEDED
from scheduler.state import SchedulerState

T0 = 1_700_000_000_000  # a whole second


def with_jobs(count: int, *extra: str) -> SchedulerState:
    state = SchedulerState()
    for i in range(count):
        job = parse_job_add([f"j{i}", "@every 1s", "true", *extra], T0)
        assert state.apply_entry(S.encode_add(job)) is None
    return state


def fires(count: int, slot: int) -> list[dict]:
    return [S.fire_fields(f"j{i}", [slot], slot, slot) for i in range(count)]


def view(state: SchedulerState) -> bytes:
    return state.snapshot()


def test_fire_many_is_the_same_as_one_fire_entry_per_job() -> None:
    one_each, together = with_jobs(5), with_jobs(5)
    for slot in (T0 + 1000, T0 + 2000):
        for i in range(5):
            one_each.apply_entry(S.encode_fire(f"j{i}", [slot], slot, slot))
        together.apply_entry(S.encode_fire_many(fires(5, slot)))
    assert view(one_each) == view(together)
    # the exactly-once rule holds per job inside the entry: a repeated fire is a no-op
    again = together.apply_entry(S.encode_fire_many(fires(5, T0 + 2000)))
    assert again == {"fired": [], "claimed": []}
    assert view(one_each) == view(together)


def test_claims_in_the_fire_entry_take_the_runs_it_fired_in_order() -> None:
    state = with_jobs(5)
    claims = [S.claim_fields("w1", [], T0 + 1000, 3), S.claim_fields("w2", [], T0 + 1000, 3)]
    result = state.apply_entry(S.encode_fire_many(fires(5, T0 + 1000), claims))
    assert len(result["fired"]) == 5
    first, second = result["claimed"]
    assert [r["job"] for r in first] == ["j0", "j1", "j2"]
    assert [r["job"] for r in second] == ["j3", "j4"]
    for name, worker in [("j0", "w1"), ("j3", "w2")]:
        [record] = state.runs[name].values()
        assert (record.state, record.worker) == (STARTED, worker)
    # nothing is left to claim, and the workers were heard at the entry's time
    assert not state.pending()
    assert state.workers == {"w1": T0 + 1000, "w2": T0 + 1000}
    # the same claims as a separate entry after the fire give the same state
    other = with_jobs(5)
    other.apply_entry(S.encode_fire_many(fires(5, T0 + 1000)))
    for claim in claims:
        other.apply_entry(msgpack.packb({"op": S.OP_CLAIM, **claim}))
    assert view(other) == view(state)


def test_a_claim_in_a_fire_entry_matches_tags_as_a_poll_does() -> None:
    state = SchedulerState()
    job = parse_job_add(["t", "@every 1s", "true", "TARGET", "gpu"], T0)
    state.apply_entry(S.encode_add(job))
    fire = [S.fire_fields("t", [T0 + 1000], T0 + 1000, T0 + 1000)]
    claims = [S.claim_fields("cpu-worker", ["cpu"], T0 + 1000, 8),
              S.claim_fields("gpu-worker", ["gpu"], T0 + 1000, 8)]
    result = state.apply_entry(S.encode_fire_many(fire, claims))
    assert [len(runs) for runs in result["claimed"]] == [0, 1]


def test_after_children_are_found_by_parent_and_survive_a_snapshot() -> None:
    state = with_jobs(2)
    for name, parent in [("c1", "j0"), ("c2", "j0"), ("c3", "j1")]:
        child = parse_job_add([name, "@after", "true", "AFTER", parent], T0)
        assert state.apply_entry(S.encode_add(child)) is None
    restored = SchedulerState()
    restored.restore(state.snapshot())
    for machine in (state, restored):
        machine.apply_entry(S.encode_fire_many(fires(2, T0 + 1000)))
        machine.apply_entry(S.encode_claim("w", [], T0 + 1000, 8))
        done = [("j0", f"j0@{T0 + 1000}/0", 0, "", 1), ("j1", f"j1@{T0 + 1000}/0", 0, "", 1)]
        fired = machine.apply_entry(S.encode_done_many(done, T0 + 1005))
        assert [r["job"] for r in fired] == ["c1", "c2", "c3"]  # in the jobs' order
    assert view(state) == view(restored)
    assert not state.has_broadcast_dependent("j0")
    # a parent goes once its children have gone; then its name is free again
    assert state.apply_entry(S.encode_name(S.OP_DEL, "j0")).startswith("ERR job 'j0' is")
    for name in ("c1", "c2", "j0"):
        assert state.apply_entry(S.encode_name(S.OP_DEL, name)) is None
    job = parse_job_add(["j0", "@every 1s", "true"], T0)
    assert state.apply_entry(S.encode_add(job)) is None
    assert state.apply_entry(S.encode_name(S.OP_DEL, "j0")) is None
    assert state.runs["c3"][f"c3@{T0 + 1000}/0"].state == "fired"
    assert state.runs["j1"][f"j1@{T0 + 1000}/0"].state == SUCCEEDED


def test_a_broadcast_child_is_found_through_the_index() -> None:
    state = with_jobs(1)
    child = parse_job_add(["all", "@after", "true", "AFTER", "j0", "TARGET", "ALL"], T0)
    state.apply_entry(S.encode_add(child))
    assert state.has_broadcast_dependent("j0")
    assert not state.has_broadcast_dependent("all")


def test_parked_polls_are_taken_once_and_resolved_or_failed() -> None:
    async def main() -> None:
        parked = ParkedPolls()
        gone, kept, late = (parked.park(w, [], 4) for w in ("gone", "kept", "late"))
        parked.unpark(gone)  # timed out before any fire
        polls, claims = parked.take(T0)
        assert [p.worker for p in polls] == ["kept", "late"]
        assert [c["worker"] for c in claims] == ["kept", "late"]
        assert parked.take(T0) == ([], [])  # each poll is taken once
        parked.unpark(kept)  # a taken poll stays the firing loop's
        ParkedPolls.resolve(polls[:1], [[{"run_id": "x"}]])
        ParkedPolls.fail(polls, RuntimeError("unknown"))  # only the unresolved one fails
        assert await kept.runs == [{"run_id": "x"}]
        with pytest.raises(RuntimeError):
            await late.runs

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(schedule=st.sampled_from(["@every 100ms", "@every 1s", "@every 7s", "* * * * * *",
                                 "*/2 * * * * *", "30 1 * * *", "0 * * * * *"]),
       misfire=st.sampled_from(["SKIP", "ONCE", "ALL"]),
       tz=st.sampled_from(["UTC", "America/New_York"]),
       paused=st.booleans(),
       last_offset=st.integers(0, 400 * 86_400_000),
       late=st.integers(0, 5000))
def test_plan_due_is_plan_slots(schedule: str, misfire: str, tz: str, paused: bool,
                                last_offset: int, late: int) -> None:
    # (T0 - 2 days: the New York range crosses DST changes)
    job = parse_job_add(["j", schedule, "true", "MISFIRE", misfire, "TZ", tz, "DEADLINE", "3"],
                        T0 - 2 * 86_400_000)
    if paused:
        job = replace(job, paused=True)
    last = T0 + last_offset
    next_ms = job.next_fire(last)
    now = next_ms + late
    assert plan_due(job, last, next_ms, now) == plan_slots(job, last, now)


def test_the_fire_planner_hands_out_each_due_job_once_until_it_settles() -> None:
    state = with_jobs(3)  # @every 1s from T0: each job's next slot is T0 + 1000
    planner = FirePlanner()
    planner.refresh(state)
    assert planner.soonest() == T0 + 1000
    assert planner.take_due(state, T0 + 999) == []
    due = [name for name, _ in planner.take_due(state, T0 + 1000)]
    assert due == ["j0", "j1", "j2"]
    assert planner.take_due(state, T0 + 1500) == []  # in flight: not planned again
    assert planner.soonest() is None
    planner.refresh(state, force=True)  # (a new term) in-flight jobs stay out
    assert planner.take_due(state, T0 + 1500) == []
    # j0's fire committed, j1's failed (its handled slot did not move), j2 was deleted
    state.apply_entry(S.encode_fire("j0", [T0 + 1000], T0 + 1000, T0 + 1000))
    state.apply_entry(S.encode_name(S.OP_DEL, "j2"))
    planner.settled(state, ["j0", "j1", "j2"])
    assert planner.soonest() == T0 + 1000  # j1, at once
    assert [name for name, _ in planner.take_due(state, T0 + 1500)] == ["j1"]
    assert planner.soonest() == T0 + 2000  # j0's next
    # a job added or resumed is seen at the next refresh
    state.apply_entry(S.encode_add(parse_job_add(["late", "@every 1s", "true"], T0 + 100)))
    planner.refresh(state)
    assert [name for name, _ in planner.take_due(state, T0 + 1100)] == ["late"]
