"""ASK and ASKING during a slot move (shardstore/asking.py, fences.Fences' imports).

Sans I/O: a copy into the target writes only rows past what its walk already brought, so a
resumed or late copy never overwrites a key written there under ASKING; a command under
ASKING runs only on keys the walk has passed; the imports survive a restart. On real
sockets, in one event loop (three nodes, 3 shards of 2 replicas), with the move's copy held
after its first batch: redis-py's RedisCluster and `redis-cli -c` read and write a key the
copy has taken, through the source's `-ASK` and the target's ASKING (counted by the nodes'
SHARDSTORE.STATUS), a key still on its way gets `-TRYAGAIN`, a multi-key request whose
keys have partly moved gets Redis's `-TRYAGAIN Multiple keys request during rehashing of
slot` (sans I/O, on both sides), FLUSHALL on either shard's
master gets `-TRYAGAIN`, DBSIZE summed over the nodes counts no key twice, and once the
move finishes every write made under ASKING is there."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from core.resp import CommandError
from native.crc16 import SLOT_COUNT, key_slot
from shardstore.asking import ERR_MULTI_KEYS_MOVING, Asking
from shardstore.cluster import ClusterConfig, ClusterView, Shard
from shardstore.fences import ERR_FENCED, ERR_IMPORTING, Fences, fenced_move
from shardstore.keysets import KeySet
from shardstore.machine import (
    KIND_COPY,
    KIND_FREEZE,
    KIND_LIFT,
    decode_reply,
    encode_command,
    encode_move,
)
from shardstore.moves import Move
from tests.procs import ROOT
from tests.shardstore_procs import LoopCluster, run_loop, until_move_done
from tests.test_shardstore_moves import _set, _shard

ASK_RE = re.compile(r"^ASK (\d+) ([0-9.]+):(\d+)$")


def _asking_set(key: bytes, value: bytes) -> bytes:
    return encode_command(1_000, [b"SET", key, value], asking=True)


def _copy(move: int, keys: KeySet, rows: list[list[Any]], start: bytes | None,
          end: bytes | None) -> bytes:
    return encode_move(KIND_COPY, 1_000, move, rows, keys.to_wire(), start, end)


def test_a_copy_never_overwrites_a_write_made_under_asking(tmp_path: Path) -> None:
    names = [b"a", b"b", b"c", b"d"]
    keys = KeySet.of_slots(key_slot(k) for k in names)
    target = _shard(tmp_path / "t")
    first = [[b"a", b"old-a", 0], [b"b", b"old-b", 0]]
    replies = [decode_reply(r) for r in target.apply([
        (1, _copy(5, keys, first, None, b"b")),
        (2, _asking_set(b"a", b"new-a")),  # the walk passed a: taken
        (3, _asking_set(b"c", b"new-c")),  # not yet: TRYAGAIN, no effect
        (4, _copy(5, keys, first, None, b"b")),  # a late copy of the first batch
    ])]
    assert replies[0] == 2 and replies[3] == 0
    assert isinstance(replies[2], CommandError) and replies[2].message.startswith("TRYAGAIN")
    assert target.engine.get(b"a")[0].endswith(b"new-a")
    assert target.engine.get(b"c") is None
    target.engine.close()
    target = _shard(tmp_path / "t")  # the import's progress survives a restart
    assert target.fences.imports[5].cursor == b"b"
    replies = [decode_reply(r) for r in target.apply([
        (5, _copy(5, keys, [[b"c", b"old-c", 0], [b"d", b"old-d", 0]], b"b", None)),
        (6, _asking_set(b"c", b"new-c")),
        (7, encode_move(KIND_LIFT, 1_000, 5, keys.to_wire())),
        (8, _copy(5, keys, [[b"c", b"old-c", 0]], b"b", None)),  # late: refused
    ])]
    assert replies[0] == 2 and not isinstance(replies[1], CommandError)
    assert "closed" in str(replies[3])
    assert target.engine.get(b"c")[0].endswith(b"new-c")
    assert target.fences.unimported([b"a", b"b", b"c", b"d"]) is None
    target.engine.close()


def test_asking_passes_an_older_fence_but_not_a_newer_one(tmp_path: Path) -> None:
    keys = KeySet.of_slots([key_slot(b"a")])
    wire = keys.to_wire()
    shard = _shard(tmp_path / "t")  # keys moved out (move 3), then copied back in (move 5)
    replies = [decode_reply(r) for r in shard.apply([
        (1, encode_move(KIND_FREEZE, 1_000, 3, wire)),
        (2, _copy(5, keys, [[b"a", b"1", 0]], None, b"a")),
        (3, _asking_set(b"a", b"2")),  # the copy supersedes move 3's fence
        (4, _set(b"a", b"stale")),  # not under ASKING: still refused by it
        (5, encode_move(KIND_FREEZE, 1_000, 8, wire)),  # moved out again
        (6, _asking_set(b"a", b"3")),
    ])]
    assert not isinstance(replies[2], CommandError)
    assert isinstance(replies[3], CommandError) and isinstance(replies[5], CommandError)
    assert "(move 8)" in replies[5].message
    assert shard.engine.get(b"a")[0].endswith(b"2")
    shard.engine.close()


def test_a_batch_after_a_gap_writes_but_does_not_move_the_walk(tmp_path: Path) -> None:
    keys = KeySet.of_slots(key_slot(k) for k in (b"a", b"x"))
    fences = Fences()
    assert fences.copy_rows(1, keys, [(b"x", b"1", 0)], b"m", b"x") == [(b"x", b"1", 0)]
    assert not fences.imports[1].started and fences.unimported([b"a"]) == 1
    assert fences.unimported([b"zzz-not-moving"]) == 0


def test_the_source_refuses_moving_keys_with_the_fence_text(tmp_path: Path) -> None:
    source = _shard(tmp_path / "s")
    keys = KeySet.of_slots([key_slot(b"k")])
    out = source.apply([(1, _set(b"k", b"1")),
                        (2, encode_move(KIND_FREEZE, 1_000, 9, keys.to_wire())),
                        (3, _set(b"k", b"2"))])
    refusal = decode_reply(out[2])
    assert refusal.message == ERR_FENCED.format(9) and fenced_move(refusal.message) == 9
    source.engine.close()


SOURCE_KEYS = [f"key{i:02d}".encode() for i in range(12)]


@settings(max_examples=60)
@given(st.integers(1, 5),
       st.lists(st.one_of(st.tuples(st.just("copy"), st.integers(0, 11)),
                          st.tuples(st.just("asking"), st.integers(0, 11))), max_size=40))
def test_no_copy_order_overwrites_a_write_taken_under_asking(
        size: int, events: list[tuple[str, int]]) -> None:
    """Copy batches delivered in any order, again and late, between writes under ASKING:
    a write the target took is never overwritten, and every key ends up there."""
    keys = KeySet.of_slots(key_slot(k) for k in SOURCE_KEYS)
    chunks = [SOURCE_KEYS[i:i + size] for i in range(0, len(SOURCE_KEYS), size)]
    batches = [([(k, b"source", 0) for k in chunk], chunks[i - 1][-1] if i else None,
                chunk[-1] if i + 1 < len(chunks) else None) for i, chunk in enumerate(chunks)]
    fences, store, taken = Fences(), {}, {}
    plan = [*events, *(("copy", i) for i in range(len(batches)))]  # then the walk ends
    for n, (kind, which) in enumerate(plan):
        if kind == "copy":
            rows, start, end = batches[which % len(batches)]
            store.update((k, v) for k, v, _ in fences.copy_rows(1, keys, rows, start, end))
        elif fences.unimported([SOURCE_KEYS[which]]) is None:
            value = f"asked{n}".encode()
            store[SOURCE_KEYS[which]] = taken[SOURCE_KEYS[which]] = value
    assert fences.imports[1].walked
    assert store == {k: taken.get(k, b"source") for k in SOURCE_KEYS}


@settings(max_examples=50)
@given(st.text(max_size=120))
def test_the_fence_text_parser_takes_only_fence_texts(text: str) -> None:
    found = fenced_move(text)
    assert found is None or ERR_FENCED.format(found) == text


def test_old_move_records_still_read() -> None:
    move = Move(3, KeySet.of_slots([1]), 1, 2, cursor=b"k", copied=4)
    wire = msgpack.unpackb(msgpack.packb(move.to_wire()))
    assert Move.from_wire(wire) == move and Move.from_wire(wire[:9]) == move
    assert move.copied_past(b"a") and not move.copied_past(b"z")


class _StubNode:
    """What Asking.redirect and the ASKING write path read of a node: a configuration with
    one slot move (shard 1 -> 2) and a view giving shard 2's master an address."""

    def __init__(self, move: Move) -> None:
        self.config = ClusterConfig(epoch=3, shards={1: Shard(1, 1, [1]), 2: Shard(2, 2, [2])},
                                    moves={move.move_id: move})
        self.config.ranges = [(0, SLOT_COUNT - 1, 1)]
        self.config.rebuild()
        self.me = 1

    def keys_of(self, args: list[bytes]) -> list[bytes]:
        return list(args[1::2]) if args[0].upper() == b"MSET" else list(args[1:])

    def view(self) -> ClusterView:
        return ClusterView(self.config, 1, {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"},
                           {1: 1, 2: 2})


def test_the_readme_names_the_multi_key_tryagain() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    assert ("A multi-key command on keys of one moving slot, some already moved and some "
            "not, gets `-TRYAGAIN Multiple keys request during rehashing of slot` as from "
            "Redis.") in text


def test_a_multi_key_request_partly_moved_gets_redis_tryagain() -> None:
    keys = [b"{t}a", b"{t}b", b"{t}c"]  # one slot; the copy has passed {t}a and {t}b
    slot = key_slot(keys[0])
    move = Move(9, KeySet.of_slots([slot]), 1, 2, cursor=b"{t}b")
    asking = Asking(_StubNode(move))  # type: ignore[arg-type]
    fenced = CommandError(ERR_FENCED.format(9))
    assert asking.redirect(fenced, [b"MGET", *keys]).message == ERR_MULTI_KEYS_MOVING
    assert asking.redirect(fenced, [b"MSET", keys[0], b"1", keys[2], b"2"]).message == (
        "TRYAGAIN Multiple keys request during rehashing of slot")
    assert asking.redirect(fenced, [b"MGET", *keys[:2]]).message == (
        f"ASK {slot} 127.0.0.1:7002")  # every key passed: ASK, as Redis when none is left
    assert asking.redirect(fenced, [b"MGET", keys[2], keys[2]]) is fenced  # one key
    assert asking.redirect(fenced, [b"GET", keys[2]]) is fenced  # not yet walked
    importing = CommandError(ERR_IMPORTING.format(9))  # the target, under ASKING
    assert asking._unstable(importing, [b"MGET", *keys]).message == ERR_MULTI_KEYS_MOVING
    assert asking._unstable(importing, [b"GET", keys[2]]) is importing
    other = CommandError("ERR wrong number of arguments")
    assert asking._unstable(other, [b"MGET", *keys]) is other


@given(st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=6),
       st.binary(max_size=6))
