"""core/users.py and AUTH with named users: salted credentials, the user table, and a real RESP
server answering `AUTH username password` with Redis's exact replies."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from core.resp_client import AsyncRespConnection, ReplyError
from core.resp_server import RespServer
from core.users import (
    DEFAULT_USER,
    Credential,
    UserError,
    UserTable,
    check_user_name,
    make_credential,
)
from tests.redis_proc import needs_redis, redis_server

FAST = 10  # PBKDF2 rounds in tests: the rules are the same at any count
# Redis 7's texts (src/acl.c, src/server.c), checked by hand against redis-server.
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NOAUTH = "NOAUTH Authentication required."


def seeded(seed: int = 7) -> Any:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def test_credential_verifies_only_its_password() -> None:
    cred = make_credential(b"s3cret", iterations=FAST)
    assert cred.verify(b"s3cret")
    assert not cred.verify(b"s3cret ")
    assert not cred.verify(b"")
    assert b"s3cret" not in repr(cred).encode()


def test_same_password_two_salts_two_digests() -> None:
    one = make_credential(b"pw", iterations=FAST, random_bytes=seeded(1))
    two = make_credential(b"pw", iterations=FAST, random_bytes=seeded(2))
    assert one.salt != two.salt and one.digest != two.digest
    assert one.verify(b"pw") and two.verify(b"pw")


@pytest.mark.parametrize("password", [b"", b"x" * 513])
def test_bad_passwords_are_refused(password: bytes) -> None:
    with pytest.raises(UserError, match="password"):
        make_credential(password, iterations=FAST)


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é", "a/b"])
def test_bad_user_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="invalid user name"):
        check_user_name(name)


def test_table_add_verify_remove_and_wire_round_trip() -> None:
    table = UserTable()
    table.add("alice", make_credential(b"a", iterations=FAST), superuser=True)
    table.add("bob", make_credential(b"b", iterations=FAST))
    table.set_groups("bob", ["staff", "ops", "staff"])
    with pytest.raises(UserError, match="already exists"):
        table.add("alice", make_credential(b"x", iterations=FAST))
    with pytest.raises(UserError, match="already exists"):
        table.add(DEFAULT_USER, make_credential(b"x", iterations=FAST))
    copy = UserTable.from_wire(table.to_wire())
    assert copy.names() == ["alice", "bob"]
    assert copy.verify("alice", b"a") and not copy.verify("alice", b"b")
    bob = copy.get("bob")
    assert bob is not None and bob.all_groups() == ["bob", "ops", "staff"]
    copy.remove("bob")
    assert not copy.verify("bob", b"b")
    with pytest.raises(UserError, match="no such user"):
        copy.remove("bob")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=8)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4),
                    max_leaves=8))
def test_credential_parser_refuses_garbage_cleanly(row: Any) -> None:
    try:
        cred = Credential.from_wire(row)
    except UserError:
        return
    assert isinstance(cred.salt, bytes) and isinstance(cred.iterations, int)


# -- a real RESP server with a user table -------------------------------------------------------

def run_server(password: str | None, scenario: Any) -> None:
    """Serve a RespServer with users alice (superuser) and bob on a free loopback port and run
    `scenario(port)` against it."""
    table = UserTable()
    table.add("alice", make_credential(b"wonder", iterations=FAST), superuser=True)
    table.add("bob", make_credential(b"builder", iterations=FAST))

    async def main() -> None:
        server = RespServer("users-test", "0", [], password=password, users=table)
        await server.start("127.0.0.1", 0)
        try:
            await scenario(server)
        finally:
            await server.stop(grace=1)

    asyncio.run(main())


async def call(port: int, *commands: list[str]) -> list[bytes]:
    """Send `commands` on one connection; each reply's first line, exactly as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for words in commands:
            frame = b"*%d\r\n" % len(words) + b"".join(
                b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
            writer.write(frame)
            replies.append((await reader.readline()).rstrip(b"\r\n"))
    finally:
        writer.close()
    return replies


@pytest.mark.parametrize("password", [None, "topsecret"])
def test_auth_username_password_and_redis_errors(password: str | None) -> None:
    async def scenario(server: RespServer) -> None:
        wrong = ("-" + WRONGPASS).encode()
        tries = [["PING"], ["AUTH", "alice", "nope"], ["AUTH", "carol", "wonder"],
                 ["AUTH", "bob", "builder"], ["PING"]]
        replies = await call(server.port, *tries)
        first = b"+PONG" if password is None else ("-" + NOAUTH).encode()
        assert replies == [first, wrong, wrong, b"+OK", b"+PONG"]
        if password is not None:
            replies = await call(server.port, ["AUTH", "default", "x"], ["AUTH", "x"],
                                 ["AUTH", password], ["PING"])
            assert replies == [wrong, wrong, b"+OK", b"+PONG"]

    run_server(password, scenario)


def test_the_session_knows_its_user() -> None:
    async def scenario(server: RespServer) -> None:
        client = aioredis.Redis(port=server.port, username="bob", password="builder",
                                protocol=2)
        try:
            assert await client.ping() is True
            (session,) = server.sessions.values()
            assert session.user == "bob"
            assert await client.execute_command("AUTH", "topsecret") is True
            assert session.user == DEFAULT_USER
        finally:
            await client.aclose()

    run_server("topsecret", scenario)


def test_redis_py_connects_as_a_named_user_with_resp3() -> None:
    async def scenario(server: RespServer) -> None:
        client = aioredis.Redis(port=server.port, username="alice", password="wonder",
                                protocol=3)
        bad = aioredis.Redis(port=server.port, username="alice", password="x", protocol=3)
        try:
            assert await client.ping() is True
            assert [s.user for s in server.sessions.values()] == ["alice"]
            with pytest.raises(redis.AuthenticationError):
                await bad.ping()
        finally:
            await client.aclose()
            await bad.aclose()

    run_server("topsecret", scenario)


def test_without_a_user_table_only_the_default_user_exists() -> None:
    async def scenario(server: RespServer) -> None:
        server.users = None
        replies = await call(server.port, ["AUTH", "alice", "wonder"], ["AUTH", "default", "pw"])
        assert replies == [("-" + WRONGPASS).encode(), b"+OK"]

    run_server("pw", scenario)


def test_core_clients_log_in_as_a_named_user() -> None:
    async def scenario(server: RespServer) -> None:
        conn = await AsyncRespConnection.connect("127.0.0.1", server.port, username="bob",
                                                 password="builder", protocol=3)
        try:
            assert [s.user for s in server.sessions.values()] == ["bob"]
            assert conn.hello[b"proto"] == 3
        finally:
            conn.abort()
        with pytest.raises(ReplyError, match="WRONGPASS"):
            await AsyncRespConnection.connect("127.0.0.1", server.port, username="bob",
                                              password="nope")

    run_server("topsecret", scenario)


TRANSCRIPT = [["PING"], ["AUTH", "alice", "nope"], ["AUTH", "carol", "wonder"],
              ["AUTH", "bob", "builder"], ["PING"], ["AUTH", "default", "x"], ["AUTH", "x"],
              ["AUTH", "a", "b", "c"]]


@needs_redis
@pytest.mark.parametrize("password", [None, "topsecret"])
def test_auth_replies_are_redis_servers_byte_for_byte(password: str | None,
                                                      tmp_path: Path) -> None:
    """The same AUTH lines to redis-server (user bob added by ACL) and to our server."""
    extra = ["--user", "bob", "on", ">builder", "~*", "+@all"]
    extra += ["--requirepass", password] if password else []
    with redis_server(tmp_path, *extra) as port:
        theirs = asyncio.run(call(port, *TRANSCRIPT))
    ours: list[list[bytes]] = []

    async def scenario(server: RespServer) -> None:
        ours.append(await call(server.port, *TRANSCRIPT))

    run_server(password, scenario)
    assert ours[0] == theirs
