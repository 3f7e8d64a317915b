"""Hypothesis against the parser, the engine and a live daemon.

- The parser (both twins: kvcache._mcproto and kvcache.mcproto_pure) takes any bytes in any
  chunking without raising: it yields requests, or needs
  more data, or decides to close, and after closing yields nothing more.
- Chunking does not change what a stream means (while no line is long enough for the
  2048-byte rule, which depends on how bytes arrive, in memcached too).
- The engine runs whatever the parser yields without raising and keeps its accounting.
- A live daemon fed random and mutated streams answers or closes that connection, and keeps
  serving another one.
- Well-formed random command streams get the same replies from kvcache and memcached.
"""

from __future__ import annotations

import os
import socket
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcache.commands import execute
from kvcache.engine import Closing, Engine, Stream
from kvcache.items import item_cost
from kvcache.protocol import Close, Reject, Store
from kvcache.settings import Settings
from kvcache.storage import Storage
from tests.kvcache_wire import Memcached, masked, reference_missing, request, stat_values
from tests.procs import kvcache_daemon
from tests.test_kvcache_mcproto import IMPLS

NOW = 1_750_000_000
ITEM_SIZE_MAX = 4096
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the daemons are shared on purpose
# KVCACHE_FUZZ_EXAMPLES=5000 for a long hunt; CI keeps it short.
DIFFERENTIAL_EXAMPLES = int(os.environ.get("KVCACHE_FUZZ_EXAMPLES", "150"))

WORDS = [b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"get", b"gets", b"gat",
         b"gats", b"delete", b"incr", b"decr", b"touch", b"flush_all", b"version",
         b"verbosity", b"stats", b"mg", b"ms", b"md", b"ma", b"me", b"mn", b"noreply",
         b"k", b"key", b"0", b"1", b"-1", b"5", b"100", b"2592001", b"18446744073709551615",
         b"v", b"q", b"k", b"c", b"t", b"T10", b"N5", b"O1", b"b", b"MA", b"ME", b"D3", b"J2",
         b"I", b"R5", b"Zm9v", b"HTTP/1.1", b"\t", b"\x00", b"\xff", b"settings", b"items",
         b"slabs", b"reset", b"lru_crawler", b"crawl", b"all", b"quit"]

lines = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(b" ".join)
separators = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n\r\n"])
payloads = st.binary(max_size=12) | st.sampled_from([b"12", b"abc", b"\r\n", b""])
streams = st.lists(st.tuples(lines, separators, payloads), max_size=12).map(
    lambda parts: b"".join(line + sep + payload for line, sep, payload in parts))
noise = st.binary(max_size=600)


def requests_of(module: ModuleType, data: bytes, cuts: list[int]) -> list[object]:
    parser = module.RequestParser(ITEM_SIZE_MAX)
    out: list[object] = []
    pieces = []
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    for piece in pieces:
        parser.feed(piece)
        while True:
            request = parser.next_request()
            if request is None:
                break
            out.append(describe(request))
            if isinstance(request, Close):
                assert parser.next_request() is None
                return out
    return out


def describe(request: object) -> object:
    if isinstance(request, Store):
        return ("store", request.command, request.key, request.flags, request.exptime,
                request.cas, request.noreply, request.data, request.too_large)
    if isinstance(request, Reject):
        return ("reject", request.reply)
    if isinstance(request, Close):
        return ("close",)
    assert isinstance(request, list)
    return tuple(request)