def test_the_source_answers_ask_tryagain_or_the_fence_by_the_copy_cursor(
        keys: list[bytes], cursor: bytes) -> None:
    move = Move(4, KeySet.of_slots([0]), 1, 2, cursor=cursor)
    asking = Asking(_StubNode(move))  # type: ignore[arg-type]
    fenced = CommandError(ERR_FENCED.format(4))
    reply = asking.redirect(fenced, [b"MGET", *keys]).message
    passed = [k <= cursor for k in keys]
    if all(passed):
        assert reply.startswith("ASK ")
    elif any(passed):
        assert reply == ERR_MULTI_KEYS_MOVING
    else:
        assert reply == fenced.message


# -- on real sockets --------------------------------------------------------------------------

def _hold_copies(cluster: LoopCluster, gate: asyncio.Event) -> None:
    """Every node's coordinator sends the first copy batch of a move, then waits for
    `gate` before each later one (so the move stays in its copy)."""
    for node in cluster.nodes:
        mover = node.mover
        original = mover._entry
        sent = {"copies": 0}

        async def held(shard_id: int, entry: bytes, original: Any = original,
                       sent: dict[str, int] = sent) -> Any:
            if msgpack.unpackb(entry)[0] == KIND_COPY:
                sent["copies"] += 1
                if sent["copies"] > 1:
                    await gate.wait()
            return await original(shard_id, entry)

        mover._entry = held  # type: ignore[method-assign]


