"""The embedded worker: a Python service receives runs as calls of its own handlers.

    worker = EmbeddedWorker([("127.0.0.2", 7380), ...], tags=("a",), slots=64)

    @worker.handler("billing")        # runs of jobs whose command is "billing"
    async def billing(run: Run) -> None: ...

    await worker.run(stop_event)      # or: stop = worker.run_in_thread(); ...; stop()

It is the shell worker (`scheduler.worker.Worker`: registration, polling, heartbeats, each
run id executed once, TIMEOUT, reporting) with another executor: the job's command names a
handler. Its polls advertise the names of its handlers (and its tags), and the cluster
hands it only runs of jobs whose command is one of them (scheduler/routing.py): with a
TARGET, one it has among its handlers or tags. A handler that returns is a success (exit
code 0); one that raises is a failure (exit code 1, the message the traceback's last line);
a run whose command has no handler here (a handler registered after its claim, or a
cluster older than handler adverts) fails with EXIT_NO_HANDLER. A coroutine function runs
on the worker's loop and is cancelled on TIMEOUT; a plain function runs in a thread of a
pool of `slots` threads, and on TIMEOUT the run is reported timed out while the thread,
which Python cannot stop, runs on to its end.

Fencing is the shell worker's (scheduler.worker.Worker, one piece of code for both): with
`worker_timeout_ms` (the cluster's --worker-timeout-ms, 10000 by default as there; None
never fences), a worker that has heard from no node for that less a margin
(`fence_delay_s`) cancels every handler task it holds and reports those runs abandoned when
a node answers again. A coroutine handler is cancelled, and commands it started with
`run_command` (re-exported here) lose their process groups with it, as on TIMEOUT; a plain
function's thread cannot be stopped and runs on to its end (its run is still reported
abandoned and retried: only coroutine handlers are fenced from the retry).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from core.clock import Clock
from scheduler.routing import MAX_NAME_BYTES, valid_name
from scheduler.worker import HEARTBEAT_S, Run, Worker, fence_delay_s, run_command

__all__ = ["DEFAULT_WORKER_TIMEOUT_MS", "EXIT_NO_HANDLER", "EmbeddedWorker", "Handler", "Run",
           "run_command"]

DEFAULT_WORKER_TIMEOUT_MS = 10_000  # the cluster's default --worker-timeout-ms

EXIT_NO_HANDLER = 127  # as the shell's "command not found"
ERR_NO_HANDLER = "no handler for '{}' on worker {} (handlers: {})"
ERR_HANDLER_NAME = ("handler name {!r}: 1 to " f"{MAX_NAME_BYTES}"
                    " bytes without comma, space or NUL")

Handler = Callable[[Run], Awaitable[object] | object]


class EmbeddedWorker(Worker):
    """A worker whose runs call registered handlers (see the module header). The id
    defaults to host-pid-random, so several embedded workers can share a process.
    `worker_timeout_ms` is the cluster's --worker-timeout-ms, from which the fence delay
    comes (None: never fence); ValueError if it leaves no margin above `heartbeat_s`."""

    def __init__(self, servers: Sequence[tuple[str, int]], tags: Sequence[str] = (),
                 slots: int = 64, password: str | None = None,
                 worker_id: str | None = None, *, heartbeat_s: float = HEARTBEAT_S,
                 clock: Clock | None = None,
                 worker_timeout_ms: int | None = DEFAULT_WORKER_TIMEOUT_MS) -> None:
        worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        fence_s = (None if worker_timeout_ms is None
                   else fence_delay_s(worker_timeout_ms, heartbeat_s))
        self.handlers: dict[str, Handler] = {}
        super().__init__(servers, tags, worker_id=worker_id, password=password,
                         concurrency=slots, heartbeat_s=heartbeat_s,
                         executor=self._call_handler, clock=clock,
                         handlers=self.handlers.keys, fence_after_s=fence_s)
        self._coroutine: set[str] = set()  # handlers that are coroutine functions
        self._slots = slots
        self._pool: ThreadPoolExecutor | None = None

    def handler(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: `fn` handles the runs of jobs whose command is `name` (1 to
        MAX_NAME_BYTES bytes, no comma, space or NUL: the worker advertises it)."""
        if not valid_name(name):
            raise ValueError(ERR_HANDLER_NAME.format(name))

        def register(fn: Handler) -> Handler:
            if name in self.handlers:
                raise ValueError(f"handler {name!r} is registered already")
            self.handlers[name] = fn
            if inspect.iscoroutinefunction(fn):
                self._coroutine.add(name)
            return fn

        return register

    async def _call_handler(self, run: Run) -> tuple[int, bytes]:
        fn = self.handlers.get(run.command)
        if fn is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return EXIT_NO_HANDLER, ERR_NO_HANDLER.format(run.command, self.worker_id,
                                                          known).encode()
        if run.command in self._coroutine:
            await fn(run)  # type: ignore[misc]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._slots, thread_name_prefix="sched-run")
            result = await asyncio.get_running_loop().run_in_executor(self._pool, fn, run)
            if inspect.isawaitable(result):  # e.g. a partial of a coroutine function
                await result
        return 0, b""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await super().run(stop)
        finally:
            if self._pool is not None:  # threads past their TIMEOUT are not waited for
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def run_in_thread(self) -> Callable[[], None]:
        """Run the worker on its own event loop in a daemon thread. Returns `stop()`, which
        asks it to stop (runs in flight finish and report, as on SIGTERM) and waits."""
        ready = threading.Event()
        handles: dict[str, object] = {}

        async def main() -> None:
            stop_event = asyncio.Event()
            handles["loop"], handles["stop"] = asyncio.get_running_loop(), stop_event
            ready.set()
            await self.run(stop_event)

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True,
                                  name=f"scheduler-worker-{self.worker_id}")
        thread.start()
        ready.wait()

        def stop() -> None:
            loop, stop_event = handles["loop"], handles["stop"]
            assert isinstance(loop, asyncio.AbstractEventLoop)
            assert isinstance(stop_event, asyncio.Event)
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass  # the loop has ended already
            thread.join()

        return stop
