"""Redis Cluster's ASK and ASKING while slots move: a node's side of both.

Strategy: a slot move (shardstore/migrate.py) freezes the slot's keys in the source shard
and copies them, in key order, to the target shard. Redis Cluster clients (redis-py's
RedisCluster, `redis-cli -c`) know two answers for that window, and this module gives them
within our guarantee (no acknowledged write lost or applied twice):

- the source: a request on keys its fence holds (shardstore/fences.py) is refused there
  by its own log. The node turns that refusal into `-ASK <slot> <host:port>` (the target
  shard's master) when the move is still copying and the configuration's record of the
  move says the copy has passed each of the keys (`Move.copied_past`: recorded only once
  the target applied the batch, so the target agrees); into `-MOVED` when the move has
  ended (a node whose slot map is behind); else the refusal stays `-TRYAGAIN` (a key on
  its way, or not yet walked: the source cannot tell a key that is not there yet). A
  multi-key command (keys of one slot, by hash tag) whose keys the copy has partly passed
  gets `-TRYAGAIN Multiple keys request during rehashing of slot`, Redis's own reply when
  a migrating node holds some of a request's keys and not the others;
- the target: `ASKING` marks the connection for its next command, and only that one: any
  other command clears the mark once it has run (`clear_after_other_commands`), as Redis
  resets a client's ASKING flag after every command but ASKING itself. A command marked on
  a slot whose keys are being copied into a shard this node hosts is served by that shard:
  a write through the shard's log with the ASKING route, which the shard's machine applies
  only if the copy into it has passed every key (else TRYAGAIN, as Redis answers for keys
  not yet migrated), and the copy never overwrites a key once the walk has passed it; a
  read after the shard's read barrier, with the same check. A multi-key command refused
  so gets Redis's `-TRYAGAIN Multiple keys request during rehashing of slot` too (Redis
  answers it when an importing node lacks some of the keys of an ASKING request).

Writes under ASKING go to the target's leader over the move service (migrate.OP_ASKING):
refused (nothing appended) is retried until the timeout; a lost outcome is `-UNKNOWN`.
The counters (`asks`: ASK redirections answered; `asking_served`: commands served under
ASKING) are in INFO's Shardstore section.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from core.command_table import Command
from core.raft_service import ERR_OUTCOME_UNKNOWN
from core.resp import OK, CommandError
from core.resp_session import Session
from core.rpc import PeerUnavailable, RpcError
from native.crc16 import key_slot
from shardstore import cluster
from shardstore.cluster import ClusterConfig, ClusterView, Shard
from shardstore.fences import ERR_IMPORTING, fenced_move
from shardstore.keysets import KIND_SLOTS
from shardstore.machine import ShardMachine, decode_reply
from shardstore.migrate import (
    OP_ASKING,
    REPLY_OK,
    REPLY_UNKNOWN,
    SERVICE_MOVE,
    MoveService,
)
from shardstore.moves import STATE_CANCEL, STATE_COPY

__all__ = ["ASK", "ASKING_ATTR", "ERR_ASKING_TIMEOUT", "ERR_MULTI_KEYS_MOVING", "Asking",
           "clear_after_other_commands"]

ASKING_ATTR = "shardstore_asking"  # set on a Session by ASKING, taken by the next command
ASKING_NAME = "ASKING"
ASK = "ASK {} {}"
ERR_ASKING_TIMEOUT = "TRYAGAIN shard {} has no leader to take a write under ASKING; retry"
# Redis's reply (cluster.c, CLUSTER_REDIR_UNSTABLE) to a request on several keys of a slot
# that is being migrated when only some of them have moved.
ERR_MULTI_KEYS_MOVING = "TRYAGAIN Multiple keys request during rehashing of slot"
RETRY_S = 0.05  # between two tries of a write under ASKING nobody took
_IMPORTING_HEAD = ERR_IMPORTING.split("{}")[0]


def clear_after_other_commands(rows: Iterable[Command]) -> None:
    """Make every row of `rows` (and their subcommand rows) but ASKING clear the
    connection's ASKING mark once its handler has returned, so the mark lasts for the one
    command right after ASKING whatever that command is. The rows are changed in place:
    the server's name and batch indexes keep pointing at them."""
    for row in rows:
        clear_after_other_commands(row.subcommands)
        if row.name.upper() == ASKING_NAME:
            continue
        if row.handler is not None:
            object.__setattr__(row, "handler", _clearing(row.handler))
        if row.batch is not None:
            object.__setattr__(row, "batch", _clearing(row.batch))


def _clearing(inner: Callable[[Session, Any], Any]) -> Callable[[Session, Any], Any]:
    def handler(session: Session, args: Any) -> Any:
        try:
            return inner(session, args)
        finally:
            session.__dict__.pop(ASKING_ATTR, None)

    return handler


class AskingNode(Protocol):
    """What this module needs of shardstore.server.ShardNode."""

    me: int
    host: Any
    service: Any
    layer: Any
    machines: dict[int, ShardMachine]
    move_service: MoveService
    options: Any

    @property
    def config(self) -> ClusterConfig: ...

    def view(self) -> ClusterView: ...

    def now_ms(self) -> int: ...

    def keys_of(self, args: list[bytes]) -> list[bytes]: ...


