"""scheduler.state alone, for what the real-process drills (test_scheduler_drills.py) found:
a worker's report of a run it killed at its TIMEOUT, and the notice a worker gets of its
attempts killed by CONCURRENCY REPLACE. No sockets, no clock: times are passed in."""

from __future__ import annotations

from scheduler import state as S
from scheduler.jobs import parse_job_add
from scheduler.runs import TIMED_OUT, RunRecord
from scheduler.state import SchedulerState

T0 = 1_700_000_000_000  # a whole second


def started(*options: str) -> tuple[SchedulerState, str]:
    """A state with job "j" (JOB.ADD `options`) whose run of slot T0 + 1000 worker "w"
    started at T0 + 1000; returns the state and the run id."""
    state = SchedulerState()
    job = parse_job_add(["j", "@every 1s", "true", *options], T0)
    assert state.apply_entry(S.encode_add(job)) is None
    [run] = state.apply_entry(S.encode_fire("j", [T0 + 1000], T0 + 1000, T0 + 1000))
    assert state.apply_entry(S.encode_claim("w", [], T0 + 1000))
    return state, RunRecord.from_dict(run).run_id


def report(state: SchedulerState, run_id: str, code: int, now_ms: int) -> None:
    state.apply_entry(S.encode_done("j", run_id, code, "out", now_ms, 1))


def test_a_failure_reported_past_the_timeout_is_a_timeout() -> None:
    state, run_id = started("TIMEOUT", "2")
    report(state, run_id, 124, T0 + 3000)  # the worker killed it at its own TIMEOUT
    record = state.runs["j"][run_id]
    # what the cluster's own expiry records, so the history does not depend on the race
    assert (record.state, record.exit_code, record.message) == (
        TIMED_OUT, None, S.TIMED_OUT_MESSAGE)


def test_reports_before_the_timeout_or_successes_keep_their_outcome() -> None:
    state, run_id = started("TIMEOUT", "2")
    report(state, run_id, 3, T0 + 2999)
    assert (state.runs["j"][run_id].state, state.runs["j"][run_id].exit_code) == ("failed", 3)
    state, run_id = started("TIMEOUT", "2")
    report(state, run_id, 0, T0 + 3500)  # finished in time, reported late
    assert state.runs["j"][run_id].state == "succeeded"
    state, run_id = started()  # no TIMEOUT
    report(state, run_id, 124, T0 + 999_000)
    assert state.runs["j"][run_id].state == "failed"


def test_replaced_attempts_are_named_to_their_worker_for_a_while() -> None:
    state, run_id = started("CONCURRENCY", "REPLACE")
    assert state.killed_attempts("w", T0 + 1500) == []
    state.apply_entry(S.encode_fire("j", [T0 + 2000], T0 + 2000, T0 + 2000))
    assert state.runs["j"][run_id].state == "killed"
    assert state.killed_attempts("w", T0 + 2000) == [f"{run_id}#1"]
    assert state.killed_attempts("other", T0 + 2000) == []
    assert state.killed_attempts("w", T0 + 2000 + S.KILL_NOTICE_MS) == [f"{run_id}#1"]
    assert state.killed_attempts("w", T0 + 2001 + S.KILL_NOTICE_MS) == []


def test_a_replaced_run_no_worker_started_is_not_named() -> None:
    state = SchedulerState()
    job = parse_job_add(["j", "@every 1s", "true", "CONCURRENCY", "REPLACE"], T0)
    state.apply_entry(S.encode_add(job))
    state.apply_entry(S.encode_fire("j", [T0 + 1000], T0 + 1000, T0 + 1000))
    state.apply_entry(S.encode_fire("j", [T0 + 2000], T0 + 2000, T0 + 2000))  # kills FIRED
    assert state.killed_attempts("", T0 + 2000) == []
