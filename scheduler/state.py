"""The scheduler's replicated state machine, sans I/O: jobs, handled slots and run records.

Every change is a Raft log entry: a msgpack map with an "op" (scheduler.entries builds them)
that `SchedulerState.apply_entry` applies deterministically on every node. Time enters only
as values inside the entries (the leader's clock when it proposed them), so every replica
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

TARGET ALL (broadcast): a slot fires one run per live worker, shard i of n, bound to its
worker. Which workers are live depends on the clock and on the worker timeout, so the entry
that fires (fire, run, or the done that fires AFTER children) carries the worker list, as
the proposer saw it (`live_workers`: heard within the worker timeout), sorted; apply binds
shard i to `workers[i]`. A bound run is claimed by its worker only, and is lost when that
worker goes silent for the worker timeout, claimed or not. Its retries (after a loss, a
failure or a timeout) are open to any worker, as a non-broadcast run's are: the shard's
part of the work still gets done when its worker is gone. With no live worker the slot fires
one run, shard 0 of 1, open to any worker. An AFTER child of a broadcast parent fires when
every shard of the parent's slot has succeeded.

Dispatch is a second committed step: a worker's poll becomes a "claim" that moves FIRED
runs to STARTED with the worker's id, an entry of its own or one of the claims a
"fire_many" entry applies after its fires (the polls waiting at the leader). A run can be
claimed once, so a run delivered by two leaders still starts once; and a leader without
quorum cannot commit a claim, so it cannot dispatch. Results come back as "done" entries
(STARTED -> SUCCEEDED/FAILED); a done for a run that is not STARTED is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import msgpack

from scheduler.entries import (
    DEFAULT_CLAIM,
    MAX_CLAIM,
    OP_ADD,
    OP_BEAT,
    OP_CLAIM,
    OP_DEL,
    OP_DONE,
    OP_DONE_MANY,
    OP_EXPIRE,
    OP_FIRE,
    OP_FIRE_MANY,
    OP_LOSE,
    OP_MEMBER,
    OP_PAUSE,
    OP_RESUME,
    OP_RETRY,
    OP_RUN,
    Result,
    claim_fields,
    encode_add,
    encode_attempt,
    encode_beat,
    encode_claim,
    encode_done,
    encode_done_many,
    encode_fire,
    encode_fire_many,
    encode_lose,
    encode_member,
    encode_name,
    encode_run,
    fire_fields,
)
from scheduler.jobs import (
    ACTIVE,
    FAIL,
    FIRE,
    FIRED,
    KILL,
    KILLED,
    LOSE,
    MAX_MESSAGE_LEN,
    REPLACE,
    RETRY_WAIT,
    RETRYABLE,
    RUN_FIELDS,
    START,
    STARTED,
    SUCCEED,
    SUCCEEDED,
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

# the entry formats live in scheduler.entries; re-exported here for the server and tests
__all__ = [
    "SchedulerState", "ERR_BAD_ENTRY", "ERR_EXISTS", "ERR_HAS_DEPENDENTS", "ERR_NO_JOB",
    "KILL_NOTICE_MS", "TIMED_OUT_MESSAGE", "DEFAULT_CLAIM", "MAX_CLAIM", "OP_ADD", "OP_BEAT",
    "OP_CLAIM", "OP_DEL", "OP_DONE", "OP_DONE_MANY", "OP_EXPIRE", "OP_FIRE",
    "OP_FIRE_MANY", "OP_LOSE",
    "OP_MEMBER", "OP_PAUSE", "OP_RESUME", "OP_RETRY", "OP_RUN", "Result", "encode_add",
    "encode_attempt", "encode_beat", "encode_claim", "encode_done", "encode_done_many",
    "encode_fire",
    "encode_fire_many", "fire_fields", "claim_fields", "encode_lose", "encode_member",
    "encode_name", "encode_run",
]

TIMED_OUT_MESSAGE = "timed out"
KILL_NOTICE_MS = 60_000  # a killed attempt is named to its worker's heartbeats this long

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
        self.jobs_changes = 0  # grows on every add, delete, pause, resume and restore
        # (job, run id) of every run that may be ACTIVE, and of every run that may be
        # FIRED, so claims and the leader's timeout/lost/retry checks need not scan the
        # whole history. Supersets: a run enters when it fires (or fires a retry) and is
        # dropped when found in another state (`_records`).
        self._active: set[tuple[str, str]] = set()
        self._fired: set[tuple[str, str]] = set()
        # parent job -> its AFTER children, in the jobs' order (every replica fires them in
        # the same order): each finished run looks up its children instead of every job
        self._children: dict[str, list[str]] = {}

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
        the client should see, for fire/run/claim the list of run dicts that moved, or for
        fire_many a dict of them (see `_fire_many`)."""
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
        if job.after:
            self._children.setdefault(job.after, []).append(job.name)
        self.jobs_changes += 1
        self.handled[job.name] = job.created_ms
        self.runs[job.name] = {}
        self.missed[job.name] = 0
        return None

    def _del(self, entry: dict[str, Any]) -> Any:
        name = entry["name"]
        if name not in self.jobs:
            return ERR_NO_JOB.format(name)
        children = self._children.get(name)
        if children:
            return ERR_HAS_DEPENDENTS.format(name, children[0])
        parent = self.jobs[name].after
        if parent:
            self._children[parent].remove(name)
        for table in (self.jobs, self.handled, self.runs, self.missed, self._children):
            table.pop(name, None)
        self.jobs_changes += 1
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
        self.jobs_changes += 1
        if not paused:  # slots that fell due while paused are not caught up
            self.handled[name] = max(self.handled[name], at_ms)
        return None

    def _fire(self, entry: dict[str, Any]) -> Any:
        """Fire `slots` (ascending) of a job, those after its handled slot; then mark
        everything up to `handled_ms` handled. Returns the runs fired."""
        name, now_ms, workers = entry["job"], entry["now_ms"], entry.get("workers", ())
        job = self.jobs.get(name)
        if job is None:
            return []
        last = self.handled[name]
        fired: list[dict[str, Any]] = []
        for slot in entry["slots"]:
            if slot <= last:
                continue  # already handled: the exactly-once rule
            fired.extend(self._fire_slot(job, slot, now_ms, workers))
            last = slot
        if entry["handled_ms"] > self.handled[name]:
            self.missed[name] = self.missed.get(name, 0) + entry.get("missed", 0)
            self.handled[name] = max(last, entry["handled_ms"])
        else:
            self.handled[name] = last
        return fired

    def _fire_many(self, entry: dict[str, Any]) -> Any:
        """Several jobs' fires (`fire_fields` each), then the claims of waiting workers
        (`claim_fields` each), in order. Returns {"fired": the runs fired, "claimed": the
        runs each claim took} (a run fired and claimed here is in both)."""
        fired: list[dict[str, Any]] = []
        for fire in entry["fires"]:
            fired.extend(self._fire(fire))
        claimed = [self._claim(claim) for claim in entry.get("claims", ())]
        return {"fired": fired, "claimed": claimed}

    def _fire_slot(self, job: Job, slot: int, now_ms: int,
                   workers: Sequence[str] = ()) -> list[dict[str, Any]]:
        runs = self.runs[job.name]
        if fire_run(job, slot, now_ms).run_id in runs:
            return []  # this slot of this job fired already (shard 0 is always fired)
        decision = decide_overlap(job, runs.values())
        for active in decision.kill:
            runs[active.run_id] = step(active, KILL, now_ms, message="replaced")
        if decision.skip:
            self._record(job, skipped_run(job, slot, now_ms, "an earlier run is active"))
            return []
        return self._fire_runs(job, slot, now_ms, workers)

    def _fire_runs(self, job: Job, slot: int, now_ms: int,
                   workers: Sequence[str]) -> list[dict[str, Any]]:
        """The runs of one slot: one open to any worker, or for a broadcast job with live
        `workers`, shard i of n bound to workers[i]."""
        bound: Sequence[str] = workers if job.broadcast and workers else ("",)
        fired: list[dict[str, Any]] = []
        for shard, worker in enumerate(bound):
            record = replace(fire_run(job, slot, now_ms, shard, len(bound)), worker=worker)
            if record.run_id not in self.runs[job.name]:
                self._record(job, record)
                fired.append(record.to_dict())
        return fired

    def _run(self, entry: dict[str, Any]) -> Any:
        """JOB.RUN: fire one slot now, outside the schedule (slot = the request time)."""
        job = self.jobs.get(entry["job"])
        if job is None:
            return ERR_NO_JOB.format(entry["job"])
        now_ms = entry["now_ms"]
        return self._fire_runs(job, now_ms, now_ms, entry.get("workers", ()))

    def _record(self, job: Job, record: RunRecord) -> None:
        runs = self.runs[job.name]
        runs[record.run_id] = record
        if record.state in ACTIVE:
            self._active.add((job.name, record.run_id))
        if record.state == FIRED:
            self._fired.add((job.name, record.run_id))
        while len(runs) > job.history:
            del runs[next(iter(runs))]  # the oldest record goes first

    def _claim(self, entry: dict[str, Any]) -> Any:
        """Hand up to `max` FIRED runs matching the worker's tags to `worker`; with
        `resync`, also the runs this worker already holds STARTED (after a lost reply they
        are delivered again; the worker runs a run id once)."""
        worker, tags, now_ms = entry["worker"], set(entry.get("tags", ())), entry["now_ms"]
        resync = bool(entry.get("resync", False))
        self._heard(worker, now_ms)
        limit = min(int(entry.get("max", DEFAULT_CLAIM)), MAX_CLAIM)
        out: list[dict[str, Any]] = []
        if resync:
            held = (r for r in self.active_records() if r.state == STARTED and r.worker == worker)
            out = [_dispatch(self.jobs[r.job], r) for r in _ordered(held)][:limit]
        for record in _ordered(self._records(self._fired, (FIRED,))):
            if len(out) >= limit:
                break
            job = self.jobs[record.job]
            if _claimable(record, worker) and _matches(job, tags):
                record = step(record, START, now_ms, worker=worker)
                self.runs[job.name][record.run_id] = record
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
        due = timeout_at_ms(self.jobs[name], record)
        if event == FAIL and due is not None and due <= entry["now_ms"]:
            # the worker killed it at its TIMEOUT before our expire committed: record what
            # `_expire` would, so the history does not depend on which came first
            record = step(record, TIME_OUT, entry["now_ms"], message=TIMED_OUT_MESSAGE)
        else:
            record = step(record, event, entry["now_ms"], exit_code=entry["exit_code"],
                          message=entry.get("message", ""))
        self.runs[name][run_id] = self._maybe_retry(record)
        workers = entry.get("workers", ())
        return self._fire_dependents(record, entry["now_ms"], workers) or None

    def _done_many(self, entry: dict[str, Any]) -> Any:
        """Several results in one entry: each as a "done" entry of the same time."""
        fired: list[dict[str, Any]] = []
        for job, run_id, exit_code, message, attempt in entry["results"]:
            one = {"job": job, "run_id": run_id, "exit_code": exit_code, "message": message,
                   "attempt": attempt, "now_ms": entry["now_ms"], "workers": entry["workers"]}
            fired.extend(self._done(one) or ())
        return fired or None

    def _fire_dependents(self, finished: RunRecord, now_ms: int,
                         workers: Sequence[str] = ()) -> list[dict[str, Any]]:
        """AFTER jobs of a succeeded run fire with the parent's slot, once per slot; for a
        broadcast parent, when the last of its shards has succeeded."""
        if finished.shards > 1 and not self._all_shards_succeeded(finished):
            return []
        fired: list[dict[str, Any]] = []
        children = (self.jobs[name] for name in self._children.get(finished.job, ()))
        for child in dependents_to_fire(children, finished):
            fired.extend(self._fire_slot(child, finished.slot_ms, now_ms, workers))
        return fired

    def _all_shards_succeeded(self, run: RunRecord) -> bool:
        runs = self.runs[run.job]
        for shard in range(run.shards):
            other = runs.get(replace(run, shard=shard).run_id)
            if other is None or other.state != SUCCEEDED:
                return False
        return True

    def _expire(self, entry: dict[str, Any]) -> Any:
        """An attempt ran past its TIMEOUT (checked against the entry's time): TIMED_OUT,
        then RETRY_WAIT if retries are left. No-op unless still due."""
        record, job = self._find(entry)
        if record is None or job is None:
            return None
        due = timeout_at_ms(job, record)
        if due is None or due > entry["now_ms"]:
            return None
        record = step(record, TIME_OUT, entry["now_ms"], message=TIMED_OUT_MESSAGE)
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
        self._fired.add((job.name, record.run_id))
        return [record.to_dict()]

    def _heard(self, worker: str, now_ms: int) -> None:
        if worker:
            self.workers[worker] = max(self.workers.get(worker, 0), now_ms)

    def _beat(self, entry: dict[str, Any]) -> Any:
        """WORKER.HEARTBEAT: the worker is alive at `now_ms`."""
        self._heard(entry["worker"], entry["now_ms"])
        return None

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

    def live_workers(self, now_ms: int, timeout_ms: int) -> list[str]:
        """The workers heard within `timeout_ms` before `now_ms`, sorted: a broadcast's
        worker list (the others' runs are lost by the same rule, see `due_entries`)."""
        return sorted(w for w, heard in self.workers.items() if heard + timeout_ms > now_ms)

    def has_broadcast_dependent(self, name: str) -> bool:
        """Whether a TARGET ALL job runs AFTER `name` (its done entries need workers)."""
        return any(self.jobs[child].broadcast for child in self._children.get(name, ()))

    def _lose(self, entry: dict[str, Any]) -> Any:
        """A held attempt (STARTED, or FIRED bound to a worker) whose worker has been silent
        for `timeout_ms` (checked against the entry's time) is LOST, then RETRY_WAIT if
        retries are left. No-op unless due."""
        record, job = self._find(entry)
        if record is None or job is None or not _held(record):
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
        for record in self.active_records():
            due = timeout_at_ms(self.jobs[record.job], record)
            if due is not None and due <= now_ms:
                out.append(encode_attempt(OP_EXPIRE, record, now_ms))
            elif (worker_timeout_ms is not None and _held(record)
                  and self.last_heard(record) + worker_timeout_ms <= now_ms):
                out.append(encode_lose(record, now_ms, worker_timeout_ms))
            elif record.state == RETRY_WAIT and (record.retry_at_ms or 0) <= now_ms:
                out.append(encode_attempt(OP_RETRY, record, now_ms))
        return out

    # -- queries ---------------------------------------------------------------------------

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

    def pending(self, tags: Iterable[str] = (), worker: str = "") -> bool:
        """Whether a FIRED run waits for `worker` with `tags` (any worker if "")."""
        wanted = set(tags)
        return any(
            (_claimable(record, worker) if worker else record.state == FIRED)
            and _matches(self.jobs[record.job], wanted)
            for record in self._records(self._fired, (FIRED,))
        )

    def history(self, name: str, count: int) -> list[RunRecord]:
        """The latest `count` runs of a job, newest first."""
        return list(reversed(list(self.runs.get(name, {}).values())))[:count]

    def active_runs(self) -> int:
        return sum(1 for _ in self.active_records())

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (the driver's snapshot hook)."""
        return msgpack.packb({
            "jobs": [job.to_dict() for job in self.jobs.values()],
            "handled": self.handled,
            "missed": self.missed,
            # rows, not maps: a snapshot holds every job's history (the driver waits on it)
            "run_fields": RUN_FIELDS,
            "run_rows": {n: [r.to_row() for r in runs.values()] for n, runs in self.runs.items()},
            "workers": self.workers,
            "clients": {str(k): v for k, v in self.clients.items()},  # msgpack: str keys
        })

    def restore(self, blob: bytes) -> None:
        """Replace the state with a `snapshot()` blob."""
        data = msgpack.unpackb(blob)
        self.jobs = {}
        self._children = {}
        self.jobs_changes += 1
        for raw in data["jobs"]:
            job = Job.from_dict(raw)
            self.jobs[job.name] = job
            if job.after:
                self._children.setdefault(job.after, []).append(job.name)
        self.handled = dict(data["handled"])
        self.missed = dict(data["missed"])
        self.workers = dict(data.get("workers", {}))
        self.clients = {int(k): v for k, v in data.get("clients", {}).items()}
        self.runs = {}
        if "run_rows" in data:
            names = data["run_fields"]
            records = {n: [dict(zip(names, row, strict=True)) for row in rows]
                       for n, rows in data["run_rows"].items()}
        else:  # a snapshot written before rows
            records = data["runs"]
        for name, raws in records.items():
            runs = (RunRecord.from_dict(raw) for raw in raws)
            self.runs[name] = {r.run_id: r for r in runs}
        self._active = {(r.job, r.run_id) for runs in self.runs.values()
                        for r in runs.values() if r.state in ACTIVE}
        self._fired = {key for key in self._active if self.runs[key[0]][key[1]].state == FIRED}


_HANDLERS = {
    OP_ADD: SchedulerState._add,
    OP_DEL: SchedulerState._del,
    OP_PAUSE: SchedulerState._pause,
    OP_RESUME: SchedulerState._resume,
    OP_FIRE: SchedulerState._fire,
    OP_FIRE_MANY: SchedulerState._fire_many,
    OP_RUN: SchedulerState._run,
    OP_CLAIM: SchedulerState._claim,
    OP_DONE: SchedulerState._done,
    OP_DONE_MANY: SchedulerState._done_many,
    OP_EXPIRE: SchedulerState._expire,
    OP_RETRY: SchedulerState._retry,
    OP_BEAT: SchedulerState._beat,
    OP_LOSE: SchedulerState._lose,
    OP_MEMBER: SchedulerState._member,
}


def _matches(job: Job, tags: set[str]) -> bool:
    # a broadcast run is for every worker, whatever its tags (_claimable binds it to one)
    return job.target in (TARGET_ANY, TARGET_ALL) or job.target in tags


def _claimable(record: RunRecord, worker: str) -> bool:
    """A FIRED run open to any worker, or bound to this one (a broadcast shard)."""
    return record.state == FIRED and record.worker in ("", worker)


def _ordered(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One order every replica agrees on (fired time, then run id), whatever the order of
    the index sets: so a claim hands out the same runs on each."""
    return sorted(records, key=lambda r: (r.fired_ms, r.run_id))


def _held(record: RunRecord) -> bool:
    """An attempt that waits on one worker: started by it, or fired bound to it."""
    return record.state == STARTED or (record.state == FIRED and record.worker != "")


def _dispatch(job: Job, record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id, "job": job.name, "command": job.command,
        "slot_ms": record.slot_ms, "attempt": record.attempt, "timeout_s": job.timeout_s,
        "shard": record.shard, "shards": record.shards,
    }
