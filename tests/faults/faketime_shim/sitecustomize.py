"""Loaded at start-up by Python processes the fault harness runs on a faked wall clock.

libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 turns Python 3.11's `time.sleep`
(an absolute clock_nanosleep on CLOCK_MONOTONIC) into EINVAL. Under that preload only, this
swaps `time.sleep` for a `select` wait, which libfaketime passes through with a relative
timeout. Every other process is left alone.
"""

from __future__ import annotations

import os
import select
import time


def _select_sleep(seconds: float) -> None:
    """Sleep `seconds` (Python retries select after a signal with the remaining time)."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


if (
    "faketime" in os.environ.get("LD_PRELOAD", "")
    and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1"
):
    time.sleep = _select_sleep
