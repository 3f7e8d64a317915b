"""Shardstore clusters for tests: three nodes on 127.0.0.2-4, in this event loop or as
`python -m shardstore serve` processes; one node; one shard machine over a real engine.

Strategy: one place builds the three nodes' settings (client and Raft ports from the
free-port helper, ids 1-3 all founders) and waits until every node says the map is
complete, so each shardstore test file states only the shape it needs (shards, replicas,
move batch size, extra serve options) and what it checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from core.cluster_options import ClusterSettings
from shardstore import commands
from shardstore.engine import Engine
from shardstore.machine import ShardMachine
from shardstore.migrate import BATCH_KEYS
from shardstore.server import NodeOptions, ShardNode
from tests.conftest import find_free_port
from tests.procs import Daemon

__all__ = ["HOSTS", "READY_S", "SINGLE_HOST", "LoopCluster", "aliases_work", "as_map",
           "engine_shard", "node_settings", "raft_ports", "run_loop", "serve_daemons",
           "single_node", "until_move_done", "until_ok"]

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SINGLE_HOST = "127.0.0.1"  # single_node's
READY_S = 30.0
TICK_S = 0.02
ELECTION_TICK = 15
WRITE_TIMEOUT_S = 5.0
POLL_S = 0.1
MOVE_S = 60.0  # until_move_done's bound
SINGLE_POLL_S = 0.05


def aliases_work() -> bool:
    """Whether this machine can bind the loopback aliases HOSTS."""
    try:
        find_free_port(HOSTS[2])
        return True
    except OSError:
        return False


def raft_ports(hosts: tuple[str, ...] = HOSTS) -> dict[int, tuple[str, int]]:
    """Node id (from 1) -> (host, a free Raft port there) for each of `hosts`."""
    return {i + 1: (h, find_free_port(h)) for i, h in enumerate(hosts)}


def node_settings(tmp: Path, raft: dict[int, tuple[str, int]], node_id: int
                  ) -> ClusterSettings:
    """Node `node_id`'s settings in a cluster whose every node of `raft` is a founder: a
    free client port on its host, data in tmp/n<id>, the tests' fast Raft ticks."""
    host = raft[node_id][0]
    return ClusterSettings(
        node_id=node_id, listen=(host, find_free_port(host)), peer_listen=raft[node_id],
        peers=raft, founders=tuple(raft), data_dir=tmp / f"n{node_id}", secret=None,
        password=None, tick_s=TICK_S, election_tick=ELECTION_TICK)


async def single_node(tmp: Path, shards: int = 1) -> ShardNode:
    """A started one-node cluster on SINGLE_HOST (`shards` shards of one replica), once it
    has the map and leads every shard."""
    options = NodeOptions(shards, 1, timeout_s=WRITE_TIMEOUT_S)
    node = ShardNode(node_settings(tmp, raft_ports((SINGLE_HOST,)), 1), options,
                     layer=commands, engine_class=Engine)
    await node.start()
    deadline = time.monotonic() + READY_S
    while not (node.view().complete and len(node.machines) == shards
               and len(node.led_shards()) == shards):
        assert time.monotonic() < deadline, "the node never became ready"
        await asyncio.sleep(SINGLE_POLL_S)
    return node


class LoopCluster:
    """Three ShardNodes in this event loop: `shards` shards of `replicas` replicas, slot
    moves copying `batch_keys` keys an entry."""

    def __init__(self, tmp: Path, shards: int = 3, replicas: int = 2,
                 batch_keys: int = BATCH_KEYS) -> None:
        raft = raft_ports()
        options = NodeOptions(shards, replicas, timeout_s=WRITE_TIMEOUT_S,
                              move_batch_keys=batch_keys)
        self.nodes: list[ShardNode] = []
        for node_id in raft:
            self.nodes.append(ShardNode(node_settings(tmp, raft, node_id), options,
                                        layer=commands, engine_class=Engine))

    async def start(self) -> None:
        """Start every node; return once each has the complete map, opened the shards the
        map gives it, and answers cluster_state:ok on its client port."""
        for node in self.nodes:
            await node.start()
        deadline = time.monotonic() + READY_S
        while not all(n.view().complete and len(n.machines) == len(n.config.hosted_by(n.me))
                      for n in self.nodes):
            assert time.monotonic() < deadline, "the cluster never formed"
            await asyncio.sleep(POLL_S)
        await until_ok([n.settings.advertise for n in self.nodes])

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def client(self, index: int) -> aredis.Redis:
        """A plain (not cluster-aware) client of node `index`'s client port."""
        host, port = self.nodes[index].settings.listen
        return aredis.Redis(host=host, port=port)


