"""The fast lane through a live daemon, against a real memcached.

A read that is exactly one `get <keys>\\r\\n` or `gets <keys>\\r\\n` (one key or many), or
one plain `set` with its whole data block, is answered by the connection's lane (`Lane`,
`answer`) instead of the request loop (kvcache/server.py). Here each request is sent as its
own read and its reply awaited before the next, so every well-formed get, multi-get, gets or
set takes the lane; the replies and the get and set counters must be memcached's, byte for
byte (hits, misses and expired items mixed, keys repeated, more keys than memcached
tokenises at once, CAS masked), and the lane must give way to the loop where it has to (a
pipeline, a bare `\\n`, a key too long, a set waiting for its block, numbers out of its
range, a bad data chunk).
"""

from __future__ import annotations

import socket

import pytest

from tests.kvcache_wire import Memcached, masked, reference_missing, request, stat_values
from tests.procs import kvcache_daemon

# What a reply ends with, for each kind of request in SCRIPT.
ENDINGS = (b"END\r\n", b"ERROR\r\n", b"STORED\r\n", b"format\r\n")
LONG = b"k" * 250
SCRIPT = [
    b"set a 5 0 3\r\nabc\r\n",
    b"get a\r\n",  # a hit
    b"get nothing\r\n",  # a miss
    b"set " + LONG + b" 4294967295 0 1\r\nx\r\n",
    b"get " + LONG + b"\r\n",  # the longest key, the largest flags
    b"get " + LONG + b"k\r\n",  # one byte too long: the loop's error
    b"get a\n",  # a bare newline: the loop
    b"get a nothing a\r\n",  # several keys, a miss between two hits
    b"get a\r\nget a\r\n",  # a pipeline: the loop
    b"get  a\r\n",  # two spaces
    b"get a\tb\r\n",  # a tab belongs to the key
    b"set b 0 0 2\r\n",  # a set waiting for its block...
    b"get a\r\n",  # ...takes this read as data (bad data chunk)
    b"gets a\r\n",
    b"set s 1 0 5\r\nhello\r\n",  # a plain set with its data in one read: the lane
    b"get s\r\n",
    b"set s 2 100 0\r\n\r\n",  # an empty value, an exptime: the lane
    b"get s\r\n",
    b"set s 3 -1 1\r\nx\r\n",  # a negative exptime (stored already expired): the loop
    b"get s\r\n",
    b"set s 4294967295 0 1\r\nx\r\n",  # ten-digit flags: the loop
    b"get s\r\n",
    b"set a 7 0 2\r\nxyz\r\n",  # a block longer than announced: the loop's bad data chunk
    b"get a\r\n",
    b"set a 5 0 3\r\nabc\r\n",
    b"set e 9 -1 1\r\nx\r\n",  # stored already expired
    b"get a e nothing a s\r\n",  # hits, an expired item and a miss in one multi-get
    b"gets a s nothing\r\n",  # CAS, masked
    b"gets  a  \r\n",
    b"get a " + LONG + b" nothing\r\n",
    b"get a " + LONG + b"k a\r\n",  # a key too long among others: the loop's error
    b"get " + b"a nothing s " * 10 + b"\r\n",  # more keys than memcached tokenises at once
    b"get a nothing\r\nget s\r\n",  # a pipeline of a multi-get and a get: the loop
    b"gets a\n",  # a bare newline: the loop
]
COUNTERS = ("cmd_get", "get_hits", "get_misses", "bytes_read", "bytes_written", "cmd_set",
            "curr_items", "total_items", "get_expired", "get_flushed")


def converse_by_reads(host: str, port: int) -> list[bytes]:
    """Send SCRIPT one read at a time, each after the previous reply; the replies."""
    replies = []
    with socket.create_connection((host, port), timeout=10) as sock:
        for data in SCRIPT:
            sock.sendall(data)
            if data.endswith(b" 2\r\n"):  # the set waits for its block: no reply yet
                continue
            reply = b""
            # a pipeline of two gets is answered twice (memcached may write each apart)
            want = 2 if data.count(b"\n") == 2 and data.startswith(b"get") else 1
            while sum(reply.count(ending) for ending in ENDINGS) < want:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {reply!r}"
                reply += chunk
            replies.append(reply)
    return replies


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    reason = reference_missing()
    if reason is not None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("fastlane")
    flags = ["-m", "64", "-t", "1", "-U", "0"]
    real = Memcached(tmp, flags).start()
    ours = kvcache_daemon(tmp, extra=flags).start()
    yield (real.host, real.port), (ours.host, ours.port)
    real.stop()
    assert ours.stop() == 0, ours.log()


def test_single_gets_answer_as_memcached_does(pair) -> None:
    (real_host, real_port), (our_host, our_port) = pair
    theirs = converse_by_reads(real_host, real_port)
    ours = converse_by_reads(our_host, our_port)
    assert [masked(reply) for reply in ours] == [masked(reply) for reply in theirs]
    assert ours[1] == b"VALUE a 5 3\r\nabc\r\nEND\r\n"
    got = stat_values(request(our_host, our_port, b"stats\r\n"))
    expected = stat_values(request(real_host, real_port, b"stats\r\n"))
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}
    got = stat_values(request(our_host, our_port, b"stats slabs\r\n"))
    expected = stat_values(request(real_host, real_port, b"stats slabs\r\n"))
    hits = {k: int(v) for k, v in got.items() if k.endswith(":get_hits")}
    assert hits and hits == {k: int(v) for k, v in expected.items() if k.endswith(":get_hits")}
    # Each hit is counted to an LRU segment too. Which one is memcached's LRU maintainer's
    # timing (tests/test_kvcache_stats_segments.py waits for it); the sum is not.
    items = stat_values(request(our_host, our_port, b"stats items\r\n"))
    for name, count in hits.items():
        cls = name.split(":")[0]
        assert count == sum(int(items[f"items:{cls}:hits_to_{segment}"])
                            for segment in ("hot", "warm", "cold"))
