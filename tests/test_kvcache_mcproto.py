"""The memcached request parser: kvcache._mcproto against kvcache.mcproto_pure, its reference.

Hypothesis feeds both twins the same byte stream cut at the same random points (storage
lines with plain and quirky numbers, meta sets, multi-gets, big and oversized blocks, long
lines, noise) and checks that after every read they yield the same requests (compared field
by field), keep the same number of bytes buffered and agree on closing. A few fixed cases
pin the paths where the compiled parser reads a storage line itself against the ones it
hands to the reference. Last, the fast lane (`answer`: a read that is one plain get or
set): the twins agree on it whatever the parser holds, and where it answers, the general
request loop answers the same with the same counters and the same cache contents: single
gets, multi-gets and gets (hits, misses and expired items mixed, keys repeated, a key too
long, lines cut short) and sets.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcache import mcproto_pure
from kvcache.items import Mode
from kvcache.mcproto_pure import COLLECT_BLOCKS_OVER, Close, Reject, Store
from native import FORCE_PURE_ENV


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("kvcache._mcproto")
    except ImportError:
        return None


NATIVE = _import_native()
needs_native = pytest.mark.skipif(NATIVE is None,
                                  reason="kvcache._mcproto is not built (make native)")
IMPLS = [
    pytest.param(mcproto_pure, id="pure"),
    pytest.param(NATIVE, id="native", marks=needs_native),
]
ITEM_SIZE_MAX = 2048  # small, so oversized blocks are cheap to generate


def describe(request: object) -> object:
    """A request as plain data, so requests of the two twins compare with ==."""
    if isinstance(request, Store):
        meta = request.meta
        flags = None if meta is None else (meta.tokens, meta.key, meta.error, meta.mode)
        return ("store", request.command, request.key, request.flags, request.exptime,
                request.cas, request.noreply, request.data, request.too_large, request.size,
                flags)
    if isinstance(request, Reject):
        return ("reject", request.reply)
    if isinstance(request, Close):
        return ("close", request.reason)
    assert type(request) is list
    return ("line", *request)


def run(module: ModuleType, pieces: list[bytes], item_size_max: int = ITEM_SIZE_MAX,
        multiget_max: int = 64 * 1024) -> list[object]:
    """Every request, and the parser's state after each read."""
    parser = module.RequestParser(item_size_max, multiget_max)
    trace: list[object] = []
    for piece in pieces:
        parser.feed(piece)
        while (request := parser.next_request()) is not None:
            trace.append(describe(request))
        trace.append(("read", parser.buffered(), parser.closed))
    return trace


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for edge in edges:
        pieces.append(data[last:edge])
        last = edge
    pieces.append(data[last:])
    return pieces


# -- strategies -------------------------------------------------------------------------------
numbers = st.sampled_from([
    b"0", b"1", b"5", b"100", b"999999999", b"1000000000", b"4294967296", b"2147483647",
    b"2147483646", b"2147483645", b"-1", b"-0", b"+5", b"5x", b"x", b"\t5", b"5\t",
    b"18446744073709551615", b"18446744073709551616", b"000000000000000000003",
    b"99999999999999999", b"123456789012345678", b"1234567890123456789",
])
keys = st.sampled_from([b"k", b"key", b"a\tb", b"k" * 250, b"k" * 251, b"Zm9v", b"\xff"])
verbs = st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"ms",
                         b"get", b"gets", b"gat", b"mg", b"delete", b"SET", b"sets"])
sizes = st.sampled_from([0, 1, 3, 10, 100, ITEM_SIZE_MAX - 60, ITEM_SIZE_MAX,
                         COLLECT_BLOCKS_OVER + 5])
meta_flags = st.lists(st.sampled_from([b"T10", b"F5", b"Fx", b"q", b"b", b"MS", b"MX", b"I",
                                       b"O" + b"1" * 40, b"C3", b"v", b"Z", b"k"]),
                      max_size=4)
plain_meta_flags = st.lists(st.sampled_from([b"T10", b"F5", b"q", b"I", b"MS", b"C3"]),
                            max_size=3, unique=True)