def test_redis_clients_follow_ask_during_a_move(tmp_path: Path) -> None:
    run_loop(tmp_path, _ask_during_move, batch_keys=4)


async def _until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _ask_during_move(cluster: LoopCluster) -> None:
    config = cluster.nodes[0].config
    moving = list(range(config.ranges[0][1] - 31, config.ranges[0][1] + 1))
    hot = [f"k{i}" for i in range(50_000) if key_slot(f"k{i}".encode()) in moving][:24]
    host, port = cluster.nodes[0].settings.listen
    rc = AsyncRedisCluster(host=host, port=port)
    for key in hot:
        assert await rc.set(key, f"v-{key}")
    gate = asyncio.Event()
    _hold_copies(cluster, gate)
    admin = cluster.client(2)
    move_id = await admin.execute_command("SHARDSTORE.MOVE", 1, 2, "SLOTS",
                                          f"{moving[0]}-{moving[-1]}")
    await _until(lambda: all(move_id in n.config.moves
                             and n.config.moves[move_id].cursor is not None
                             for n in cluster.nodes), "the first batch")
    move = cluster.nodes[0].config.moves[move_id]
    taken = sorted(k for k in hot if move.copied_past(k.encode()))
    waiting = sorted(k for k in hot if not move.copied_past(k.encode()))
    assert taken and waiting
    await _raw_replies(cluster, taken[0], waiting[0])
    await _asking_lasts_one_command(cluster, taken[0])
    assert await rc.get(taken[0]) == f"v-{taken[0]}".encode()
    assert await rc.set(taken[0], "written-under-asking")
    assert await rc.get(taken[0]) == b"written-under-asking"
    await _redis_cli_follows(cluster, taken[-1])
    assert await asyncio.to_thread(_blocking_get, host, port, taken[1]) == f"v-{taken[1]}"
    await _dbsize_sum(cluster, len(hot))  # the copies are not counted twice
    await _flushes_wait(cluster)
    statuses = [await cluster.client(i).execute_command("SHARDSTORE.STATUS")
                for i in range(3)]
    asks = sum(int(s[b"asks"]) for s in statuses)
    served = sum(int(s[b"asking_served"]) for s in statuses)
    assert asks >= 4 and served >= 4, statuses
    infos = [await cluster.client(i).info("shardstore") for i in range(3)]
    assert sum(int(i["asks"]) for i in infos) >= asks  # INFO says it too
    gate.set()
    await until_move_done(admin, move_id)
    await _dbsize_sum(cluster, len(hot))
    node = cluster.nodes[0]  # a fence's refusal seen after the move: MOVED to the owner
    await _until(lambda: all(n.config.moves[move_id].state == "done" for n in cluster.nodes),
                 "the end everywhere")
    moved = node.commands.asking.redirect(CommandError(ERR_FENCED.format(move_id)),
                                          [b"GET", taken[0].encode()])
    slot = key_slot(taken[0].encode())
    assert moved.message.startswith(f"MOVED {slot} "), moved.message
    assert moved.message.split()[2] in {f"{h}:{p}" for h, p in
                                         (n.settings.listen for n in cluster.nodes
                                          if 2 in n.machines)}
    assert await rc.get(taken[0]) == b"written-under-asking"
    assert await rc.get(taken[-1]) == b"by-redis-cli"
    for key in hot:
        if key not in (taken[0], taken[-1]):
            assert await rc.get(key) == f"v-{key}".encode(), key
    await rc.aclose()
    await admin.aclose()


