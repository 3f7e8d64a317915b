"""The scheduler daemon's asyncio layer: its state machine and commands on the RESP-on-Raft
service (core/raft_service.py), and the firing loop.

Every node answers every command. Writes (JOB.ADD/DEL/PAUSE/RESUME/RUN, worker claims and
results) are Raft entries the service forwards to the leader from any node; reads
(JOB.GET/LIST/HISTORY) wait for the service's read barrier, then read the local state. The
service answers TRYAGAIN while there is no leader or quorum, the CLUSTER.* commands, and
keeps the nodes' client address book.

The server holds its parts and calls them by name: the leader's firing loop
(scheduler/fireloop.py, `self.firing`) commits the fires of the due jobs in a few entries,
which also carry the claims of the workers' polls waiting here (scheduler/polls.py): one
commit fires and dispatches. The WORKER.* handlers are scheduler/worker_commands.py
(`self.workers`).
Dispatch is the commit of a worker's claim (see scheduler/state.py): a leader that lost its
quorum cannot commit one, so it cannot dispatch, and a run is claimed at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from core.clock import Clock
from core.cluster_commands import ERR_ADDRESS, ERR_MEMBER, ERR_NODE_ID, ERR_NOT_MEMBER
from core.command_table import key_at
from core.raft.driver import NotLeaderError, RaftDriver
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_commands import parse_int
from core.resp_server import Command, Limits
from scheduler import state as S
from scheduler.arguments import text_arg
from scheduler.fireloop import DEFAULT_FIRE_AHEAD_MS, FiringLoop
from scheduler.jobs import Job, JobError, parse_job_add
from scheduler.runs import RunRecord
from scheduler.state import SchedulerState
from scheduler.worker_commands import WorkerCommands

log = logging.getLogger("scheduler.server")

VERSION = "0.1.0"
# Command flags of the table's rows (Redis's words): writes go through the Raft log.
WRITE = frozenset({"write"})
READ = frozenset({"readonly"})
DEFAULT_HISTORY_COUNT = 10
DEFAULT_WORKER_TIMEOUT_MS = 10_000

ERR_NO_JOB = "ERR no such job '{}'"
ERR_COUNT = "ERR count must be a positive integer"
WITHSTATUS = "WITHSTATUS"
ERR_LIST_OPTION = f"ERR JOB.LIST takes no argument but {WITHSTATUS}"


def job_fields(job: Job, handled_ms: int, next_ms: int | None) -> dict[str, object]:
    """JOB.GET's reply: the job's fields plus its handled and next slot (the server adds
    its status and, while it waits for a worker, why: scheduler/state_queries.py)."""
    fields: dict[str, object] = {
        k: (int(v) if isinstance(v, bool) else v) for k, v in job.to_dict().items()
    }
    fields["handled_ms"] = handled_ms
    fields["next_ms"] = next_ms if next_ms is not None else -1
    return fields


def run_fields(record: RunRecord) -> dict[str, object]:
    out: dict[str, object] = {"run_id": record.run_id}
    for key, value in record.to_dict().items():
        out[key] = -1 if value is None else value
    return out


class SchedulerServer:
    """One scheduler node: `start()`, then `stop()`. It holds the RESP-on-Raft service,
    the firing loop and the worker commands, and answers the JOB.* commands itself."""

    def __init__(self, driver_factory: Any, clock: Clock, *, password: str | None = None,
                 max_clients: int = 10_000,
                 worker_timeout_ms: int = DEFAULT_WORKER_TIMEOUT_MS,
                 fire_ahead_ms: int = DEFAULT_FIRE_AHEAD_MS) -> None:
        self.state = SchedulerState()
        self.clock = clock
        self.counters = {"fire_entries": 0, "runs_fired": 0, "fires_planned_ahead": 0,
                         "claims": 0, "results": 0, "heartbeats": 0}
        self.firing = FiringLoop(self.state, clock, self.counters,
                                 worker_timeout_ms=worker_timeout_ms,
                                 fire_ahead_ms=fire_ahead_ms)
        self.workers = WorkerCommands(self.firing, self._write, self.state, clock,
                                      self.counters)
        self.service = RaftService("scheduler", VERSION, self, driver_factory,
                                   self.commands(), password=password,
                                   limits=Limits(max_clients=max_clients), info=self.info)
        self.driver: RaftDriver = self.service.driver
        self.resp = self.service.resp

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        await self.service.start(host, port)
        self.firing.start(self.driver)

    async def stop(self) -> None:
        await self.firing.stop()
        # The service hands leadership over before draining clients: a worker's long poll
        # can hold the drain for a second, and no node would fire meanwhile.
        await self.service.stop()

    # -- the state machine the service replicates (core.service_machine.StateMachine) -------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """The apply hook: the state machine, plus wake-ups for waiters."""
        results = self.state.apply(entries)
        self._adopt_legacy_clients()
        self.firing.applied(results)
        return results

    def snapshot(self) -> Callable[[], bytes]:
        """The snapshot hook: a view captured now, encoded off the loop by the driver."""
        return self.state.capture_snapshot()

    def restore(self, blob: bytes) -> None:
        """The restore hook."""
        self.state.restore(blob)
        self._adopt_legacy_clients()

    def _adopt_legacy_clients(self) -> None:
        """Client addresses of old "member" entries and snapshots (the address book lived in
        the scheduler's state before core.raft_service kept it) move into the service's."""
        if self.state.clients:
            self.service.book.merge_legacy(self.state.clients)
            self.state.clients.clear()

    # -- helpers ----------------------------------------------------------------------------

    async def _write(self, entry: bytes) -> Any:
        """Commit `entry` (forwarded to the leader); an error text result becomes the reply,
        no leader or quorum TRYAGAIN (core.raft_service)."""
        return await self.service.write(entry)

    async def _barrier(self) -> None:
        await self.service.barrier()

    def _job(self, raw: bytes) -> Job:
        name = text_arg(raw)
        job = self.state.jobs.get(name)
        if job is None:
            raise CommandError(ERR_NO_JOB.format(name))
        return job

    # -- commands ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [
            # A job's name is its key (key specs), as a cluster client would route it.
            Command("JOB.ADD", self.cmd_add, -4, WRITE, key_specs=(key_at(1, "RW", "insert"),),
                    summary="JOB.ADD name schedule command [option value ...]"),
            Command("JOB.GET", self.cmd_get, 2, READ, key_specs=(key_at(1, "RO", "access"),),
                    summary="JOB.GET name: the job's fields"),
            Command("JOB.LIST", self.cmd_list, -1, READ, max_arity=2,
                    summary="JOB.LIST [WITHSTATUS]: the job names (WITHSTATUS: [name, status] "
                    "pairs)"),
            Command("JOB.DEL", self.cmd_del, 2, WRITE, key_specs=(key_at(1, "RM", "delete"),),
                    summary="JOB.DEL name"),
            Command("JOB.PAUSE", self.cmd_pause, 2, WRITE,
                    key_specs=(key_at(1, "RW", "update"),), summary="JOB.PAUSE name"),
            Command("JOB.RESUME", self.cmd_resume, 2, WRITE,
                    key_specs=(key_at(1, "RW", "update"),), summary="JOB.RESUME name"),
            Command("JOB.RUN", self.cmd_run, 2, WRITE, key_specs=(key_at(1, "RW", "access"),),
                    summary="JOB.RUN name: run once, now"),
            Command("JOB.HISTORY", self.cmd_history, -2, READ, max_arity=3,
                    key_specs=(key_at(1, "RO", "access"),),
                    summary="JOB.HISTORY name [count]: the latest runs, newest first"),
            Command("WORKER.HEARTBEAT", self.workers.cmd_heartbeat, -2, WRITE, max_arity=5,
                    summary="WORKER.HEARTBEAT worker_id [HOLDING sent_ms run_id#attempt,"
                    "...]: the worker is alive (and holds those runs); the reply names its "
                    "attempts killed by REPLACE (run_id#attempt)"),
            Command("WORKER.POLL", self.workers.cmd_poll, -2, WRITE | {"blocking"},
                    max_arity=10, summary="WORKER.POLL worker_id tags timeout_ms resync "
                    "max_runs SHELL|HANDLERS name,... [AHEAD n]"),
            Command("WORKER.RESULTS", self.workers.cmd_results, -5, WRITE,
                    summary="WORKER.RESULTS run_id exit_code output_tail attempt [...]"),
            Command("WORKER.DONE", self.workers.cmd_done, -3, WRITE, max_arity=5,
                    summary="WORKER.DONE run_id exit_code [output_tail [attempt]]"),
        ]

    def cmd_add(self, session: Any, args: list[bytes]) -> Any:
        try:
            job = parse_job_add(args[1:], self.clock.wall_ms())
        except JobError as exc:
            raise CommandError(exc.message) from None
        # an `@in` job counts from the leader's clock: here if this node leads, else the
        # leader stamps it once the add is committed (scheduler/fireloop.py)
        anchor = job.counts_from_add() and not self.firing.leads()

        async def run() -> Any:
            await self._write(S.encode_add(job, anchor))
            return OK

        return run()

    def cmd_get(self, session: Any, args: list[bytes]) -> Any:
        async def run() -> Any:
            await self._barrier()
            job = self._job(args[1])
            handled = self.state.handled[job.name]
            unset = job.paused or job.name in self.state.unanchored
            next_ms = None if unset else job.next_fire(handled)
            fields = job_fields(job, handled, next_ms)
            fields["status"], fields["waiting"] = self._status(job.name)
            return fields

        return run()

    def cmd_list(self, session: Any, args: list[bytes]) -> Any:
        """JOB.LIST [WITHSTATUS]: the job names, sorted; WITHSTATUS: [name, status] each."""
        with_status = len(args) == 2
        if with_status and text_arg(args[1]).upper() != WITHSTATUS:
            raise CommandError(ERR_LIST_OPTION)

        async def run() -> Any:
            await self._barrier()
            names = sorted(self.state.jobs)
            if not with_status:
                return names
            return [[name, self._status(name)[0]] for name in names]

        return run()

    def _status(self, name: str) -> tuple[str, str]:
        """(status, why it waits) of a job, by this node's clock (state_queries)."""
        return self.state.job_status(name, self.clock.wall_ms(),
                                     self.firing.worker_timeout_ms)

    def _name_op(self, op: str, args: list[bytes]) -> Any:
        name = text_arg(args[1])

        async def run() -> Any:
            await self._write(S.encode_name(op, name, self.clock.wall_ms()))
            return OK

        return run()

    def cmd_del(self, session: Any, args: list[bytes]) -> Any:
        return self._name_op(S.OP_DEL, args)

    def cmd_pause(self, session: Any, args: list[bytes]) -> Any:
        return self._name_op(S.OP_PAUSE, args)

    def cmd_resume(self, session: Any, args: list[bytes]) -> Any:
        return self._name_op(S.OP_RESUME, args)

    def cmd_run(self, session: Any, args: list[bytes]) -> Any:
        name = text_arg(args[1])

        async def run() -> Any:
            now, job = self.clock.wall_ms(), self.state.jobs.get(name)
            workers = (self.firing.live_workers(now, job) if job is not None and job.broadcast
                       else ())
            fired = await self._write(S.encode_run(name, now, workers))
            if not fired:
                return None
            return RunRecord.from_dict(fired[0]).run_id

        return run()

    def cmd_history(self, session: Any, args: list[bytes]) -> Any:
        count = DEFAULT_HISTORY_COUNT
        if len(args) == 3:
            count = parse_int(args[2], ERR_COUNT)
            if count < 1:
                raise CommandError(ERR_COUNT)

        async def run() -> Any:
            await self._barrier()
            job = self._job(args[1])
            return [run_fields(r) for r in self.state.history(job.name, count)]

        return run()

    # -- INFO ---------------------------------------------------------------------------------

    def info(self) -> dict[str, dict[str, object]]:
        status = self.driver.status() if self.driver.node is not None else {}
        return {
            "Scheduler": {
                "node_id": status.get("id", ""),
                "role": status.get("role", ""),
                "leader": status.get("leader", ""),
                "term": status.get("term", ""),
                "commit_index": status.get("commit", ""),
                "applied_index": status.get("applied", ""),
                "members": ",".join(map(str, status.get("members", []))),
                "jobs": len(self.state.jobs),
                "active_runs": self.state.active_runs(),
                "live_workers": len(self.firing.live_workers(self.clock.wall_ms())),
                "fire_ahead_ms": self.firing.planner.fire_ahead_ms,
                **self.counters,
            }
        }


# the CLUSTER.* errors, re-exported for the tests (the commands are core.cluster_commands')
__all__ = ["ERR_ADDRESS", "ERR_MEMBER", "ERR_NODE_ID", "ERR_NOT_MEMBER", "NotLeaderError",
           "SchedulerServer"]
