"""A node joins and leaves a keyspace online (keyspaces.OP_NODE_ADD / OP_NODE_REMOVE,
`shardstore admin add-node` / `remove-node`), and KEYSPACE.CREATE refuses a node that is
not running.

Sans I/O: the configuration's add and remove, and their refusals. On real sockets, in one
event loop (keyspace `users` on node 4, node 5 started late): KEYSPACE.CREATE naming node 5
before it runs is refused; once it runs, add-node gives it a new shard of `users`,
`rebalance` moves slots to it, redis-py's RedisCluster reads every key; KEYSPACE.REMOVENODE
is refused while node 5 holds slots; remove-node moves them back and node 5 leaves,
closing its shard, with every key still there."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from shardstore import admin, cluster
from shardstore.cluster import ConfigMachine, Shard
from shardstore.keyspaces import (
    RETIRED,
    apply_node_op,
    encode_add_node,
    encode_remove_node,
)
from tests.procs import ROOT
from tests.test_shardstore_keyspaces import KeyspaceCluster

README_SENTENCE = (
    "A node joins a keyspace online with `shardstore admin add-node --keyspace users --id 5` "
    "(it must be running; it gets a new shard, and `rebalance` then gives it slots), or with "
    "`--replica-of all` (or shard ids) as a new replica of existing shards, which stream it "
    "their snapshot. It leaves with `remove-node`, which first moves each of its replicas to "
    "a node of the keyspace that has none (the new replica is added and caught up before the "
    "old one is removed, and a leader hands over first), with a progress bar, and refuses "
    "before changing anything when a shard would be left with fewer nodes than its "
    "replicas; run again after it was killed, it goes on.")
README_REFUSALS = (
    "`KEYSPACE.REMOVENODE` refuses while the node still holds data, and `KEYSPACE.CREATE` "
    "refuses a node that is not running.")


def test_the_readme_says_what_these_tests_show() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    assert README_SENTENCE in text and README_REFUSALS in text


def test_a_node_joins_and_leaves_a_keyspace_in_the_configuration() -> None:
    machine = ConfigMachine()
    init = cluster.encode_init([1, 2, 3, 4, 5], 3, 3, {"default": [1, 2, 3], "users": [4]})
    machine.apply([(1, init)])
    config = machine.config
    epoch = config.epoch
    assert machine.apply([(2, encode_add_node("users", 5)), (3, encode_add_node("users", 1)),
                          (4, encode_add_node("nope", 5))]) == [
        7, "ERR node 1 serves keyspace 'default' already (a node serves one keyspace)",
        "ERR no keyspace 'nope'"]
    assert config.shards[7].members == [5] and config.spaces["users"].nodes == [4, 5]
    assert config.epoch == epoch + 1 and config.keyspace_of_node(5) == "users"
    assert machine.apply([(5, encode_add_node("default", 9))]) == [8]
    assert config.shards[8].members[0] == 9 and len(config.shards[8].members) == 3
    config.assign_slots(range(10), 7)
    assert machine.apply([(6, encode_remove_node("users", 5))]) == [
        "ERR node 5 still holds slots of shard 7: move its replica (SHARDSTORE.REPLICA "
        "REMOVE) or the slots first (`shardstore admin remove-node` does)"]
    config.assign_slots(range(10), 4)
    assert machine.apply([(7, encode_remove_node("users", 5)),
                          (8, encode_remove_node("users", 4)),
                          (9, encode_remove_node("users", 5))]) == [
        True, "ERR node 4 is the last node of keyspace 'users'",
        "ERR node 5 does not serve keyspace 'users'"]
    assert config.shards[7].keyspace == RETIRED and config.shards[7].members == []
    assert config.keyspace_of_node(5) is None and 7 not in config.view("users").shards
    assert apply_node_op(config, {"op": "keyspace.addnode", "keyspace": "users", "node": 5},
                         machine.catalog, Shard) == 9  # a retired id is never reused


def test_a_node_joins_rebalances_and_leaves_a_keyspace(tmp_path: Path) -> None:
    async def main() -> None:
        spaces = KeyspaceCluster(tmp_path)
        try:
            await _join_and_leave(spaces)
        finally:
            await spaces.stop()

    asyncio.run(main())


async def _join_and_leave(spaces: KeyspaceCluster) -> None:
    for node in spaces.nodes[:4]:
        await node.start()
    await spaces.until(lambda: all(n.view().complete for n in spaces.nodes[:4]))
    one = redis.asyncio.Redis(**spaces.address(3))  # node 4, of `users`
    with pytest.raises(redis.ResponseError, match="node 5 is not running"):
        await one.execute_command("KEYSPACE.CREATE", "orders", 5)
    await spaces.nodes[4].start()
    await spaces.until(lambda: 5 in spaces.nodes[3].service.book.clients)
    users = AsyncRedisCluster(**spaces.address(3))
    keys = [f"k{i}" for i in range(40)]
    for key in keys:
        assert await users.set(key, key)
    sync = redis.Redis(**spaces.address(3), socket_timeout=30)  # type: ignore[arg-type]
    out = io.StringIO()
    shard = await asyncio.to_thread(admin.add_node, sync, "users", 5, out)
    await spaces.until(lambda: shard in spaces.nodes[4].machines
                       and spaces.nodes[3].view().complete)
    await asyncio.to_thread(admin.rebalance, sync, 4096, out)
    assert "slots moved" in out.getvalue() or "move" in out.getvalue()
    owners = await asyncio.to_thread(admin.slot_owners, sync)
    assert sorted(len(slots) for slots in owners.values()) == [4096] * 4
    await _every_key(spaces, keys)
    with pytest.raises(redis.ResponseError, match="still holds slots of shard"):
        await one.execute_command("KEYSPACE.REMOVENODE", "users", 5)
    await asyncio.to_thread(admin.remove_node, sync, "users", 5, 4096, out)
    assert "node 5 left keyspace users (1 replicas moved" in out.getvalue()
    listed = {k[b"name"]: k[b"nodes"] for k in await one.execute_command("KEYSPACE.LIST")}
    assert listed[b"users"] == [4]
    await spaces.until(lambda: not spaces.nodes[4].machines)
    assert shard in spaces.nodes[3].machines  # its replica moved to node 4, slots and all
    await _every_key(spaces, keys)
    sync.close()
    await users.aclose()
    await one.aclose()


async def _every_key(spaces: KeyspaceCluster, keys: list[str]) -> None:
    fresh = AsyncRedisCluster(**spaces.address(3))
    assert [await fresh.get(k) for k in keys] == [k.encode() for k in keys]
    await fresh.aclose()
