"""The shardstore command layer beside a real redis-server: the same scripts, the same replies.

Our side is shardstore.commands over a DictKV, with now_ms from the wall clock (the leader's
stamp in the daemon); Redis's side is a redis-server this module starts on a free port
(no persistence). Each script runs on a fresh keyspace (FLUSHALL on both) in RESP2 and in
RESP3; our reply is encoded with core.resp and read back with the same reader as Redis's
bytes, and the two are compared by wire type and value (a status is not a bulk string, an
error not a status, a RESP3 map not an array).

Scripts: hand-written edge cases per command (error texts, option clashes, overflow,
integer syntax, WRONGTYPE, expiry times already past) and hypothesis-generated sequences
over a few keys, fields and values chosen to hit integer edges and type clashes.

Differences, justified, and how the comparison allows for them:
- TTL/PTTL depend on when each side reads its clock: a non-negative TTL may differ by one
  second and a PTTL by TTL_SLACK_MS; generated scripts use expiries far beyond a run.
- SCAN's cursors are positions in key order, not Redis's hash-table cursors, and a page
  holds up to COUNT keys examined: the pages differ, a full iteration's key set must not
  (compared as `SCANALL`, our iteration against Redis's, with the same options).
- DBSIZE: a key SET or EXPIREd to a time already past is gone from our store at once;
  Redis 7.0 keeps SET's until it is touched or its expiry cycle reaps it, and counts it
  meanwhile. When DBSIZE differs, Redis's is read again after a SCAN of every key (which
  deletes the expired keys it meets) and must then be equal.
- COMMAND INFO: Redis's SET key spec carries a `notes` text (a comment for humans);
  core.command_table's KeySpec has no such field, so it is left out before comparing.
- HGETALL of a hash Redis stores as a hash table (over 128 fields or a value over 64
  bytes) comes in Redis's table order, ours in insertion order; scripts stay below those
  sizes, where Redis answers in insertion order as we do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.command_info import info_entry
from core.command_table import Resolved
from core.resp import encode
from shardstore import commands
from shardstore.kvview import DictKV
from tests.redis_proc import needs_redis, redis_server
from tests.transcripts import RawClient, parse_reply

pytestmark = needs_redis

TTL_SLACK_S = 1
TTL_SLACK_MS = 1000
SCAN_ALL = "SCANALL"
Script = list[list[bytes]]


def _args(*words: str | bytes | int) -> list[bytes]:
    return [w if isinstance(w, bytes) else str(w).encode() for w in words]


def typed(value: Any) -> Any:
    """A reply as (wire type, value), recursively, so Status('OK') != Err('OK') != b'OK'."""
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, dict):
        return ("map", [(typed(k), typed(v)) for k, v in value.items()])
    return (type(value).__name__, value)


class Pair:
    """Our command layer and a Redis connection, run in step."""

    def __init__(self, port: int, protocol: int) -> None:
        self.redis = RawClient("127.0.0.1", port)
        self.protocol = protocol
        if protocol == 3:
            self.redis.call("HELLO", "3")
        self.kv = DictKV()
        self.index = 0

    def close(self) -> None:
        self.redis.close()

    def reset(self) -> None:
        self.redis.call("FLUSHALL")
        self.kv = DictKV()
        self.index = 0

    def ours(self, args: list[bytes]) -> Any:
        now_ms = int(time.time() * 1000)
        if commands.is_write(args[0]):
            self.index += 1
            reply = commands.execute_write(self.kv, now_ms, args, self.index)
            assert self.kv.writes == self.index and self.kv.applied_index == self.index
        else:
            reply = commands.execute_read(self.kv, now_ms, args)
        return parse_reply(encode(reply, self.protocol))[0]

    def check(self, args: list[bytes]) -> None:
        """Run one command on both sides and compare the replies."""
        if args[0] == SCAN_ALL.encode():
            assert self.scan_all(self.ours, args[1:]) == self.scan_all(self.redis_call, args[1:])
            return
        theirs = self.redis_call(args)
        mine = self.ours(args)
        name = args[0].upper()
        if name == b"DBSIZE" and mine != theirs:
            self.scan_all(self.redis_call, [])  # Redis deletes the expired keys it walks
            theirs = self.redis_call(args)
        if name in (b"TTL", b"PTTL") and isinstance(theirs, int) and theirs >= 0:
            slack = TTL_SLACK_S if name == b"TTL" else TTL_SLACK_MS
            assert isinstance(mine, int) and abs(mine - theirs) <= slack, (args, mine, theirs)
            return
        assert typed(mine) == typed(theirs), (args, mine, theirs)

    def redis_call(self, args: list[bytes]) -> Any:
        return self.redis.call(*args)

    @staticmethod
    def scan_all(call: Any, options: list[bytes]) -> list[bytes]:
        cursor, seen = b"0", set()
        while True:
            reply = call([b"SCAN", cursor, *options])
            assert isinstance(reply, list), reply
            cursor, keys = reply
            seen.update(keys)
            if cursor == b"0":
                return sorted(seen)

    def run(self, script: Script) -> None:
        self.reset()
        for args in script:
            self.check(args)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp: Path = tmp_path_factory.mktemp("redis")
    with redis_server(tmp) as port:
        yield port


@pytest.fixture(scope="module", params=[2, 3], ids=["resp2", "resp3"])
def pair(request: pytest.FixtureRequest, redis_port: int) -> Iterator[Pair]:
    both = Pair(redis_port, request.param)
    yield both
    both.close()


# -- hand-written edge cases ----------------------------------------------------------------

def _script(*lines: str) -> Script:
    return [_args(*line.split(" ")) for line in lines]


BIG = "9223372036854775807"
SMALL = "-9223372036854775808"
FAR = str(int(time.time()) + 10**6)

EDGE_SCRIPTS = {
    "set_options": _script(
        "SET k v", "SET k v NX", "SET k w XX", "GET k", "SET k v NX XX", "SET k v XX NX",
        "SET k v EX 100 PX 100", "SET k v EX 100 EX 200", "TTL k", "SET k v KEEPTTL", "TTL k",
        "SET k v EX 100 KEEPTTL", "SET k v KEEPTTL EX 100", "SET k v FOO", "SET k v EX",
        "SET k v EX 0", "SET k v EX -5", "SET k v PX 0", "SET k v EX abc", "SET k v EX 1.5",
        f"SET k v EX {BIG}", f"SET k v PX {BIG}", "SET k v EXAT 0", f"SET k v EXAT {FAR}",
        "TTL k", "SET k v PXAT 1", "GET k", "EXISTS k", "SET k v get", "SET k x GET",
        "SET k y NX GET", "GET k", "SET n y XX GET", "EXISTS n", "SET n y NX GET", "GET n",
        "SET k v nx", "SET k v ex 100 ex 100", "SET k v px 100000 keepttl",
    ),
    "set_get_wrongtype": _script(
        "HSET h f v", "SET h v GET", "GET h", "SET h v NX GET", "SET h v", "TYPE h",
    ),
    "get_getdel": _script(
        "GET k", "GETDEL k", "SET k v", "GETDEL k", "GETDEL k", "HSET h f v", "GETDEL h",
        "GET h", "EXISTS h",
    ),
    "incr": _script(
        "INCR k", "INCR k", "DECR k", "DECRBY k 10", "INCRBY k -5", "GET k",
        f"SET k {BIG}", "INCR k", "GET k", f"SET k {SMALL}", "DECR k", "DECRBY k 1",
        f"DECRBY k {SMALL}", "INCRBY k x", "INCRBY k 1.0", "SET k 01", "INCR k", "SET k -0",
        "INCR k", "SET k +1", "INCR k", "SET k 1x", "INCR k", "SET k", "SET k 1", "INCR k",
        "INCRBY k 9223372036854775808", f"INCRBY k {BIG}", "HSET h f 1", "INCR h",
        "INCRBY h x", "DECRBY h x", "SET e", "SET k 0", "DECRBY k -1", "SET k -1", "INCR k",
        f"SET k {BIG}0", "INCR k", "SET k 99999999999999999999", "INCR k",
    ),
    "append_strlen": _script(
        "APPEND k abc", "APPEND k def", "GET k", "STRLEN k", "STRLEN missing", "SET n 12",
        "INCR n", "APPEND n 3", "GET n", "INCR n", "HSET h f v", "APPEND h x", "STRLEN h",
        "SET k v EX 100", "APPEND k w", "TTL k", "INCR k",
    ),
    "mget_mset": _script(
        "MSET a 1 b 2", "MGET a b c", "HSET h f v", "MGET a h", "MSET a", "MSET a 1 b",
        "SET t v EX 100", "MSET t w", "TTL t", "MSET a 1 a 2", "GET a",
    ),
    "del_exists": _script(
        "MSET a 1 b 2", "EXISTS a a b c", "DEL a a c", "EXISTS a", "UNLINK b b", "EXISTS b",
        "DEL", "EXISTS",
    ),
    "expire": _script(
        "EXPIRE k 100", "SET k v", "EXPIRE k 100", "TTL k", "PTTL k", "PERSIST k", "TTL k",
        "PERSIST k", "EXPIRE k 100 NX", "EXPIRE k 200 NX", "TTL k", "EXPIRE k 300 XX",
        "TTL k", "EXPIRE k 100 GT", "EXPIRE k 400 GT", "TTL k", "EXPIRE k 500 LT",
        "EXPIRE k 50 LT", "TTL k", "EXPIRE k 10 NX XX", "EXPIRE k 10 GT LT", "EXPIRE k 10 NX GT",
        "EXPIRE k 10 FOO", "EXPIRE k abc", "EXPIRE k 10 xx", "PERSIST k", "EXPIRE k 10 XX",
        "EXPIRE k 10 GT", "EXPIRE k 10 LT", "TTL k", "PERSIST k", "EXPIRE k -1", "EXISTS k",
        "SET k v", "PEXPIRE k 0", "GET k", "SET k v", f"EXPIRE k {BIG}", f"EXPIRE k {SMALL}",
        f"PEXPIRE k {BIG}", "PEXPIRE k 100000", "PTTL k", "TTL missing", "PTTL missing",
        "PERSIST missing", "EXPIRE k", "HSET h f v", "EXPIRE h 100", "TTL h", "HSET h g w",
        "TTL h", "HDEL h f g", "TTL h", "EXPIRE k 10 gt lt",
    ),
    "type_dbsize_flushall": _script(
        "TYPE k", "SET k v", "TYPE k", "HSET h f v", "TYPE h", "DBSIZE", "FLUSHALL",
        "DBSIZE", "SET k v", "FLUSHALL ASYNC", "FLUSHALL sync", "FLUSHALL FOO",
        "FLUSHALL SYNC ASYNC", "DBSIZE",
    ),
    "hashes": _script(
        "HSET h f v", "HSET h f w g x", "HGET h f", "HGET h nope", "HGET nope f",
        "HMGET h f g z", "HMGET nope a b", "HGETALL h", "HGETALL nope", "HLEN h",
        "HLEN nope", "HSET h f", "HSET h", "HDEL h z", "HDEL h f z f", "HGETALL h", "HDEL h g",
        "EXISTS h", "HINCRBY h c 5", "HINCRBY h c -7", "HINCRBY h c x", "HSET h s abc",
        "HINCRBY h s 1", "HSET h b 01", "HINCRBY h b 1", f"HSET h m {BIG}", "HINCRBY h m 1",
        "HGETALL h", "SET s v", "HSET s f v", "HGET s f", "HMGET s f", "HDEL s f",
        "HGETALL s", "HINCRBY s f 1", "HLEN s", "HSET h c 9 a 1 c 8", "HGETALL h",
    ),
    "scan": _script(
        "MSET a 1 b 2 c 3 ab 4", "HSET h f v", "SCANALL", "SCANALL MATCH a*",
        "SCANALL COUNT 1", "SCANALL TYPE hash", "SCANALL TYPE string MATCH ?",
        "SCANALL TYPE nosuch", "SCANALL MATCH [a-b] COUNT 2", "SCAN 0 COUNT 0",
        "SCAN 0 COUNT -1", "SCAN 0 COUNT x", "SCAN 0 MATCH", "SCAN 0 FOO bar", "SCAN x",
        "SCAN 1.5", "SCANALL MATCH \\a", "SCANALL MATCH [^a]", "SCANALL MATCH *b",
        "SCANALL TYPE HASH", "SCANALL TYPE hash TYPE string", "SCANALL MATCH a MATCH h*",
    ),
    "empty_key": [
        [b"SET", b"", b"v"], [b"GET", b""], [b"SET", b"a", b""], [b"GET", b"a"],
        [b"STRLEN", b"a"], [b"SCANALL", b"COUNT", b"1"], [b"SCANALL", b"MATCH", b""],
        [b"HSET", b"h", b"", b""], [b"HGETALL", b"h"], [b"DEL", b""], [b"EXISTS", b""],
        [b"SET", b"", b"w"], [b"FLUSHALL"], [b"DBSIZE"],
    ],
    "arity": _script(
        "GET", "GET a b", "SET a", "INCR", "INCRBY a", "HGET h", "HLEN", "TTL", "DBSIZE x",
        "TYPE", "APPEND a", "GETDEL", "HINCRBY h f", "HMGET h", "HDEL h",
    ),
}


@pytest.mark.parametrize("name", sorted(EDGE_SCRIPTS))
def test_edge_scripts(pair: Pair, name: str) -> None:
    pair.run(EDGE_SCRIPTS[name])


# -- generated scripts ------------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"b", b"{t}c", b"h"])
FIELDS = st.sampled_from([b"f", b"g", b"n"])
VALUES = st.sampled_from([
    b"", b"0", b"1", b"-1", b"10", b"abc", b"01", b" 1", b"1.5", b"-0",
    BIG.encode(), SMALL.encode(), b"9223372036854775806",
])
DELTAS = st.sampled_from([b"0", b"1", b"-1", b"5", b"x", BIG.encode(), SMALL.encode()])
SECONDS = st.sampled_from([b"-1", b"0", b"1000", b"2000", b"abc"])
OPTIONS = st.lists(st.sampled_from([b"NX", b"XX", b"GET", b"KEEPTTL", b"EX", b"1000",
                                    b"PX", b"2000000", b"PXAT", b"1"]), max_size=4)


def _command() -> st.SearchStrategy[list[bytes]]:
    def of(*parts: Any) -> st.SearchStrategy[list[bytes]]:
        return st.tuples(*[st.just(p) if isinstance(p, bytes) else p for p in parts]).map(list)

    return st.one_of(
        st.tuples(st.just(b"SET"), KEYS, VALUES, OPTIONS).map(lambda t: [*t[:3], *t[3]]),
        of(b"GET", KEYS), of(b"GETDEL", KEYS), of(b"INCR", KEYS), of(b"DECR", KEYS),
        of(b"INCRBY", KEYS, DELTAS), of(b"DECRBY", KEYS, DELTAS), of(b"APPEND", KEYS, VALUES),
        of(b"STRLEN", KEYS), of(b"MGET", KEYS, KEYS), of(b"MSET", KEYS, VALUES, KEYS, VALUES),
        of(b"DEL", KEYS, KEYS), of(b"UNLINK", KEYS), of(b"EXISTS", KEYS, KEYS),
        st.tuples(st.sampled_from([b"EXPIRE", b"PEXPIRE"]), KEYS, SECONDS,
                  st.lists(st.sampled_from([b"NX", b"XX", b"GT", b"LT"]), max_size=2))
        .map(lambda t: [*t[:3], *t[3]]),
        of(b"TTL", KEYS), of(b"PERSIST", KEYS), of(b"TYPE", KEYS), of(b"DBSIZE"),
        of(b"HSET", KEYS, FIELDS, VALUES), of(b"HSET", KEYS, FIELDS, VALUES, FIELDS, VALUES),
        of(b"HGET", KEYS, FIELDS), of(b"HMGET", KEYS, FIELDS, FIELDS), of(b"HDEL", KEYS, FIELDS),
        of(b"HGETALL", KEYS), of(b"HINCRBY", KEYS, FIELDS, DELTAS), of(b"HLEN", KEYS),
        of(b"SCANALL"), of(b"SCANALL", b"COUNT", st.sampled_from([b"1", b"2"])),
    )


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(_command(), min_size=1, max_size=15))
def test_generated_scripts(pair: Pair, script: Script) -> None:
    pair.run(script)


# -- glob patterns, COMMAND INFO, binary data -----------------------------------------------

GLOB_KEYS = [b"a", b"b", b"ab", b"ba", b"a*", b"a?", b"[a]", b"^", b"-", b"\\", b"a\\b",
             b"]", b"abc", b"", b"\x00a", b"\xff", b"\x7f", b"\x80"]
GLOB_ALPHABET = [b"a", b"b", b"*", b"?", b"[", b"]", b"^", b"-", b"\\", b"!", b"\xff", b"\x80"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(st.sampled_from(GLOB_ALPHABET), min_size=1, max_size=6).map(b"".join))
def test_scan_match_patterns_as_redis(pair: Pair, pattern: bytes) -> None:
    """Our glob (shardstore.glob) selects the same keys as Redis's for awkward patterns."""
    keys = [key for key in GLOB_KEYS if key]
    pair.run([[b"MSET", *[part for key in keys for part in (key, b"v")]],
              [b"SCANALL", b"MATCH", pattern]])


