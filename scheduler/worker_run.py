"""A run as a worker receives it, and the worker's pure helpers (no I/O but the shell
executor's command): when a run fired ahead starts (`start_delay`), how long a cut-off worker
waits before it fences itself (`fence_delay_s`), a failure's message, and reply decoding.
scheduler/worker.py re-exports each name, its public home.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.shell import run_command

FENCE_MARGIN_FRACTION = 0.25  # of the worker timeout: the fence falls this much before it
FENCE_MARGIN_MIN_S = 0.5  # and at least this much before it
ERR_FENCE = ("--worker-timeout-ms {} leaves no fence margin above --heartbeat-ms {}: "
             "the worker would fence itself between heartbeats")


@dataclass(frozen=True)
class Run:
    """One attempt of a run as a worker receives it. `scheduled_at_ms` is the slot (epoch
    ms); `shard` of `shards` is this worker's part of a TARGET ALL broadcast (0 of 1 for
    any other job); `command` is the job's command (the handler name for an embedded
    worker); `timeout_s` 0 means none. `start_in_ms`: how long after its claim the run
    starts, for a run the cluster fired ahead of its slot (see `start_delay`)."""

    job: str
    scheduled_at_ms: int
    run_id: str
    attempt: int
    shard: int = 0
    shards: int = 1
    command: str = ""
    timeout_s: int = 0
    start_in_ms: int = 0

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Run:
        """A WORKER.POLL reply item: run_id job command slot_ms attempt timeout_s
        [shard shards [start_in_ms]] (older clusters send fewer fields)."""
        shard, shards = (int(raw[6]), int(raw[7])) if len(raw) >= 8 else (0, 1)
        return cls(job=_str(raw[1]), scheduled_at_ms=int(raw[3]), run_id=_str(raw[0]),
                   attempt=int(raw[4]), shard=shard, shards=shards, command=_str(raw[2]),
                   timeout_s=int(raw[5]), start_in_ms=int(raw[8]) if len(raw) >= 9 else 0)

    def environment(self) -> dict[str, str]:
        """The SCHED_* variables a shell command sees."""
        return {"SCHED_JOB": self.job, "SCHED_SCHEDULED_AT": str(self.scheduled_at_ms),
                "SCHED_RUN_ID": self.run_id, "SCHED_ATTEMPT": str(self.attempt),
                "SCHED_SHARD": str(self.shard), "SCHED_SHARDS": str(self.shards)}


Executor = Callable[[Run], Awaitable[tuple[int, bytes]]]  # -> (exit code, output tail)


async def shell_executor(run: Run) -> tuple[int, bytes]:
    """Run the job's command with /bin/sh, the SCHED_* variables added to the environment.
    The worker cancels it on TIMEOUT, which kills its process group."""
    return await run_command(run.command, {**os.environ, **run.environment()}, 0)


def fence_delay_s(worker_timeout_ms: int, heartbeat_s: float) -> float:
    """How long a worker cut off from every node waits before it kills its runs: the
    cluster's worker timeout less a margin (FENCE_MARGIN_FRACTION of it, at least
    FENCE_MARGIN_MIN_S). ValueError if that leaves no more than one heartbeat interval,
    where a worker that is merely between heartbeats would fence itself."""
    timeout_s = worker_timeout_ms / 1000
    delay = timeout_s - max(timeout_s * FENCE_MARGIN_FRACTION, FENCE_MARGIN_MIN_S)
    if delay <= heartbeat_s:
        raise ValueError(ERR_FENCE.format(worker_timeout_ms, round(heartbeat_s * 1000)))
    return delay


def start_delay(run: Run, now_s: float) -> float:
    """Seconds from now (wall `now_s`) to a run's start: at its slot by this host's clock,
    but never later than `start_in_ms` after its receipt. A run the cluster fired ahead
    waits for its slot; if this clock lags the leader's, the wait is still at most what
    the leader meant (the skew, not the wait, is what a cron across hosts cannot fix)."""
    if run.start_in_ms <= 0:
        return 0.0
    return max(0.0, min(run.start_in_ms / 1000, run.scheduled_at_ms / 1000 - now_s))


def failure_message(exc: BaseException) -> str:
    """The last line of `exc`'s traceback, e.g. "ValueError: no such account"."""
    return traceback.format_exception_only(exc)[-1].strip()


def _as_dict(reply: Any) -> dict[str, Any]:
    """A map reply (RESP3 map, or RESP2 flat [key, value, ...]) with str keys and values
    (other values as they are)."""
    items = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2],
                                                                strict=True)
    return {_str(k): (_str(v) if isinstance(v, bytes) else v) for k, v in items}


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
