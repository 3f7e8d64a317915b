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
runs it can execute (its advert, scheduler/routing.py, travels in the claim) to STARTED
with the worker's id, an entry of its own or one of the claims a
"fire_many" entry applies after its fires (the polls waiting at the leader). A run can be
claimed once, so a run delivered by two leaders still starts once; and a leader without
quorum cannot commit a claim, so it cannot dispatch. Results come back as "done" entries
(STARTED -> SUCCEEDED/FAILED); a done for a run that is not STARTED is a no-op.

Modules by role: this one holds the state's fields and their invariants;
scheduler/state_apply.py applies the entries (one handler per op);
scheduler/state_queries.py answers queries and keeps the run indexes;
scheduler/state_snapshot.py writes and restores snapshots.
"""

from __future__ import annotations

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
    Result,
    claim_fields,
    encode_add,
    encode_anchor,
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
from scheduler.fired_index import FiredIndex
from scheduler.jobs import Job
from scheduler.routing import Advert
from scheduler.runs import RunRecord
from scheduler.state_apply import (
    ERR_BAD_ENTRY,
    ERR_EXISTS,
    ERR_HAS_DEPENDENTS,
    ERR_NO_JOB,
    TIMED_OUT_MESSAGE,
    SchedulerEntryHandlers,
)
from scheduler.state_queries import KILL_NOTICE_MS
from scheduler.state_snapshot import SnapshotSide

# the entry formats (scheduler.entries) and the state's error texts, re-exported here for
# the server and tests
__all__ = [
    "SchedulerState", "ERR_BAD_ENTRY", "ERR_EXISTS", "ERR_HAS_DEPENDENTS", "ERR_NO_JOB",
    "KILL_NOTICE_MS", "TIMED_OUT_MESSAGE", "DEFAULT_CLAIM", "MAX_CLAIM", "OP_ADD",
    "OP_ANCHOR", "OP_BEAT",
    "OP_CLAIM", "OP_DEL", "OP_DONE", "OP_DONE_MANY", "OP_EXPIRE", "OP_FIRE",
    "OP_FIRE_MANY", "OP_LOSE",
    "OP_MEMBER", "OP_MISFIRE", "OP_PAUSE", "OP_RESUME", "OP_RETRY", "OP_RUN", "Result",
    "encode_add", "encode_anchor",
    "encode_attempt", "encode_beat", "encode_claim", "encode_done", "encode_done_many",
    "encode_fire",
    "encode_fire_many", "fire_fields", "claim_fields", "encode_lose", "encode_member",
    "encode_name", "encode_run",
]


class SchedulerState(SchedulerEntryHandlers, SnapshotSide):
    """All replicated state. Invariants: `handled[name]` only grows while the job exists;
    `runs[name]` holds at most `jobs[name].history` records, oldest first, each keyed by
    its run id; a run id appears in at most one job's map."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.handled: dict[str, int] = {}  # job -> last slot handled (fired/skipped/missed)
        self.runs: dict[str, dict[str, RunRecord]] = {}
        self.missed: dict[str, int] = {}  # job -> slots dropped by the misfire policy
        self.workers: dict[str, int] = {}  # worker -> when the cluster last heard it (ms)
        # worker -> what it can execute (scheduler/routing.py), from its latest claim;
        # handler_names: the union of their handlers (which jobs are handler jobs)
        self.adverts: dict[str, Advert] = {}
        self.handler_names: frozenset[str] = frozenset()
        # Raft node id -> its RESP address ("": forget it), as old "member" entries and
        # snapshots carry it; the server moves it into core.raft_service's address book
        # after every apply and restore, so it is empty between them
        self.clients: dict[int, str] = {}
        self.applied = 0  # index of the last applied entry
        self.jobs_changes = 0  # grows on every add, delete, pause, resume, anchor, restore
        # `@in` jobs added through a node that did not lead: their anchor (created_ms) waits
        # for the leader's "anchor" entry, and they have no slot until then
        self.unanchored: set[str] = set()
        # (job, run id) of every run that may be ACTIVE, and of every run that may be
        # FIRED, so claims and the leader's timeout/lost/retry checks need not scan the
        # whole history. Supersets: a run enters when it fires (or fires a retry) and is
        # dropped when found in another state (`_records`).
        self._active: set[tuple[str, str]] = set()
        self._fired = FiredIndex()  # ... in claim order (scheduler/fired_index.py)
        # parent job -> its AFTER children, in the jobs' order (every replica fires them in
        # the same order): each finished run looks up its children instead of every job
        self._children: dict[str, list[str]] = {}
