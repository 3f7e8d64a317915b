"""Micro-benchmark: ids/s of one Snowflake worker, compiled versus pure twin, side by side.

Run from the repository root: `.venv/bin/python bench/micro_snowflake.py`.

The ceiling of the layout is 4096 ids per ms = 4,096,000 ids/s per worker. Two loops each:
- fill: the batch path, `while len(out) < N: seq.fill(out, N - len(out), SystemClock(), ...)`
  with N = 4,096,000 (so at least ~1 s of wall time at the ceiling);
- next_one: one id per call, for about 1 s;
- fill-cpu: fill on a clock that moves 1 ms forward per read, so nothing waits for time: the
  code's own cost per id, i.e. the CPU headroom under the ceiling (its ratio may exceed 1).
Each prints ids/s and the ratio to the ceiling. A run is timed from inside its first ms, so a
ratio slightly above 1 is possible. Each twin runs in a fresh child process: a previous run's
freed 32 MB list leaves glibc copying (not mremapping) the growing list, and the ms a copy
spans are lost, ~0.8% at N = 4,096,000. Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CEILING_IDS_PER_S = 4_096_000
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, idgen's default
WORKER = 1
IMPLS = {"pure": "native.snowflake_pure", "native": "native._snowflake"}


def bench_fill(impl: ModuleType, count: int) -> tuple[int, float]:
    """Issue `count` ids through fill, spinning on EXHAUSTED; (ids, seconds)."""
    clock_module = importlib.import_module("core.clock")
    seq = impl.Sequencer(WORKER, EPOCH_MS)
    clock = clock_module.SystemClock()
    limit = impl.MAX_TIME
    out: list[int] = []
    start = time.perf_counter()
    while len(out) < count:
        status = seq.fill(out, count - len(out), clock, limit)
        if status not in (impl.OK, impl.EXHAUSTED):
            raise RuntimeError(f"fill stopped with status {status}")
    elapsed = time.perf_counter() - start
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise RuntimeError("ids are not strictly increasing")
    return len(out), elapsed


def bench_next_one(impl: ModuleType, seconds: float) -> tuple[int, float]:
    """Issue ids one per next_one call for about `seconds`; (ids, seconds)."""
    clock_module = importlib.import_module("core.clock")
    seq = impl.Sequencer(WORKER, EPOCH_MS)
    clock = clock_module.SystemClock()
    limit = impl.MAX_TIME
    next_one = seq.next_one
    issued = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(1024):
            if next_one(clock, limit) >= 0:
                issued += 1
        now = time.perf_counter()
    return issued, now - start


class FastForwardClock:
    """Wall time that moves 1 ms forward on every read."""

    def __init__(self) -> None:
        self.ms = EPOCH_MS

    def wall_ms(self) -> int:
        self.ms += 1
        return self.ms


def bench_fill_cpu(impl: ModuleType, count: int) -> tuple[int, float]:
    """Issue `count` ids through fill without waiting for the clock; (ids, seconds)."""
    seq = impl.Sequencer(WORKER, EPOCH_MS)
    out: list[int] = []
    start = time.perf_counter()
    status = seq.fill(out, count, FastForwardClock(), impl.MAX_TIME)
    elapsed = time.perf_counter() - start
    if status != impl.OK:
        raise RuntimeError(f"fill stopped with status {status}")
    return len(out), elapsed


def report(name: str, path: str, ids: int, elapsed: float) -> None:
    rate = ids / elapsed
    print(
        f"{name:<8} {path:<9} {ids:>10,} ids in {elapsed:6.3f} s = {rate:>12,.0f} ids/s"
        f"  ratio {rate / CEILING_IDS_PER_S:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=CEILING_IDS_PER_S, help="ids per fill run")
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of next_one runs")
    parser.add_argument("--impl", choices=sorted(IMPLS), help="run one twin in this process")
    args = parser.parse_args()
    if args.impl is None:
        print(f"ceiling {CEILING_IDS_PER_S:,} ids/s (4096 ids per ms, one worker)", flush=True)
        for name in IMPLS:
            options = ["--ids", str(args.ids), "--seconds", str(args.seconds), "--impl", name]
            subprocess.run([sys.executable, __file__, *options], check=True)
        return
    try:
        impl = importlib.import_module(IMPLS[args.impl])
    except ImportError as exc:
        print(f"{args.impl:<8} not available: {exc}")
        return
    report(args.impl, "fill", *bench_fill(impl, args.ids))
    report(args.impl, "next_one", *bench_next_one(impl, args.seconds))
    report(args.impl, "fill-cpu", *bench_fill_cpu(impl, args.ids))


if __name__ == "__main__":
    main()
