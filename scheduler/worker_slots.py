"""A worker's execution slots and the gates of its runs fired ahead, on the hot path.

At an aligned slot a worker starts a burst of runs, one task step each, one after another:
what each step costs before its handler is entered delays every later run of the burst. So
both pieces here keep that cost small. `Slots` is a counter with a synchronous fast path
(`take_now`): a run takes a free slot with no coroutine call and no scan of waiters (an
asyncio.Semaphore costs two coroutine frames and a scan per acquire); only when none is free
does it wait, in order. `SlotGates` holds the runs fired ahead (scheduler/worker.py
`start_delay`) until their slot: one timer per slot opens every gate of that slot, so the
burst's first handler does not wait behind a timer per run.
"""

from __future__ import annotations

import asyncio
from collections import deque

from core.clock import Clock


class Slots:
    """`size` execution slots. `take_now()` takes one if free; otherwise `await take()`
    waits for one (first come, first served); `release()` gives one back, to the longest
    waiting run if any. Invariant: `free` > 0 only while no run waits."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take a free slot at once, if there is one and no run waits for one."""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (after `take_now` found none). A release hands its slot to the
        first waiter directly; a waiter cancelled after that passes it on."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over as it was cancelled: not ours to keep
            elif waiter in self._waiters:  # (a release may have dropped it, cancelled)
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first run still waiting, else to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class SlotGates:
    """The gates of runs fired ahead, by slot. `gate(slot_ms, delay_s)` returns a future a
    run awaits; it is set at wall time now + `delay_s` by the worker's clock, with every
    other gate of that slot (cancelling one cancels only its own run)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._gates: dict[int, list[asyncio.Future[None]]] = {}

    def gate(self, slot_ms: int, delay_s: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiters = self._gates.get(slot_ms)
        if waiters is None:
            waiters = self._gates[slot_ms] = []
            loop.call_later(delay_s, self._open, slot_ms, self.clock.wall_s() + delay_s)
        gate: asyncio.Future[None] = loop.create_future()
        waiters.append(gate)
        return gate

    def pending(self) -> dict[int, int]:
        """The slots with gates not opened yet, and how many runs wait on each."""
        return {slot: len(gates) for slot, gates in self._gates.items()}

    def _open(self, slot_ms: int, at_s: float) -> None:
        """Set the gates of `slot_ms`, not before wall time `at_s` by the worker's clock
        (the loop's timers run on the monotonic clock, and may be early by its resolution)."""
        if (early := at_s - self.clock.wall_s()) > 0:
            asyncio.get_running_loop().call_later(early, self._open, slot_ms, at_s)
            return
        for gate in self._gates.pop(slot_ms, ()):
            if not gate.done():
                gate.set_result(None)
