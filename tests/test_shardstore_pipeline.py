"""Pipelined and concurrent writes share Raft entries (shardstore/writes.py, handlers.py).

A connection's run of consecutive writes to one shard is one request to the leader and one
entry (machine.KIND_BATCH); writes of different connections that arrive in one loop pass
share an entry too. The replies must stay what redis-server answers, in order, with a
read after writes in the pipeline seeing them; an unknown outcome of the entry is every
write's. One single-node daemon (two shards) runs in the test's loop; redis-server is a
real one on a free port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from core.raft.driver_types import ProposalUnknown
from shardstore import commands
from shardstore.kvview import DictKV
from shardstore.machine import ShardMachine, encode_batch, encode_command
from shardstore.server import ShardNode
from shardstore.writes import _commands_of
from tests.redis_proc import REDIS_SERVER, redis_server
from tests.shardstore_procs import SINGLE_HOST as HOST
from tests.shardstore_procs import single_node

SHARDS = 2

SCRIPT = [
    "SET a 1", "INCR a", "INCR a", "GET a", "SET b x", "APPEND b y", "INCR b", "GET b",
    "DEL a", "INCR a", "INCRBY a 5", "SET {t}1 v", "SET {t}2 w", "MSET {t}1 p {t}2 q",
    "GET {t}1", "DECR c", "DECRBY c 3", "HSET h f 1", "HINCRBY h f 2", "HGET h f",
    "SET a 9 NX", "SET a 10 XX GET", "GETDEL a", "EXISTS {t}1 {t}2 {t}3", "STRLEN b",
]


def pipelined(port: int, script: list[str]) -> list[Any]:
    """The replies of `script` sent in one pipeline (one write) on one connection, errors
    as their text."""
    client = redis.Redis(host=HOST, port=port)
    try:
        pipe = client.pipeline(transaction=False)
        for line in script:
            pipe.execute_command(*line.split(" "))
        replies = pipe.execute(raise_on_error=False)
    finally:
        client.close()
    return [f"error: {r}" if isinstance(r, Exception) else r for r in replies]


def record_runs(node: ShardNode) -> list[int]:
    """The length of every run that goes to write_many from now on."""
    real = node.writes.write_many
    runs: list[int] = []

    async def write_many(group_id: int, run: list[Any]) -> list[Any]:
        runs.append(len(run))
        return await real(group_id, run)

    node.writes.write_many = write_many  # type: ignore[method-assign]
    return runs


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_pipeline_of_writes_and_reads_answers_as_redis_server(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis_port:
        expected = pipelined(redis_port, SCRIPT)

    async def main() -> tuple[list[Any], list[int]]:
        node = await single_node(tmp_path, SHARDS)
        try:
            runs = record_runs(node)
            port = node.settings.listen[1]
            return await asyncio.to_thread(pipelined, port, SCRIPT), runs
        finally:
            await node.stop()

    got, runs = asyncio.run(main())
    assert got == expected
    assert runs and max(runs) >= 3, runs  # SET a, INCR a, INCR a went as one run


def test_an_unknown_outcome_is_every_write_of_the_run(tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        node = await single_node(tmp_path, SHARDS)
        try:
            real = node.writes.write_many
            lost = [False]

            async def write_many(group_id: int, run: list[Any]) -> list[Any]:
                results = await real(group_id, run)  # applied, then the outcome is lost
                if len(run) > 1 and not lost[0]:
                    lost[0] = True
                    raise ProposalUnknown("the leader was lost after sending (test)")
                return results

            node.writes.write_many = write_many  # type: ignore[method-assign]
            port = node.settings.listen[1]
            script = ["SET k 1", "INCR k", "INCR k", "GET k"]
            first = await asyncio.to_thread(pipelined, port, script)
            again = await asyncio.to_thread(pipelined, port, ["INCR k", "INCR k", "GET k"])
            return first, again
        finally:
            await node.stop()

    first, again = asyncio.run(main())
    assert [str(r).startswith("error: UNKNOWN the write may or may not have been applied")
            for r in first] == [True, True, True, False], first
    assert first[3] == b"3"  # they were applied: the read after them sees it
    assert again == [4, 5, b"5"]


def test_concurrent_writes_of_many_callers_share_entries(tmp_path: Path) -> None:
    callers = 40

    async def main() -> tuple[list[Any], int]:
        node = await single_node(tmp_path, SHARDS)
        try:
            shard = node.led_shards()[0]
            group = node.host.group(shard.group)
            assert group is not None
            before = group.stats["proposals"]
            key = next(k for k in (f"n{i}".encode() for i in range(100))
                       if node.config.shard_of_slot(_slot(k)) == shard)
            results = await asyncio.gather(*(node.writes.write(shard.group, [b"INCR", key])
                                             for _ in range(callers)))
            return list(results), group.stats["proposals"] - before
        finally:
            await node.stop()

    results, proposals = asyncio.run(main())
    assert sorted(results) == list(range(1, callers + 1))
    assert proposals < callers, proposals


def _slot(key: bytes) -> int:
    from native.crc16 import key_slot
    return key_slot(key)


# -- the machine: a batch entry applies as its commands one by one -------------------------

KEYS = st.sampled_from([b"a", b"b", b"c"])
WRITE = st.one_of(
    st.tuples(st.just(b"SET"), KEYS, st.sampled_from([b"1", b"x", b"-7"])),
    st.tuples(st.just(b"INCR"), KEYS),
    st.tuples(st.just(b"APPEND"), KEYS, st.sampled_from([b"1", b"z"])),
    st.tuples(st.just(b"DEL"), KEYS),
    st.tuples(st.just(b"GETDEL"), KEYS),
    st.tuples(st.just(b"NOSUCH"), KEYS),
).map(list)


def _machine() -> ShardMachine:
    return ShardMachine(DictKV(), commands, lambda pieces, index: None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(WRITE, st.booleans()), min_size=1, max_size=12))
def test_a_batch_entry_applies_as_its_commands_one_by_one(run: list[Any]) -> None:
    one_by_one, batched = _machine(), _machine()
    entries = [(i + 1, encode_command(5, args, ranged)) for i, (args, ranged) in enumerate(run)]
    singles = one_by_one.apply(entries)
    (results,) = batched.apply([(1, encode_batch(5, run))])
    assert results == singles
    assert batched.engine.data == one_by_one.engine.data
    assert batched.engine.applied_index == 1


ANY = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                   | st.binary(max_size=4) | st.text(max_size=4),
                   lambda inner: st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(["batch", "ranged"]), inner, max_size=2),
                   max_leaves=8)
REQUEST = st.fixed_dictionaries({"batch": st.lists(st.lists(st.binary(max_size=3) | ANY,
                                                            max_size=3), max_size=3),
                                 "ranged": st.lists(st.integers(-2, 4) | ANY, max_size=3)})


@settings(max_examples=100, deadline=None)
@given(ANY | REQUEST)
def test_a_forwarded_write_request_is_read_or_refused(payload: Any) -> None:
    payload = msgpack.unpackb(msgpack.packb(payload))  # what crosses the node link
    commands_ = _commands_of(payload)
    if commands_ is None:
        return
    assert len(commands_) == len(payload["batch"])
    for args, ranged in commands_:
        assert args and all(isinstance(a, bytes) for a in args)
        assert isinstance(ranged, bool)


# -- the read path without a second lookup (commands.read_runner) -------------------------

READ = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get", b"STRLEN", b"TTL", b"PTTL", b"TYPE",
                               b"EXISTS", b"HGETALL", b"HLEN"]), KEYS),
    st.tuples(st.sampled_from([b"HGET", b"HMGET"]), KEYS, st.sampled_from([b"f", b"g"])),
    st.tuples(st.just(b"MGET"), KEYS, KEYS),
).map(list)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(WRITE, st.just(False)), max_size=6), READ)
def test_a_read_runner_answers_as_execute_read(run: list[Any], args: list[bytes]) -> None:
    machine = _machine()
    machine.apply([(i + 1, encode_command(5, a, r)) for i, (a, r) in enumerate(run)])
    machine.apply([(len(run) + 1, encode_command(5, [b"HSET", b"c", b"f", b"1"]))])
    runner = commands.read_runner(args[0].decode())
    assert runner is not None
    expected = commands.execute_read(machine.engine, 6, args)
    got = runner(machine.engine, 6, args)
    assert type(got) is type(expected)
    assert str(got) == str(expected) if isinstance(got, Exception) else got == expected


def test_a_read_runner_is_for_reads_only() -> None:
    assert commands.read_runner("set") is None
    assert commands.read_runner("scan") is None
    assert commands.read_runner("nosuch") is None


def test_a_run_of_reads_behind_a_barrier_takes_one_barrier(tmp_path: Path) -> None:
    """Reads of a shard whose reads need a barrier (several replicas; here the single
    node is told so) share one: the replies stay those of one by one, in order."""
    script = ["SET {r}1 a", "SET {r}2 b", "GET {r}1", "GET {r}2", "STRLEN {r}1", "GET {r}0",
              "INCR {r}1", "GET {r}1", "EXISTS {r}1", "TTL {r}2"]

    async def main() -> tuple[list[Any], int]:
        node = await single_node(tmp_path, SHARDS)
        try:
            node.service.reads_ready = lambda group=None: False  # type: ignore[method-assign]
            real = node.service.barrier
            barriers = [0]

            async def barrier(group: int | None = None) -> Any:
                barriers[0] += 1
                return await real(group)

            node.service.barrier = barrier  # type: ignore[method-assign]
            got = await asyncio.to_thread(pipelined, node.settings.listen[1], script)
            return got, barriers[0]
        finally:
            await node.stop()

    got, barriers = asyncio.run(main())
    assert got[:6] == [True, True, b"a", b"b", 1, None]
    assert str(got[6]).startswith("error: value is not an integer"), got
    assert got[7:] == [b"a", 1, -1]
    assert barriers == 2, barriers  # one per run of reads (one slot: one shard)


READY_SCRIPT = [
    "SET a 1", "SET b xy", "HSET h f 1", "GET a", "GET b", "GET missing", "HGET h f",
    "GET h", "STRLEN b", "EXISTS {t}1 {t}2", "MGET {t}1 {t}2", "TTL a", "TYPE h",
    "INCR a", "GET a", "get b", "PING", "GET a", "GET b",
]


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_run_of_reads_that_need_no_barrier_is_answered_at_once(tmp_path: Path) -> None:
    """One replica, this node the leader: a run of reads over both shards is answered in
    one pass from the local replicas (no barrier, no task), with redis-server's replies
    in order, errors included; a read after a write in the pipeline sees it."""
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis_port:
        expected = pipelined(redis_port, READY_SCRIPT)

    async def main() -> tuple[list[Any], list[int], int]:
        node = await single_node(tmp_path, SHARDS)
        try:
            pipes = node.commands.pipelines
            real_ready, real_barrier = pipes._ready_reads, node.service.barrier
            runs: list[int] = []
            barriers = [0]

            def ready_reads(*args: Any) -> Any:
                taken = real_ready(*args)
                if taken is not None:
                    assert type(taken[1]) is list  # answered at once
                    runs.append(len(taken[0]))
                return taken

            async def barrier(group: int | None = None) -> Any:
                barriers[0] += 1
                return await real_barrier(group)

            pipes._ready_reads = ready_reads  # type: ignore[method-assign]
            node.service.barrier = barrier  # type: ignore[method-assign]
            got = await asyncio.to_thread(pipelined, node.settings.listen[1], READY_SCRIPT)
            return got, runs, barriers[0]
        finally:
            await node.stop()

    got, runs, barriers = asyncio.run(main())
    assert got == expected
    assert runs == [10, 2, 2], runs  # GET a .. TYPE h; GET a, get b; GET a, GET b
    assert barriers == 0
