"""A worker's connections to the cluster: one per channel, each on a node the failover core
picks.

A worker keeps several connections open at once (its poll, its heartbeats, its report
channels), so it cannot use one request's way through the nodes as a client does; it uses
core/failover.py's node list and health instead, and its error rules: a node whose
connection fails is marked down (skipped for a backoff) and every channel that reconnects
avoids it; a TRYAGAIN naming the leader (` leader=HOST:PORT`) makes that node preferred; an
answer clears a mark. The poll channel connects to the node that says it leads (CLUSTER.INFO
of each node, asked from the preferred one on); the other channels are spread over the
nodes that are not marked down. The worker's loops decide when to retry.

The poll channel's calls may wait `call_timeout_s` (a long poll, then a forwarded claim);
the others (heartbeats, reports) only `side_timeout_s`: a node that does not answer (a
leader SIGSTOPped or cut off, holding forwarded writes it cannot commit) is left for another
well before the cluster would call the worker silent and its runs lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from core.failover import ATTEMPT_ERRORS, ErrorRules, Failover, Refused, RetryPolicy, Verdict
from core.resp_client import AsyncRespConnection, ReplyError, RespConnectionError

log = logging.getLogger("scheduler.worker")

NODE_BACKOFF_INITIAL_S: Final = 0.5  # a node whose connection failed is skipped this long
NODE_BACKOFF_MAX_S: Final = 5.0
LOG_LABEL: Final = "scheduler node"


class NodeLinks:
    """`channels` connections, each opened on demand on a node the failover core picks.
    `call` sends one command on a channel; `drop` closes a channel's connection."""

    def __init__(self, servers: Sequence[tuple[str, int]], channels: int, poll: int, *,
                 password: str | None, call_timeout_s: float, find_timeout_s: float,
                 as_dict: Callable[[Any], dict[str, Any]],
                 rng: random.Random | None = None,
                 side_timeout_s: float | None = None) -> None:
        policy = RetryPolicy(node_backoff_initial_s=NODE_BACKOFF_INITIAL_S,
                             node_backoff_max_s=NODE_BACKOFF_MAX_S)
        self.failover: Failover[AsyncRespConnection] = Failover(
            list(servers), rng or random.Random(), policy=policy, rules=ErrorRules(),
            log=log, label=LOG_LABEL)
        self.poll = poll
        self.password = password
        self.call_timeout_s = call_timeout_s
        self.side_timeout_s = call_timeout_s if side_timeout_s is None else side_timeout_s
        self.find_timeout_s = find_timeout_s
        self._as_dict = as_dict
        self.conns: list[AsyncRespConnection | None] = [None] * channels
        self._node: list[int] = [0] * channels  # the node each channel's connection is on
        self._next = list(range(channels))  # spread the first connections over the nodes
        self.poll_node = 0  # Raft id of the node polled, when it led as we connected

    async def call(self, channel: int, *args: object) -> Any:
        """One command on the channel's node; connects first if needed. Errors propagate
        (the caller decides when to retry) after the failover core has judged them."""
        conn = self.conns[channel]
        if conn is None or conn.closed:
            conn = await self._find_leader() if channel == self.poll else None
            if conn is None:
                conn = await self._connect_spread(channel)
            self.conns[channel] = conn
        index = self._node[channel]
        try:
            reply = await conn.call(*args)  # type: ignore[arg-type]
        except ATTEMPT_ERRORS as exc:
            self._judge(index, exc)
            if isinstance(exc, RespConnectionError):
                self.conns[channel] = None
            raise
        self.failover.answered(index)
        return reply

    def drop(self, channel: int) -> None:
        conn = self.conns[channel]
        if conn is not None:
            conn.abort()
            self.conns[channel] = None

    def _judge(self, index: int, error: BaseException) -> None:
        """What the core makes of an error on node `index`: a mark, or a leader learnt."""
        verdict, address, _ = self.failover.rules.verdict(error)
        if verdict is Verdict.NODE_DOWN:
            self.failover.mark_down(index, error, time.monotonic())
        elif verdict is Verdict.NOT_NOW and address is not None:
            self.failover.preferred = self.failover.index_of(address)

    async def _open(self, index: int, timeout: float) -> AsyncRespConnection:
        host, port = self.failover.address(index)
        try:
            return await AsyncRespConnection.connect(host, port, timeout=timeout,
                                                     password=self.password)
        except ATTEMPT_ERRORS as exc:  # raised as it is: the worker's loops catch ReplyError
            refused = isinstance(exc, ReplyError)  # to AUTH: the node's failure, not ours
            self._judge(index, Refused(f"connection set-up refused: {exc}") if refused else exc)
            raise

    async def _connect_spread(self, channel: int) -> AsyncRespConnection:
        """A connection for a non-poll channel: its turn among the nodes not marked down."""
        healthy = sorted(self.failover.order(time.monotonic()))
        index = healthy[self._next[channel] % len(healthy)]
        self._next[channel] += 1
        timeout = self.call_timeout_s if channel == self.poll else self.side_timeout_s
        conn = await self._open(index, timeout)  # (a poll with no leader found lands here)
        self._node[channel] = index
        return conn

    async def _find_leader(self) -> AsyncRespConnection | None:
        """A connection to the node that leads (asked in turn, from the preferred node on,
        skipping those marked down), or None if none says so."""
        self.poll_node = 0
        for index in self.failover.order(time.monotonic()):
            try:
                conn = await self._open(index, self.find_timeout_s)
            except ATTEMPT_ERRORS:
                continue
            try:
                info = self._as_dict(await conn.call("CLUSTER.INFO"))
                if info.get("role") == "leader":
                    self.poll_node = int(info["id"])
                    conn.timeout = self.call_timeout_s
                    self.failover.answered(index)
                    self._node[self.poll] = index
                    return conn
            except ATTEMPT_ERRORS as exc:
                self._judge(index, exc)
            except (KeyError, ValueError):
                pass  # a CLUSTER.INFO without a usable id: not the leader; try the next node
            conn.abort()
        return None