async def _dbsize_sum(cluster: LoopCluster, expected: int) -> None:
    """DBSIZE summed over the nodes (each counts the shards it leads), as `redis-cli
    --cluster info` sums it over the masters, is `expected` (asked again while the nodes
    disagree on a shard's leader, which a loaded machine's elections can cause)."""
    totals = []
    for _ in range(50):
        total = 0
        for i in range(len(cluster.nodes)):
            client = cluster.client(i)
            total += await client.dbsize()
            await client.aclose()
        if total == expected:
            return
        totals.append(total)
        await asyncio.sleep(0.1)
    raise AssertionError(totals)


async def _flushes_wait(cluster: LoopCluster) -> None:
    """FLUSHALL on the source's or the target's master is refused while the move copies."""
    for shard in (1, 2):
        replies = []
        for _ in range(50):  # a node that no longer thinks it leads the shard says OK
            node = next(n for n in cluster.nodes if n.view().masters().get(shard) == n.me)
            reader, writer = await asyncio.open_connection(*node.settings.listen)
            writer.write(b"FLUSHALL\r\n")
            replies.append((await reader.readline()).decode())
            writer.close()
            if replies[-1].startswith("-TRYAGAIN move "):
                break
            await asyncio.sleep(0.1)
        assert replies[-1].startswith("-TRYAGAIN move "), (shard, replies)