@st.composite
def storage_line(draw: st.DrawFn) -> bytes:
    """A storage line with its block: well formed (half the time) or off somewhere."""
    verb = draw(verbs)
    size = draw(sizes)
    plain = draw(st.booleans())
    number = st.sampled_from([b"0", b"1", b"77", b"123456789"]) if plain else numbers
    length = st.just(b"%d" % size) if plain else numbers | st.just(b"%d" % size)
    key = draw(st.sampled_from([b"k", b"key"]) if plain else keys)
    if verb == b"ms":
        words = [verb, key, draw(length), *draw(plain_meta_flags if plain else meta_flags)]
    else:
        words = [verb, key, draw(number), draw(number), draw(length)]
        if verb == b"cas" or (not plain and draw(st.booleans())):
            words.append(draw(number))
    if draw(st.booleans()):
        words.append(b"noreply" if plain else draw(st.sampled_from([b"noreply", b"x"])))
    spaces = b" " if plain else draw(st.sampled_from([b" ", b"  ", b" \t"]))
    ending = draw(st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b"\x00 junk\r\n"]))
    block = b"v" * size + b"\r\n"
    if not plain:
        block = draw(st.sampled_from([block, b"v" * size + b"xy", b"", b"\r\n"]))
    return spaces.join(words) + ending + block


plain_lines = st.lists(st.sampled_from([b"get", b"gets", b"k", b"a b", b"", b"mn", b"\r"]),
                       max_size=6).map(b" ".join).map(lambda line: line + b"\r\n")
long_lines = st.sampled_from([
    b"x" * 3000, b"get " + b"k " * 2000 + b"\r\n", b" " * 101 + b"get k\r\n",
    b"gets " + b"key " * 600, b"x" * 16383 + b"\r\n", b"get " + b"k" * 40000 + b"\r\n",
    b"   get " + b"k " * 1200,
])
chunks = st.one_of(storage_line(), plain_lines, long_lines, st.binary(max_size=40))
streams = st.lists(chunks, max_size=10).map(b"".join)
cuts = st.lists(st.integers(0, 200_000), max_size=8)


@needs_native
@settings(max_examples=400, deadline=None)
@given(data=streams, points=cuts)
def test_twins_agree_on_any_stream_cut_anywhere(data: bytes, points: list[int]) -> None:
    pieces = cut(data, points)
    assert run(NATIVE, pieces) == run(mcproto_pure, pieces)


@needs_native
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), points=cuts)
def test_twins_agree_on_noise(data: bytes, points: list[int]) -> None:
    pieces = cut(data, points)
    assert run(NATIVE, pieces) == run(mcproto_pure, pieces)


@pytest.mark.parametrize("module", IMPLS)
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"set k 1 2 3\r\nabc\r\n",
         ("store", b"set", b"k", 1, 2, 0, False, b"abc", False, 3, None)),
        (b"cas k 1 2 3 99 noreply\r\nabc\r\n",
         ("store", b"cas", b"k", 1, 2, 99, True, b"abc", False, 3, None)),
        # a last word that is not `noreply` is accepted and ignored, as by memcached
        (b"set k 1 2 3 later\r\nabc\r\n",
         ("store", b"set", b"k", 1, 2, 0, False, b"abc", False, 3, None)),
        # numbers the C path leaves to the reference: wrapped, signed, padded
        (b"set k 4294967297 -1 3\r\nabc\r\n",
         ("store", b"set", b"k", 1, -1, 0, False, b"abc", False, 3, None)),
        (b"set k +1 2\t 3\r\nabc\r\n",
         ("store", b"set", b"k", 1, 2, 0, False, b"abc", False, 3, None)),
        (b"set k 0 0 3 noreply\r\nabcd\r\n",
         ("store", b"set", b"k", 0, 0, 0, True, None, False, 3, None)),
        (b"set k 0 0 4000\r\n",
         ("store", b"set", b"k", 0, 0, 0, False, None, True, 4000, None)),
        (b"set k 0 0 1000000000\r\n",
         ("store", b"set", b"k", 0, 0, 0, False, None, True, 1000000000, None)),
        (b"set k 0 0 2147483646\r\n", ("reject", b"CLIENT_ERROR bad command line format\r\n")),
        (b"set k 0 0 3 noreply extra\r\n", ("reject", b"ERROR\r\n")),
    ],
)
def test_storage_lines(module: ModuleType, line: bytes, expected: object) -> None:
    assert run(module, [line])[0] == expected


def test_the_compiled_twin_is_the_default() -> None:
    from kvcache import protocol

    forced = os.environ.get(FORCE_PURE_ENV, "") not in ("", "0")
    if forced or NATIVE is None:
        assert protocol.IMPLEMENTATION == "pure"
        assert protocol.RequestParser is mcproto_pure.RequestParser
    else:
        assert protocol.IMPLEMENTATION == "native"
        assert protocol.RequestParser is NATIVE.RequestParser


