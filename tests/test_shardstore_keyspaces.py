"""Keyspaces (shardstore/keyspaces.py): named node sets, each its own Redis Cluster.

Sans I/O: the configuration made with two keyspaces, a keyspace created later, the
refusals (a node serves one keyspace; a move stays in its keyspace), a node's view, and
the `--keyspace` option. On real sockets, in one event loop: `default` on three nodes
and `users` on one, a fifth node given a keyspace by KEYSPACE.CREATE; redis-py's
RedisCluster on each keyspace sees only its nodes and slots, and a key lives apart in
each; KEYSPACE.LIST."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.daemon import ConfigError
from native.crc16 import SLOT_COUNT
from shardstore import __main__ as serve_cli
from shardstore import cluster, commands
from shardstore.cluster import ConfigMachine
from shardstore.engine import Engine
from shardstore.keysets import KeySet
from shardstore.keyspaces import encode_keyspace, parse_create_keyspace, parse_keyspace_option
from shardstore.moves import encode_begin
from shardstore.server import NodeOptions, ShardNode
from tests.procs import Daemon
from tests.shardstore_procs import node_settings, raft_ports

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
READY_S = 30.0


def _two_keyspaces() -> ConfigMachine:
    machine = ConfigMachine()
    init = cluster.encode_init([1, 2, 3, 4, 5], 3, 3, {"default": [1, 2, 3], "users": [4]})
    assert machine.apply([(1, init)]) == [True]
    return machine


def test_each_keyspace_has_its_own_shards_and_slot_map() -> None:
    machine = _two_keyspaces()
    full = machine.config
    assert sorted(full.spaces) == ["default", "users"]
    assert [s.members for s in full.shards.values() if s.keyspace == "users"] == [[4]] * 3
    assert full.ranges == full.spaces["default"].ranges  # the machine's own: default's
    users = full.view("users")
    assert sorted(users.shards) == [4, 5, 6] and users.shard_of_slot(0).shard_id == 4
    assert sum(b - a + 1 for a, b, _ in users.ranges) == SLOT_COUNT
    assert full.keyspace_of_node(4) == "users" and full.keyspace_of_node(5) is None
    refused = machine.apply([(2, encode_keyspace("users", [5], 1, 1)),
                             (3, encode_keyspace("more", [3], 1, 1)),
                             (4, encode_keyspace("more", [5], 1, 2)),
                             (5, encode_begin(KeySet.of_slots([0]), 1, 4))])
    assert refused == ["ERR keyspace 'users' exists",
                       "ERR node 3 serves keyspace 'default' already (a node serves one "
                       "keyspace)",
                       "ERR a keyspace needs 1..16384 shards and 1..1 replicas",
                       "ERR shards 1 and 4 serve different keyspaces"]
    epoch = full.epoch
    assert machine.apply([(6, encode_keyspace("orders", [5], 2, 1))]) == [True]
    assert full.epoch == epoch + 1 and sorted(full.view("orders").shards) == [7, 8]
    copy = ConfigMachine()
    copy.restore(machine.snapshot())
    assert copy.config.to_wire() == full.to_wire()
    assert machine.apply([(7, encode_begin(KeySet.of_slots([0]), 4, 5))]) == [1]


def test_keyspace_syntax_and_options() -> None:
    assert parse_create_keyspace([b"KEYSPACE.CREATE", b"users", b"4", b"5", b"SHARDS",
                                  b"2"]) == ("users", [4, 5], 2, 2)
    for words in ([b"KEYSPACE.CREATE", b"u"], [b"KEYSPACE.CREATE", b"u", b"x"],
                  [b"KEYSPACE.CREATE", b"bad name", b"1"],
                  [b"KEYSPACE.CREATE", b"u", b"1", b"SHARDS", b"2", b"3"]):
        with pytest.raises(ValueError, match="^ERR "):
            parse_create_keyspace(words)
    assert parse_keyspace_option("users=4,5") == ("users", (4, 5))
    for text in ("users", "users=", "=1", "u=1,1", "u=0"):
        with pytest.raises(ValueError, match="--keyspace wants"):
            parse_keyspace_option(text)


@given(st.lists(st.binary(max_size=8), max_size=6))
def test_the_keyspace_parser_refuses_clearly(words: list[bytes]) -> None:
    try:
        name, nodes, shards, replicas = parse_create_keyspace([b"KEYSPACE.CREATE", *words])
    except ValueError as exc:
        assert str(exc).startswith("ERR ")
    else:
        assert nodes and name


# -- on real sockets ----------------------------------------------------------------------------

class KeyspaceCluster:
    """Five ShardNodes in this loop: default on 1-3 (3 shards of 3), users on 4 (3 shards
    of 1), node 5 in no keyspace."""

    def __init__(self, tmp: Path) -> None:
        raft = raft_ports(HOSTS)
        spaces = (("default", (1, 2, 3)), ("users", (4,)))
        options = NodeOptions(3, 3, timeout_s=5, keyspaces=spaces)
        self.nodes = [ShardNode(node_settings(tmp, raft, node_id), options, layer=commands,
                                engine_class=Engine) for node_id in raft]

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        await self.until(lambda: all(n.view().complete for n in self.nodes[:4]))

    @staticmethod
    async def until(condition: object) -> None:
        deadline = time.monotonic() + READY_S
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def address(self, index: int) -> dict[str, object]:
        host, port = self.nodes[index].settings.listen
        return {"host": host, "port": port}


def test_two_keyspaces_are_two_redis_clusters(tmp_path: Path) -> None:
    async def main() -> None:
        spaces = KeyspaceCluster(tmp_path)
        await spaces.start()
        try:
            await _two_clusters(spaces)
        finally:
            await spaces.stop()

    asyncio.run(main())


async def _two_clusters(spaces: KeyspaceCluster) -> None:
    default = AsyncRedisCluster(**spaces.address(1))
    users = AsyncRedisCluster(**spaces.address(3))
    for i in range(30):
        assert await default.set(f"k{i}", "default")
        assert await users.set(f"k{i}", "users")
    assert [await default.get(f"k{i}") for i in range(30)] == [b"default"] * 30
    assert [await users.get(f"k{i}") for i in range(30)] == [b"users"] * 30
    assert len(users.get_nodes()) == 1 and len(default.get_nodes()) >= 3
    one = redis.asyncio.Redis(**spaces.address(3))
    info = await one.execute_command("CLUSTER", "INFO")
    assert b"cluster_state:ok" in info and b"cluster_known_nodes:1" in info
    listed = await one.execute_command("KEYSPACE.LIST")
    assert [(k[b"name"], k[b"nodes"], k[b"mine"]) for k in listed] == [
        (b"default", [1, 2, 3], 0), (b"users", [4], 1)]
    with pytest.raises(redis.ResponseError, match="serves keyspace 'default' already"):
        await one.execute_command("KEYSPACE.CREATE", "orders", 2)
    assert await one.execute_command("KEYSPACE.CREATE", "orders", 5, "SHARDS", 2) in (
        b"OK", True)
    await spaces.until(lambda: spaces.nodes[4].view().complete
                       and len(spaces.nodes[4].machines) == 2)
    orders = AsyncRedisCluster(**spaces.address(4))
    assert await orders.set("k1", "orders") and await orders.get("k1") == b"orders"
    assert await users.get("k1") == b"users" and await default.get("k1") == b"default"
    for client in (default, users, orders, one):
        await client.aclose()


def test_serve_refuses_keyspaces_that_cannot_work(tmp_path: Path) -> None:
    for options, text in ((["users=2"], "the keyspace 'default' needs nodes"),
                          (["default=1,3"], "node 3 is not one of --peers"),
                          (["default=1,2", "u=2"], "node 2 is in two keyspaces"),
                          (["default"], "--keyspace wants NAME=ID")):
        with pytest.raises(ConfigError, match=re.escape(text)):
            serve_cli._keyspaces(options, {1, 2})
    assert serve_cli._keyspaces(["users=2", "default=1"], {1, 2}) == (
        ("default", (1,)), ("users", (2,)))
    base = ["shardstore", "serve", "--id", "1", "--listen", "127.0.0.1:0",
            "--peers", "1=127.0.0.1:1,2=127.0.0.1:2", "--replicas", "2",
            "--data-dir", str(tmp_path / "d"), "--keyspace", "users=2"]
    daemon = Daemon(base, "127.0.0.1", 0, tmp_path / "refused.log")
    assert daemon.run_to_exit() == 2  # the command line says so and exits 2
    assert "the keyspace 'default' needs nodes" in daemon.log()


@given(st.text(max_size=20))
def test_the_keyspace_option_parser_refuses_clearly(text: str) -> None:
    try:
        name, nodes = parse_keyspace_option(text)
    except ValueError as exc:
        assert str(exc).startswith("--keyspace wants")
    else:
        assert name and nodes and min(nodes) >= 1
