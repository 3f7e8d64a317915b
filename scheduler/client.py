"""Clients for the scheduler cluster: `SchedulerClient` (blocking) and `AsyncSchedulerClient`
(asyncio), with the same methods; and the embedded worker API (`EmbeddedWorker`, `Run`: see
scheduler/embedded.py).

Failover is core/failover.py's, whose header states it: nodes are tried in rounds from the
one that answered last (or that a leader hint named), a failed node is skipped for a backoff
that doubles per failure, TRYAGAIN/LOADING moves on to the next node, MOVED/ASK redirect,
`-ERR` is the caller's mistake (no failover), jittered pauses separate rounds up to the
deadline, and giving up raises one error that lists each node's last failure.
For the scheduler: the mistake is `SchedulerError`, the give-up `SchedulerUnavailable`.
Any node takes any command (writes are forwarded to the leader). A write whose node vanished
mid-request may or may not have been applied; the client retries it, which the state
machine makes safe for JOB.PAUSE/RESUME and reports as "already exists"/"no such job" for
JOB.ADD/DEL.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any, Final

from core.failover import ErrorRules, Failover, GiveUp, RetryPolicy, parse_address
from core.failover_io import Raises, call_async, call_blocking
from core.resp_client import AsyncRespConnection, ReplyError, RespConnection
from scheduler.embedded import EmbeddedWorker
from scheduler.worker import Run

__all__ = [
    "AsyncSchedulerClient",
    "EmbeddedWorker",
    "Run",
    "SchedulerClient",
    "SchedulerError",
    "SchedulerUnavailable",
]

DEFAULT_TIMEOUT_S: Final = 15.0  # per request: above a forwarded proposal's own timeout
DEFAULT_DEADLINE_S: Final = 30.0
PAUSE_INITIAL_S: Final = 0.05  # between rounds (an election takes a few hundred ms)
PAUSE_MAX_S: Final = 1.0
NODE_BACKOFF_INITIAL_S: Final = 0.5  # a node that failed is skipped this long, doubling
NODE_BACKOFF_MAX_S: Final = 5.0
LOG_LABEL: Final = "scheduler node"
ERR_UNAVAILABLE: Final = "no scheduler node answered within {:g} s ({})"
ERR_NO_NODE: Final = "no scheduler node"

Node = tuple[str, int] | str


class SchedulerError(Exception):
    """The cluster refused the request (the message is the error reply)."""


class SchedulerUnavailable(SchedulerError):
    """No node answered within the deadline. `errors` maps each node ("host:port") that
    failed to its last failure."""

    def __init__(self, message: str, errors: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


def _usage(error: ReplyError) -> SchedulerError:
    return SchedulerError(str(error))


class _Settings:
    """What both clients share: the nodes, their failover state, the errors they raise."""

    def __init__(self, nodes: Sequence[Node], password: str | None, timeout_s: float,
                 deadline_s: float, rng: random.Random | None) -> None:
        if not nodes:
            raise ValueError(ERR_NO_NODE)
        self.nodes = [parse_address(n) if isinstance(n, str) else (n[0], int(n[1]))
                      for n in nodes]
        self.password = password
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.policy = RetryPolicy(deadline_s=deadline_s, pause_initial_s=PAUSE_INITIAL_S,
                                  pause_max_s=PAUSE_MAX_S,
                                  node_backoff_initial_s=NODE_BACKOFF_INITIAL_S,
                                  node_backoff_max_s=NODE_BACKOFF_MAX_S)
        self.rng = rng or random.Random()
        self.raises = Raises(usage=_usage, unavailable=self.unavailable)

    def failover(self) -> Failover[Any]:
        return Failover(self.nodes, self.rng, policy=self.policy, rules=ErrorRules(),
                        label=LOG_LABEL)

    def unavailable(self, give_up: GiveUp) -> SchedulerUnavailable:
        return SchedulerUnavailable(ERR_UNAVAILABLE.format(self.deadline_s, give_up.detail),
                                    give_up.errors)


def _same(reply: object) -> object:
    return reply


def _add_args(name: str, schedule: str, command: str, options: dict[str, Any]) -> list[Any]:
    words: list[Any] = ["JOB.ADD", name, schedule, command]
    for key, value in options.items():
        words += [key.upper(), value]
    return words


class SchedulerClient:
    """`SchedulerClient([("127.0.0.2", 7380), "127.0.0.3:7380", ...], password=None)`; use
    as a context. `timeout_s` bounds each attempt on one node, `deadline_s` a whole call;
    `rng` (a seeded `random.Random`) draws the jitter of the pauses. Not thread-safe."""

    def __init__(self, nodes: Sequence[Node], *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, deadline_s: float = DEFAULT_DEADLINE_S,
                 rng: random.Random | None = None) -> None:
        self._settings = _Settings(nodes, password, timeout_s, deadline_s, rng)
        self.nodes = self._settings.nodes
        self._failover: Failover[RespConnection] = self._settings.failover()

    def call(self, *args: Any) -> Any:
        """One command with failover (see the module header)."""
        return call_blocking(self._failover, args, _same, self._connect, self._settings.raises)

    def _connect(self, host: str, port: int) -> RespConnection:
        settings = self._settings
        return RespConnection.connect(host, port, timeout=settings.timeout_s,
                                      password=settings.password)

    def close(self) -> None:
        """Close the connections; the client may still be used (it reconnects)."""
        for conn in self._failover.detach_all():
            conn.close()

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------

    def add(self, name: str, schedule: str, command: str, **options: Any) -> None:
        """JOB.ADD; options by JOB.ADD's names, e.g. misfire="ALL", deadline=60."""
        self.call(*_add_args(name, schedule, command, options))

    def get(self, name: str) -> Any:
        """JOB.GET: the job's fields, as the server's map reply."""
        return self.call("JOB.GET", name)

    def list(self) -> list[str]:
        """JOB.LIST: the job names."""
        return [_text(n) for n in self.call("JOB.LIST")]

    def delete(self, name: str) -> None:
        """JOB.DEL."""
        self.call("JOB.DEL", name)

    def pause(self, name: str) -> None:
        """JOB.PAUSE (idempotent)."""
        self.call("JOB.PAUSE", name)

    def resume(self, name: str) -> None:
        """JOB.RESUME (idempotent)."""
        self.call("JOB.RESUME", name)

    def run(self, name: str) -> str | None:
        """JOB.RUN: fire the job now; its run id, or None."""
        run_id = self.call("JOB.RUN", name)
        return None if run_id is None else _text(run_id)

    def history(self, name: str, count: int = 10) -> Any:
        """JOB.HISTORY: the job's last `count` runs."""
        return self.call("JOB.HISTORY", name, count)

    def cluster_info(self) -> Any:
        """CLUSTER.INFO of whichever node answers."""
        return self.call("CLUSTER.INFO")


