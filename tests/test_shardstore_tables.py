"""Tables on a live shardstore: three nodes in one event loop on 127.0.0.2-4, three shards
of one replica (each node hosts one shard), driven with redis-py.

A range table's rows go to the shard of their range and are served only by its node,
which never answers -MOVED for them and names the router instead; TABLE.RANGE of one
month reads one shard (counted in TABLE.INFO and INFO); TABLE.SPLIT is a map change when
the range keeps its shard, and a move of its rows (fenced, copied, the map handed over at
the end) when another shard takes it; shardstore.client (both kinds) sends range rows to
their shards and reads ranges across them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from shardstore.client import AsyncShardstoreClient, ShardstoreClient, ShardstoreError
from tests.shardstore_procs import LoopCluster, run_loop

READY_S = 30.0


async def _ready(cluster: LoopCluster) -> None:
    """Until every node hosts its shard (replicas 1: one each) and knows the map."""
    deadline = time.monotonic() + READY_S
    while not all(len(n.machines) == 1 and n.config.initialised for n in cluster.nodes):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def _everywhere(cluster: LoopCluster, name: str) -> None:
    deadline = time.monotonic() + READY_S
    while not all(name in n.config_machine.catalog.tables for n in cluster.nodes):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def _slot_shard(cluster: LoopCluster, key: bytes) -> int:
    shard = cluster.nodes[0].config.shard_of_key(key)
    assert shard is not None
    return shard.shard_id


def _client_of(cluster: LoopCluster, shard_id: int) -> aredis.Redis:
    for index, node in enumerate(cluster.nodes):
        if shard_id in node.machines:
            return cluster.client(index)
    raise AssertionError(f"no node hosts shard {shard_id}")


async def _check_tables(cluster: LoopCluster) -> None:
    await _ready(cluster)
    any_node = cluster.client(0)
    assert await any_node.execute_command(
        "TABLE.CREATE", "orders", "KEYSPACE", "default", "RANGE", "DATE",
        "SPLITS", "2026-11", "2026-12", "SHARDS", "1", "2", "3") == b"OK"
    assert await any_node.execute_command("TABLE.CREATE", "users", "HASH") == b"OK"
    with pytest.raises(redis.ResponseError, match="no such keyspace 'sales'"):
        await any_node.execute_command("TABLE.CREATE", "t", "KEYSPACE", "sales", "HASH")
    early = _client_of(cluster, _slot_shard(cluster, b"early:2026-12-01"))
    assert await early.set("early:2026-12-01", "placed by slot")
    with pytest.raises(redis.ResponseError, match="keys beginning 'early:' exist"):
        await early.execute_command("TABLE.CREATE", "early", "RANGE", "DATE")
    await _everywhere(cluster, "orders")
    await _everywhere(cluster, "users")
    users = _slot_shard(cluster, b"users:1")  # a HASH table's rows stay on their slots
    assert await _client_of(cluster, users).set("users:1", "ada")
    elsewhere = _client_of(cluster, next(s for s in (1, 2, 3) if s != users))
    with pytest.raises(redis.exceptions.MovedError):
        await elsewhere.get("users:1")
    assert await cluster.client(2).execute_command("TABLE.LIST") == [
        [b"orders", b"default", b"RANGE DATE"], [b"users", b"default", b"HASH"]]
    shard1, shard2, shard3 = (_client_of(cluster, s) for s in (1, 2, 3))
    december = [f"orders:2026-12-{d:02d}:{i}" for d in (1, 9, 31) for i in range(3)]
    for key in december:
        assert await shard3.set(key, "x")
    assert await shard2.set("orders:2026-11-05:1", "y")
    assert await shard1.set("orders:2026-10-31:1", "z")
    assert await shard3.get(december[0]) == b"x"
    with pytest.raises(redis.ResponseError, match="use the router or shardstore.client"):
        await shard1.get(december[0])
    with pytest.raises(redis.ResponseError, match="different shards"):
        await shard3.mget(december[0], "orders:2026-11-05:1")
    with pytest.raises(redis.ResponseError, match="no date after the prefix"):
        await shard3.set("orders:someday", "x")
    assert await shard3.mget(december[0], december[1]) == [b"x", b"x"]

    got = await shard3.execute_command("TABLE.RANGE", "orders", "2026-12", "2027-01")
    assert got == sorted(k.encode() for k in december)
    assert await shard3.execute_command("TABLE.RANGE", "orders", "2026-12-09", "+",
                                        "COUNT", "2") == sorted(k.encode() for k in december)[3:5]
    info = await shard3.execute_command("TABLE.INFO", "orders")
    if isinstance(info, list):  # RESP2
        info = dict(zip(info[::2], info[1::2], strict=True))
    assert info[b"last_range_shards"] == 1 and info[b"range_reads"] == 2
    assert [r[:3] for r in info[b"ranges"]] == [[b"-", b"2026-11", 1],
                                                [b"2026-11", b"2026-12", 2],
                                                [b"2026-12", b"+", 3]]
    assert info[b"ranges"][2][4] == len(december)  # counted where the shard is hosted
    assert info[b"ranges"][0][4] == -1
    tables_info = await shard3.info("tables")
    assert tables_info["range_reads"] == 2 and tables_info["range_shards_touched"] == 2
    with pytest.raises(redis.ResponseError, match="use the router"):
        await shard3.execute_command("TABLE.RANGE", "orders", "2026-11", "2027-01")

    # A new month opens a new range on another shard (a move of no rows), then the rows of
    # December from the 5th on move to shard 2: each split to another shard is a move.
    assert isinstance(await shard3.execute_command("TABLE.SPLIT", "orders", "2027-01",
                                                   "SHARD", "1"), int)
    await _until_map(cluster, [20261100, 20261200, 20270100], [1, 2, 3, 1])
    assert await shard1.set("orders:2027-01-02:1", "n")
    with pytest.raises(redis.ResponseError, match="use the router"):
        await shard3.set("orders:2027-01-03:1", "n")
    assert isinstance(await shard2.execute_command("TABLE.SPLIT", "orders", "2026-12-05",
                                                   "SHARD", "2"), int)
    await _until_map(cluster, [20261100, 20261200, 20261205, 20270100], [1, 2, 3, 2, 1])
    assert await shard2.mget("orders:2026-12-09:0", "orders:2026-12-31:2") == [b"x", b"x"]
    assert await shard3.get("orders:2026-12-01:0") == b"x"
    with pytest.raises(redis.ResponseError, match="use the router"):
        await shard3.get("orders:2026-12-09:0")
    assert await shard3.execute_command("TABLE.SPLIT", "orders", "2026-12-02") == b"OK"
    await _check_clients(cluster, december)


async def _check_clients(cluster: LoopCluster, december: list[str]) -> None:
    """shardstore.client, seeded with one node, sends range rows to their shards."""
    seeds = [cluster.nodes[0].settings.advertise]
    expected = sorted(k.encode() for k in december)
    async with AsyncShardstoreClient(seeds) as client:
        assert await client.set("orders:2026-12-20:9", "a")
        assert await client.get("orders:2026-11-05:1") == b"y"
        assert await client.get("orders:2026-12-20:9") == b"a"
        assert await client.range("orders", "2026-12", "2027-01") == sorted(
            [*expected, b"orders:2026-12-20:9"])
        assert await client.range("orders", "-", "2026-12", count=1) == [
            b"orders:2026-10-31:1"]

    def blocking() -> None:
        with ShardstoreClient(seeds) as sync:
            assert sync.get("orders:2026-12-20:9") == b"a"
            assert sync.set("orders:2027-01-02:2", "b")
            assert sync.range("orders", "2027-01", "+") == [b"orders:2027-01-02:1",
                                                            b"orders:2027-01-02:2"]
            with pytest.raises(ShardstoreError, match="no such table"):
                sync.range("nope", "-", "+")

    await asyncio.to_thread(blocking)


async def _until_map(cluster: LoopCluster, splits: list[int], shards: list[int]) -> None:
    """Until every node's map of `orders` is that one (a move ends a little later)."""
    deadline = time.monotonic() + READY_S
    while True:
        tables = [n.config_machine.catalog.tables["orders"] for n in cluster.nodes]
        if all(t.splits == splits and t.shards == shards for t in tables):
            return
        assert time.monotonic() < deadline, [(t.splits, t.shards) for t in tables]
        await asyncio.sleep(0.05)


def test_range_tables_are_served_by_their_shards_only(tmp_path: Path) -> None:
    run_loop(tmp_path, _check_tables, replicas=1)


README_SENTENCES = [  # each checked by a test of this file or test_shardstore_catalog.py
    "`TABLE.CREATE users HASH` keeps its rows on slots like any other key; `TABLE.CREATE "
    "orders RANGE DATE SPLITS 2026-11 2026-12 SHARDS 1 2 3` splits the rows "
    "`orders:<date>...` by the date after the prefix into ranges, each held by one shard",
    "A node never answers `-MOVED` for a row of a range table: it serves the rows of the "
    "ranges its shards hold and refuses the others with an error that names the router "
    "(`use the router or shardstore.client`).",
    "`TABLE.RANGE orders 2026-12 2027-01` reads December's rows in key order from the shard "
    "that holds them only, and `TABLE.INFO orders` shows the ranges, their shards and how "
    "many shards the last range read touched.",
    "`TABLE.SPLIT orders 2027-01 SHARD 1` opens a new month on shard 1; a split that gives "
    "rows to another shard moves them as a slot moves, fenced and copied through the "
    "shards' logs.",
]


def test_the_readme_says_what_these_tests_show() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = " ".join(readme.read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence
