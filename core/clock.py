"""The one clock a daemon reads: wall time for stamps, monotonic time for waits.

Every daemon receives a clock object instead of calling `time` itself, so tests can step
wall time backwards or forwards (`ManualClock`) and a real process can be started with a
shifted clock (`SystemClock(offset_ms=...)`, the hidden `--clock-offset-ms` option).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch, as the host believes it to be."""
        ...

    def wall_s(self) -> float:
        """The same wall time in seconds, finer than a millisecond: for waits aimed at a
        wall time, which whole milliseconds would make up to 1 ms late."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


class SystemClock:
    """The host's clocks, wall time shifted by `offset_ms` (0 in production).

    `native.snowflake` recognises a class that sets READS_CLOCK_REALTIME itself (this one;
    not a subclass) and reads CLOCK_REALTIME in C instead of calling `wall_ms`, adding the
    same offset.
    """

    __slots__ = ("offset_ms",)
    READS_CLOCK_REALTIME = True  # wall_ms() is CLOCK_REALTIME in whole ms plus offset_ms

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def wall_s(self) -> float:
        return time.time() + self.offset_ms / 1000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: `advance` both clocks, `step_wall` the wall one."""

    __slots__ = ("_wall_ms", "_mono")

    def __init__(self, wall_ms: int = 1_750_000_000_000, monotonic: float = 1000.0) -> None:
        self._wall_ms = wall_ms
        self._mono = monotonic

    def wall_ms(self) -> int:
        return self._wall_ms

    def wall_s(self) -> float:
        return self._wall_ms / 1000

    def monotonic(self) -> float:
        return self._mono

    def advance(self, ms: int) -> None:
        """Time passes: both clocks move forward by `ms`."""
        if ms < 0:
            raise ValueError("time only passes forwards; use step_wall for a clock step")
        self._wall_ms += ms
        self._mono += ms / 1000.0

    def step_wall(self, ms: int) -> None:
        """An NTP-style step of the wall clock alone (negative: backwards)."""
        self._wall_ms += ms