class AsyncSchedulerClient:
    """`SchedulerClient` for asyncio, on one event loop: the same arguments and methods,
    as coroutines; use as an async context. Calls are serialised (one at a time)."""

    def __init__(self, nodes: Sequence[Node], *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, deadline_s: float = DEFAULT_DEADLINE_S,
                 rng: random.Random | None = None) -> None:
        self._settings = _Settings(nodes, password, timeout_s, deadline_s, rng)
        self.nodes = self._settings.nodes
        self._failover: Failover[AsyncRespConnection] = self._settings.failover()
        self._lock = asyncio.Lock()

    async def call(self, *args: Any) -> Any:
        """One command with failover (see the module header)."""
        async with self._lock:
            return await call_async(self._failover, args, _same, self._connect,
                                    self._settings.raises)

    async def _connect(self, host: str, port: int) -> AsyncRespConnection:
        settings = self._settings
        return await AsyncRespConnection.connect(host, port, timeout=settings.timeout_s,
                                                 password=settings.password)

    async def close(self) -> None:
        """Close the connections; the client may still be used (it reconnects)."""
        for conn in self._failover.detach_all():
            await conn.close()

    async def __aenter__(self) -> AsyncSchedulerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- commands ------------------------------------------------------------------------

    async def add(self, name: str, schedule: str, command: str, **options: Any) -> None:
        """JOB.ADD; options by JOB.ADD's names, e.g. misfire="ALL", deadline=60."""
        await self.call(*_add_args(name, schedule, command, options))

    async def get(self, name: str) -> Any:
        """JOB.GET: the job's fields, as the server's map reply."""
        return await self.call("JOB.GET", name)

    async def list(self) -> list[str]:
        """JOB.LIST: the job names."""
        return [_text(n) for n in await self.call("JOB.LIST")]

    async def delete(self, name: str) -> None:
        """JOB.DEL."""
        await self.call("JOB.DEL", name)

    async def pause(self, name: str) -> None:
        """JOB.PAUSE (idempotent)."""
        await self.call("JOB.PAUSE", name)

    async def resume(self, name: str) -> None:
        """JOB.RESUME (idempotent)."""
        await self.call("JOB.RESUME", name)

    async def run(self, name: str) -> str | None:
        """JOB.RUN: fire the job now; its run id, or None."""
        run_id = await self.call("JOB.RUN", name)
        return None if run_id is None else _text(run_id)

    async def history(self, name: str, count: int = 10) -> Any:
        """JOB.HISTORY: the job's last `count` runs."""
        return await self.call("JOB.HISTORY", name, count)

    async def cluster_info(self) -> Any:
        """CLUSTER.INFO of whichever node answers."""
        return await self.call("CLUSTER.INFO")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
