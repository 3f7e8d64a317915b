"""Shard replicas that come and go: Raft membership changes of a shard's group, recorded in
the configuration group; sans I/O.

Strategy: a shard's members are the nodes that host its Raft group (shardstore/cluster.py's
`Shard`). A change of them is written in the configuration first, with an epoch, so every
node and client agrees on it, and carried out in the shard's own group by its leader
(shardstore/replica_moves.py), one Raft single-server change at a time:

- OP_REPLICA {shard, add, remove} begins a change (0: none of that side). `add`, a node
  of the shard's keyspace that is not a member, becomes a member at once in the
  configuration (so it opens the group, empty, and takes the leader's snapshot, streamed);
  `remove` stays a member until the end. The leaving member is put last in `members`, so
  no node prefers it as leader; the shard records both (`joining`, `leaving`). Refused
  while another change of the shard is under way (the same change again is a no-op, so a
  retried request is harmless), for a node outside the keyspace, and for a removal alone
  that would leave the shard fewer members than its replica count (`replicas`: what it
  was made with).
- The shard's leader then adds the joining node as a voter, waits until it has caught up
  (its log within CAUGHT_UP_LAG entries of the commit index), hands leadership over if it
  is itself the leaving node, removes the leaving one, and once that change is committed
  proposes OP_REPLICA_DONE {shard, add, remove}: the leaving node leaves `members` (and
  `founders`), so it closes the shard and deletes its files.

Everything the leader does is derived from the configuration and the group's own
membership, so a killed leader's successor (or a restarted configuration leader) resumes
where it stopped. `founders` are the members a group was made with: only they start its
log with the founding configuration entry; a joining node starts empty (core/raft).

Commands (shardstore/admin_commands.py; `shardstore admin add-node --replica-of` and
`remove-node` drive them):

    SHARDSTORE.REPLICA ADD <shard> <node>          -> OK: the node becomes a replica
    SHARDSTORE.REPLICA REMOVE <shard> <node>       -> OK: the node's replica moves to the
                  least loaded node of the keyspace that has none (`plan_leave`), or is
                  dropped when the shard keeps its replica count without it
    SHARDSTORE.REPLICA MOVE <shard> <from> <to>    -> OK: the replica on `from` moves to `to`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

__all__ = [
    "CAUGHT_UP_LAG", "ERR_ALREADY", "ERR_BUSY", "ERR_NO_SHARD", "ERR_NOT_IN_KEYSPACE",
    "ERR_NOT_REPLICA", "ERR_REPLICA_SYNTAX", "ERR_TOO_FEW", "OP_REPLICA", "OP_REPLICA_DONE",
    "REPLICA_OPS", "apply_replica_op", "encode_change", "encode_done", "founders_for",
    "parse_replica", "plan_leave",
]

OP_REPLICA = "replica.change"
OP_REPLICA_DONE = "replica.done"
REPLICA_OPS = (OP_REPLICA, OP_REPLICA_DONE)
NO_NODE = 0
CAUGHT_UP_LAG = 256  # entries a joining replica may trail the commit index by, caught up
MAX_NODE_ID = 10**9
ACTIONS = (b"ADD", b"REMOVE", b"MOVE")
ERR_REPLICA_SYNTAX = ("ERR syntax: SHARDSTORE.REPLICA ADD <shard> <node> | "
                      "REMOVE <shard> <node> | MOVE <shard> <from node> <to node>")
ERR_NO_SHARD = "ERR no shard {}"
ERR_BUSY = ("ERR shard {} is changing its replicas already (node {} joining, node {} "
            "leaving): wait until it is done")
ERR_NOT_IN_KEYSPACE = ("ERR node {} does not serve keyspace {!r} of shard {}: it joins the "
                       "keyspace first (KEYSPACE.ADDNODE {} {} REPLICA)")
ERR_ALREADY = "ERR node {} is a replica of shard {} already"
ERR_NOT_REPLICA = "ERR node {} is not a replica of shard {}"
ERR_TOO_FEW = ("ERR shard {} keeps {} replicas and keyspace {!r} has no other node to take "
               "the one on node {} (it would be left with {} nodes): add a node first")


def encode_change(shard: int, add: int, remove: int) -> bytes:
    """OP_REPLICA: begin a change of `shard`'s members (0: no node on that side)."""
    return msgpack.packb({"op": OP_REPLICA, "shard": shard, "add": add, "remove": remove})


def encode_done(shard: int, add: int, remove: int) -> bytes:
    """OP_REPLICA_DONE: the shard's group has carried out the change."""
    return msgpack.packb({"op": OP_REPLICA_DONE, "shard": shard, "add": add, "remove": remove})


def founders_for(shard: Any, node: int) -> tuple[int, ...]:
    """The founders `node` opens `shard`'s group with: the shard's founders if it is one,
    else none (a joining replica starts with an empty log)."""
    founders = tuple(shard.founders)
    return founders if node in founders else ()


