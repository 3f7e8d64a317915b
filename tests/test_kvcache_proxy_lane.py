"""The proxy's fast lane (kvcache/proxylane_pure.py and its compiled twin kvcache._proxylane):
a client read that is one plain get or set skips the parser, and backend replies of the
plainest form are cut straight from a read's bytes.

Hypothesis, sans-I/O: the twins agree on every input (`lane_request`, `quick_take` at any
position and shape, `deliver`, `Answer` completed either way and read); a read the lane
takes parses to exactly that one request and leaves the parser idle; after any cut of a
stream of requests, a parser holding no byte that `may_hold_a_block` does not suspect is
idle; whatever `quick_take` reads, the framer (kvcache/proxy_wire.py) reads the same replies
from the same bytes. Then real processes: a header read alone, its block (which reads like a
get) next; a refused too-large set whose swallowed bytes hold gets; each through the proxy
beside a kvcache server and memcached (when installed).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcache import proxylane_pure
from kvcache.mcproto_pure import RequestParser, Store, _idle
from kvcache.proxy_wire import LINE, META, VALUES, WHOLE_VALUES, ReplyFramer
from kvcache.settings import DEFAULT_ITEM_SIZE_MAX
from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon, kvcache_daemon

READ_TIMEOUT_S = 20.0
PAUSE_S = 0.05
MEMCACHED = shutil.which("memcached")


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("kvcache._proxylane")
    except ImportError:
        return None


NATIVE = _import_native()
needs_native = pytest.mark.skipif(NATIVE is None,
                                  reason="kvcache._proxylane is not built (make native)")
IMPLS = [
    pytest.param(proxylane_pure, id="pure"),
    pytest.param(NATIVE, id="native", marks=needs_native),
]

_keys = st.binary(min_size=0, max_size=12).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"a", b"k" * 250, b"k" * 251, b"a b", b"a\rb", b"a\0", b""])
_numbers = st.sampled_from([b"0", b"7", b"00", b"4294967295", b"123456789", b"1234567890",
                            b"-1", b"x", b"", b"1 "])


@st.composite
def _reads(draw: st.DrawFn) -> bytes:
    """Reads near the lane's shapes: gets, sets with right and wrong sizes, noise."""
    key = draw(_keys)
    kind = draw(st.sampled_from(["get", "set", "other"]))
    if kind == "get":
        return b"get " + key + draw(st.sampled_from([b"\r\n", b"\n", b"", b" \r\n", b"\r"]))
    if kind == "set":
        value = draw(st.binary(max_size=20))
        size = draw(st.sampled_from([b"%d" % len(value), b"%d" % (len(value) + 1), b"0",
                                     b"0%d" % len(value)]))
        words = [b"set", key, draw(_numbers), draw(_numbers), size]
        if draw(st.booleans()):
            words.append(b"noreply")
        tail = draw(st.sampled_from([b"\r\n", b"\r\nget x\r\n", b"", b"\n", b"\r"]))
        return b" ".join(words) + b"\r\n" + value + tail
    return draw(st.binary(max_size=40))


@settings(max_examples=200, deadline=None)
@given(_reads(), st.sampled_from([0, 5, 20, DEFAULT_ITEM_SIZE_MAX]))
@needs_native
def test_the_twins_agree_on_the_lane(data: bytes, value_max: int) -> None:
    assert NATIVE is not None
    assert NATIVE.lane_request(data, value_max) == proxylane_pure.lane_request(data, value_max)
    held = bool(value_max & 1)
    assert NATIVE.may_hold_a_block(data, held) == proxylane_pure.may_hold_a_block(data, held)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=_reads())
def test_a_read_the_lane_takes_parses_to_that_one_request(impl: ModuleType, data: bytes
                                                          ) -> None:
    parser = RequestParser(DEFAULT_ITEM_SIZE_MAX)
    taken = impl.lane_request(data, parser.lane_value_max)
    if taken is None:
        return
    key, store = taken
    parser.feed(data)
    request = parser.next_request()
    assert parser.next_request() is None and _idle(parser)
    if store:
        assert isinstance(request, Store)
        assert (request.command, request.key, request.noreply, request.too_large) == (
            b"set", key, False, False)
        assert request.data is not None and data.endswith(request.data + b"\r\n")
    else:
        assert request == [b"get", key]