class Asking:
    """ASK and ASKING for one node (see the module header)."""

    def __init__(self, node: AskingNode) -> None:
        self.node = node
        self.asks = 0
        self.asking_served = 0

    # -- the target's side ---------------------------------------------------------------------

    @staticmethod
    def cmd_asking(session: Session, args: list[bytes]) -> Any:
        """ASKING: the next command of this connection may be for an importing slot."""
        setattr(session, ASKING_ATTR, True)
        return OK

    @staticmethod
    def take(session: Session) -> bool:
        """Whether the connection sent ASKING just before this command (cleared)."""
        if not getattr(session, ASKING_ATTR, False):
            return False
        setattr(session, ASKING_ATTR, False)
        return True

    def importing(self, slot: int) -> Shard | None:
        """The shard hosted here that a move is copying `slot`'s keys into, if any."""
        config = self.node.config
        for move in config.moves.values():
            if (move.state == STATE_COPY and move.keys.kind == KIND_SLOTS
                    and slot in move.keys.slots):
                shard = config.shards.get(move.target)
                if shard is not None and shard.shard_id in self.node.machines:
                    return shard
        return None

    def serve(self, shard: Shard, args: list[bytes], write: bool, stale_ok: bool
              ) -> Any:
        """The coroutine that serves `args` under ASKING on `shard` (see the header)."""
        return self._write(shard, args) if write else self._read(shard, args, stale_ok)

    async def _read(self, shard: Shard, args: list[bytes], stale_ok: bool) -> Any:
        if not stale_ok:
            await self.node.service.barrier(shard.group)
        machine = self.node.machines.get(shard.shard_id)
        if machine is None:
            raise CommandError(ERR_ASKING_TIMEOUT.format(shard.shard_id))
        refusal = machine.refuse_unimported(args)  # as a write under ASKING is judged
        if refusal is not None:
            raise self._unstable(refusal, args)
        reply = self.node.layer.execute_read(machine.store, self.node.now_ms(), args)
        if isinstance(reply, CommandError):
            raise reply
        self.asking_served += 1
        return reply

    async def _write(self, shard: Shard, args: list[bytes]) -> Any:
        timeout = float(self.node.options.timeout_s)
        deadline = time.monotonic() + timeout
        payload = [OP_ASKING, list(args)]
        while True:
            reply = await self._try_write(shard, payload, timeout)
            if reply is not None and reply[0] == REPLY_OK:
                break
            if reply is not None and reply[0] == REPLY_UNKNOWN:
                raise CommandError(ERR_OUTCOME_UNKNOWN.format(reply[1]))
            if time.monotonic() > deadline:  # nothing was appended: safe to retry
                raise CommandError(ERR_ASKING_TIMEOUT.format(shard.shard_id))
            await asyncio.sleep(RETRY_S)
        result = decode_reply(reply[1])
        if isinstance(result, CommandError):
            raise self._unstable(result, args)
        self.asking_served += 1
        return result

    def _unstable(self, error: CommandError, args: list[bytes]) -> CommandError:
        """Redis's TRYAGAIN for a multi-key command the import refused, else `error`."""
        if error.message.startswith(_IMPORTING_HEAD) and _several(self.node.keys_of(args)):
            return CommandError(ERR_MULTI_KEYS_MOVING)
        return error

    async def _try_write(self, shard: Shard, payload: list[Any], timeout: float
                         ) -> list[Any] | None:
        group = self.node.host.group(shard.group)
        leader = group.node.lead if group is not None and group.node is not None else 0
        if not leader:
            return None
        if leader == self.node.me:
            return await self.node.move_service.serve(shard.group, payload)
        try:
            return await self.node.host.transport.request(leader, SERVICE_MOVE, shard.group,
                                                          payload, timeout)
        except PeerUnavailable as exc:
            if exc.sent:
                return [REPLY_UNKNOWN, f"lost the leader {leader} under a write: {exc}"]
            return None
        except RpcError as exc:
            return [REPLY_UNKNOWN, f"the write on node {leader} failed: {exc}"]

    # -- the source's side ---------------------------------------------------------------------

    def redirect(self, error: CommandError, args: list[bytes]) -> CommandError:
        """`error`, or the ASK or MOVED it stands for when it is a fence's refusal of a
        slot move's keys (see the module header)."""
        move_id = fenced_move(error.message)
        if move_id is None:
            return error
        move = self.node.config.moves.get(move_id)
        keys = self.node.keys_of(args)
        if move is None or move.keys.kind != KIND_SLOTS or not keys \
                or move.state == STATE_CANCEL or move.cancelled:
            return error
        if move.state == STATE_COPY:
            passed = [move.copied_past(k) for k in keys]
            if not all(passed):  # some on their way: Redis's answer when only some moved
                return CommandError(ERR_MULTI_KEYS_MOVING) if any(passed) else error
        slot = key_slot(keys[0])
        if move.state == STATE_COPY:
            address = self._master_address(move.target)
            if address is None:
                return error
            self.asks += 1
            return CommandError(ASK.format(slot, address))
        owner = self.node.config.shard_of_slot(slot)  # ended: the owner now, as we know it
        ended_at = move.target if owner is None or owner.shard_id == move.source \
            else owner.shard_id
        address = self._master_address(ended_at)
        return error if address is None else CommandError(cluster.moved(slot, address))

    def _master_address(self, shard_id: int) -> str | None:
        view = self.node.view()
        shard = view.config.shards.get(shard_id)
        members = view.ordered_members(shard) if shard is not None else []
        return view.addresses[members[0]] if members else None

    def stats(self) -> dict[str, int]:
        """INFO fields: ASK redirections answered, commands served under ASKING."""
        return {"asks": self.asks, "asking_served": self.asking_served}


def _several(keys: list[bytes]) -> bool:
    """Whether a request names more than one distinct key."""
    return len(set(keys)) > 1
