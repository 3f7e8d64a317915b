"""The leader's firing plan, sans I/O: when each job fires next, and which jobs are due.

The firing loop used to look at every job on each turn, and once more to know how long to
sleep: ~2 ms a turn at 1,000 jobs, a tenth of the leader's CPU at 1,000 fires/s. Here a
job's next slot is computed once per handled slot (evaluating a schedule is the costly
part) and kept in a heap, so a turn costs O(due jobs x log jobs).

The plan is a cache of the replicated state (jobs, handled slots). `refresh` rebuilds it
when the jobs changed (`SchedulerState.jobs_changes`: add, delete, pause, resume, restore)
or when asked (a new term). A job handed out by `take_due` is in flight: out of the heap
until `settled` puts it back with its next slot from the handled slot it then has, so its
slot is not planned again while its fire entry commits (a failed fire leaves the handled
slot as it was: the same slot is due again at once).

With a fire-ahead window (`scheduler serve --fire-ahead-ms`), a job that may overlap
itself (CONCURRENCY allow) is due that long before its slot: the heap holds each job's
fire time, its next slot minus its lead (`lead`). See scheduler/fireloop.py.

A job no live worker can take is held (`hold`): due again a moment later, its slot not
handled, so that once a worker for it is there its slots follow the MISFIRE policy.
"""

from __future__ import annotations

import heapq

from scheduler.jobs import ALLOW, Job
from scheduler.state import SchedulerState

__all__ = ["FirePlanner"]


class FirePlanner:
    """See the module header. Invariant: a job is in at most one of `in_flight` and
    `_next` (the jobs with a heap entry); a heap entry is live iff `_next` holds its time."""

    def __init__(self, fire_ahead_ms: int = 0) -> None:
        self.fire_ahead_ms = fire_ahead_ms
        # job -> (the Job, its handled slot, its next slot after that)
        self._cache: dict[str, tuple[Job, int, int | None]] = {}
        self._next: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._seen_changes = -1
        self.in_flight: set[str] = set()

    def lead(self, job: Job) -> int:
        """How long before its slot `job` fires: the fire-ahead window for a job that may
        overlap itself. For forbid and replace the decision needs the earlier run's state
        at the slot, so they fire on time."""
        return self.fire_ahead_ms if job.concurrency == ALLOW else 0

    def next_fire(self, state: SchedulerState, name: str, job: Job) -> int | None:
        """The job's next slot after its handled one (None: paused, AFTER, or none)."""
        handled = state.handled.get(name)
        if job.paused or job.after or handled is None or name in state.unanchored:
            return None  # (an unanchored `@in` job has no slot until the leader stamps it)
        cached = self._cache.get(name)
        if cached is not None and cached[0] is job and cached[1] == handled:
            return cached[2]
        if len(self._cache) > 2 * len(state.jobs):
            self._cache.clear()  # deleted jobs' entries
        next_ms = job.next_fire(handled)
        self._cache[name] = (job, handled, next_ms)
        return next_ms

    def remember(self, name: str, job: Job, handled_ms: int, next_ms: int | None) -> None:
        """The next slot after `handled_ms`, known already (from planning the fire that
        moves the handled slot there): no evaluation once it has applied."""
        self._cache[name] = (job, handled_ms, next_ms)

    def refresh(self, state: SchedulerState, force: bool = False) -> None:
        """Rebuild the heap if the jobs changed since the last rebuild (or if `force`)."""
        if not force and state.jobs_changes == self._seen_changes:
            return
        self._seen_changes = state.jobs_changes
        self._next = {}
        for name, job in state.jobs.items():
            next_ms = None if name in self.in_flight else self.next_fire(state, name, job)
            if next_ms is not None:
                self._next[name] = next_ms - self.lead(job)
        self._heap = [(t, name) for name, t in self._next.items()]
        heapq.heapify(self._heap)

    def take_due(self, state: SchedulerState, now_ms: int) -> list[tuple[str, Job]]:
        """The jobs whose fire time (next slot minus lead) is at or before `now_ms`, now
        in flight."""
        out: list[tuple[str, Job]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            slot, name = heapq.heappop(heap)
            if self._next.get(name) != slot:
                continue  # stale: the job moved on or went
            del self._next[name]
            job = state.jobs.get(name)
            if job is not None:
                self.in_flight.add(name)
                out.append((name, job))
        return out

    def settled(self, state: SchedulerState, names: list[str]) -> None:
        """The fires of `names` committed, failed or were not sent: back in the heap with
        their next slot after the handled slot they now have."""
        for name in names:
            self.in_flight.discard(name)
            job = state.jobs.get(name)
            next_ms = None if job is None else self.next_fire(state, name, job)
            if job is None or next_ms is None:
                continue
            fire_ms = next_ms - self.lead(job)
            if self._next.get(name) != fire_ms:
                self._next[name] = fire_ms
                heapq.heappush(self._heap, (fire_ms, name))

    def hold(self, names: list[str], until_ms: int) -> None:
        """Jobs taken due that wait for a worker (scheduler/routing.py): out of flight,
        due again at `until_ms`, their slot still unhandled."""
        for name in names:
            self.in_flight.discard(name)
            self._next[name] = until_ms
            heapq.heappush(self._heap, (until_ms, name))

    def soonest(self) -> int | None:
        """The earliest fire time of a job not in flight (None: none)."""
        heap = self._heap
        while heap and self._next.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale
        return heap[0][0] if heap else None
