"""Runs of jobs, sans I/O: the run record, its state table, retries, timeouts, AFTER.

`RunRecord` is one scheduled run (job, slot, shard) and its attempts. Its state moves only
through `TRANSITIONS` (`step`); an event the table lacks raises `RunStateError` naming the
run, the state and the event. (job, slot_ms, shard) is the run's identity: the leader fires
a slot by committing its record, so a new leader sees it and never fires it again.
`retry_run` gives the next attempt and when, `timeout_at_ms` when an attempt times out,
`dependents_to_fire` the AFTER jobs a finished run fires; `was_lost` and `note_late` record a
result that arrives for an attempt already declared lost. The job model, the limits and the
error texts are in scheduler/jobs.py; slot planning is in scheduler/planning.py.

Time enters only as arguments (epoch ms); nothing here reads a clock, a disk or a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from operator import attrgetter

from scheduler.jobs import (
    ERR_NO_RETRY,
    ERR_RECORD,
    ERR_RUN_EVENT,
    MAX_MESSAGE_LEN,
    MAX_RETRY_DELAY_S,
    Job,
    JobError,
    RunStateError,
    register_fields,
    shallow_dict,
    typed_fields,
)

FIRED, STARTED, SUCCEEDED = "fired", "started", "succeeded"
FAILED, TIMED_OUT, LOST = "failed", "timed_out", "lost"
KILLED, SKIPPED, RETRY_WAIT = "killed", "skipped", "retry_wait"
# a one-shot job's slot that passed its misfire deadline unfired, or a fired attempt that
# passed it waiting for a worker (event MISFIRE)
EXPIRED = "expired"
START, SUCCEED, FAIL, TIME_OUT = "start", "succeed", "fail", "time_out"
LOSE, KILL, RETRY, FIRE = "lose", "kill", "retry", "fire"
MISFIRE = "misfire"

# (state, event) -> next state. A run is born FIRED (`fire_run`), SKIPPED (`skipped_run`) or
# EXPIRED (`expired_run`).
TRANSITIONS: dict[tuple[str, str], str] = {
    (FIRED, START): STARTED,
    (FIRED, TIME_OUT): TIMED_OUT,  # not started within the timeout
    (FIRED, LOSE): LOST,  # its worker vanished before starting it
    (FIRED, KILL): KILLED,
    (FIRED, MISFIRE): EXPIRED,  # no worker took it within the job's misfire deadline
    (STARTED, SUCCEED): SUCCEEDED,
    (STARTED, FAIL): FAILED,
    (STARTED, TIME_OUT): TIMED_OUT,
    (STARTED, LOSE): LOST,
    (STARTED, KILL): KILLED,  # REPLACE, or removed by hand
    (FAILED, RETRY): RETRY_WAIT,
    (TIMED_OUT, RETRY): RETRY_WAIT,
    (LOST, RETRY): RETRY_WAIT,
    (RETRY_WAIT, FIRE): FIRED,  # the next attempt, at retry_at_ms
    (RETRY_WAIT, KILL): KILLED,
}
STATES = (FIRED, STARTED, SUCCEEDED, FAILED, TIMED_OUT, LOST, KILLED, SKIPPED, RETRY_WAIT,
          EXPIRED)
EVENTS = (START, SUCCEED, FAIL, TIME_OUT, LOSE, KILL, RETRY, FIRE, MISFIRE)
ACTIVE = frozenset({FIRED, STARTED, RETRY_WAIT})  # the slot is not done yet
RETRYABLE = frozenset({FAILED, TIMED_OUT, LOST})
_FINISH_EVENTS = frozenset({SUCCEED, FAIL, TIME_OUT, LOSE, KILL, MISFIRE})


@dataclass(frozen=True)
class RunRecord:
    """One run of a job's slot on one shard. Invariants: 1 <= attempt <= retries + 1;
    0 <= shard < shards; retry_at_ms is set exactly in RETRY_WAIT; started_ms/finished_ms
    belong to the current attempt."""

    job: str
    slot_ms: int
    state: str = FIRED
    attempt: int = 1
    shard: int = 0
    shards: int = 1
    fired_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    retry_at_ms: int | None = None
    worker: str = ""
    exit_code: int | None = None
    message: str = ""

    @property
    def key(self) -> tuple[str, int, int]:
        """The run's identity: one slot of one job on one shard fires once."""
        return (self.job, self.slot_ms, self.shard)

    @cached_property
    def run_id(self) -> str:  # cached: claims and the active-run index ask often
        return f"{self.job}@{self.slot_ms}/{self.shard}"

    def to_dict(self) -> dict[str, object]:
        return shallow_dict(self)

    def to_row(self) -> tuple[object, ...]:
        """The field values in RUN_FIELDS order (a compact form for snapshots)."""
        return _run_row(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RunRecord:
        record = cls(**typed_fields(cls, data, "run"))
        if record.state not in STATES:
            raise JobError(ERR_RECORD.format("run", f"state {record.state!r}"))
        if record.attempt < 1:
            raise JobError(ERR_RECORD.format("run", "attempt"))
        if not 0 <= record.shard < record.shards:
            raise JobError(ERR_RECORD.format("run", "shard"))
        if (record.state == RETRY_WAIT) != (record.retry_at_ms is not None):
            raise JobError(ERR_RECORD.format("run", "retry_at_ms"))
        return record


RUN_FIELDS = register_fields(RunRecord)  # the order of `RunRecord.to_row`
_run_row = attrgetter(*RUN_FIELDS)


def fire_run(job: Job, slot_ms: int, now_ms: int, shard: int = 0, shards: int = 1) -> RunRecord:
    """A new run of `slot_ms`, fired at `now_ms` (one per shard for a broadcast job)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return RunRecord(job.name, slot_ms, FIRED, 1, shard, shards, fired_ms=now_ms)


def skipped_run(job: Job, slot_ms: int, now_ms: int, message: str = "") -> RunRecord:
    """The record of a slot that did not fire (FORBID while a run was active)."""
    return RunRecord(
        job.name, slot_ms, SKIPPED, fired_ms=now_ms, finished_ms=now_ms, message=message
    )


def expired_run(job: Job, slot_ms: int, now_ms: int, message: str) -> RunRecord:
    """The record of a one-shot slot that was not fired: found past its misfire deadline
    (or its job was paused at its time). It never runs."""
    return RunRecord(
        job.name, slot_ms, EXPIRED, fired_ms=now_ms, finished_ms=now_ms,
        message=message[:MAX_MESSAGE_LEN],
    )


def step(
    record: RunRecord,
    event: str,
    at_ms: int,
    *,
    worker: str = "",
    exit_code: int | None = None,
    message: str = "",
    retry_at_ms: int | None = None,
) -> RunRecord:
    """The record after `event` at `at_ms`, by TRANSITIONS; RunStateError on a miss.

    start records the worker; the finishing events record exit code and message; retry
    needs `retry_at_ms` and counts the next attempt; fire starts that attempt afresh."""
    state = TRANSITIONS.get((record.state, event))
    if state is None:
        raise RunStateError(ERR_RUN_EVENT.format(record.run_id, event, record.state))
    if event == START:
        return replace(record, state=state, started_ms=at_ms, worker=worker or record.worker)
    if event in _FINISH_EVENTS:  # (KILL also ends a RETRY_WAIT: no retry is due any more)
        text = message[:MAX_MESSAGE_LEN]
        return replace(
            record, state=state, finished_ms=at_ms, exit_code=exit_code, message=text,
            retry_at_ms=None,
        )
    if event == RETRY:
        if retry_at_ms is None:
            raise ValueError("retry needs retry_at_ms")
        return replace(record, state=state, attempt=record.attempt + 1, retry_at_ms=retry_at_ms)
    return replace(  # FIRE: the next attempt starts afresh
        record, state=state, fired_ms=at_ms, started_ms=None, finished_ms=None,
        retry_at_ms=None, worker="", exit_code=None, message="",
    )


# -- late results ------------------------------------------------------------------------------

LOST_PREFIX = "lost: "  # the message of a LOST attempt begins so (scheduler/state_apply.py)
EXIT_ABANDONED = 256  # reported for a run its worker killed when fenced: no process exits so
FENCED_MESSAGE = "worker {} fenced itself (cut off from every node) and killed the attempt"
LATE_NOTE = "; late result of attempt {}: exit {} (ignored: the attempt was lost)"


def was_lost(record: RunRecord, attempt: int) -> bool:
    """Whether `record` shows attempt `attempt` declared lost: the record is that attempt,
    LOST; or its next attempt, whose message still tells how `attempt` ended (RETRY_WAIT
    keeps the LOST message, the retry's fire prefixes it with "attempt N: ")."""
    if record.attempt == attempt:
        return record.state == LOST
    if record.attempt != attempt + 1 or record.state not in ACTIVE:
        return False
    return record.message.startswith((LOST_PREFIX, f"attempt {attempt}: {LOST_PREFIX}"))


def note_late(record: RunRecord, attempt: int, exit_code: int) -> RunRecord:
    """`record` with a late result of `attempt` noted in its message; its state, attempt
    and exit code stay: a late result never overrides the retry."""
    note = LATE_NOTE.format(attempt, exit_code)
    if note in record.message:
        return record  # the same report again
    return replace(record, message=(record.message + note)[:MAX_MESSAGE_LEN])


# -- retries and timeouts ---------------------------------------------------------------------


def retry_delay_ms(job: Job, attempt: int) -> int:
    """Delay before retry k = `attempt` (the attempt that just ended, 1 for the first run):
    BACKOFF * 2^(k-1) seconds, capped at MAX_RETRY_DELAY_S. BACKOFF 10 -> 10 s, 20 s, 40 s."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay_s = job.backoff_s * 2 ** min(attempt - 1, 32)
    return min(delay_s, MAX_RETRY_DELAY_S) * 1000


def retry_run(job: Job, record: RunRecord) -> RunRecord:
    """The RETRY_WAIT record for the next attempt of a failed, timed-out or lost run, due
    `retry_delay_ms` after it finished. RunStateError if the state has no retry, or if the
    job's RETRIES are used up (attempt = retries + 1 was the last)."""
    if record.state not in RETRYABLE:
        raise RunStateError(ERR_RUN_EVENT.format(record.run_id, RETRY, record.state))
    if record.attempt > job.retries:
        raise RunStateError(ERR_NO_RETRY.format(record.run_id, record.attempt, job.retries + 1))
    finished = record.finished_ms if record.finished_ms is not None else record.fired_ms
    due = finished + retry_delay_ms(job, record.attempt)
    return step(record, RETRY, finished, retry_at_ms=due)


def timeout_at_ms(job: Job, record: RunRecord) -> int | None:
    """When an active attempt times out: TIMEOUT after it started (or was fired, if it has
    not started); None without a TIMEOUT or when the attempt is not running."""
    if job.timeout_s == 0 or record.state not in (FIRED, STARTED):
        return None
    began = record.started_ms if record.started_ms is not None else record.fired_ms
    return began + job.timeout_s * 1000



def dependents_to_fire(jobs: Iterable[Job], finished: RunRecord) -> list[Job]:
    """The unpaused jobs whose AFTER parent is `finished.job`, if that run succeeded.
    For a broadcast parent the caller asks once, when every shard has succeeded. A child
    run takes the parent's slot_ms, so each parent slot fires each child once."""
    if finished.state != SUCCEEDED:
        return []
    return [job for job in jobs if job.after == finished.job and not job.paused]
