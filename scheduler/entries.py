"""The scheduler's Raft log entries: their ops and builders (the proposer's side).

Each entry is a msgpack map with an "op"; `scheduler.state.SchedulerState.apply_entry`
applies it on every node. A field added later is read with a default there (old entries in
a log or snapshot stay valid). Times in entries are the proposer's clock: apply reads no
clock, so every replica computes the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from scheduler.jobs import Job
from scheduler.runs import RunRecord

OP_ADD, OP_DEL, OP_PAUSE, OP_RESUME = "add", "del", "pause", "resume"
OP_FIRE, OP_RUN, OP_CLAIM, OP_DONE = "fire", "run", "claim", "done"
OP_EXPIRE, OP_RETRY, OP_DONE_MANY = "expire", "retry", "done_many"
OP_BEAT, OP_LOSE, OP_MEMBER = "beat", "lose", "member"
OP_FIRE_MANY = "fire_many"
OP_ANCHOR = "anchor"  # the leader stamps an `@in` job's anchor (see `encode_add`)
OP_MISFIRE = "misfire"  # a fired attempt no worker took within its misfire deadline
DEFAULT_CLAIM = 16  # runs one claim hands to one worker that does not say how many
# ... and at most, whatever it asks for: a worker with async handlers may take a whole
# second's burst of 1,000 runs in one claim (one Raft round) instead of one per 64
MAX_CLAIM = 1024


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(fields)


def encode_add(job: Job, anchor: bool = False) -> bytes:
    """Add `job`. With `anchor` (an `@in` job added through a node that does not lead), its
    anchor waits for the leader to stamp it with an OP_ANCHOR entry: `@in` counts from the
    leader's clock when the add has been committed, the same on every replica."""
    if anchor:
        return _pack(op=OP_ADD, job=job.to_dict(), anchor=True)
    return _pack(op=OP_ADD, job=job.to_dict())


def encode_anchor(name: str, now_ms: int) -> bytes:
    """The leader's stamp of job `name`'s anchor (created_ms), if it still waits for one."""
    return _pack(op=OP_ANCHOR, name=name, now_ms=now_ms)


def encode_name(op: str, name: str, at_ms: int = 0) -> bytes:
    """OP_DEL, OP_PAUSE or OP_RESUME of job `name`."""
    return _pack(op=op, name=name, at_ms=at_ms)


def fire_fields(name: str, slots: Sequence[int], handled_ms: int, now_ms: int,
                missed: int = 0, workers: Sequence[str] = ()) -> dict[str, Any]:
    """One job's fire: its due `slots` and new handled slot; `workers`: the live workers,
    for a broadcast job (see the module header)."""
    return {"job": name, "slots": list(slots), "handled_ms": handled_ms, "now_ms": now_ms,
            "missed": missed, "workers": list(workers)}


def encode_fire(name: str, slots: Sequence[int], handled_ms: int, now_ms: int,
                missed: int = 0, workers: Sequence[str] = ()) -> bytes:
    """One job's fire (`fire_fields`) as an entry of its own."""
    return _pack(op=OP_FIRE, **fire_fields(name, slots, handled_ms, now_ms, missed, workers))


def encode_fire_many(fires: Sequence[dict[str, Any]],
                     claims: Sequence[dict[str, Any]] = ()) -> bytes:
    """Several jobs' fires (`fire_fields` each) in one entry, applied in order as separate
    fire entries would be: a second's burst of due jobs costs one Raft entry, not one each.
    Then `claims` (`claim_fields` each, of workers whose polls wait at the leader), applied
    in order as claim entries right after would be: the run is fired and claimed by one
    commit instead of two."""
    return _pack(op=OP_FIRE_MANY, fires=list(fires), claims=list(claims))


def encode_run(name: str, now_ms: int, workers: Sequence[str] = ()) -> bytes:
    return _pack(op=OP_RUN, job=name, now_ms=now_ms, workers=list(workers))


def claim_fields(worker: str, tags: Sequence[str], now_ms: int, limit: int = DEFAULT_CLAIM,
                 resync: bool = False, handlers: Sequence[str] | None = None,
                 ahead: int | None = None) -> dict[str, Any]:
    """A worker's claim of up to `limit` FIRED runs it can take (see scheduler.state): its
    advert is `tags` and, for an embedded worker, `handlers` (scheduler/routing.py). With
    `ahead`, `limit` counts only runs due by `now_ms`, and up to `ahead` runs whose slot is
    later (fired ahead) are claimed besides; without it (an older worker) every run counts
    against `limit`."""
    fields = {"worker": worker, "tags": list(tags), "now_ms": now_ms, "max": limit,
              "resync": resync}
    if handlers is not None:
        fields["handlers"] = sorted(handlers)
    if ahead is not None:
        fields["ahead"] = ahead
    return fields


def encode_claim(worker: str, tags: Sequence[str], now_ms: int, limit: int = DEFAULT_CLAIM,
                 resync: bool = False, handlers: Sequence[str] | None = None,
                 ahead: int | None = None) -> bytes:
    return _pack(op=OP_CLAIM, **claim_fields(worker, tags, now_ms, limit, resync, handlers,
                                             ahead))


def encode_done(name: str, run_id: str, exit_code: int, message: str, now_ms: int,
                attempt: int | None = None, workers: Sequence[str] = ()) -> bytes:
    """`workers`: the live workers, when a broadcast job runs AFTER job `name`."""
    return _pack(op=OP_DONE, job=name, run_id=run_id, exit_code=exit_code, message=message,
                 now_ms=now_ms, attempt=attempt, workers=list(workers))


Result = tuple[str, str, int, str, int | None]  # job, run id, exit code, message, attempt


def encode_done_many(results: Sequence[Result], now_ms: int,
                     workers: Sequence[str] = ()) -> bytes:
    """Several "done" results in one entry (`workers` as for `encode_done`)."""
    return _pack(op=OP_DONE_MANY, results=[list(r) for r in results], now_ms=now_ms,
                 workers=list(workers))


def encode_attempt(op: str, record: RunRecord, now_ms: int) -> bytes:
    """OP_EXPIRE, OP_RETRY or OP_MISFIRE of the current attempt of `record`."""
    return _pack(op=op, job=record.job, run_id=record.run_id, attempt=record.attempt,
                 now_ms=now_ms)


def encode_lose(record: RunRecord, now_ms: int, timeout_ms: int) -> bytes:
    """OP_LOSE of the current attempt of `record` (its worker silent for `timeout_ms`)."""
    return _pack(op=OP_LOSE, job=record.job, run_id=record.run_id, attempt=record.attempt,
                 now_ms=now_ms, timeout_ms=timeout_ms)


def encode_beat(worker: str, now_ms: int, holding: Sequence[str] | None = None,
                sent_ms: int | None = None) -> bytes:
    """A worker's heartbeat at `now_ms`. With `holding` (the "run_id#attempt" of every run
    the worker holds, as of its clock's `sent_ms`), the apply also reconciles: a run the
    state gives the worker that it does not hold is lost (see `_beat`)."""
    if holding is None:
        return _pack(op=OP_BEAT, worker=worker, now_ms=now_ms)
    return _pack(op=OP_BEAT, worker=worker, now_ms=now_ms, holding=list(holding),
                 sent_ms=now_ms if sent_ms is None else sent_ms)


def encode_member(node_id: int, address: str) -> bytes:
    return _pack(op=OP_MEMBER, id=node_id, addr=address)