_requests = st.sampled_from([
    b"get a\r\n", b"set a 0 0 1\r\n1\r\n", b"set a 0 0 9\r\nget foo\r\n\r\n",
    b"set big 0 0 2000000\r\n", b"x" * 30 + b"\r\n", b"set a 0 0 -1\r\n", b"ms a 2\r\nhi\r\n",
    b"ms a 3 q\r\n", b"delete a\r\n", b"get a b c\r\n", b"set a 0 0 3 noreply\r\nabc\r\n",
    b"\0set\r\n", b"  set a 0 0 1\r\nz\r\n", b"set a 0 0 4\r\nset \r\n",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(_requests, min_size=1, max_size=8), st.lists(st.integers(1, 40), max_size=8))
def test_an_idle_looking_parser_is_idle(requests: list[bytes], cuts: list[int]) -> None:
    """Whatever the cut of the stream into reads, a parser that holds no bytes and that
    `may_hold_a_block` does not suspect waits for no block and swallows nothing."""
    stream = b"".join(requests) + b"get z\r\n" * 3
    parser = RequestParser(DEFAULT_ITEM_SIZE_MAX)
    pos = 0
    swallowing = False  # as the proxy keeps it: set by each request the parser returns
    for cut in [*cuts, len(stream)]:
        data = stream[pos:pos + cut]
        if not data:
            break
        pos += len(data)
        held_before = parser.buffered() > 0
        parser.feed(data)
        while (request := parser.next_request()) is not None:
            swallowing = type(request) is not list and (
                not isinstance(request, Store) or request.too_large)
        suspect = proxylane_pure.may_hold_a_block(data, held_before)
        if parser.buffered() == 0 and not swallowing and not suspect:
            assert _idle(parser), (data, parser._pending, parser._swallow)


_replies = st.sampled_from([
    b"STORED\r\n", b"NOT_STORED\r\n", b"DELETED\r\n", b"42\r\n", b"END\r\n", b"OK\r\n",
    b"VALUE a 0 1\r\n1\r\n", b"VALUE bb 5 3 77\r\nxyz\r\n", b"VALUE c 0 2\r\n\r\n\r\n",
    b"VALUE d 0 x\r\n", b"VALUE e 0 3\r\nab\r\n", b"SERVER_ERROR out of memory\r\n",
    b"ERROR\r\n", b"bogus\r\n", b"VALUE f 0 1 2 3\r\nz\r\n", b"END\r", b"\r\n",
    b"VALUE g  0 1\r\nz\r\n", b"VALUE h 0 00000000000000000000001\r\nz\r\n",
    b"VALUE i 0 1 x\r\nz\r\n", b"VALUE j 0 99999999999999999999\r\n", b"VERSION 1\r\n",
    b"VALUE k 0 1\r\nzz\r\n", b"4x\r\n", b"VALUE\r\n", b"\r\r\n",
])
_shapes = st.sampled_from([LINE, WHOLE_VALUES, VALUES, META])


@settings(max_examples=250, deadline=None)
@given(st.lists(_replies, max_size=6), st.integers(0, 80), st.integers(0, 40), _shapes)
@needs_native
def test_the_twins_agree_on_quick_replies(pieces: list[bytes], cut: int, pos: int,
                                          shape: str) -> None:
    assert NATIVE is not None
    data = b"".join(pieces)[:cut] if cut else b"".join(pieces)
    assert NATIVE.quick_take(data, pos, shape) == proxylane_pure.quick_take(data, pos, shape)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=250, deadline=None)
@given(pieces=st.lists(_replies, max_size=6), cut=st.integers(0, 80),
       shapes=st.lists(st.sampled_from([LINE, WHOLE_VALUES]), min_size=1, max_size=4))
def test_quick_replies_are_the_framers(impl: ModuleType, pieces: list[bytes], cut: int,
                                       shapes: list[str]) -> None:
    """Whatever `quick_take` reads from a read's bytes, the framer reads the same replies
    from them, and it ends where the framer's does."""
    data = b"".join(pieces)[:cut] if cut else b"".join(pieces)
    framer = ReplyFramer()
    framer.feed(data)
    pos = 0
    for shape in shapes:
        quick = impl.quick_take(data, pos, shape)
        if quick is None:
            return
        reply, pos = quick
        assert framer.take(shape) == reply
        assert framer.buffered() == len(data) - pos
        assert framer.idle() == (pos == len(data))


