"""The scheduler worker: long-polls the cluster for runs, executes them, reports results.

    python -m scheduler worker --scheduler 127.0.0.2:7380,127.0.0.3:7380 [--tags a,b]

`Worker` is the one place where polling, heartbeats, at-most-once delivery, timeouts and
reporting live; what a run does is its `executor` (`Run` -> exit code and output tail).
The shell worker's executor is `shell_executor`; the embedded worker of scheduler.embedded
calls Python handlers instead.

Any node answers (writes are forwarded to the leader); which node each connection goes to
is scheduler/worker_links.py's, on core/failover.py's node list and health: when the one in
use fails, it is marked down and the worker moves to another. Polls go to the leader when
one is found (CLUSTER.INFO of each node, asked when the poll connection opens, and checked
at each heartbeat): there a poll waiting for runs is claimed for by the fire entry itself,
and nothing is forwarded.
`WORKER.POLL id tags timeout_ms resync max_runs SHELL|HANDLERS h1,h2 AHEAD n` returns the
runs the cluster committed to this worker (a claim: a run is claimed once). The poll is its
advert (a shell worker's tags; an embedded worker's tags and handler names): the cluster
hands each worker only runs it can execute (scheduler/routing.py).
After any error the next poll asks with resync=1 so runs whose claim reply was lost come
back; a run id seen before (the same attempt) is never executed again (the last
MAX_REMEMBERED are kept). Results are queued and sent in batches (WORKER.RESULTS, one Raft
entry each) over REPORT_CHANNELS connections.

A run fired ahead of its slot (`scheduler serve --fire-ahead-ms`) waits for the slot
(`start_delay`) without taking a slot of the worker: a poll asks for `max_runs` runs due now
(the free slots) and, after AHEAD, for the rest of its ahead budget (AHEAD_PER_SLOT runs a
slot, at most MAX_AHEAD_RUNS); so it holds the fire-ahead window's runs, and starts them on
time by its own clock while the cluster elects a new leader. Every poll says SHELL or
HANDLERS (a cluster refuses one that says neither: an older worker); to an older cluster
the worker falls back to the poll it takes (`_advert_refused`).

An attempt past its TIMEOUT is cancelled (the shell executor then kills its process group)
and reported as EXIT_TIMED_OUT. The shell executor runs the command through `/bin/sh -c` in
its own process group with SCHED_JOB, SCHED_SCHEDULED_AT (epoch ms), SCHED_RUN_ID,
SCHED_ATTEMPT, SCHED_SHARD and SCHED_SHARDS (shard i of n of a TARGET ALL broadcast; 0 of 1
otherwise) in the environment. Exit code and output tail go back with WORKER.DONE, retried
until the cluster takes it (a repeated report is a no-op there).

The worker heartbeats every `heartbeat_s` even when idle: the cluster counts a worker live
(for lost-run detection and for the worker list of a broadcast) while it hears from it.
The heartbeat's reply names this worker's attempts the cluster killed (CONCURRENCY REPLACE);
their tasks are cancelled as on a TIMEOUT (the group is killed) and nothing is reported.
A heartbeat also lists every run the worker holds (`HOLDING`: received, result not yet
taken), except while a resync poll is due or unanswered; the cluster loses a run it gives
this worker that the list lacks, once claimed long enough ago that no claim reply can still
be on its way (scheduler/state_apply.py `_beat`): a run whose claim reply never came, or
whose result the cluster refused, ends and is retried instead of staying started for good.

Fencing: a shell run's process group dies with the worker process, however it dies
(scheduler/reaper.py). A worker cut off from every node (a partition, not a crash) fences
itself: once `fence_after_s` has passed since it sent the last heartbeat the cluster
answered, or poll it answered with runs (each committed an entry: the cluster last heard
from it no earlier than that; an empty poll reply commits nothing), it cancels every run it
holds, which kills their process groups, and reports each as EXIT_ABANDONED when a node
answers again (the cluster records the attempt as lost and retries it by the job's
RETRIES). `fence_after_s` is the cluster's --worker-timeout-ms less a margin
(`fence_delay_s`), so the runs are dead before the cluster may declare them lost and retry
them elsewhere; a report the cluster gets after that is late and changes nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.clock import Clock, SystemClock
from core.failover import ErrorRules, Verdict
from core.resp_client import ReplyError
from scheduler.runs import EXIT_ABANDONED
from scheduler.shell import EXIT_TIMED_OUT
from scheduler.shell import run_command as run_command
from scheduler.worker_links import NodeLinks
from scheduler.worker_run import ERR_FENCE as ERR_FENCE
from scheduler.worker_run import Executor as Executor
from scheduler.worker_run import Run as Run
from scheduler.worker_run import _as_dict as _as_dict
from scheduler.worker_run import _str as _str
from scheduler.worker_run import failure_message as failure_message
from scheduler.worker_run import fence_delay_s as fence_delay_s
from scheduler.worker_run import shell_executor as shell_executor
from scheduler.worker_run import start_delay as start_delay
from scheduler.worker_slots import SlotGates, Slots

log = logging.getLogger("scheduler.worker")

MAX_REMEMBERED = 10_000  # run ids kept to execute each once
POLL_MS = 1000
CALL_TIMEOUT_S = 15.0  # above POLL_MS plus a forwarded proposal's timeout
# a heartbeat or report unanswered this long goes to another node, well within the worker
SIDE_CALL_TIMEOUT_S = 3.0  # timeout: one waiting on a stale leader got live runs called lost
RETRY_S = 0.2
EXIT_FAILED = 1  # the executor raised
HEARTBEAT_S = 2.0  # WORKER.HEARTBEAT interval
REPORT_CHANNELS = 4  # report batches in flight at once: each waits for a Raft commit
MAX_REPORT_BATCH = 256  # results in one WORKER.RESULTS (the cluster's MAX_RESULTS)
POLL, BEAT, FIRST_REPORT = 0, 1, 2  # connection channels (see Worker.__init__)
STOP_GRACE_S = 10.0  # on SIGTERM, runs in flight get this long to finish and report
FIND_LEADER_TIMEOUT_S = 1.0  # per node asked, when the poll connection opens
ABANDONED_MESSAGE = b"abandoned: the worker was cut off from every node and fenced itself"
FENCE_CHECK_S = 0.1  # how often a fenced worker looks for runs to fence (none arrive cut off)
_RULES = ErrorRules()  # what an error reply means (core/failover.py): TRYAGAIN -> retry
# how a cluster older than handler adverts answers a poll that carries them (an arity error)
ERR_OLD_POLL = "ERR wrong number of arguments for 'worker.poll' command"
# ... and one older than SHELL and AHEAD answers a poll with them (its option error)
ERR_OLD_OPTIONS = "ERR WORKER.POLL takes HANDLERS name,... after max_runs"
# ... and one older than HOLDING answers a heartbeat that lists the runs a worker holds
# (or a cluster refuses the list: the worker stops sending it rather than seem silent)
ERR_OLD_BEATS = ("ERR wrong number of arguments for 'worker.heartbeat' command",
                 "ERR WORKER.HEARTBEAT takes HOLDING")
MAX_HOLDING_SENT = 65_536  # a heartbeat lists the runs held up to this many (the cluster's cap)
AHEAD_PER_SLOT = 32  # runs fired ahead a worker holds per slot, waiting for their slots
MAX_AHEAD_RUNS = 4096  # ... and at most, whatever its slots
MAX_POLL_AHEAD = 256  # runs fired ahead one poll takes: a reply's runs are set up in one go
NEW_CLUSTER, HANDLERS_ONLY, NO_OPTIONS = 0, 1, 2  # poll options a cluster takes: all, ...


class Worker:
    """Poll, execute, report. `run(stop)` returns once `stop` is set and runs finished.
    `executor` runs one attempt (default: the job's command through the shell)."""

    def __init__(self, servers: Sequence[tuple[str, int]], tags: Sequence[str] = (), *,
                 worker_id: str | None = None, password: str | None = None,
                 concurrency: int = 8, heartbeat_s: float = HEARTBEAT_S,
                 executor: Executor = shell_executor, clock: Clock | None = None,
                 fence_after_s: float | None = None,
                 handlers: Callable[[], Iterable[str]] | None = None) -> None:
        if not servers:
            raise ValueError("no scheduler address")
        self.executor = executor
        self.handler_names = handlers  # None: a shell worker; else its handlers, advertised
        self._cluster_level = NEW_CLUSTER  # the poll options it takes (_advert_refused)
        self.clock = clock or SystemClock()  # wall time: when a run fired ahead starts
        self.servers = list(servers)
        self.tags = list(tags)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.password = password
        self.heartbeat_s = heartbeat_s
        self.concurrency = concurrency
        self.slots = Slots(concurrency)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: dict[str, asyncio.Task[None]] = {}  # "run_id#attempt" -> its task
        self._held = 0  # runs claimed and not yet executed: a poll asks for the rest
        self._gated = 0  # ... of which waiting for their slot (fired ahead): no slot taken
        self.ahead_budget = min(MAX_AHEAD_RUNS, concurrency * AHEAD_PER_SLOT)
        self._freed = asyncio.Event()  # set when a held run ends
        self._gates = SlotGates(self.clock)  # runs fired ahead wait there for their slots
        # one connection per channel: POLL, BEAT, then REPORT_CHANNELS for reports, so a
        # report never waits behind a long poll and several commit at once (one fsync)
        self.links = NodeLinks(self.servers, FIRST_REPORT + REPORT_CHANNELS, POLL,
                               password=password, call_timeout_s=CALL_TIMEOUT_S,
                               find_timeout_s=FIND_LEADER_TIMEOUT_S, as_dict=_as_dict,
                               side_timeout_s=SIDE_CALL_TIMEOUT_S)
        # (result, its run's key) queued for the reporters; _unsent counts those not taken
        self._results: asyncio.Queue[tuple[tuple[str, int, bytes, int], str]] = asyncio.Queue()
        self._unsent = 0
        self._sent = asyncio.Event()  # set as a reporter's batch is taken
        self._repick = False  # the node polled no longer leads: reconnect before the next poll
        self.fence_after_s = fence_after_s  # None: never fence (see the module docstring)
        self._contact = time.monotonic()  # when the last call the cluster answered was sent
        self.fenced: set[str] = set()  # "run_id#attempt" of the runs this worker abandoned
        # "run_id#attempt" of every run received whose result the cluster has not taken:
        # each heartbeat lists them (HOLDING), and the cluster loses runs it gives this
        # worker that are not listed (scheduler/state_apply.py `_beat`)
        self.holding: set[str] = set()
        self._beat_holding = True  # False: the cluster is older than HOLDING
        # the next poll asks with resync, or one that does is unanswered: runs this worker
        # does not know may come back in its reply, so a heartbeat lists none meanwhile
        self._resync = True

    async def call(self, *args: object, channel: int = POLL) -> Any:
        """One command on the channel's node (see scheduler/worker_links.py)."""
        return await self.links.call(channel, *args)

    async def _check_leader(self) -> None:
        """If the node polled no longer leads, poll the leader from the next poll on."""
        if not self.links.poll_node:
            return
        reply = await self.call("CLUSTER.INFO", channel=BEAT)
        try:
            leader = int(_as_dict(reply).get("leader") or 0)
        except (TypeError, ValueError):
            return  # not a reply we know: keep polling where we are
        if leader not in (0, self.links.poll_node):
            self._repick = True

    def _drop(self, channel: int = POLL) -> None:
        self.links.drop(channel)

    async def run(self, stop: asyncio.Event) -> None:
        helpers = [asyncio.create_task(self._heartbeats(stop))]
        if self.fence_after_s is not None:
            helpers.append(asyncio.create_task(self._fence(self.fence_after_s)))
        helpers += [asyncio.create_task(self._reporter(channel))
                    for channel in range(FIRST_REPORT, len(self.links.conns))]
        try:
            await self._run(stop)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for channel in range(len(self.links.conns)):
                self._drop(channel)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """Tell the cluster this worker is alive, idle or not: a worker silent for the
        cluster's --worker-timeout-ms loses its runs to a retry elsewhere, and only live
        workers get a shard of a broadcast. A failed heartbeat is sent again to the next
        node at once (after RETRY_S), not a whole interval later."""
        wait = self.heartbeat_s
        while not stop.is_set():
            await asyncio.sleep(wait)
            try:
                sent = time.monotonic()
                killed = await self.call("WORKER.HEARTBEAT", self.worker_id,
                                         *self._holding_args(), channel=BEAT)
                self._answered(sent)
                wait = self.heartbeat_s
                await self._check_leader()
            except ReplyError as exc:
                if self._beat_holding and exc.message.startswith(ERR_OLD_BEATS):
                    log.warning("the cluster is an older version: heartbeats without HOLDING")
                    self._beat_holding = False
                    wait = 0
                    continue
                log.info("heartbeat failed (%s); trying the next node", exc)
                self._drop(BEAT)
                wait = RETRY_S
                continue
            except (OSError, TimeoutError) as exc:
                log.info("heartbeat failed (%s); trying the next node", exc)
                self._drop(BEAT)
                wait = RETRY_S
                continue
            for key in killed if isinstance(killed, list) else ():  # (old clusters: OK)
                task = self.running.get(_str(key))
                if task is not None:  # cancelling it kills the run's process group
                    log.info("run %s: killed by the cluster (replaced)", _str(key))
                    task.cancel()

    def _holding_args(self) -> tuple[str, ...]:
        """The heartbeat's words after the worker id: HOLDING, this clock's time and every
        run held; none while a resync poll is due or unanswered (its reply may hand back
        runs not listed), to a cluster older than HOLDING, or past MAX_HOLDING_SENT runs."""
        if self._resync or not self._beat_holding or len(self.holding) > MAX_HOLDING_SENT:
            return ()
        return ("HOLDING", str(int(self.clock.wall_s() * 1000)), ",".join(self.holding))

    async def _run(self, stop: asyncio.Event) -> None:
        self._resync = True
        while not stop.is_set():
            try:
                while self._held - self._gated >= self.concurrency:
                    self._freed.clear()
                    await self._freed.wait()
                if self._repick:  # (between polls: no claim reply can be lost)
                    self._repick = False
                    self._drop(POLL)
                wanted = self.concurrency - (self._held - self._gated)
                sent = time.monotonic()
                runs = await self.call("WORKER.POLL", self.worker_id, ",".join(self.tags),
                                       POLL_MS, 1 if self._resync else 0, wanted,
                                       *self._advert_args())
                if runs:  # claims were committed; an empty reply may come from a stale
                    self._answered(sent)  # leader that can commit nothing
                self._resync = False
            except (OSError, ReplyError, TimeoutError) as exc:
                log.info("poll failed (%s); trying the next node", exc)
                if isinstance(exc, ReplyError) and self._advert_refused(exc):
                    continue  # polled again at once, without the handlers
                self._drop()
                self._resync = True
                await asyncio.sleep(RETRY_S)
                continue
            for run in runs or ():
                self._start(run)
            if runs:  # let them start (short ones end) before asking for the free slots
                await asyncio.sleep(0)
        await self._finish(asyncio.get_running_loop().time() + STOP_GRACE_S)

    async def _finish(self, deadline: float) -> None:
        """On stop: let the runs held finish, and their results be taken, until the loop's
        `deadline`; then cancel what still runs."""
        loop = asyncio.get_running_loop()
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        while self._unsent and (left := deadline - loop.time()) > 0:
            self._sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent.wait(), left)

    def _advert_args(self) -> tuple[str, ...]:
        """The poll's words after max_runs: the advert (SHELL, or an embedded worker's
        HANDLERS and names) and AHEAD with the room left for runs fired ahead; fewer to a
        cluster older than them (`_advert_refused`)."""
        level = self._cluster_level
        if level == NO_OPTIONS or (level == HANDLERS_ONLY and self.handler_names is None):
            return ()
        if self.handler_names is None:
            advert: tuple[str, ...] = ("SHELL",)
        else:
            advert = ("HANDLERS", ",".join(sorted(self.handler_names())))
        if level == HANDLERS_ONLY:
            return advert
        room = max(0, min(MAX_POLL_AHEAD, self.ahead_budget - self._gated))
        return (*advert, "AHEAD", str(room))

    def _advert_refused(self, exc: ReplyError) -> bool:
        """Whether `exc` is an older cluster refusing the poll's options: from then on the
        worker polls with what that cluster takes (its HANDLERS, or nothing: then it routes
        by tags alone, and runs of jobs without a handler here may arrive)."""
        if (self._cluster_level == NO_OPTIONS
                or not exc.message.startswith((ERR_OLD_POLL, ERR_OLD_OPTIONS))):
            return False
        self._cluster_level += 1  # one step down: without AHEAD (and SHELL), then without all
        log.warning("the cluster is an older version: polling without %s",
                    "AHEAD" if self._cluster_level == HANDLERS_ONLY else "options")
        return True

    def _answered(self, sent: float) -> None:
        """A heartbeat, or a poll that got runs, sent at monotonic `sent` was answered: the
        cluster has committed hearing from this worker since then."""
        self._contact = max(self._contact, sent)

    async def _fence(self, fence_after_s: float) -> None:
        """Abandon every run held once nothing sent for `fence_after_s` got an answer."""
        while True:
            wait = self._contact + fence_after_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._fence_runs()
            await asyncio.sleep(FENCE_CHECK_S)

    def _fence_runs(self) -> None:
        """Cancel every run in `running` not fenced yet; each reports itself abandoned.
        Only runs whose task has begun are there (`_execute` adds itself): a task cancelled
        before its first step never enters its body, so it would neither report nor free
        its place, and its run would stay started in the cluster for good."""
        for key, task in list(self.running.items()):
            if key not in self.fenced:
                log.warning("run %s: cut off from every node for %.1f s: killed (fenced), "
                            "reported as abandoned on reconnection", key,
                            time.monotonic() - self._contact)
                self.fenced.add(key)
                task.cancel()

    def _start(self, raw: list[Any]) -> None:
        try:
            run = Run.from_wire(raw)
        except (ValueError, TypeError, IndexError):  # not from a cluster we know: no run
            log.error("poll reply item not understood, skipped: %r", raw)
            return
        key = f"{run.run_id}#{run.attempt}"  # each attempt of a run executes once
        if key in self.seen:
            return  # delivered twice: executed once
        self.seen[key] = None
        while len(self.seen) > MAX_REMEMBERED:
            self.seen.popitem(last=False)
        self.holding.add(key)
        self._held += 1
        gate = self._slot_gate(run)
        if gate is not None:
            self._gated += 1
        # (no done callback: each would cost a loop callback per run; it leaves `tasks`
        # itself, as it ends)
        self.tasks.add(asyncio.create_task(self._execute(run, gate, key)))

    def _slot_gate(self, run: Run) -> asyncio.Future[None] | None:
        """What a run fired ahead waits on to start at its slot (None: start now)."""
        delay = start_delay(run, self.clock.wall_s())
        return self._gates.gate(run.scheduled_at_ms, delay) if delay > 0 else None

    async def _execute(self, run: Run, gate: asyncio.Future[None] | None, key: str) -> None:
        """Run one attempt (at its slot, if gated) and queue its result. The run is in
        `running` (where the fence and the cluster's kills find it) from this task's first
        step on and until it ends, and in `holding` until the cluster has taken its result
        (`_reporter`). Nothing between the gate and the handler allocates or waits when a
        slot is free: at an aligned slot each run's step delays the rest of the burst."""
        task = asyncio.current_task()
        if task is not None:
            self.running[key] = task
        try:
            if gate is not None:  # fired ahead: it starts at its slot
                try:
                    await gate
                finally:
                    self._gated -= 1
            if not self.slots.take_now():
                await self.slots.take()
            try:
                code, output = await self._attempt(run)
            finally:
                self.slots.release()
        except asyncio.CancelledError:
            if key not in self.fenced or task is None:
                self.holding.discard(key)  # killed by the cluster, or stopped: no report
                raise
            task.uncancel()  # fenced: its group is dead; report it once reconnected
            code, output = EXIT_ABANDONED, ABANDONED_MESSAGE
        finally:
            self._held -= 1
            self._freed.set()
            self.running.pop(key, None)  # ended: nothing to kill
            self.tasks.discard(task)  # type: ignore[arg-type]
        self._unsent += 1
        self._results.put_nowait(((run.run_id, code, output, run.attempt), key))

    async def _attempt(self, run: Run) -> tuple[int, bytes]:
        """The executor under the run's TIMEOUT (on expiry its task is cancelled). An
        exception it raises is a failure whose output is the traceback's last line."""
        deadline = asyncio.timeout(run.timeout_s) if run.timeout_s else None
        try:
            if deadline is None:  # (no timer to set and cancel for each run)
                return await self.executor(run)
            async with deadline:
                return await self.executor(run)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                return EXIT_TIMED_OUT, b"timed out"
            log.info("run %s failed: %r", run.run_id, exc)
            return EXIT_FAILED, failure_message(exc).encode()

    async def _reporter(self, channel: int) -> None:
        """Send the queued results, up to MAX_REPORT_BATCH in one WORKER.RESULTS (one Raft
        entry), retried until the cluster takes them (a repeated report is a no-op)."""
        while True:
            batch = [await self._results.get()]
            while len(batch) < MAX_REPORT_BATCH and not self._results.empty():
                batch.append(self._results.get_nowait())
            args = [value for result, _ in batch for value in result]
            while True:
                try:
                    await self.call("WORKER.RESULTS", *args, channel=channel)
                    break
                except ReplyError as exc:
                    if _RULES.verdict(exc)[0] is not Verdict.NOT_NOW:
                        log.error("the cluster refused %d result(s): %s", len(batch), exc)
                        break  # it never will take them: their runs time out or are lost
                    log.info("report of %d result(s) failed (%s); retrying", len(batch), exc)
                    await asyncio.sleep(RETRY_S)
                except (OSError, TimeoutError) as exc:
                    log.info("report of %d result(s) failed (%s); retrying", len(batch), exc)
                    self._drop(channel)
                    await asyncio.sleep(RETRY_S)
            for _, key in batch:  # taken (or refused for good): no longer held here
                self.holding.discard(key)
                self.fenced.discard(key)
            self._unsent -= len(batch)
            self._sent.set()
