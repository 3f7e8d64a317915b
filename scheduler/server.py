"""The scheduler daemon's asyncio layer: Raft driver, RESP commands and the firing loop.

Every node answers every command. Writes (JOB.ADD/DEL/PAUSE/RESUME/RUN, worker claims and
results) are Raft entries proposed with `forward=True`, so a follower hands them to the
leader; reads (JOB.GET/LIST/HISTORY) wait for a read barrier, then read the local state.

The leader's firing loop (`_fire_loop`): once it leads and has applied everything its
predecessors committed (a read barrier), it repeatedly computes, for each job whose next
slot is due, `jobs.plan_slots` from the replicated handled slot and commits a fire entry.
Dispatch is the commit of a worker's claim (see scheduler/state.py): a leader that lost its
quorum cannot commit one, so it cannot dispatch, and a run is claimed at most once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from core.clock import Clock
from core.raft.driver import NotLeaderError, ProposalUnknown, RaftDriver
from core.raft.errors import RaftError
from core.raft.ready import Role
from core.resp import OK, CommandError
from core.resp_commands import parse_int
from core.resp_server import Command, Limits, RespServer
from scheduler import state as S
from scheduler.jobs import Job, JobError, RunRecord, parse_job_add, plan_slots
from scheduler.state import SchedulerState

log = logging.getLogger("scheduler.server")

VERSION = "0.1.0"
MAX_FIRE_SLEEP_S = 0.2  # the loop looks at the jobs at least this often
MAX_POLL_MS = 30_000
DEFAULT_POLL_MS = 1000
MAX_OUTPUT_BYTES = 1024
DEFAULT_HISTORY_COUNT = 10
DEFAULT_WORKER_TIMEOUT_MS = 10_000

ERR_NO_JOB = "ERR no such job '{}'"
ERR_UNAVAILABLE = "TRYAGAIN the cluster cannot take the request now: {}"
ERR_RUN_ID = "ERR bad run id '{}'"
ERR_COUNT = "ERR count must be a positive integer"
ERR_TIMEOUT_MS = f"ERR timeout must be an integer from 0 to {MAX_POLL_MS} (ms)"
ERR_UTF8 = "ERR arguments must be UTF-8 text"
ERR_NODE_ID = "ERR node id must be a positive integer"
ERR_ADDRESS = "ERR bad address '{}': expected HOST:PORT"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(ERR_UTF8) from None


def _address(raw: bytes) -> tuple[str, int]:
    text = _text(raw)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(ERR_ADDRESS.format(text))
    return host, int(port)


def _node_id(raw: bytes) -> int:
    node_id = parse_int(raw, ERR_NODE_ID)
    if node_id < 1:
        raise CommandError(ERR_NODE_ID)
    return node_id


def job_fields(job: Job, handled_ms: int, next_ms: int | None) -> dict[str, object]:
    """JOB.GET's reply: the job's fields plus its handled and next slot."""
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
    """One scheduler node: `start()`, then `stop()`."""

    def __init__(self, driver_factory: Any, clock: Clock, *, password: str | None = None,
                 max_clients: int = 10_000,
                 worker_timeout_ms: int = DEFAULT_WORKER_TIMEOUT_MS) -> None:
        self.worker_timeout_ms = worker_timeout_ms
        self.state = SchedulerState()
        self.clock = clock
        self.driver: RaftDriver = driver_factory(self.apply, self.state.snapshot,
                                                 self.state.restore)
        self.resp = RespServer("scheduler", VERSION, self.commands(), password=password,
                               limits=Limits(max_clients=max_clients), info=self.info)
        self.fired = asyncio.Event()  # set whenever an applied entry fired runs
        self.counters = {"fire_entries": 0, "runs_fired": 0, "claims": 0, "results": 0,
                         "heartbeats": 0}
        self._fire_task: asyncio.Task[None] | None = None
        self._jobs_changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        await self.driver.start()
        await self.resp.start(host, port)
        self._fire_task = asyncio.create_task(self._fire_loop())

    async def stop(self) -> None:
        if self._fire_task is not None:
            self._fire_task.cancel()
            await asyncio.gather(self._fire_task, return_exceptions=True)
        await self.resp.stop()
        await self.driver.stop(transfer=True)

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """The driver's apply hook: the state machine, plus wake-ups for waiters."""
        results = self.state.apply(entries)
        for result in results:
            if isinstance(result, list) and result:
                self.fired.set()
        self._jobs_changed.set()
        return results

    # -- the firing loop (leader only) ---------------------------------------------------------

    def _leads(self) -> bool:
        node = self.driver.node
        return node is not None and node.role is Role.LEADER

    async def _fire_loop(self) -> None:
        caught_up_term = -1
        while True:
            try:
                if not self._leads():
                    caught_up_term = -1
                    await asyncio.sleep(MAX_FIRE_SLEEP_S)
                    continue
                term = self.driver.node.term  # type: ignore[union-attr]
                if caught_up_term != term:
                    # apply everything earlier leaders committed before planning slots
                    await self.driver.read_barrier()
                    caught_up_term = term
                    log.info("leading in term %d: firing loop running", term)
                await self._fire_due()
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

    async def _fire_due(self) -> None:
        for name, job in list(self.state.jobs.items()):
            if job.paused or job.after or not self._leads():
                continue
            handled = self.state.handled.get(name)
            if handled is None:
                continue
            now = self.clock.wall_ms()
            next_ms = job.next_fire(handled)
            if next_ms is None or next_ms > now:
                continue
            plan = plan_slots(job, handled, now)
            entry = S.encode_fire(name, plan.fire, plan.handled_ms, now, plan.missed)
            fired = await self.driver.execute(entry)
            self.counters["fire_entries"] += 1
            self.counters["runs_fired"] += len(fired or ())
            if plan.missed:
                log.warning("job %s: %d slot(s) missed (misfire %s)", name, plan.missed,
                            job.misfire)

    async def _expire_and_retry(self) -> None:
        """Commit the due timeouts, lost runs and retries (each a no-op if no longer due)."""
        for entry in self.state.due_entries(self.clock.wall_ms(), self.worker_timeout_ms):
            if not self._leads():
                return
            await self.driver.execute(entry)

    async def _sleep_until_next(self) -> None:
        now = self.clock.wall_ms()
        soonest = now + int(MAX_FIRE_SLEEP_S * 1000)
        for name, job in self.state.jobs.items():
            if job.paused or job.after:
                continue
            next_ms = job.next_fire(self.state.handled.get(name, now))
            if next_ms is not None:
                soonest = min(soonest, next_ms)
        self._jobs_changed.clear()
        delay = max(0.0, (soonest - now) / 1000)
        try:
            async with asyncio.timeout(delay):
                await self._jobs_changed.wait()
        except TimeoutError:
            pass

    # -- helpers ----------------------------------------------------------------------------

    async def _write(self, entry: bytes) -> Any:
        """Commit `entry` (forwarded to the leader); an error text result becomes the reply."""
        try:
            result = await self.driver.execute(entry, forward=True)
        except (RaftError, TimeoutError) as exc:
            raise CommandError(ERR_UNAVAILABLE.format(exc)) from None
        if isinstance(result, str):
            raise CommandError(result)
        return result

    async def _barrier(self) -> None:
        try:
            await self.driver.read_barrier()
        except (RaftError, TimeoutError) as exc:
            raise CommandError(ERR_UNAVAILABLE.format(exc or "no leader")) from None

    def _job(self, raw: bytes) -> Job:
        name = _text(raw)
        job = self.state.jobs.get(name)
        if job is None:
            raise CommandError(ERR_NO_JOB.format(name))
        return job

    # -- commands ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [
            Command("JOB.ADD", self.cmd_add, -4,
                    summary="JOB.ADD name schedule command [option value ...]"),
            Command("JOB.GET", self.cmd_get, 2, summary="JOB.GET name: the job's fields"),
            Command("JOB.LIST", self.cmd_list, 1, summary="The job names"),
            Command("JOB.DEL", self.cmd_del, 2, summary="JOB.DEL name"),
            Command("JOB.PAUSE", self.cmd_pause, 2, summary="JOB.PAUSE name"),
            Command("JOB.RESUME", self.cmd_resume, 2, summary="JOB.RESUME name"),
            Command("JOB.RUN", self.cmd_run, 2, summary="JOB.RUN name: run once, now"),
            Command("JOB.HISTORY", self.cmd_history, -2,
                    summary="JOB.HISTORY name [count]: the latest runs, newest first"),
            Command("CLUSTER.INFO", self.cmd_cluster_info, 1,
                    summary="Members, leader, term, commit index"),
            Command("CLUSTER.ADD", self.cmd_cluster_add, -3,
                    summary="CLUSTER.ADD id host:peerport [host:clientport]: add a voter"),
            Command("CLUSTER.REMOVE", self.cmd_cluster_remove, 2,
                    summary="CLUSTER.REMOVE id: remove a voter"),
            Command("WORKER.HEARTBEAT", self.cmd_heartbeat, 2,
                    summary="WORKER.HEARTBEAT worker_id: the worker is alive"),
            Command("WORKER.POLL", self.cmd_poll, -2,
                    summary="WORKER.POLL worker_id [tags [timeout_ms [resync]]]"),
            Command("WORKER.DONE", self.cmd_done, -3,
                    summary="WORKER.DONE run_id exit_code [output_tail [attempt]]"),
        ]

    def cmd_add(self, session: Any, args: list[bytes]) -> Any:
        try:
            job = parse_job_add(args[1:], self.clock.wall_ms())
        except JobError as exc:
            raise CommandError(exc.message) from None

        async def run() -> Any:
            await self._write(S.encode_add(job))
            return OK

        return run()

    def cmd_get(self, session: Any, args: list[bytes]) -> Any:
        async def run() -> Any:
            await self._barrier()
            job = self._job(args[1])
            handled = self.state.handled[job.name]
            next_ms = None if job.paused else job.next_fire(handled)
            return job_fields(job, handled, next_ms)

        return run()

    def cmd_list(self, session: Any, args: list[bytes]) -> Any:
        async def run() -> Any:
            await self._barrier()
            return sorted(self.state.jobs)

        return run()

    def _name_op(self, op: str, args: list[bytes]) -> Any:
        name = _text(args[1])

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
        name = _text(args[1])

        async def run() -> Any:
            fired = await self._write(S.encode_run(name, self.clock.wall_ms()))
            if not fired:
                return None
            return RunRecord.from_dict(fired[0]).run_id

        return run()

    def cmd_history(self, session: Any, args: list[bytes]) -> Any:
        if len(args) > 3:
            raise CommandError("ERR wrong number of arguments for 'job.history' command")
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

    def cmd_cluster_info(self, session: Any, args: list[bytes]) -> Any:
        status = self.driver.status()
        return {
            "id": status["id"], "role": status["role"], "leader": status["leader"],
            "term": status["term"], "commit_index": status["commit"],
            "applied_index": status["applied"], "members": status["members"],
            "clients": {str(k): v for k, v in sorted(self.state.clients.items())},
        }

    async def _membership(self, change: Any) -> int:
        try:
            return int(await change)
        except (RaftError, TimeoutError) as exc:
            raise CommandError(ERR_UNAVAILABLE.format(exc or type(exc).__name__)) from None

    def cmd_cluster_add(self, session: Any, args: list[bytes]) -> Any:
        if len(args) > 4:
            raise CommandError("ERR wrong number of arguments for 'cluster.add' command")
        node_id = _node_id(args[1])
        peer = _address(args[2])
        client = "{}:{}".format(*_address(args[3])) if len(args) > 3 else ""

        async def run() -> Any:
            index = await self._membership(self.driver.add_node(node_id, peer, forward=True))
            if client:
                await self._write(S.encode_member(node_id, client))
            return index

        return run()

    def cmd_cluster_remove(self, session: Any, args: list[bytes]) -> Any:
        node_id = _node_id(args[1])

        async def run() -> Any:
            index = await self._membership(self.driver.remove_node(node_id, forward=True))
            if node_id in self.state.clients:
                await self._write(S.encode_member(node_id, ""))
            return index

        return run()

    def cmd_heartbeat(self, session: Any, args: list[bytes]) -> Any:
        worker = _text(args[1])

        async def run() -> Any:
            await self._write(S.encode_beat(worker, self.clock.wall_ms()))
            self.counters["heartbeats"] += 1
            return OK

        return run()

    def cmd_poll(self, session: Any, args: list[bytes]) -> Any:
        if len(args) > 5:
            raise CommandError("ERR wrong number of arguments for 'worker.poll' command")
        worker = _text(args[1])
        tags = [t for t in _text(args[2]).split(",") if t] if len(args) > 2 else []
        timeout_ms = DEFAULT_POLL_MS
        if len(args) > 3:
            timeout_ms = parse_int(args[3], ERR_TIMEOUT_MS)
            if not 0 <= timeout_ms <= MAX_POLL_MS:
                raise CommandError(ERR_TIMEOUT_MS)
        resync = len(args) > 4 and args[4] == b"1"
        return self._poll(worker, tags, timeout_ms / 1000, resync)

    async def _poll(self, worker: str, tags: list[str], timeout: float, resync: bool) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if resync or self.state.pending(tags):
                self.fired.clear()
                entry = S.encode_claim(worker, tags, self.clock.wall_ms(), resync=resync)
                runs = await self._write(entry)
                self.counters["claims"] += 1
                if runs:
                    return [
                        [r["run_id"], r["job"], r["command"], r["slot_ms"], r["attempt"],
                         r["timeout_s"]]
                        for r in runs
                    ]
                resync = False
            left = deadline - loop.time()
            if left <= 0:
                return []
            self.fired.clear()
            try:
                async with asyncio.timeout(left):
                    await self.fired.wait()
            except TimeoutError:
                return []

    def cmd_done(self, session: Any, args: list[bytes]) -> Any:
        if len(args) > 5:
            raise CommandError("ERR wrong number of arguments for 'worker.done' command")
        run_id = _text(args[1])
        job, at, _ = run_id.partition("@")
        if not job or not at:
            raise CommandError(ERR_RUN_ID.format(run_id))
        exit_code = parse_int(args[2])
        output = args[3][-MAX_OUTPUT_BYTES:].decode("utf-8", "replace") if len(args) > 3 else ""
        attempt = parse_int(args[4]) if len(args) > 4 else None

        async def run() -> Any:
            now = self.clock.wall_ms()
            entry = S.encode_done(job, run_id, exit_code, output, now, attempt)
            await self._write(entry)
            self.counters["results"] += 1
            return OK

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
                **self.counters,
            }
        }


__all__ = ["NotLeaderError", "SchedulerServer"]