class _Waiter:
    """A waiter that records its reply."""

    def __init__(self) -> None:
        self.replies: list[object] = []

    def done(self) -> bool:
        return False

    def set_result(self, reply: object) -> None:
        self.replies.append(reply)


class _Cancelled(_Waiter):
    """A future already done (cancelled): `deliver` takes its reply and hands it nothing."""

    def done(self) -> bool:
        return True


def _deliver(impl: ModuleType, data: bytes, shapes: list[str], cancelled: int
             ) -> tuple[object, ...]:
    waiters = [_Cancelled() if i == cancelled else _Waiter() for i in range(len(shapes))]
    pending = deque((w, shape, 0.0, 0) for w, shape in zip(waiters, shapes, strict=True))
    pos, taken = impl.deliver(data, pending, _Cancelled)
    return pos, taken, len(pending), [w.replies for w in waiters]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=250, deadline=None)
@given(pieces=st.lists(_replies, max_size=6), cut=st.integers(0, 80), cancelled=st.integers(0, 4),
       shapes=st.lists(st.sampled_from([LINE, WHOLE_VALUES, META]), min_size=0, max_size=4))
def test_deliver_is_quick_take_for_each_waiter(impl: ModuleType, pieces: list[bytes], cut: int,
                                               cancelled: int, shapes: list[str]) -> None:
    """`deliver` takes, oldest first, exactly the replies successive `quick_take`s read, and
    hands each to its waiter (none to a done future); the twins agree."""
    data = b"".join(pieces)[:cut] if cut else b"".join(pieces)
    pos, taken, left, replies = _deliver(impl, data, shapes, cancelled)
    expected_pos, expected = 0, []
    for shape in shapes:
        quick = proxylane_pure.quick_take(data, expected_pos, shape)
        if quick is None:
            break
        expected.append(quick[0])
        expected_pos = quick[1]
    assert (pos, taken, left) == (expected_pos, len(expected), len(shapes) - len(expected))
    assert replies == [[] if i == cancelled or i >= taken else [expected[i]]
                       for i in range(len(shapes))]
    if impl is not proxylane_pure:
        assert (pos, taken, left, replies) == _deliver(proxylane_pure, data, shapes, cancelled)


def test_quick_take_passes_a_whole_read_on_without_a_copy() -> None:
    for impl in (proxylane_pure, NATIVE):
        if impl is None:
            continue
        data = b"VALUE a 0 1\r\n1\r\nEND\r\n"
        got = impl.quick_take(data, 0, WHOLE_VALUES)
        assert got == ((data, 1), len(data)) and got[0][0] is data


class _Counters:
    def __init__(self) -> None:
        self.proxy_errors = self.get_hits = self.get_misses = 0


class _Failure(Exception):
    line = b"SERVER_ERROR backend timeout\r\n"


def _run_answer(impl: ModuleType, silent: bool, keys: int, outcome: object,
                notified: bool) -> tuple[object, ...]:
    answer = impl.Answer(silent, keys)
    seen: list[object] = []
    if notified:
        answer.notify = seen.append
    before = (answer.done(), answer.fut, answer.barrier, answer.waiting)
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
    counters = _Counters()
    reply = answer.result(counters)
    return (before, answer.done(), answer.waiting, reply, vars(counters),
            [s is answer for s in seen])


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.integers(0, 5), st.booleans(), st.integers(0, 5), st.binary(max_size=8),
       st.sampled_from(["reply", "failure"]))
@needs_native
def test_the_twins_agree_on_answers(silent: bool, keys: int, notified: bool, hits: int,
                                    data: bytes, kind: str) -> None:
    outcome: object = _Failure() if kind == "failure" else (
        (data, min(hits, keys)) if keys else data)
    assert NATIVE is not None
    assert (_run_answer(NATIVE, silent, keys, outcome, notified)
            == _run_answer(proxylane_pure, silent, keys, outcome, notified))


