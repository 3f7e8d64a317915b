"""RESP links to the dfs masters with failover: `MasterLink` (blocking) and
`AsyncMasterLink` (asyncio), used by the client library and by the chunk servers.

Failover is core/failover.py's, whose header states it: masters are tried in rounds from
the one that answered last (or that a leader hint named), TRYAGAIN (no leader, safe mode,
or "not the leader" for the chunk commands, with the leader's address) moves on, `-ERR` is
the caller's mistake (DfsError, no failover), and giving up after the deadline raises
DfsUnavailable listing each master's last failure.

The deadline bounds the whole request, not only the pauses between attempts (core's
failover does it for every client): each attempt's connect, AUTH and command together get
the time the request has left (each step at most `timeout_s`; the attempt at least
MIN_ATTEMPT_S), so a request whose masters all hang (stopped, or cut off by the network)
ends at its deadline instead of waiting out `timeout_s` per master and per AUTH.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any, Final

from core.failover import ErrorRules, Failover, GiveUp, RetryPolicy, parse_address
from core.failover_io import Raises, call_async, call_blocking
from core.resp_client import AsyncRespConnection, ReplyError, RespConnection

__all__ = ["AsyncMasterLink", "DfsError", "DfsUnavailable", "MasterLink", "parse_masters"]

DEFAULT_TIMEOUT_S: Final = 15.0
DEFAULT_DEADLINE_S: Final = 30.0
PAUSE_INITIAL_S: Final = 0.05
PAUSE_MAX_S: Final = 0.5
NODE_BACKOFF_INITIAL_S: Final = 0.2
NODE_BACKOFF_MAX_S: Final = 2.0
MIN_ATTEMPT_S: Final = 0.5  # the last attempt of a request gets at least this long
LOG_LABEL: Final = "dfs master"
ERR_UNAVAILABLE: Final = "no dfs master answered within {:g} s ({})"
ERR_NO_MASTER: Final = "no dfs master given"

Node = tuple[str, int] | str


class DfsError(Exception):
    """The file system refused the request (the message says why)."""


class DfsUnavailable(DfsError):
    """No master answered within the deadline; `errors`: each master's last failure."""

    def __init__(self, message: str, errors: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


def parse_masters(masters: Sequence[Node] | str) -> list[tuple[str, int]]:
    """`"h:p,h:p"` or a list of "h:p" / (host, port) -> [(host, port), ...]."""
    items = masters.split(",") if isinstance(masters, str) else list(masters)
    nodes = [parse_address(n.strip()) if isinstance(n, str) else (n[0], int(n[1]))
             for n in items if not isinstance(n, str) or n.strip()]
    if not nodes:
        raise ValueError(ERR_NO_MASTER)
    return nodes


def _usage(error: ReplyError) -> DfsError:
    return DfsError(str(error))


def _same(reply: object) -> object:
    return reply


class _Settings:
    def __init__(self, masters: Sequence[Node] | str, password: str | None, timeout_s: float,
                 deadline_s: float, username: str | None = None) -> None:
        self.nodes = parse_masters(masters)
        self.password = password
        self.username = username  # AUTH username password (dfs users) when given
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.policy = RetryPolicy(deadline_s=deadline_s, pause_initial_s=PAUSE_INITIAL_S,
                                  pause_max_s=PAUSE_MAX_S,
                                  node_backoff_initial_s=NODE_BACKOFF_INITIAL_S,
                                  node_backoff_max_s=NODE_BACKOFF_MAX_S,
                                  min_attempt_s=MIN_ATTEMPT_S)
        self.raises = Raises(usage=_usage, unavailable=self.unavailable)

    def failover(self) -> Failover[Any]:
        return Failover(self.nodes, random.Random(), policy=self.policy, rules=ErrorRules(),
                        label=LOG_LABEL)

    def unavailable(self, give_up: GiveUp) -> DfsUnavailable:
        return DfsUnavailable(ERR_UNAVAILABLE.format(self.deadline_s, give_up.detail),
                              give_up.errors)


class MasterLink:
    """Blocking: `call(*args)` sends one command with failover. Not thread-safe."""

    def __init__(self, masters: Sequence[Node] | str, *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 deadline_s: float = DEFAULT_DEADLINE_S, username: str | None = None) -> None:
        self._settings = _Settings(masters, password, timeout_s, deadline_s, username)
        self._failover: Failover[RespConnection] = self._settings.failover()

    def call(self, *args: Any) -> Any:
        """One command (see the module header)."""
        return call_blocking(self._failover, args, _same, self._connect, self._settings.raises)

    def _connect(self, host: str, port: int) -> RespConnection:
        s = self._settings
        return RespConnection.connect(host, port, timeout=s.timeout_s, password=s.password,
                                      username=s.username)

    def close(self) -> None:
        """Close the connections (the link reconnects when used again)."""
        for conn in self._failover.detach_all():
            conn.close()


class AsyncMasterLink:
    """`MasterLink` for asyncio; calls are serialised."""

    def __init__(self, masters: Sequence[Node] | str, *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 deadline_s: float = DEFAULT_DEADLINE_S, username: str | None = None) -> None:
        self._settings = _Settings(masters, password, timeout_s, deadline_s, username)
        self._failover: Failover[AsyncRespConnection] = self._settings.failover()
        self._lock = asyncio.Lock()

    async def call(self, *args: Any) -> Any:
        """One command (see the module header)."""
        async with self._lock:
            return await call_async(self._failover, args, _same, self._connect,
                                    self._settings.raises)

    async def _connect(self, host: str, port: int) -> AsyncRespConnection:
        s = self._settings
        return await AsyncRespConnection.connect(host, port, timeout=s.timeout_s,
                                                 password=s.password, username=s.username)

    async def close(self) -> None:
        """Close the connections."""
        for conn in self._failover.detach_all():
            await conn.close()
