"""Keyspaces: named sets of nodes, each its own Redis Cluster of 16384 slots; sans I/O.

Strategy: the configuration (shardstore/cluster.py) holds every keyspace: its nodes (a
node serves one keyspace) and its slot map, [(first, last, shard id)] over the shards of
that keyspace (shard ids, which are Raft group ids, are unique across keyspaces). The
keyspace `default` holds the keys of no table and of the tables bound to it; when the
cluster is made without naming keyspaces, it is every node.

A node's CLUSTER replies, MOVED answers and slot map are those of its own keyspace (the
configuration's `view` of it), so each keyspace is, on the wire, one Redis Cluster that
redis-cli -c and redis-py's RedisCluster use unchanged.

Keyspaces are made when the cluster is made (`serve --keyspace name=ids`, the first
configuration entry) or later by `KEYSPACE.CREATE name node... [SHARDS n] [REPLICAS r]`
(OP_KEYSPACE), whose nodes must serve no keyspace yet; `KEYSPACE.LIST` lists them.

Membership, online (shardstore/admin.py's add-node and remove-node drive it):
- OP_NODE_ADD {keyspace, node}: a node serving no keyspace joins one; it gets a new shard
  with no slots (its first member, so its preferred leader; as many replicas as the
  keyspace's shards have, the others on its least loaded nodes), which `rebalance` then
  moves slots to. The result is the new shard's id;
  with {replica: true} it joins with no shard of its own (result 0), to take replicas of
  existing shards (SHARDSTORE.REPLICA, shardstore/replicas.py);
- OP_NODE_REMOVE {keyspace, node}: the node leaves; refused while a shard it is a member
  of owns slots or ranges of a range table (move its replica, shardstore/replicas.py, or
  the slots first: remove-node does) and for the keyspace's last node. Its shards,
  empty, are retired: they leave every keyspace (RETIRED) with no members, so every node
  closes them and their ids are never reused.
Both raise the epoch. Whoever proposes them checks first that the node is running
(shardstore/admin_commands.py), as KEYSPACE.CREATE does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from shardstore.catalog import DEFAULT_KEYSPACE

__all__ = [
    "DEFAULT_KEYSPACE", "ERR_KEYSPACE_SYNTAX", "NODE_OPS", "OP_KEYSPACE", "OP_NODE_ADD",
    "OP_NODE_REMOVE", "RETIRED", "Keyspace", "apply_node_op", "encode_add_node",
    "encode_keyspace", "encode_remove_node", "parse_create_keyspace", "parse_keyspace_option",
]

OP_KEYSPACE = "keyspace.create"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_SHARDS = 1
ERR_KEYSPACE_SYNTAX = "ERR syntax: KEYSPACE.CREATE name node-id... [SHARDS n] [REPLICAS r]"
ERR_KEYSPACE_NAME = "ERR bad keyspace name {!r} (1..64 of A-Z a-z 0-9 _ . -)"
ERR_KEYSPACE_EXISTS = "ERR keyspace {!r} exists"
ERR_NODE_TAKEN = "ERR node {} serves keyspace {!r} already (a node serves one keyspace)"
ERR_KEYSPACE_NUMBERS = "ERR a keyspace needs 1..16384 shards and 1..{} replicas"
ERR_OPTION = "--keyspace wants NAME=ID,ID,... (got {!r})"
OP_NODE_ADD = "keyspace.addnode"
OP_NODE_REMOVE = "keyspace.removenode"
NODE_OPS = (OP_NODE_ADD, OP_NODE_REMOVE)
RETIRED = ""  # the keyspace of a retired shard: none
NO_SHARD = 0  # OP_NODE_ADD's result for a node that joins to take replicas
ERR_NO_KEYSPACE = "ERR no keyspace {!r}"
ERR_NOT_MEMBER = "ERR node {} does not serve keyspace {!r}"
ERR_HOLDS_SLOTS = ("ERR node {} still holds slots of shard {}: move its replica "
                   "(SHARDSTORE.REPLICA REMOVE) or the slots first (`shardstore admin "
                   "remove-node` does)")
ERR_HOLDS_ROWS = "ERR node {} still holds ranges of table {!r} (shard {})"
ERR_LAST_NODE = "ERR node {} is the last node of keyspace {!r}"


@dataclass
class Keyspace:
    """One keyspace: its nodes (sorted) and its slot map [(first, last, shard id)]."""

    name: str
    nodes: list[int]
    ranges: list[tuple[int, int, int]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.name, self.nodes, [list(r) for r in self.ranges]]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Keyspace:
        name, nodes, ranges = wire
        return cls(str(name), [int(n) for n in nodes],
                   [(int(a), int(b), int(c)) for a, b, c in ranges])


def check_name(name: str) -> None:
    """ValueError with the reply's text unless `name` is a valid keyspace name."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(ERR_KEYSPACE_NAME.format(name))


def encode_keyspace(name: str, nodes: Sequence[int], shards: int, replicas: int) -> bytes:
    return msgpack.packb({"op": OP_KEYSPACE, "name": name, "nodes": sorted(nodes),
                          "shards": shards, "replicas": replicas})


