"""The hot path's shortcuts answer and write exactly as the general path does: in
shardstore/commands.py a plain `SET key value` applied without reading the old record, and
GET's read runner reading the record without a View (hypothesis over the key's prior
state: missing, a string, a hash, with an expiry still ahead or already passed); in
shardstore/handlers.py a one-key read that needs no barrier answered at its handler
(against a real redis-server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from shardstore import cmd_strings, commands
from shardstore.kvview import DictKV, View
from shardstore.values import encode_hash, encode_string
from tests.redis_proc import REDIS_SERVER, redis_server
from tests.shardstore_procs import SINGLE_HOST as HOST
from tests.shardstore_procs import single_node

NOW_MS = 1_000_000
KEY = st.sampled_from([b"k", b"", b"\x00\xff"])
EXPIRY = st.sampled_from([0, NOW_MS - 1, NOW_MS, NOW_MS + 1])
PRIOR = st.one_of(
    st.none(),
    st.tuples(st.binary(max_size=6).map(encode_string), EXPIRY),
    st.tuples(st.dictionaries(st.binary(max_size=2), st.binary(max_size=2), max_size=2)
              .map(encode_hash), EXPIRY),
)


def _store(key: bytes, prior: Any) -> DictKV:
    kv = DictKV()
    if prior is not None:
        kv.write([(key, prior[0], prior[1])], applied_index=1)
    return kv


def _shown(reply: Any) -> Any:
    return (type(reply), str(reply)) if isinstance(reply, Exception) else reply


@settings(max_examples=80, deadline=None)
@given(KEY, PRIOR, st.binary(max_size=8), st.sampled_from([b"SET", b"set", b"SeT"]))
def test_a_plain_set_writes_and_answers_as_cmd_set(key: bytes, prior: Any, value: bytes,
                                                   name: bytes) -> None:
    fast, general = _store(key, prior), _store(key, prior)
    got = commands.execute_write(fast, NOW_MS, [name, key, value], 7)
    view = View(general, NOW_MS, writable=True)
    expected = cmd_strings.cmd_set(view, [name, key, value])
    general.write(view.batch(), 7)
    assert got == expected
    assert fast.data == general.data and fast.sorted_keys == general.sorted_keys
    assert fast.applied_index == general.applied_index == 7
    assert fast.writes == general.writes  # exactly one write call, as every command


@settings(max_examples=80, deadline=None)
@given(KEY, PRIOR)
def test_get_s_runner_answers_as_execute_read(key: bytes, prior: Any) -> None:
    kv = _store(key, prior)
    runner = commands.read_runner("get")
    assert runner is not None
    got = runner(kv, NOW_MS, [b"GET", key])
    expected = commands.execute_read(kv, NOW_MS, [b"GET", key])
    assert _shown(got) == _shown(expected)


SINGLE_READS = ["SET a 1", "HSET h f v", "GET a", "GET missing", "GET h", "STRLEN a",
                "HGET h f", "HGET h g", "HGET a f", "TYPE h", "READONLY", "GET a",
                "READWRITE", "ASKING", "GET a", "GET a"]
CLUSTER_ONLY = ("READONLY", "READWRITE", "ASKING")  # redis-server outside a cluster refuses


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_one_key_reads_answered_at_the_handler_answer_as_redis_server(tmp_path: Path) -> None:
    """One replica, this node the leader: a one-key read with a read runner is answered
    by handlers' ready-read path (not the general one), with redis-server's replies;
    the read after ASKING goes the general way and reads the same."""
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis_port:
        expected = one_by_one(redis_port, [c for c in SINGLE_READS if c not in CLUSTER_ONLY])

    async def main() -> tuple[list[Any], int]:
        node = await single_node(tmp_path, 2)
        try:
            general = [0]
            real = node.commands._read_or_wait

            def read_or_wait(*args: Any) -> Any:
                general[0] += 1
                return real(*args)

            node.commands._read_or_wait = read_or_wait  # type: ignore[method-assign]
            got = await asyncio.to_thread(one_by_one, node.settings.listen[1], SINGLE_READS)
            return got, general[0]
        finally:
            await node.stop()

    got, general = asyncio.run(main())
    assert [r for r, c in zip(got, SINGLE_READS, strict=True) if c in CLUSTER_ONLY] == [
        True] * len(CLUSTER_ONLY)  # redis-py reads +OK as True
    assert [r for r, c in zip(got, SINGLE_READS, strict=True) if c not in CLUSTER_ONLY] == (
        expected)
    assert general == 1  # the GET under ASKING only


def one_by_one(port: int, script: list[str]) -> list[Any]:
    """The replies of `script`, each sent and answered before the next, errors as text."""
    client = redis.Redis(host=HOST, port=port)
    replies: list[Any] = []
    try:
        for line in script:
            try:
                replies.append(client.execute_command(*line.split(" ")))
            except redis.ResponseError as exc:
                replies.append(f"error: {exc}")
    finally:
        client.close()
    return replies
