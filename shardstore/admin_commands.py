"""The SHARDSTORE.* admin commands of a node: begin a move, list moves, the slot map by
shard id, and this node's replicas; readable with redis-cli, used by `shardstore admin`.

Strategy: any node answers. A move begins with a configuration entry (forwarded to the
configuration group's leader, which then drives it: shardstore/migrate.py); the lists are
read from this node's copy of the configuration after a read barrier on the configuration
group, so a move begun anywhere before is seen.

    SHARDSTORE.MOVE <from shard> <to shard> SLOTS <0-99,200>   -> the move's id
    SHARDSTORE.MOVE <from shard> <to shard> TABLE <range table> <low|-> <high|+>
                         -> the rows of a range table in [low, high) (points as
                            TABLE.SPLIT writes them), the table's map handed over at the end
    SHARDSTORE.MOVE CANCEL <id>  -> OK: roll back a move still copying (shardstore/
                            moves.py OP_CANCEL): the source serves its keys again, the
                            target's copies are purged, the slot map never changed
    SHARDSTORE.MOVES     -> per move under way or among the last finished (state done):
                            id, keys, source, target, state, copied, purged, epoch (the
                            epoch it began at), cancelled (1: rolled back)
    SHARDSTORE.SLOTS     -> [first, last, shard id] per range of the slot map
    KEYSPACE.CREATE <name> <node id>... [SHARDS n] [REPLICAS r]  -> OK: a new keyspace
                            on nodes serving none yet (shardstore/keyspaces.py); each
                            node must be running (it answers on the node transport and
                            has published its client address), else a clear refusal
    KEYSPACE.ADDNODE <name> <node id> [REPLICA]  -> the id of the new (empty) shard the
                            running node joins the keyspace with; `rebalance` then gives
                            it slots. With REPLICA: 0, it joins with no shard of its own,
                            to take replicas of existing shards (SHARDSTORE.REPLICA)
    SHARDSTORE.REPLICA ADD|REMOVE|MOVE ...  -> OK: a shard's replicas change
                            (shardstore/replicas.py: a node of the keyspace joins the
                            shard's Raft group and catches up, then a leaving one is
                            removed, its leader handing over first)
    KEYSPACE.REMOVENODE <name> <node id>  -> OK: the node leaves the keyspace; refused
                            while a shard it is a member of owns slots or table ranges
    SHARDSTORE.SHARDS    -> per shard of this node's keyspace: shard, members, slots
                            (how many it owns), replicas (how many members it keeps),
                            joining and leaving (a replica change under way; 0: none)
    KEYSPACE.LIST        -> per keyspace: name, nodes, shards, and whether it is this
                            node's
    SHARDSTORE.STATUS    -> this node: id, epoch, slots assigned, moves under way and done,
                            the configuration group's leader, and per shard it hosts:
                            role, leader, applied, commit, keys; replica changes under
                            way in its keyspace and the Raft steps this node took for
                            them as a shard leader (replica_moves.py); and how many ASK
                            redirections it answered and commands it served under
                            ASKING (shardstore/asking.py)
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from core.command_table import Command
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_commands import parse_int
from core.resp_session import Session
from core.rpc import RpcError
from shardstore import table_keys
from shardstore.catalog import Catalog, CatalogError
from shardstore.cluster import CONFIG_GROUP, ClusterConfig, ConfigMachine
from shardstore.keysets import KeySet, parse_slots
from shardstore.keyspaces import (
    encode_add_node,
    encode_keyspace,
    encode_remove_node,
    parse_create_keyspace,
)
from shardstore.machine import ShardMachine
from shardstore.migrate import SERVICE_MOVE
from shardstore.moves import STATE_DONE, encode_begin, encode_cancel
from shardstore.replicas import encode_change, parse_replica, plan_leave

__all__ = ["AdminCommands", "ERR_MOVE_SYNTAX"]

ERR_MOVE_SYNTAX = ("ERR syntax: SHARDSTORE.MOVE <from shard> <to shard> SLOTS <list> | "
                   "TABLE <range table> <low|-> <high|+>, or SHARDSTORE.MOVE CANCEL <id>")
ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
ERR_BAD_SLOTS = "ERR {}"
ERR_NOT_RUNNING = ("ERR node {} is not running (it must answer on the node transport and "
                   "have published its client address): start it first")
ERR_ADDNODE_SYNTAX = "ERR syntax: KEYSPACE.ADDNODE <name> <node id> [REPLICA]"
PROBE_S = 3.0  # how long a node has to answer the running check (over the rpc backoff)
PROBE_RETRY_S = 0.1
ADMIN_FLAGS = frozenset({"admin"})
READ_FLAGS = frozenset({"loading", "stale"})
PROBE = "probe"  # a request the move service refuses: any answer says the node is up


class AdminNode(Protocol):
    """What the admin commands need of shardstore.server.ShardNode."""

    me: int
    config_machine: ConfigMachine
    service: RaftService
    machines: dict[int, ShardMachine]
    host: Any
    commands: Any  # shardstore.handlers.ClientCommands (its `asking` counters)

    @property
    def config(self) -> ClusterConfig: ...

    async def config_write(self, entry: bytes) -> Any: ...


class AdminCommands:
    """The SHARDSTORE.* rows (see the module header)."""

    def __init__(self, node: AdminNode) -> None:
        self.node = node

    def rows(self) -> list[Command]:
        return [
            Command("SHARDSTORE.MOVE", self.cmd_move, -3, ADMIN_FLAGS,
                    summary="Begin an online move of slots (or a key range) between "
                            "shards, or cancel one still copying"),
            Command("SHARDSTORE.MOVES", self.cmd_moves, 1, READ_FLAGS,
                    summary="The moves under way and how far each got"),
            Command("SHARDSTORE.SLOTS", self.cmd_slots, 1, READ_FLAGS,
                    summary="The slot map as [first, last, shard id] ranges"),
            Command("SHARDSTORE.STATUS", self.cmd_status, 1, READ_FLAGS,
                    summary="This node's configuration epoch and shard replicas"),
            Command("KEYSPACE.CREATE", self.cmd_keyspace_create, -3, ADMIN_FLAGS,
                    summary="Make a keyspace: its own nodes, shards and slot map"),
            Command("KEYSPACE.LIST", self.cmd_keyspace_list, 1, READ_FLAGS,
                    summary="The keyspaces, their nodes and shards"),
            Command("KEYSPACE.ADDNODE", self.cmd_add_node, -3, ADMIN_FLAGS,
                    summary="A running node joins a keyspace with a new empty shard "
                            "(REPLICA: with none, to take replicas)"),
            Command("SHARDSTORE.REPLICA", self.cmd_replica, -4, ADMIN_FLAGS,
                    summary="Add, remove or move a replica of a shard (a Raft "
                            "membership change)"),
            Command("KEYSPACE.REMOVENODE", self.cmd_remove_node, 3, ADMIN_FLAGS,
                    summary="A node whose shards hold no slots leaves its keyspace"),
            Command("SHARDSTORE.SHARDS", self.cmd_shards, 1, READ_FLAGS,
                    summary="The shards of this node's keyspace: members, slots owned"),
        ]

    async def cmd_keyspace_create(self, session: Session, args: list[bytes]) -> Any:
        try:
            name, nodes, shards, replicas = parse_create_keyspace(args)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        for node in nodes:
            await self._check_running(node)
        await self.node.config_write(encode_keyspace(name, nodes, shards, replicas))
        return OK

    async def _check_running(self, node_id: int) -> None:
        """CommandError ERR_NOT_RUNNING unless node `node_id` is up (see the header)."""
        if node_id == self.node.me:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_S
        while node_id in self.node.service.book.clients:
            try:
                await self.node.host.transport.request(node_id, SERVICE_MOVE, CONFIG_GROUP,
                                                       [PROBE], PROBE_S)
                return
            except (RpcError, TimeoutError, OSError):  # down, or reconnecting after it
                if loop.time() > deadline:
                    break
                await asyncio.sleep(PROBE_RETRY_S)
        raise CommandError(ERR_NOT_RUNNING.format(node_id))

    async def cmd_add_node(self, session: Session, args: list[bytes]) -> Any:
        if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"REPLICA"):
            raise CommandError(ERR_ADDNODE_SYNTAX)
        name = args[1].decode("utf-8", "replace")
        node = parse_int(args[2], ERR_NOT_INTEGER)
        await self._check_running(node)
        return await self.node.config_write(encode_add_node(name, node, len(args) == 4))

    async def cmd_replica(self, session: Session, args: list[bytes]) -> Any:
        try:
            action, sid, node, to = parse_replica(args)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        await self.node.service.barrier(CONFIG_GROUP)
        config = self.node.config_machine.config
        shard = config.shards.get(sid)
        if action == "REMOVE" and shard is not None and shard.leaving == node:
            return OK  # under way already (a retried request)
        try:
            add, remove = ((node, 0) if action == "ADD" else (to, node) if action == "MOVE"
                           else (plan_leave(config, sid, node), node))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if add:
            await self._check_running(add)
        await self.node.config_write(encode_change(sid, add, remove))  # an error str raises
        return OK

    async def cmd_remove_node(self, session: Session, args: list[bytes]) -> Any:
        name = args[1].decode("utf-8", "replace")
        node = parse_int(args[2], ERR_NOT_INTEGER)
        await self.node.config_write(encode_remove_node(name, node))
        return OK

    async def cmd_shards(self, session: Session, args: list[bytes]) -> Any:
        await self.node.service.barrier(CONFIG_GROUP)
        config = self.node.config
        owned: dict[int, int] = {}
        for first, last, sid in config.ranges:
            owned[sid] = owned.get(sid, 0) + last - first + 1
        return [{b"shard": sid, b"members": list(shard.members), b"slots": owned.get(sid, 0),
                 b"replicas": shard.replicas, b"joining": shard.joining,
                 b"leaving": shard.leaving}
                for sid, shard in sorted(config.shards.items())]

    async def cmd_keyspace_list(self, session: Session, args: list[bytes]) -> Any:
        await self.node.service.barrier(CONFIG_GROUP)
        full = self.node.config_machine.config
        mine = full.keyspace_of_node(self.node.me)
        return [{b"name": name.encode(), b"nodes": list(space.nodes),
                 b"shards": sorted(s.shard_id for s in full.shards.values()
                                   if s.keyspace == name),
                 b"mine": int(name == mine)}
                for name, space in sorted(full.spaces.items())]

    async def cmd_move(self, session: Session, args: list[bytes]) -> Any:
        if args[1].upper() == b"CANCEL":
            if len(args) != 3:
                raise CommandError(ERR_MOVE_SYNTAX)
            move_id = parse_int(args[2], ERR_NOT_INTEGER)
            await self.node.config_write(encode_cancel(move_id))  # an error str raises
            return OK
        if len(args) < 5:
            raise CommandError(ERR_MOVE_SYNTAX)
        source = parse_int(args[1], ERR_NOT_INTEGER)
        target = parse_int(args[2], ERR_NOT_INTEGER)
        keys = _keyset(args[3:], self.node.config_machine.catalog)
        return await self.node.config_write(encode_begin(keys, source, target))

    async def cmd_moves(self, session: Session, args: list[bytes]) -> Any:
        await self.node.service.barrier(CONFIG_GROUP)
        config = self.node.config
        return [{b"id": m.move_id, b"keys": m.keys.describe().encode(), b"source": m.source,
                 b"target": m.target, b"state": m.state.encode(), b"copied": m.copied,
                 b"purged": m.purged, b"epoch": m.began_epoch, b"cancelled": int(m.cancelled)}
                for _, m in sorted(config.moves.items())]

    async def cmd_slots(self, session: Session, args: list[bytes]) -> Any:
        await self.node.service.barrier(CONFIG_GROUP)
        return [[first, last, sid] for first, last, sid in self.node.config.ranges]

    def cmd_status(self, session: Session, args: list[bytes]) -> Any:
        config = self.node.config
        shards = []
        for sid, machine in sorted(self.node.machines.items()):
            group = self.node.host.group(config.shards[sid].group)
            node = group.node if group is not None else None
            if node is None:
                continue
            shards.append({b"shard": sid, b"role": node.role.value.encode(),
                           b"leader": node.lead, b"applied": group.applied,
                           b"commit": node.committed, b"keys": machine.store.count()})
        assigned = sum(last - first + 1 for first, last, _ in config.ranges)
        return {b"node": self.node.me, b"epoch": config.epoch, b"slots_assigned": assigned,
                b"moves": sum(1 for m in config.moves.values() if m.state != STATE_DONE),
                b"moves_done": config.moves_done, b"config_leader": self._config_leader(),
                b"replica_changes": sum(1 for s in config.shards.values()
                                        if s.joining or s.leaving),
                b"replica_steps": int(getattr(getattr(self.node, "replicas", None), "steps", 0)),
                b"shards": shards, **_asking_counters(self.node)}

    def _config_leader(self) -> int:
        group = self.node.host.group(CONFIG_GROUP)
        return group.node.lead if group is not None and group.node is not None else 0


def _asking_counters(node: AdminNode) -> dict[bytes, int]:
    asking = getattr(node.commands, "asking", None)
    if asking is None:
        return {}
    return {k.encode(): int(v) for k, v in asking.stats().items()}


def _keyset(words: list[bytes], catalog: Catalog) -> KeySet:
    kind = words[0].upper()
    try:
        if kind == b"SLOTS" and len(words) == 2:
            return parse_slots(words[1].decode("ascii"))
        if kind == b"TABLE" and len(words) == 4:
            table = catalog.range_table(words[1].decode("utf-8", "replace"))
            low = table_keys.parse_bound(table.kind, words[2], low=True)
            high = table_keys.parse_bound(table.kind, words[3], low=False)
            return KeySet.of_positions(table.prefix, table.kind, table.epoch_ms, low, high)
    except CatalogError as exc:
        raise CommandError(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(ERR_BAD_SLOTS.format(exc)) from None
    raise CommandError(ERR_MOVE_SYNTAX)
