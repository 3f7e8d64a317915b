"""The RESP daemons work with real Redis clients, unchanged: redis-py (blocking and asyncio,
RESP2 and RESP3, with and without a password) and redis-cli (arguments, RESP3 mode, commands
piped on stdin), against idgen processes started once for the module.

redis-cli tests skip when redis-cli is not installed (CI installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.procs import Daemon, idgen_daemon

PASSWORD = "client-pw"
WORKER = 11
AUTH_WORKER = 12
EPOCH_MS = 1_704_067_200_000
REDIS_CLI = shutil.which("redis-cli")
CLI_TIMEOUT_S = 30  # hang detector only


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    proc = idgen_daemon(tmp_path_factory.mktemp("clients"), WORKER).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def auth_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    proc = idgen_daemon(
        tmp_path_factory.mktemp("clients-auth"),
        AUTH_WORKER,
        host="127.0.0.5",
        extra=["--requirepass", PASSWORD],
    ).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def as_dict(reply: Any) -> dict[bytes, Any]:
    """A map reply as a dict, whether RESP3 gave a map or RESP2 a flat array."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def increasing(ids: list[int]) -> bool:
    return all(type(i) is int for i in ids) and all(
        a < b for a, b in zip(ids, ids[1:], strict=False)
    )


def no_retry() -> Retry:
    """A refused connection fails at once instead of after redis-py's backoff."""
    return Retry(NoBackoff(), 0)


# -- redis-py, blocking ----------------------------------------------------------------


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[redis.Redis]:
    conn = redis.Redis(
        host=daemon.host, port=daemon.port, protocol=request.param, socket_timeout=10
    )
    yield conn
    conn.close()


def test_redis_py_next_parse_ping(client: redis.Redis) -> None:
    assert client.ping() is True
    first = client.execute_command("NEXT")
    five = client.execute_command("NEXT", 5)
    assert type(first) is int and len(five) == 5 and increasing([first, *five])
    parsed = as_dict(client.execute_command("PARSE", first))
    assert parsed[b"id"] == first and parsed[b"worker"] == WORKER
    assert parsed[b"time_ms"] == EPOCH_MS + (first >> 22)
    with pytest.raises(redis.ResponseError, match="count must be an integer between 1 and"):
        client.execute_command("NEXT", 0)
    with pytest.raises(redis.ResponseError, match="unknown command 'NOPE'"):
        client.execute_command("NOPE")
    assert client.echo("hi") == b"hi"


def test_redis_py_protocol_is_negotiated(client: redis.Redis) -> None:
    protocol = client.connection_pool.connection_kwargs["protocol"]
    parsed = client.execute_command("PARSE", client.execute_command("NEXT"))
    assert isinstance(parsed, dict) == (protocol == 3)
    mine = [c for c in client.client_list() if c["id"] == str(client.client_id())]
    assert mine and mine[0]["resp"] == str(protocol)
    assert mine[0]["lib-name"] == "redis-py"


def test_redis_py_info(client: redis.Redis) -> None:
    client.execute_command("NEXT")
    info = client.info()
    assert info["server_name"] == "idgen" and info["worker_id"] == WORKER
    assert "cmdstat_next" not in info
    idgen = client.info("idgen")
    assert idgen["worker_id"] == WORKER and idgen["epoch_ms"] == EPOCH_MS
    assert "server_name" not in idgen
    everything = client.info("all")
    assert everything["cmdstat_next"]["calls"] >= 1
    assert everything["worker_id"] == WORKER


def test_redis_py_client_name(client: redis.Redis) -> None:
    assert client.client_setname("py-client") is True
    assert client.client_getname() in ("py-client", b"py-client")
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        client.client_setname("two words")


def test_redis_py_pipeline_of_100_next(client: redis.Redis) -> None:
    # transaction=False: idgen has no MULTI/EXEC; a pipeline is plain RESP pipelining.
    pipe = client.pipeline(transaction=False)
    for _ in range(100):
        pipe.execute_command("NEXT")
    pipe.execute_command("NEXT", 3)
    replies = pipe.execute()
    ids = [*replies[:100], *replies[100]]
    assert len(ids) == 103 and increasing(ids)


def test_redis_py_config_get_and_command_count(client: redis.Redis) -> None:
    config = client.config_get("*")
    assert config["maxclients"] in ("10000", b"10000")
    # COMMAND LIST also names the subcommands ("config|get"), as Redis 7's does.
    names = [n.decode() if isinstance(n, bytes) else n for n in client.command_list()]
    assert client.command_count() == len([n for n in names if "|" not in n])


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_with_password(auth_daemon: Daemon, protocol: int) -> None:
    address = {"host": auth_daemon.host, "port": auth_daemon.port, "protocol": protocol}
    with redis.Redis(**address, password=PASSWORD, socket_timeout=10) as good:
        assert good.ping() is True
        ids = good.execute_command("NEXT", 4)
        assert len(ids) == 4 and increasing(ids)
        assert as_dict(good.execute_command("PARSE", ids[0]))[b"worker"] == AUTH_WORKER
    with redis.Redis(**address, username="default", password=PASSWORD) as named:
        assert type(named.execute_command("NEXT")) is int
    with redis.Redis(**address, password="wrong", retry=no_retry()) as bad:
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            bad.ping()
    with redis.Redis(**address, retry=no_retry()) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()


