"""Hypothesis fuzz of the RESP server through a live idgen daemon.

Each example opens a fresh connection and sends one of: random bytes, random tokens of the
protocol (`*`, `$`, CRLF, quotes, counts), a valid command stream (every reply is checked), or
a valid stream mutated (truncated, bytes flipped, CR/LF/`*`/`$` inserted, slices deleted or
repeated). For anything but a valid stream the client then half-closes, so the server must
answer and close: a socket read that waits longer than HANG_TIMEOUT_S is a hang and fails the
example. Whatever comes back must be whole RESP replies with at most one protocol error, as
the last one. After every example a long-lived control connection still gets `+PONG` and a
fresh, larger id, and at the end the daemon is alive and exits 0 on SIGTERM.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import Daemon, idgen_daemon
from tests.transcripts import (
    HANG_TIMEOUT_S,
    ConnectionClosed,
    Err,
    MalformedReply,
    RawClient,
    Status,
    command,
    parse_replies,
)

WORKER = 13
# What asyncio logs when a callback or task fails with nobody to tell: a server bug.
UNHANDLED_MARKERS = ("Task exception was never retrieved", "Exception in callback")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    proc = idgen_daemon(tmp_path_factory.mktemp("fuzz"), WORKER, host="127.0.0.6").start()
    try:
        yield proc
        assert proc.alive(), proc.log()
    finally:
        code = proc.stop()
        log = proc.log()
        assert code == 0, log
        for marker in UNHANDLED_MARKERS:
            assert marker not in log, log


class Control:
    """The long-lived connection that must keep working whatever the others send."""

    def __init__(self, proc: Daemon) -> None:
        self.client = RawClient(proc.host, proc.port)
        self.last_id = 0

    def check(self) -> None:
        assert self.client.call("PING") == Status("PONG")
        new = self.client.call("NEXT")
        assert isinstance(new, int) and new > self.last_id
        self.last_id = new


@pytest.fixture(scope="module")
def control(daemon: Daemon) -> Iterator[Control]:
    watcher = Control(daemon)
    watcher.check()
    yield watcher
    watcher.client.close()


# -- strategies ------------------------------------------------------------------------

_token = st.text("abcxyz019-_.", min_size=1, max_size=12)
_arg = st.one_of(_token, st.binary(max_size=40))
_ID = st.integers(min_value=-5, max_value=(1 << 63) + 5)

COMMANDS = st.one_of(
    st.just(["PING"]),
    st.tuples(st.just("PING"), _arg).map(list),
    st.tuples(st.just("ECHO"), _arg).map(list),
    st.just(["NEXT"]),
    st.tuples(st.just("NEXT"), st.integers(-2, 50).map(str)).map(list),
    st.tuples(st.just("PARSE"), _ID.map(str)).map(list),
    st.tuples(st.just("HELLO"), st.sampled_from(["2", "3", "4", "x"])).map(list),
    st.tuples(st.just("HELLO"), st.sampled_from(["2", "3"]), st.just("SETNAME"), _token).map(
        list
    ),
    st.tuples(st.just("CLIENT"), st.just("SETNAME"), _token).map(list),
    st.sampled_from(
        [
            ["CLIENT", "GETNAME"],
            ["CLIENT", "ID"],
            ["CLIENT", "INFO"],
            ["COMMAND", "COUNT"],
            ["COMMAND", "INFO", "next"],
            ["INFO", "idgen"],
            ["INFO", "nosuch"],
            ["SELECT", "0"],
            ["SELECT", "1"],
            ["AUTH", "pw"],
            ["IDGEN.WHOAMI"],
            ["QUIT"],
        ]
    ),
    st.tuples(st.just("CONFIG"), st.just("GET"), st.sampled_from(["*", "max*", "port"])).map(
        list
    ),
    st.lists(_arg, min_size=1, max_size=4),  # mostly unknown commands and arity errors
)

_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _inline_word(arg: bytes) -> bytes:
    if arg and all(b in _SAFE for b in arg):
        return arg
    return b'"' + b"".join(b"\\x%02x" % b for b in arg) + b'"'


def _as_bytes(arg: str | bytes) -> bytes:
    return arg if isinstance(arg, bytes) else arg.encode()


@st.composite
def valid_streams(draw: st.DrawFn) -> list[tuple[list[bytes], bytes]]:
    """Commands with their wire form, each either multibulk or inline."""
    out: list[tuple[list[bytes], bytes]] = []
    for args in draw(st.lists(COMMANDS, min_size=1, max_size=12)):
        words = [_as_bytes(a) for a in args]
        if not words[0]:
            words[0] = b"X"  # an empty inline line is no command at all
        if draw(st.booleans()):
            wire = command(*words)
        else:
            wire = b" ".join(_inline_word(w) for w in words) + draw(
                st.sampled_from([b"\r\n", b"\n"])
            )
        out.append((words, wire))
    return out


_NOISE = [b"*", b"$", b"\r\n", b"\r", b"\n", b"-", b"0", b"1", b"-1", b"3", b"99999",
          b"3000000000", b'"', b"'", b"\\", b"\\x4", b" ", b"PING", b"NEXT", b"ECHO",
          b"\x00", b"\xff"]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(wire for _, wire in draw(valid_streams())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat"]))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(_NOISE))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


noise_streams = st.lists(st.sampled_from(_NOISE), min_size=1, max_size=40).map(b"".join)


# -- the properties --------------------------------------------------------------------


def _exchange_and_close(proc: Daemon, payload: bytes) -> bytes:
    """Send, half-close, and read until the server closes; a hang fails."""
    with RawClient(proc.host, proc.port, timeout=HANG_TIMEOUT_S) as client:
        try:
            client.send(payload)
            client.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early (a protocol error); what it said is still readable
        try:
            return client.read_until_closed()
        except TimeoutError:
            pytest.fail(f"server hung for {HANG_TIMEOUT_S} s after {payload[:300]!r}")


def _check_replies(data: bytes, payload: bytes) -> list[object]:
    try:
        replies = parse_replies(data)
    except MalformedReply as exc:
        pytest.fail(f"broken framing ({exc}) in {data[:300]!r} for {payload[:300]!r}")
    for index, reply in enumerate(replies):
        if isinstance(reply, Err):
            assert "internal error" not in reply, (reply, payload)
            if reply.startswith("ERR Protocol error:"):
                assert index == len(replies) - 1, (replies, payload)
    return replies


FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(payload=st.one_of(st.binary(min_size=1, max_size=600), noise_streams, mutated_streams()))
def test_garbage_is_answered_or_closed(daemon: Daemon, control: Control, payload: bytes) -> None:
    _check_replies(_exchange_and_close(daemon, payload), payload)
    assert daemon.alive(), daemon.log()
    control.check()


def _expected_ok(words: list[bytes], reply: object) -> bool:
    """What a reply to a valid command must be, where the command fixes it."""
    name = words[0].upper()
    if isinstance(reply, Err) and "internal error" in reply:
        return False
    if name == b"PING" and len(words) == 1:
        return reply == Status("PONG")
    if name in (b"PING", b"ECHO") and len(words) == 2:
        return reply == words[1]
    if name == b"NEXT" and len(words) == 1:
        return isinstance(reply, int) and reply > 0
    if name == b"NEXT" and len(words) == 2:
        count = int(words[1])
        if 1 <= count <= 100_000:
            return isinstance(reply, list) and len(reply) == count
        return reply == Err("ERR count must be an integer between 1 and 100000")
    if name == b"QUIT":
        return reply == Status("OK")
    return True


@FUZZ_SETTINGS
@given(stream=valid_streams())
def test_valid_streams_get_every_reply(
    daemon: Daemon, control: Control, stream: list[tuple[list[bytes], bytes]]
) -> None:
    upto = next((i for i, (w, _) in enumerate(stream) if w[0].upper() == b"QUIT"), None)
    expected = stream if upto is None else stream[: upto + 1]
    with RawClient(daemon.host, daemon.port, timeout=HANG_TIMEOUT_S) as client:
        client.send(b"".join(wire for _, wire in stream))
        try:
            replies = client.read_replies(len(expected))
        except TimeoutError:
            pytest.fail(f"server hung for {HANG_TIMEOUT_S} s on {stream!r}")
        except ConnectionClosed as exc:
            pytest.fail(f"closed early ({exc}) on {stream!r}")
        if upto is not None:
            assert client.read_until_closed() == b""
    for (words, _), reply in zip(expected, replies, strict=True):
        assert _expected_ok(words, reply), (words, reply)
    ids: list[int] = []
    for (words, _), reply in zip(expected, replies, strict=True):
        if words[0].upper() == b"NEXT":
            ids.extend(reply if isinstance(reply, list) else [reply] if type(reply) is int else [])
    assert ids == sorted(set(ids))
    control.check()
