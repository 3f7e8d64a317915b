"""Helpers of the scheduler drills (tests/test_scheduler_drills.py): a cluster started,
stopped and restarted with a shifted wall clock, run histories, and process-group checks.

The cluster itself is `tests.test_scheduler_daemon.Cluster` (three nodes on 127.0.0.2-4
and one worker process); these helpers only add the clock offset and the bookkeeping.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests import test_scheduler_daemon as daemon_tests
from tests.procs import stop_together
from tests.test_scheduler_daemon import Cluster, paused_ahead, wait_until

OFFSET_FLAG = "--clock-offset-ms"
FINAL = frozenset({"succeeded", "failed", "timed_out", "lost", "killed", "skipped", "expired"})
HISTORY_ALL = "1000"  # JOB.HISTORY count that returns every run the drills make
WORKER_TIMEOUT_MS = 3000  # the nodes' --worker-timeout-ms


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def set_offset(cluster: Cluster, offset_ms: int) -> None:
    """Make the nodes' next start read a wall clock shifted by `offset_ms`."""
    for node in cluster.nodes:
        argv = node.argv
        if OFFSET_FLAG in argv:
            at = argv.index(OFFSET_FLAG)
            del argv[at:at + 2]
        argv += [OFFSET_FLAG, str(offset_ms)]


def start_nodes(cluster: Cluster, offset_ms: int = 0) -> None:
    """Start (or restart) the three nodes with their wall clock shifted by `offset_ms`."""
    set_offset(cluster, offset_ms)
    cluster.start_nodes()


def stop_nodes(cluster: Cluster) -> None:
    """SIGTERM every node (once) and wait: a clean shutdown of the whole cluster."""
    stop_together(cluster.nodes)


@contextmanager
def running_cluster(tmp: Path, offset_ms: int = 0,
                    worker_timeout_ms: int = WORKER_TIMEOUT_MS,
                    worker_fence_ms: int | None = None) -> Iterator[Cluster]:
    """A fresh cluster and its worker, stopped (SIGTERM) on the way out. The worker
    heartbeats six times per `worker_timeout_ms`, so only a real silence loses its runs.
    `worker_fence_ms`, when given, is the worker's --worker-timeout-ms (how long it may hear
    from no node before it fences itself); by default, the worker's own default."""
    fence = [] if worker_fence_ms is None else ["--worker-timeout-ms", str(worker_fence_ms)]
    with daemon_tests.running_cluster(
            tmp, node_args=["--worker-timeout-ms", str(worker_timeout_ms),
                            OFFSET_FLAG, str(offset_ms)],
            worker_args=["--heartbeat-ms", str(worker_timeout_ms // 6), *fence]) as cluster:
        yield cluster


def history(cluster: Cluster, job: str) -> list[dict[str, Any]]:
    """Every run of `job`, oldest first."""
    return list(reversed(cluster.call("JOB.HISTORY", job, HISTORY_ALL)))


def fired_slots(cluster: Cluster, job: str) -> list[int]:
    """The slots of `job` that fired (skipped slots, runs its pause killed before they ran
    and runs no worker took within the misfire deadline left out), ascending."""
    return sorted(run["slot_ms"] for run in history(cluster, job)
                  if run["state"] not in ("skipped", "expired") and not paused_ahead(run))


def settled(cluster: Cluster, *jobs: str) -> bool:
    """Whether every run of `jobs` has reached a final state."""
    return all(run["state"] in FINAL for job in jobs for run in history(cluster, job))


def job_definition(cluster: Cluster, job: str) -> dict[str, Any]:
    """JOB.GET without the fields that move as time passes, or with which workers have
    polled since (status and waiting: a job waits until a worker that can take it polls)."""
    fields = dict(cluster.call("JOB.GET", job))
    for moving in ("handled_ms", "next_ms", "status", "waiting"):
        fields.pop(moving, None)
    return fields


def cron_at(ms: int) -> str:
    """A 6-field schedule (UTC) whose only slot each year is the whole second `ms`."""
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"


def append_slot(path: Path) -> str:
    """A command that appends its run's slot to `path`."""
    return f'echo "$SCHED_SCHEDULED_AT" >> {path}'


def gated(path: Path, gate: Path) -> str:
    """A command that appends its slot to `path`, then waits until `gate` exists."""
    return f"{append_slot(path)}; while [ ! -e {gate} ]; do sleep 0.1; done"


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group `pgid`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state ppid pgrp ...
            return True
    return False


def kill_groups(pgids: list[int]) -> None:
    """SIGKILL what is left of the process groups a drill started (cleanup only)."""
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_slot_reached(cluster: Cluster, job: str, slot_ms: int, what: str) -> None:
    """Wait until `job` has fired a slot at or after `slot_ms`."""
    wait_until(lambda: any(s >= slot_ms for s in fired_slots(cluster, job)), what, cluster)
