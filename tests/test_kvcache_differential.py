"""kvcache against the real memcached, byte for byte.

Both servers are started with the same flags (`-m 64 -I 1m -t 1 -U 0`); every case sends the
same raw bytes to each on a fresh connection, followed by `mn` so the end of the replies is
known, and the replies must be identical once CAS values (numbered by first appearance, so
equal CAS stay equal) and remaining TTLs / idle seconds are masked. Cases that make memcached
close the connection must make kvcache close it too, after the same replies.

Every case starts with `flush_all`, so no case depends on another's leftovers. Nothing is
timed: expiry is exercised with exptimes that are already in the past (negative, or absolute
times in 1970) and with TTLs far in the future.
"""

from __future__ import annotations

import re

import pytest

from tests.kvcache_wire import (
    Memcached,
    converse,
    masked,
    reference_missing,
    request,
    stat_names,
    stat_values,
)
from tests.procs import kvcache_daemon

SKIP_REASON = reference_missing()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

FLAGS = ["-m", "64", "-I", "1m", "-t", "1", "-U", "0"]
# The largest values memcached 1.6.18 takes with -I 1m: 1 MiB minus its 48-byte item header,
# the key and its NUL, the 4 bytes of non-zero flags, the CRLF and the 8-byte CAS.
MAX_VALUE_KEY1 = 1048576 - 48 - 2 - 2 - 8
MAX_VALUE_KEY250_FLAGS = 1048576 - 48 - 251 - 4 - 2 - 8


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("differential")
    real = Memcached(tmp, FLAGS).start()
    ours = kvcache_daemon(tmp, extra=FLAGS).start()
    yield (real.host, real.port), (ours.host, ours.port)
    real.stop()
    assert ours.stop() == 0, ours.log()


def L(*lines: str | bytes) -> bytes:  # noqa: N802 - reads like a transcript
    """Lines joined with CRLF, each ending in CRLF; the stream of one case."""
    return b"".join((x.encode() if isinstance(x, str) else x) + b"\r\n" for x in lines)