# -- the fast lane: answer ------------------------------------------------------------------
NOW = 1_750_000_000
STORED_KEYS = [b"k", b"key", b"a\tb", b"k" * 250, b"x\r"]
EXPIRED_KEY = b"old"  # stored already expired: a read reclaims it and counts get_expired
lane_keys = st.sampled_from([*STORED_KEYS, b"miss", b"k" * 251, b"", b"a b", b"a\x00b",
                             b"a\nget b", b" k", b"k ", EXPIRED_KEY])
# the keys of a multi-get, with the spaces between them (one or more, leading, trailing)
multi_keys = st.lists(st.tuples(st.sampled_from([b" ", b" ", b"  "]), lane_keys),
                      min_size=1, max_size=30).map(lambda pairs: b"".join(map(b"".join, pairs)))
get_reads = st.one_of(
    st.sampled_from([*STORED_KEYS, b"miss"]).map(lambda key: b"get " + key + b"\r\n"),
    st.tuples(st.sampled_from([b"get ", b"gets ", b"get  ", b"GET ", b"get", b"gat 0 "]),
              lane_keys, st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b"", b"\r\nget k\r\n"]))
    .map(b"".join),
    st.tuples(st.sampled_from([b"get", b"gets", b"get", b"gets", b"gat 0"]), multi_keys,
              st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"", b"\r\nget k\r\n"]))
    .map(b"".join),
)
set_reads = st.tuples(
    st.sampled_from([b"set ", b"set ", b"set  ", b"add ", b"set"]),
    lane_keys,
    st.sampled_from([b" 0 0", b" 7 100", b" 123456789 2592001", b" 1234567890 0", b" -1 0",
                     b" 0 -1", b"  0 0", b" 0", b" 0 0 0", b" 4294967295 0"]),
    st.binary(max_size=12),  # the value
    st.sampled_from([0, 0, 0, 1, -1, 9000]),  # the announced length minus the real one
    st.sampled_from([b"\r\n", b"\r\n", b"\n", b" noreply\r\n", b"\r\r\n"]),
    st.sampled_from([b"\r\n", b"\r\n", b"xx", b"\r\nget k\r\n", b"", b"\r"]),
).map(lambda t: t[0] + t[1] + t[2] + b" %d" % (len(t[3]) + t[4]) + t[5] + t[3] + t[6])
lane_reads = st.one_of(get_reads, set_reads, st.binary(max_size=20))
# What the parser holds before the read: nothing, a consumed line, a partial line, a set
# waiting for its block, a block being swallowed, a closed stream.
lane_before = st.sampled_from([b"", b"version\r\n", b"", b"get", b"set k 0 0 3\r\n",
                               b"set k 0 0 5000\r\n", b"x" * 3000])


def _cache() -> Any:
    from kvcache.storage import Storage

    storage = Storage(1 << 20, ITEM_SIZE_MAX, NOW)
    for number, key in enumerate(STORED_KEYS):
        storage.store(Mode.SET, key, b"v%d" % number, number * 1000, 0, 0)
    storage.store(Mode.SET, EXPIRED_KEY, b"gone", 0, NOW - 1, 0)
    return storage


def _effects(storage: Any) -> tuple[object, ...]:
    """The counters a get or set moves, and what the cache holds (with each item's CAS and
    LRU bump: fetched or active)."""
    stats = storage.stats
    slab = stats.slab
    return (stats.get_cmds, stats.get_misses, stats.get_expired, list(slab.get_hits),
            list(slab.hits_to_hot), list(slab.hits_to_warm), list(slab.hits_to_cold),
            list(slab.set_cmds), stats.store_no_memory,
            sorted((i.key, i.value, i.flags, i.exptime, i.casbits) for i in storage.items()))


def _lane(module: ModuleType, before: bytes, data: bytes) -> tuple[object, ...]:
    """answer's reply, its effects, and what the parser yields afterwards."""
    storage = _cache()
    parser = module.RequestParser(ITEM_SIZE_MAX)
    parser.feed(before)
    while parser.next_request() is not None:
        pass
    reply = module.answer(parser, data, storage)
    if reply is None:
        parser.feed(data)
    later = []
    parser.feed(b"version\r\n")
    while (request := parser.next_request()) is not None:
        later.append(describe(request))
    return reply, _effects(storage), later, parser.buffered(), parser.closed


