"""The shardstore command layer alone, over DictKV: the contract the daemon relies on.

What the differential test against redis-server cannot show: every write calls kv.write
exactly once with its applied index (errors and no-ops included) and reads never write;
expiry judged at the given now_ms, with time moved by hand (lazy invisibility, deletion on
write access, the sweep and its guarded delete); replicas fed the same entries end equal;
SCAN cursors as positions (short keys inline, long keys by table or long integer); the
integer reader against its definition; the command rows' routing facts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.command_table import CommandTable, request_slot
from core.resp import OK, CommandError, Simple
from native.crc16 import key_slot
from shardstore import commands
from shardstore.commands import (
    SPECS,
    execute_read,
    execute_write,
    expire_sweep,
    is_write,
    sweep_request,
)
from shardstore.glob import glob_match
from shardstore.kvview import DictKV
from shardstore.scan_cursor import (
    TABLE_BASE,
    ScanCursors,
    decode_cursor,
    encode_cursor,
    parse_cursor,
)
from shardstore.values import INT64_MAX, INT64_MIN, parse_int

T0 = 1_700_000_000_000


def _args(*words: str | bytes | int) -> list[bytes]:
    return [w if isinstance(w, bytes) else str(w).encode() for w in words]


class Store:
    """A DictKV driven as the daemon drives it: writes with increasing indexes."""

    def __init__(self) -> None:
        self.kv = DictKV()
        self.index = 0
        self.now_ms = T0

    def __call__(self, *words: str | bytes | int) -> Any:
        args = _args(*words)
        if is_write(args[0]):
            self.index += 1
            return execute_write(self.kv, self.now_ms, args, self.index)
        return execute_read(self.kv, self.now_ms, args)


@pytest.fixture
def db() -> Store:
    return Store()


# -- the write contract ---------------------------------------------------------------------

def test_every_write_writes_once_with_its_index(db: Store) -> None:
    for words in (["SET", "k", "v"], ["SET", "k", "v", "NX"], ["INCR", "k"], ["DEL", "nope"],
                  ["HSET", "k", "f", "v"], ["EXPIRE", "nope", "10"], ["FLUSHALL"],
                  ["SET", "k", "v", "BAD"]):
        before = db.kv.writes
        db(*words)
        assert db.kv.writes == before + 1
        assert db.kv.applied_index == db.index


def test_a_refused_write_changes_nothing(db: Store) -> None:
    db("SET", "k", "abc")
    reply = db("INCR", "k")
    assert isinstance(reply, CommandError)
    assert db.kv.data[b"k"][0] == b"sabc"


def test_reads_never_write(db: Store) -> None:
    db("SET", "k", "v", "PX", 10)
    db.now_ms += 20
    writes = db.kv.writes
    for words in (["GET", "k"], ["TTL", "k"], ["SCAN", "0"], ["EXISTS", "k"], ["DBSIZE"]):
        db(*words)
    assert db.kv.writes == writes
    assert b"k" in db.kv.data  # expired, invisible, not yet deleted


def test_reads_and_writes_are_kept_apart() -> None:
    kv = DictKV()
    assert isinstance(execute_read(kv, T0, _args("SET", "k", "v")), CommandError)
    assert isinstance(execute_write(kv, T0, _args("GET", "k"), 1), CommandError)
    assert kv.applied_index == 1
    assert is_write(b"set") and is_write(b"HINCRBY") and not is_write(b"get")
    assert not is_write(b"nosuch")


def test_unknown_and_arity_errors(db: Store) -> None:
    assert str(db("NOSUCH", "a", "b")) == (
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' ")
    assert str(db("GET")) == "ERR wrong number of arguments for 'get' command"
    assert str(db("HSET", "h", "f")) == "ERR wrong number of arguments for 'hset' command"


# -- expiry, with time moved by hand -----------------------------------------------------

def test_expired_keys_are_invisible(db: Store) -> None:
    db("SET", "k", "v", "PX", 100)
    db("HSET", "h", "f", "v")
    db("PEXPIRE", "h", 100)
    db.now_ms += 99
    assert db("GET", "k") == b"v" and db("PTTL", "k") == 1 and db("TTL", "k") == 0
    db.now_ms += 1
    assert db("GET", "k") is None and db("TTL", "k") == -2 and db("EXISTS", "k", "h") == 0
    assert db("HGETALL", "h") == {} and db("TYPE", "h") == Simple("none")
    assert db("SCAN", "0") == [b"0", []]
    assert db("DBSIZE") == 2  # as Redis: not yet deleted


def test_a_write_deletes_the_expired_key_it_touches(db: Store) -> None:
    db("SET", "k", "v", "EX", 1)
    db.now_ms += 1000
    assert db("INCR", "k") == 1
    assert db("TTL", "k") == -1
    db("SET", "j", "v", "EX", 1)
    db.now_ms += 1000
    assert db("DEL", "j") == 0
    assert b"j" not in db.kv.data


def test_set_with_a_past_time_deletes(db: Store) -> None:
    db("SET", "k", "v")
    assert db("SET", "k", "w", "PXAT", T0) == OK
    assert b"k" not in db.kv.data
    assert db("SET", "k", "w", "EXAT", T0 // 1000 + 1) == OK and db("TTL", "k") == 1


def test_keepttl_and_incr_keep_the_expiry(db: Store) -> None:
    db("SET", "k", "1", "EX", 100)
    db("INCR", "k")
    db("APPEND", "k", "0")
    db("SET", "k", "5", "KEEPTTL")
    assert db("PTTL", "k") == 100_000
    db("SET", "k", "5")
    assert db("TTL", "k") == -1


def test_sweep_finds_expired_keys_and_deletes_only_those_still_expired(db: Store) -> None:
    for i in range(10):
        db("SET", f"k{i}", "v", "PX", 10 if i % 2 else 10_000)
    db.now_ms += 10
    found = expire_sweep(db.kv, db.now_ms, limit=100)
    assert found == [b"k1", b"k3", b"k5", b"k7", b"k9"]
    assert expire_sweep(db.kv, db.now_ms, limit=2) == [b"k1", b"k3"]
    assert expire_sweep(db.kv, db.now_ms, limit=100, after=b"k5") == [b"k7", b"k9"]
    assert expire_sweep(db.kv, db.now_ms, limit=100, budget=4) == [b"k1", b"k3"]
    db("SET", "k1", "again")  # set again before the sweep is applied: it must survive
    db.index += 1
    removed = execute_write(db.kv, db.now_ms, sweep_request(found), db.index)
    assert removed == 4 and db.kv.applied_index == db.index
    assert db("GET", "k1") == b"again"
    assert db("DBSIZE") == 6


# -- replicas -----------------------------------------------------------------------------

WORDS = st.sampled_from([
    ["SET", "a", "1", "PX", "50"], ["SET", "b", "x"], ["INCR", "a"], ["APPEND", "b", "y"],
    ["HSET", "h", "f", "1"], ["HINCRBY", "h", "f", "2"], ["HDEL", "h", "f"],
    ["EXPIRE", "b", "1"], ["PERSIST", "b"], ["DEL", "a"], ["GETDEL", "b"],
    ["MSET", "a", "2", "c", "3"],
    ["SET", "c", "v", "GET", "KEEPTTL"], ["FLUSHALL"],
])


@given(st.lists(st.tuples(WORDS, st.integers(0, 40)), max_size=30))
def test_replicas_given_the_same_entries_end_equal(entries: list[tuple[list[str], int]]) -> None:
    replicas = [DictKV(), DictKV()]
    now_ms = T0
    for index, (words, step) in enumerate(entries, 1):
        now_ms += step
        args = _args(*words)
        if index % 7 == 0:
            args = sweep_request(expire_sweep(replicas[0], now_ms, 10))
        replies = [execute_write(kv, now_ms, args, index) for kv in replicas]
        assert replies[0] == replies[1] or all(isinstance(r, CommandError) for r in replies)
    assert replicas[0].data == replicas[1].data
    assert replicas[0].applied_index == replicas[1].applied_index == len(entries)


# -- SCAN cursors ---------------------------------------------------------------------------

@given(st.binary(max_size=40))
def test_cursor_round_trip(key: bytes) -> None:
    cursors = ScanCursors()
    for table in (None, cursors):
        text = encode_cursor(key, table)
        assert text.isdigit() and text != b"0" or key == b""
        assert decode_cursor(text, table) == key
    assert decode_cursor(b"0") is None and encode_cursor(b"") == b"1"
    if len(key) <= 7:
        assert int(encode_cursor(key)) < 1 << 63


def test_cursor_table_forgets_the_oldest(db: Store) -> None:
    cursors = ScanCursors(size=2)
    first = encode_cursor(b"x" * 20, cursors)
    encode_cursor(b"y" * 20, cursors)
    encode_cursor(b"z" * 20, cursors)
    assert int(first) >= TABLE_BASE
    assert decode_cursor(first, cursors) is None


def test_cursor_syntax() -> None:
    assert parse_cursor(b"+5") == 5
    assert parse_cursor(b"-1") == (1 << 64) - 1
    for bad in (b"", b"x", b"1.5", b" 1", b"-"):
        with pytest.raises(CommandError):
            parse_cursor(bad)


def _scan_all(db: Store, *options: str, during: Any = None) -> list[bytes]:
    cursors = ScanCursors()
    cursor, seen = b"0", []
    while True:
        reply = execute_read(db.kv, db.now_ms, _args("SCAN", cursor, *options), cursors=cursors)
        cursor, keys = reply
        seen.extend(keys)
        if during is not None:
            during()
        if cursor == b"0":
            return seen


def test_scan_returns_every_key_once_even_while_keys_are_added(db: Store) -> None:
    keys = [b"key:%04d" % i for i in range(200)] + [b"long-key-" * 5 + b"%d" % i
                                                    for i in range(50)]
    for key in keys:
        db("SET", key, "v")
    added = iter(range(1000))

    def add() -> None:
        db("SET", f"new:{next(added)}", "v")

    seen = _scan_all(db, "COUNT", "7", during=add)
    assert len(seen) == len(set(seen))
    assert set(keys) <= set(seen)


def test_the_empty_key_is_walked_like_any_other(db: Store) -> None:
    db("SET", "", "v", "PX", 5)
    db("SET", "a", "v")
    assert _scan_all(db, "COUNT", "1") == [b"", b"a"]
    db.now_ms += 5
    assert expire_sweep(db.kv, db.now_ms, 10) == [b""]
    assert _scan_all(db, "COUNT", "1") == [b"a"]
    db("SET", "", "v")
    db("FLUSHALL")
    assert db.kv.count() == 0


def test_scan_match_and_type(db: Store) -> None:
    db("MSET", "a1", "x", "a2", "x", "b1", "x")
    db("HSET", "a3", "f", "v")
    assert sorted(_scan_all(db, "MATCH", "a*", "COUNT", "1")) == [b"a1", b"a2", b"a3"]
    assert _scan_all(db, "TYPE", "HASH") == [b"a3"]
    # Only ^ negates a class in Redis's globs: [!b] is "! or b".
    assert _scan_all(db, "MATCH", "[!b]?") == [b"b1"]


# -- integers -------------------------------------------------------------------------------

@given(st.integers(INT64_MIN, INT64_MAX))
def test_parse_int_reads_every_int64(value: int) -> None:
    assert parse_int(b"%d" % value) == value


@given(st.one_of(st.binary(max_size=22), st.integers().map(lambda v: b"%d" % v)))
def test_parse_int_accepts_only_canonical_int64(data: bytes) -> None:
    value = parse_int(data)
    try:
        canonical = b"%d" % int(data) == data and INT64_MIN <= int(data) <= INT64_MAX
    except ValueError:
        canonical = False
    assert (value is not None) == canonical


# -- rows -----------------------------------------------------------------------------------

def test_rows_route_by_their_keys() -> None:
    table = CommandTable(commands.COMMANDS)
    assert len(table) == len(SPECS)
    mset = table.get(b"MSET")
    assert mset is not None and (mset.first_key, mset.last_key, mset.key_step) == (1, -1, 2)
    assert request_slot(mset, _args("MSET", "{u}a", "1", "{u}b", "2")) == key_slot(b"u")
    scan = table.get(b"SCAN")
    assert scan is not None and request_slot(scan, _args("SCAN", "0")) is None


def test_build_rows_binds_the_daemons_handlers() -> None:
    rows = commands.build_rows(lambda spec: lambda session, args: spec.name)
    by_name = {row.name: row for row in rows}
    assert by_name["get"].handler is not None
    assert by_name["get"].handler(None, []) == "get"
    assert by_name["set"].reply_flags == ("write", "denyoom")


# -- globs (the same patterns run against redis-server in test_shardstore_vs_redis) ---------

@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    (b"a*", b"abc", True), (b"a?c", b"abc", True), (b"a?c", b"ac", False),
    (b"[b-a]", b"a", True), (b"[^a]", b"b", True), (b"[^a]", b"a", False),
    (b"[]", b"a", False), (b"[^]", b"a", True), (b"[a", b"a", True), (b"\\*", b"*", True),
    (b"\\*", b"a", False), (b"a\\", b"a\\", True), (b"[\\]]", b"]", True),
    (b"[\xff-a]", b"\x00", True), (b"[\xff-a]", b"\xfe", False), (b"[\xff-a]", b"b", False),
    (b"[a-]", b"]", True), (b"*", b"line\nbreak", True),
])
def test_glob(pattern: bytes, subject: bytes, expected: bool) -> None:
    assert glob_match(pattern, subject) is expected
