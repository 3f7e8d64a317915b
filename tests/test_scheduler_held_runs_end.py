"""Every run a worker holds ends, whatever cut it off: none stays started for good.

The drill's runs-ended xfail (tests/test_drill_scheduler.py) left runs started after the
faults healed: their worker had fenced them while they waited for their slots (fired
ahead), and no abandoned report came. The cause, shown here without processes: the fence
cancelled the task of a run received in the same loop step, before the task's first step;
such a task never enters its body, so it neither reported nor freed its place. A run is now
in the worker's `running` (where the fence finds it) only from its task's first step.

Nothing is timed: waits poll until their condition, with HANG_S only to detect a hang.
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from core.resp import CommandError
from scheduler import state as S
from scheduler.arguments import ERR_UTF8
from scheduler.runs import EXIT_ABANDONED, LOST_PREFIX, RETRY_WAIT, STARTED, SUCCEEDED
from scheduler.state import SchedulerState
from scheduler.state_apply import DISOWNED_GRACE_MS, MSG_DISOWNED
from scheduler.worker import ABANDONED_MESSAGE, FIRST_REPORT, Run, Worker
from scheduler.worker_commands import ERR_HOLDING, holding_option
from scheduler.worker_slots import Slots
from tests.test_scheduler_state import T0, fire_due, make

HANG_S = 30.0
AHEAD_MS = 60_000  # the slot of the run fired ahead: far enough that it waits through the test


def _ahead_item(worker: Worker) -> list[object]:
    """A WORKER.POLL reply item of a run fired ahead of its slot (see Run.from_wire)."""
    slot = int(worker.clock.wall_s() * 1000) + AHEAD_MS
    return [f"j@{slot}/0".encode(), b"j", b"h", slot, 1, 0, 0, 1, AHEAD_MS]


def _worker(reported: list[tuple[object, ...]]) -> Worker:
    async def executor(run: Run) -> tuple[int, bytes]:
        return 0, b""

    worker = Worker([("127.0.0.1", 1)], worker_id="w", executor=executor, fence_after_s=60.0)

    async def call(*args: object, channel: int = 0) -> object:
        if args[0] == "WORKER.RESULTS":
            reported.append(args[1:])
            return b"OK"
        raise OSError("cut off")

    worker.call = call  # type: ignore[method-assign]
    return worker


def test_a_run_fenced_in_the_step_it_arrived_in_is_reported_abandoned() -> None:
    """The poll reply and the fence's check in one loop step: the run's task has not begun
    when the fence looks, so the fence leaves it to its next check, which finds it waiting
    for its slot; it is cancelled there and reports itself abandoned, and the worker's
    counts of held runs come back to zero."""
    reported: list[tuple[object, ...]] = []

    async def main() -> tuple[int, int, int]:
        worker = _worker(reported)
        worker._start(_ahead_item(worker))
        worker._fence_runs()  # the same step: its task has not begun
        reporter = asyncio.create_task(worker._reporter(FIRST_REPORT))
        try:
            async with asyncio.timeout(HANG_S):
                while not worker.running:  # its first step: it waits for its slot
                    await asyncio.sleep(0)
                worker._fence_runs()  # the fence's next check
                while not reported or worker.tasks:
                    await asyncio.sleep(0.01)
        finally:
            reporter.cancel()
        return worker._held, worker._gated, len(worker.fenced)

    held, gated, fenced = asyncio.run(main())
    assert len(reported) == 1, reported
    run_id, code, message, attempt = reported[0]
    assert (code, message, attempt) == (EXIT_ABANDONED, ABANDONED_MESSAGE, 1)
    assert str(run_id).startswith("j@")
    assert (held, gated, fenced) == (0, 0, 0)


# -- the heartbeat's reconciliation (state machine, no processes) -----------------------------

GRACE = DISOWNED_GRACE_MS
C = T0 + 1000  # the job's first slot: fired and claimed then


def _claimed(*extra: str) -> tuple[SchedulerState, str, str]:
    """A state whose job's first slot is claimed by w1 at C (its claim reply then lost:
    the worker never heard of it). Returns the state, the run id and its key."""
    state, _ = make("RETRIES", "1", "BACKOFF", "1", *extra)
    fire_due(state, "j", C)
    [item] = state.apply_entry(S.encode_claim("w1", [], C))
    run_id = item["run_id"]
    return state, run_id, f"{run_id}#1"


def test_a_run_its_heartbeating_worker_does_not_hold_is_lost_after_the_grace() -> None:
    """The leader committed the claim and died before answering the poll: the worker keeps
    heartbeating without it. Within the grace nothing changes; past it the attempt is lost
    and retried by the job's RETRIES."""
    state, run_id, _ = _claimed()
    state.apply_entry(S.encode_beat("w1", C + GRACE - 1, [], C + GRACE - 1))
    assert state.runs["j"][run_id].state == STARTED
    state.apply_entry(S.encode_beat("w1", C + GRACE, [], C + GRACE))
    record = state.runs["j"][run_id]
    assert (record.state, record.attempt) == (RETRY_WAIT, 2), record
    assert record.message == LOST_PREFIX + MSG_DISOWNED.format("w1")


