"""Keep CPython's full (generation 2) collections short in a daemon with many long-lived objects.

A daemon holding hundreds of thousands of objects that the cyclic GC tracks (cache items,
run records) pauses its event loop for a full collection each time the long-lived objects
grow by a quarter: tens to hundreds of milliseconds, every few tens of seconds when they
churn. Objects that never form cycles are freed by reference counting anyway, so the GC
need not look at them: every `freeze_every_s`, `GcFreezer.tick` collects the young
generations (cheap) and freezes (`gc.freeze()`) every object left, so a full collection
only scans objects younger than the last freeze. Once every `full_every_s` it unfreezes
and collects everything, as a safety net for cycles that were frozen alive and died later.
kvcache and the scheduler use it.
"""

from __future__ import annotations

import gc

__all__ = ["GcFreezer"]

FREEZE_EVERY_S = 1.0
FULL_EVERY_S = 3600.0


class GcFreezer:
    """Call `tick(now)` often (a monotonic time in seconds): it freezes or collects when due."""

    def __init__(self, now: float, freeze_every_s: float = FREEZE_EVERY_S,
                 full_every_s: float = FULL_EVERY_S) -> None:
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self._next_freeze = now
        self._next_full = now + full_every_s
        self.freezes = 0
        self.full_collections = 0

    def tick(self, now: float) -> None:
        if now >= self._next_full:
            self._next_full = now + self.full_every_s
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
        if now >= self._next_freeze:
            self._next_freeze = now + self.freeze_every_s
            gc.collect(1)  # young cycles (timeouts' tracebacks...) die now, not hourly
            gc.freeze()
            self.freezes += 1