@needs_native
@settings(max_examples=300, deadline=None)
@given(before=lane_before, data=lane_reads)
def test_twins_agree_on_the_fast_lane(before: bytes, data: bytes) -> None:
    assert _lane(NATIVE, before, data) == _lane(mcproto_pure, before, data)


@pytest.mark.parametrize("module", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=lane_reads)
def test_fast_lane_answers_as_the_request_loop_does(module: ModuleType, data: bytes) -> None:
    """Where the lane answers, the engine given the same read answers the same, with the
    same counters and cache contents; where it declines, it did nothing."""
    from kvcache.commands import execute
    from kvcache.engine import Engine
    from kvcache.settings import Settings

    lane_storage = _cache()
    untouched = _effects(lane_storage)
    reply = module.answer(module.RequestParser(ITEM_SIZE_MAX), data, lane_storage)
    storage = _cache()
    engine = Engine(storage, Settings(item_size_max=ITEM_SIZE_MAX, maxbytes=1 << 20))
    parser = module.RequestParser(ITEM_SIZE_MAX)
    parser.feed(data)
    replies = [execute(engine, request) for request in iter(parser.next_request, None)]
    if reply is None:
        assert _effects(lane_storage) == untouched
        return
    assert replies == [reply]
    assert parser.buffered() == 0
    assert _effects(lane_storage) == _effects(storage)


@pytest.mark.parametrize("module", IMPLS)
def test_fast_lane_bounds_a_multi_get(module: ModuleType) -> None:
    """Past LANE_MAX_KEYS keys, or a line longer than LANE_LINE_BYTES, the lane declines
    and touches nothing; up to them it answers. A reply it answers is never bigger than a
    piece of the loop's streamed ones."""
    from kvcache.commands import STREAM_CHUNK_BYTES

    assert mcproto_pure.LANE_REPLY_BYTES <= STREAM_CHUNK_BYTES
    storage = _cache()
    untouched = _effects(storage)
    most = mcproto_pure.LANE_MAX_KEYS
    for data in (b"get" + b" k" * (most + 1) + b"\r\n",
                 b"gets k " + b" " * mcproto_pure.LANE_LINE_BYTES + b"\r\n"):
        assert module.answer(module.RequestParser(ITEM_SIZE_MAX), data, storage) is None
    assert _effects(storage) == untouched
    reply = module.answer(module.RequestParser(ITEM_SIZE_MAX), b"get" + b" k" * most + b"\r\n",
                          storage)
    assert reply == b"VALUE k 0 2\r\nv0\r\n" * most + b"END\r\n"
    assert storage.stats.get_cmds == most


def _twin_stores() -> list[Any]:
    """Both storage twins (the compiled one if built), each holding 40 items of one size
    (so the older ones sit in COLD) and one expired."""
    from kvcache import storage_pure

    twins = [storage_pure.Storage]
    try:
        twins.append(importlib.import_module("kvcache._kvstore").Storage)
    except ImportError:
        pass
    stores = []
    for twin in twins:
        storage = twin(1 << 20, ITEM_SIZE_MAX, NOW)
        for number in range(40):
            storage.store(Mode.SET, b"k%d" % number, b"v" * 100, number, 0, 0)
        storage.store(Mode.SET, EXPIRED_KEY, b"gone", 0, NOW - 1, 0)
        stores.append(storage)
    return stores


@settings(max_examples=100, deadline=None)
@given(reads=st.lists(st.tuples(
    st.lists(st.sampled_from([b"k%d" % n for n in range(0, 40, 3)] + [b"miss", EXPIRED_KEY]),
             min_size=1, max_size=12),
    st.booleans(), st.sampled_from([1 << 20, 1000, 200])), min_size=1, max_size=5))
def test_storage_twins_agree_on_multi_gets(
        reads: list[tuple[list[bytes], bool, int]]) -> None:
    """get_many_reply on both storage twins: the same replies (None past `most`), and the
    same counters, per class and per LRU segment, and items (CAS, fetched) after each."""
    seen = []
    for storage in _twin_stores():
        trace = []
        for keys, with_cas, most in reads:
            trace.append((storage.reply_bound(keys), storage.get_many_reply(keys, with_cas, most),
                          _effects(storage), list(storage.stats.slab.moves_to_warm)))
        seen.append(trace)
    assert all(trace == seen[0] for trace in seen[1:])
