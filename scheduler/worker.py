"""The scheduler worker: long-polls the cluster for runs, executes them, reports results.

    python -m scheduler worker --scheduler 127.0.0.2:7380,127.0.0.3:7380 [--tags a,b]

Any node answers (writes are forwarded to the leader); when the one in use fails, the
worker moves to the next. `WORKER.POLL id tags timeout_ms resync` returns the runs the
cluster committed to this worker (a claim: a run is claimed once). After any error the
next poll asks with resync=1 so runs whose claim reply was lost come back; a run id seen
before (the same attempt) is never executed again (the last MAX_REMEMBERED are kept).

A run executes through `/bin/sh -c` in its own process group (killed as a group on its
TIMEOUT) with SCHED_JOB, SCHED_SCHEDULED_AT (epoch ms), SCHED_RUN_ID and SCHED_ATTEMPT in
the environment; its exit code and the tail of its output go back with WORKER.DONE, retried
until the cluster takes it (a repeated report is a no-op there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from core.resp_client import AsyncRespConnection, ReplyError, RespConnectionError

log = logging.getLogger("scheduler.worker")

MAX_REMEMBERED = 10_000  # run ids kept to execute each once
POLL_MS = 1000
CALL_TIMEOUT_S = 15.0  # above POLL_MS plus a forwarded proposal's timeout
RETRY_S = 0.2
OUTPUT_TAIL_BYTES = 1024
EXIT_TIMED_OUT = 124  # as timeout(1)
HEARTBEAT_S = 2.0  # WORKER.HEARTBEAT interval while runs are in flight
STOP_GRACE_S = 10.0  # on SIGTERM, runs in flight get this long to finish and report


class Worker:
    """Poll, execute, report. `run(stop)` returns once `stop` is set and runs finished."""

    def __init__(self, servers: Sequence[tuple[str, int]], tags: Sequence[str] = (), *,
                 worker_id: str | None = None, password: str | None = None,
                 concurrency: int = 8, heartbeat_s: float = HEARTBEAT_S) -> None:
        if not servers:
            raise ValueError("no scheduler address")
        self.servers = list(servers)
        self.tags = list(tags)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.password = password
        self.heartbeat_s = heartbeat_s
        self.slots = asyncio.Semaphore(concurrency)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        # channel 0 polls, channel 1 reports (a report never waits behind a long poll),
        # channel 2 heartbeats
        self._conns: list[AsyncRespConnection | None] = [None, None, None]
        self._next = [0, 1, 2]

    async def call(self, *args: object, channel: int = 0) -> Any:
        """One command on the channel's node; after a connection error, the next node."""
        conn = self._conns[channel]
        if conn is None or conn.closed:
            host, port = self.servers[self._next[channel] % len(self.servers)]
            self._next[channel] += 1
            conn = self._conns[channel] = await AsyncRespConnection.connect(
                host, port, timeout=CALL_TIMEOUT_S, password=self.password)
        try:
            return await conn.call(*args)  # type: ignore[arg-type]
        except RespConnectionError:
            self._conns[channel] = None
            raise

    def _drop(self, channel: int = 0) -> None:
        conn = self._conns[channel]
        if conn is not None:
            conn.abort()
            self._conns[channel] = None

    async def run(self, stop: asyncio.Event) -> None:
        beats = asyncio.create_task(self._heartbeats(stop))
        try:
            await self._run(stop)
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            self._drop(2)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """While runs are in flight, tell the cluster this worker is alive (a worker silent
        for the cluster's --worker-timeout-ms loses its runs to a retry elsewhere)."""
        while not stop.is_set():
            await asyncio.sleep(self.heartbeat_s)
            if not self.tasks:
                continue
            try:
                await self.call("WORKER.HEARTBEAT", self.worker_id, channel=2)
            except (OSError, ReplyError, TimeoutError) as exc:
                log.info("heartbeat failed (%s); trying the next node", exc)
                self._drop(2)

    async def _run(self, stop: asyncio.Event) -> None:
        resync = True
        while not stop.is_set():
            try:
                await self.slots.acquire()
                self.slots.release()
                runs = await self.call("WORKER.POLL", self.worker_id, ",".join(self.tags),
                                       POLL_MS, 1 if resync else 0)
                resync = False
            except (OSError, ReplyError, TimeoutError) as exc:
                log.info("poll failed (%s); trying the next node", exc)
                self._drop()
                resync = True
                await asyncio.sleep(RETRY_S)
                continue
            for run in runs or ():
                self._start(run)
        if self.tasks:  # finish and report what runs, for a while; then give up
            _, late = await asyncio.wait(set(self.tasks), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._drop(0)
        self._drop(1)

    def _start(self, run: list[Any]) -> None:
        run_id = _str(run[0])
        key = f"{run_id}#{int(run[4])}"  # each attempt of a run executes once
        if key in self.seen:
            return  # delivered twice: executed once
        self.seen[key] = None
        while len(self.seen) > MAX_REMEMBERED:
            self.seen.popitem(last=False)
        task = asyncio.create_task(self._execute(run_id, run))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _execute(self, run_id: str, run: list[Any]) -> None:
        job, command, slot_ms, attempt, timeout_s = (
            _str(run[1]), _str(run[2]), int(run[3]), int(run[4]), int(run[5]))
        env = {**os.environ, "SCHED_JOB": job, "SCHED_SCHEDULED_AT": str(slot_ms),
               "SCHED_RUN_ID": run_id, "SCHED_ATTEMPT": str(attempt)}
        async with self.slots:
            log.info("run %s: %s", run_id, command)
            code, output = await run_command(command, env, timeout_s)
        await self._report(run_id, code, output, attempt)

    async def _report(self, run_id: str, code: int, output: bytes, attempt: int) -> None:
        while True:
            try:
                await self.call("WORKER.DONE", run_id, code, output, attempt, channel=1)
                return
            except (OSError, ReplyError, TimeoutError) as exc:
                log.info("report of %s failed (%s); retrying", run_id, exc)
                self._drop(1)
                await asyncio.sleep(RETRY_S)


async def run_command(command: str, env: dict[str, str], timeout_s: int) -> tuple[int, bytes]:
    """Run `command` with /bin/sh in its own process group; (exit code, output tail).
    On timeout the whole group gets SIGKILL and the code is EXIT_TIMED_OUT."""
    proc = await asyncio.create_subprocess_shell(
        command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        async with asyncio.timeout(timeout_s or None):
            output, _ = await proc.communicate()
    except TimeoutError:
        await _kill_group(proc)
        return EXIT_TIMED_OUT, b"timed out"
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return (code if code >= 0 else 128 - code), output[-OUTPUT_TAIL_BYTES:]


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await proc.wait()


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
