"""The client port's commands of a shardstore node: the command layer's rows bound to
routing, and the Redis Cluster commands.

Strategy: each row of shardstore.commands.COMMANDS (but the connection and server rows
core answers for every daemon: COMMON_NAMES) gets a handler here by its key specs:

- a row with keys: `request_slot` (CROSSSLOT when the keys span slots); the slot's shard
  from the slot map; a shard this node does not host answers `-MOVED slot host:port`
  (its master as CLUSTER SLOTS reports it); a write ("write" flag) is committed through
  the shard's Raft group, stamped and appended by its leader (shardstore/writes.py), and
  answered with what its apply returned; a read runs on the local replica after the
  shard's read barrier, or without one on a connection that sent READONLY (as Redis
  Cluster replicas serve);
- a row without keys (DBSIZE, SCAN, FLUSHALL, ...): about the shards this node leads, as
  Redis Cluster's commands are about one node: a write goes through each of them, a read
  runs over them together (machine.MergedKV), each shard's keys as the slot map gives them
  to it while a move involving it is under way (shardstore/owned.py: no key counted
  twice).

Pipelined runs: core's `RespServer.pipeline` offers a connection's parsed commands and
shardstore/pipeline.py takes a run of consecutive keyed writes to one shard (one request
to its leader, one Raft entry; an unknown outcome is every command's `-UNKNOWN ...`), or
of reads of one shard that need a read barrier (one barrier for the run). Reads of one
shard that arrive in the same loop turn share a barrier too (shardstore/barriers.py).

While a shard has no leader the service answers `-TRYAGAIN ...`; a write whose outcome is
unknown (the leader lost under it, a timeout) is answered `-UNKNOWN ...`, which clients do
not resend by themselves as they resend TRYAGAIN (the write may have been applied). Keys
a move has fenced in their shard (shardstore/fences.py) are refused there: a write when it
is applied, a read after the barrier; the refusal is answered `-ASK` to the target when
the copy has taken the keys, else `-TRYAGAIN`, and `-MOVED` once the move has ended
(shardstore/asking.py, which also serves a command sent under ASKING to the target).
redis-py's RedisCluster and redis-cli -c follow ASK and MOVED; redis-py retries TRYAGAIN.
The slot-editing CLUSTER subcommands (SETSLOT, ADDSLOTS, ...) are refused with a clear
error: slots move by `shardstore admin reshard`, not by `redis-cli --cluster reshard`.
The CLUSTER container (SLOTS SHARDS NODES INFO MYID KEYSLOT COUNTKEYSINSLOT
GETKEYSINSLOT) and ASKING, READONLY, READWRITE answer as Redis does (replies built in
shardstore/cluster_replies.py); WAIT answers at once from the commit state of the shards this
node leads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from core.command_table import (
    ERR_CROSSSLOT,
    Command,
    CrossSlotError,
    KeysError,
    request_slot,
)
from core.raft.driver_types import ProposalUnknown
from core.raft.errors import RaftError
from core.raft_service import ERR_OUTCOME_UNKNOWN, RaftService
from core.resp import OK, CommandError
from core.resp_commands import parse_int
from core.resp_session import Session
from native.crc16 import SLOT_COUNT, key_slot
from shardstore import cluster
from shardstore.asking import ASKING_ATTR, Asking
from shardstore.barriers import SharedBarriers
from shardstore.cluster import ClusterConfig, ClusterView, Shard
from shardstore.cluster_replies import info_reply, nodes_reply, shards_reply, slots_reply
from shardstore.cmd_tables import TableCommands
from shardstore.machine import MergedKV, ShardMachine, decode_reply
from shardstore.owned import owned_store
from shardstore.pipeline import Pipelines, single_key
from shardstore.writes import LeaderWrites

__all__ = ["COMMON_NAMES", "ERR_CLUSTERDOWN", "ClientCommands", "NodeView"]

ERR_CLUSTERDOWN = "CLUSTERDOWN Hash slot not served"
ERR_INVALID_SLOT = "ERR Invalid slot"  # COUNTKEYSINSLOT
ERR_INVALID_SLOT_OR_COUNT = "ERR Invalid slot or number of keys"  # GETKEYSINSLOT
ERR_KEYS = "ERR wrong number of arguments for '{}' command"
ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
ERR_TIMEOUT_NEGATIVE = "ERR timeout is negative"
ERR_OPENING = "TRYAGAIN shard {} is opening on this node"
# Answered by core for every RESP daemon (core.resp_commands): not rebound here.
COMMON_NAMES = frozenset({"PING", "ECHO", "HELLO", "AUTH", "QUIT", "INFO", "COMMAND",
                          "CLIENT", "CONFIG", "SELECT"})
WALK_CHUNK = 1000  # keys read at a time when walking a shard for a slot's keys
SLOT_KEYS_UNBOUNDED = 1 << 62  # COUNTKEYSINSLOT counts them all
READONLY_ATTR = "shardstore_readonly"  # set on a Session by READONLY
WRITE_FLAG = "write"
# Slot edits of redis-cli --cluster (reshard, fix, add-node): refused, moves are ours.
SLOT_EDITS = ("SETSLOT", "ADDSLOTS", "ADDSLOTSRANGE", "DELSLOTS", "DELSLOTSRANGE", "MEET",
              "FORGET", "REPLICATE", "FAILOVER", "RESET", "BUMPEPOCH", "SET-CONFIG-EPOCH")
ERR_SLOT_EDITS = ("ERR CLUSTER {} is not supported: shardstore moves slots itself, online "
                  "and without loss; use `shardstore admin reshard` or SHARDSTORE.MOVE")


class NodeView(Protocol):
    """What the handlers need of the node (shardstore.server.ShardNode)."""

    me: int
    name: str
    layer: Any  # shardstore.commands
    service: RaftService
    host: Any  # core.raft.host.RaftHost
    writes: LeaderWrites
    machines: dict[int, ShardMachine]

    @property
    def config(self) -> ClusterConfig: ...

    def now_ms(self) -> int: ...

    def view(self) -> ClusterView: ...

    def led_shards(self) -> list[Shard]: ...

    def replicas_in_sync(self) -> int: ...


def _readonly(session: Session) -> bool:
    return bool(getattr(session, READONLY_ATTR, False))


class ClientCommands:
    """The node's command rows (see the module header)."""

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.tables = TableCommands(node)  # type: ignore[arg-type]  # TABLE.*, range rows
        self.asking = Asking(node)  # type: ignore[arg-type]  # ASK/ASKING (asking.py)
        self.pipelines = Pipelines(self, _readonly)  # pipelined runs (pipeline.py)
        # reads arriving in one loop turn share a read barrier (barriers.py)
        self.barriers = SharedBarriers(lambda group: self.node.service.barrier(group))

    def rows(self) -> list[Command]:
        self.layer = self.node.layer
        cursor_table = getattr(self.layer, "ScanCursors", None)
        self.cursors = cursor_table() if cursor_table is not None else None
        table: Iterable[Command] = self.layer.COMMANDS
        if isinstance(table, dict):
            table = table.values()
        bound = [self._bind(row) for row in table if row.name.upper() not in COMMON_NAMES]
        return [*bound, *self._cluster_rows(), *self.tables.rows()]

    def _bind(self, row: Command) -> Command:
        handler = self._keyed(row) if row.key_specs else self._keyless(row)
        return dataclasses.replace(row, handler=handler, subcommands=())

    # -- pipelined runs (shardstore/pipeline.py) ---------------------------------------------

    def pipeline(self, session: Session, commands: list[list[bytes]], index: int
                 ) -> tuple[list[Command], Coroutine[Any, Any, list[Any]]] | None:
        """core.resp_server.Pipeline: shardstore/pipeline.py's run that starts at
        commands[index], or None."""
        return self.pipelines.take(session, commands, index)

    # -- commands with keys --------------------------------------------------------------------

    def _keyed(self, row: Command) -> Any:
        write = WRITE_FLAG in row.flags
        single = single_key(row)  # dispatch checked the arity: args[1] is there
        runner = getattr(self.layer, "read_runner", None)
        read = runner(row.name) if runner is not None and not write else None

        def handler(session: Session, args: list[bytes]) -> Coroutine[Any, Any, Any]:
            asking = self.asking.take(session)
            ranged = self.tables.range_shard(row, args)  # rows of range tables: no slots
            if ranged is not None:
                return (self._write(ranged, args, ranged=True) if write
                        else self._read(ranged, args, _readonly(session)))
            try:
                slot = key_slot(args[1]) if single else request_slot(row, args)
            except CrossSlotError:
                raise CommandError(ERR_CROSSSLOT) from None
            except KeysError:
                raise CommandError(ERR_KEYS.format(row.name.lower())) from None
            if slot is None:
                return self._keyless(row)(session, args)
            importing = self.asking.importing(slot) if asking else None
            if importing is not None:
                return self.asking.serve(importing, args, write, _readonly(session))
            shard = self.local_shard(slot)
            if write:
                return self._write(shard, args)
            return self._read_or_wait(shard, args, _readonly(session), read)

        if single and read is not None:
            return self._ready_read(read, handler)
        return handler

    def _ready_read(self, read: Any, general: Any) -> Any:
        """The handler of a one-key read with a read runner (GET, STRLEN, HGET, ...): when
        nothing but the slot map routes the key (no ASKING, no range or foreign table, no
        fence on its shard) and the read needs no barrier (READONLY, or reads_ready: this
        node the only voter and leader, everything committed applied), it is answered
        here from the local replica; anything else goes to `general`, which decides the
        same way with every case in view."""
        node, tables = self.node, self.tables

        def handler(session: Session, args: list[bytes]) -> Any:
            catalog = tables.catalog
            if (getattr(session, ASKING_ATTR, False) or catalog.has_ranges
                    or tables.bindings.elsewhere(catalog, node.config.keyspace)):
                return general(session, args)
            shard = node.config.shard_of_slot(key_slot(args[1]))
            machine = node.machines.get(shard.shard_id) if shard is not None else None
            if machine is None or machine.fences:
                return general(session, args)
            group = node.host.group(shard.group)  # type: ignore[union-attr]
            if group is None or not (group.reads_ready() or _readonly(session)):
                return general(session, args)
            return self._reply(read(machine.store, node.now_ms(), args))

        return handler

    def local_shard(self, slot: int) -> Shard:
        """The shard of `slot` if this node hosts it; else CommandError MOVED/CLUSTERDOWN."""
        shard = self.node.config.shard_of_slot(slot)
        if shard is None:
            raise CommandError(ERR_CLUSTERDOWN)
        if shard.shard_id in self.node.machines:
            return shard
        if self.node.me in shard.members:
            raise CommandError(ERR_OPENING.format(shard.shard_id))
        view = self.node.view()
        members = view.ordered_members(shard)
        if not members:
            raise CommandError(ERR_CLUSTERDOWN)
        raise CommandError(cluster.moved(slot, view.addresses[members[0]]))

    async def _write(self, shard: Shard, args: list[bytes], ranged: bool = False) -> Any:
        try:
            result = await self.node.writes.write(shard.group, args, ranged)
        except (ProposalUnknown, TimeoutError) as exc:  # never TRYAGAIN: clients resend it
            raise CommandError(ERR_OUTCOME_UNKNOWN.format(exc or "timed out")) from None
        except RaftError as exc:
            service = self.node.service
            raise service.unavailable(service.handle(shard.group), exc) from None
        reply = decode_reply(result)
        if isinstance(reply, CommandError):
            raise self.asking.redirect(reply, args)
        return reply

    def _read_or_wait(self, shard: Shard, args: list[bytes], stale_ok: bool,
                      read: Any = None) -> Any:
        """The reply at once when the read needs no barrier (READONLY, or a group that needs
        no round: RaftService.reads_ready); else a coroutine that waits for one first. A
        reply at once spares the connection a task per command. `read`: the command's
        commands.read_runner, if it has one."""
        if stale_ok or self.node.service.reads_ready(shard.group):
            return self.read_local(shard, args, read)
        return self._read(shard, args, stale_ok)

    async def _read(self, shard: Shard, args: list[bytes], stale_ok: bool) -> Any:
        if not stale_ok:
            await self.barriers.wait(shard.group)
        return self.read_local(shard, args)

    def read_local(self, shard: Shard, args: list[bytes], read: Any = None) -> Any:
        """The reply of read `args` from this node's replica of `shard`, with no barrier
        (the caller had one, or needs none); CommandError for a refusal. `read`: the
        command's commands.read_runner, if it has one."""
        machine = self.node.machines.get(shard.shard_id)
        if machine is None:
            raise CommandError(ERR_CLUSTERDOWN)
        if machine.fences:  # nothing to refuse without one
            refusal = machine.refuse_request(args,
                                             is_range_row=self.tables.catalog.is_range_row)
            if refusal is not None:
                raise self.asking.redirect(refusal, args)
        if read is not None:
            return self._reply(read(machine.store, self.node.now_ms(), args))
        return self._reply(self.layer.execute_read(machine.store, self.node.now_ms(), args))

    @staticmethod
    def _reply(reply: Any) -> Any:
        if isinstance(reply, CommandError):
            raise reply
        return reply

    # -- commands without keys: the shards this node leads -------------------------------------

    def _keyless(self, row: Command) -> Any:
        write = WRITE_FLAG in row.flags

        def handler(session: Session, args: list[bytes]) -> Coroutine[Any, Any, Any]:
            if write:
                return self._write_led(args)
            return self._read_led(args, _readonly(session))

        return handler

    async def _write_led(self, args: list[bytes]) -> Any:
        reply: Any = OK
        for shard in self.node.led_shards():
            reply = await self._write(shard, args)
        return reply

    async def _read_led(self, args: list[bytes], stale_ok: bool) -> Any:
        shards = self.node.led_shards()
        if not stale_ok:
            for shard in shards:
                await self.barriers.wait(shard.group)
        is_range_row = self.tables.catalog.is_range_row
        kv = MergedKV([owned_store(self.node.config, s.shard_id,
                                   self.node.machines[s.shard_id].store, is_range_row)
                       for s in shards if s.shard_id in self.node.machines])
        return self._reply(self.layer.execute_read(kv, self.node.now_ms(), args,
                                                   cursors=self.cursors))

    # -- Redis Cluster commands ----------------------------------------------------------------

    def _cluster_rows(self) -> list[Command]:
        view_flags = frozenset({"loading", "stale"})
        subs = (
            Command("SLOTS", lambda s, a: slots_reply(self.node.view()), 2, view_flags),
            Command("SHARDS", lambda s, a: shards_reply(self.node.view()), 2,
                    view_flags),
            Command("NODES", lambda s, a: nodes_reply(self.node.view()), 2,
                    view_flags),
            Command("INFO", lambda s, a: info_reply(self.node.view()), 2, view_flags),
            Command("MYID", lambda s, a: self.node.name.encode(), 2, view_flags),
            Command("KEYSLOT", lambda s, a: key_slot(a[2]), 3, view_flags),
            Command("COUNTKEYSINSLOT", self.cmd_countkeysinslot, 3, view_flags),
            Command("GETKEYSINSLOT", self.cmd_getkeysinslot, 4, view_flags),
            *(Command(name, self.cmd_slots_refused, -2, view_flags) for name in SLOT_EDITS),
        )
        fast = frozenset({"fast", "loading", "stale"})
        return [
            Command("CLUSTER", None, -2, subcommands=subs, summary="Redis Cluster commands"),
            Command("ASKING", self.asking.cmd_asking, 1, fast),
            Command("READONLY", self.cmd_readonly, 1, fast),
            Command("READWRITE", self.cmd_readwrite, 1, fast),
            Command("WAIT", self.cmd_wait, 3, frozenset({"noscript"}),
                    tips=("request_policy:all_shards", "response_policy:agg_min")),
        ]

    def cmd_readonly(self, session: Session, args: list[bytes]) -> Any:
        setattr(session, READONLY_ATTR, True)
        return OK

    def cmd_readwrite(self, session: Session, args: list[bytes]) -> Any:
        setattr(session, READONLY_ATTR, False)
        return OK

    def cmd_wait(self, session: Session, args: list[bytes]) -> Any:
        """WAIT numreplicas timeout: answered at once from the commit state (a write is
        acknowledged once committed, so it never needs to wait for more)."""
        parse_int(args[1], ERR_NOT_INTEGER)
        if parse_int(args[2], ERR_NOT_INTEGER) < 0:
            raise CommandError(ERR_TIMEOUT_NEGATIVE)
        return self.node.replicas_in_sync()

    def _slot_keys(self, slot: int, limit: int) -> list[bytes]:
        """Up to `limit` keys of `slot` in the local replica of its shard (a walk of the
        shard's keys: linear in the shard's size)."""
        shard = self.node.config.shard_of_slot(slot)
        machine = self.node.machines.get(shard.shard_id) if shard else None
        if machine is None:
            return []
        found: list[bytes] = []
        cursor = b""
        while len(found) < limit:
            keys = machine.store.keys_after(cursor, WALK_CHUNK)
            found.extend(k for k in keys if key_slot(k) == slot)
            if len(keys) < WALK_CHUNK:
                break
            cursor = keys[-1]
        return found[:limit]

    def cmd_slots_refused(self, session: Session, args: list[bytes]) -> Any:
        raise CommandError(ERR_SLOT_EDITS.format(args[1].decode(errors="replace").upper()))

    def cmd_countkeysinslot(self, session: Session, args: list[bytes]) -> Any:
        slot = parse_int(args[2], ERR_NOT_INTEGER)
        if not 0 <= slot < SLOT_COUNT:
            raise CommandError(ERR_INVALID_SLOT)
        return len(self._slot_keys(slot, SLOT_KEYS_UNBOUNDED))

    def cmd_getkeysinslot(self, session: Session, args: list[bytes]) -> Any:
        slot = parse_int(args[2], ERR_NOT_INTEGER)
        count = parse_int(args[3], ERR_NOT_INTEGER)
        if not 0 <= slot < SLOT_COUNT or count < 0:
            raise CommandError(ERR_INVALID_SLOT_OR_COUNT)
        return self._slot_keys(slot, count)
