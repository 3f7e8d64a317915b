"""The shardstore daemon on real sockets: three nodes on 127.0.0.2-4.

In one event loop (fast): 3 shards of 2 replicas, so each node hosts two shards and
answers MOVED for the third; redis-py's RedisCluster follows it; CROSSSLOT, hash tags,
READONLY, DBSIZE, SCAN and FLUSHALL per node, the expiry sweep, WAIT, INFO; a shard engine
that cannot open stops the node.
As processes (`python -m shardstore serve`): 3 shards of 3 replicas; RedisCluster and
`redis-cli -c` over every slot range; SIGKILL of a shard leader under writes loses no
acknowledged write; a restart on the data dirs keeps everything; single-replica shards
with fsync everysec; serve's refusals of options that cannot work."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, MovedError
from redis.retry import Retry

from core.cluster_options import ClusterSettings
from native.crc16 import key_slot
from shardstore import commands
from shardstore.engine import Engine
from shardstore.server import NodeOptions, ShardNode
from tests.conftest import find_free_port
from tests.procs import Daemon
from tests.shardstore_procs import (
    HOSTS,
    READY_S,
    LoopCluster,
    aliases_work,
    run_loop,
    serve_daemons,
    until_ok,
)

HOUR_MS = 3_600_000
CLIENT_RETRIES = 10


def _keys_for_every_shard(count: int) -> list[str]:
    """Keys spread over the whole slot space (every shard's range gets some)."""
    keys, ranges = [], set()
    i = 0
    while len(keys) < count or len(ranges) < 3:
        key = f"key:{i}"
        keys.append(key)
        ranges.add(key_slot(key.encode()) * 3 // 16384)
        i += 1
    return keys


def test_cluster_clients_route_by_the_slot_map(tmp_path: Path) -> None:
    async def test(cluster: LoopCluster) -> None:
        rc = AsyncRedisCluster(host=HOSTS[1], port=cluster.nodes[1].settings.listen[1])
        try:
            keys = _keys_for_every_shard(60)
            for key in keys:
                assert await rc.set(key, key.upper())
            for key in keys:
                assert await rc.get(key) == key.upper().encode()
            sizes = []
            for i in range(3):  # DBSIZE is per node: its master shards
                node = cluster.client(i)
                sizes.append(await node.dbsize())
                await node.aclose()
            assert sum(sizes) == len(keys)
            assert await rc.mset({"{user1}:a": "1", "{user1}:b": "2"})
            assert await rc.mget("{user1}:a", "{user1}:b") == [b"1", b"2"]
            assert await rc.incr("{user1}:n") == 1
            assert await rc.hset("h", mapping={"f": "v"}) == 1
            assert await rc.hgetall("h") == {b"f": b"v"}
        finally:
            await rc.aclose()
        await _check_single_node_replies(cluster)
        await _check_the_leader_stamps_the_time(cluster)
        await _check_node_wide_commands(cluster)

    run_loop(tmp_path, test)


async def _check_single_node_replies(cluster: LoopCluster) -> None:
    node = cluster.nodes[0]
    foreign = next(s for s in node.config.shards.values() if 1 not in s.members)
    slot = node.config.ranges[foreign.shard_id - 1][0]
    key = next(f"k{i}" for i in range(100_000) if key_slot(f"k{i}".encode()) == slot)
    c = cluster.client(0)
    try:
        with pytest.raises(MovedError, match=f"^{slot} 127.0.0.[34]:"):
            await c.execute_command("GET", key)
        with pytest.raises(ClusterCrossSlotError, match="^Keys in request don't hash to the"):
            await c.execute_command("MSET", "a", "1", "b", "2")
        assert await c.execute_command("CLUSTER", "KEYSLOT", "{user1}:a") == key_slot(b"user1")
        assert await c.execute_command("CLUSTER", "MYID") == node.name.encode()
        assert await c.execute_command("READONLY") in (b"OK", True)
        assert await c.execute_command("ASKING") in (b"OK", True)
        own = next(s for s in node.config.shards.values() if 1 in s.members)
        slot = node.config.ranges[own.shard_id - 1][0]
        key = next(f"k{i}" for i in range(100_000) if key_slot(f"k{i}".encode()) == slot)
        await c.execute_command("READWRITE")
        await c.execute_command("SET", key, "here")
        await c.execute_command("READONLY")
        assert await c.execute_command("GET", key) == b"here"
        resp3 = aredis.Redis(host=node.settings.listen[0], port=node.settings.listen[1],
                             protocol=3)
        shards = await resp3.execute_command("CLUSTER", "SHARDS")
        await resp3.aclose()
        assert all(set(s) == {b"slots", b"nodes"} for s in shards), shards  # RESP3 maps
        info = await c.info("shardstore")
        assert info["node_id"] == 1 and info["config_epoch"] == 1
        assert "applied_entries" in await c.info("raft")
    finally:
        await c.aclose()


async def _check_the_leader_stamps_the_time(cluster: LoopCluster) -> None:
    """A write sent to a follower is stamped with the leader's clock: a follower whose
    clock is an hour ahead sets the expiry time the leader would."""
    pairs = [(n, s) for n in cluster.nodes for s in n.config.hosted_by(n.me)
             if n.view().leader(s.shard_id) not in (0, n.me)]
    follower, shard = pairs[0]
    leader = follower.view().leader(shard.shard_id)
    slot = follower.config.ranges[shard.shard_id - 1][0]
    key = next(f"t{i}" for i in range(200_000) if key_slot(f"t{i}".encode()) == slot)

    def ahead() -> int:
        return int(time.time() * 1000) + HOUR_MS

    follower.now_ms = follower.writes.now_ms = ahead  # type: ignore[method-assign]
    c, at_leader = cluster.client(cluster.nodes.index(follower)), cluster.client(leader - 1)
    try:
        assert await c.execute_command("SET", key, "v", "PX", 100_000) in (b"OK", True)
        assert 0 < await at_leader.execute_command("PTTL", key) <= 100_000
    finally:
        del follower.now_ms
        follower.writes.now_ms = follower.now_ms
        await c.aclose()
        await at_leader.aclose()


async def _check_node_wide_commands(cluster: LoopCluster) -> None:
    """Expiry sweeps, the slot's keys, WAIT, SCAN and FLUSHALL of each node's masters."""
    node = cluster.nodes[0]
    own = next(s for s in node.config.shards.values() if 1 in s.members)
    slot = node.config.ranges[own.shard_id - 1][0]
    keys = [f"k{i}" for i in range(200_000) if key_slot(f"k{i}".encode()) == slot][:3]
    c = cluster.client(0)
    try:
        for key in keys:
            await c.execute_command("SET", key, "1")
        await c.execute_command("SET", keys[0], "gone", "PX", "50")
        assert await c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 3
        assert sorted(await c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)) == \
            sorted(k.encode() for k in keys)
        with pytest.raises(redis.ResponseError, match="^Invalid slot$"):
            await c.execute_command("CLUSTER", "COUNTKEYSINSLOT", 16384)
        with pytest.raises(redis.ResponseError, match="^Invalid slot or number of keys$"):
            await c.execute_command("CLUSTER", "GETKEYSINSLOT", 1, -1)
        engine = node.machines[own.shard_id].engine
        deadline = time.monotonic() + 10
        while engine.get(keys[0].encode()) is not None:  # the leader's sweep deletes it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await c.execute_command("WAIT", 1, 0) in (0, 1)
        with pytest.raises(redis.ResponseError, match="timeout is negative"):
            await c.execute_command("WAIT", 1, -1)
    finally:
        await c.aclose()
    seen: set[bytes] = set()
    for i in range(3):
        client = cluster.client(i)
        seen.update([k async for k in client.scan_iter(count=7)])
        assert await client.execute_command("FLUSHALL") in (b"OK", True)
        await client.aclose()
    assert {k.encode() for k in keys[1:]} <= seen
    for i in range(3):
        client = cluster.client(i)
        assert await client.dbsize() == 0
        await client.aclose()


# -- as processes -----------------------------------------------------------------------------

class ProcCluster:
    """Three `shardstore serve` processes, ids 1-3, on HOSTS."""

    def __init__(self, tmp: Path, shards: int = 3, replicas: int = 3,
                 extra: tuple[str, ...] = ()) -> None:
        self.daemons = serve_daemons(tmp, shards, replicas, extra)

    def start(self) -> None:
        for daemon in self.daemons:
            daemon.start()
        asyncio.run(until_ok([d.address for d in self.daemons]))

    def client(self) -> RedisCluster:
        first = self.daemons[0]
        return RedisCluster(host=first.host, port=first.port,
                            retry=Retry(ExponentialBackoff(cap=1.0), CLIENT_RETRIES))

    def leader_of(self, key: str) -> int:
        """The index of the daemon reported as master of the key's slot."""
        with redis.Redis(host=self.daemons[0].host, port=self.daemons[0].port) as c:
            slot = key_slot(key.encode())
            for first, last, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return [d.port for d in self.daemons].index(master[1])
        raise AssertionError("no master")

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Any:
    cluster = ProcCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_processes_serve_redis_cluster_clients_and_survive_a_leader_kill(
        procs: ProcCluster) -> None:
    rc = procs.client()
    keys = _keys_for_every_shard(90)
    for key in keys:
        assert rc.set(key, key)
    assert rc.mget_nonatomic(keys) == [k.encode() for k in keys]
    assert len(rc.cluster_nodes()) == 3  # redis-py parses CLUSTER NODES
    shards = rc.execute_command("CLUSTER SHARDS", target_nodes=RedisCluster.RANDOM)
    assert sorted(len(s.get("nodes") or s[b"nodes"]) for s in shards) == [3, 3, 3]
    _check_redis_cli(procs)
    acked, tried = _writes_while_killing(procs, rc)
    rc.close()
    rc = procs.client()
    _check_acked(rc, acked, tried)
    rc.close()
    for daemon in procs.daemons:  # every node down (cleanly), then up on its data dir
        assert daemon.stop() == 0, daemon.log()[-2000:]
    for daemon in procs.daemons:
        daemon.start()
    asyncio.run(until_ok([d.address for d in procs.daemons]))
    rc = procs.client()
    assert rc.mget_nonatomic(keys) == [k.encode() for k in keys]
    _check_acked(rc, acked, tried)
    rc.close()


def _check_acked(rc: RedisCluster, acked: dict[str, int], tried: dict[str, set[int]]) -> None:
    """Each key holds its last acknowledged value or a later one whose write had an
    unknown outcome (values only grow)."""
    for key, value in acked.items():
        found = int(rc.get(key))
        assert found == value or (found > value and found in tried[key]), (key, value, found)


def _check_redis_cli(procs: ProcCluster) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        return
    first = procs.daemons[0]
    base = [cli, "-c", "-h", first.host, "-p", str(first.port)]
    for key in ("alpha", "beta", "gamma", "delta"):  # in each of three shards
        out = subprocess.run([*base, "SET", key, key + "!"], capture_output=True, text=True,
                             timeout=20, check=True)
        assert out.stdout.strip() == "OK", out
        out = subprocess.run([*base, "GET", key], capture_output=True, text=True, timeout=20,
                             check=True)
        assert out.stdout.strip() == key + "!", out


def _writes_while_killing(procs: ProcCluster, rc: RedisCluster
                          ) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Write growing values from a thread while the master of one shard is SIGKILLed and
    restarted; return the last acknowledged value of each key and every value tried."""
    acked: dict[str, int] = {}
    tried: dict[str, set[int]] = {}
    oks = [0]
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            key = f"w:{i % 300}"
            tried.setdefault(key, set()).add(i)
            try:
                if rc.set(key, i):
                    acked[key] = i
                    oks[0] += 1
            except redis.RedisError:
                pass  # unknown outcome: not counted, and the key is written again later
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(1.0)
    victim = procs.daemons[procs.leader_of("w:0")]
    victim.kill()
    before = oks[0]
    time.sleep(2.0)
    victim.start()
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=60)
    assert before > 0 and oks[0] > before  # writes went on after the kill
    return acked, tried


def test_single_replica_shards_with_fsync_everysec(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path, shards=3, replicas=1, extra=("--fsync", "everysec"))
    try:
        cluster.start()
        rc = cluster.client()
        keys = _keys_for_every_shard(30)
        for key in keys:
            assert rc.set(key, key)
        assert rc.mget_nonatomic(keys) == [k.encode() for k in keys]
        rc.close()
        first = cluster.daemons[0]
        with redis.Redis(host=first.host, port=first.port) as c:
            moved = [k for k in keys if k.encode() != _get_or_moved(c, k)]
            assert moved  # node 1 hosts one shard of three: the others' keys are MOVED
            assert c.info("shardstore")["fsync"] == "everysec"
        _check_redis_cli(cluster)  # redis-cli -c follows those MOVED replies
    finally:
        cluster.stop()


def _get_or_moved(client: redis.Redis, key: str) -> bytes | None:
    try:
        return client.get(key)
    except MovedError:
        return None


def test_a_replica_that_fell_behind_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path, extra=("--snapshot-every", "50",
                                           "--compaction-margin", "20"))
    try:
        cluster.start()
        late = cluster.daemons[2]
        late.stop()
        rc = cluster.client()
        for i in range(300):  # one shard: its log is cut behind snapshots meanwhile
            assert rc.set(f"{{snap}}:{i}", i)
        rc.close()
        late.start()
        with redis.Redis(host=late.host, port=late.port) as c:
            c.execute_command("READONLY")  # the late replica's own copy, no barrier
            deadline = time.monotonic() + READY_S
            while c.get("{snap}:299") != b"299":
                assert time.monotonic() < deadline, late.log()[-3000:]
                time.sleep(0.2)
            assert c.mget([f"{{snap}}:{i}" for i in range(300)]) == \
                [str(i).encode() for i in range(300)]
        assert "restored the snapshot" in late.log()  # core/raft's line: not by the log
    finally:
        cluster.stop()


def test_serve_refuses_what_cannot_work(tmp_path: Path) -> None:
    base = ["shardstore", "serve", "--id", "1", "--listen", "127.0.0.1:0",
            "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
            "--data-dir", str(tmp_path / "d")]
    for extra, text in ((["--replicas", "4"], "--replicas must be 1..3"),
                        (["--fsync", "everysec"], "everysec is only allowed with --replicas 1"),
                        (["--shards", "0"], "--shards must be")):
        daemon = Daemon([*base, *extra], "127.0.0.1", 0, tmp_path / "refused.log")
        assert daemon.run_to_exit() == 2
        assert text in daemon.log()


class _CorruptEngine(Engine):
    @classmethod
    def open(cls, directory: Path, **options: Any) -> Engine:
        raise OSError(f"{directory}: unreadable (a test's failing disk)")


def test_a_shard_engine_that_cannot_open_stops_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        host = HOSTS[0] if aliases_work() else "127.0.0.1"
        raft = {1: (host, find_free_port(host))}
        settings = ClusterSettings(
            node_id=1, listen=(host, find_free_port(host)), peer_listen=raft[1], peers=raft,
            founders=(1,), data_dir=tmp_path / "n1", secret=None, password=None,
            tick_s=0.02, election_tick=15)
        node = ShardNode(settings, NodeOptions(1, 1), layer=commands,
                         engine_class=_CorruptEngine)
        await node.start()
        try:
            with pytest.raises(OSError, match="a test's failing disk"):
                await asyncio.wait_for(node.wait_failed(), READY_S)
        finally:
            await node.stop()

    asyncio.run(main())
