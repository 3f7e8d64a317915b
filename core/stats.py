"""Figures every daemon reports: command counters, latency histograms, process figures.

Latencies go into power-of-two microsecond buckets: recording is one bit_length() and one
list increment, cheap enough for every command; percentiles are read at bucket resolution
(the upper bound of the bucket holding the quantile), which is what INFO needs.
"""

from __future__ import annotations

import os
import time

import psutil

LATENCY_BUCKETS = 32  # bucket i holds latencies below 2**i microseconds; 2**31 us ~ 36 min
# Timing a command costs two clock reads and a bucket update, about a fifth of a fast
# command's whole cost in Python; one command in 8 is timed (a power of two: a mask test).
LATENCY_SAMPLE_EVERY = 8


class LatencyHistogram:
    """Latencies in power-of-two microsecond buckets, plus exact call and failure counts.

    `calls` counts every call; the buckets, `count` and `total_ns` may hold a sample of
    them (the RESP dispatcher times one command in LATENCY_SAMPLE_EVERY).
    """

    __slots__ = ("buckets", "count", "total_ns", "calls", "errors")

    def __init__(self) -> None:
        self.buckets = [0] * LATENCY_BUCKETS
        self.count = 0
        self.total_ns = 0
        self.calls = 0
        self.errors = 0

    def record(self, nanos: int) -> None:
        self.buckets[min((nanos // 1000).bit_length(), LATENCY_BUCKETS - 1)] += 1
        self.count += 1
        self.total_ns += nanos

    def percentile(self, fraction: float) -> int:
        """Upper bound in microseconds of the bucket holding the `fraction` quantile."""
        if self.count == 0:
            return 0
        rank = fraction * self.count
        seen = 0
        for index, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return 1 << index
        return 1 << (LATENCY_BUCKETS - 1)


def command_stats_info(latencies: dict[str, LatencyHistogram]) -> dict[str, object]:
    """Redis-style `cmdstat_<name>` lines (p50/p99 added) for the commands that ran."""
    lines: dict[str, object] = {}
    for name in sorted(latencies):
        hist = latencies[name]
        if not hist.calls:
            continue
        per_call = hist.total_ns / hist.count / 1000 if hist.count else 0.0
        lines[f"cmdstat_{name.lower()}"] = (
            f"calls={hist.calls},sampled_calls={hist.count},"
            f"usec_per_call={per_call:.2f},failed_calls={hist.errors},"
            f"p50_usec={hist.percentile(0.5)},p99_usec={hist.percentile(0.99)}"
        )
    return lines


class ProcessFigures:
    """Resource use of this process, read through psutil."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self.started_at = time.time()

    def info(self) -> dict[str, object]:
        with self._proc.oneshot():
            mem = self._proc.memory_info()
            cpu = self._proc.cpu_times()
            return {
                "process_id": self._proc.pid,
                "uptime_in_seconds": int(time.time() - self.started_at),
                "used_memory_rss": mem.rss,
                "used_memory_rss_human": f"{mem.rss / (1 << 20):.2f}M",
                "used_memory_vms": mem.vms,
                "used_cpu_user": f"{cpu.user:.6f}",
                "used_cpu_sys": f"{cpu.system:.6f}",
                "num_threads": self._proc.num_threads(),
                "open_files": self._proc.num_fds(),
            }
