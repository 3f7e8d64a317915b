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
every replica. The request to the leader is {"batch": [[word, ...], ...], "ranged": [i,
...]} (the positions of the commands so routed); the reply is [REPLY_OK, [result, ...]]
or [REPLY_REFUSED, reason].

Batching: the leader does not append an entry per command. Commands queue per group
(`_Pending`) and the queue becomes one entry (machine.KIND_BATCH; a lone command stays a
plain command entry) at the next turn of the event loop, or as soon as it holds
MAX_BATCH_COMMANDS commands or MAX_BATCH_BYTES bytes: the writes of every connection that
arrived in one loop pass, and a connection's pipelined writes to the shard
(`write_many`, shardstore/handlers.py), share one Raft entry, one append and one apply.
Each caller gets its own commands' replies, in order. The entry's outcome is every
command's: refused, all are sent again; unknown, all are unknown.

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
from shardstore.machine import encode_batch, encode_command

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_COMMANDS", "SERVICE_WRITE", "Command",
           "LeaderWrites"]

SERVICE_WRITE = "shardstore.write"
REPLY_OK = "ok"
REPLY_REFUSED = "refused"
ERR_NO_GROUP = "this node hosts no group {}"
ERR_MALFORMED = "malformed write"
MAX_BATCH_COMMANDS = 1024  # commands in one entry at most
MAX_BATCH_BYTES = 1 << 20  # bytes of arguments in one entry at most (one command may pass it)

Command = tuple[list[bytes], bool]  # a write's words, and whether routed as range rows


