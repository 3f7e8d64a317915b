"""A Raft group's proposals: submitting, forwarding to the leader, waiting for the outcome.

`RaftGroup` holds one `Proposer` and calls `submit` for every write of its API. A request is
a small dict (`{"op": "propose" | "add" | "remove", ...}`) so that the same body runs on
this node when it leads (`run_here`) or travels to the leader over the node transport
(`_forward`, answered there by `RaftGroup.on_request`, which calls `run_here`). On the
leader a request waits for its entry by index and term (core/raft/waiters.py): an entry of
another term at that index means the proposal was dropped. A forwarded request returns the
leader's index and result, then waits until this node has applied that index, so the
caller reads its own write locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from core.raft.driver_types import TAG_ADDRESS, TAG_APP, NotLeaderError, ProposalUnknown
from core.raft.errors import NotLeader, ProposalDropped
from core.raft.group_view import GroupView
from core.raft.messages import NONE, ConfChangeOp
from core.raft.node import Node
from core.raft.ready import Role
from core.rpc import PeerUnavailable, RpcError

__all__ = ["FORWARD_TIMEOUT_S", "Proposer"]

FORWARD_TIMEOUT_S = 10.0  # one forwarded request's round trip to the leader


class Proposer:
    """The proposal side of `group` (see the module header)."""

    def __init__(self, group: GroupView) -> None:
        self.group = group

    async def submit(self, body: dict[str, Any], forward: bool,
                     timeout: float) -> tuple[int, Any]:
        """Run `body` on the leader: (index, result) once applied here. Raises
        NotLeaderError (not `forward`), ProposalDropped, ProposalUnknown (timeout)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._submit_until(body, forward)
        except TimeoutError:
            raise ProposalUnknown(f"no outcome within {timeout}s") from None

    async def _submit_until(self, body: dict[str, Any], forward: bool) -> tuple[int, Any]:
        group = self.group
        node = group.live_node()
        while True:
            if group.stopping:
                raise ProposalUnknown("the group is stopping")
            if node.role is Role.LEADER:
                try:
                    return await self.run_here(body)
                except NotLeader:  # lost leadership before appending: nothing to undo
                    if not forward:
                        raise
                    continue
            if not forward:
                raise self.not_leader()
            leader = node.lead
            reply = None if leader in (NONE, group.id) else await self._forward(leader, body)
            if reply is None:  # no leader known, or it refused: nothing was appended
                await asyncio.sleep(group.config.tick_s)
                continue
            index, result = reply
            if group.applied < index:
                await group.waiters.applied(index)
            return index, result

    async def _forward(self, leader: int, body: dict[str, Any]) -> tuple[int, Any] | None:
        try:
            reply = await self.group.link.request(leader, body, FORWARD_TIMEOUT_S)
        except PeerUnavailable as exc:
            if exc.sent:
                raise ProposalUnknown(f"lost the leader {leader} under a proposal: {exc}") from exc
            return None
        except RpcError as exc:
            raise ProposalUnknown(f"forwarding to node {leader} failed: {exc}") from exc
        if not isinstance(reply, dict):
            return None
        if "dropped" in reply:
            raise ProposalDropped(f"the leader {leader} dropped it: {reply['dropped']}")
        if "unknown" in reply:
            raise ProposalUnknown(f"the leader {leader} cannot tell: {reply['unknown']}")
        if "refused" in reply:
            raise ValueError(reply["refused"])
        if "index" not in reply:
            return None  # not the leader (any more): nothing was appended
        return reply["index"], reply.get("result")

    async def run_here(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Carry out a request on the leader (this node)."""
        op, node = body.get("op"), self.group.live_node()
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
        group = self.group
        node: Node = group.live_node()
        while True:
            try:
                index = propose()
                break
            except NotLeader:
                raise self.not_leader() from None
            except ProposalDropped:
                await asyncio.sleep(group.config.tick_s)
        group.stats["proposals"] += 1
        group.wake()  # the Ready loop runs only once we wait, after the waiter is in place
        return await group.waiters.entry(index, node.term)

    def not_leader(self) -> NotLeaderError:
        group = self.group
        lead = group.live_node().lead
        return NotLeaderError(lead, group.addresses.get(lead) if lead else None)
