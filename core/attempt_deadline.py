"""An outer deadline for every connect and round trip a piece of code makes: the way a
client's failover bounds one attempt without threading a timeout through each `connect`.

Strategy: one context variable holds the end of the current attempt (monotonic seconds,
or None). `within(seconds)` sets it around an attempt; core/resp_client.py's connections
pass each of their own timeouts through `bounded`, which shortens it to what the attempt
has left. A context variable follows the code that set it (a thread, or one asyncio task)
and no other, so concurrent requests keep their own attempts apart. Nothing else here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

__all__ = ["bounded", "within"]

SPENT_TIMEOUT_S: Final = 0.001  # the timeout an operation gets once its attempt is spent

_ends: ContextVar[float | None] = ContextVar("attempt_ends", default=None)


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Bound every connect and round trip in this block by `seconds` from now in total
    (None: leave the current bound, if any, alone)."""
    if seconds is None:
        yield
        return
    token = _ends.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _ends.reset(token)


def bounded(timeout: float) -> float:
    """`timeout` shortened to what the enclosing `within` block has left; never below
    SPENT_TIMEOUT_S (a spent attempt fails its next operation at once, as a timeout)."""
    ends = _ends.get()
    if ends is None:
        return timeout
    return max(SPENT_TIMEOUT_S, min(timeout, ends - time.monotonic()))