def parse_create_keyspace(args: Sequence[bytes]) -> tuple[str, list[int], int, int]:
    """KEYSPACE.CREATE's words (the command's first) as (name, nodes, shards, replicas);
    ValueError with the reply's text on anything else. Replicas default to every node,
    at most 3; shards to one."""
    if len(args) < 3:
        raise ValueError(ERR_KEYSPACE_SYNTAX)
    name = args[1].decode("utf-8", "replace")
    check_name(name)
    nodes: list[int] = []
    options: dict[bytes, int] = {}
    i = 2
    while i < len(args):
        word = args[i]
        if word.upper() in (b"SHARDS", b"REPLICAS") and i + 1 < len(args):
            options[word.upper()] = _number(args[i + 1])
            i += 2
            continue
        if options:  # node ids come before the options
            raise ValueError(ERR_KEYSPACE_SYNTAX)
        nodes.append(_number(word))
        i += 1
    if not nodes or len(set(nodes)) != len(nodes):
        raise ValueError(ERR_KEYSPACE_SYNTAX)
    replicas = options.get(b"REPLICAS", min(3, len(nodes)))
    return name, sorted(nodes), options.get(b"SHARDS", DEFAULT_SHARDS), replicas


def _number(word: bytes) -> int:
    if not word.isdigit() or len(word) > 9:
        raise ValueError(ERR_KEYSPACE_SYNTAX)
    return int(word)


def parse_keyspace_option(text: str) -> tuple[str, tuple[int, ...]]:
    """`--keyspace users=4,5` as ("users", (4, 5)); ValueError otherwise."""
    name, sep, ids = text.partition("=")
    try:
        check_name(name)
        nodes = tuple(int(i) for i in ids.split(","))
    except ValueError:
        raise ValueError(ERR_OPTION.format(text)) from None
    if not sep or not nodes or min(nodes) < 1 or len(set(nodes)) != len(nodes):
        raise ValueError(ERR_OPTION.format(text))
    return name, nodes


def encode_add_node(keyspace: str, node: int, replica: bool = False) -> bytes:
    """OP_NODE_ADD; `replica`: the node joins with no shard of its own (it takes replicas
    of existing shards, shardstore/replicas.py)."""
    entry: dict[str, Any] = {"op": OP_NODE_ADD, "keyspace": keyspace, "node": node}
    if replica:
        entry["replica"] = True
    return msgpack.packb(entry)


def encode_remove_node(keyspace: str, node: int) -> bytes:
    return msgpack.packb({"op": OP_NODE_REMOVE, "keyspace": keyspace, "node": node})


def apply_node_op(config: Any, entry: dict[str, Any], catalog: Any,
                  make_shard: Callable[[int, int, list[int], str], Any]) -> Any:
    """Apply OP_NODE_ADD or OP_NODE_REMOVE (see the module header) to `config` (a
    cluster.ClusterConfig); `make_shard(id, group, members, keyspace)` builds a Shard.
    The result, or the reply's error text."""
    name, node = str(entry["keyspace"]), int(entry["node"])
    space = config.spaces.get(name)
    if space is None:
        return ERR_NO_KEYSPACE.format(name)
    if entry["op"] == OP_NODE_ADD and entry.get("replica"):
        return _add_spare(config, space, node)
    if entry["op"] == OP_NODE_ADD:
        return _add_node(config, space, node, make_shard)
    return _remove_node(config, space, node, catalog)


def _add_node(config: Any, space: Keyspace, node: int,
              make_shard: Callable[[int, int, list[int], str], Any]) -> Any:
    taken = config.keyspace_of_node(node)
    if taken is not None:
        return ERR_NODE_TAKEN.format(node, taken)
    shards = [s for s in config.shards.values() if s.keyspace == space.name]
    replicas = max((len(s.members) for s in shards), default=1)
    load = {n: sum(1 for s in shards if n in s.members) for n in space.nodes}
    others = sorted(space.nodes, key=lambda n: (load[n], n))[:replicas - 1]
    sid = max(config.shards, default=0) + 1
    config.shards[sid] = make_shard(sid, sid, [node, *others], space.name)
    space.nodes = sorted([*space.nodes, node])
    config.epoch += 1
    return sid


def _add_spare(config: Any, space: Keyspace, node: int) -> Any:
    """The node joins with no shard (0); joining again is a no-op (a retried request)."""
    if node in space.nodes:
        return NO_SHARD
    taken = config.keyspace_of_node(node)
    if taken is not None:
        return ERR_NODE_TAKEN.format(node, taken)
    space.nodes = sorted([*space.nodes, node])
    config.epoch += 1
    return NO_SHARD


def _remove_node(config: Any, space: Keyspace, node: int, catalog: Any) -> Any:
    if node not in space.nodes:
        return ERR_NOT_MEMBER.format(node, space.name)
    if space.nodes == [node]:
        return ERR_LAST_NODE.format(node, space.name)
    leaving = [s for s in config.shards.values()
               if s.keyspace == space.name and node in s.members]
    owners = {sid for _, _, sid in space.ranges}
    for shard in leaving:
        if shard.shard_id in owners:
            return ERR_HOLDS_SLOTS.format(node, shard.shard_id)
    for table in getattr(catalog, "tables", {}).values():
        held = set(getattr(table, "shards", ())) & {s.shard_id for s in leaving}
        if held:
            return ERR_HOLDS_ROWS.format(node, table.name, min(held))
    for shard in leaving:
        shard.keyspace, shard.members = RETIRED, []
    space.nodes = [n for n in space.nodes if n != node]
    config.epoch += 1
    return True
