"""Writes to a shard, stamped with the time of the shard's leader.

Strategy: a write command becomes a Raft entry that carries `now_ms` (expiry times are
computed from it), and the contract is that the shard's leader stamps it. The node that
takes the request therefore does not build the entry unless it leads the shard: it sends
the command's words to the leader over the node transport (core/rpc service
SERVICE_WRITE), the leader stamps its clock into the entry, appends it and answers with
what apply returned. This is core's forwarding (core/raft/proposer.py) with the stamping
moved to the leader.

A write routed as rows of a range table (not by slot) says so (`ranged`): the entry
carries the route, so a shard's fences (shardstore/fences.py) judge its keys alike on
every replica; the request to the leader is then {"args": [...], "ranged": true} instead
of the plain list of words.

Outcomes: the leader refusing (it is not the leader any more, or the entry was dropped by
a new leader before it committed) means nothing was appended, so the request is sent
again to whoever leads now, until `timeout_s`; a lost connection after sending, a timeout
or another failure on the leader is an unknown outcome (ProposalUnknown), which the
client gets as `-UNKNOWN ...` (shardstore/handlers.py) and must not retry blindly. A
follower does not wait for its own replica to apply the write: reads wait for the read
barrier anyway, and READONLY reads are allowed to be behind, as on Redis replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from core.raft.driver_types import ProposalUnknown
from core.raft.errors import ProposalDropped
from core.raft.host import RaftHost
from core.raft.messages import NONE
from core.rpc import PeerUnavailable, RpcError, UnknownGroup
from shardstore.machine import encode_command

__all__ = ["SERVICE_WRITE", "LeaderWrites"]

SERVICE_WRITE = "shardstore.write"
REPLY_OK = "ok"
REPLY_REFUSED = "refused"
ERR_NO_GROUP = "this node hosts no group {}"


class LeaderWrites:
    """`await write(group_id, args)` from any member; the core/rpc service of the leader
    side (register it on the host's transport: `on_message`, `on_request`)."""

    def __init__(self, host: RaftHost, now_ms: Callable[[], int], timeout_s: float) -> None:
        self.host = host
        self.now_ms = now_ms
        self.timeout_s = timeout_s

    async def write(self, group_id: int, args: list[bytes], ranged: bool = False) -> Any:
        """What apply returned for the command `args`, stamped and committed by the
        group's leader. Raises ProposalUnknown (see the module header)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._until_done(group_id, args, ranged)
        except TimeoutError:
            raise ProposalUnknown(f"no outcome within {self.timeout_s}s") from None

    async def _until_done(self, group_id: int, args: list[bytes], ranged: bool) -> Any:
        while True:
            group = self.host.group(group_id)
            if group is None or group.node is None:
                raise ProposalUnknown(ERR_NO_GROUP.format(group_id))
            leader = group.node.lead
            if leader == self.host.node_id:
                reply = await self._here(group_id, args, ranged)
            elif leader != NONE:
                reply = await self._there(leader, group_id, args, ranged)
            else:
                reply = None
            if reply is not None and reply[0] == REPLY_OK:
                return reply[1]
            await asyncio.sleep(group.config.tick_s)  # nothing appended: ask again

    async def _there(self, leader: int, group_id: int, args: list[bytes],
                     ranged: bool) -> Any:
        payload: Any = {"args": list(args), "ranged": True} if ranged else list(args)
        try:
            return await self.host.transport.request(leader, SERVICE_WRITE, group_id,
                                                     payload, self.timeout_s)
        except PeerUnavailable as exc:
            if exc.sent:
                raise ProposalUnknown(f"lost the leader {leader} under a write: {exc}") from exc
            return None
        except RpcError as exc:
            raise ProposalUnknown(f"the write on node {leader} failed: {exc}") from exc

    async def _here(self, group_id: int, args: list[bytes], ranged: bool = False
                    ) -> list[Any]:
        """On the leader: stamp, append, wait for the result. [REPLY_REFUSED, reason] when
        nothing was appended (not the leader, or dropped before committing)."""
        group = self.host.group(group_id)
        if group is None:
            return [REPLY_REFUSED, ERR_NO_GROUP.format(group_id)]
        entry = encode_command(self.now_ms(), args, ranged)
        try:
            result = await group.execute(entry, forward=False, timeout=self.timeout_s)
        except ProposalDropped as exc:  # NotLeaderError too
            return [REPLY_REFUSED, str(exc)]
        return [REPLY_OK, result]

    # -- the core/rpc service ------------------------------------------------------------------

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        """The service takes requests only."""

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        if self.host.group(group_id) is None:
            raise UnknownGroup(SERVICE_WRITE, group_id)
        ranged = isinstance(payload, dict) and payload.get("ranged") is True
        if isinstance(payload, dict):
            payload = payload.get("args")
        if not isinstance(payload, list) or not all(isinstance(a, bytes) for a in payload):
            return [REPLY_REFUSED, "malformed write"]
        return await self._here(group_id, payload, ranged)
