"""shardstore.client against real `shardstore serve` processes (three nodes on 127.0.0.2-4).

Single-replica shards (each node hosts one shard of three and answers MOVED for the other
two): both clients, seeded with one node, over keys of every slot range; the phase-1 command
methods and `execute`; CROSSSLOT raised as the caller's error; SCAN over every master; a map
made stale by hand is corrected by the node's MOVED. Three-replica shards: a SIGKILLed shard
leader; the client goes on, and its refreshed map names the new master.
Offline: the slot map taken from a CLUSTER SLOTS reply, and key routing; scripted nodes on
loopback for what phase 1 never sends (ASK, TRYAGAIN until the deadline)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.failover import Failover
from core.resp_client import NEED_DATA, ReplyParser
from native.crc16 import key_slot
from shardstore.client import (
    AsyncShardstoreClient,
    CrossSlotError,
    ShardstoreClient,
    ShardstoreError,
    ShardstoreUnavailable,
)
from shardstore.client_core import SlotRouter, set_args, slot_of
from tests.test_shardstore_daemon import ProcCluster

READY_S = 30.0
POLL_S = 0.2


def _keys_over_every_range(count: int) -> list[str]:
    """`count` keys at least, with some in each third of the slot space."""
    keys: list[str] = []
    thirds: set[int] = set()
    i = 0
    while len(keys) < count or len(thirds) < 3:
        keys.append(f"ck:{i}")
        thirds.add(key_slot(keys[-1].encode()) * 3 // 16384)
        i += 1
    return keys


# -- offline ----------------------------------------------------------------------------------

def test_the_slot_map_comes_from_cluster_slots() -> None:
    failover: Failover[object] = Failover([("127.0.0.9", 1)], random.Random(1))
    router = SlotRouter(failover, clock=lambda: 100.0)
    reply = [[0, 5460, [b"10.0.0.1", 7001, b"id1"], [b"10.0.0.2", 7001, b"id2"]],
             [5461, 16383, [b"10.0.0.2", 7001, b"id2"]]]
    assert router.wants_refresh()
    router.load(reply)
    assert not router.wants_refresh()
    first, second = failover.index_of(("10.0.0.1", 7001)), failover.index_of(("10.0.0.2", 7001))
    assert failover.slots[0] == failover.slots[5460] == first
    assert failover.slots[5461] == failover.slots[16383] == second
    assert router.masters == [("10.0.0.1", 7001), ("10.0.0.2", 7001)]
    failover.preferred = second
    router.settled(0)  # another node than the mapped master answered for slot 0
    assert router.stale and not router.wants_refresh()  # refreshed less than a second ago
    with pytest.raises(ShardstoreError):
        router.load([[0, "x"]])


@given(cuts=st.lists(st.integers(1, 16383), max_size=12, unique=True),
       owners=st.lists(st.integers(0, 4), min_size=13, max_size=13))
def test_every_slot_maps_to_its_ranges_master(cuts: list[int], owners: list[int]) -> None:
    bounds = [0, *sorted(cuts), 16384]
    ranges = [(first, nxt - 1, owners[i]) for i, (first, nxt) in
              enumerate(zip(bounds, bounds[1:], strict=False))]
    reply = [[first, last, [f"10.0.0.{owner}".encode(), 7000 + owner, b"id"]]
             for first, last, owner in ranges]
    failover: Failover[object] = Failover([("127.0.0.9", 1)], random.Random(1))
    router = SlotRouter(failover, clock=lambda: 0.0)
    router.load(reply)
    assert len(failover.slots) == 16384
    for first, last, owner in ranges:
        for slot in (first, last, (first + last) // 2):
            assert failover.address(failover.slots[slot]) == (f"10.0.0.{owner}", 7000 + owner)
    assert len(router.masters) == len({owner for *_, owner in ranges})


def test_commands_are_routed_by_their_key() -> None:
    assert slot_of(("GET", "{user1}:a")) == slot_of(("SET", b"{user1}:b", 1)) == \
        key_slot(b"user1")
    assert slot_of(("PING",)) is None and slot_of(("cluster", "slots")) is None
    assert slot_of(("DBSIZE", "x")) is None


def test_set_refuses_options_that_exclude_each_other() -> None:
    assert set_args("k", 1, 5, None, True, False) == ("SET", "k", 1, "EX", 5, "NX")
    for ex, px, nx, xx in ((1, 1, False, False), (None, None, True, True)):
        with pytest.raises(ValueError, match="exclude each other"):
            set_args("k", 1, ex, px, nx, xx)


class ScriptedNode:
    """A loopback RESP node answering each command with `answer(words, asking)`: a reply's
    raw bytes. Records the commands it got."""

    def __init__(self, answer: Callable[[list[bytes], bool], bytes]) -> None:
        self.answer = answer
        self.got: list[list[bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser, asking = ReplyParser(), False
        while data := await reader.read(4096):
            parser.feed(data)
            while (words := parser.next_reply()) is not NEED_DATA:
                assert isinstance(words, list)
                self.got.append(words)
                if words[0].upper() == b"ASKING":
                    asking = True
                    writer.write(b"+OK\r\n")
                    continue
                writer.write(self.answer(words, asking))
                asking = False
            await writer.drain()
        writer.close()


def _cluster_slots_on(port: int) -> bytes:
    return b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n" % port


def test_ask_is_followed_once_with_asking_and_leaves_the_map() -> None:
    async def main() -> None:
        slot = key_slot(b"k")
        target = ScriptedNode(lambda w, asking: b"$1\r\nv\r\n" if asking
                              else b"-MOVED %d 127.0.0.1:1\r\n" % slot)
        await target.start()
        home = ScriptedNode(lambda w, asking: _cluster_slots_on(home.port)
                            if w[0] == b"CLUSTER"
                            else b"-ASK %d 127.0.0.1:%d\r\n" % (slot, target.port))
        await home.start()
        async with AsyncShardstoreClient([f"127.0.0.1:{home.port}"]) as client:
            assert await client.get("k") == b"v"
            assert client._failover.address(client._failover.slots[slot]) == \
                ("127.0.0.1", home.port)  # ASK is for one request: the map stays
            assert await client.get("k") == b"v"
        assert target.got == [[b"ASKING"], [b"GET", b"k"]] * 2
        await home.stop()
        await target.stop()

    asyncio.run(main())


def test_tryagain_is_retried_until_the_deadline_then_unavailable() -> None:
    async def main() -> None:
        busy = {"left": 3}

        def answer(words: list[bytes], asking: bool) -> bytes:
            if words[0] == b"CLUSTER":
                return _cluster_slots_on(node.port)
            if words[0] == b"INCR" and busy["left"] > 0:
                busy["left"] -= 1
                return b"-TRYAGAIN shard 1 has no leader\r\n"
            if words[0] == b"INCR":
                return b":1\r\n"
            return b"-TRYAGAIN shard 1 has no leader\r\n"

        node = ScriptedNode(answer)
        await node.start()
        async with AsyncShardstoreClient([f"127.0.0.1:{node.port}"], deadline_s=2.0,
                                         rng=random.Random(2)) as client:
            assert await client.incr("n") == 1  # after three TRYAGAIN
            with pytest.raises(ShardstoreUnavailable, match="TRYAGAIN") as caught:
                await client.get("n")
            assert list(caught.value.errors) == [f"127.0.0.1:{node.port}"]
        await node.stop()

    asyncio.run(main())


# -- single-replica shards: MOVED for two thirds of the keys --------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    cluster = ProcCluster(tmp_path_factory.mktemp("single"), shards=3, replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_the_blocking_client_over_every_slot_range(single: ProcCluster) -> None:
    seed = single.daemons[0].address
    keys = _keys_over_every_range(60)
    with ShardstoreClient([seed], rng=random.Random(7)) as client:
        for key in keys:
            assert client.set(key, key)
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
        assert len(client.router.masters) == 3
        assert not client.set(keys[0], "x", nx=True) and client.set(keys[0], "y", xx=True)
        assert client.set("ck:ttl", 1, ex=100) and 0 < client.ttl("ck:ttl") <= 100
        assert client.set("ck:pttl", 1, px=100_000) and client.ttl("ck:pttl") > 0
        assert client.expire(keys[1], 50) and client.ttl(keys[2]) == -1
        assert client.incr("ck:n") == 1 and client.incrby("ck:n", 41) == 42
        tagged = {f"{{t}}:{i}": str(i) for i in range(5)}
        assert client.mset(tagged)
        assert client.mget(*tagged) == [v.encode() for v in tagged.values()]
        assert client.exists(*tagged) == 5 and client.delete("{t}:0", "{t}:1") == 2
        assert client.hset("ck:h", {"a": 1, "b": 2}) == 2 and client.hget("ck:h", "a") == b"1"
        assert client.hgetall("ck:h") == {b"a": b"1", b"b": b"2"}
        assert client.hdel("ck:h", "a", "zz") == 1
        assert client.execute("STRLEN", keys[3]) == len(keys[3])
        assert client.execute("PING") == "PONG"
        with pytest.raises(CrossSlotError):
            client.mget(keys[0], keys[1], keys[2], keys[3])
        with pytest.raises(ShardstoreError, match="WRONGTYPE"):
            client.get("ck:h")
        found = set(client.scan_iter(match="ck:*"))
        assert found == {k.encode() for k in [*keys, "ck:ttl", "ck:pttl", "ck:n", "ck:h"]}


def test_a_stale_map_is_mended_by_moved(single: ProcCluster) -> None:
    with ShardstoreClient([single.daemons[1].address], rng=random.Random(3)) as client:
        client.refresh_slots()
        key = "moved:1"
        slot = key_slot(key.encode())
        right = client._failover.slots[slot]
        wrong = next(i for i in set(client._failover.slots.values()) if i != right)
        client._failover.slots[slot] = wrong  # as if the slot had moved since the fetch
        assert client.set(key, "v")  # the wrong node answers MOVED; the client follows it
        assert client._failover.slots[slot] == right
        assert client.get(key) == b"v"


def test_the_async_client_over_every_slot_range(single: ProcCluster) -> None:
    keys = _keys_over_every_range(30)

    async def main() -> None:
        seeds = [d.address for d in single.daemons[2:]]
        async with AsyncShardstoreClient(seeds, rng=random.Random(5)) as client:
            for key in keys:
                assert await client.set(key, "a:" + key)
            assert await asyncio.gather(*(client.get(k) for k in keys)) == \
                [f"a:{k}".encode() for k in keys]
            assert await client.incrby("ca:n", 5) == 5 and await client.incr("ca:n") == 6
            assert await client.mset({"{u}:a": 1, "{u}:b": 2})
            assert await client.mget("{u}:a", "{u}:b") == [b"1", b"2"]
            assert await client.hset("ca:h", {"f": "v"}) == 1
            assert await client.hgetall("ca:h") == {b"f": b"v"}
            with pytest.raises(CrossSlotError):
                await client.delete(*keys)
            found = {k async for k in client.scan_iter(match="ck:*")}
            assert {k.encode() for k in keys} <= found

    asyncio.run(main())


# -- three-replica shards: a shard leader killed ----------------------------------------------

def test_a_killed_shard_leader_moves_its_slots_master(tmp_path: Path) -> None:
    cluster = ProcCluster(tmp_path)
    try:
        cluster.start()
        key = "lead:1"
        victim = cluster.daemons[cluster.leader_of(key)]
        with ShardstoreClient([d.address for d in cluster.daemons],
                              rng=random.Random(11)) as client:
            assert client.set(key, "before")
            assert (victim.host, victim.port) in client.router.masters
            victim.kill()
            assert client.set(key, "after")  # another member forwards, or TRYAGAIN, retried
            deadline = time.monotonic() + READY_S
            while client._failover.address(client._failover.slots[key_slot(key.encode())]) \
                    == (victim.host, victim.port):
                assert time.monotonic() < deadline, "the map still names the killed leader"
                assert client.get(key) == b"after"
                time.sleep(POLL_S)
            assert client.get(key) == b"after"
    finally:
        cluster.stop()