def run_loop(tmp: Path, test: Callable[[LoopCluster], Awaitable[None]], shards: int = 3,
             replicas: int = 2, batch_keys: int = BATCH_KEYS) -> None:
    """Run `test` on a started LoopCluster of that shape in a new event loop; stop the
    cluster afterwards whatever happens."""
    async def main() -> None:
        cluster = LoopCluster(tmp, shards, replicas, batch_keys)
        await cluster.start()
        try:
            await test(cluster)
        finally:
            await cluster.stop()

    asyncio.run(main())


async def until_ok(addresses: list[str]) -> None:
    """Until every node at `addresses` says cluster_state:ok and knows all of them."""
    deadline = time.monotonic() + READY_S
    known = f"cluster_known_nodes:{len(addresses)}".encode()
    while True:
        states = []
        for address in addresses:
            host, port = address.rsplit(":", 1)
            client = aredis.Redis(host=host, port=int(port))
            try:
                states.append(await client.execute_command("CLUSTER", "INFO"))
            except redis.RedisError:
                states.append(b"")
            finally:
                await client.aclose()
        if all(b"cluster_state:ok" in s and known in s for s in states):
            return
        assert time.monotonic() < deadline, states
        await asyncio.sleep(POLL_S)


def serve_daemons(tmp: Path, shards: int, replicas: int, extra: tuple[str, ...] = ()
                  ) -> list[Daemon]:
    """Three `shardstore serve` daemons (not started), ids 1-3 on HOSTS, data in tmp/n<i>
    and logs in tmp/n<i>.log; `extra`: more serve options for each."""
    raft = raft_ports()
    peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in raft.items())
    daemons = []
    for i, host in enumerate(HOSTS):
        port = find_free_port(host)
        argv = ["shardstore", "serve", "--id", str(i + 1), "--listen", f"{host}:{port}",
                "--peer-listen", f"{host}:{raft[i + 1][1]}", "--peers", peers,
                "--data-dir", str(tmp / f"n{i + 1}"), "--shards", str(shards),
                "--replicas", str(replicas), *extra]
        daemons.append(Daemon(argv, host, port, tmp / f"n{i + 1}.log"))
    return daemons


def engine_shard(directory: Path,
                 keys_of: Callable[[list[bytes]], list[bytes]] | None = None) -> ShardMachine:
    """A shard machine over a real engine in `directory` (made if missing) whose snapshot
    restore closes the engine and loads the pieces in its place; `keys_of` as ShardMachine's.
    """
    directory.mkdir(parents=True, exist_ok=True)

    def load(pieces: Iterator[bytes], index: int) -> Engine:
        shard.engine.close()
        return Engine.load(directory, pieces, index)  # type: ignore[arg-type]

    shard = ShardMachine(Engine.open(directory), commands, load, keys_of=keys_of)
    return shard


def as_map(record: Any) -> dict[bytes, Any]:
    """A map reply as a dict, whether it came as a RESP3 map or as RESP2's flat pairs."""
    if isinstance(record, dict):
        return record
    return dict(zip(record[::2], record[1::2], strict=True))


async def until_move_done(client: aredis.Redis, move_id: int) -> None:
    """Until SHARDSTORE.MOVES on `client`'s node says slot move `move_id` is done."""
    deadline = time.monotonic() + MOVE_S
    while True:
        moves = {m[b"id"]: m for m in map(as_map, await client.execute_command(
            "SHARDSTORE.MOVES"))}
        if moves[move_id][b"state"] == b"done":
            return
        assert time.monotonic() < deadline, moves
        await asyncio.sleep(POLL_S)


async def until_true(condition: Callable[[], bool], what: str, limit_s: float) -> None:
    """Poll `condition` until it holds; fail naming `what` after `limit_s` seconds."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def table_bound(nodes: Any, table: str, keyspace: str) -> bool:
    """Every node's catalog binds `table` to `keyspace` and every move is done."""
    for node in nodes:
        bound = node.config_machine.catalog.tables.get(table)
        if bound is None or bound.keyspace != keyspace:
            return False
        if any(m.state != "done" for m in node.full_config.moves.values()):
            return False
    return True


def table_rows(nodes: Any, table: str, indexes: range) -> int:
    """How many rows of `table` the shards of the nodes at `indexes` hold."""
    low, high = f"{table}:".encode(), f"{table};".encode()
    return sum(len(machine.engine.scan(low, high, None))
               for i in indexes for machine in nodes[i].machines.values())