def test_a_held_run_and_other_workers_runs_are_left_alone() -> None:
    state, run_id, key = _claimed()
    late = C + 10 * GRACE
    state.apply_entry(S.encode_beat("w1", late, [key], late))  # w1 holds it
    state.apply_entry(S.encode_beat("w2", late, [], late))  # not w2's run
    state.apply_entry(S.encode_beat("w1", late))  # no list: an older worker
    assert state.runs["j"][run_id].state == STARTED


def test_the_workers_clock_bounds_a_heartbeat_that_arrives_late() -> None:
    """A heartbeat held by a stalled node and applied much later lists what the worker held
    when it sent it: its own time, not the entry's, decides."""
    state, run_id, _ = _claimed()
    state.apply_entry(S.encode_beat("w1", C + 10 * GRACE, [], C + 1))
    assert state.runs["j"][run_id].state == STARTED


def test_a_run_fired_ahead_counts_its_grace_from_its_slot() -> None:
    state, _ = make("RETRIES", "1")
    fire_due(state, "j", C)
    claimed = C - 1500  # claimed 1.5 s ahead of its slot
    [item] = state.apply_entry(S.encode_claim("w1", [], claimed, 1, ahead=8))
    run_id = item["run_id"]
    assert state.runs["j"][run_id].started_ms == C
    state.apply_entry(S.encode_beat("w1", claimed + GRACE, [], claimed + GRACE))
    assert state.runs["j"][run_id].state == STARTED  # its slot is 1.5 s later
    state.apply_entry(S.encode_beat("w1", C + GRACE, [], C + GRACE))
    assert state.runs["j"][run_id].state == RETRY_WAIT


def test_a_result_taken_before_the_heartbeat_is_not_lost_again() -> None:
    state, run_id, _ = _claimed()
    state.apply_entry(S.encode_done("j", run_id, 0, "", C + 100, attempt=1))
    state.apply_entry(S.encode_beat("w1", C + GRACE, [], C + GRACE))
    assert state.runs["j"][run_id].state == SUCCEEDED


WORDS = [b"HOLDING", b"holding", b"0", b"17", b"-1", b"j@1/0#1", b"a@1/0#1,b@2/0#2,", b""]


@given(st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=12)), max_size=6))
def test_the_holding_option_parses_or_refuses_clearly(words: list[bytes]) -> None:
    try:
        keys, sent_ms = holding_option(words)
    except CommandError as exc:
        assert exc.message in (ERR_HOLDING, ERR_UTF8), exc.message
        return
    if not words:
        assert (keys, sent_ms) == (None, None)
    else:
        assert len(words) == 3 and words[0].upper() == b"HOLDING"
        assert sent_ms == int(words[1]) and keys == [k for k in words[2].decode().split(",") if k]


def test_a_heartbeat_lists_the_runs_held_but_none_while_a_resync_is_due() -> None:
    sent: list[tuple[object, ...]] = []

    async def main() -> None:
        worker = _worker([])
        worker._start(_ahead_item(worker))
        await asyncio.sleep(0)
        key = next(iter(worker.holding))
        assert worker._holding_args() == ()  # a fresh worker's first poll resyncs
        worker._resync = False
        args = worker._holding_args()
        sent.append(args)
        for task in worker.tasks:
            task.cancel()
        await asyncio.gather(*worker.tasks, return_exceptions=True)
        assert not worker.holding and not worker.running
        sent.append((key,))

    asyncio.run(main())
    args, (key,) = sent
    assert args[0] == "HOLDING" and int(str(args[1])) > 0 and args[2:] == (key,)
    assert holding_option([str(a).encode() for a in args]) == ([key], int(str(args[1])))


# -- the worker's slots (scheduler/worker_slots.py) --------------------------------------------


def test_slots_hand_over_in_order_and_survive_cancelled_waiters() -> None:
    """A waiter cancelled before a release (which then drops it) or after one handed it the
    slot (which it passes on) leaves the count right; cancelling raises CancelledError, never
    another error (a fenced run must reach its abandoned report)."""
    order: list[str] = []

    async def main() -> tuple[int, list[str]]:
        slots = Slots(1)
        assert slots.take_now() and not slots.take_now()

        async def run(name: str) -> None:
            await slots.take()
            order.append(name)
            slots.release()

        a, b, c, d = (asyncio.create_task(run(n)) for n in "abcd")
        await asyncio.sleep(0)  # all four wait, in order
        a.cancel()  # cancelled while waiting, and in the same step
        slots.release()  # a release drops its waiter and hands the slot to b
        await asyncio.sleep(0)  # a sees its cancel; b runs and releases to c
        c.cancel()  # handed the slot, cancelled before it runs: it passes the slot to d
        results = await asyncio.gather(a, b, c, d, return_exceptions=True)
        assert [type(r) for r in results] == [asyncio.CancelledError, type(None),
                                              asyncio.CancelledError, type(None)], results
        return slots.free, order

    free, seen = asyncio.run(main())
    assert (free, seen) == (1, ["b", "d"])
