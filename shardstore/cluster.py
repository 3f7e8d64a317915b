"""The slot map and the configuration group's state machine, and the Redis Cluster replies
built from them; sans I/O.

Strategy: group 0 of every node is the configuration group, founded by all the `--peers`.
Its state (`ClusterConfig`) is the slot map: 16384 slots in ranges -> shard id; shard id ->
its Raft group id (the shard id itself: group 0 is the configuration) and its members'
node ids; node id -> its 40-hex Redis Cluster name; and the epoch of the map. Its entries
are msgpack maps with an "op":

- OP_INIT {nodes, shards, replicas}: the first one makes the map (`layout`: shard i gets
  `replicas` of the nodes round-robin from the i-th, and the i-th even range of the slots)
  at epoch 1; later ones change nothing (every node's first leader proposes one, so the
  first committed wins). Result: True if this entry made the map.
- OP_KEYSPACE {name, nodes, shards, replicas}: a new keyspace (shardstore/keyspaces.py)
  on nodes that serve none yet, with its own shards and slot map; the epoch goes up;
  OP_NODE_ADD / OP_NODE_REMOVE: a node joins or leaves a keyspace (keyspaces.py);
- "replica.*" ops: a shard's members change (shardstore/replicas.py); the epoch goes up;
- "move.*" ops: slot moves (shardstore/moves.py: begin, step, end, finish), their records
  in `moves`; OP_END changes the slot map and each of begin and end raises the epoch.
- OP_NAME {id, name}: node `id` is called `name` in CLUSTER NODES/SLOTS/SHARDS;
- OP_LEADER {shard, node, term}: node `node` became the Raft leader of the shard in
  `term` (a hint a new leader publishes, kept unless an older term comes late), so every
  node reports the same master for shards it does not host.

Client addresses come from the service's address book (core/service_machine.py), not
from here. A `ClusterView` is the config plus what one node sees (the book, the leaders of
the shards it hosts); the CLUSTER SLOTS/SHARDS/NODES/INFO replies built from it are in
shardstore/cluster_replies.py. A shard's Raft leader is its Redis "master" (as this node
sees it, else as the leader hint says); its other members are "replicas". A shard with
neither shows its first member with a known address first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from native.crc16 import SLOT_COUNT, key_slot
from shardstore import moves as moves_ops
from shardstore.catalog import DEFAULT_KEYSPACE, Catalog
from shardstore.catalog import OP_PREFIX as OP_TABLE_PREFIX
from shardstore.keyspaces import (
    ERR_KEYSPACE_EXISTS,
    ERR_KEYSPACE_NUMBERS,
    ERR_NODE_TAKEN,
    NODE_OPS,
    OP_KEYSPACE,
    Keyspace,
    apply_node_op,
    check_name,
)
from shardstore.moves import Move
from shardstore.replicas import REPLICA_OPS, apply_replica_op
from shardstore.table_moves import TableMoveHooks

__all__ = [
    "CONFIG_GROUP", "ERR_BAD_ENTRY", "OP_INIT", "OP_LEADER", "OP_NAME", "ClusterConfig",
    "ClusterView", "ConfigMachine", "Shard", "encode_init", "encode_leader", "encode_name",
    "layout", "load_node_name", "moved",
]

CONFIG_GROUP = 0
OP_INIT = "init"
OP_NAME = "name"
OP_LEADER = "leader"
ERR_BAD_ENTRY = "ERR bad configuration entry: {!r}"
MOVED = "MOVED {} {}"
NODE_NAME_FILE = "shardstore-node-name"
NAME_HEX_CHARS = 40


@dataclass
class Shard:
    """One shard: its Raft group and members (node ids, the preferred leader first), and
    the keyspace whose slots it holds. `founders`: the members its group was made with
    (default: `members`); `replicas`: how many members it keeps (default: as many as it
    has); `joining`/`leaving`: a change of its members under way (shardstore/replicas.py;
    0: none)."""

    shard_id: int
    group: int
    members: list[int]
    keyspace: str = DEFAULT_KEYSPACE
    founders: list[int] | None = None
    replicas: int = 0
    joining: int = 0
    leaving: int = 0

    def __post_init__(self) -> None:
        if self.founders is None:
            self.founders = list(self.members)
        if not self.replicas:
            self.replicas = len(self.members)

    def to_wire(self) -> list[Any]:
        return [self.shard_id, self.group, self.members, self.keyspace, self.founders,
                self.replicas, self.joining, self.leaving]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Shard:
        sid, group, members, *rest = wire
        keyspace, founders, replicas, joining, leaving = (
            list(rest) + [DEFAULT_KEYSPACE, None, 0, 0, 0][len(rest):])
        return cls(int(sid), int(group), [int(m) for m in members], str(keyspace),
                   None if founders is None else [int(m) for m in founders],
                   int(replicas), int(joining), int(leaving))


@dataclass
class ClusterConfig:
    """The replicated configuration. `spaces`: every keyspace (shardstore/keyspaces.py)
    with its nodes and slot map; `shards`: every shard of every keyspace. `keyspace` is
    the one whose map `ranges` ([(first slot, last slot, shard id)] in slot order, every
    slot once when initialised) and `slot_shard` show: `default` in the configuration
    machine's own copy, a node's own keyspace in its `view`. `epoch` 0: not initialised
    yet."""

    epoch: int = 0
    shards: dict[int, Shard] = field(default_factory=dict)
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    leaders: dict[int, tuple[int, int]] = field(default_factory=dict)  # shard: (node, term)
    slot_shard: list[int] = field(default_factory=list)  # derived: slot -> shard id
    moves: dict[int, Move] = field(default_factory=dict)  # the moves under way, by id
    next_move: int = 0  # the id of the last move begun
    moves_done: int = 0
    spaces: dict[str, Keyspace] = field(default_factory=dict)
    keyspace: str = DEFAULT_KEYSPACE

    @property
    def initialised(self) -> bool:
        return self.epoch > 0

    def view(self, keyspace: str) -> ClusterConfig:
        """This configuration as a node of `keyspace` sees it: that keyspace's shards and
        slot map (names, leaders, moves and keyspaces shared with this one)."""
        seen = ClusterConfig(self.epoch, {k: s for k, s in self.shards.items()
                                          if s.keyspace == keyspace},
                             names=self.names, leaders=self.leaders, moves=self.moves,
                             next_move=self.next_move, moves_done=self.moves_done,
                             spaces=self.spaces, keyspace=keyspace)
        seen.rebuild()
        return seen

    def keyspace_of_node(self, node_id: int) -> str | None:
        """The keyspace `node_id` serves, None if none."""
        return next((k.name for k in self.spaces.values() if node_id in k.nodes), None)

    def slot_table(self, keyspace: str) -> list[int]:
        """slot -> shard id in `keyspace` (empty when it has no map)."""
        space = self.spaces.get(keyspace)
        return _table(space.ranges) if space is not None else []

    def assign_slots(self, slots: Iterable[int], shard_id: int) -> None:
        """Give `slots` to shard `shard_id` in its keyspace's map."""
        space = self.spaces[self.shards[shard_id].keyspace]
        table = _table(space.ranges)
        for slot in slots:
            table[slot] = shard_id
        space.ranges = moves_ops.ranges_of(table)
        self.rebuild()

    def shard_of_slot(self, slot: int) -> Shard | None:
        """The shard that owns `slot`, None before the map exists."""
        if not self.slot_shard:
            return None
        return self.shards.get(self.slot_shard[slot])

    def shard_of_key(self, key: bytes) -> Shard | None:
        return self.shard_of_slot(key_slot(key))

    def hosted_by(self, node_id: int) -> list[Shard]:
        """The shards `node_id` is a member of, by shard id."""
        return [s for _, s in sorted(self.shards.items()) if node_id in s.members]

    def shard_ranges(self, shard_id: int) -> list[tuple[int, int]]:
        return [(a, b) for a, b, sid in self.ranges if sid == shard_id]

    def rebuild(self) -> None:
        """Recompute `ranges` (from `keyspace`'s map) and the slot -> shard table."""
        if self.keyspace in self.spaces:
            self.ranges = self.spaces[self.keyspace].ranges
        self.slot_shard = _table(self.ranges) if self.ranges else []

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "shards": [s.to_wire() for s in self.shards.values()],
                "ranges": [list(r) for r in self.ranges],
                "names": {str(k): v for k, v in self.names.items()},
                "leaders": {str(k): list(v) for k, v in self.leaders.items()},
                "moves": [m.to_wire() for m in self.moves.values()],
                "next_move": self.next_move, "moves_done": self.moves_done,
                "spaces": [k.to_wire() for k in self.spaces.values()]}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ClusterConfig:
        config = cls(epoch=int(wire["epoch"]),
                     shards={int(s[0]): Shard.from_wire(s) for s in wire["shards"]},
                     ranges=[(int(a), int(b), int(c)) for a, b, c in wire["ranges"]],
                     names={int(k): str(v) for k, v in wire["names"].items()},
                     leaders={int(k): (int(v[0]), int(v[1]))
                              for k, v in wire.get("leaders", {}).items()},
                     next_move=int(wire.get("next_move", 0)),
                     moves_done=int(wire.get("moves_done", 0)))
        for move_wire in wire.get("moves", []):
            move = Move.from_wire(move_wire)
            config.moves[move.move_id] = move
        spaces = [Keyspace.from_wire(k) for k in wire.get("spaces", [])]
        if not spaces and config.ranges:  # written before keyspaces: all is `default`
            nodes = sorted({m for s in config.shards.values() for m in s.members})
            spaces = [Keyspace(DEFAULT_KEYSPACE, nodes, config.ranges)]
        config.spaces = {k.name: k for k in spaces}
        config.rebuild()
        return config