def _without_notes(entry: Any) -> Any:
    specs = entry[8]
    for spec in specs:
        if isinstance(spec, dict):
            spec.pop(b"notes", None)
        elif spec[:1] == [b"notes"]:
            del spec[:2]
    return entry


def test_command_info_equals_redis(pair: Pair) -> None:
    for row in commands.COMMANDS:
        theirs = _without_notes(pair.redis.call("COMMAND", "INFO", row.name)[0])
        ours = parse_reply(encode(info_entry(Resolved(row, row.name)), pair.protocol))[0]
        assert typed(ours) == typed(theirs), row.name


def test_binary_keys_and_values(pair: Pair) -> None:
    odd = [b"\x00", b"\r\n", b"\xff\xfe", b" ", b"\x00k\x00", b"*3\r\n"]
    script: Script = []
    for i, key in enumerate(odd):
        script += [[b"SET", key, odd[-1 - i]], [b"GET", key], [b"APPEND", key, key],
                   [b"STRLEN", key], [b"HSET", key + b"h", key, key], [b"HGETALL", key + b"h"]]
    script += [[b"MGET", *odd], [b"SCANALL"], [b"DBSIZE"], [b"DEL", *odd]]
    pair.run(script)


def test_large_values(pair: Pair) -> None:
    big = b"x" * 300_000
    pair.run([[b"SET", b"k", big], [b"APPEND", b"k", big], [b"STRLEN", b"k"],
              [b"GET", b"k"], [b"HSET", b"h", b"f", b"y" * 50], [b"HGETALL", b"h"]])