# -- real processes --------------------------------------------------------------------------
class Peers:
    """A proxy over two kvcache servers, one kvcache server, and memcached if installed."""

    def __init__(self, tmp: Path) -> None:
        self.daemons = [kvcache_daemon(tmp, host=h).start() for h in ("127.0.0.2", "127.0.0.3")]
        port = find_free_port()
        argv = ["kvcache", "proxy", "-l", "127.0.0.1", "-p", str(port), "--servers",
                ",".join(d.address for d in self.daemons), "--timeout", str(READ_TIMEOUT_S)]
        self.daemons.append(Daemon(argv, "127.0.0.1", port, tmp / "proxy.log").start())
        self.addresses = {"proxy": ("127.0.0.1", port),
                          "kvcache": (self.daemons[0].host, self.daemons[0].port)}
        self.memcached: subprocess.Popen[bytes] | None = None
        if MEMCACHED is not None:
            port = find_free_port()
            argv = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
            if os.geteuid() == 0:
                argv += ["-u", "root"]
            self.memcached = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
            wait_for_tcp_port("127.0.0.1", port, timeout=20, proc=self.memcached)
            self.addresses["memcached"] = ("127.0.0.1", port)

    def close(self) -> None:
        if self.memcached is not None:
            self.memcached.terminate()
            self.memcached.wait(timeout=10)
        for daemon in reversed(self.daemons):
            assert daemon.stop() == 0, daemon.log()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    peers = Peers(tmp_path_factory.mktemp("lane"))
    try:
        yield peers
    finally:
        peers.close()


def _talk(address: tuple[str, int], reads: list[bytes], until: bytes) -> bytes:
    """Each read sent alone (TCP_NODELAY: one segment each, as far as the kernel goes),
    then read until the replies hold `until` and end a line."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in reads:
            sock.sendall(data)
            time.sleep(PAUSE_S)  # most likely its own read at the peer (not asserted)
        got = b""
        while until not in got or not got.endswith(b"\r\n"):
            chunk = sock.recv(1 << 16)
            assert chunk, got
            got += chunk
    return got


def test_a_block_that_reads_like_a_get(peers: Peers) -> None:
    """`set k 0 0 7` alone, then `get foo` (the block), then a get: STORED, the value."""
    for name, address in peers.addresses.items():
        key = b"lane-block-" + name.encode()
        reads = [b"set %s 0 0 7\r\n" % key, b"get foo\r\n", b"get %s\r\n" % key]
        got = _talk(address, reads, b"END")
        assert got == b"STORED\r\nVALUE %s 0 7\r\nget foo\r\nEND\r\n" % key, name


def test_swallowed_bytes_that_read_like_a_get(peers: Peers) -> None:
    """A set refused for size, whose swallowed block holds `get k` lines: not answered."""
    size = 2 * 1024 * 1024
    for name, address in peers.addresses.items():
        key = b"lane-swallow-" + name.encode()
        header = b"set %s 0 0 %d\r\n" % (key, size)
        line = b"get %s\r\n" % key
        block = line * (size // len(line)) + b"x" * (size % len(line)) + b"\r\n"
        reads = [b"set %s 0 0 1\r\n1\r\n" % key, header, *[block[i:i + 65536] for i in
                 range(0, len(block), 65536)], b"get %s\r\n" % key, b"version\r\n"]
        got = _talk(address, reads, b"VERSION ")
        assert got.startswith(b"STORED\r\nSERVER_ERROR object too large for cache\r\n"
                              b"END\r\nVERSION "), (name, got[:300])


def test_lane_and_parser_reads_interleave_in_order(peers: Peers) -> None:
    """Reads the lane takes (one get or set each) between reads the parser takes (a
    pipeline, a noreply set, a multi-get): every reply in request order."""
    address = peers.addresses["proxy"]
    reads = [b"set ln:a 0 0 1\r\nA\r\n", b"get ln:a\r\nget ln:b\r\n",
             b"set ln:b 0 0 1 noreply\r\nB\r\n", b"get ln:b\r\n", b"get ln:a ln:b ln:c\r\n",
             b"set ln:c 1 0 1\r\nC\r\n", b"get ln:c\r\n", b"version\r\n"]
    got = _talk(address, reads, b"VERSION ")
    a, b, c = (b"VALUE ln:a 0 1\r\nA\r\n", b"VALUE ln:b 0 1\r\nB\r\n",
               b"VALUE ln:c 1 1\r\nC\r\n")
    assert got == (b"STORED\r\n" + a + b"END\r\nEND\r\n" + b + b"END\r\n" + a + b
                   + b"END\r\nSTORED\r\n" + c + b"END\r\nVERSION 1.6.18-proxy\r\n")
