"""The rules of one idgen worker, sans I/O: issuing, clock steps, the high-water mark.

The sequence and bit packing run in `native.snowflake.Sequencer` (Cython, pure twin); this
module decides what happens when the sequencer cannot issue:

- the sequence of this millisecond is used up    -> the caller spins to the next ms;
- the wall clock is behind the last issued id    -> wait it out if the step is at most
  `max_backward_ms`, else refuse with the size of the step until the clock catches up;
  right after a restart the sequencer resumes from the mark, which was reserved up to
  `reserve_ms` ahead of the clock, so until the first id a gap of up to
  `reserve_ms + max_backward_ms` is the reservation, not a clock step, and is waited out;
- the clock passed the durable high-water mark   -> the caller must persist a new mark
  (`reservation()`), then report it (`reserved()`), before more ids are issued;
- a fault was declared (peer conflict, skew)     -> refuse with that error.

Invariant: every issued id has a time <= `durable_hwm_ms`, which the caller wrote and
fsynced before reporting it. After a restart the sequencer resumes strictly after the mark,
so no id is ever issued twice nor smaller than one issued before, whatever the clock does.
Time enters only through the injected clock; disk only through what the caller does.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import Clock
from idgen.layout import MAX_TIME_MS, MAX_WORKER_ID, years_left
from native import snowflake

DEFAULT_MAX_BACKWARD_MS = 5
DEFAULT_RESERVE_MS = 1000


class IssueRefused(Exception):
    """Ids cannot be issued now; the message is a RESP error with its code (CLOCK, ...)."""


@dataclass(frozen=True)
class Wait:
    """Issuing is blocked; what the caller must do before asking again.

    kind "spin": the sequence of this ms is used up, retry at once (time will tick).
    kind "sleep": a small backward step, sleep `ms` then retry.
    kind "reserve": persist `reservation()` and call `reserved()`, then retry.
    """

    kind: str
    ms: int = 0


SPIN = Wait("spin")
RESERVE = Wait("reserve")


class IdGenerator:
    """One worker's id issuing. Not thread-safe; the server owns it on its event loop."""

    def __init__(
        self,
        worker_id: int,
        epoch_ms: int,
        clock: Clock,
        durable_hwm_ms: int | None = None,
        *,
        max_backward_ms: int = DEFAULT_MAX_BACKWARD_MS,
        reserve_ms: int = DEFAULT_RESERVE_MS,
        hwm_reserve_ms: int = 0,
    ) -> None:
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(f"worker id {worker_id} is outside 0..{MAX_WORKER_ID}")
        self.worker_id = worker_id
        self.epoch_ms = epoch_ms
        self.clock = clock
        self.max_backward_ms = max_backward_ms
        self.reserve_ms = reserve_ms
        self.fault: str | None = None
        self.issued = 0
        # times NEXT had to wait, by cause (slow paths only): the clock stepped back, the
        # millisecond's sequence ran out, the durable high-water mark was reached
        self.waits = {"clock": 0, "sequence": 0, "reserve": 0}
        # Resume strictly after the mark: every id up to it may already have been issued.
        if durable_hwm_ms is None:
            self.durable_hwm_ms = epoch_ms - 1
            self._seq = snowflake.Sequencer(worker_id, epoch_ms)
        else:
            self.durable_hwm_ms = durable_hwm_ms
            self._seq = snowflake.Sequencer(worker_id, epoch_ms, durable_hwm_ms - epoch_ms)
        self._limit = self.durable_hwm_ms - epoch_ms
        self.resuming = durable_hwm_ms is not None
        # The mark may have been reserved with a larger --reserve-ms than this run's.
        self.resume_wait_ms = max(reserve_ms, hwm_reserve_ms) + max_backward_ms

    # -- issuing -----------------------------------------------------------------------
    def next_one(self) -> int | Wait:
        """One id, or what to do first. Raises IssueRefused."""
        if self.fault is not None:
            raise IssueRefused(self.fault)
        result = self._seq.next_one(self.clock, self._limit)
        if result >= 0:
            self.issued += 1
            self.resuming = False
            return result
        return self._blocked(-result)

    def fill(self, out: list[int], n: int) -> Wait | None:
        """Append up to `n` ids to `out`; None when all were added, else what to do first.
        Ids appended before a Wait or an IssueRefused are issued: the caller delivers them
        or drops them (a gap, never a duplicate)."""
        if self.fault is not None:
            raise IssueRefused(self.fault)
        before = len(out)
        status = self._seq.fill(out, n, self.clock, self._limit)
        if len(out) > before:
            self.issued += len(out) - before
            self.resuming = False
        return None if status == snowflake.OK else self._blocked(status)

    def _blocked(self, status: int) -> Wait:
        if status == snowflake.EXHAUSTED:
            self.waits["sequence"] += 1
            return SPIN
        if status == snowflake.LIMIT:
            self.waits["reserve"] += 1
            return RESERVE
        if status == snowflake.BEHIND:
            step = self._seq.last_ms - self._seq.now_ms
            if step <= self.max_backward_ms or (self.resuming and step <= self.resume_wait_ms):
                self.waits["clock"] += 1
                return Wait("sleep", step)
            raise IssueRefused(
                f"CLOCK clock moved backwards by {step} ms; "
                "refusing to issue ids until it catches up"
            )
        raise IssueRefused(
            f"OVERFLOW the 41 time bits are exhausted for epoch {self.epoch_ms}; "
            "choose a later epoch on a new data directory"
        )

    # -- the high-water mark -----------------------------------------------------------
    def reservation(self) -> int | None:
        """The mark to persist next (absolute ms), or None while the current one suffices
        (the clock is more than half a reservation away from it)."""
        now = self.clock.wall_ms()
        if self.durable_hwm_ms - now > self.reserve_ms // 2:
            return None
        # now + reserve_ms > durable_hwm_ms here, so the mark only moves forward.
        return min(now + self.reserve_ms, self.epoch_ms + MAX_TIME_MS)

    def reserved(self, hwm_ms: int) -> None:
        """The caller has durably recorded `hwm_ms`; ids up to it may now be issued."""
        if hwm_ms > self.durable_hwm_ms:
            self.durable_hwm_ms = hwm_ms
            self._limit = hwm_ms - self.epoch_ms

    # -- figures -----------------------------------------------------------------------
    @property
    def last_issued_ms(self) -> int:
        """Absolute ms of the newest id (or of the mark resumed from)."""
        return self._seq.last_ms + self.epoch_ms

    def clock_state(self) -> str:
        """'ok', 'behind <n>ms' while the clock is behind the last id, or the fault."""
        if self.fault is not None:
            return self.fault
        behind = self.last_issued_ms - self.clock.wall_ms()
        return f"behind {behind}ms" if behind > 0 else "ok"

    def years_left(self) -> float:
        return years_left(self.clock.wall_ms(), self.epoch_ms)