@pytest.mark.parametrize("module", IMPLS)
@settings(max_examples=300, deadline=None)
@given(data=streams | noise, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_parser_never_raises_and_chunking_does_not_matter(module: ModuleType, data: bytes,
                                                          cuts: list[int]) -> None:
    whole = requests_of(module, data, [])
    chunked = requests_of(module, data, cuts)
    if max((len(line) for line in data.split(b"\n")), default=0) < 2000:
        assert chunked == whole


@pytest.mark.parametrize("module", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=streams | noise)
def test_engine_runs_anything_the_parser_yields(module: ModuleType, data: bytes) -> None:
    storage = Storage(256 * 1024, ITEM_SIZE_MAX, NOW)
    engine = Engine(storage, Settings(item_size_max=ITEM_SIZE_MAX, maxbytes=256 * 1024))
    parser = module.RequestParser(ITEM_SIZE_MAX)
    parser.feed(data)
    while (request := parser.next_request()) is not None:
        reply = execute(engine, request)
        if isinstance(reply, Stream):
            b"".join(reply.chunks)
        elif isinstance(reply, Closing):
            break
        else:
            assert isinstance(reply, bytes)
        storage.tick(storage.now + 1)
        storage.crawl(3)
    items = storage.items()
    assert storage.stats.bytes == sum(item_cost(i.key, i.value, i.flags, i.exptime)
                                      for i in items)
    assert storage.used_bytes <= storage.limit_bytes


# -- a live daemon ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    daemon = kvcache_daemon(tmp_path_factory.mktemp("fuzz"), extra=["-I", "4k", "-m", "8"])
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def _shoot(host: str, port: int, data: bytes) -> None:
    """Send, read whatever comes until the server closes or stays quiet (both are fine)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=streams | noise)
def test_live_daemon_survives_and_keeps_serving(live, data: bytes) -> None:
    _shoot(live.host, live.port, data)
    control = request(live.host, live.port, b"set control 0 0 2\r\nok\r\nget control\r\n")
    assert control == b"STORED\r\nVALUE control 0 2\r\nok\r\nEND\r\n"
    assert live.alive()


# -- differential: well-formed streams --------------------------------------------------------
keys = st.sampled_from([b"a", b"b", b"n", b"Zm9v", b"YQ==", b"bg=="])
numbers = st.sampled_from([b"0", b"1", b"7", b"100", b"18446744073709551615", b"-1", b"x"])
exptimes = st.sampled_from([b"0", b"1000", b"-1", b"2592001", b"4102444800"])
values = st.sampled_from([b"", b"1", b"42", b"abc", b"18446744073709551615", b" 5"])
meta_flags = st.lists(st.sampled_from([
    b"v", b"s", b"f", b"k", b"q", b"h", b"l", b"t", b"c", b"O9", b"T100", b"T-1", b"N100",
    b"N0", b"R50", b"R5000", b"I", b"MA", b"ME", b"MP", b"MR", b"MS", b"MI", b"MD", b"M+",
    b"D2", b"J5", b"F3", b"C1", b"C0", b"u", b"b", b"P", b"L", b"E5", b"x", b"O" + b"x" * 40,
]), max_size=5, unique=True)
# Counters both servers must agree on (get_expired and get_flushed also depend on when
# memcached's background LRU maintainer reclaims items, so they are left out).
COUNTERS = ["cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits",
            "get_misses", "delete_misses", "delete_hits", "incr_misses", "incr_hits",
            "decr_misses", "decr_hits", "cas_misses", "cas_hits", "cas_badval", "touch_hits",
            "touch_misses", "store_too_large", "total_items"]


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["store", "cas", "get", "arith", "del", "touch", "mg", "ms",
                                 "md", "ma", "misc"]))
    key = draw(keys)
    noreply = b" noreply" if draw(st.booleans()) and kind not in ("get", "misc") else b""
    if kind == "store":
        value = draw(values)
        verb = draw(st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]))
        return b"%s %s %s %s %d%s\r\n%s\r\n" % (verb, key, draw(numbers), draw(exptimes),
                                               len(value), noreply, value)
    if kind == "cas":
        value = draw(values)
        return b"cas %s 0 0 %d %s%s\r\n%s\r\n" % (key, len(value), draw(numbers), noreply,
                                                  value)
    if kind == "get":
        verb = draw(st.sampled_from([b"get", b"gets", b"gat 100", b"gats -1"]))
        return b"%s %s %s\r\n" % (verb, key, draw(keys))
    if kind == "arith":
        return b"%s %s %s%s\r\n" % (draw(st.sampled_from([b"incr", b"decr"])), key,
                                    draw(numbers), noreply)
    if kind == "del":
        return b"delete %s%s\r\n" % (key, noreply)
    if kind == "touch":
        return b"touch %s %s%s\r\n" % (key, draw(exptimes), noreply)
    chosen = draw(meta_flags)
    if kind == "ms" and b"b" in chosen and ({b"MA", b"MP"} & set(chosen)):
        chosen.remove(b"b")  # a known difference: test_binary_key_append_keeps_the_plain_key
    flags = b"".join(b" " + f for f in chosen)
    if kind == "ms":
        value = draw(values)
        return b"ms %s %d%s\r\n%s\r\n" % (key, len(value), flags, value)
    if kind in ("mg", "md", "ma"):
        return b"%s %s%s\r\n" % (kind.encode(), key, flags)
    return draw(st.sampled_from([b"mn\r\n", b"flush_all\r\n", b"me a\r\n", b"version\r\n"]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    reason = reference_missing()
    if reason is not None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("fuzz-pair")
    flags = ["-m", "64", "-I", "1m", "-t", "1", "-U", "0"]
    real = Memcached(tmp, flags).start()
    ours = kvcache_daemon(tmp, extra=flags).start()
    yield (real.host, real.port), (ours.host, ours.port)
    real.stop()
    assert ours.stop() == 0, ours.log()


@settings(max_examples=DIFFERENTIAL_EXAMPLES, deadline=None, suppress_health_check=FIXTURE_OK)
@given(script=st.lists(commands(), min_size=1, max_size=20))
def test_random_streams_match_memcached(pair, script: list[bytes]) -> None:
    (real_host, real_port), (our_host, our_port) = pair
    stream = b"flush_all\r\nstats reset\r\n" + b"".join(script) + b"stats\r\n"
    ours = request(our_host, our_port, stream)
    theirs = request(real_host, real_port, stream)
    cut, their_cut = ours.rindex(b"STAT pid "), theirs.rindex(b"STAT pid ")
    assert masked(ours[:cut]) == masked(theirs[:their_cut])
    got, expected = stat_values(ours[cut:]), stat_values(theirs[their_cut:])
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}


def test_ma_vivifying_a_base64_key_keeps_the_plain_key(pair) -> None:  # noqa: ANN001
    """Found by the random streams: `ma` with N and b creates the item unmarked, as mg's
    N does, so `me` shows the plain key, as memcached 1.6.18 does."""
    theirs, ours = pair
    script = b"cas a 0 0 0 0\r\n\r\nma YQ== v N100 b\r\nme a\r\n"
    expected = request(theirs[0], theirs[1], script)
    assert masked(request(ours[0], ours[1], script)) == masked(expected)


@pytest.mark.xfail(strict=True, reason="known difference found by the fuzzer: an `ms` append or "
                   "prepend with a base64 key (b flag) marks the item's key binary, so `me` "
                   "shows it in base64; memcached 1.6.18 keeps showing the plain key")
def test_binary_key_append_keeps_the_plain_key(pair) -> None:  # noqa: ANN001
    theirs, ours = pair
    script = b"set a 0 0 0\r\n\r\nms YQ== 0 MA b\r\n\r\nme a\r\n"
    assert request(ours[0], ours[1], script) == request(theirs[0], theirs[1], script)
