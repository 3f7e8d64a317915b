"""The connection's read callback (`Lane`), both twins, with a recording transport.

The server installs `Lane.data_received` as each connection's read callback: a read the
lane answers is written and counted there; any other read, and every read while the lane is
closed (connection not admitted, streaming, paused) or `verbosity 2` traces commands, goes
to the fallback untouched. Hypothesis sends both twins the same reads and compares what
each wrote, handed on and counted; and it cuts streams of gets, multi-gets, gets and sets at
random points and checks that a lane in front of the real request loop writes and counts
exactly what the loop alone does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcache import mcproto_pure
from kvcache.commands import execute
from kvcache.engine import Engine, Stream
from kvcache.items import Mode
from kvcache.settings import Settings
from kvcache.storage import Storage

ITEM_SIZE_MAX = 1024 * 1024
NOW = 1_750_000_000
BIG = b"b" * (200 * 1024)  # two of these make a reply the request loop streams


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("kvcache._mcproto")
    except ImportError:
        return None


NATIVE = _import_native()
IMPLS = [pytest.param(mcproto_pure, id="pure"),
         pytest.param(NATIVE, id="native", marks=pytest.mark.skipif(
             NATIVE is None, reason="kvcache._mcproto is not built (make native)"))]


class Transport:
    """Records writes; `closing` as asyncio's is_closing()."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.written.append(tuple(parts))  # one gathered write, its pieces kept apart

    def is_closing(self) -> bool:
        return self.closing


class Harness:
    """A lane over a small cache, its transport, and what reached the fallback."""

    def __init__(self, module: ModuleType, verbose: int = 0,
                 fallback: Callable[[bytes], None] | None = None) -> None:
        self.storage = Storage(4 << 20, ITEM_SIZE_MAX, NOW)
        self.storage.store(Mode.SET, b"k", b"value", 3, 0)
        self.storage.store(Mode.SET, b"big", BIG, 0, 0)
        self.storage.store(Mode.SET, b"old", b"gone", 0, NOW - 1)  # expired
        self.parser = module.RequestParser(ITEM_SIZE_MAX)
        self.pinned: set[Any] = {object()}
        self.handed: list[bytes] = []
        self.transport = Transport()
        self.lane = module.Lane(self.parser, self.storage, Settings(verbose=verbose),
                                self.pinned, fallback or self.handed.append)

    def seen(self) -> tuple[object, ...]:
        stats = self.storage.stats
        return (self.transport.written, self.handed, stats.bytes_read, stats.bytes_written,
                stats.get_cmds, stats.get_misses, stats.get_expired, list(stats.slab.get_hits),
                list(stats.slab.set_cmds), len(self.pinned), self.lane.last_command)


reads = st.one_of(
    st.sampled_from([b"get k\r\n", b"get miss\r\n", b"set k 1 0 2\r\nab\r\n",
                     b"set n 0 0 1\r\nx\r\n", b"get k\r\nget k\r\n", b"set k 0 0 1\r\n",
                     b"version\r\n", b"gets k\r\n", b"get k miss old k\r\n",
                     b"gets  miss k \r\n", b"get big big\r\n", b"get k " + b"x" * 251 + b"\r\n",
                     b"get k miss\r\nget k\r\n", b"gets k miss\n", b"get k\x00 miss\r\n"]),
    st.binary(max_size=16),
)


@pytest.mark.parametrize("module", IMPLS)
def test_answers_plain_reads_and_hands_on_the_rest(module: ModuleType) -> None:
    h = Harness(module)
    h.lane.data_received(b"get k\r\n")  # closed until attached: handed on
    h.lane.attach(h.transport)
    h.lane.data_received(b"get k\r\n")
    h.lane.data_received(b"set n 0 0 1\r\nx\r\n")
    h.lane.data_received(b"get k\r\nversion\r\n")  # not only simple commands: the loop's
    assert h.transport.written == [b"VALUE k 3 5\r\nvalue\r\nEND\r\n", b"STORED\r\n"]
    assert h.handed == [b"get k\r\n", b"get k\r\nversion\r\n"]
    stats = h.storage.stats
    assert stats.bytes_read == 7 + 16  # only what the lane answered; the loop counts its own
    assert stats.bytes_written == 25 + 8
    assert not h.pinned  # a write is a write point: the items a pipeline held are released


@pytest.mark.parametrize("module", IMPLS)
def test_answers_multi_gets_and_hands_on_big_ones(module: ModuleType) -> None:
    h = Harness(module)
    h.lane.attach(h.transport)
    h.lane.data_received(b"get k miss old k\r\n")
    h.lane.data_received(b"gets k\r\n")
    h.lane.data_received(b"get big k\r\n")  # one big value: a reply it can hold
    h.lane.data_received(b"get big big\r\n")  # over what the loop streams: the loop's
    value = b"VALUE k 3 5\r\nvalue\r\n"
    cas = h.storage.find(b"k").cas
    assert h.transport.written == [
        value + value + b"END\r\n", b"VALUE k 3 5 %d\r\nvalue\r\nEND\r\n" % cas,
        b"VALUE big 0 %d\r\n%s\r\n" % (len(BIG), BIG) + value + b"END\r\n"]
    assert h.handed == [b"get big big\r\n"]
    stats = h.storage.stats
    assert (stats.get_cmds, stats.get_misses, stats.get_expired) == (7, 2, 1)


