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

from scheduler.jobs import Job, RunRecord

OP_ADD, OP_DEL, OP_PAUSE, OP_RESUME = "add", "del", "pause", "resume"
OP_FIRE, OP_RUN, OP_CLAIM, OP_DONE = "fire", "run", "claim", "done"
OP_EXPIRE, OP_RETRY, OP_DONE_MANY = "expire", "retry", "done_many"
OP_BEAT, OP_LOSE, OP_MEMBER = "beat", "lose", "member"
DEFAULT_CLAIM = 16  # runs one claim hands to one worker that does not say how many
MAX_CLAIM = 256  # ... and at most, whatever it asks for


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(fields)


def encode_add(job: Job) -> bytes:
    return _pack(op=OP_ADD, job=job.to_dict())


def encode_name(op: str, name: str, at_ms: int = 0) -> bytes:
    """OP_DEL, OP_PAUSE or OP_RESUME of job `name`."""
    return _pack(op=op, name=name, at_ms=at_ms)


def encode_fire(name: str, slots: Sequence[int], handled_ms: int, now_ms: int,
                missed: int = 0, workers: Sequence[str] = ()) -> bytes:
    """`workers`: the live workers, for a broadcast job (see the module header)."""
    return _pack(op=OP_FIRE, job=name, slots=list(slots), handled_ms=handled_ms,
                 now_ms=now_ms, missed=missed, workers=list(workers))


def encode_run(name: str, now_ms: int, workers: Sequence[str] = ()) -> bytes:
    return _pack(op=OP_RUN, job=name, now_ms=now_ms, workers=list(workers))


def encode_claim(worker: str, tags: Sequence[str], now_ms: int, limit: int = DEFAULT_CLAIM,
                 resync: bool = False) -> bytes:
    return _pack(op=OP_CLAIM, worker=worker, tags=list(tags), now_ms=now_ms, max=limit,
                 resync=resync)


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
