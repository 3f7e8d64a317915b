"""The scheduler state's queries and run indexes: what the leader and the server ask it.

`QuerySide` is a base class of `scheduler.state.SchedulerState` (through
`scheduler.state_apply.SchedulerEntryHandlers`); it reads the replicated state and never changes it,
except to drop stale keys from the run indexes (`_records`). It answers which runs are
active or waiting (`active_records`, `pending`), a job's history, which workers are live
and which of their attempts were killed, and which expire/lose/retry entries are due
(`due_entries`), and each job's status: whether it waits for a worker that can take its
runs (scheduler/routing.py), or, one-shot, is finished. The helpers at the bottom
(`_claimable`, `_held`) are shared with the apply handlers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from scheduler.entries import OP_EXPIRE, OP_MISFIRE, OP_RETRY, encode_attempt, encode_lose
from scheduler.fired_index import FiredIndex
from scheduler.jobs import REPLACE, Job
from scheduler.planning import expired
from scheduler.routing import Advert, can_take, waiting_reason
from scheduler.runs import (
    ACTIVE,
    FIRED,
    KILLED,
    RETRY_WAIT,
    STARTED,
    RunRecord,
    timeout_at_ms,
)

KILL_NOTICE_MS = 60_000  # a killed attempt is named to its worker's heartbeats this long
# a job's status (JOB.GET, JOB.LIST WITHSTATUS): fires on its schedule; paused; holds its
# slots because no live worker can take its runs; a one-shot job whose run is still going,
# or is over (succeeded, failed for good, or expired)
SCHEDULED, PAUSED, WAITING, RUNNING, FINISHED = (
    "scheduled", "paused", "waiting", "running", "finished")


class QuerySide:
    """Read-side behaviour; the state it reads is initialised by SchedulerState.__init__."""

    jobs: dict[str, Job]
    runs: dict[str, dict[str, RunRecord]]
    workers: dict[str, int]
    handled: dict[str, int]
    adverts: dict[str, Advert]
    handler_names: frozenset[str]
    _active: set[tuple[str, str]]
    _fired: FiredIndex
    _children: dict[str, list[str]]

    def last_heard(self, record: RunRecord) -> int:
        """When the worker holding a run (STARTED, or FIRED bound to it) was last heard of
        (at least when the attempt started or was fired)."""
        began = record.started_ms if record.started_ms is not None else record.fired_ms
        return max(self.workers.get(record.worker, 0), began)

    def killed_attempts(self, worker: str, now_ms: int) -> list[str]:
        """"run_id#attempt" of the attempts `worker` started that the cluster killed (a
        CONCURRENCY REPLACE) within KILL_NOTICE_MS before `now_ms`: the worker's heartbeat
        reply, so it kills their process groups. Only REPLACE jobs kill runs, so only their
        histories are read."""
        since = now_ms - KILL_NOTICE_MS
        return [f"{r.run_id}#{r.attempt}" for name, job in self.jobs.items()
                if job.concurrency == REPLACE for r in self.runs[name].values()
                if r.state == KILLED and r.worker == worker and r.started_ms is not None
                and (r.finished_ms or 0) >= since]

    def live_workers(self, now_ms: int, timeout_ms: int, job: Job | None = None) -> list[str]:
        """The workers heard within `timeout_ms` before `now_ms`, sorted: a broadcast's
        worker list (the others' runs are lost by the same rule, see `due_entries`). With
        `job`, only those that can take its runs (a worker with no advert yet counts)."""
        live = (w for w, heard in self.workers.items() if heard + timeout_ms > now_ms)
        if job is None:
            return sorted(live)
        return sorted(w for w in live if w not in self.adverts
                      or can_take(job, self.adverts[w], self.handler_names))

    def live_adverts(self, now_ms: int, timeout_ms: int) -> list[Advert]:
        """The adverts of the workers heard within `timeout_ms` before `now_ms`."""
        return [self.adverts[w] for w, heard in self.workers.items()
                if heard + timeout_ms > now_ms and w in self.adverts]

    def waiting(self, job: Job, adverts: list[Advert]) -> str | None:
        """Why no worker of `adverts` (`live_adverts`) can take `job`'s runs (None: one
        can; scheduler/routing.py)."""
        return waiting_reason(job, adverts, self.handler_names)

    def job_status(self, name: str, now_ms: int, timeout_ms: int) -> tuple[str, str]:
        """(status, why it waits or "") of job `name` at `now_ms` (see WAITING...)."""
        job = self.jobs[name]
        if job.paused:
            return PAUSED, ""
        once = job.one_shot_ms()
        if once is not None and self.handled[name] >= once:
            active = any(r.state in ACTIVE for r in self.runs[name].values())
            return (RUNNING if active else FINISHED), ""
        reason = self.waiting(job, self.live_adverts(now_ms, timeout_ms))
        return (WAITING, reason) if reason else (SCHEDULED, "")

    def has_broadcast_dependent(self, name: str) -> bool:
        """Whether a TARGET ALL job runs AFTER `name` (its done entries need workers)."""
        return any(self.jobs[child].broadcast for child in self._children.get(name, ()))

    def due_entries(self, now_ms: int, worker_timeout_ms: int | None = None,
                    silent: frozenset[str] | None = None) -> list[bytes]:
        """The expire, misfire, lose and retry entries the leader should propose at
        `now_ms` (misfire: `misfired`; lose: a STARTED run whose worker was silent for
        `worker_timeout_ms`, and is one of `silent` if given: the proposer's own view)."""
        out: list[bytes] = []
        # (the walk runs every firing turn over thousands of runs fired ahead: each check is
        # made only where it can be due, and a worker heard within the timeout loses nothing)
        heard = {} if worker_timeout_ms is None else {
            w: t for w, t in self.workers.items() if t + worker_timeout_ms > now_ms}
        for record in self.active_records():
            job = self.jobs[record.job]
            state = record.state
            due = timeout_at_ms(job, record) if job.timeout_s else None
            if due is not None and due <= now_ms:
                out.append(encode_attempt(OP_EXPIRE, record, now_ms))
            elif state == FIRED and not record.worker and misfired(job, record, now_ms):
                out.append(encode_attempt(OP_MISFIRE, record, now_ms))
            elif state == RETRY_WAIT:
                if (record.retry_at_ms or 0) <= now_ms:
                    out.append(encode_attempt(OP_RETRY, record, now_ms))
            elif (worker_timeout_ms is not None and record.worker not in heard
                  and (silent is None or record.worker in silent
                       or record.worker not in self.workers)
                  and _held(record) and self.last_heard(record) + worker_timeout_ms <= now_ms):
                out.append(encode_lose(record, now_ms, worker_timeout_ms))
        return out

    def active_records(self) -> Iterator[RunRecord]:
        """The ACTIVE runs of every job, in no particular order."""
        return self._records(self._active, ACTIVE)

    def _records(self, index: set[tuple[str, str]],
                 states: Iterable[str]) -> Iterator[RunRecord]:
        """The runs of `index` in one of `states`; drops the others from the index."""
        for key in list(index):
            record = self.runs.get(key[0], {}).get(key[1])
            if record is None or record.state not in states:
                index.discard(key)
            else:
                yield record

    def disowned(self, worker: str, holding: Iterable[str], cut_ms: int) -> list[RunRecord]:
        """The attempts STARTED by `worker` (their start, or slot if fired ahead, at or
        before `cut_ms`) whose "run_id#attempt" `holding` lacks: runs it does not know."""
        held = frozenset(holding)
        return [r for r in self.active_records() if r.state == STARTED and r.worker == worker
                and r.started_ms is not None and r.started_ms <= cut_ms
                and f"{r.run_id}#{r.attempt}" not in held]

    def pending(self, tags: Iterable[str] = (), worker: str = "",
                handlers: Iterable[str] | None = None) -> bool:
        """Whether a FIRED run waits for `worker` (any worker if "") advertising `tags`
        and, for an embedded worker, `handlers` (scheduler/routing.py)."""
        advert = Advert(frozenset(tags), None if handlers is None else frozenset(handlers))
        return any(
            (_claimable(record, worker) if worker else record.state == FIRED)
            and can_take(self.jobs[record.job], advert, self.handler_names)
            for record in self._fired.records(self.runs)
        )

    def history(self, name: str, count: int) -> list[RunRecord]:
        """The latest `count` runs of a job, newest first."""
        return list(reversed(list(self.runs.get(name, {}).values())))[:count]

    def active_runs(self) -> int:
        return sum(1 for _ in self.active_records())


def misfired(job: Job, record: RunRecord, now_ms: int) -> bool:
    """Whether a FIRED attempt open to any worker, fired outside the schedule (a retry, a
    JOB.RUN, an AFTER child), has waited for one past its job's misfire deadline
    (`planning.expired`), counted from when it fired. It is then recorded EXPIRED and never
    runs. A scheduled slot's first attempt is left alone: the firing loop fires it only
    once a live worker can take it (scheduler/routing.py), and its deadline applied then."""
    if record.state != FIRED or record.worker:
        return False
    if record.attempt == 1 and record.slot_ms > record.fired_ms:
        return False  # a scheduled slot fired ahead (the common case: no schedule read)
    if not expired(job, max(record.slot_ms, record.fired_ms), now_ms):
        return False
    return record.attempt > 1 or job.next_fire(record.slot_ms - 1) != record.slot_ms


def _claimable(record: RunRecord, worker: str) -> bool:
    """A FIRED run open to any worker, or bound to this one (a broadcast shard)."""
    return record.state == FIRED and record.worker in ("", worker)


def _held(record: RunRecord) -> bool:
    """An attempt that waits on one worker: started by it, or fired bound to it."""
    return record.state == STARTED or (record.state == FIRED and record.worker != "")


def ordered_runs(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One order every replica agrees on (fired time, then run id), whatever the order of
    the index sets: so a claim hands out the same runs on each."""
    return sorted(records, key=lambda r: (r.fired_ms, r.run_id))


def dispatch_item(job: Job, record: RunRecord, now_ms: int) -> dict[str, Any]:
    """A claimed run as its worker gets it. start_in_ms: how long after the claim (by the
    proposer's clock) the worker starts it: its slot, for a run fired ahead."""
    return {
        "run_id": record.run_id, "job": job.name, "command": job.command,
        "slot_ms": record.slot_ms, "attempt": record.attempt, "timeout_s": job.timeout_s,
        "shard": record.shard, "shards": record.shards,
        "start_in_ms": max(0, (record.started_ms or now_ms) - now_ms),
    }
