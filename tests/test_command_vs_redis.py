"""COMMAND INFO, COMMAND DOCS and COMMAND GETKEYS of our RESP daemons beside a real
redis-server's, and redis-py's cluster key routing reading our COMMAND reply.

An idgen daemon and a redis-server run side by side. For the commands both have (PING,
ECHO, INFO, AUTH, HELLO, QUIT, SELECT, CLIENT, CONFIG, COMMAND) the replies are read with a
strict reader that keeps each reply's wire type, in RESP2 and RESP3: the shapes must be
equal (type by type, set against set), and arity, flags, key positions, ACL categories and
tips equal; subcommands that exist in both are compared the same way. DOCS: the same shape,
our fields a subset of Redis's, the group equal.

idgen has no command with keys, so a RespServer with rows shaped as Redis's GET, MSET and
a movable-keys command runs in a thread; its COMMAND INFO and GETKEYS replies must equal
Redis's byte for byte, and redis-py's CommandsParser (what RedisCluster routes by) must
find the keys through our reply. Everything skips when redis-server is missing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis._parsers.commands import CommandsParser

from core.command_table import (
    BeginIndex,
    BeginKeyword,
    Command,
    FindKeynum,
    FindRange,
    KeySpec,
    key_at,
    keys_from,
)
from core.resp_server import RespServer
from tests.procs import Daemon, idgen_daemon
from tests.redis_proc import needs_redis, redis_server
from tests.transcripts import HANG_TIMEOUT_S, command

pytestmark = needs_redis

COMMON = ["ping", "echo", "info", "auth", "hello", "quit", "select", "client", "config",
          "command"]
STOP_TIMEOUT_S = 10


# -- a strict reader that keeps wire types -------------------------------------------------


@dataclass
class Typed:
    """One reply: its type byte and value (a list of Typed for aggregates, pairs for maps)."""

    kind: str
    value: Any


class Incomplete(Exception):
    """The buffer ends inside a reply."""


def read_typed(buf: bytes, pos: int = 0) -> tuple[Typed, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, line, pos = chr(buf[pos]), buf[pos + 1 : end], end + 2
    if kind in "+-":
        return Typed(kind, line.decode()), pos
    if kind == ":":
        return Typed(kind, int(line)), pos
    if kind == "_":
        return Typed(kind, None), pos
    if kind == "$":
        size = int(line)
        if size < 0:
            return Typed(kind, None), pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        return Typed(kind, buf[pos : pos + size]), pos + size + 2
    if kind in "*~%":
        count = int(line)
        items = []
        for _ in range(max(count, 0) * (2 if kind == "%" else 1)):
            item, pos = read_typed(buf, pos)
            items.append(item)
        return Typed(kind, items if count >= 0 else None), pos
    raise AssertionError(f"unexpected reply type {kind!r}")


class TypedClient:
    """A blocking socket that sends commands and reads typed replies."""

    def __init__(self, port: int, protocol: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_TIMEOUT_S)
        self.buf = b""
        if protocol == 3:
            self.raw("HELLO", "3")

    def raw(self, *args: str) -> bytes:
        """The reply's bytes, exactly as sent."""
        self.sock.sendall(command(*args))
        while True:
            try:
                _, end = read_typed(self.buf)
            except Incomplete:
                data = self.sock.recv(65536)
                assert data, "the server closed the connection"
                self.buf += data
                continue
            reply, self.buf = self.buf[:end], self.buf[end:]
            return reply

    def call(self, *args: str) -> Typed:
        return read_typed(self.raw(*args))[0]

    def close(self) -> None:
        self.sock.close()


def plain(reply: Typed) -> Any:
    """The value without wire types (maps as dicts, sets as sorted lists)."""
    if reply.kind == "%":
        items = [plain(i) for i in reply.value]
        return dict(zip(items[::2], items[1::2], strict=True))
    if reply.kind == "~":
        return sorted(plain(i) for i in reply.value)
    if reply.kind == "*" and reply.value is not None:
        return [plain(i) for i in reply.value]
    return reply.value


