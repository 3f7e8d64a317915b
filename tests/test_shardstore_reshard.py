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
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from native.crc16 import key_slot
from shardstore.keysets import KeySet
from shardstore.launch import local_cluster
from shardstore.machine import decode_reply
from tests.procs import ROOT, Daemon
from tests.shardstore_procs import (
    READY_S,
    LoopCluster,
    as_map,
    run_loop,
    serve_daemons,
    until_move_done,
)

MOVE_S = 60.0
LOOP_BATCH_KEYS = 8  # keys per copy entry in the one-loop cluster
PROC_BATCH_KEYS = 2  # keys per copy entry: a move of 600 keys takes 300 steps


def test_a_move_under_writes_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    run_loop(tmp_path, _move_under_writes, batch_keys=LOOP_BATCH_KEYS)


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
    await until_move_done(admin, move_id)
    await asyncio.sleep(0.3)  # writes go on after the move, now to the new owner
    stop.set()
    await task
    [record] = [m for m in map(as_map, await admin.execute_command("SHARDSTORE.MOVES"))
                if m[b"id"] == move_id]
    assert record[b"copied"] >= len(hot) and record[b"purged"] >= len(hot)
    info = await admin.info("shardstore")
    assert info["moves_done"] == 1 and info["moves_under_way"] == 0
    assert info["keyspace"] == "default"
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


# -- as processes -----------------------------------------------------------------------------

class ProcCluster:
    """Three `shardstore serve` processes, 3 shards of 3 replicas, moves in tiny batches."""

    def __init__(self, tmp: Path) -> None:
        self.daemons = serve_daemons(tmp, 3, 3, ("--move-batch-keys", str(PROC_BATCH_KEYS)))

    def start(self) -> None:
        for daemon in self.daemons:
            daemon.start()
        self.until_ready()

    def until_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                infos = [self.client(d).execute_command("CLUSTER", "INFO")
                         for d in self.daemons]
                if all(b"cluster_state:ok" in i and b"cluster_known_nodes:3" in i
                       for i in infos):
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, self.daemons[0].log()[-3000:]
            time.sleep(0.2)

    @staticmethod
    def client(daemon: Daemon) -> redis.Redis:
        return redis.Redis(host=daemon.host, port=daemon.port, socket_timeout=20)

    def status(self, daemon: Daemon) -> dict[bytes, Any]:
        with self.client(daemon) as c:
            return as_map(c.execute_command("SHARDSTORE.STATUS"))

    def leader_of_shard(self, shard: int) -> Daemon:
        for daemon in self.daemons:
            for record in self.status(daemon)[b"shards"]:
                record = as_map(record)
                if record[b"shard"] == shard and record[b"role"] == b"leader":
                    return daemon
        raise AssertionError(f"shard {shard} has no leader")

    def config_leader(self) -> Daemon:
        lead = self.status(self.daemons[0])[b"config_leader"]
        return self.daemons[int(lead) - 1]

    def move(self, move_id: int) -> dict[bytes, Any]:
        for daemon in self.daemons:
            if daemon.alive():
                try:
                    with self.client(daemon) as c:
                        moves = [as_map(m) for m in c.execute_command("SHARDSTORE.MOVES")]
                    return next(m for m in moves if m[b"id"] == move_id)
                except redis.RedisError:
                    continue
        raise AssertionError("no node answers")

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


def _tags_in(slots: range, count: int) -> list[str]:
    tags = []
    i = 0
    while len(tags) < count:
        tag = f"t{i}"
        if key_slot(tag.encode()) in slots:
            tags.append(tag)
        i += 1
    return tags


def test_a_move_resumes_after_kills_and_admin_reshards_and_checks(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path)
    try:
        cluster.start()
        _killed_mid_move(cluster)
        _admin_commands(cluster, tmp_path)
    finally:
        cluster.stop()


