"""core.command_table and the COMMAND replies, without sockets.

The rows' derived fields (legacy key range, movablekeys, reply flags, ACL categories) are
checked against what Redis 7 reports for commands of the same shape (GET, MSET, ZUNIONSTORE,
MIGRATE); get_keys against the keys Redis's COMMAND GETKEYS gives; a hypothesis test checks
that for every range spec the legacy triple, read as redis-py's cluster client reads it,
finds the same keys as get_keys. Dispatch is driven through RespServer.dispatch with a
session object: arity (N, -N, a maximum), unknown subcommands and their wording, COMMAND's
subcommands on a synthetic table, RESP2 and RESP3 encodings of sets and maps.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.command_table import (
    BeginIndex,
    BeginKeyword,
    Command,
    CommandTable,
    FindKeynum,
    FindRange,
    KeysError,
    KeySpec,
    get_keys,
    key_at,
    keys_from,
    legacy_range,
)
from core.resp_server import RespServer
from tests.transcripts import Err, parse_reply


def _noop(session: Any, args: list[bytes]) -> object:
    return b"ok"


GET = Command("GET", _noop, 2, frozenset({"readonly", "fast"}), acl=("string",),
              key_specs=(key_at(1, "RO", "access"),), summary="Get")
MSET = Command("MSET", _noop, -3, frozenset({"write", "denyoom"}), acl=("string",),
               key_specs=(keys_from(1, "OW", "update", step=2),), summary="Set many")
ZUNIONSTORE = Command(
    "ZUNIONSTORE", _noop, -4, frozenset({"write", "denyoom"}), acl=("sortedset",),
    key_specs=(key_at(1, "OW", "update"), KeySpec(BeginIndex(2), FindKeynum(0, 1, 1), ("RO",))),
)
MIGRATE_LIKE = Command(
    "MOVEKEYS", _noop, -2, frozenset({"write"}),
    key_specs=(KeySpec(BeginKeyword("KEYS", -2), FindRange(-1, 1, 0), ("RW",)),),
)
RENAME = Command("RENAME", _noop, 3, frozenset({"write"}),
                 key_specs=(key_at(1, "RW", "access", "delete"), key_at(2, "OW", "update")))


def test_legacy_ranges_as_redis_reports_them() -> None:
    # COMMAND INFO get / mset / zunionstore / rename of Redis 7.
    assert (GET.first_key, GET.last_key, GET.key_step) == (1, 1, 1)
    assert (MSET.first_key, MSET.last_key, MSET.key_step) == (1, -1, 2)
    assert (ZUNIONSTORE.first_key, ZUNIONSTORE.last_key, ZUNIONSTORE.key_step) == (1, 1, 1)
    assert (RENAME.first_key, RENAME.last_key, RENAME.key_step) == (1, 2, 1)
    assert "movablekeys" in ZUNIONSTORE.reply_flags and "movablekeys" not in RENAME.reply_flags
    assert (MIGRATE_LIKE.first_key, MIGRATE_LIKE.key_step) == (0, 0)
    assert MIGRATE_LIKE.reply_flags == ("write", "movablekeys")
    assert legacy_range([]) == (0, 0, 0, False)


def test_flags_categories_and_their_order() -> None:
    assert GET.reply_flags == ("readonly", "fast")
    assert GET.acl_categories == ("read", "string", "fast")
    assert MSET.acl_categories == ("write", "string", "slow")
    hello = Command("HELLO", _noop, -1, frozenset({"noauth", "fast", "stale", "noscript"}))
    assert hello.no_auth and hello.reply_flags == ("noscript", "stale", "fast", "no_auth")
    admin = Command("X", _noop, 1, frozenset({"admin"}))
    assert admin.acl_categories == ("admin", "slow", "dangerous")


def test_rows_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="unknown flags"):
        Command("X", _noop, 1, frozenset({"readnoly"}))
    with pytest.raises(ValueError, match="unknown ACL"):
        Command("X", _noop, 1, acl=("strings",))
    with pytest.raises(ValueError, match="key spec flags"):
        key_at(1, "ro")
    with pytest.raises(ValueError, match="container"):
        Command("X", None, -1)


@pytest.mark.parametrize(
    ("command", "args", "keys"),
    [
        (GET, [b"GET", b"a"], [b"a"]),
        (MSET, [b"MSET", b"a", b"1", b"b", b"2"], [b"a", b"b"]),
        (ZUNIONSTORE, [b"ZUNIONSTORE", b"d", b"2", b"x", b"y", b"WEIGHTS", b"1", b"2"],
         [b"d", b"x", b"y"]),
        (MIGRATE_LIKE, [b"MOVEKEYS", b"h", b"keys", b"k1", b"k2"], [b"k1", b"k2"]),
        (MIGRATE_LIKE, [b"MOVEKEYS", b"h"], []),
        (RENAME, [b"RENAME", b"a", b"b"], [b"a", b"b"]),
    ],
)
def test_get_keys(command: Command, args: list[bytes], keys: list[bytes]) -> None:
    assert get_keys(command, args) == keys


def test_get_keys_refuses_what_the_specs_cannot_find() -> None:
    with pytest.raises(KeysError):
        get_keys(ZUNIONSTORE, [b"ZUNIONSTORE", b"d", b"5", b"x"])
    with pytest.raises(KeysError):
        get_keys(ZUNIONSTORE, [b"ZUNIONSTORE", b"d", b"two", b"x"])
    with pytest.raises(KeysError):
        get_keys(RENAME, [b"RENAME", b"a"])


@given(
    index=st.integers(1, 4),
    lastkey=st.integers(-3, 3),
    step=st.integers(1, 3),
    argc=st.integers(1, 12),
)
def test_legacy_triple_finds_the_keys_get_keys_finds(
    index: int, lastkey: int, step: int, argc: int
) -> None:
    command = Command("K", _noop, -1, key_specs=(keys_from(index, lastkey=lastkey, step=step),))
    args = [b"K", *(b"a%d" % i for i in range(1, argc))]
    # redis-py's CommandsParser: positions first..last (last < 0 counts from the end).
    last = command.last_key if command.last_key >= 0 else len(args) + command.last_key
    try:
        keys = get_keys(command, args)
    except KeysError:
        assert last >= len(args) or command.first_key >= len(args)
        return
    expected = [args[i] for i in range(command.first_key, last + 1, command.key_step)]
    assert keys == expected


# -- dispatch and COMMAND, no sockets ----------------------------------------------------


class FakeSession:
    def __init__(self, protocol: int = 2) -> None:
        self.id = 1
        self.peer = "test"
        self.authenticated = True
        self.protocol = protocol
        self.name = ""
        self.lib_name = ""
        self.lib_ver = ""
        self.last_command = ""
        self.close_after_reply = False


def _server() -> RespServer:
    return RespServer("kv", "9.9.9", [GET, MSET, ZUNIONSTORE, RENAME])


def call(server: RespServer, *args: bytes | str, protocol: int = 2) -> Any:
    raw = [a.encode() if isinstance(a, str) else a for a in args]
    reply = server.dispatch(FakeSession(protocol), raw)  # type: ignore[arg-type]
    assert isinstance(reply, bytes)
    value, end = parse_reply(reply)
    assert end == len(reply)
    return value


def raw_call(server: RespServer, *args: str, protocol: int = 2) -> bytes:
    reply = server.dispatch(FakeSession(protocol), [a.encode() for a in args])  # type: ignore[arg-type]
    assert isinstance(reply, bytes)
    return reply


def test_arity_errors_name_the_command_or_subcommand() -> None:
    server = _server()
    assert call(server, "GET") == Err("ERR wrong number of arguments for 'get' command")
    assert call(server, "PING", "a", "b") == Err("ERR wrong number of arguments for 'ping' command")
    assert call(server, "config") == Err("ERR wrong number of arguments for 'config' command")
    assert call(server, "CONFIG", "GET") == Err(
        "ERR wrong number of arguments for 'config|get' command"
    )
    assert call(server, "client", "setname") == Err(
        "ERR wrong number of arguments for 'client|setname' command"
    )
    assert call(server, "COMMAND", "COUNT", "x") == Err(
        "ERR wrong number of arguments for 'command|count' command"
    )


def test_unknown_subcommands() -> None:
    server = _server()
    assert call(server, "config", "set", "a", "b") == Err(
        "ERR unknown subcommand 'set'. Try CONFIG HELP."
    )
    assert call(server, "CLIENT", "NOSUCH") == Err(
        "ERR unknown subcommand 'NOSUCH'. Try CLIENT HELP."
    )
    help_lines = call(server, "CONFIG", "HELP")
    assert help_lines[0].startswith("CONFIG <subcommand>") and "GET" in help_lines


def test_command_info_of_rows_with_keys() -> None:
    server = _server()
    get, mset, nothing, config_get = call(server, "COMMAND", "INFO", "get", "MSET", "nosuch",
                                          "config|get")
    assert get[:7] == [b"get", 2, ["readonly", "fast"], 1, 1, 1, ["@read", "@string", "@fast"]]
    assert get[8] == [[b"flags", ["RO", "access"],
                       b"begin_search", [b"type", b"index", b"spec", [b"index", 1]],
                       b"find_keys", [b"type", b"range", b"spec",
                                      [b"lastkey", 0, b"keystep", 1, b"limit", 0]]]]
    assert mset[3:6] == [1, -1, 2]
    assert nothing is None
    assert config_get[:3] == [b"config|get", -3, ["admin", "noscript", "loading", "stale"]]


def test_command_info_sets_in_resp3() -> None:
    server = _server()
    reply = raw_call(server, "COMMAND", "INFO", "get", protocol=3)
    assert reply.startswith(b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n")
    assert b"~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n+access\r\n" in reply


def test_command_getkeys() -> None:
    server = _server()
    assert call(server, "COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    assert call(server, "COMMAND", "GETKEYS", "get", "k") == [b"k"]
    assert call(server, "COMMAND", "GETKEYS", "nosuch", "k") == Err(
        "ERR Invalid command specified"
    )
    assert call(server, "COMMAND", "GETKEYS", "get", "k", "x") == Err(
        "ERR Invalid number of arguments specified for command"
    )
    assert call(server, "COMMAND", "GETKEYS", "ping", "x") == Err(
        "ERR The command has no key arguments"
    )
    assert call(server, "COMMAND", "GETKEYS", "config", "get", "x") == Err(
        "ERR The command has no key arguments"
    )
    assert call(server, "COMMAND", "GETKEYS", "zunionstore", "d", "x", "a") == Err(
        "ERR Invalid arguments specified for command"
    )


def test_command_docs_count_list() -> None:
    server = _server()
    docs = call(server, "COMMAND", "DOCS", "get", "config", "nosuch")
    assert docs[0] == b"get"
    assert docs[1] == [b"summary", b"Get", b"since", b"9.9.9", b"group", b"kv"]
    config = dict(zip(docs[3][::2], docs[3][1::2], strict=True))
    assert config[b"group"] == b"server"
    subs = dict(zip(config[b"subcommands"][::2], config[b"subcommands"][1::2], strict=True))
    assert set(subs) == {b"config|get", b"config|help"}
    resp3 = raw_call(server, "COMMAND", "DOCS", "get", protocol=3)
    assert resp3.startswith(b"%1\r\n$3\r\nget\r\n%3\r\n")
    count = call(server, "COMMAND", "COUNT")
    names = call(server, "COMMAND", "LIST")
    assert count == len([n for n in names if b"|" not in n]) == len(CommandTable([GET]).rows) + 13
    assert call(server, "COMMAND", "LIST", "FILTERBY", "PATTERN", "config*") == [
        b"config", b"config|get", b"config|help"
    ]
    assert b"get" in call(server, "COMMAND", "LIST", "FILTERBY", "ACLCAT", "string")
    assert call(server, "COMMAND", "LIST", "x") == Err("ERR syntax error")


def test_later_rows_replace_earlier_ones() -> None:
    table = CommandTable([GET, Command("get", _noop, 3)])
    found = table.find(b"GET")
    assert len(table) == 1 and found is not None and found.command.arity == 3
    assert table.find(b"config|get") is None


# -- one Limits ----------------------------------------------------------------------------


def test_one_limits_for_parser_server_and_config() -> None:
    from core.limits import DEFAULT_LIMITS, Limits
    from native.resp import RequestParser

    parser = RequestParser()
    assert (parser.max_inline, parser.max_bulk, parser.max_elements, parser.max_buffer) == (
        DEFAULT_LIMITS.max_inline, DEFAULT_LIMITS.max_bulk, DEFAULT_LIMITS.max_elements,
        DEFAULT_LIMITS.max_buffer,
    )
    # The server's default is the same object's values, and CONFIG GET reports them.
    server = RespServer("kv", "9.9.9", [])
    assert server.limits == Limits()
    assert call(server, "CONFIG", "GET", "proto-max-bulk-len") == [
        b"proto-max-bulk-len", str(DEFAULT_LIMITS.max_bulk).encode()
    ]
    smaller = Limits(max_bulk=1024).with_clients(5)
    assert (smaller.max_bulk, smaller.max_clients) == (1024, 5)
    assert smaller.max_buffer == DEFAULT_LIMITS.max_buffer


def test_request_slot() -> None:
    from core.command_table import CrossSlotError, request_slot

    assert request_slot(GET, [b"GET", b"somekey"]) == 11058
    assert request_slot(MSET, [b"MSET", b"{t}a", b"1", b"{t}b", b"2"]) == request_slot(
        GET, [b"GET", b"t"]
    )
    with pytest.raises(CrossSlotError, match="CROSSSLOT"):
        request_slot(MSET, [b"MSET", b"a", b"1", b"b", b"2"])
    assert request_slot(Command("PING", _noop, -1), [b"PING"]) is None