def pairs(reply: Typed) -> dict[bytes, Typed]:
    """A map reply's fields (RESP3 map, or RESP2 flat array) by name."""
    items = reply.value
    return {k.value: v for k, v in zip(items[::2], items[1::2], strict=True)}


# -- the processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture(scope="module")
def idgen_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc: Daemon = idgen_daemon(tmp_path_factory.mktemp("idgen"), 3).start()
    try:
        yield proc.port
    finally:
        assert proc.stop() == 0, proc.log()


# -- COMMAND INFO and DOCS against Redis's -------------------------------------------------

INFO_FIELDS = ["name", "arity", "flags", "first key", "last key", "step", "acl categories",
               "tips", "key specs", "subcommands"]


def compare_info(ours: Typed, theirs: Typed, name: str) -> None:
    assert ours.kind == theirs.kind == "*" and len(ours.value) == len(theirs.value) == 10, name
    for field, mine, real in zip(INFO_FIELDS[:9], ours.value[:9], theirs.value[:9], strict=True):
        assert mine.kind == real.kind, f"{name}: {field} is {mine.kind}, Redis's {real.kind}"
        if mine.value and real.value and isinstance(mine.value, list):
            kinds = {(i.kind) for i in mine.value} | {i.kind for i in real.value}
            assert len(kinds) == 1, f"{name}: {field} element types {kinds}"
        assert plain(mine) == plain(real), f"{name}: {field} differs"
    ours_subs = {sub.value[0].value: sub for sub in ours.value[9].value}
    theirs_subs = {sub.value[0].value: sub for sub in theirs.value[9].value}
    assert ours.value[9].kind == theirs.value[9].kind
    shared = set(ours_subs) & set(theirs_subs)
    assert len(shared) >= len(ours_subs) - 1, f"{name}: subcommands {set(ours_subs)}"
    for sub in shared:
        compare_info(ours_subs[sub], theirs_subs[sub], sub.decode())


@pytest.mark.parametrize("protocol", [2, 3])
def test_command_info_matches_redis(idgen_port: int, redis_port: int, protocol: int) -> None:
    ours, theirs = TypedClient(idgen_port, protocol), TypedClient(redis_port, protocol)
    try:
        mine = ours.call("COMMAND", "INFO", *COMMON, "nosuch")
        real = theirs.call("COMMAND", "INFO", *COMMON, "nosuch")
    finally:
        ours.close()
        theirs.close()
    assert mine.kind == real.kind == "*"
    for name, entry, expected in zip(COMMON, mine.value, real.value, strict=False):
        compare_info(entry, expected, name)
    assert mine.value[-1].kind == real.value[-1].kind  # a missing command: null


def compare_docs(ours: Typed, theirs: Typed, name: str) -> None:
    assert ours.kind == theirs.kind, name
    mine, real = pairs(ours), pairs(theirs)
    assert set(mine) <= set(real), f"{name}: fields {set(mine) - set(real)} not in Redis's"
    for field, value in mine.items():
        assert value.kind == real[field].kind, f"{name}: {field!r}"
    assert mine[b"group"].value == real[b"group"].value, name
    if b"subcommands" in mine:
        ours_subs, theirs_subs = pairs(mine[b"subcommands"]), pairs(real[b"subcommands"])
        for sub in set(ours_subs) & set(theirs_subs):
            compare_docs(ours_subs[sub], theirs_subs[sub], sub.decode())


