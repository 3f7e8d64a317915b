"""The Raft driver's proposal side: submitting, forwarding to the leader, waiting.

`ProposeSide` is a base class of `core.raft.group.RaftGroup`, next to `ApplySide`
(core/raft/driver_apply.py, which resolves what waits here). A request is a small dict
(`{"op": "propose" | "add" | "remove", ...}`) so that the same body runs on this node when
it leads (`_run_here`) or travels to the leader over RPC (`_forward`, answered by
`RaftDriver.on_request`). On the leader a request waits for its entry by index and term: an
entry of another term at that index means the proposal was dropped. A forwarded request
returns the leader's index and result, then waits until this node has applied that index,
so the caller reads its own write locally.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import msgpack

from core.raft.driver_types import (
    DEFAULT_TIMEOUT_S,
    TAG_ADDRESS,
    TAG_APP,
    DriverConfig,
    NotLeaderError,
    ProposalUnknown,
    fail_future,
)
from core.raft.errors import NotLeader, ProposalDropped
from core.raft.messages import NONE, ConfChangeOp
from core.raft.node import Node
from core.raft.ready import Role
from core.rpc import Address, PeerUnavailable, RpcClient, RpcError

__all__ = ["ProposeSide"]


class ProposeSide:
    """Proposal-side behaviour; the state it uses is initialised by RaftDriver.__init__."""

    id: int
    config: DriverConfig
    node: Node | None
    rpc: RpcClient | None
    addresses: dict[int, Address]
    applied: int
    stats: dict[str, int]
    _waiters: dict[int, tuple[int, asyncio.Future[tuple[int, Any]]]]  # index -> term, proposer
    _apply_waiters: list[tuple[int, int, asyncio.Future[None]]]  # heap of (index, seq, future)
    _seq: itertools.count[int]
    _wake: asyncio.Event  # set to make the Ready loop look at the node again
    _stopping: bool

    async def _submit(self, body: dict[str, Any], forward: bool,
                      timeout: float) -> tuple[int, Any]:
        try:
            async with asyncio.timeout(timeout):
                return await self._submit_until(body, forward)
        except TimeoutError:
            raise ProposalUnknown(f"no outcome within {timeout}s") from None

    async def _submit_until(self, body: dict[str, Any], forward: bool) -> tuple[int, Any]:
        node = self._node()
        while True:
            if self._stopping:
                raise ProposalUnknown("the driver is stopping")
            if node.role is Role.LEADER:
                try:
                    return await self._run_here(body)
                except NotLeader:  # lost leadership before appending: nothing to undo
                    if not forward:
                        raise
                    continue
            if not forward:
                raise self._not_leader()
            leader = node.lead
            reply = None if leader in (NONE, self.id) else await self._forward(leader, body)
            if reply is None:  # no leader known, or it refused: nothing was appended
                await asyncio.sleep(self.config.tick_s)
                continue
            index, result = reply
            await self._wait_applied(index)
            return index, result

    async def _forward(self, leader: int, body: dict[str, Any]) -> tuple[int, Any] | None:
        assert self.rpc is not None
        try:
            reply = await self.rpc.request(leader, body, timeout=DEFAULT_TIMEOUT_S)
        except PeerUnavailable as exc:
            if exc.sent:
                raise ProposalUnknown(f"lost the leader {leader} under a proposal: {exc}") from exc
            return None
        except RpcError as exc:
            raise ProposalUnknown(f"forwarding to node {leader} failed: {exc}") from exc
        if not isinstance(reply, dict) or "index" not in reply:
            return None
        return reply["index"], reply.get("result")

    async def _run_here(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Carry out a request on the leader (this node)."""
        op, node = body.get("op"), self._node()
        if op == "propose":
            return await self._append(lambda: node.propose(TAG_APP + body["data"]))
        if op == "add":
            node_id, (host, port) = body["id"], body["addr"]
            if node_id in node.voters:  # before publishing: a new address would cut it off
                raise ValueError(f"node {node_id} is already a voter")
            address = TAG_ADDRESS + msgpack.packb([node_id, [host, port]])
            await self._append(lambda: node.propose(address))
            return await self._append(lambda: node.propose_conf_change(ConfChangeOp.ADD, node_id))
        if op == "remove":
            return await self._append(
                lambda: node.propose_conf_change(ConfChangeOp.REMOVE, body["id"]))
        raise ValueError(f"unknown operation {op!r}")

    async def _append(self, propose: Callable[[], int]) -> tuple[int, Any]:
        """Append with `propose` (a Node method), retrying while the leader refuses for now
        (a transfer or a configuration change under way); wait until the entry is applied."""
        node = self._node()
        while True:
            try:
                index = propose()
                break
            except NotLeader:
                raise self._not_leader() from None
            except ProposalDropped:
                await asyncio.sleep(self.config.tick_s)
        self.stats["proposals"] += 1
        return await self._wait_entry(index, node.term)

    async def _wait_entry(self, index: int, term: int) -> tuple[int, Any]:
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        old = self._waiters.get(index)
        if old is not None:
            fail_future(old[1], ProposalDropped(f"entry {index} was overwritten"))
        self._waiters[index] = (term, future)
        self._wake.set()
        try:
            return await future
        finally:
            if self._waiters.get(index, (0, None))[1] is future:
                del self._waiters[index]

    async def _wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._apply_waiters, (index, next(self._seq), future))
        await future

    def _not_leader(self) -> NotLeaderError:
        lead = self._node().lead
        return NotLeaderError(lead, self.addresses.get(lead) if lead else None)

    def _node(self) -> Node:
        if self.node is None:
            raise RuntimeError("the driver is not started")
        return self.node
