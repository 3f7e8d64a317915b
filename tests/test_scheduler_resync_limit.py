"""Regression, found by the scheduler fault drill (tests/faults/scheduler_drill.py, seed 11):
a run whose claim reply was lost could stay STARTED for good (fixed: a resync hands back
every run the worker holds, whatever its free slots).

The drill's scripted SIGKILL hit the leader right after it proposed a fire entry with the
claims of parked polls; the new leader committed it, and the workers, busy with slow runs,
asked to resync (scheduler/worker.py does after any poll error) with `max_runs` = their free
slots. The resync hands back the runs a worker holds, but cut to `max_runs`
(scheduler/state_apply.py `_claim`), oldest first, so the runs it already executes fill the
reply and the one it never received is left out; the worker then polls without resync, and
since it keeps heartbeating the cluster never calls the run lost: it never runs and never ends.
Sans I/O: the state machine alone, times passed in.
"""

from __future__ import annotations

from scheduler import state as S
from scheduler.jobs import parse_job_add
from scheduler.state import SchedulerState

T0 = 1_700_000_000_000


def test_a_resync_hands_back_a_lost_claim_whatever_the_free_slots() -> None:
    state = SchedulerState()
    job = parse_job_add(["j", "@every 1s", "sleep 3", "MISFIRE", "ALL"], T0)
    assert state.apply_entry(S.encode_add(job)) is None
    state.apply_entry(S.encode_fire("j", [T0 + 1000, T0 + 2000], T0 + 2000, T0 + 2000))
    running = state.apply_entry(S.encode_claim("w1", [], T0 + 2000, 8))  # delivered: running
    assert len(running) == 2
    state.apply_entry(S.encode_fire("j", [T0 + 3000], T0 + 3000, T0 + 3000))
    lost = state.apply_entry(S.encode_claim("w1", [], T0 + 3000, 8))  # its reply is lost
    assert [r["slot_ms"] for r in lost] == [T0 + 3000]
    # the worker, two of its slots busy with the runs above and five with others, asks to
    # resync for its one free slot: the run it never received must come back
    again = state.apply_entry(S.encode_claim("w1", [], T0 + 3100, 1, resync=True))
    assert lost[0]["run_id"] in [r["run_id"] for r in again], again
