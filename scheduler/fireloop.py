"""The scheduler node's firing loop (leader only): fires, their claims, timeouts and retries.

`FiringLoop` is an object the server (`scheduler.server.SchedulerServer`) holds: it owns
the planner, the polls parked at this node and the wake-up events; the server starts and
stops it, tells it what each applied batch did (`applied`), and the worker commands
(scheduler/worker_commands.py) park polls and wait on it.

Once the node leads and has applied everything its predecessors committed (a read
barrier), the loop repeatedly takes the jobs whose next slot is due (scheduler/firing.py),
plans each with `jobs.plan_due` from the replicated handled slot, and starts committing
their fires, MAX_FIRES_PER_ENTRY jobs to an entry, with the claims of the polls parked
here (scheduler/polls.py) in the last one: one commit fires and dispatches. It does not
wait for the commit; it checks the active runs (timeouts, lost workers, retries) every
CHECK_RUNS_S (less often when that walk is long: it takes at most CHECK_RUNS_SHARE of the
loop), then sleeps until the next slot or until an applied entry wakes it.

An `@in` job added through a node that did not lead waits for this loop to stamp its
anchor (an "anchor" entry with the leader's time), so its duration counts from the leader's
clock once the add has been committed.

A job no live worker can take (scheduler/routing.py) is held: its slots stay unhandled
and it is looked at again every WAIT_RECHECK_MS, so once a worker that can take it has
polled, its due slots fire by its MISFIRE policy (slots past the DEADLINE are missed; a
one-shot job's is recorded expired, at once, without waiting for a worker).

Fire-ahead (`--fire-ahead-ms`, as Quartz's fire-ahead time window): a job with CONCURRENCY
allow fires up to that long before its slot. The run is committed and claimed ahead, and
the worker holds it until the slot (Run.start_in_ms), so a second's burst of 1,000 runs
due in the same millisecond (~80 ms of planning, applying and dispatching on this loop
and the worker's) starts on time, and so do the runs of slots due while a new leader is
elected (the default window is longer than an election). A slot is fired ahead at most
once and alone (`planning.plan_ahead`); exactly-once is unchanged, since the run record is
committed before dispatch as always. What moves is the point of no return: a pause or
delete committed inside a slot's window stops a run fired ahead for it only if no worker
has taken it yet (a pause kills it, a delete drops it); a worker that holds it starts it at
the slot.
Jobs with forbid or replace fire at their slot, because their decision depends on the
earlier run's state then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from core.clock import Clock
from core.gcfreeze import GcFreezer
from core.raft.driver import ProposalUnknown, RaftDriver
from core.raft.errors import RaftError
from core.raft.ready import Role
from core.raft_service import ERR_TRYAGAIN
from core.resp import CommandError
from scheduler import state as S
from scheduler.firing import FirePlanner
from scheduler.jobs import Job
from scheduler.planning import expired, plan_ahead, plan_due
from scheduler.polls import ParkedPoll, ParkedPolls
from scheduler.routing import Advert
from scheduler.state import SchedulerState

__all__ = [
    "DEFAULT_FIRE_AHEAD_MS", "ERR_UNAVAILABLE", "MAX_FIRE_AHEAD_MS", "FiringLoop",
]

log = logging.getLogger("scheduler.server")

MAX_FIRE_SLEEP_S = 0.2  # the loop looks at the jobs at least this often
MAX_FIRE_SLEEP_MS = int(MAX_FIRE_SLEEP_S * 1000)
CHECK_RUNS_S = 0.1  # ... and at the active runs (timeouts, lost workers, retries) at most
# ... but that walk (every active run, thousands with fire-ahead under load) takes at most
# this share of the loop: after a walk of d seconds the next waits d / share at least
CHECK_RUNS_SHARE = 0.1
# jobs fired by one entry: a second's burst of 1,000 due jobs is 4 entries, not 1,000
# (each entry costs the leader and every follower a proposal, an append and an apply)
MAX_FIRES_PER_ENTRY = 256
WAIT_RECHECK_MS = 100  # a job no worker can take is looked at again this often

# the window covers a leader election after a SIGKILL (an election timeout of 0.3-0.6 s,
# then the new leader's read barrier and the workers finding it): the runs of the slots due
# meanwhile were committed and claimed before, and the workers start them on time
DEFAULT_FIRE_AHEAD_MS = 1500
MAX_FIRE_AHEAD_MS = 10_000

ERR_UNAVAILABLE = ERR_TRYAGAIN  # (core.raft_service's TRYAGAIN text)
ERR_FIRE_UNKNOWN = "the fire entry claiming for this poll has no known outcome"


class FiringLoop:
    """The leader's firing loop of one node: `start()`, `await stop()`; `counters` is the
    server's INFO counters, which the loop adds to."""

    def __init__(self, state: SchedulerState, clock: Clock, counters: dict[str, int], *,
                 worker_timeout_ms: int, fire_ahead_ms: int = DEFAULT_FIRE_AHEAD_MS) -> None:
        self.driver: RaftDriver | None = None  # the Raft group it fires through (start)
        self.state = state
        self.clock = clock
        self.counters = counters
        self.worker_timeout_ms = worker_timeout_ms
        self.fired = asyncio.Event()  # set whenever an applied entry fired runs (wakes polls)
        self.parked = ParkedPolls()  # polls whose claims ride on the next fire entry
        self.planner = FirePlanner(fire_ahead_ms)  # which jobs are due (a heap)
        self.waiting: dict[str, str] = {}  # job held for want of a worker -> why (logged)
        self._task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()  # fire entries being committed
        self._anchoring: set[str] = set()  # `@in` jobs whose anchor entry is in flight
        # wakes the loop (an applied entry, a poll to claim for)
        self._jobs_changed = asyncio.Event()
        self._runs_check_at = 0.0  # loop time of the next _expire_and_retry
        self._leading_since_ms = 0  # wall time this node's firing loop last took over
        # worker -> (its replicated last-heard time, this node's monotonic time when it saw
        # that value): a worker is called lost only once silent by this clock too
        self._heard_seen: dict[str, tuple[int, float]] = {}
        # many jobs' run records make a full GC collection a long pause of the loop; records
        # are acyclic, so survivors are frozen out of its reach
        self._gc: GcFreezer | None = None

    def start(self, driver: RaftDriver) -> None:
        """Run the loop as a task, firing through `driver` while this node leads it."""
        self.driver = driver
        self._task = asyncio.create_task(self._fire_loop())

    async def stop(self) -> None:
        """Stop the loop and the fire entries being committed (their polls fail)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._commits):
            task.cancel()
        await asyncio.gather(*self._commits, return_exceptions=True)

    def applied(self, results: list[Any]) -> None:
        """An applied batch's results: wake the polls if runs fired, and the loop."""
        for result in results:
            if isinstance(result, dict):  # fire_many
                result = result["fired"]
            if isinstance(result, list) and result:
                self.fired.set()
        self._jobs_changed.set()

    def wake(self) -> None:
        """Make the loop look again now (a poll parked with runs to claim)."""
        self._jobs_changed.set()

    def leads(self) -> bool:
        """Whether this node leads now."""
        node = self.driver.node if self.driver is not None else None
        return node is not None and node.role is Role.LEADER

    def _group(self) -> RaftDriver:
        assert self.driver is not None, "start() first"
        return self.driver

    async def _fire_loop(self) -> None:
        caught_up_term = -1
        loop = asyncio.get_running_loop()
        self._gc = GcFreezer(loop.time())
        while True:
            self._gc.tick(loop.time())
            try:
                if not self.leads():
                    caught_up_term = -1
                    await asyncio.sleep(MAX_FIRE_SLEEP_S)
                    continue
                term = self._group().node.term  # type: ignore[union-attr]
                if caught_up_term != term:
                    # apply everything earlier leaders committed before planning slots
                    await self._group().read_barrier()
                    caught_up_term = term
                    self._leading_since_ms = self.clock.wall_ms()
                    self._heard_seen = {}  # (every worker gets a timeout from now on)
                    self.planner.refresh(self.state, force=True)
                    log.info("leading in term %d: firing loop running", term)
                self._anchor_pending()
                self._fire_due()
                if asyncio.get_running_loop().time() >= self._runs_check_at:
                    await self._expire_and_retry()
                await self._sleep_until_next()
            except asyncio.CancelledError:
                raise
            except (RaftError, TimeoutError, ProposalUnknown) as exc:
                log.warning("firing loop: %s", exc)
                caught_up_term = -1
                await asyncio.sleep(MAX_FIRE_SLEEP_S)
            except Exception:
                log.exception("firing loop failed; retrying")
                await asyncio.sleep(MAX_FIRE_SLEEP_S)

    def _fire_due(self) -> None:
        """Start committing the fires of every due job, MAX_FIRES_PER_ENTRY jobs to an
        entry (the driver's group commit covers entries proposed together with one fsync).
        The loop does not wait for the commit: jobs that fall due meanwhile fire at once
        (a job in flight is not planned again, see scheduler/firing.py)."""
        now = self.clock.wall_ms()
        self.planner.refresh(self.state)
        fires, names, held = [], [], []
        live: list[Advert] | None = None  # the live workers' adverts, read once a turn
        reasons: dict[tuple[str, str], str | None] = {}  # (command, target) -> why it waits
        for name, job in self.planner.take_due(self.state, now):
            live = self.state.live_adverts(now, self.worker_timeout_ms) if live is None else live
            key = (job.command, job.target)  # (a burst of jobs shares a few: judged once)
            if key not in reasons:
                reasons[key] = self.state.waiting(job, live)
            if self._holds(name, job, now, reasons[key]):
                held.append(name)
                continue
            names.append(name)
            if (fire := self._fire_fields(name, job, now)) is not None:
                fires.append(fire)
        self.planner.hold(held, now + WAIT_RECHECK_MS)
        if len(self.waiting) > len(self.state.jobs):  # jobs deleted while they waited
            self.waiting = {n: r for n, r in self.waiting.items() if n in self.state.jobs}
        if not self.leads() or not (fires or self.parked.eager):
            self.planner.settled(self.state, names)
            return
        chunks = [fires[i:i + MAX_FIRES_PER_ENTRY]
                  for i in range(0, len(fires), MAX_FIRES_PER_ENTRY)] or [[]]
        # the waiting polls claim in the last entry, after every fire of this turn
        polls, claims = self.parked.take(now)
        entries = [S.encode_fire_many(chunk, claims if i == len(chunks) - 1 else ())
                   for i, chunk in enumerate(chunks)]
        task = asyncio.create_task(self._commit_fires(entries, polls, names))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit_fires(self, entries: list[bytes], polls: list[ParkedPoll],
                            names: list[str]) -> None:
        """Commit fire entries; hand the taken polls what the last one claimed for them."""
        try:
            results = await asyncio.gather(*(self._group().execute(e) for e in entries),
                                           return_exceptions=True)
            if not isinstance(results[-1], BaseException):
                ParkedPolls.resolve(polls, results[-1]["claimed"])
                if polls:
                    self.fired.set()  # the taken polls reply now, even if nothing fired
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("firing: %r", result)  # replanned from the handled slot
                    continue
                self.counters["fire_entries"] += 1
                self.counters["runs_fired"] += len(result["fired"])
            self.counters["claims"] += len(polls)
        finally:  # the others (also when cancelled: a taken poll must not wait forever)
            ParkedPolls.fail(polls, CommandError(ERR_UNAVAILABLE.format(ERR_FIRE_UNKNOWN)))
            self.planner.settled(self.state, names)
            self._jobs_changed.set()  # their next slots are known: the loop may sleep less

    def _anchor_pending(self) -> None:
        """Stamp the anchor of each `@in` job added through a node that did not lead (one
        entry each, not waited for): its duration counts from this leader's clock now."""
        for name in self.state.unanchored - self._anchoring:
            self._anchoring.add(name)
            task = asyncio.create_task(self._commit_anchor(name, self.clock.wall_ms()))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _commit_anchor(self, name: str, now_ms: int) -> None:
        try:
            await self._group().execute(S.encode_anchor(name, now_ms))
        except (RaftError, TimeoutError, ProposalUnknown) as exc:
            log.warning("anchor of job %s: %s (tried again)", name, exc)
        finally:
            self._anchoring.discard(name)
            self._jobs_changed.set()

    def _holds(self, name: str, job: Job, now: int, reason: str | None) -> bool:
        """Whether `job` waits: no live worker can take its runs (`reason` says why, None
        if one can: scheduler/routing.py). A one-shot job past its misfire deadline does
        not wait: its fire entry records it expired."""
        if reason is None:
            if self.waiting.pop(name, None) is not None:
                log.info("job %s: a worker can take its runs now", name)
            return False
        once = job.one_shot_ms()
        if once is not None and expired(job, once, now):
            self.waiting.pop(name, None)
            return False
        if self.waiting.get(name) != reason:
            log.info("job %s waits: %s", name, reason)
            self.waiting[name] = reason
        return True

    def _fire_fields(self, name: str, job: Job, now: int) -> dict[str, Any] | None:
        """The fire of `job` (`S.fire_fields`) if a slot is due at `now` (`plan_slots` from
        the replicated handled slot) or within the job's fire-ahead lead, else None."""
        next_ms = self.planner.next_fire(self.state, name, job)
        if next_ms is None or next_ms - self.planner.lead(job) > now:
            return None
        if next_ms > now:
            plan = plan_ahead(job, next_ms)
            self.counters["fires_planned_ahead"] += 1
        else:
            plan = plan_due(job, self.state.handled[name], next_ms, now)
        if plan.next_ms is not None:  # the next slot, once this fire has applied
            self.planner.remember(name, job, plan.handled_ms, plan.next_ms)
        if plan.missed:
            log.warning("job %s: %d slot(s) missed (misfire %s)", name, plan.missed,
                        job.misfire)
        workers = self.live_workers(now, job) if job.broadcast else ()
        return S.fire_fields(name, plan.fire, plan.handled_ms, now, plan.missed, workers)

    async def _expire_and_retry(self) -> None:
        """Commit the due timeouts, lost runs and retries (each a no-op if no longer due),
        all at once (one group commit)."""
        now = self.clock.wall_ms()
        # A new leader gives every worker one timeout to be heard before calling its runs
        # lost: heartbeats sent while no leader could commit them (an election, a whole-
        # cluster restart) are missing from the replicated last-heard times.
        settled = now - self._leading_since_ms >= self.worker_timeout_ms
        began = time.perf_counter()
        entries = self.state.due_entries(now, self.worker_timeout_ms if settled else None,
                                         self._silent_here())
        took = time.perf_counter() - began
        self._runs_check_at = (asyncio.get_running_loop().time()
                               + max(CHECK_RUNS_S, took / CHECK_RUNS_SHARE))
        if entries and self.leads():
            results = await asyncio.gather(*(self._group().execute(e) for e in entries),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def _silent_here(self) -> frozenset[str]:
        """The workers whose replicated last-heard time has not moved for the worker timeout
        by this node's monotonic clock. `lose` entries are proposed only for them: the
        entries' times are wall clocks, and a leader whose wall clock jumped forward would
        otherwise find a worker that keeps heartbeating silent and retry its running
        attempt elsewhere (the fault drill's clock jump)."""
        mono = self.clock.monotonic()
        seen = self._heard_seen
        for worker, heard in self.state.workers.items():
            if seen.get(worker, (None, 0.0))[0] != heard:
                seen[worker] = (heard, mono)
        if len(seen) > len(self.state.workers):
            self._heard_seen = seen = {w: seen[w] for w in self.state.workers}
        limit = self.worker_timeout_ms / 1000
        return frozenset(w for w, (_, at) in seen.items() if mono - at >= limit)

    async def _sleep_until_next(self) -> None:
        now = self.clock.wall_ms()
        self.planner.refresh(self.state)  # (jobs added since the turn began)
        soonest = min(self.planner.soonest() or now + MAX_FIRE_SLEEP_MS,
                      now + MAX_FIRE_SLEEP_MS)
        if self.parked.eager:
            soonest = now  # a poll waits to claim (it may have woken us while we were busy)
        self._jobs_changed.clear()
        delay = max(0.0, (soonest - now) / 1000)
        try:
            async with asyncio.timeout(delay):
                await self._jobs_changed.wait()
        except TimeoutError:
            pass

    def live_workers(self, now_ms: int, job: Job | None = None) -> list[str]:
        """A broadcast's worker list, committed in the entry that fires it: the live
        workers (with `job`, those that can take its runs: scheduler/routing.py)."""
        return self.state.live_workers(now_ms, self.worker_timeout_ms, job)
