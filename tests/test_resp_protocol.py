"""Black-box tests of the shared RESP server (core/resp_server.py, core/resp_commands.py,
core/resp.py and the request parser in native/) as the idgen daemon runs it.

Everything goes over raw sockets, byte for byte as netcat would send it, against real daemon
processes started once per module: a plain one, one with --requirepass and, where a test
needs it, one with --maxclients. Fixed replies live in golden transcripts
(tests/testdata/*.txt, see tests/transcripts.py); this module covers what a transcript
cannot: replies that vary, large payloads, the limits with a bystander client watching, the
connection limit and a client that never reads.

The limits and error texts below are written out from the specification (Redis's texts,
idgen's LIMITS), not imported from the code under test. Socket timeouts only detect hangs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import Daemon, idgen_daemon
from tests.transcripts import (
    DATA_DIR,
    ConnectionClosed,
    Err,
    RawClient,
    Status,
    Verbatim,
    command,
    parse_replies,
    run_transcript,
)

PASSWORD = "s3cret-pw"  # tests/testdata/resp_requirepass.txt uses it too
WORKER = 7
AUTH_WORKER = 8
# Limits of the base server and of idgen/server.py LIMITS, in bytes or elements.
MAX_INLINE = 64 * 1024
MAX_BULK = 64 * 1024
MAX_ELEMENTS = 1024
MAX_BUFFER = 1024 * 1024
UNAUTH_MAX_ELEMENTS = 10
UNAUTH_MAX_BULK = 16 * 1024
MAX_BATCH = 100_000
# Three-part fixed id: 123456789 ms after the epoch, worker 7, sequence 42.
FIXED_ID = (123456789 << 22) | (7 << 12) | 42

ERR_BATCH = Err("ERR count must be an integer between 1 and 100000")
ERR_BAD_ID = Err("ERR id must be an integer between 0 and 9223372036854775807")
ERR_NOAUTH = Err("NOAUTH Authentication required.")


def _start(tmp: Path, worker: int, host: str, extra: list[str]) -> Daemon:
    return idgen_daemon(tmp, worker, host=host, extra=extra).start()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    proc = _start(tmp_path_factory.mktemp("plain"), WORKER, "127.0.0.1", [])
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def auth_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    proc = _start(
        tmp_path_factory.mktemp("auth"), AUTH_WORKER, "127.0.0.2", ["--requirepass", PASSWORD]
    )
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def connect(proc: Daemon) -> RawClient:
    return RawClient(proc.host, proc.port)


class Bystander:
    """A client connected before an attack; it must keep getting correct answers."""

    def __init__(self, proc: Daemon, password: str | None = None) -> None:
        self.client = connect(proc)
        self.last_id = 0
        if password is not None:
            assert self.client.call("AUTH", password) == "OK"

    def check(self) -> None:
        assert self.client.call("PING") == Status("PONG")
        new = self.client.call("NEXT")
        assert isinstance(new, int) and new > self.last_id
        self.last_id = new

    def info(self, *sections: str) -> dict[str, str]:
        text = self.client.call("INFO", *sections)
        assert isinstance(text, bytes)
        return info_fields(text)


def info_fields(text: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.decode().split("\r\n"):
        if line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key] = value
    return fields


def info_titles(text: bytes) -> list[str]:
    return [line[2:] for line in text.decode().split("\r\n") if line.startswith("# ")]


@pytest.fixture(scope="module")
def bystander(daemon: Daemon) -> Iterator[Bystander]:
    watcher = Bystander(daemon)
    watcher.check()
    yield watcher
    watcher.client.close()


# -- golden transcripts ----------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DATA_DIR.glob("resp_*.txt")), ids=lambda p: p.name)
def test_golden_transcript(path: Path, request: pytest.FixtureRequest) -> None:
    # resp_requirepass*.txt run against the daemon started with --requirepass PASSWORD.
    fixture = "auth_daemon" if path.stem.startswith("resp_requirepass") else "daemon"
    proc: Daemon = request.getfixturevalue(fixture)
    run_transcript(path, lambda: connect(proc))


# -- request forms and pipelining ------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NEXT 3\r\n",
        b"NEXT 3\n",
        b"  NEXT   3  \r\n",
        b"*2\r\n$4\r\nNEXT\r\n$1\r\n3\r\n",
        b'NEXT "3"\r\n',
        b"next '3'\r\n",
    ],
    ids=["inline", "lf-only", "spaces", "multibulk", "double-quoted", "single-quoted"],
)
def test_inline_and_multibulk_are_one_command(daemon: Daemon, request_bytes: bytes) -> None:
    with connect(daemon) as client:
        client.send(request_bytes)
        ids = client.read_reply()
        assert isinstance(ids, list) and len(ids) == 3
        assert ids == sorted(set(ids))


def _mixed_pipeline() -> tuple[list[bytes], list[Callable[[object], bool]]]:
    """100 commands in both forms, with a check for each reply."""
    requests: list[bytes] = []
    checks: list[Callable[[object], bool]] = []
    for i in range(100):
        kind = i % 7
        if kind == 0:
            requests.append(b"PING\r\n")
            checks.append(lambda r: r == Status("PONG"))
        elif kind == 1:
            requests.append(command("ECHO", f"msg {i}"))
            checks.append(lambda r, i=i: r == f"msg {i}".encode())
        elif kind == 2:
            requests.append(b"NEXT\r\n")
            checks.append(lambda r: isinstance(r, int))
        elif kind == 3:
            requests.append(command("NEXT", 2))
            checks.append(lambda r: isinstance(r, list) and len(r) == 2)
        elif kind == 4:
            requests.append(b"PARSE %d\r\n" % FIXED_ID)
            checks.append(lambda r: isinstance(r, list) and r[6:8] == [b"worker", WORKER])
        elif kind == 5:
            requests.append(command("NOPE", i))
            checks.append(
                lambda r, i=i: r
                == Err(f"ERR unknown command 'NOPE', with args beginning with: '{i}' ")
            )
        else:
            requests.append(b"NEXT 0\r\n")
            checks.append(lambda r: r == ERR_BATCH)
    return requests, checks


def test_pipeline_of_100_mixed_commands_in_one_send(daemon: Daemon) -> None:
    requests, checks = _mixed_pipeline()
    with connect(daemon) as client:
        client.send(b"".join(requests))
        replies = client.read_replies(len(requests))
        client.send(b"PING\r\n")
        assert client.read_reply() == Status("PONG")  # nothing extra was queued
    for index, (check, reply) in enumerate(zip(checks, replies, strict=True)):
        assert check(reply), (index, requests[index], reply)
    ids: list[int] = []
    for reply in replies:
        if isinstance(reply, int):
            ids.append(reply)
        elif isinstance(reply, list) and len(reply) == 2:
            ids.extend(reply)
    assert ids == sorted(set(ids)), "ids are strictly increasing in pipeline order"


def test_runs_of_next_in_any_spelling_and_split_across_reads(daemon: Daemon) -> None:
    # Runs of the same argument-less command may be answered in one go; the replies must be
    # those of the commands one by one, whatever the spelling and however the bytes arrive.
    run = b"NEXT\r\n" * 50 + b"next\r\n" * 50 + b"Next\r\n" + command("NEXT") * 50
    with connect(daemon) as client:
        client.send(run + b"NEXT\r\nNE")
        client.send(b"XT\r\nNEXT 0\r\n" + b"NEXT\r\n" * 20)
        replies = client.read_replies(151 + 2 + 1 + 20)
    assert replies[153] == ERR_BATCH
    ids = replies[:153] + replies[154:]
    assert all(type(i) is int for i in ids)
    assert ids == sorted(set(ids))


def test_pipeline_split_at_every_byte(daemon: Daemon) -> None:
    data = b'PING\r\n*2\r\n$4\r\nECHO\r\n$5\r\na\r\nbc\r\nECHO "x y"\n*1\r\n$4\r\nNEXT\r\n'
    with connect(daemon) as client:
        for byte in data:
            client.send(bytes([byte]))
        replies = client.read_replies(4)
    assert replies[:3] == [Status("PONG"), b"a\r\nbc", b"x y"]
    assert isinstance(replies[3], int)


def test_long_inline_argument_within_the_limit(daemon: Daemon) -> None:
    payload = b"x" * (MAX_INLINE - 16)
    with connect(daemon) as client:
        client.send(b"ECHO " + payload + b"\r\n")
        assert client.read_reply() == payload


def test_bulk_at_the_limit_is_accepted(daemon: Daemon) -> None:
    payload = bytes(range(256)) * (MAX_BULK // 256)
    assert len(payload) == MAX_BULK
    with connect(daemon) as client:
        assert client.call("ECHO", payload) == payload


# -- RESP3 -----------------------------------------------------------------------------


def test_resp3_verbatim_info_and_back_to_resp2(daemon: Daemon) -> None:
    with connect(daemon) as client:
        hello = client.call("HELLO", "3")
        assert isinstance(hello, dict) and hello[b"proto"] == 3
        client.send(b"HELLO 3\r\nINFO idgen\r\nCLIENT GETNAME\r\n")
        again, info, name = client.read_replies(3)
        assert isinstance(again, dict)
        assert isinstance(info, Verbatim) and info.fmt == "txt"
        assert info_titles(info) == ["Idgen"]
        assert info_fields(info)["worker_id"] == str(WORKER)
        assert name is None
        assert client.call("HELLO", "2")[:2] == [b"server", b"idgen"]
        info = client.call("INFO", "idgen")
        assert type(info) is bytes  # a plain bulk string again
        assert info_titles(info) == ["Idgen"]
        assert client.call("CLIENT", "GETNAME") is None


# -- COMMAND, CLIENT, CONFIG, INFO -----------------------------------------------------


def test_command_count_info_docs_list_agree(daemon: Daemon) -> None:
    with connect(daemon) as client:
        count = client.call("COMMAND", "COUNT")
        names = client.call("COMMAND", "LIST")
        table = client.call("COMMAND")
        docs = client.call("COMMAND", "DOCS")
        info = client.call("COMMAND", "INFO", *names)
    # As Redis 7: COUNT, COMMAND and DOCS cover the commands, LIST and INFO also the
    # subcommands (named "config|get").
    commands = [name for name in names if b"|" not in name]
    assert isinstance(count, int) and count == len(commands) == len(table)
    assert len(info) == len(names) and None not in info
    assert len(docs) == 2 * count  # a RESP2 map is a flat array
    assert len(set(names)) == len(names)
    expected = {b"ping", b"echo", b"hello", b"auth", b"quit", b"info", b"command", b"client",
                b"config", b"select", b"next", b"parse", b"idgen.whoami", b"config|get",
                b"client|setname", b"command|getkeys"}
    assert expected <= set(names)
    arity = {row[0]: row[1] for row in info}
    assert arity[b"next"] == -1 and arity[b"parse"] == 2 and arity[b"echo"] == 2
    assert arity[b"config|get"] == -3 and arity[b"client|setname"] == 3
    assert sorted(row[0] for row in table) == sorted(commands)


def test_client_id_name_setinfo_and_list(daemon: Daemon) -> None:
    with connect(daemon) as client, connect(daemon) as other:
        client_id = client.call("CLIENT", "ID")
        hello = client.call("HELLO")
        assert hello[hello.index(b"id") + 1] == client_id
        assert client.call("CLIENT", "SETNAME", "watcher") == Status("OK")
        assert client.call("CLIENT", "SETINFO", "lib-name", "rawsock") == Status("OK")
        assert client.call("CLIENT", "SETINFO", "lib-ver", "9.9") == Status("OK")
        assert client.call("CLIENT", "GETNAME") == b"watcher"
        other_id = other.call("CLIENT", "ID")
        assert other_id != client_id
        listing = other.call("CLIENT", "LIST").decode()
    lines = {line.split(" ", 1)[0]: line for line in listing.splitlines()}
    mine = lines[f"id={client_id}"]
    assert " name=watcher " in mine and " lib-name=rawsock " in mine
    assert " lib-ver=9.9 " in mine and " resp=2 " in mine
    assert lines[f"id={other_id}"].endswith("cmd=client|list")  # Redis 7 names the subcommand


def test_config_get_star(daemon: Daemon) -> None:
    with connect(daemon) as client:
        flat = client.call("CONFIG", "GET", "*")
    config = dict(zip(flat[::2], flat[1::2], strict=True))
    assert config[b"maxclients"] == b"10000"
    assert config[b"proto-max-bulk-len"] == str(MAX_BULK).encode()
    assert config[b"client-query-buffer-limit"] == str(MAX_BUFFER).encode()
    assert config[b"port"] == str(daemon.port).encode()
    assert config[b"bind"] == daemon.host.encode()


def test_info_sections(daemon: Daemon) -> None:
    with connect(daemon) as client:
        client.call("NEXT")
        default = client.call("INFO")
        everything = client.call("INFO", "all")
        idgen = client.call("INFO", "idgen")
        two = client.call("INFO", "server", "IDGEN")
        stats = client.call("INFO", "everything")
    assert info_titles(default)[:3] == ["Server", "Clients", "Stats"]
    assert "Idgen" in info_titles(default) and "Commandstats" not in info_titles(default)
    assert info_titles(everything) == [*info_titles(default), "Commandstats"]
    assert info_titles(stats) == info_titles(everything)
    assert info_titles(idgen) == ["Idgen"]
    assert info_titles(two) == ["Server", "Idgen"]
    assert info_fields(everything)["cmdstat_next"].startswith("calls=")
    fields = info_fields(default)
    assert fields["server_name"] == "idgen" and fields["tcp_port"] == str(daemon.port)
    assert int(fields["connected_clients"]) >= 1
    assert int(info_fields(idgen)["worker_id"]) == WORKER
    pure = os.environ.get("INFRA_PURE", "") not in ("", "0")
    assert info_fields(idgen)["generator"] == ("pure" if pure else "native")
    for text in (default, everything, idgen):
        assert text.endswith(b"\r\n") and b"\r\n\r\n\r\n" not in text


# -- idgen's commands ------------------------------------------------------------------


def test_next_one_and_the_largest_batch(daemon: Daemon) -> None:
    with connect(daemon) as client:
        first = client.call("NEXT")
        one = client.call("NEXT", 1)
        batch = client.call("NEXT", MAX_BATCH)
        last = client.call("NEXT")
        parsed = client.call("PARSE", batch[-1])
    assert isinstance(one, list) and len(one) == 1
    assert len(batch) == MAX_BATCH
    ids = [first, *one, *batch, last]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    fields = dict(zip(parsed[::2], parsed[1::2], strict=True))
    assert fields[b"id"] == batch[-1] and fields[b"worker"] == WORKER


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (["0"], ERR_BATCH),
        (["100001"], ERR_BATCH),
        (["-1"], ERR_BATCH),
        (["abc"], ERR_BATCH),
        (["1.5"], ERR_BATCH),
        (["1", "2"], Err("ERR wrong number of arguments for 'next' command")),
    ],
)
def test_next_refuses_bad_counts(daemon: Daemon, args: list[str], reply: Err) -> None:
    with connect(daemon) as client:
        assert client.call("NEXT", *args) == reply
        assert isinstance(client.call("NEXT"), int)  # the connection stays usable


@pytest.mark.parametrize(
    "arg", ["-1", "abc", "1.5", "9223372036854775808", "1" * 40, ""]
)
def test_parse_refuses_bad_ids(daemon: Daemon, arg: str) -> None:
    with connect(daemon) as client:
        assert client.call("PARSE", arg) == ERR_BAD_ID


def test_parse_of_a_fresh_id(daemon: Daemon) -> None:
    with connect(daemon) as client:
        new = client.call("NEXT")
        flat = client.call("PARSE", new)
        client.send(b"HELLO 3\r\n")
        client.read_reply()
        as_map = client.call("PARSE", new)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert fields == as_map
    assert fields[b"id"] == new and fields[b"worker"] == WORKER
    assert fields[b"time_ms"] == (new >> 22) + 1_704_067_200_000
    assert fields[b"sequence"] == new & 0xFFF


# -- limits: an error, the connection closed, other clients unaffected -----------------


def _buffer_flood() -> bytes:
    """A multibulk of 64 KiB bulks, each within the limits, whose unfinished command grows
    one byte past the 1 MiB buffer limit with the last byte sent (so nothing is left unread
    when the server closes, and the close is a FIN, not a reset)."""
    element = b"$%d\r\n%s\r\n" % (MAX_BULK, b"b" * MAX_BULK)
    whole = b"*%d\r\n" % MAX_ELEMENTS + element * (MAX_BUFFER // len(element) + 1)
    return whole[: MAX_BUFFER + 1]


LIMIT_CASES = [
    ("inline-no-newline", b"A" * (MAX_INLINE + 1), "too big inline request"),
    ("inline-long-line", b"ECHO " + b"a" * MAX_INLINE + b"\r\n", "too big inline request"),
    ("mbulk-huge", b"*3000000000\r\n", "invalid multibulk length"),
    ("mbulk-19-digits", b"*1000000000000000000\r\n", "invalid multibulk length"),
    ("mbulk-not-a-number", b"*abc\r\n", "invalid multibulk length"),
    ("mbulk-plus-sign", b"*+1\r\n", "invalid multibulk length"),
    ("mbulk-space", b"* 1\r\n", "invalid multibulk length"),
    ("mbulk-over-1024", b"*%d\r\n" % (MAX_ELEMENTS + 1), "invalid multibulk length"),
    ("mbulk-header-no-crlf", b"*" + b"1" * (MAX_INLINE + 1), "too big mbulk count string"),
    ("bulk-not-a-number", b"*1\r\n$abc\r\n", "invalid bulk length"),
    ("bulk-negative", b"*1\r\n$-1\r\n", "invalid bulk length"),
    ("bulk-over-64k", b"*1\r\n$%d\r\n" % (MAX_BULK + 1), "invalid bulk length"),
    ("bulk-huge", b"*1\r\n$3000000000\r\n", "invalid bulk length"),
    ("bulk-header-no-crlf", b"*1\r\n$" + b"1" * (MAX_INLINE + 1), "too big bulk count string"),
    ("expected-dollar", b"*2\r\n$4\r\nECHO\r\n:1\r\n", "expected '$', got ':'"),
    ("expected-dollar-star", b"*1\r\n*1\r\n", "expected '$', got '*'"),
    ("unbalanced-double", b'ECHO "abc\r\n', "unbalanced quotes in request"),
    ("unbalanced-single", b"ECHO 'abc\r\n", "unbalanced quotes in request"),
    ("quote-then-letter", b'ECHO "a"b\r\n', "unbalanced quotes in request"),
    ("buffer-over-1MiB", _buffer_flood(), "query buffer limit exceeded"),
]


def _send_all_or_reset(client: RawClient, payload: bytes) -> None:
    """Send; a server that closes before reading everything may reset the connection, and
    its reply is still read from the socket afterwards."""
    try:
        client.send(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize(
    ("payload", "error"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES]
)
def test_limit_error_closes_only_the_offender(
    daemon: Daemon, bystander: Bystander, payload: bytes, error: str
) -> None:
    bystander.check()
    errors_before = int(bystander.info("stats")["protocol_errors"])
    with connect(daemon) as attacker:
        _send_all_or_reset(attacker, payload)
        assert attacker.read_until_closed() == b"-ERR Protocol error: %s\r\n" % error.encode()
    bystander.check()
    assert int(bystander.info("stats")["protocol_errors"]) == errors_before + 1


def test_commands_before_the_bad_one_are_answered_first(
    daemon: Daemon, bystander: Bystander
) -> None:
    with connect(daemon) as client:
        client.send(b"PING\r\nNEXT\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nNEXT 2\r\n*1\r\n$99999\r\n")
        replies = parse_replies(client.read_until_closed())
    assert replies[0] == Status("PONG") and isinstance(replies[1], int)
    assert replies[2] == b"hi" and len(replies[3]) == 2
    assert replies[4] == Err("ERR Protocol error: invalid bulk length")
    assert len(replies) == 5
    bystander.check()


def test_protocol_error_after_a_command_that_waits(daemon: Daemon, bystander: Bystander) -> None:
    # NEXT 100000 needs about 25 ms of sequence space, so its reply is written later by a
    # task; the error and the close must still come after it and after the PING.
    with connect(daemon) as client:
        client.send(b"NEXT 100000\r\nPING\r\n*1\r\n$-5\r\n")
        replies = parse_replies(client.read_until_closed())
    assert len(replies) == 3 and len(replies[0]) == MAX_BATCH
    assert replies[1:] == [Status("PONG"), Err("ERR Protocol error: invalid bulk length")]
    bystander.check()


def test_quit_closes_after_its_reply(daemon: Daemon) -> None:
    with connect(daemon) as client:
        client.send(b"NEXT\r\nQUIT\r\nNEXT\r\n")
        replies = parse_replies(client.read_until_closed())
    assert isinstance(replies[0], int) and replies[1:] == [Status("OK")]
    with connect(daemon) as client:
        client.send(b"NEXT 100000\r\nNEXT 100000\r\nQUIT\r\nPING\r\n")
        replies = parse_replies(client.read_until_closed())
    assert [len(r) for r in replies[:2]] == [MAX_BATCH, MAX_BATCH]
    assert replies[2:] == [Status("OK")]


# -- AUTH ------------------------------------------------------------------------------


def _unauth_case(payload: bytes, error: str, auth_daemon: Daemon) -> None:
    watcher = Bystander(auth_daemon, PASSWORD)
    try:
        watcher.check()
        with connect(auth_daemon) as attacker:
            _send_all_or_reset(attacker, payload)
            assert attacker.read_until_closed() == b"-ERR Protocol error: %s\r\n" % error.encode()
        watcher.check()
    finally:
        watcher.client.close()


def test_unauthenticated_multibulk_limit(auth_daemon: Daemon) -> None:
    args = ["PING"] + ["x"] * UNAUTH_MAX_ELEMENTS
    _unauth_case(command(*args), "unauthenticated multibulk length", auth_daemon)


def test_unauthenticated_bulk_limit(auth_daemon: Daemon) -> None:
    payload = command("ECHO", b"x" * (UNAUTH_MAX_BULK + 1))
    _unauth_case(payload, "unauthenticated bulk length", auth_daemon)


def test_unauthenticated_limits_are_inclusive(auth_daemon: Daemon) -> None:
    with connect(auth_daemon) as client:
        assert client.call(*(["PING"] + ["x"] * (UNAUTH_MAX_ELEMENTS - 1))) == ERR_NOAUTH
        assert client.call("ECHO", b"x" * UNAUTH_MAX_BULK) == ERR_NOAUTH


def test_authenticated_clients_get_the_full_limits(auth_daemon: Daemon) -> None:
    big = b"y" * (UNAUTH_MAX_BULK * 3)
    with connect(auth_daemon) as client:
        assert client.call("AUTH", PASSWORD) == Status("OK")
        assert client.call("ECHO", big) == big
        many = client.call(*(["PING"] + ["x"] * UNAUTH_MAX_ELEMENTS))
        assert many == Err("ERR wrong number of arguments for 'ping' command")


def test_auth_in_the_middle_of_a_pipelined_run(auth_daemon: Daemon) -> None:
    with connect(auth_daemon) as client:
        client.send(b"NEXT\r\n" * 3 + b"AUTH " + PASSWORD.encode() + b"\r\n" + b"NEXT\r\n" * 3)
        replies = client.read_replies(7)
    assert replies[:4] == [ERR_NOAUTH] * 3 + [Status("OK")]
    assert all(type(i) is int for i in replies[4:]) and replies[4:] == sorted(set(replies[4:]))


def test_hello_auth_setname_in_one_command(auth_daemon: Daemon) -> None:
    with connect(auth_daemon) as client:
        hello = client.call("HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "x")
        assert hello[b"proto"] == 3 and hello[b"server"] == b"idgen"
        assert hello[b"id"] == client.call("CLIENT", "ID")
        assert client.call("CLIENT", "GETNAME") == b"x"
        assert isinstance(client.call("NEXT"), int)


def test_command_pipelined_after_auth_gets_the_full_limits(auth_daemon: Daemon) -> None:
    # Redis parses each command after running the one before, so this is accepted there.
    with connect(auth_daemon) as client:
        client.send(command("AUTH", PASSWORD) + command(*(["ECHO"] * 12)))
        replies = client.read_replies(2)
    assert replies == [Status("OK"), Err("ERR wrong number of arguments for 'echo' command")]


def test_hello_with_a_non_utf8_option_is_a_syntax_error(daemon: Daemon) -> None:
    with connect(daemon) as client:
        client.send(b"HELLO 3 \xff\r\n")
        reply = client.read_reply()
    assert isinstance(reply, Err) and reply.startswith("ERR Syntax error in HELLO option '")


# -- the connection limit --------------------------------------------------------------


def _admitted(proc: Daemon) -> RawClient:
    """A connection the server has admitted (retrying while a closed one is released)."""
    deadline = time.monotonic() + 10  # hang detector only
    while True:
        client = connect(proc)
        try:
            if client.call("PING") == Status("PONG"):
                return client
        except (ConnectionClosed, OSError):
            pass
        client.close()
        assert time.monotonic() < deadline, "the server never admitted a new connection"
        time.sleep(0.05)


def test_maxclients(tmp_path_factory: pytest.TempPathFactory) -> None:
    proc = _start(tmp_path_factory.mktemp("maxclients"), 9, "127.0.0.3", ["--maxclients", "2"])
    try:
        first = _admitted(proc)
        second = _admitted(proc)
        with connect(proc) as third:
            assert third.read_until_closed() == b"-ERR max number of clients reached\r\n"
        assert first.call("PING") == Status("PONG")
        assert isinstance(second.call("NEXT"), int)
        fields = info_fields(first.call("INFO", "clients", "stats"))
        assert fields["connected_clients"] == "2" and fields["maxclients"] == "2"
        assert int(fields["rejected_connections"]) >= 1
        first.close()
        replacement = _admitted(proc)  # the freed slot is given to a new client
        assert isinstance(replacement.call("NEXT"), int)
        replacement.close()
        second.close()
    finally:
        assert proc.stop() == 0, proc.log()


# -- a client that sends and never reads -----------------------------------------------


def _wait_until_idle(watcher: Bystander, target: int) -> int:
    """Poll INFO until ids_issued reaches `target` or stops moving; the peak RSS seen."""
    peak = 0
    previous = -1
    deadline = time.monotonic() + 60  # hang detector only
    while time.monotonic() < deadline:
        fields = watcher.info("server", "idgen")
        peak = max(peak, int(fields["used_memory_rss"]))
        issued = int(fields["ids_issued"])
        if issued >= target or issued == previous:
            break
        previous = issued
        time.sleep(0.5)
    return peak


def _send_in_background(client: RawClient, data: bytes) -> threading.Thread:
    client.sock.settimeout(120)  # the server may stop reading until we read; hang detector
    sender = threading.Thread(target=client.send, args=(data,), daemon=True)
    sender.start()
    return sender


def test_unread_pipeline_of_200k_next(daemon: Daemon, bystander: Bystander) -> None:
    total = 200_000
    issued_before = int(bystander.info("idgen")["ids_issued"])
    rss_before = int(bystander.info("server")["used_memory_rss"])
    flooder = connect(daemon)
    try:
        sender = _send_in_background(flooder, b"NEXT\r\n" * total)
        for _ in range(20):
            bystander.check()  # served while the flooder reads nothing
        peak = _wait_until_idle(bystander, issued_before + total)
        bystander.check()
        ids = flooder.read_replies(total)
        sender.join(timeout=60)
        assert not sender.is_alive()
        flooder.send(b"PING\r\n")
        assert flooder.read_reply() == Status("PONG")
    finally:
        flooder.close()
    assert all(type(i) is int for i in ids)
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert peak - rss_before < 64 * 1024 * 1024


def _read_lines(client: RawClient, count: int) -> list[bytes]:
    """The next `count` CRLF-terminated lines (fast enough for millions of integers)."""
    seen = client.buf.count(b"\r\n")
    while seen < count:
        if client.closed:
            raise ConnectionClosed(f"closed after {seen} of {count} lines")
        tail = len(client.buf)
        client.buf += client._recv()
        seen += client.buf.count(b"\r\n", max(tail - 1, 0))
    lines = client.buf.split(b"\r\n", count)
    client.buf = lines.pop()
    return lines


def test_unread_large_batches_keep_memory_bounded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # 48 commands of 13 bytes ask for ~100 MB of replies; a server that stops answering while
    # its write buffer is over the high-water mark (1 MiB) holds a few MiB at most.
    batches = 48
    proc = _start(tmp_path_factory.mktemp("memory"), 10, "127.0.0.4", [])
    try:
        watcher = Bystander(proc)
        rss_before = int(watcher.info("server")["used_memory_rss"])
        with connect(proc) as flooder:
            flooder.send(b"NEXT 100000\r\n" * batches)
            peak = _wait_until_idle(watcher, batches * MAX_BATCH)
            watcher.check()
            lines = _read_lines(flooder, batches * (MAX_BATCH + 1))
        watcher.client.close()
    finally:
        assert proc.stop() == 0, proc.log()
    assert lines[:: MAX_BATCH + 1] == [b"*100000"] * batches
    ids = [int(line[1:]) for i, line in enumerate(lines) if i % (MAX_BATCH + 1)]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert peak - rss_before < 40 * 1024 * 1024, f"server RSS grew by {peak - rss_before}"
