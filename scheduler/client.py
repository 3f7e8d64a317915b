"""A small blocking client for the scheduler cluster: `SchedulerClient`; and the embedded
worker API (`EmbeddedWorker`, `Run`: see scheduler/embedded.py).

Failover: nodes are tried in order, starting from the one that answered last. A node that
cannot be reached, times out or answers TRYAGAIN (no leader, no quorum) is skipped; after a
full round without an answer the client waits RETRY_S and goes round again until its
`deadline_s` is spent, then raises `SchedulerUnavailable`. Any node takes any command (writes
are forwarded to the leader), so there is no redirect. An `-ERR` reply is the caller's
mistake: `SchedulerError`, no failover. A write whose node vanished mid-request may or may
not have been applied; the client retries it, which the state machine makes safe for
JOB.PAUSE/RESUME and reports as "already exists"/"no such job" for JOB.ADD/DEL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from core.resp_client import ReplyError, RespConnection, RespConnectionError
from scheduler.embedded import EmbeddedWorker
from scheduler.worker import Run

__all__ = ["EmbeddedWorker", "Run", "SchedulerClient", "SchedulerError", "SchedulerUnavailable"]

RETRY_S = 0.2
DEFAULT_TIMEOUT_S = 15.0  # per request: above a forwarded proposal's own timeout
DEFAULT_DEADLINE_S = 30.0


class SchedulerError(Exception):
    """The cluster refused the request (the message is the error reply)."""


class SchedulerUnavailable(SchedulerError):
    """No node answered within the deadline."""


class SchedulerClient:
    """`SchedulerClient([("127.0.0.2", 7380), ...], password=None)`; use as a context."""

    def __init__(self, nodes: Sequence[tuple[str, int]], *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        if not nodes:
            raise ValueError("no scheduler node")
        self.nodes = list(nodes)
        self.password = password
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._conn: RespConnection | None = None
        self._current = 0

    def call(self, *args: Any) -> Any:
        """One command with failover (see the module header)."""
        deadline = time.monotonic() + self.deadline_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            for _ in range(len(self.nodes)):
                try:
                    return self._connection().call(*args)
                except ReplyError as exc:
                    if not str(exc).startswith(("TRYAGAIN", "LOADING")):
                        raise SchedulerError(str(exc)) from None
                    last = exc
                except (RespConnectionError, OSError) as exc:
                    last = exc
                self._next()
            time.sleep(RETRY_S)
        raise SchedulerUnavailable(f"no scheduler node answered: {last}")

    def _connection(self) -> RespConnection:
        if self._conn is None or self._conn.closed:
            host, port = self.nodes[self._current]
            self._conn = RespConnection.connect(host, port, timeout=self.timeout_s,
                                                password=self.password)
        return self._conn

    def _next(self) -> None:
        self.close()
        self._current = (self._current + 1) % len(self.nodes)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------

    def add(self, name: str, schedule: str, command: str, **options: Any) -> None:
        """JOB.ADD; options by JOB.ADD's names, e.g. misfire="ALL", deadline=60."""
        words: list[Any] = []
        for key, value in options.items():
            words += [key.upper(), value]
        self.call("JOB.ADD", name, schedule, command, *words)

    def get(self, name: str) -> Any:
        return self.call("JOB.GET", name)

    def list(self) -> list[str]:
        return [_text(n) for n in self.call("JOB.LIST")]

    def delete(self, name: str) -> None:
        self.call("JOB.DEL", name)

    def pause(self, name: str) -> None:
        self.call("JOB.PAUSE", name)

    def resume(self, name: str) -> None:
        self.call("JOB.RESUME", name)

    def run(self, name: str) -> str | None:
        run_id = self.call("JOB.RUN", name)
        return None if run_id is None else _text(run_id)

    def history(self, name: str, count: int = 10) -> Any:
        return self.call("JOB.HISTORY", name, count)

    def cluster_info(self) -> Any:
        return self.call("CLUSTER.INFO")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