def _killed_mid_move(cluster: ProcCluster) -> None:
    moving = range(5000, 5461)  # the top of shard 1's slots
    keys = [f"{{{tag}}}:{i}" for tag in _tags_in(moving, 20) for i in range(30)]
    cold = [f"{{{tag}}}:cold" for tag in _tags_in(range(0, 100), 5)]
    rc = RedisCluster(host=cluster.daemons[0].host, port=cluster.daemons[0].port)
    for key in keys + cold:
        assert rc.set(key, key)
    with cluster.client(cluster.daemons[0]) as c:
        move_id = c.execute_command("SHARDSTORE.MOVE", 1, 2, "SLOTS", "5000-5460")
    _until(lambda: cluster.move(move_id)[b"copied"] > 4 * PROC_BATCH_KEYS)
    victims = {cluster.leader_of_shard(1), cluster.config_leader()}  # one node or two
    assert cluster.move(move_id)[b"state"] == b"copy"  # killed in the middle of the copy
    for victim in victims:
        victim.kill()
    time.sleep(0.5)
    for victim in victims:
        victim.start()
    _until(lambda: cluster.move(move_id)[b"state"] == b"done")
    cluster.until_ready()
    assert cluster.move(move_id)[b"copied"] >= len(keys)
    rc.close()
    rc = RedisCluster(host=cluster.daemons[1].host, port=cluster.daemons[1].port)
    assert rc.mget_nonatomic(keys + cold) == [k.encode() for k in keys + cold]
    rc.close()
    for daemon in cluster.daemons:  # every replica of shard 1 purged, of shard 2 filled
        shards = map(as_map, cluster.status(daemon)[b"shards"])
        counts = {r[b"shard"]: r[b"keys"] for r in shards}
        assert counts[1] == len(cold), (daemon.address, counts)
        assert counts[2] == len(keys), (daemon.address, counts)


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + MOVE_S
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _admin(cluster: ProcCluster, *words: str) -> subprocess.CompletedProcess[str]:
    node = cluster.daemons[2].address
    return subprocess.run([sys.executable, "-m", "shardstore", "admin", "--node", node,
                           *words], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _admin_commands(cluster: ProcCluster, tmp_path: Path) -> None:
    out = _admin(cluster, "check")
    assert out.returncode == 0, out
    assert "[OK] All 16384 slots covered." in out.stdout
    assert "[OK] Shard 2: 3 replica(s) in sync" in out.stdout
    assert "[OK] All checks passed." in out.stdout
    out = _admin(cluster, "reshard", "--from", "2", "--to", "3", "--slots", "100",
                 "--batch", "50")
    assert out.returncode == 0, out
    assert "[" + "#" * 30 + "] 100/100 slots moved" in out.stderr  # the progress lines
    assert "(move 3 done)" in out.stderr
    with cluster.client(cluster.daemons[0]) as c:
        owners = [tuple(r) for r in c.execute_command("SHARDSTORE.SLOTS")]
    assert sum(b - a + 1 for a, b, s in owners if s == 3) == 5462 + 100
    assert (10822, 16383, 3) in owners  # the highest 100 of shard 2 joined shard 3
    out = _admin(cluster, "rebalance")
    assert out.returncode == 0, out
    assert "shard 3 -> shard 1: " in out.stderr
    with cluster.client(cluster.daemons[0]) as c:
        owners = [tuple(r) for r in c.execute_command("SHARDSTORE.SLOTS")]
    assert [sum(b - a + 1 for a, b, s in owners if s == sid) for sid in (1, 2, 3)] == \
        [5462, 5461, 5461]
    out = _admin(cluster, "check")
    assert out.returncode == 0 and "[OK] No move under way." in out.stdout, out
    refused = _admin(cluster, "reshard", "--from", "1", "--to", "2", "--slots", "99999")
    assert refused.returncode == 1 and "fewer than the 99999 asked for" in refused.stderr
    _redis_cli_reshard_refused(cluster)


def _redis_cli_reshard_refused(cluster: ProcCluster) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        return
    with cluster.client(cluster.daemons[0]) as c:
        with pytest.raises(redis.ResponseError, match="shardstore admin reshard"):
            c.execute_command("CLUSTER", "SETSLOT", 1, "IMPORTING", "x" * 40)
    with cluster.client(cluster.daemons[1]) as c:
        target = c.execute_command("CLUSTER", "MYID").decode()
    out = subprocess.run([cli, "--cluster", "reshard", cluster.daemons[0].address,
                          "--cluster-from", "all", "--cluster-to", target,
                          "--cluster-slots", "10", "--cluster-yes"],
                         capture_output=True, text=True, timeout=60)
    assert "use `shardstore admin reshard`" in out.stdout + out.stderr, out


def test_range_table_rows_stay_out_of_slot_moves_and_move_by_their_map(tmp_path: Path) -> None:
    run_loop(tmp_path, _range_rows, batch_keys=LOOP_BATCH_KEYS)


async def _range_rows(cluster: LoopCluster) -> None:
    node = next(n for n in cluster.nodes if 1 in n.machines)  # shard 1 is January's
    c = cluster.client(cluster.nodes.index(node))
    await c.execute_command("TABLE.CREATE", "orders", "RANGE", "DATE", "SPLITS", "2024-02",
                            "SHARDS", "1", "2")
    rows = [f"orders:2024-01-{d:02d}:{i}" for d in range(1, 29) for i in range(2)]
    for row in rows:
        assert await c.execute_command("SET", row, row) in (b"OK", True)
    slots = sorted({key_slot(r.encode()) for r in rows} & set(range(0, 5461)))
    admin = cluster.client(2)
    move_id = await admin.execute_command("SHARDSTORE.MOVE", 1, 2, "SLOTS",
                                          ",".join(map(str, slots)))
    await until_move_done(admin, move_id)
    assert await c.execute_command("GET", rows[0]) == rows[0].encode()  # still shard 1's
    assert await c.execute_command("SET", rows[0], "again") in (b"OK", True)
    move_id = await admin.execute_command("SHARDSTORE.MOVE", 1, 3, "TABLE", "orders",
                                          "2024-01", "2024-02")
    await until_move_done(admin, move_id)
    for each in cluster.nodes:
        table = each.config_machine.catalog.tables["orders"]
        assert [table.shard_at(table.position(r.encode())) for r in rows] == [3] * len(rows)
        for sid, machine in each.machines.items():
            held = [r for r in rows if machine.store.get(r.encode()) is not None]
            deadline = time.monotonic() + 10
            while held != (rows if sid == 3 else []):
                assert time.monotonic() < deadline, (each.me, sid, len(held))
                await asyncio.sleep(0.1)
                held = [r for r in rows if machine.store.get(r.encode()) is not None]
    reply = decode_reply(await node.writes.write(1, [b"SET", rows[1].encode(), b"stale"],
                                                 ranged=True))
    assert str(reply).startswith("TRYAGAIN")  # the old owner's fence, by its own log
    reader = next(n for n in cluster.nodes if 3 in n.machines)
    r = cluster.client(cluster.nodes.index(reader))
    assert await r.execute_command("GET", rows[0]) == b"again"
    with pytest.raises(redis.ResponseError, match="syntax"):
        await admin.execute_command("SHARDSTORE.MOVE", 1, 2, "RANGE", "a", "b")
    await c.aclose()
    await admin.aclose()
    await r.aclose()


README_SENTENCES = [  # each checked by a test of this file, test_shardstore_keyspaces.py or
    # test_shardstore_asking.py (ASK, ASKING)
    "Slots move online, with nothing acknowledged lost: `shardstore admin --node HOST:PORT "
    "reshard --from 1 --to 2 --slots 100` moves the 100 highest slots of shard 1 to shard 2, "
    "`rebalance` evens the slots out over the shards, and `check` prints `[OK]` or `[ERR]` "
    "lines for the slot coverage, the replicas and the moves.",
    "A move is driven by the configuration group's leader and goes on where it stopped when "
    "the source's leader or that leader is SIGKILLed; while a slot's keys are copied, a key "
    "the copy has taken gets `-ASK` to the new owner (redis-py's `RedisCluster` and "
    "`redis-cli -c` follow it with `ASKING`), a key still on its way `-TRYAGAIN`, and once "
    "the move ends `-MOVED`; a node with a stale slot map is refused by the old owner's own "
    "log.",
    "`redis-cli --cluster reshard` is refused: `CLUSTER SETSLOT` answers that shardstore "
    "moves slots itself.",
    "A keyspace is its own Redis Cluster on its own nodes: `serve --keyspace default=1,2,3 "
    "--keyspace users=4` when the cluster is made, or `KEYSPACE.CREATE orders 5 SHARDS 2` "
    "later; `KEYSPACE.LIST` lists them.",
    "`make run` starts four nodes (clients on 7601-7604, Raft on 7701-7704) in two "
    "keyspaces: `default` on nodes 1-3, one cluster of three shards of three replicas, and "
    "`users` on node 4;",
]


def test_the_readme_says_what_these_tests_show() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence


def test_make_run_declares_the_two_keyspaces(tmp_path: Path) -> None:
    *processes, router = local_cluster(tmp_path).processes
    assert [p.port for p in processes] == [7601, 7602, 7603, 7604]
    assert all(["--keyspace", "default=1,2,3", "--keyspace", "users=4"] ==
               p.argv[p.argv.index("--keyspace"):] for p in processes)
    assert router.port == 7690 and "router" in router.argv
    assert router.argv[router.argv.index("--nodes") + 1] == \
        "127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603"
