"""The scheduler benchmark's plan, limits and shared helpers (bench.scheduler_bench runs
it; bench.scheduler_failover holds sections 2 and 3).

A `Plan` says how long and how often each section measures; rows with a time limit are
lower-is-better (`ceiling_figure`); a section's run turns the cluster's errors into
RuntimeError so the Recorder keeps it as a failed run.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Figure,
)
from bench.scheduler_cluster import SchedulerCluster, WorkerChild
from scheduler.client import SchedulerError

LATENESS_GOAL_MS = 20.0
GOAL_JOBS = 1000  # the lateness goal holds at 1,000 fires/s
OFFERED_GOAL = 0.99  # fires/s over the offered rate: the load was really offered
KILL_GOAL_MS = 3000.0
TERM_GOAL_MS = 500.0
RAFT_GOAL_PER_S = 10_000
RAFT_ENTRY_BYTES = 100
RAFT_PROPOSERS = 1000
RAFT_RETRIES = 3  # section 3's BENCH runs again when the lead moved during it
FAILOVER_JOBS = 4  # @every 100ms, a quarter period apart: a fire every 25 ms
FAILOVER_PERIOD_MS = 100
STEADY_S = 1.0  # fires before each kill
HISTORY_READ = 1000  # run records read per job after each failover event
DRAIN_S = 2.0  # after section 1's window, before the worker stops
ADDERS = 16  # threads adding section 1's jobs
MIN_HISTORY = 60  # section 1 reads each job's history after the window: it must hold it


@dataclass(frozen=True)
class Plan:
    """How long and how often each section measures."""

    job_counts: tuple[int, ...]
    warmup_s: float
    window_s: float
    kills: int  # of each signal
    raft_entries: int
    raft_runs: int
    history: int | None  # JOB.ADD HISTORY for section 1 (None: the daemon's default)
    slots: int | None  # the embedded worker's slots (None: EmbeddedWorker's default)
    failover: bool  # section 1 SIGKILLs the leader in the middle of each window
    node_args: tuple[str, ...] = ()  # extra `scheduler serve` options (--fire-ahead-ms)


def make_plan(args: argparse.Namespace) -> Plan:
    node_args = () if args.fire_ahead_ms is None else ("--fire-ahead-ms", str(args.fire_ahead_ms))
    if args.quick:
        return Plan(args.jobs, 2.0, 6.0, 2, 10_000, 1, args.history, args.slots,
                    args.failover, node_args)
    return Plan(args.jobs, 5.0, 20.0, args.kills, 30_000, 3, args.history, args.slots,
                args.failover, node_args)


def ceiling_figure(section: str, label: str, value: float, unit: str, limit: float,
                   goal: bool, detail: dict[str, Any]) -> Figure:
    """A lower-is-better row: ratio = value / limit; met when value <= limit (if `goal`)."""
    figure = Figure(section, label, value, unit, "limit", limit, 1.0 if goal else None,
                    f"<= {limit:,.0f} {unit}" if goal else "-", detail=detail)
    figure.met = (value <= limit) if goal else None
    return figure


def fmt_stats(stats: dict[str, float]) -> str:
    return f"p50 {stats['p50']:.1f} / p99 {stats['p99']:.1f} / max {stats['max']:.1f} ms"


@contextlib.contextmanager
def failures_as_runtime_errors() -> Iterator[None]:
    """Recorder.attempt records RuntimeError/OSError/ValueError as a failed run and goes
    on; the cluster client's, a child's wait and the raft drill's hang errors become one."""
    try:
        yield
    except (SchedulerError, subprocess.TimeoutExpired, AssertionError) as exc:
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def worker_for(cluster: SchedulerCluster, slots: int | None) -> Iterator[WorkerChild]:
    worker = WorkerChild(cluster, slots).start()
    try:
        yield worker
    finally:
        worker.kill()  # only if still running: finish() normally reaped it



def cores_text(cpu: dict[str, Any]) -> str:
    nodes = "+".join(f"{c:.2f}" for c in cpu["server_cores"])
    return f"servers {nodes}, others {cpu['others_cores']:.2f}"