# -- redis-py, asyncio -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_asyncio(daemon: Daemon, auth_daemon: Daemon, protocol: int) -> None:
    async def scenario() -> None:
        plain = redis.asyncio.Redis(host=daemon.host, port=daemon.port, protocol=protocol)
        authed = redis.asyncio.Redis(
            host=auth_daemon.host, port=auth_daemon.port, protocol=protocol, password=PASSWORD
        )
        try:
            assert await plain.ping() is True
            batches = await asyncio.gather(
                *(plain.execute_command("NEXT", 10) for _ in range(20))
            )
            ids = sorted(i for batch in batches for i in batch)
            assert len(set(ids)) == 200
            assert all(increasing(batch) for batch in batches)
            pipe = plain.pipeline(transaction=False)
            for _ in range(100):
                pipe.execute_command("NEXT")
            assert increasing(await pipe.execute())
            info = await plain.info("idgen")
            assert info["worker_id"] == WORKER
            assert await plain.client_setname("async") is True
            assert await plain.client_getname() in ("async", b"async")
            one = await authed.execute_command("NEXT")
            parsed = as_dict(await authed.execute_command("PARSE", one))
            assert parsed[b"worker"] == AUTH_WORKER
        finally:
            await plain.aclose()
            await authed.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


# -- redis-cli -------------------------------------------------------------------------


def cli(proc: Daemon, *args: str, stdin: str | None = None) -> list[str]:
    """redis-cli's stdout lines (raw output, as when piped), without empty ones."""
    if REDIS_CLI is None:
        pytest.skip("redis-cli is not installed")
    done = subprocess.run(
        [REDIS_CLI, "-h", proc.host, "-p", str(proc.port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_cli_next(daemon: Daemon) -> None:
    (line,) = cli(daemon, "NEXT")
    three = cli(daemon, "NEXT", "3")
    ids = [int(line), *map(int, three)]
    assert len(three) == 3 and increasing(ids)


def test_cli_parse(daemon: Daemon) -> None:
    (line,) = cli(daemon, "NEXT")
    lines = cli(daemon, "PARSE", line)
    fields = dict(zip(lines[::2], lines[1::2], strict=True))
    assert fields["id"] == line and fields["worker"] == str(WORKER)
    assert fields["time_ms"] == str(EPOCH_MS + (int(line) >> 22))


def test_cli_info_idgen(daemon: Daemon) -> None:
    lines = cli(daemon, "INFO", "idgen")
    assert lines[0] == "# Idgen"
    assert f"worker_id:{WORKER}" in lines


def test_cli_errors_are_printed(daemon: Daemon) -> None:
    assert cli(daemon, "NEXT", "0") == ["ERR count must be an integer between 1 and 100000"]
    assert cli(daemon, "--no-raw", "NEXT", "0") == [
        "(error) ERR count must be an integer between 1 and 100000"
    ]


def test_cli_formatted_output(daemon: Daemon) -> None:
    lines = cli(daemon, "--no-raw", "NEXT", "2")
    assert [line.split(" ")[:2] for line in lines] == [["1)", "(integer)"], ["2)", "(integer)"]]


def test_cli_resp3(daemon: Daemon) -> None:
    (line,) = cli(daemon, "-3", "NEXT")
    lines = cli(daemon, "-3", "PARSE", line)
    assert f"id {line}" in lines and f"worker {WORKER}" in lines
    assert len(cli(daemon, "-3", "NEXT", "2")) == 2
    info = cli(daemon, "-3", "INFO", "idgen")
    assert info[0] in ("# Idgen", "txt:# Idgen") and f"worker_id:{WORKER}" in info


def test_cli_commands_on_stdin(daemon: Daemon) -> None:
    lines = cli(daemon, stdin='NEXT\nPING\nNEXT 2\nECHO "a b"\nPARSE 0\n')
    assert lines[1] == "PONG" and lines[4] == "a b"
    assert increasing([int(lines[0]), int(lines[2]), int(lines[3])])
    assert lines[5:7] == ["id", "0"]


def test_cli_with_password(auth_daemon: Daemon) -> None:
    lines = cli(auth_daemon, "-a", PASSWORD, "--no-auth-warning", "NEXT", "2")
    assert len(lines) == 2 and increasing([int(x) for x in lines])
    assert cli(auth_daemon, "--user", "default", "--pass", PASSWORD, "PING") == ["PONG"]
    (resp3,) = cli(auth_daemon, "-3", "-a", PASSWORD, "--no-auth-warning", "NEXT")
    assert int(resp3) > 0
    piped = cli(auth_daemon, "-a", PASSWORD, "--no-auth-warning", stdin="NEXT\nPING\n")
    assert piped[1] == "PONG" and int(piped[0]) > 0
    assert cli(auth_daemon, "NEXT") == ["NOAUTH Authentication required."]
