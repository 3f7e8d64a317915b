"""Clock faults: a process whose wall clock runs at an offset that can change while it runs.

Strategy: Debian's libfaketime (0.9.10 here) is preloaded (`LD_PRELOAD`) into the process and
told to read its offset from a file (`FAKETIME_TIMESTAMP_FILE`) on every clock call
(`FAKETIME_NO_CACHE=1`). The file holds a relative offset such as `+3600s` or `-90s`; the
harness rewrites it atomically (temporary file, rename), so the wall clock of every process
started with that file jumps at once, forwards or back.

How the monotonic clocks behave under this libfaketime:
- Without `FAKETIME_DONT_FAKE_MONOTONIC=1`, libfaketime fakes CLOCK_MONOTONIC (and _RAW,
  _BOOTTIME) too: they read as the faked wall time, so they jump with every offset change,
  even backwards. asyncio timers and every timeout would break, so the harness always sets it.
- With it set, `time.monotonic()` is the real monotonic clock, and asyncio (epoll_wait with a
  relative timeout), `select` and `threading` waits behave. But libfaketime 0.9.10 mangles
  `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`, which Python 3.11's `time.sleep` uses, so
  `time.sleep` raises EINVAL (libfaketime issue 426, fixed after 0.9.10). The harness adds
  `SHIM_DIR` to PYTHONPATH: its `sitecustomize` swaps `time.sleep` for a `select` wait in
  processes that run under this preload.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBFAKETIME_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
SHIM_DIR = Path(__file__).resolve().parent / "faketime_shim"
ROOT = Path(__file__).resolve().parents[2]


def libfaketime() -> str | None:
    """The path of the libfaketime preload library, or None when it is not installed."""
    for path in LIBFAKETIME_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


def unavailable_reason() -> str | None:
    """Why clock faults cannot run here (one exact reason), or None when they can."""
    if libfaketime() is None:
        return "libfaketime.so.1 is not installed (Debian package libfaketime, via faketime)"
    return None


def offset_text(seconds: float) -> str:
    """The timestamp-file form of a relative offset: `+3600s`, `-1.5s`."""
    return f"{seconds:+.3f}s"


class ClockFile:
    """The offset file of one faked wall clock; every process started with `env()` follows it."""

    def __init__(self, path: Path, seconds: float = 0.0) -> None:
        self.path = path
        self.seconds = 0.0
        self.set(seconds)

    def set(self, seconds: float) -> None:
        """From now on, processes on this clock read the real wall time plus `seconds`."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset_text(seconds) + "\n")
        os.replace(tmp, self.path)
        self.seconds = seconds

    def jump(self, delta: float) -> None:
        """Step this clock by `delta` seconds (negative: back) relative to its current offset."""
        self.set(self.seconds + delta)

    def env(self) -> dict[str, str]:
        """Environment variables that put a process on this clock (raises if no libfaketime)."""
        lib = libfaketime()
        if lib is None:
            raise RuntimeError(unavailable_reason())
        return {
            "LD_PRELOAD": lib,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
            "PYTHONPATH": f"{SHIM_DIR}{os.pathsep}{ROOT}",
        }