def _table(ranges: Iterable[tuple[int, int, int]]) -> list[int]:
    table = [0] * SLOT_COUNT
    for first, last, sid in ranges:
        table[first:last + 1] = [sid] * (last - first + 1)
    return table


def layout(nodes: Sequence[int], shards: int, replicas: int, first_id: int = 1,
           keyspace: str = DEFAULT_KEYSPACE
           ) -> tuple[dict[int, Shard], list[tuple[int, int, int]]]:
    """Shards first_id..: the i-th (from 0) gets `replicas` of the sorted `nodes`
    round-robin from the i-th, and the i-th of `shards` even ranges of the slots.
    ValueError when the numbers cannot work."""
    ordered = sorted(nodes)
    if shards < 1 or shards > SLOT_COUNT:
        raise ValueError(f"shards must be 1..{SLOT_COUNT}")
    if not 1 <= replicas <= len(ordered):
        raise ValueError(f"replicas must be 1..{len(ordered)} (the number of nodes)")
    table: dict[int, Shard] = {}
    ranges: list[tuple[int, int, int]] = []
    for i in range(shards):
        members = [ordered[(i + j) % len(ordered)] for j in range(replicas)]
        sid = first_id + i
        table[sid] = Shard(sid, sid, members, keyspace)
        ranges.append((i * SLOT_COUNT // shards, (i + 1) * SLOT_COUNT // shards - 1, sid))
    return table, ranges


def encode_init(nodes: Sequence[int], shards: int, replicas: int,
                keyspaces: Mapping[str, Sequence[int]] | None = None) -> bytes:
    """The entry that makes the map: `keyspaces` name -> nodes (default: every node in
    `default`); each keyspace gets `shards` shards of `replicas` (at most its nodes)."""
    entry: dict[str, Any] = {"op": OP_INIT, "nodes": sorted(nodes), "shards": shards,
                             "replicas": replicas}
    if keyspaces:
        entry["keyspaces"] = {k: sorted(v) for k, v in keyspaces.items()}
    return msgpack.packb(entry)


def encode_leader(shard_id: int, node_id: int, term: int) -> bytes:
    return msgpack.packb({"op": OP_LEADER, "shard": shard_id, "node": node_id, "term": term})


def encode_name(node_id: int, name: str) -> bytes:
    return msgpack.packb({"op": OP_NAME, "id": node_id, "name": name})


class ConfigMachine:
    """The configuration group's state machine (apply, snapshot, restore) over `config`."""

    def __init__(self) -> None:
        self.config = ClusterConfig()
        self.catalog = Catalog()  # the tables (shardstore/catalog.py)
        self.version = 0  # bumped by every entry and restore, so views can be cached

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        results = [self._apply_one(data) for _, data in entries]
        self.version += 1
        return results

    def _apply_one(self, data: bytes) -> Any:
        try:
            entry = msgpack.unpackb(data)
            if str(entry["op"]).startswith(OP_TABLE_PREFIX):  # the tables' own entries
                return self.catalog.apply(entry, self.config.shards,
                                          tuple(self.config.spaces) or (DEFAULT_KEYSPACE,))
            if entry["op"] == OP_INIT:
                return self._init(entry)
            if entry["op"] == OP_NAME:
                self.config.names[int(entry["id"])] = str(entry["name"])
                return None
            if entry["op"] == OP_LEADER:
                return self._leader(int(entry["shard"]), int(entry["node"]),
                                    int(entry["term"]))
            if entry["op"] == OP_KEYSPACE:
                return self._keyspace(entry)
            if entry["op"] in NODE_OPS:  # a node joins or leaves a keyspace
                return apply_node_op(self.config, entry, self.catalog, Shard)
            if entry["op"] in REPLICA_OPS:  # a shard's replicas change
                return apply_replica_op(self.config, entry)
            if str(entry["op"]).startswith(moves_ops.OP_PREFIX):
                hooks = TableMoveHooks(self.catalog, self.config.moves,  # table rows
                                       self.config)
                return moves_ops.apply_move(self.config, entry, hooks)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            return ERR_BAD_ENTRY.format(exc)
        return ERR_BAD_ENTRY.format(entry)

    def _init(self, entry: dict[str, Any]) -> bool:
        if self.config.initialised:
            return False
        spaces = entry.get("keyspaces") or {DEFAULT_KEYSPACE: entry["nodes"]}
        first_id = 1
        for name in sorted(spaces, key=lambda k: (k != DEFAULT_KEYSPACE, k)):
            nodes = sorted(int(n) for n in spaces[name])
            replicas = min(int(entry["replicas"]), len(nodes))
            shards, ranges = layout(nodes, int(entry["shards"]), replicas, first_id, name)
            self.config.shards.update(shards)
            self.config.spaces[name] = Keyspace(name, nodes, ranges)
            first_id += len(shards)
        self.config.epoch = 1
        self.config.rebuild()
        return True

    def _keyspace(self, entry: dict[str, Any]) -> Any:
        """OP_KEYSPACE: a new keyspace on nodes serving none; the reply's error text if not."""
        config = self.config
        name, nodes = str(entry["name"]), sorted(int(n) for n in entry["nodes"])
        shards, replicas = int(entry["shards"]), int(entry["replicas"])
        try:
            check_name(name)
        except ValueError as exc:
            return str(exc)
        if name in config.spaces:
            return ERR_KEYSPACE_EXISTS.format(name)
        for node in nodes:
            taken = config.keyspace_of_node(node)
            if taken is not None:
                return ERR_NODE_TAKEN.format(node, taken)
        if not 1 <= shards <= SLOT_COUNT or not 1 <= replicas <= min(3, len(nodes)):
            return ERR_KEYSPACE_NUMBERS.format(min(3, len(nodes)))
        made, ranges = layout(nodes, shards, replicas, max(config.shards, default=0) + 1, name)
        config.shards.update(made)
        config.spaces[name] = Keyspace(name, nodes, ranges)
        config.epoch += 1
        return True

    def _leader(self, shard_id: int, node_id: int, term: int) -> bool:
        if self.config.leaders.get(shard_id, (0, -1))[1] > term:
            return False
        self.config.leaders[shard_id] = (node_id, term)
        return True

    def snapshot(self) -> bytes:
        return msgpack.packb({**self.config.to_wire(), "tables": self.catalog.to_wire()})

    def restore(self, blob: bytes) -> None:
        wire = msgpack.unpackb(blob)
        self.config = ClusterConfig.from_wire(wire)
        self.catalog = Catalog.from_wire(wire.get("tables", []))
        self.version += 1


def load_node_name(data_dir: Path, node_id: int) -> str:
    """This node's 40-hex Redis Cluster name: read from the data dir, or derived from the
    node id and the data dir's path and written there, so it stays the same for life."""
    path = data_dir / NODE_NAME_FILE
    if path.exists():
        name = path.read_text().strip()
        if len(name) == NAME_HEX_CHARS:
            return name
    seed = f"shardstore:{node_id}:{data_dir.resolve()}".encode()
    name = hashlib.sha1(seed).hexdigest()
    path.write_text(name + "\n")
    return name


def moved(slot: int, address: str) -> str:
    """The text of Redis's MOVED redirection."""
    return MOVED.format(slot, address)


# -- what one node sees ----------------------------------------------------------------------

@dataclass
class ClusterView:
    """What one node knows: the config, itself, client addresses (the book) and the leader
    of each shard it hosts (0 or absent: unknown); `offsets`: applied index per shard;
    `bus_ports`: each node's node-to-node (Raft) port, CLUSTER NODES's cluster bus port."""

    config: ClusterConfig
    me: int
    addresses: dict[int, str]
    leaders: dict[int, int] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    bus_ports: dict[int, int] = field(default_factory=dict)

    def name(self, node_id: int) -> str:
        """The node's 40-hex name (a stable stand-in until its own is published)."""
        return self.config.names.get(node_id) or hashlib.sha1(
            f"shardstore-unnamed:{node_id}".encode()).hexdigest()

    def ordered_members(self, shard: Shard) -> list[int]:
        """The members with a known address, the "master" (leader) first."""
        known = [m for m in shard.members if m in self.addresses]
        leader = self.leader(shard.shard_id)
        if leader in known:
            known.remove(leader)
            known.insert(0, leader)
        return known

    def host_port(self, node_id: int) -> tuple[str, int]:
        host, _, port = self.addresses[node_id].rpartition(":")
        return host, int(port)

    def masters(self) -> dict[int, int]:
        """shard id -> the node reported as its master (shards with no known address left
        out)."""
        out: dict[int, int] = {}
        for sid, shard in self.config.shards.items():
            members = self.ordered_members(shard)
            if members:
                out[sid] = members[0]
        return out

    def leader(self, shard_id: int) -> int:
        """The shard's leader as this node knows it, else as the hint says (0: neither)."""
        return self.leaders.get(shard_id) or self.config.leaders.get(shard_id, (0, 0))[0]

    @property
    def complete(self) -> bool:
        """The map exists, and every shard member's client address and name are known, and
        every shard's leader (so the ids and masters clients cache are final)."""
        shards = self.config.shards.values()
        members = {m for s in shards for m in s.members}
        return self.config.initialised and all(
            m in self.addresses and m in self.config.names for m in members) and all(
            self.leader(s.shard_id) for s in shards)
