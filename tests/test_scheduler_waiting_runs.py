"""The misfire deadline of a run already fired and waiting for a worker (a JOB.RUN, a retry):
past it, no worker having taken it, the run is recorded expired and never runs.

Sans I/O: the state machine driven as the leader drives it (`due_entries` proposes, the
entry applies), times passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from scheduler import state as S
from scheduler.jobs import DEFAULT_DEADLINE_S, ON_TIME_MS, parse_job_add
from scheduler.runs import EXPIRED, FIRED, RETRY_WAIT, RunRecord
from scheduler.state import SchedulerState
from scheduler.state_apply import MSG_WAITED

README = Path(__file__).resolve().parent.parent / "README.md"
T0 = 1_700_000_000_000
DEADLINE_MS = DEFAULT_DEADLINE_S * 1000


def added(*args: str) -> SchedulerState:
    state = SchedulerState()
    assert state.apply_entry(S.encode_add(parse_job_add(list(args), T0))) is None
    return state


def run_id(run: dict[str, Any]) -> str:
    return RunRecord.from_dict(run).run_id


def misfires(state: SchedulerState, now_ms: int) -> list[dict[str, Any]]:
    """The misfire entries the leader would propose at `now_ms`, decoded."""
    entries = [msgpack.unpackb(e) for e in state.due_entries(now_ms)]
    return [e for e in entries if e["op"] == S.OP_MISFIRE]


def apply_due(state: SchedulerState, now_ms: int) -> None:
    for entry in state.due_entries(now_ms):
        state.apply_entry(entry)


def test_a_job_run_no_worker_takes_expires_past_the_deadline() -> None:
    state = added("manual", "@every 1h", "true")
    [run] = state.apply_entry(S.encode_run("manual", T0 + 5_000))
    assert misfires(state, T0 + 5_000 + DEADLINE_MS) == []  # at the deadline: still waits
    [entry] = misfires(state, T0 + 5_001 + DEADLINE_MS)
    assert (entry["run_id"], entry["attempt"]) == (run_id(run), 1)
    apply_due(state, T0 + 5_001 + DEADLINE_MS)
    record = state.runs["manual"][run_id(run)]
    assert record.state == EXPIRED
    assert record.message == MSG_WAITED.format(DEADLINE_MS + 1, "once", DEFAULT_DEADLINE_S)
    assert state.apply_entry(S.encode_claim("w", [], T0 + 70_000)) == []  # never runs
    assert misfires(state, T0 + 99_000) == []  # and is not proposed again


def test_a_retry_waiting_for_a_worker_expires_from_when_it_fired() -> None:
    state = added("flaky", "@every 1h", "true", "RETRIES", "2", "BACKOFF", "5")
    [run] = state.apply_entry(S.encode_run("flaky", T0))
    [claimed] = state.apply_entry(S.encode_claim("w", [], T0 + 10))
    state.apply_entry(S.encode_done("flaky", claimed["run_id"], 1, "boom", T0 + 20, 1))
    assert state.runs["flaky"][run_id(run)].state == RETRY_WAIT
    apply_due(state, T0 + 5_020)  # the retry fires: attempt 2 waits for a worker
    record = state.runs["flaky"][run_id(run)]
    assert (record.state, record.attempt, record.fired_ms) == (FIRED, 2, T0 + 5_020)
    assert misfires(state, T0 + 5_020 + DEADLINE_MS) == []  # counted from the retry
    apply_due(state, T0 + 5_021 + DEADLINE_MS)
    record = state.runs["flaky"][run_id(run)]
    assert (record.state, record.attempt) == (EXPIRED, 2)  # not retried again


def test_misfire_skip_gives_a_waiting_run_only_the_on_time_window() -> None:
    state = added("strict", "@every 1h", "true", "MISFIRE", "SKIP")
    [run] = state.apply_entry(S.encode_run("strict", T0))
    assert misfires(state, T0 + ON_TIME_MS) == []
    apply_due(state, T0 + ON_TIME_MS + 1)
    assert state.runs["strict"][run_id(run)].state == EXPIRED


def test_a_stale_misfire_entry_changes_nothing() -> None:
    """Proposed while the run waited, applied after a worker took it (or too early by the
    entry's own time): a no-op, as every replica decides from the entry alone."""
    state = added("manual", "@every 1h", "true")
    [run] = state.apply_entry(S.encode_run("manual", T0))
    late = next(e for e in state.due_entries(T0 + DEADLINE_MS + 1))
    early = S.encode_attempt(S.OP_MISFIRE, state.runs["manual"][run_id(run)], T0 + 10)
    assert state.apply_entry(early) is None
    assert state.runs["manual"][run_id(run)].state == FIRED
    [claimed] = state.apply_entry(S.encode_claim("w", [], T0 + 20))
    assert state.apply_entry(late) is None
    assert state.runs["manual"][claimed["run_id"]].state == "started"


def test_a_scheduled_slots_first_attempt_is_left_to_the_firing_loops_rule() -> None:
    """The firing loop fires a scheduled slot only once a live worker can take it, under the
    job's misfire policy then; a run of it still unclaimed later (its workers busy) waits."""
    state = added("cron", "@every 1h", "true", "MISFIRE", "SKIP")
    slot = T0 + 3_600_000
    [run] = state.apply_entry(S.encode_fire("cron", [slot], slot, slot))
    assert misfires(state, slot + 10 * DEADLINE_MS) == []
    assert state.runs["cron"][run_id(run)].state == FIRED


def test_a_broadcast_shard_bound_to_its_worker_is_left_to_the_lost_worker_rule() -> None:
    state = added("everyone", "@every 1h", "true", "TARGET", "ALL")
    state.apply_entry(S.encode_beat("w1", T0))
    [shard] = state.apply_entry(S.encode_run("everyone", T0, ["w1"]))
    assert shard["worker"] == "w1"
    assert misfires(state, T0 + 2 * DEADLINE_MS) == []


def test_the_readme_states_the_deadline_of_waiting_runs() -> None:
    text = " ".join(README.read_text().split())
    assert ("A run already fired that waits for a worker (a `JOB.RUN`, a retry) follows the "
            "same deadline: if no worker has taken it within `DEADLINE` (1 s under `MISFIRE "
            "skip`) of when it was due, it is recorded as `expired` and never runs.") in text
