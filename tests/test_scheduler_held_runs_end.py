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

from scheduler.runs import EXIT_ABANDONED
from scheduler.worker import ABANDONED_MESSAGE, FIRST_REPORT, Run, Worker

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