@pytest.mark.parametrize("protocol", [2, 3])
def test_command_docs_matches_redis(idgen_port: int, redis_port: int, protocol: int) -> None:
    ours, theirs = TypedClient(idgen_port, protocol), TypedClient(redis_port, protocol)
    try:
        mine = ours.call("COMMAND", "DOCS", *COMMON, "nosuch")
        real = theirs.call("COMMAND", "DOCS", *COMMON, "nosuch")
    finally:
        ours.close()
        theirs.close()
    assert mine.kind == real.kind == ("%" if protocol == 3 else "*")
    mine_docs, real_docs = pairs(mine), pairs(real)
    assert set(mine_docs) == set(real_docs) == {n.encode() for n in COMMON}
    for name in COMMON:
        compare_docs(mine_docs[name.encode()], real_docs[name.encode()], name)


def test_errors_match_redis(idgen_port: int, redis_port: int) -> None:
    requests = [
        ("ECHO",), ("PING", "a", "b"), ("CONFIG",), ("CONFIG", "GET"), ("CONFIG", "NOSUCH"),
        ("CLIENT", "SETNAME"), ("CLIENT", "NOSUCH", "x"), ("COMMAND", "COUNT", "x"),
        ("COMMAND", "NOSUCH"), ("COMMAND", "GETKEYS", "ping"), ("COMMAND", "GETKEYS", "ping", "x"),
        ("COMMAND", "GETKEYS", "nosuch", "x"), ("COMMAND", "GETKEYS", "echo", "a", "b"),
        ("COMMAND", "GETKEYS", "config", "get", "x"), ("COMMAND", "LIST", "x"),
        ("COMMAND", "INFO", "config|get", "ping|x"),
    ]
    ours, theirs = TypedClient(idgen_port, 2), TypedClient(redis_port, 2)
    try:
        for request in requests:
            mine, real = ours.raw(*request), theirs.raw(*request)
            if request[:2] == ("COMMAND", "INFO"):
                assert read_typed(mine)[0].kind == read_typed(real)[0].kind
                continue
            assert mine == real, request
    finally:
        ours.close()
        theirs.close()


# -- rows with keys, in a RespServer of our own ---------------------------------------------


