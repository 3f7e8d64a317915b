"""The scheduler state's apply side: one handler per log entry op, run deterministically.

`SchedulerEntryHandlers` is a base class of `scheduler.state.SchedulerState`, over
`scheduler.state_queries.QuerySide` (the indexes and helpers the handlers share);
`apply_entry` decodes an entry and dispatches on its "op" through `_HANDLERS`. Each handler
changes the state as scheduler/state.py describes (the exactly-once fire rule, claims,
results, timeouts, retries, losses, AFTER dependents) and returns None, an "ERR ..." text
for the client, or the runs that moved. A one-shot job (`@at`, `@in`) starts with its one
slot unhandled even when its time is past; a fire entry that handles the slot without
firing it (the misfire plan dropped it) records it EXPIRED, as does a resume past it.
The entry formats are in scheduler/entries.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgpack

from scheduler.entries import (
    DEFAULT_CLAIM,
    MAX_CLAIM,
    OP_ADD,
    OP_ANCHOR,
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
    OP_MISFIRE,
    OP_PAUSE,
    OP_RESUME,
    OP_RETRY,
    OP_RUN,
)
from scheduler.jobs import MAX_MESSAGE_LEN, Job, JobError, check_after
from scheduler.planning import decide_overlap
from scheduler.routing import Advert, can_take, handler_union
from scheduler.runs import (
    ACTIVE,
    EXIT_ABANDONED,
    FAIL,
    FENCED_MESSAGE,
    FIRE,
    FIRED,
    KILL,
    LOSE,
    LOST_PREFIX,
    MISFIRE,
    RETRY_WAIT,
    RETRYABLE,
    START,
    STARTED,
    SUCCEED,
    SUCCEEDED,
    TIME_OUT,
    RunRecord,
    dependents_to_fire,
    expired_run,
    fire_run,
    note_late,
    retry_run,
    skipped_run,
    step,
    timeout_at_ms,
    was_lost,
)
from scheduler.state_queries import (
    QuerySide,
    _claimable,
    _held,
    dispatch_item,
    misfired,
    ordered_runs,
)

TIMED_OUT_MESSAGE = "timed out"
# a run its worker's heartbeat does not list is lost once claimed this long (see `_beat`)
DISOWNED_GRACE_MS = 30_000
MSG_DISOWNED = "worker {} heartbeats but does not hold it"

ERR_EXISTS = "ERR job '{}' already exists"
ERR_NO_JOB = "ERR no such job '{}'"
ERR_HAS_DEPENDENTS = "ERR job '{}' is the AFTER parent of '{}'"
ERR_BAD_ENTRY = "ERR bad log entry: {}"


class SchedulerEntryHandlers(QuerySide):
    """Apply-side behaviour; the state it changes is initialised by SchedulerState.__init__."""

    handled: dict[str, int]
    missed: dict[str, int]
    clients: dict[int, str]
    adverts: dict[str, Advert]
    handler_names: frozenset[str]
    unanchored: set[str]
    applied: int
    jobs_changes: int

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
        self.handled[job.name] = job.first_handled_ms()
        self.runs[job.name] = {}
        self.missed[job.name] = 0
        if entry.get("anchor"):
            self.unanchored.add(job.name)
        return None

    def _anchor(self, entry: dict[str, Any]) -> Any:
        """The leader's stamp of an `@in` job's anchor: its created_ms becomes the entry's
        time (the first stamp wins; a later one, or one for another job, is a no-op)."""
        name = entry["name"]
        if name not in self.unanchored or name not in self.jobs:
            return None
        self.unanchored.discard(name)
        job = replace(self.jobs[name], created_ms=entry["now_ms"])
        self.jobs[name] = job
        self.handled[name] = job.first_handled_ms()
        self.jobs_changes += 1
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
        self.unanchored.discard(name)
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
            self._expire_one_shot(job, at_ms, MSG_PAUSED_AT_TIME)
            return None
        # Runs fired ahead of a slot after the pause (scheduler/fireloop.py) that no worker
        # took yet are killed: no worker gets them. One a worker holds runs at its slot
        # (killing it would not reach the worker in time, and the record would say it did
        # not run).
        runs = self.runs[name]
        for record in list(runs.values()):
            if record.state == FIRED and record.slot_ms > at_ms:
                runs[record.run_id] = step(record, KILL, at_ms, message=MSG_PAUSED_AHEAD)
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
        self._expire_one_shot(job, now_ms)
        return fired

    def _expire_one_shot(self, job: Job, now_ms: int, message: str = "") -> None:
        """A one-shot job whose slot is handled without a run of it (the misfire plan
        dropped it, or it fell due while paused) gets its EXPIRED record: it never runs."""
        once = job.one_shot_ms()
        if once is None or once > self.handled[job.name]:
            return
        if fire_run(job, once, now_ms).run_id in self.runs[job.name]:
            return  # it fired (or expired already)
        text = message or MSG_EXPIRED.format(max(0, now_ms - once), job.misfire,
                                             job.deadline_s)
        self._record(job, expired_run(job, once, now_ms, text))

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
        `workers`, shard i of n bound to workers[i], of those that can run it (their adverts:
        an AFTER child's list is the live workers, whatever their kind)."""
        if job.broadcast:
            workers = [w for w in workers if w not in self.adverts
                       or can_take(job, self.adverts[w], self.handler_names)]
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
            self._fired.add(record)
        while len(runs) > job.history:
            del runs[next(iter(runs))]  # the oldest record goes first

    def _claim(self, entry: dict[str, Any]) -> Any:
        """Hand up to `max` FIRED runs the worker's advert can take (scheduler/routing.py,
        also recorded for the waiting rule) to `worker`; with
        `resync`, first every run this worker already holds STARTED, whatever `max` (after a
        lost reply they are delivered again; the worker runs a run id once). Cutting those
        to `max` let the runs the worker executes crowd out one it never received, which then
        stayed STARTED for good (tests/test_scheduler_resync_limit.py). The held runs count
        against `max` for new claims, so the state changes exactly as before."""
        worker, now_ms = entry["worker"], entry["now_ms"]
        advert = Advert.from_fields(entry)
        resync = bool(entry.get("resync", False))
        self._heard(worker, now_ms)
        self._advertise(worker, advert)
        limit = min(int(entry.get("max", DEFAULT_CLAIM)), MAX_CLAIM)
        ahead = entry.get("ahead")  # None: an older worker's claim, every run counts to max
        room = [limit, 0 if ahead is None else min(int(ahead), MAX_CLAIM)]  # due, ahead
        out: list[dict[str, Any]] = []
        if resync:
            held = (r for r in self.active_records() if r.state == STARTED and r.worker == worker)
            out = [dispatch_item(self.jobs[r.job], r, now_ms) for r in ordered_runs(held)]
            room[0] -= len(out)
        for record in self._fired.records(self.runs):  # (oldest first, no sort)
            if room[0] <= 0 and room[1] <= 0:
                break
            kind = 1 if ahead is not None and record.slot_ms > now_ms else 0
            job = self.jobs[record.job]
            if room[kind] > 0 and _claimable(record, worker) and can_take(
                    job, advert, self.handler_names):
                # a run fired ahead starts at its slot: its TIMEOUT counts from there
                began = max(now_ms, record.slot_ms)
                record = step(record, START, began, worker=worker)
                self.runs[job.name][record.run_id] = record
                out.append(dispatch_item(job, record, now_ms))
                room[kind] -= 1
        return out

    def _done(self, entry: dict[str, Any]) -> Any:
        name, run_id = entry["job"], entry["run_id"]
        record = self.runs.get(name, {}).get(run_id)
        attempt = entry.get("attempt")
        if record is not None and attempt is not None and was_lost(record, attempt):
            # late: the attempt was declared lost (and maybe retried); noted, never applied
            self.runs[name][run_id] = note_late(record, attempt, entry["exit_code"])
            return None
        if record is None or record.state != STARTED:
            return None  # unknown, or reported already: a repeated report is a no-op
        if attempt not in (None, record.attempt):
            return None  # the report of an attempt that timed out earlier
        event = SUCCEED if entry["exit_code"] == 0 else FAIL
        due = timeout_at_ms(self.jobs[name], record)
        if entry["exit_code"] == EXIT_ABANDONED:  # the worker fenced itself: as if lost
            message = LOST_PREFIX + FENCED_MESSAGE.format(record.worker)
            record = step(record, LOSE, entry["now_ms"], message=message)
        elif event == FAIL and due is not None and due <= entry["now_ms"]:
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

    def _misfire(self, entry: dict[str, Any]) -> Any:
        """A FIRED attempt that no worker took within its job's misfire deadline (checked
        against the entry's time, `misfired`) is EXPIRED: it never runs, and is not
        retried. No-op unless still due."""
        record, job = self._find(entry)
        if record is None or job is None or not misfired(job, record, entry["now_ms"]):
            return None
        late = entry["now_ms"] - max(record.slot_ms, record.fired_ms)
        message = MSG_WAITED.format(late, job.misfire, job.deadline_s)
        self.runs[job.name][record.run_id] = step(record, MISFIRE, entry["now_ms"],
                                                  message=message)
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
        self._fired.add(record)
        return [record.to_dict()]

    def _advertise(self, worker: str, advert: Advert) -> None:
        """Record what `worker` can execute (its latest claim says)."""
        if self.adverts.get(worker) == advert:
            return
        self.adverts[worker] = advert
        self.handler_names = handler_union(self.adverts.values())

    def _heard(self, worker: str, now_ms: int) -> None:
        if worker:
            self.workers[worker] = max(self.workers.get(worker, 0), now_ms)

    def _beat(self, entry: dict[str, Any]) -> Any:
        """WORKER.HEARTBEAT: the worker is alive at `now_ms`. With `holding`, each attempt
        it does not hold and claimed DISOWNED_GRACE_MS before the heartbeat by the worker's
        clock and the entry's (`disowned`: longer than a claim reply can be on its way, as
        a worker drops a poll after CALL_TIMEOUT_S and resyncs) is LOST, then RETRY_WAIT if
        retries are left: a worker that heartbeats is never silent, so it would stay
        started for good."""
        worker, now_ms = entry["worker"], entry["now_ms"]
        self._heard(worker, now_ms)
        if entry.get("holding") is None:
            return None
        cut = min(now_ms, entry.get("sent_ms", now_ms)) - DISOWNED_GRACE_MS
        for record in self.disowned(worker, entry["holding"], cut):
            lost = step(record, LOSE, now_ms, message=LOST_PREFIX + MSG_DISOWNED.format(worker))
            self.runs[record.job][record.run_id] = self._maybe_retry(lost)
        return None

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
        message = f"{LOST_PREFIX}worker {record.worker} silent for {silent_ms} ms"
        record = step(record, LOSE, entry["now_ms"], message=message)
        self.runs[job.name][record.run_id] = self._maybe_retry(record)
        return None

    def _member(self, entry: dict[str, Any]) -> Any:
        """The RESP address of Raft node `id` ("" forgets it), from a log written before
        the address book moved into core.raft_service: kept in `clients` as an update the
        server hands to the service's book (which then forgets a node for "")."""
        self.clients[int(entry["id"])] = entry["addr"]
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


