"""The claim order without a sort (scheduler/fired_index.py): whatever runs fired, were
claimed, failed and were retried, the index walks exactly the FIRED runs in (fired time, run
id) order, the order a claim used to sort them into; and a state restored from a snapshot
walks them in the same order. Driven by hypothesis through the state machine's entries.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import state as S
from scheduler.fired_index import FiredIndex
from scheduler.jobs import parse_job_add
from scheduler.runs import FIRED, RunRecord
from scheduler.state import SchedulerState

T0 = 1_700_000_000_000
JOBS = ("a", "b", "c")

steps = st.lists(st.tuples(st.sampled_from(["run", "claim", "fail", "retry"]),
                           st.sampled_from(JOBS), st.integers(1, 5), st.integers(1, 3)),
                 max_size=40)


def expected(state: SchedulerState) -> list[str]:
    fired = [r for runs in state.runs.values() for r in runs.values() if r.state == FIRED]
    return [r.run_id for r in sorted(fired, key=lambda r: (r.fired_ms, r.run_id))]


def walked(state: SchedulerState) -> list[str]:
    return [r.run_id for r in state._fired.records(state.runs)]


@settings(max_examples=80, deadline=None)
@given(steps)
def test_the_index_walks_the_fired_runs_in_claim_order(script: list[tuple[str, str, int, int]]
                                                        ) -> None:
    state = SchedulerState()
    for name in JOBS:
        job = parse_job_add([name, "@every 1h", "true", "RETRIES", "3", "BACKOFF", "0"], T0)
        assert state.apply_entry(S.encode_add(job)) is None
    now = T0
    for op, name, advance, count in script:
        now += advance
        if op == "run":
            state.apply_entry(S.encode_run(name, now))
        elif op == "claim":
            state.apply_entry(S.encode_claim("w", [], now, limit=count))
        elif op == "fail":
            for record in list(state.runs[name].values())[:count]:
                state.apply_entry(S.encode_done(name, record.run_id, 1, "x", now,
                                                record.attempt))
        else:
            for entry in state.due_entries(now):
                state.apply_entry(entry)
        assert walked(state) == expected(state)
        assert walked(state) == expected(state)  # (a walk that dropped stale keys: same)
    restored = SchedulerState()
    restored.restore(state.snapshot())
    assert walked(restored) == expected(state)


def test_a_walk_stopped_early_keeps_the_rest() -> None:
    records = [RunRecord("j", T0 + i, FIRED, fired_ms=T0 + i) for i in range(3)]
    runs = {"j": {r.run_id: r for r in records}}
    index = FiredIndex(records)
    first = next(index.records(runs))
    assert first.run_id == records[0].run_id and len(index) == 3
    assert [r.run_id for r in index.records(runs)] == [r.run_id for r in records]