class KeyedRows:
    """GET and MSET over a dict, RENAME and ZUNIONSTORE that do nothing, all with Redis's
    metadata, and a movable-keys command of our own."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def rows(self) -> list[Command]:
        return [
            Command("GET", self.get, 2, frozenset({"readonly", "fast"}), acl=("string",),
                    key_specs=(key_at(1, "RO", "access"),), group="string"),
            Command("MSET", self.mset, -3, frozenset({"write", "denyoom"}), acl=("string",),
                    key_specs=(keys_from(1, "OW", "update", step=2),), group="string",
                    tips=("request_policy:multi_shard", "response_policy:all_succeeded")),
            Command("RENAME", self.noop, 3, frozenset({"write"}), acl=("keyspace",),
                    key_specs=(key_at(1, "RW", "access", "delete"), key_at(2, "OW", "update")),
                    group="generic"),
            Command("ZUNIONSTORE", self.noop, -4, frozenset({"write", "denyoom"}),
                    acl=("sortedset",), group="sorted-set",
                    key_specs=(key_at(1, "OW", "update"),
                               KeySpec(BeginIndex(2), FindKeynum(0, 1, 1), ("RO", "access")))),
            Command("KV.DROP", self.noop, -2, frozenset({"write"}), group="generic",
                    key_specs=(KeySpec(BeginKeyword("KEYS", 1), FindRange(-1, 1, 0), ("RM",)),)),
        ]

    def get(self, session: Any, args: list[bytes]) -> object:
        return self.data.get(args[1])

    def mset(self, session: Any, args: list[bytes]) -> object:
        self.data.update(zip(args[1::2], args[2::2], strict=True))
        return b"OK"

    def noop(self, session: Any, args: list[bytes]) -> object:
        return 0


@pytest.fixture(scope="module")
def keyed_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = RespServer("kvtest", "0.1.0", KeyedRows().rows())
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="keyed-resp-server", daemon=True)
    thread.start()
    assert ready.wait(STOP_TIMEOUT_S)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        loop.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_keyed_rows_read_as_redis_s(keyed_port: int, redis_port: int, protocol: int) -> None:
    requests = [
        ("COMMAND", "INFO", "get", "mset", "rename", "zunionstore"),
        ("COMMAND", "GETKEYSANDFLAGS", "rename", "a", "b"),
        ("COMMAND", "GETKEYS", "zunionstore", "d", "2", "a", "b", "WEIGHTS", "1", "2"),
        ("COMMAND", "GETKEYS", "mset", "a", "1", "b", "2"),
        ("COMMAND", "GETKEYS", "GET", "k"),
        ("COMMAND", "GETKEYS", "get", "a", "b"),
        ("COMMAND", "GETKEYS", "mset", "a", "1", "b"),
        ("COMMAND", "GETKEYSANDFLAGS", "mset", "a", "1", "b", "2"),
        ("COMMAND", "GETKEYSANDFLAGS", "get", "k"),
    ]
    ours, theirs = TypedClient(keyed_port, protocol), TypedClient(redis_port, protocol)
    try:
        for request in requests:
            assert ours.raw(*request) == theirs.raw(*request), request
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_routes_by_our_command_reply(keyed_port: int, protocol: int) -> None:
    with redis.Redis(port=keyed_port, protocol=protocol, socket_timeout=HANG_TIMEOUT_S) as r:
        table = r.command()
        assert table["mset"]["first_key_pos"] == 1 and table["mset"]["step_count"] == 2
        assert "movablekeys" in table["kv.drop"]["flags"]
        parser = CommandsParser(r)
        assert parser.get_keys(r, "MSET", "a", "1", "b", "2") == ["a", "b"] or parser.get_keys(
            r, "MSET", "a", "1", "b", "2"
        ) == [b"a", b"b"]
        assert parser.get_keys(r, "GET", "k") in (["k"], [b"k"])
        dropped = parser.get_keys(r, "KV.DROP", "KEYS", "x", "y")
        assert [k.decode() if isinstance(k, bytes) else k for k in dropped] == ["x", "y"]
        assert parser.get_keys(r, "PING", "hello") is None
        assert parser.get_keys(r, "CONFIG", "GET", "maxclients") is None


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_reads_idgen_command_table(idgen_port: int, protocol: int) -> None:
    with redis.Redis(port=idgen_port, protocol=protocol, socket_timeout=HANG_TIMEOUT_S) as r:
        table = r.command()
        assert {"next", "parse", "ping", "config"} <= set(table)
        assert table["next"]["arity"] == -1 and "write" in table["next"]["flags"]
        assert table["config"]["subcommands"]
        parser = CommandsParser(r)
        assert parser.get_keys(r, "NEXT", "3") is None
        assert parser.get_keys(r, "CLIENT", "SETNAME", "x") is None


def test_readme_style_redis_cli(idgen_port: int, tmp_path: Path) -> None:
    # redis-cli reads COMMAND DOCS on start for its hints; a call through it must work.
    import shutil
    import subprocess

    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    out = subprocess.run(
        [cli, "-p", str(idgen_port), "COMMAND", "INFO", "config|get"],
        capture_output=True, check=True, text=True, timeout=STOP_TIMEOUT_S,
    ).stdout.split()
    assert out[:3] == ["config|get", "-3", "admin"]


REQUEST_WORDS = st.sampled_from(["a", "b", "{t}x", "1", "2", "", "keys", "KEYS"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["get", "MSET", "mset", "rename", "Rename"]),
    words=st.lists(REQUEST_WORDS, max_size=6),
    flags=st.booleans(),
)
def test_getkeys_matches_redis_on_any_request(
    keyed_port: int, redis_port: int, name: str, words: list[str], flags: bool
) -> None:
    request = ("COMMAND", "GETKEYSANDFLAGS" if flags else "GETKEYS", name, *words)
    ours, theirs = TypedClient(keyed_port, 2), TypedClient(redis_port, 2)
    try:
        assert ours.raw(*request) == theirs.raw(*request), request
    finally:
        ours.close()
        theirs.close()