def parse_replica(args: Sequence[bytes]) -> tuple[str, int, int, int]:
    """SHARDSTORE.REPLICA's words as (action, shard, node, to node or 0); ValueError
    with ERR_REPLICA_SYNTAX otherwise."""
    if len(args) < 4:
        raise ValueError(ERR_REPLICA_SYNTAX)
    action = bytes(args[1]).upper()
    wanted = 5 if action == b"MOVE" else 4
    if action not in ACTIONS or len(args) != wanted:
        raise ValueError(ERR_REPLICA_SYNTAX)
    numbers = [_number(word) for word in args[2:]]
    to = numbers[2] if action == b"MOVE" else NO_NODE
    if action == b"MOVE" and to == numbers[1]:
        raise ValueError(ERR_REPLICA_SYNTAX)
    return action.decode(), numbers[0], numbers[1], to


def _number(word: bytes) -> int:
    text = bytes(word)
    if not text.isdigit() or not 1 <= int(text) <= MAX_NODE_ID:
        raise ValueError(ERR_REPLICA_SYNTAX)
    return int(text)


def plan_leave(config: Any, shard_id: int, node: int) -> int:
    """The node that takes `node`'s replica of `shard_id` (the least loaded node of the
    keyspace with none), or 0 when the shard keeps its replica count without it.
    ValueError with the reply's text when neither works."""
    shard = config.shards.get(shard_id)
    if shard is None or not shard.keyspace:
        raise ValueError(ERR_NO_SHARD.format(shard_id))
    if node not in shard.members:
        raise ValueError(ERR_NOT_REPLICA.format(node, shard_id))
    if len(shard.members) - 1 >= shard.replicas:
        return NO_NODE
    space = config.spaces[shard.keyspace]
    free = [n for n in space.nodes if n not in shard.members]
    if not free:
        raise ValueError(ERR_TOO_FEW.format(shard_id, shard.replicas, space.name, node,
                                            len(space.nodes) - 1))
    siblings = [s for s in config.shards.values() if s.keyspace == space.name]
    return min(free, key=lambda n: (sum(1 for s in siblings if n in s.members), n))


def apply_replica_op(config: Any, entry: dict[str, Any]) -> Any:
    """Apply OP_REPLICA or OP_REPLICA_DONE to `config` (a cluster.ClusterConfig); True,
    False (a late or repeated OP_REPLICA_DONE: nothing changed) or the reply's error text."""
    sid = int(entry["shard"])
    add, remove = int(entry.get("add") or NO_NODE), int(entry.get("remove") or NO_NODE)
    shard = config.shards.get(sid)
    if shard is None or not shard.keyspace:
        return ERR_NO_SHARD.format(sid)
    if entry["op"] == OP_REPLICA_DONE:
        return _done(config, shard, add, remove)
    return _begin(config, shard, add, remove)


def _begin(config: Any, shard: Any, add: int, remove: int) -> Any:
    if shard.joining or shard.leaving:
        if (shard.joining, shard.leaving) == (add, remove):
            return True  # the same change, asked again
        return ERR_BUSY.format(shard.shard_id, shard.joining, shard.leaving)
    space = config.spaces.get(shard.keyspace)
    refusal = _refusal(shard, space, add, remove)
    if refusal is not None:
        return refusal
    staying = [m for m in shard.members if m != remove]
    shard.members = staying + [n for n in (add, remove) if n]
    shard.joining, shard.leaving = add, remove
    config.epoch += 1
    return True


def _refusal(shard: Any, space: Any, add: int, remove: int) -> str | None:
    if not add and not remove:
        return ERR_REPLICA_SYNTAX
    if add and (space is None or add not in space.nodes):
        return ERR_NOT_IN_KEYSPACE.format(add, shard.keyspace, shard.shard_id,
                                          shard.keyspace, add)
    if add in shard.members:
        return ERR_ALREADY.format(add, shard.shard_id)
    if remove and remove not in shard.members:
        return ERR_NOT_REPLICA.format(remove, shard.shard_id)
    if remove and not add and len(shard.members) - 1 < shard.replicas:
        nodes = len(space.nodes) if space is not None else 1
        return ERR_TOO_FEW.format(shard.shard_id, shard.replicas, shard.keyspace, remove,
                                  nodes - 1)
    return None


def _done(config: Any, shard: Any, add: int, remove: int) -> bool:
    if (shard.joining, shard.leaving) != (add, remove) or not (add or remove):
        return False
    if remove:
        shard.members = [m for m in shard.members if m != remove]
        shard.founders = [m for m in shard.founders if m != remove]
    shard.joining = shard.leaving = NO_NODE
    config.epoch += 1
    return True
