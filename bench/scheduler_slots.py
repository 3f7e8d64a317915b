"""What the scheduler benchmark computes from run records and the worker's notes (no I/O).

A record is a `JOB.HISTORY` entry as a dict with int fields, -1 where unset (see
`SchedulerCluster.history`); a note is the worker's (job, slot_ms, attempt, handler wall ms),
see bench.scheduler_loads. A slot is (job, slot_ms).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from bench.scheduler_loads import Note
from scheduler.state_apply import MSG_PAUSED_AHEAD

Record = dict[str, Any]
Slot = tuple[str, int]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max (nearest rank), and the count."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]

    return {"n": len(ordered), "p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


def starts(notes: Iterable[Note]) -> dict[Slot, list[float]]:
    """Each handled slot's handler start times (more than one: handled twice)."""
    out: dict[Slot, list[float]] = {}
    for job, slot, _attempt, at_ms in notes:
        out.setdefault((job, slot), []).append(at_ms)
    return out


def gaps(slots: Iterable[int], period_ms: int, begin_ms: float = 0.0,
         end_ms: float = float("inf")) -> int:
    """Slots missing between consecutive fired slots of one job inside [begin_ms, end_ms)."""
    inside = sorted({s for s in slots if begin_ms <= s < end_ms})
    return sum((b - a) // period_ms - 1 for a, b in zip(inside, inside[1:], strict=False))


def _slots_per_job(records: Iterable[Record]) -> dict[str, list[int]]:
    per_job: dict[str, list[int]] = {}
    for r in records:
        per_job.setdefault(r["job"], []).append(r["slot_ms"])
    return per_job


def expected_slots(records: Iterable[Record], jobs: Sequence[str], begin_ms: float,
                   end_ms: float, period_ms: int) -> list[Slot]:
    """Every slot the jobs were scheduled for in [begin_ms, end_ms): each job fires every
    `period_ms` at its phase (its slots' remainder, taken from any of its records; a job
    with no record at all is given the window's own phase), so none can hide by not firing."""
    phase: dict[str, int] = {}
    for r in records:
        phase.setdefault(r["job"], int(r["slot_ms"]) % period_ms)
    out: list[Slot] = []
    for job in jobs:
        p = phase.get(job, int(begin_ms) % period_ms)
        first = int(begin_ms) - int(begin_ms) % period_ms + p
        if first < begin_ms:
            first += period_ms
        out.extend((job, slot) for slot in range(first, int(end_ms), period_ms) if slot < end_ms)
    return out


def lateness(records: list[Record], notes: list[Note], begin_ms: float, end_ms: float,
             stopped_ms: float, period_ms: int, jobs: Sequence[str]) -> dict[str, Any]:
    """Fired, claimed and handler-start lateness of every slot the jobs were scheduled for
    in [begin_ms, end_ms) (`expected_slots`). A slot that never fired, or was not claimed or
    not handled when the worker stopped (`stopped_ms`), counts as late by stopped_ms - slot,
    a lower bound: it is a miss in the percentiles, never left out."""
    handled = starts(notes)
    by_slot = {(r["job"], r["slot_ms"]): r for r in records}
    expected = expected_slots(records, jobs, begin_ms, end_ms, period_ms)
    fired_slots = [by_slot[s] for s in expected if s in by_slot]
    never = len(expected) - len(fired_slots)
    late = [stopped_ms - slot for job, slot in expected if (job, slot) not in by_slot]
    fired = [r["fired_ms"] - r["slot_ms"] for r in fired_slots] + late
    claimed = [(r["started_ms"] if r["started_ms"] >= 0 else stopped_ms) - r["slot_ms"]
               for r in fired_slots] + late
    started = [min(handled.get((job, slot), [stopped_ms])) - slot for job, slot in expected]
    offered = len(jobs) * 1000 / period_ms
    unexpected = sum(1 for r in records if begin_ms <= r["slot_ms"] < end_ms) - len(fired_slots)
    missed = sum(gaps(s, period_ms, begin_ms, end_ms) for s in _slots_per_job(records).values())
    return {
        "slots_in_window": len(expected), "fired_in_window": len(fired_slots),
        "offered_per_s": offered,
        "fires_per_s": offered * len(fired_slots) / len(expected) if expected else 0.0,
        "never_fired": never, "unexpected_slots": unexpected,
        "fired_ms": percentiles(fired), "claimed_ms": percentiles(claimed),
        "handler_start_ms": percentiles(started),
        "not_claimed": sum(1 for r in fired_slots if r["started_ms"] < 0) + never,
        "not_handled": sum(1 for s in expected if s not in handled),
        "handled_twice": sum(1 for v in handled.values() if len(v) > 1),
        "missed_slots": missed,
        "phases_ms": len({r["slot_ms"] % period_ms for r in fired_slots}),
    }


def first_start_after(records: Iterable[Record], handled: dict[Slot, list[float]],
                      at_ms: float) -> float:
    """The earliest handler start of a run fired after `at_ms`, minus `at_ms` (nan: none)."""
    times = [min(handled[slot]) for r in records
             if r["fired_ms"] > at_ms and (slot := (r["job"], r["slot_ms"])) in handled]
    return min(times, default=float("nan")) - at_ms


def paused_ahead(record: Record) -> bool:
    """A run fired ahead of its slot that the jobs' final pause killed before any worker
    took it (scheduler/fireloop.py): it was never meant to run."""
    return record["state"] == "killed" and record.get("message") == MSG_PAUSED_AHEAD


def accounting(records: list[Record], notes: list[Note], period_ms: int) -> dict[str, Any]:
    """Duplicate and missed slots: in the history (gaps between the first and last slot of
    each job, skipped records) and at the worker (a slot handled twice or never; a run the
    final pause killed before any worker took it is not one to handle)."""
    per_job = _slots_per_job(records)
    handled = starts(notes)
    fired = {(r["job"], r["slot_ms"]) for r in records
             if r["state"] != "skipped" and not paused_ahead(r)}
    return {
        "slots": len(records),
        "history_duplicates": sum(len(s) - len(set(s)) for s in per_job.values()),
        "history_missed": sum(gaps(s, period_ms) for s in per_job.values()),
        "skipped": sum(1 for r in records if r["state"] == "skipped"),
        "handled_twice": sum(1 for v in handled.values() if len(v) > 1),
        "never_handled": len(fired - set(handled)),
        "states": dict(Counter(r["state"] for r in records)),
    }
