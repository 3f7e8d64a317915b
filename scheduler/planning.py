"""Slot planning, sans I/O: which slots of a job fire now, and what a due slot does.

`plan_slots` applies the job's MISFIRE policy to the slots in a gap (after a leader change,
a pause or a slow loop) and `plan_due` is its fast path for the common on-time slot;
`decide_overlap` applies the CONCURRENCY policy while earlier runs are active. The job model
and the limits used here are in scheduler/jobs.py, the run records in scheduler/runs.py.

Time enters only as arguments (epoch ms); nothing here reads a clock, a disk or a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.jobs import (
    ALLOW,
    FORBID,
    MAX_CATCHUP_SLOTS,
    MISSED_COUNT_CAP,
    ON_TIME_MS,
    ONCE,
    SKIP,
    Job,
)
from scheduler.runs import ACTIVE, RunRecord
from scheduler.schedule import count_slots, last_slots, next_after, zone


@dataclass(frozen=True)
class MisfirePlan:
    """What to do with the slots in (last handled, now]. fire: slots to fire now,
    ascending. missed: slots dropped (at most MISSED_COUNT_CAP). handled_ms: the new last
    handled time (now). next_ms: the first slot after now (None for AFTER jobs)."""

    fire: tuple[int, ...]
    missed: int
    handled_ms: int
    next_ms: int | None


def plan_slots(
    job: Job, last_ms: int | None, now_ms: int, on_time_ms: int = ON_TIME_MS
) -> MisfirePlan:
    """Which slots in (last_ms, now_ms] fire now (last_ms None: since job.created_ms).

    A slot at most `on_time_ms` late fires under every policy. Of the later ones:
    skip fires none; once fires the latest slot if it is within DEADLINE, none otherwise;
    all fires every slot within DEADLINE (the latest MAX_CATCHUP_SLOTS). Everything else is
    missed. A paused job fires nothing. With `once` the on-time slots collapse into the one
    latest slot too. Costs one evaluation per slot in the window (a cron slot is >= 1 s).
    """
    last = job.created_ms if last_ms is None else last_ms
    schedule = job.parsed()
    if schedule is None:
        return MisfirePlan((), 0, max(last, now_ms), None)
    tz = zone(job.tz)
    if now_ms <= last:
        return MisfirePlan((), 0, last, next_after(schedule, last, tz, job.created_ms))
    window_ms = misfire_window_ms(job, on_time_ms)
    low = max(last, now_ms - window_ms - 1)  # slots at most window_ms late are inside
    keep = 1 if job.misfire == ONCE else MAX_CATCHUP_SLOTS
    fire, inside = last_slots(schedule, low, now_ms, tz, keep, job.created_ms)
    if job.paused:
        fire = ()
    early = count_slots(schedule, last, low, tz, MISSED_COUNT_CAP, job.created_ms)
    missed = inside - len(fire) + early
    next_ms = next_after(schedule, now_ms, tz, job.created_ms)
    return MisfirePlan(fire, min(missed, MISSED_COUNT_CAP), now_ms, next_ms)


def misfire_window_ms(job: Job, on_time_ms: int = ON_TIME_MS) -> int:
    """How late a slot of `job` may fire: on time only under skip, else its DEADLINE."""
    return on_time_ms if job.misfire == SKIP else max(job.deadline_s * 1000, on_time_ms)


def expired(job: Job, slot_ms: int, now_ms: int) -> bool:
    """Whether `slot_ms` is past its misfire deadline at `now_ms` (`plan_slots` drops it)."""
    return now_ms - slot_ms > misfire_window_ms(job)


def plan_due(job: Job, last_ms: int, next_ms: int, now_ms: int) -> MisfirePlan:
    """`plan_slots(job, last_ms, now_ms)` for a caller that knows `next_ms`, the job's first
    slot after `last_ms`, and that it is due (<= now_ms). The common case, that one slot
    is due and on time, costs one schedule evaluation (the slot after it) instead of four,
    which is what a second's burst of cron jobs is made of."""
    if job.paused or not last_ms < next_ms <= now_ms or now_ms - next_ms > ON_TIME_MS:
        return plan_slots(job, last_ms, now_ms)
    after = job.next_fire(next_ms)
    if after is None or after <= now_ms:  # several slots are due: the full rules
        return plan_slots(job, last_ms, now_ms)
    # one slot in (last_ms, now_ms], on time: it fires under every policy, none is missed
    return MisfirePlan((next_ms,), 0, now_ms, after)


def plan_ahead(job: Job, next_ms: int) -> MisfirePlan:
    """The fire of `next_ms`, a slot still ahead of now (within the fire-ahead window, see
    scheduler/fireloop.py): that one slot fires, nothing is missed, and the handled slot
    moves to it (not to now: the slots after it fire on their own turns)."""
    return MisfirePlan((next_ms,), 0, next_ms, job.next_fire(next_ms))


@dataclass(frozen=True)
class OverlapDecision:
    """fire: fire the slot. skip: record it as skipped (`skipped_run`) instead.
    kill: active runs to kill (event KILL) before firing."""

    fire: bool
    skip: bool
    kill: tuple[RunRecord, ...] = ()


def decide_overlap(job: Job, runs: Iterable[RunRecord]) -> OverlapDecision:
    """What a due slot of `job` does given its runs (the active ones count: fired, started
    or waiting to retry, on any shard): allow fires anyway; forbid skips the slot; replace
    kills the active runs, then fires."""
    if job.concurrency == ALLOW:  # the common case needs no look at the runs
        return OverlapDecision(fire=True, skip=False)
    active = tuple(run for run in runs if run.job == job.name and run.state in ACTIVE)
    if not active:
        return OverlapDecision(fire=True, skip=False)
    if job.concurrency == FORBID:
        return OverlapDecision(fire=False, skip=True)
    return OverlapDecision(fire=True, skip=False, kill=active)