_HANDLERS = {
    OP_ADD: SchedulerEntryHandlers._add,
    OP_ANCHOR: SchedulerEntryHandlers._anchor,
    OP_DEL: SchedulerEntryHandlers._del,
    OP_PAUSE: SchedulerEntryHandlers._pause,
    OP_RESUME: SchedulerEntryHandlers._resume,
    OP_FIRE: SchedulerEntryHandlers._fire,
    OP_FIRE_MANY: SchedulerEntryHandlers._fire_many,
    OP_RUN: SchedulerEntryHandlers._run,
    OP_CLAIM: SchedulerEntryHandlers._claim,
    OP_DONE: SchedulerEntryHandlers._done,
    OP_DONE_MANY: SchedulerEntryHandlers._done_many,
    OP_EXPIRE: SchedulerEntryHandlers._expire,
    OP_RETRY: SchedulerEntryHandlers._retry,
    OP_MISFIRE: SchedulerEntryHandlers._misfire,
    OP_BEAT: SchedulerEntryHandlers._beat,
    OP_LOSE: SchedulerEntryHandlers._lose,
    OP_MEMBER: SchedulerEntryHandlers._member,
}


MSG_PAUSED_AHEAD = "the job was paused before its slot"
MSG_PAUSED_AT_TIME = "expired: the job was paused at its time; not run"
MSG_EXPIRED = ("expired: {} ms late, past its misfire deadline (MISFIRE {}, DEADLINE {} s); "
               "not run")
MSG_WAITED = ("expired: no worker took it for {} ms, past its misfire deadline (MISFIRE {}, "
              "DEADLINE {} s); not run")