def value(n: int, fill: bytes = b"v") -> bytes:
    return (fill * (n // len(fill) + 1))[:n]


K250 = "k" * 250
K251 = "k" * 251

CASES: dict[str, bytes] = {
    # -- storage commands ------------------------------------------------------------------
    "set-get": L("set a 0 0 5", "hello", "get a", "gets a", "get a a nope a"),
    "set-flags": L("set a 4294967295 0 1", "x", "get a", "set a 4294967296 0 1", "x", "get a",
                   "set a -1 0 1", "x", "set a 0x10 0 1", "x", "set a +7 0 1", "x", "get a"),
    "add": L("add a 0 0 1", "x", "add a 0 0 1", "y", "get a", "add b 5 0 2 noreply", "bb",
             "get b"),
    "replace": L("replace a 0 0 1", "x", "set a 0 0 1", "x", "replace a 3 0 2", "yy", "get a"),
    "append-prepend": L("append a 0 0 1", "x", "prepend a 0 0 1", "x", "set a 7 0 2", "mm",
                        "append a 0 0 2", ">>", "prepend a 9 0 2", "<<", "get a",
                        "append a 0 0 1 noreply", "!", "prepend a 0 0 1 noreply", "^", "get a"),
    "cas": L("cas a 0 0 1 1", "x", "set a 0 0 1", "x", "gets a", "cas a 0 0 1 999999", "y",
             "cas a 0 0 1 0", "y", "gets a", "cas a 0 0 1", "cas a 0 0 1 abc", "x",
             "cas a 0 0 1 -1", "x", "cas a 0 0 1 1 noreply extra", "x"),
    "cas-match": L("set a 0 0 1", "x", "gets a", "mg a c", "md a q", "cas a 0 0 1 1", "y"),
    "delete": L("delete a", "set a 0 0 1", "x", "delete a", "delete a", "delete a 0",
                "delete a 1", "delete a noreply", "delete a 0 noreply", "delete a 1 noreply",
                "delete a x y z", "delete", "delete a 0 noreply x", "delete " + K251),
    "incr-decr": L("incr n 1", "decr n 1", "set n 0 0 3", "100", "decr n 1", "get n",
                   "incr n 900", "get n", "incr n 18446744073709551615", "decr n 5000",
                   "get n", "incr n -1", "incr n -0", "incr n abc", "incr n 1.5",
                   "incr n 18446744073709551616", "incr n +5", "incr n 5 noreply", "get n",
                   "incr n", "incr n 1 2 3", "decr n x noreply"),
    "incr-wrap": L("set n 0 0 20", "18446744073709551615", "incr n 1", "get n",
                   "set n 0 0 20", "18446744073709551614", "incr n 1", "get n",
                   "set n 0 0 1", "0", "decr n 1", "get n", "set n 0 0 2", "10",
                   "decr n 100", "get n"),
    "incr-text": L("set t 0 0 3", "abc", "incr t 1", "decr t 1", "set e 0 0 0", "", "incr e 1",
                   "set s 0 0 4", "  12", "incr s 1", "set m 0 0 3", "-12", "incr m 1",
                   "set z 0 0 26", "00000000000000000000000001", "incr z 1", "get z",
                   "set big 0 0 20", "18446744073709551616", "incr big 1",
                   "set sp 0 0 4", "12 x", "incr sp 1", "get sp"),
    "touch-gat": L("touch a 10", "set a 3 0 1", "x", "touch a 100", "touch a abc",
                   "touch a 10 noreply", "touch a", "gat 100 a", "gats 100 a", "gat abc a",
                   "gat 100", "gat", "gats 0 a nope a", "mg a t", "touch a -1", "get a"),
    "version-verbosity": L("version", "version extra", "verbosity", "verbosity 1",
                           "verbosity abc", "verbosity noreply", "verbosity 1 noreply",
                           "verbosity 1 2", "verbosity 1 2 3", "verbosity 0"),
    "flush": L("set a 0 0 1", "x", "flush_all", "get a", "set a 0 0 1", "x", "get a",
               "flush_all abc", "flush_all -1", "get a", "flush_all noreply",
               "flush_all 0 noreply", "flush_all 1 2 3", "set b 0 0 1", "y", "get b",
               "flush_all 0", "get b"),
    "flush-delayed": L("set a 0 0 1", "x", "flush_all 1000", "get a", "flush_all", "get a"),
    "unknown": L("foo", "x", "", "  ", "gx", "gxx a", "sx", "mx", "m", "mz a", "GET a",
                 "bget a", "quitx", "stat", "set", "get", "gets", "incr", "touch"),
    "noreply-pipeline": L(*[f"set k{i} 0 0 2 noreply\r\nv{i % 10}" for i in range(50)],
                          "get k0 k1 k49 k50", "add k1 0 0 1 noreply", "z",
                          "replace k2 0 0 1 noreply", "z", "incr k3 1 noreply",
                          "delete k4 noreply", "touch k5 1000 noreply", "get k1 k2 k3 k4 k5"),
    # -- limits ---------------------------------------------------------------------------
    "key-250": L(f"set {K250} 0 0 1", "x", f"get {K250}", f"gets {K250}", f"delete {K250}"),
    "key-251": L(f"set {K251} 0 0 1", "x", f"incr {K251} 1",
                 f"touch {K251} 1", f"mg {K251} v", f"md {K251}", f"ma {K251}",
                 f"ms {K251} 1", "x", f"me {K251}"),
    "key-controls": L("set a\x01b 0 0 1", "x", "get a\x01b", "set c\td 0 0 1", "y",
                      "get c\td", "get c", "get e\x00f", "set g 0 0 1\r", "z", "get g"),
    "value-at-limit": L(f"set k 0 0 {MAX_VALUE_KEY1}", value(MAX_VALUE_KEY1), "mg k s",
                        f"set k 0 0 {MAX_VALUE_KEY1 + 1}", value(MAX_VALUE_KEY1 + 1),
                        "get k", f"set k 1 0 {MAX_VALUE_KEY1 - 4}", value(MAX_VALUE_KEY1 - 4),
                        "mg k s f", f"set k 1 0 {MAX_VALUE_KEY1 - 3}", value(MAX_VALUE_KEY1 - 3),
                        "mg k s"),
    "value-at-limit-key250": L(
        f"set {K250} 1 0 {MAX_VALUE_KEY250_FLAGS}", value(MAX_VALUE_KEY250_FLAGS),
        f"mg {K250} s", f"set {K250} 1 0 {MAX_VALUE_KEY250_FLAGS + 1}",
        value(MAX_VALUE_KEY250_FLAGS + 1), f"mg {K250} s"),
    "too-large-keeps-sync": L("set a 0 0 1", "x", "set a 0 0 2000000", value(2000000),
                              "get a", "set b 0 0 1", "y", "add b 0 0 2000000 noreply",
                              value(2000000), "get b", "append b 0 0 1048575", value(1048575),
                              "get b", "ms b 2000000 T0", value(2000000), "mg b v"),
    "append-too-large": L(f"set a 0 0 {MAX_VALUE_KEY1 - 10}", value(MAX_VALUE_KEY1 - 10),
                          "append a 0 0 20", value(20), "mg a s", "prepend a 0 0 10",
                          value(10), "mg a s"),
    "bad-lengths": L("set a 0 0 -1", "get a", "set a 0 0 2147483647", "set a 0 0 4294967297",
                     "x", "get a", "set a 0 0 abc", "x", "set a 0 0 1a", "x",
                     "set a 0 0 -1 noreply", "foo"),
    "bad-data-chunk": L("set a 0 0 2", "ab", "set a 0 0 2", "abcd", "get a",
                        "set b 0 0 1 noreply", "xyz", "get b", "set c 0 0 1", "x\nget c"),
    "bare-newlines": b"set a 0 0 1\nx\r\nget a\nget a\r\n\r\nmg a v\n",
    "exptime-edges": L("set a 0 2592000 1", "x", "mg a t v", "set b 0 2592001 1", "x",
                       "get b", "set c 0 -1 1", "x", "get c", "set d 0 -2147483649 1", "x",
                       "get d", "set e 0 -9999999999 1", "x", "get e",
                       "set f 0 9223372036854775808 1", "x", "set g 0 4102444800 1", "x",
                       "get g", "touch g 2592001", "get g", "gat -1 a", "get a"),
    "multiget-100k": L("set k00001 0 0 1", "a", "set k09999 0 0 2", "bb",
                       "get " + " ".join(f"k{i:05d}" for i in range(15000)),  # 105 KB
                       "gets " + " ".join(f"k{i:05d}" for i in range(5000, 14000))),
    "line-3k-garbage": L("x" * 3000, "version"),
    "line-3k-set": L("set " + "k" * 3000 + " 0 0 1", "x", "version"),
    # -- meta -------------------------------------------------------------------------------
    "mg-flags": L("mg foo v", "ms foo 3", "bar", "mg foo v", "mg foo s v t f c k h l O99",
                  "mg foo h l", "mg foo", "mg foo q", "mg foo k q v", "mg nope v q",
                  "mg nope s v k O123 q", "mg nope k O1", "mg foo u v h", "mg foo P L"),
    "mg-errors": L("mg", "mg " + "x" * 251, "mg foo v v", "mg foo zz", "mg foo é",
                   "mg foo " + " ".join(str(i) for i in range(1, 18)),
                   "mg foo " + " ".join(str(i) for i in range(1, 19)),
                   "mg foo O123456789012345678901234567890123",
                   "mg foo O12345678901234567890123456789012", "mg foo E1", "mg foo Tx",
                   "mg foo Nx", "mg foo Rx", "mg foo T", "mg foo s s", "mg a b c d"),
    "mg-ttl": L("ms foo 3 T100 F5", "abc", "mg foo t f v", "mg foo T200 t", "mg foo t T300",
                "mg foo t", "mg foo T-1", "mg foo v"),
    "mg-vivify": L("mg k1 s v N30 t c", "mg k1 s v N30 t c", "ms k1 3 C999", "abc",
                   "mg k1 c", "mg k1 v", "md k1 q", "mg k1 N30 q", "mg k1 N30 O5 q", "mn"),
    "mg-recache": L("ms k2 3 T0", "abc", "mg k2 R30 v t", "ms k3 3 T10", "abc",
                    "mg k3 R30 v t", "mg k3 R30 v t", "mg k3 v", "ms k3 3 T10", "new",
                    "mg k3 R30 v"),
    "md-invalidate": L("ms k4 3", "abc", "md k4 I T30", "mg k4 v c t", "mg k4 v c",
                       "ms k4 3 I", "new", "ms k4 3 I C1", "new", "mg k4 c", "md k4 I",
                       "mg k4", "md k4 q", "mg k4"),
    "ms-modes": L("ms a 3 MA", "xyz", "ms a 3 ME", "abc", "ms a 3 ME", "xyz", "ms a 3 MA",
                  "xyz", "ms a 3 MP", "123", "mg a v", "ms b 1 MR", "x", "ms a 1 MR", "R",
                  "mg a v", "ms a 1 MS", "S", "ms a 1 MZ", "x", "ms a 1 M", "x",
                  "ms a 1 MSS", "x", "ms a 1 MA N30", "x", "ms c 1 MA N30", "x", "mg c v"),
    "ms-flags": L("ms foo 3 T100 F5 c k O1", "abc", "ms foo 3 q", "abc", "ms foo 3 q MR",
                  "abc", "ms nope 3 q MR", "abc", "ms foo 3 c ME", "xyz", "ms foo 1 P",
                  "a", "ms foo 1 u v s t f h l", "a", "mg foo v s",
                  "ms foo 1 I", "b", "ms foo 1 T0 F4294967296", "x", "mg foo f v"),
    "ms-cas": L("ms a 1 C1", "x", "ms a 1", "x", "mg a c", "ms a 1 C1 c", "y", "ms a 1 MA C1",
                "y", "ms a 1 C0", "y", "mg a v", "ms a 1 E12345", "a"),
    "ms-errors": L("ms", "ms a", "ms a abc", "ms a -1", "ms " + "k" * 251 + " 1", "x",
                   "ms a 1 F1 F2", "x", "ms a 1 S5", "x", "ms a 1 T", "x", "ms a 1 C", "x",
                   "ms a 1 Cx", "x", "ms a 1 Fx Cx", "x", "ms a 1 Fx", "x", "ms a 1 Cx MZ",
                   "x", "ms a 1 O123456789012345678901234567890123", "x",
                   "ms a 1 O123456789012345678901234567890123 MZ", "x",
                   "ms a 2 " + " ".join(f"O{i}" for i in range(17)), "xy",
                   "ms a 2 " + " ".join(f"O{i}" for i in range(16)), "xy",
                   "ms a 1", "xyz", "ms a 1 q", "xyz", "mg a v"),
    "ms-base64": L("mg Zm9v b v k", "ms Zm9v 2 b k c", "hi", "mg Zm9v b v k", "mg foo v k",
                   "mg !!!! b v", "ms !!!! 2 b", "hi", "md Zm9v b k", "me Zm9v b",
                   "ma Zm9v b", "mg Zm9 b", "mg Zm9v= b", "mg Zg== b", "mg ==== b",
                   "mg Zm==Zm== b k", "mg ZZ=a b k", "mg YR== b k", "mg Y!Q== b k",
                   "ms YWJj 1 b", "1", "ma YWJj b v k", "mg abc v k"),
    "md": L("md", "md foo", "ms foo 1", "x", "md foo q", "md foo q", "md foo O1 k",
            "ms foo 1", "x", "md foo C1", "md foo x", "md foo O123456789012345678901234567890123",
            "mg foo c", "md foo Tx", "md foo k O2 q", "md foo k O3"),
    "ma": L("ma", "ma cnt", "ma cnt N0 J10 v", "ma cnt v", "ma cnt MD D5 v t c",
            "ma cnt MI D18446744073709551615 v", "ma cnt M- v", "ma cnt M+ D2 v", "ma cnt MX",
            "ma cnt D-1", "ma cnt Jx N0", "ma cnt q", "ma cnt q v", "ma nope q", "ma nope O7 k",
            "ma cnt C1 v", "ma cnt N100 J5 T50 t v", "ms txt 3", "abc", "ma txt",
            "ma cnt O123456789012345678901234567890123", "ma cnt O1 k v t"),
    "ma-vivify": L("ma v1 N0 J7 v t c k O9", "ma v1 v t", "ma v2 N50 J1 t v", "mg v2 t v",
                   "ma v3 MD N0 J3 v", "ma v4 N0 q", "mg v4 v"),
    "me": L("me", "me nothere", "set a 5 0 3", "abc", "me a", "me a b c", "mg a v", "me a",
            "set b 0 1000 1", "x", "me b"),
    "mn-q-pipeline": L("set a 0 0 1", "A", "mg a v q", "mg b v q", "mg c v q", "mg a v q",
                       "md b q", "ms d 1 q", "D", "ma e q", "mn", "mg d v q", "mn"),
    "meta-noreply-errors": L("ms a 1 q", "xyz", "mg a q Tx", "md a q Tx", "ma a q Tx"),
    # -- operator commands ----------------------------------------------------------------
    # (arguments chosen to leave memcached's tuning at its defaults for the other cases)
    "admin": L("cache_memlimit", "cache_memlimit 7", "cache_memlimit 1000000001",
               "cache_memlimit abc", "cache_memlimit 64 noreply", "cache_memlimit 64",
               "slabs automove 1", "slabs automove 3", "slabs automove x",
               "slabs automove ratio 0.8", "slabs automove ratio x", "slabs reassign 1 2",
               "slabs reassign 1 x", "slabs reassign 1 1", "slabs reassign 99 1", "slabs",
               "slabs foo bar", "lru_crawler crawl 99", "lru_crawler crawl 1,0",
               "lru_crawler crawl x", "lru_crawler tocrawl 0",
               "lru_crawler sleep 100", "lru_crawler sleep 2000000", "lru_crawler sleep x",
               "lru_crawler foo", "lru_crawler", "lru_crawler enable", "lru_crawler metadump",
               "lru tune 20 40 0.2 2.0", "lru tune 50 50 0.1 0.1",
               "lru tune 10 10 0 0.1", "lru tune x 10 0.1 0.1",
               # lru mode / temp_ttl: tests/test_kvcache_lru_settings.py (no maintainer)
               "lru mode x", "lru temp_ttl x", "lru x", "lru",
               "shutdown", "shutdown graceful", "shutdown x"),
    # -- stats ------------------------------------------------------------------------------
    "stats-misc": L("stats reset", "stats reset extra", "stats foo", "stats detail",
                    "stats detail dump", "stats sizes", "stats cachedump", "stats cachedump x y",
                    "stats cachedump 100 0"),
}

# memcached drops every reply still queued on the connection when a get names a key over
# 250 bytes (conn_release_items), so which replies survive depends on its write batching;
# kvcache keeps them (tests/test_kvcache_daemon.py). Compared here as the first command.
FIRST_ON_CONNECTION: dict[str, bytes] = {
    "get-key-251": L(f"get {K251}"),
    "get-keys-251": L(f"get a {K251} b", "get a"),
    "gets-key-251": L(f"gets a b {K251}"),
    "gat-key-251": L(f"gat 1 {K251}"),
}

CLOSING: dict[str, bytes] = {
    "http-get": L("GET / HTTP/1.1", "version"),
    "http-post": L("POST /x HTTP/1.0", "version"),
    "http-after-commands": L("set a 0 0 1", "x", "get a", "FOO bar HTTP/1.1", "get a"),
    "garbage-no-newline": b"x" * 3000,
    "garbage-20k": b"y" * 20000 + b"\r\nversion\r\n",
    "set-line-20k": b"set " + b"k" * 20000 + b" 0 0 1\r\nx\r\n",
    "gat-line-20k": b"gat 0 " + b"k" * 20000 + b"\r\n",
    "quit": L("set a 0 0 1", "x", "get a", "quit", "get a"),
    "quit-extra": L("version", "quit now", "version"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_replies(servers, name: str) -> None:
    (real_host, real_port), (our_host, our_port) = servers
    stream = L("flush_all") + CASES[name]
    expected = request(real_host, real_port, stream)
    got = request(our_host, our_port, stream)
    assert masked(got) == masked(expected)


@pytest.mark.parametrize("name", sorted(FIRST_ON_CONNECTION))
def test_same_replies_first_on_connection(servers, name: str) -> None:
    (real_host, real_port), (our_host, our_port) = servers
    stream = FIRST_ON_CONNECTION[name]
    assert request(our_host, our_port, stream) == request(real_host, real_port, stream)


@pytest.mark.parametrize("name", sorted(CLOSING))
def test_same_close(servers, name: str) -> None:
    (real_host, real_port), (our_host, our_port) = servers
    stream = CASES.get(name, CLOSING[name])
    expected, expected_closed = converse(real_host, real_port, stream, sentinel=False)
    got, closed = converse(our_host, our_port, stream, sentinel=False)
    assert expected_closed, "memcached kept the connection: the case is wrong"
    assert closed
    assert masked(got) == masked(expected)


def test_big_multiget_line_arriving_in_pieces(servers) -> None:
    """A multi-get over 2 KB may arrive without its newline: both wait for the rest."""
    keys = " ".join(f"key{i:06d}" for i in range(12000)).encode()
    stream = L("flush_all", "set key000007 0 0 3", "abc") + b"get " + keys + b"\r\n"
    (real_host, real_port), (our_host, our_port) = servers
    expected, _ = converse(real_host, real_port, stream, chunks=40)
    got, _ = converse(our_host, our_port, stream, chunks=40)
    assert got == expected
    assert got.endswith(b"VALUE key000007 0 3\r\nabc\r\nEND\r\n")


# Keys no other case uses, so no leftover of an earlier case is met (and counted).
STATS_SCRIPT = L(
    "flush_all", "stats reset", "set sa 0 0 1", "1", "set sb 0 0 1", "x", "get sa sb sc",
    "gets sa", "add sa 0 0 1", "x", "replace sc 0 0 1", "x", "append sa 0 0 1", "2",
    "delete sb", "delete sb", "incr sa 5", "incr sc 1", "decr sa 1", "decr sc 1",
    "touch sa 100", "touch sc 100", "gat 0 sa sc", "cas sa 0 0 1 1", "x", "cas sc 0 0 1 1",
    "x", "mg sa v", "mg sc v", "mg sa T10", "md sa", "md sa", "ma sn", "set sx 0 -1 1", "x",
    "get sx", "set sy 0 0 1", "y", "flush_all", "get sy", "set sbig 0 0 2000000",
    value(2000000),
)
COUNTERS = [
    "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "get_expired",
    "get_flushed", "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses",
    "decr_hits", "cas_misses", "cas_hits", "cas_badval", "touch_hits", "touch_misses",
    "store_too_large", "total_items",
]


def test_stats_counters_match(servers) -> None:
    (real_host, real_port), (our_host, our_port) = servers
    expected = stat_values(request(real_host, real_port, STATS_SCRIPT + L("stats")))
    got = stat_values(request(our_host, our_port, STATS_SCRIPT + L("stats")))
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}


@pytest.mark.parametrize("sub", ["", "settings", "items", "slabs", "sizes"])
def test_stats_names_match(servers, sub: str) -> None:
    """Same STAT names in the same order (values differ: different machinery)."""
    setup = L("flush_all", "set small 0 0 5", "hello", "set mid 0 0 300", value(300))
    command = L(f"stats {sub}".strip())
    (real_host, real_port), (our_host, our_port) = servers
    expected = stat_names(request(real_host, real_port, setup + command))
    got = stat_names(request(our_host, our_port, setup + command))
    # Which size classes appear depends on each server's history (memcached never gives a
    # slab page back); the names within a class and the global names must match.
    assert _without_classes(got) == _without_classes(expected)
    assert ("1:chunk_size" in got) == ("1:chunk_size" in expected)


def _without_classes(names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(re.sub(r"^(items:)?\d+:", "", name))
    return list(seen)


def test_stats_settings_values(servers) -> None:
    (real_host, real_port), (our_host, our_port) = servers
    expected = stat_values(request(real_host, real_port, L("stats settings")))
    got = stat_values(request(our_host, our_port, L("stats settings")))
    for name in ("maxbytes", "maxconns", "udpport", "inter", "evictions", "item_size_max",
                 "slab_chunk_max", "cas_enabled", "flush_enabled", "growth_factor",
                 "chunk_size"):
        assert got[name] == expected[name], name
    assert got["tcpport"] == str(our_port)


def _metadump(host: str, port: int) -> list[bytes]:
    """`lru_crawler metadump all` as the first command of a connection (memcached refuses
    it behind other commands), lines sorted (the walk order is each server's own)."""
    import socket
    import time

    for _ in range(100):  # memcached answers BUSY while its own crawler runs
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"lru_crawler metadump all\r\n")
            out = b""
            while not out.endswith(b"END\r\n") and not out.startswith(b"BUSY"):
                chunk = sock.recv(65536)
                assert chunk, out
                out += chunk
        if not out.startswith(b"BUSY"):
            break
        time.sleep(0.05)
    lines = out[: -len(b"END\r\n")].split(b"\n")
    return sorted(re.sub(rb" la=\d+ cas=\d+", b" la=<T> cas=<C>", line) for line in lines)


def test_metadump_matches(servers) -> None:
    setup = L("flush_all", "set md:a 0 0 1", "x", "set md%01 5 4102444800 2", "yy",
              "get md:a", "set md-gone 0 -1 1", "z")
    (real_host, real_port), (our_host, our_port) = servers
    request(real_host, real_port, setup)
    request(our_host, our_port, setup)
    expected = _metadump(real_host, real_port)
    assert _metadump(our_host, our_port) == expected
    assert any(line.startswith(b"key=md%3Aa exp=-1") for line in expected)