@pytest.mark.parametrize("module", IMPLS)
def test_closed_traced_closing_and_released(module: ModuleType) -> None:
    traced = Harness(module, verbose=2)
    traced.lane.attach(traced.transport)
    traced.lane.data_received(b"get k\r\n")  # -vv traces every command: the loop's
    assert traced.handed == [b"get k\r\n"] and not traced.transport.written
    h = Harness(module)
    h.lane.attach(h.transport)
    h.lane.open = False  # streaming or paused
    h.lane.data_received(b"get k\r\n")
    h.transport.closing = True
    h.lane.send(b"late")
    assert h.handed == [b"get k\r\n"] and not h.transport.written
    h.lane.release()
    h.lane.data_received(b"get k\r\n")  # after connection_lost: nothing happens
    assert h.handed == [b"get k\r\n"] and h.storage.stats.get_cmds == 0


@pytest.mark.parametrize("module", IMPLS)
def test_send_parts_is_one_gathered_write_point(module: ModuleType) -> None:
    h = Harness(module)
    h.lane.attach(h.transport)
    h.lane.send_parts([BIG, b"END\r\n"], len(BIG) + 5)
    assert h.transport.written == [(BIG, b"END\r\n")]  # the pieces, not a joined copy
    assert h.storage.stats.bytes_written == len(BIG) + 5
    assert not h.pinned
    h.transport.closing = True
    h.lane.send_parts([b"late"], 4)
    assert len(h.transport.written) == 1 and h.storage.stats.bytes_written == len(BIG) + 5


@pytest.mark.skipif(NATIVE is None, reason="kvcache._mcproto is not built (make native)")
@settings(max_examples=150, deadline=None)
@given(data=st.lists(st.tuples(reads, st.booleans()), max_size=8))
def test_twins_agree(data: list[tuple[bytes, bool]]) -> None:
    seen = []
    for module in (NATIVE, mcproto_pure):
        h = Harness(module)
        h.lane.attach(h.transport)
        for read, open_ in data:
            h.lane.open = open_
            h.lane.data_received(read)
        seen.append(h.seen())
    assert seen[0] == seen[1]


class Loop(Harness):
    """A lane in front of the real request loop (kvcache/server.py's Connection._read and
    _process, without sockets); `lane=False` keeps the lane closed: the loop alone."""

    def __init__(self, module: ModuleType, lane: bool) -> None:
        super().__init__(module, fallback=self.read)
        self.engine = Engine(self.storage, Settings(item_size_max=ITEM_SIZE_MAX))
        self.lane.attach(self.transport)
        self.lane.open = lane

    def read(self, data: bytes) -> None:
        self.storage.stats.bytes_read += len(data)
        self.parser.feed(data)
        out = []
        while (request := self.parser.next_request()) is not None:
            reply = execute(self.engine, request)
            out.append(b"".join(reply.chunks) if isinstance(reply, Stream) else reply)
        if any(out):
            self.lane.send(b"".join(out))

    def outcome(self) -> tuple[object, ...]:
        stats = self.storage.stats
        slab = stats.slab
        written = (b"".join(w) if isinstance(w, tuple) else w for w in self.transport.written)
        return (b"".join(written), stats.bytes_read, stats.bytes_written,
                stats.get_cmds, stats.get_misses, stats.get_expired, list(slab.get_hits),
                list(slab.hits_to_hot), list(slab.hits_to_warm), list(slab.hits_to_cold),
                list(slab.set_cmds),
                sorted((i.key, i.value, i.flags, i.casbits) for i in self.storage.items()))


requests = st.lists(st.sampled_from([
    b"get k\r\n", b"get k miss old k\r\n", b"gets k miss\r\n", b"get  k  k \r\n",
    b"get big big\r\n", b"get big k\r\n", b"gets k " + b"x" * 251 + b"\r\n",
    b"set k 5 0 3\r\nabc\r\n", b"set n 0 0 1\r\nx\r\n", b"get n k\n", b"version\r\n",
    b"gets n\r\n", b"get " + b"k " * 30 + b"\r\n"]), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(stream=requests, points=st.lists(st.integers(min_value=0), max_size=6))
def test_split_reads_answer_as_the_request_loop_does(stream: list[bytes],
                                                     points: list[int]) -> None:
    """However a stream of requests is cut into reads, each twin's lane in front of the
    loop writes the same bytes and counts the same as the loop alone."""
    data = b"".join(stream)
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    reads = [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    outcomes = []
    for module, lane in ((mcproto_pure, False), (mcproto_pure, True), (NATIVE, True)):
        if module is None:
            continue
        loop = Loop(module, lane)
        for read in reads:
            loop.lane.data_received(read)
        outcomes.append(loop.outcome())
    assert all(outcome == outcomes[0] for outcome in outcomes[1:])
