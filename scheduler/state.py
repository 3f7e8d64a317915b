"""The scheduler's replicated state machine, sans I/O: jobs, handled slots and run records.

Every change is a Raft log entry: a msgpack map with an "op" (`encode_*` build them) that
`SchedulerState.apply_entry` applies deterministically on every node. Time enters only as
values inside the entries (the leader's clock when it proposed them), so every replica
computes the same state.

The exactly-once rule: per job, `handled_ms` is the last slot the cluster has dealt with
(fired, skipped or dropped as misfired). The leader commits a "fire" entry for a job's
due slots BEFORE dispatching any of them; applying it fires only the slots strictly after
`handled_ms` and then advances `handled_ms`. A fire entry for a slot already handled is a
no-op, so two leaders (an old one whose entry commits late, a new one computing the same
slots) can never fire one slot twice. A new leader computes the due slots with
`jobs.plan_slots` from `handled_ms`, which applies the job's MISFIRE policy to the gap.

Timeouts and retries are entries too: the leader proposes "expire" for an attempt past its
TIMEOUT and "retry" for a RETRY_WAIT run whose time has come (`due_entries`); both name the
attempt and are no-ops once it moved on. Each attempt is claimed and executed once.

Dispatch is a second committed step: a worker's poll becomes a "claim" entry that moves
FIRED runs to STARTED with the worker's id. A run can be claimed once, so a run delivered
by two leaders still starts once; and a leader without quorum cannot commit a claim, so it
cannot dispatch. Results come back as "done" entries (STARTED -> SUCCEEDED/FAILED); a done
for a run that is not STARTED is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import msgpack

from scheduler.jobs import (
    ACTIVE,
    FAIL,
    FIRE,
    FIRED,
    KILL,
    LOSE,
    MAX_MESSAGE_LEN,
    RETRY_WAIT,
    RETRYABLE,
    START,
    STARTED,
    SUCCEED,
    TARGET_ALL,
    TARGET_ANY,
    TIME_OUT,
    Job,
    JobError,
    RunRecord,
    check_after,
    decide_overlap,
    dependents_to_fire,
    fire_run,
    retry_run,
    skipped_run,
    step,
    timeout_at_ms,
)

OP_ADD, OP_DEL, OP_PAUSE, OP_RESUME = "add", "del", "pause", "resume"
OP_FIRE, OP_RUN, OP_CLAIM, OP_DONE = "fire", "run", "claim", "done"
OP_EXPIRE, OP_RETRY = "expire", "retry"
OP_BEAT, OP_LOSE, OP_MEMBER = "beat", "lose", "member"
MAX_CLAIM = 16  # runs one claim hands to one worker

ERR_EXISTS = "ERR job '{}' already exists"
ERR_NO_JOB = "ERR no such job '{}'"
ERR_HAS_DEPENDENTS = "ERR job '{}' is the AFTER parent of '{}'"
ERR_BAD_ENTRY = "ERR bad log entry: {}"


class SchedulerState:
    """All replicated state. Invariants: `handled[name]` only grows while the job exists;
    `runs[name]` holds at most `jobs[name].history` records, oldest first, each keyed by
    its run id; a run id appears in at most one job's map."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.handled: dict[str, int] = {}  # job -> last slot handled (fired/skipped/missed)
        self.runs: dict[str, dict[str, RunRecord]] = {}
        self.missed: dict[str, int] = {}  # job -> slots dropped by the misfire policy
        self.workers: dict[str, int] = {}  # worker -> when the cluster last heard it (ms)
        self.clients: dict[int, str] = {}  # Raft node id -> its RESP address (CLUSTER.ADD)
        self.applied = 0  # index of the last applied entry

    # -- applying entries ----------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """The driver's apply hook: one result per entry (see `apply_entry`)."""
        out: list[Any] = []
        for index, data in entries:
            out.append(self.apply_entry(data))
            self.applied = index
        return out

    def apply_entry(self, data: bytes) -> Any:
        """Apply one encoded entry. Returns None, an error text (str starting with "ERR")
        the client should see, or for fire/run/claim the list of run dicts that moved."""
        try:
            entry = msgpack.unpackb(data)
            op = entry["op"]
            handler = _HANDLERS[op]
        except Exception as exc:  # a foreign entry must not stop the replica
            return ERR_BAD_ENTRY.format(type(exc).__name__)
        try:
            return handler(self, entry)
        except JobError as exc:
            return exc.message

    def _add(self, entry: dict[str, Any]) -> Any:
        job = Job.from_dict(entry["job"])
        if job.name in self.jobs:
            return ERR_EXISTS.format(job.name)
        check_after(self.jobs, job)
        self.jobs[job.name] = job
        self.handled[job.name] = job.created_ms
        self.runs[job.name] = {}
        self.missed[job.name] = 0
        return None

    def _del(self, entry: dict[str, Any]) -> Any:
        name = entry["name"]
        if name not in self.jobs:
            return ERR_NO_JOB.format(name)
        for other in self.jobs.values():
            if other.after == name:
                return ERR_HAS_DEPENDENTS.format(name, other.name)
        for table in (self.jobs, self.handled, self.runs, self.missed):
            table.pop(name, None)
        return None

    def _pause(self, entry: dict[str, Any]) -> Any:
        return self._set_paused(entry["name"], True, entry.get("at_ms", 0))

    def _resume(self, entry: dict[str, Any]) -> Any:
        return self._set_paused(entry["name"], False, entry.get("at_ms", 0))

    def _set_paused(self, name: str, paused: bool, at_ms: int) -> Any:
        job = self.jobs.get(name)
        if job is None:
            return ERR_NO_JOB.format(name)
        self.jobs[name] = replace(job, paused=paused)
        if not paused:  # slots that fell due while paused are not caught up
            self.handled[name] = max(self.handled[name], at_ms)
        return None

    def _fire(self, entry: dict[str, Any]) -> Any:
        """Fire `slots` (ascending) of a job, those after its handled slot; then mark
        everything up to `handled_ms` handled. Returns the runs fired."""
        name, now_ms = entry["job"], entry["now_ms"]
        job = self.jobs.get(name)
        if job is None:
            return []
        last = self.handled[name]
        fired: list[dict[str, Any]] = []
        for slot in entry["slots"]:
            if slot <= last:
                continue  # already handled: the exactly-once rule
            fired.extend(self._fire_slot(job, slot, now_ms))
            last = slot
        if entry["handled_ms"] > self.handled[name]:
            self.missed[name] = self.missed.get(name, 0) + entry.get("missed", 0)
            self.handled[name] = max(last, entry["handled_ms"])
        else:
            self.handled[name] = last
        return fired

    def _fire_slot(self, job: Job, slot: int, now_ms: int) -> list[dict[str, Any]]:
        runs = self.runs[job.name]
        if fire_run(job, slot, now_ms).run_id in runs:
            return []  # this slot of this job fired already
        decision = decide_overlap(job, runs.values())
        for active in decision.kill:
            runs[active.run_id] = step(active, KILL, now_ms, message="replaced")
        if decision.skip:
            self._record(job, skipped_run(job, slot, now_ms, "an earlier run is active"))
            return []
        record = fire_run(job, slot, now_ms)
        if record.run_id in runs:
            return []
        self._record(job, record)
        return [record.to_dict()]

    def _run(self, entry: dict[str, Any]) -> Any:
        """JOB.RUN: fire one run now, outside the schedule (slot = the request time)."""
        job = self.jobs.get(entry["job"])
        if job is None:
            return ERR_NO_JOB.format(entry["job"])
        record = fire_run(job, entry["now_ms"], entry["now_ms"])
        if record.run_id in self.runs[job.name]:
            return []
        self._record(job, record)
        return [record.to_dict()]

    def _record(self, job: Job, record: RunRecord) -> None:
        runs = self.runs[job.name]
        runs[record.run_id] = record
        while len(runs) > job.history:
            del runs[next(iter(runs))]  # the oldest record goes first

    def _claim(self, entry: dict[str, Any]) -> Any:
        """Hand up to `max` FIRED runs matching the worker's tags to `worker`; with
        `resync`, also the runs this worker already holds STARTED (after a lost reply they
        are delivered again; the worker runs a run id once)."""
        worker, tags, now_ms = entry["worker"], set(entry.get("tags", ())), entry["now_ms"]
        resync = bool(entry.get("resync", False))
        self._heard(worker, now_ms)
        limit = min(int(entry.get("max", MAX_CLAIM)), MAX_CLAIM)
        out: list[dict[str, Any]] = []
        for name, runs in self.runs.items():
            job = self.jobs[name]
            if not _matches(job, tags):
                continue
            for run_id, record in runs.items():
                if len(out) >= limit:
                    return out
                if record.state == FIRED:
                    record = step(record, START, now_ms, worker=worker)
                    runs[run_id] = record
                    out.append(_dispatch(job, record))
                elif resync and record.state == STARTED and record.worker == worker:
                    out.append(_dispatch(job, record))
        return out

    def _done(self, entry: dict[str, Any]) -> Any:
        name, run_id = entry["job"], entry["run_id"]
        record = self.runs.get(name, {}).get(run_id)
        if record is None or record.state != STARTED:
            return None  # unknown, or reported already: a repeated report is a no-op
        if entry.get("attempt") not in (None, record.attempt):
            return None  # the report of an attempt that timed out earlier
        event = SUCCEED if entry["exit_code"] == 0 else FAIL
        record = step(record, event, entry["now_ms"], exit_code=entry["exit_code"],
                      message=entry.get("message", ""))
        self.runs[name][run_id] = self._maybe_retry(record)
        return self._fire_dependents(record, entry["now_ms"]) or None

    def _fire_dependents(self, finished: RunRecord, now_ms: int) -> list[dict[str, Any]]:
        """AFTER jobs of a succeeded run fire with the parent's slot, once per slot."""
        fired: list[dict[str, Any]] = []
        for child in dependents_to_fire(self.jobs.values(), finished):
            fired.extend(self._fire_slot(child, finished.slot_ms, now_ms))
        return fired

    def _expire(self, entry: dict[str, Any]) -> Any:
        """An attempt ran past its TIMEOUT (checked against the entry's time): TIMED_OUT,
        then RETRY_WAIT if retries are left. No-op unless still due."""
        record, job = self._find(entry)
        if record is None or job is None:
            return None
        due = timeout_at_ms(job, record)
        if due is None or due > entry["now_ms"]:
            return None
        record = step(record, TIME_OUT, entry["now_ms"], message="timed out")
        self.runs[job.name][record.run_id] = self._maybe_retry(record)
        return None

    def _retry(self, entry: dict[str, Any]) -> Any:
        """A RETRY_WAIT run whose retry time has come fires its next attempt."""
        record, job = self._find(entry)
        if record is None or job is None or record.state != RETRY_WAIT:
            return []
        if record.retry_at_ms is None or record.retry_at_ms > entry["now_ms"]:
            return []
        ended = f"attempt {record.attempt - 1}: {record.message}" if record.message else ""
        record = replace(step(record, FIRE, entry["now_ms"]), message=ended[:MAX_MESSAGE_LEN])
        self.runs[job.name][record.run_id] = record
        return [record.to_dict()]

    def _heard(self, worker: str, now_ms: int) -> None:
        if worker:
            self.workers[worker] = max(self.workers.get(worker, 0), now_ms)

    def _beat(self, entry: dict[str, Any]) -> Any:
        """WORKER.HEARTBEAT: the worker is alive at `now_ms`."""
        self._heard(entry["worker"], entry["now_ms"])
        return None

    def last_heard(self, record: RunRecord) -> int:
        """When the worker holding a STARTED run was last heard of (at least its start)."""
        return max(self.workers.get(record.worker, 0), record.started_ms or 0)

    def _lose(self, entry: dict[str, Any]) -> Any:
        """A STARTED attempt whose worker has been silent for `timeout_ms` (checked against
        the entry's time) is LOST, then RETRY_WAIT if retries are left. No-op unless due."""
        record, job = self._find(entry)
        if record is None or job is None or record.state != STARTED:
            return None
        silent_ms = entry["now_ms"] - self.last_heard(record)
        if silent_ms < entry["timeout_ms"]:
            return None
        message = f"lost: worker {record.worker} silent for {silent_ms} ms"
        record = step(record, LOSE, entry["now_ms"], message=message)
        self.runs[job.name][record.run_id] = self._maybe_retry(record)
        return None

    def _member(self, entry: dict[str, Any]) -> Any:
        """The RESP address of Raft node `id` ("" forgets it)."""
        if entry["addr"]:
            self.clients[int(entry["id"])] = entry["addr"]
        else:
            self.clients.pop(int(entry["id"]), None)
        return None

    def _find(self, entry: dict[str, Any]) -> tuple[RunRecord | None, Job | None]:
        job = self.jobs.get(entry["job"])
        record = self.runs.get(entry["job"], {}).get(entry["run_id"])
        if record is None or record.attempt != entry["attempt"]:
            return None, job
        return record, job

    def _maybe_retry(self, record: RunRecord) -> RunRecord:
        job = self.jobs[record.job]
        if record.state not in RETRYABLE or record.attempt > job.retries:
            return record
        return retry_run(job, record)

    def due_entries(self, now_ms: int, worker_timeout_ms: int | None = None) -> list[bytes]:
        """The expire, lose and retry entries the leader should propose at `now_ms`
        (lose: a STARTED run whose worker was silent for `worker_timeout_ms`)."""
        out: list[bytes] = []
        for name, runs in self.runs.items():
            job = self.jobs[name]
            for record in runs.values():
                due = timeout_at_ms(job, record)
                if due is not None and due <= now_ms:
                    out.append(encode_attempt(OP_EXPIRE, record, now_ms))
                elif (worker_timeout_ms is not None and record.state == STARTED
                      and self.last_heard(record) + worker_timeout_ms <= now_ms):
                    out.append(encode_lose(record, now_ms, worker_timeout_ms))
                elif record.state == RETRY_WAIT and (record.retry_at_ms or 0) <= now_ms:
                    out.append(encode_attempt(OP_RETRY, record, now_ms))
        return out

    # -- queries ---------------------------------------------------------------------------

    def pending(self, tags: Iterable[str] = ()) -> bool:
        """Whether a FIRED run waits for a worker with `tags`."""
        wanted = set(tags)
        return any(
            record.state == FIRED and _matches(self.jobs[name], wanted)
            for name, runs in self.runs.items()
            for record in runs.values()
        )

    def history(self, name: str, count: int) -> list[RunRecord]:
        """The latest `count` runs of a job, newest first."""
        return list(reversed(list(self.runs.get(name, {}).values())))[:count]

    def active_runs(self) -> int:
        return sum(r.state in ACTIVE for runs in self.runs.values() for r in runs.values())

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (the driver's snapshot hook)."""
        return msgpack.packb({
            "jobs": [job.to_dict() for job in self.jobs.values()],
            "handled": self.handled,
            "missed": self.missed,
            "runs": {n: [r.to_dict() for r in runs.values()] for n, runs in self.runs.items()},
            "workers": self.workers,
            "clients": {str(k): v for k, v in self.clients.items()},  # msgpack: str keys
        })

    def restore(self, blob: bytes) -> None:
        """Replace the state with a `snapshot()` blob."""
        data = msgpack.unpackb(blob)
        self.jobs = {}
        for raw in data["jobs"]:
            job = Job.from_dict(raw)
            self.jobs[job.name] = job
        self.handled = dict(data["handled"])
        self.missed = dict(data["missed"])
        self.workers = dict(data.get("workers", {}))
        self.clients = {int(k): v for k, v in data.get("clients", {}).items()}
        self.runs = {}
        for name, records in data["runs"].items():
            runs = (RunRecord.from_dict(r) for r in records)
            self.runs[name] = {r.run_id: r for r in runs}


_HANDLERS = {
    OP_ADD: SchedulerState._add,
    OP_DEL: SchedulerState._del,
    OP_PAUSE: SchedulerState._pause,
    OP_RESUME: SchedulerState._resume,
    OP_FIRE: SchedulerState._fire,
    OP_RUN: SchedulerState._run,
    OP_CLAIM: SchedulerState._claim,
    OP_DONE: SchedulerState._done,
    OP_EXPIRE: SchedulerState._expire,
    OP_RETRY: SchedulerState._retry,
    OP_BEAT: SchedulerState._beat,
    OP_LOSE: SchedulerState._lose,
    OP_MEMBER: SchedulerState._member,
}


def _matches(job: Job, tags: set[str]) -> bool:
    # TARGET ALL (broadcast) is served as one run to any worker in this first version.
    return job.target in (TARGET_ANY, TARGET_ALL) or job.target in tags


def _dispatch(job: Job, record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id, "job": job.name, "command": job.command,
        "slot_ms": record.slot_ms, "attempt": record.attempt, "timeout_s": job.timeout_s,
    }


# -- entry builders (the leader's side) -------------------------------------------------------


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(fields)


def encode_add(job: Job) -> bytes:
    return _pack(op=OP_ADD, job=job.to_dict())


def encode_name(op: str, name: str, at_ms: int = 0) -> bytes:
    """OP_DEL, OP_PAUSE or OP_RESUME of job `name`."""
    return _pack(op=op, name=name, at_ms=at_ms)


def encode_fire(name: str, slots: Sequence[int], handled_ms: int, now_ms: int,
                missed: int = 0) -> bytes:
    return _pack(op=OP_FIRE, job=name, slots=list(slots), handled_ms=handled_ms,
                 now_ms=now_ms, missed=missed)


def encode_run(name: str, now_ms: int) -> bytes:
    return _pack(op=OP_RUN, job=name, now_ms=now_ms)


def encode_claim(worker: str, tags: Sequence[str], now_ms: int, limit: int = MAX_CLAIM,
                 resync: bool = False) -> bytes:
    return _pack(op=OP_CLAIM, worker=worker, tags=list(tags), now_ms=now_ms, max=limit,
                 resync=resync)


def encode_done(name: str, run_id: str, exit_code: int, message: str, now_ms: int,
                attempt: int | None = None) -> bytes:
    return _pack(op=OP_DONE, job=name, run_id=run_id, exit_code=exit_code, message=message,
                 now_ms=now_ms, attempt=attempt)


def encode_attempt(op: str, record: RunRecord, now_ms: int) -> bytes:
    """OP_EXPIRE or OP_RETRY of the current attempt of `record`."""
    return _pack(op=op, job=record.job, run_id=record.run_id, attempt=record.attempt,
                 now_ms=now_ms)


def encode_lose(record: RunRecord, now_ms: int, timeout_ms: int) -> bytes:
    """OP_LOSE of the current attempt of `record` (its worker silent for `timeout_ms`)."""
    return _pack(op=OP_LOSE, job=record.job, run_id=record.run_id, attempt=record.attempt,
                 now_ms=now_ms, timeout_ms=timeout_ms)


def encode_beat(worker: str, now_ms: int) -> bytes:
    return _pack(op=OP_BEAT, worker=worker, now_ms=now_ms)


def encode_member(node_id: int, address: str) -> bytes:
    return _pack(op=OP_MEMBER, id=node_id, addr=address)