class _Pending:
    """The commands queued for a group's next entry, and who waits for which."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.waiters: list[tuple[asyncio.Future[list[Any]], int]] = []  # (future, count)
        self.size = 0

    def add(self, commands: list[Command]) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.commands.extend(commands)
        self.waiters.append((future, len(commands)))
        self.size += sum(len(a) for args, _ in commands for a in args)
        return future

    def full(self) -> bool:
        return len(self.commands) >= MAX_BATCH_COMMANDS or self.size >= MAX_BATCH_BYTES

    def refuse(self, reason: str) -> None:
        for future, _ in self.waiters:
            if not future.done():
                future.set_result([REPLY_REFUSED, reason])

    def fail(self, exc: BaseException) -> None:
        for future, _ in self.waiters:
            if not future.done():
                future.set_exception(exc)

    def answer(self, results: list[Any]) -> None:
        start = 0
        for future, count in self.waiters:
            if not future.done():
                future.set_result([REPLY_OK, results[start:start + count]])
            start += count


class LeaderWrites:
    """`await write(group_id, args)` from any member; the core/rpc service of the leader
    side (register it on the host's transport: `on_message`, `on_request`)."""

    def __init__(self, host: RaftHost, now_ms: Callable[[], int], timeout_s: float) -> None:
        self.host = host
        self.now_ms = now_ms
        self.timeout_s = timeout_s
        self._pending: dict[int, _Pending] = {}  # group id -> its next entry's commands
        self._proposing: set[asyncio.Task[None]] = set()

    async def write(self, group_id: int, args: list[bytes], ranged: bool = False) -> Any:
        """What apply returned for the command `args`, stamped and committed by the
        group's leader. Raises ProposalUnknown (see the module header)."""
        (result,) = await self.write_many(group_id, [(args, ranged)])
        return result

    async def write_many(self, group_id: int, commands: list[Command]) -> list[Any]:
        """What apply returned for each of `commands`, applied in order (in one entry, or
        in more than one when they exceed the batch limits, never interleaved with another
        caller's inside that run). Raises ProposalUnknown for all of them together.

        On the leader the first try needs no timer of its own: its entry's proposal is
        bounded by `timeout_s` already (`_propose`)."""
        group = self.host.group(group_id)
        node = group.node if group is not None else None
        if node is not None and node.lead == self.host.node_id \
                and len(commands) <= MAX_BATCH_COMMANDS:
            reply = await self._here(group_id, commands)
            if reply[0] == REPLY_OK:
                return list(reply[1])
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._until_done(group_id, commands)
        except TimeoutError:
            raise ProposalUnknown(f"no outcome within {self.timeout_s}s") from None

    async def _until_done(self, group_id: int, commands: list[Command]) -> list[Any]:
        while True:
            group = self.host.group(group_id)
            if group is None or group.node is None:
                raise ProposalUnknown(ERR_NO_GROUP.format(group_id))
            leader = group.node.lead
            if leader == self.host.node_id:
                reply = await self._here(group_id, commands)
            elif leader != NONE:
                reply = await self._there(leader, group_id, commands)
            else:
                reply = None
            if reply is not None and reply[0] == REPLY_OK:
                return list(reply[1])
            await asyncio.sleep(group.config.tick_s)  # nothing appended: ask again

    async def _there(self, leader: int, group_id: int, commands: list[Command]) -> Any:
        payload = {"batch": [list(args) for args, _ in commands],
                   "ranged": [i for i, (_, ranged) in enumerate(commands) if ranged]}
        try:
            return await self.host.transport.request(leader, SERVICE_WRITE, group_id,
                                                     payload, self.timeout_s)
        except PeerUnavailable as exc:
            if exc.sent:
                raise ProposalUnknown(f"lost the leader {leader} under a write: {exc}") from exc
            return None
        except RpcError as exc:
            raise ProposalUnknown(f"the write on node {leader} failed: {exc}") from exc

    async def _here(self, group_id: int, commands: list[Command]) -> list[Any]:
        """On the leader: queue for the group's next entry, wait for the results.
        [REPLY_OK, [result, ...]], or [REPLY_REFUSED, reason] when nothing was appended
        (not the leader, or dropped before committing)."""
        if len(commands) > MAX_BATCH_COMMANDS:  # a run longer than one entry: in pieces
            results: list[Any] = []
            for start in range(0, len(commands), MAX_BATCH_COMMANDS):
                reply = await self._here(group_id, commands[start:start + MAX_BATCH_COMMANDS])
                if reply[0] != REPLY_OK:
                    if results:  # a piece went in: the rest may not be resent as new
                        raise ProposalUnknown(f"the leader refused the rest: {reply[1]}")
                    return reply
                results.extend(reply[1])
            return [REPLY_OK, results]
        pending = self._pending.get(group_id)
        if pending is None:
            pending = self._pending[group_id] = _Pending()
            asyncio.get_running_loop().call_soon(self._flush, group_id, pending)
        future = pending.add(commands)
        if pending.full():
            self._flush(group_id, pending)
        return await future

    def _flush(self, group_id: int, pending: _Pending) -> None:
        """Propose `pending` as one entry (unless already proposed: a full queue goes at
        once, and its turn of the loop then finds it gone)."""
        if self._pending.get(group_id) is not pending:
            return
        del self._pending[group_id]
        task = asyncio.get_running_loop().create_task(self._propose(group_id, pending))
        self._proposing.add(task)
        task.add_done_callback(self._proposing.discard)

    async def _propose(self, group_id: int, pending: _Pending) -> None:
        group = self.host.group(group_id)
        if group is None:
            pending.refuse(ERR_NO_GROUP.format(group_id))
            return
        commands = pending.commands
        now = self.now_ms()
        lone = len(commands) == 1
        entry = encode_command(now, *commands[0]) if lone else encode_batch(now, commands)
        try:
            result = await group.execute(entry, forward=False, timeout=self.timeout_s)
        except ProposalDropped as exc:  # NotLeaderError too: nothing was appended
            pending.refuse(str(exc))
        except asyncio.CancelledError:
            pending.fail(ProposalUnknown("the node stopped under the write"))
            raise
        except Exception as exc:  # every waiter gets the outcome: unknown
            pending.fail(exc)
        else:
            pending.answer([result] if lone else list(result))

    # -- the core/rpc service ------------------------------------------------------------------

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        """The service takes requests only."""

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        if self.host.group(group_id) is None:
            raise UnknownGroup(SERVICE_WRITE, group_id)
        commands = _commands_of(payload)
        if commands is None:
            return [REPLY_REFUSED, ERR_MALFORMED]
        return await self._here(group_id, commands)


def _commands_of(payload: Any) -> list[Command] | None:
    """The commands of a forwarded request ({"batch": ..., "ranged": ...}), or None."""
    if not isinstance(payload, dict):
        return None
    batch, ranged = payload.get("batch"), payload.get("ranged", [])
    if not isinstance(batch, list) or not batch or not isinstance(ranged, list):
        return None
    if not all(type(i) is int for i in ranged):
        return None
    if not all(isinstance(args, list) and args and all(isinstance(a, bytes) for a in args)
               for args in batch):
        return None
    marked = set(ranged)
    return [(args, i in marked) for i, args in enumerate(batch)]