async def _raw_replies(cluster: LoopCluster, taken: str, waiting: str) -> None:
    """The source's master answers ASK (Redis's format) for a key the copy took and
    TRYAGAIN for one on its way."""
    source = next(n for n in cluster.nodes if n.view().masters().get(1) == n.me)
    reader, writer = await asyncio.open_connection(*source.settings.listen)
    replies = []
    for key in (taken, waiting):
        writer.write(f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode())
        replies.append((await reader.readline()).decode().strip())
    writer.close()
    found = ASK_RE.match(replies[0][1:])
    assert replies[0].startswith("-") and found, replies
    assert int(found.group(1)) == key_slot(taken.encode())
    members = [n.settings.listen for n in cluster.nodes if 2 in n.machines]
    assert (found.group(2), int(found.group(3))) in members  # the target's master
    assert replies[1].startswith("-TRYAGAIN"), replies


async def _asking_lasts_one_command(cluster: LoopCluster, key: str) -> None:
    """On a node of the target shard that does not host the source: ASKING then a keyless
    command leaves the keyed command after it un-asked (MOVED), as Redis clears the flag
    after any command but ASKING; ASKING right before it gets it served."""
    node = next(n for n in cluster.nodes if 2 in n.machines and 1 not in n.machines)
    reader, writer = await asyncio.open_connection(*node.settings.listen)
    get = f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode()
    replies = []
    for request, lines in ((b"ASKING\r\nPING\r\n" + get, 3), (b"ASKING\r\n" + get, 3)):
        writer.write(request)
        replies += [(await reader.readline()).decode().strip() for _ in range(lines)]
    writer.close()
    assert replies[:2] == ["+OK", "+PONG"], replies
    assert replies[2].startswith(f"-MOVED {key_slot(key.encode())} "), replies
    assert replies[3:] == ["+OK", f"${len(key) + 2}", f"v-{key}"], replies


def _blocking_get(host: str, port: int, key: str) -> str:
    """GET through redis-py's blocking RedisCluster (it follows ASK as the asyncio one)."""
    with RedisCluster(host=host, port=port, decode_responses=True) as client:
        return str(client.get(key))


async def _redis_cli_follows(cluster: LoopCluster, key: str) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli")
    host, port = cluster.nodes[0].settings.listen
    for args, expected in ((["SET", key, "by-redis-cli"], b"OK"),
                           (["GET", key], b"by-redis-cli")):
        proc = await asyncio.create_subprocess_exec(
            cli, "-c", "-h", host, "-p", str(port), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert out.strip() == expected, (out, err)
