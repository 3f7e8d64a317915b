"""kvcache -U: memcached's UDP framing, from a raw UDP socket, beside a real memcached.

Each case is a list of datagrams (request id, sequence, count, payload); its replies are
read up to the reply to a sentinel datagram (`mn` under SENTINEL_ID), so a case that must
stay unanswered is checked without waiting for a silence. CAS values are masked.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tests.kvcache_wire import HANG_TIMEOUT_S, MEMCACHED, Masker, Memcached, reference_missing
from tests.procs import kvcache_daemon

HEADER = struct.Struct(">HHHH")
SENTINEL_ID = 65000
SENTINEL = HEADER.pack(SENTINEL_ID, 0, 1, 0) + b"mn\r\n"
BIG = 5000  # a value whose reply needs four datagrams

Datagram = tuple[int, int, int, bytes]  # request id, sequence number, count, payload

CASES: list[tuple[str, list[Datagram]]] = [
    ("set and get", [(7, 0, 1, b"set a 0 0 1\r\n1\r\n"), (8, 0, 1, b"get a\r\n")]),
    ("several requests in one datagram", [
        (9, 0, 1, b"set x 0 0 1\r\n1\r\nset y 0 0 1\r\n2\r\nget x\r\ndelete zz\r\n")]),
    ("multi-get: one response per key", [
        (10, 0, 1, b"set x 0 0 1\r\n1\r\nset y 0 0 1\r\n2\r\n"),
        (11, 0, 1, b"get x y\r\n"), (12, 0, 1, b"get x nope\r\n"),
        (13, 0, 1, b"get nope x nope y nope\r\n"), (14, 0, 1, b"get nope nope2\r\n"),
        (15, 0, 1, b"gets x nope y\r\n")]),
    ("a reply over several datagrams", [
        (16, 0, 1, b"set b 0 0 %d\r\n" % BIG + b"v" * BIG + b"\r\n"), (17, 0, 1, b"get b\r\n")]),
    ("a request spanning datagrams is dropped", [
        (18, 0, 1, b"set a 0 0 1\r\n1\r\n"), (19, 0, 2, b"get a\r\n"), (20, 1, 2, b"get a\r\n")]),
    ("sequence and reserved words are not checked", [
        (21, 3, 1, b"get a\r\n"), (22, 0, 1, b"mn\r\n")]),
    ("an incomplete line is discarded", [(23, 0, 1, b"get a"), (24, 0, 1, b"get a\r\n")]),
    ("noreply sends nothing", [(25, 0, 1, b"set n 0 0 1 noreply\r\n1\r\n")]),
    ("errors", [(26, 0, 1, b"bogus\r\n"), (27, 0, 1, b"get " + b"k" * 251 + b"\r\n")]),
    ("quit answers a bare header", [(28, 0, 1, b"quit\r\n"), (29, 0, 1, b"get a\r\n")]),
    ("meta commands", [(30, 0, 1, b"mg a v\r\nmn\r\n")]),
    ("datagrams no longer than the header are ignored", [(31, 0, 1, b"")]),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exchange(port: int, datagrams: list[Datagram]) -> list[tuple[int, int, int, bytes]]:
    """Send each datagram, then the sentinel; every reply datagram before the sentinel's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(HANG_TIMEOUT_S)  # a hang detector, never a timing check
        for rid, seq, count, payload in datagrams:
            sock.sendto(HEADER.pack(rid, seq, count, 0) + payload, ("127.0.0.1", port))
        sock.sendto(SENTINEL, ("127.0.0.1", port))
        out = []
        while True:
            data = sock.recv(65536)
            rid, seq, count, reserved = HEADER.unpack_from(data)
            assert reserved == 0
            if rid == SENTINEL_ID:
                assert data[HEADER.size:] == b"MN\r\n"
                return out
            out.append((rid, seq, count, data[HEADER.size:]))


def masked(replies: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int, bytes]]:
    masker = Masker()
    return [(rid, seq, count, b"\r\n".join(masker.line(line) for line in body.split(b"\r\n")))
            for rid, seq, count, body in replies]


@pytest.fixture(scope="module")
def kvcache_udp(tmp_path_factory):
    port = free_udp_port()
    daemon = kvcache_daemon(tmp_path_factory.mktemp("kvudp"),
                            extra=["-U", str(port), "-t", "1"]).start()
    yield daemon, port
    assert daemon.stop() == 0, daemon.log()


def test_frames_as_memcached_writes_them(kvcache_udp) -> None:
    """Literal expectations, taken from memcached 1.6.18: they run with or without it."""
    _, port = kvcache_udp
    got = exchange(port, [(7, 0, 1, b"set a 0 0 1\r\n1\r\n"), (8, 0, 1, b"get a nope\r\n"),
                          (9, 0, 1, b"get nope a\r\n"), (10, 0, 2, b"get a\r\n"),
                          (11, 0, 1, b"quit\r\n"), (12, 0, 1, b"set b 0 0 1 noreply\r\n1\r\n")])
    assert got == [(7, 0, 1, b"STORED\r\n"),
                   (8, 0, 1, b"VALUE a 0 1\r\n1\r\n"), (8, 0, 1, b"END\r\n"),
                   (9, 0, 0, b""), (9, 0, 1, b"VALUE a 0 1\r\n1\r\nEND\r\n"),
                   (11, 0, 0, b"")]
    big = exchange(port, [(13, 0, 1, b"set big 0 0 %d\r\n" % BIG + b"w" * BIG + b"\r\n"),
                          (14, 0, 1, b"get big\r\n")])
    assert big[0] == (13, 0, 1, b"STORED\r\n")
    pieces = big[1:]
    assert [(rid, seq, count) for rid, seq, count, _ in pieces] == [(14, n, 4) for n in range(4)]
    assert all(len(body) == 1392 for *_, body in pieces[:3])
    assert b"".join(body for *_, body in pieces) == (
        b"VALUE big 0 %d\r\n" % BIG + b"w" * BIG + b"\r\nEND\r\n")


def test_stats_settings_name_the_udp_port(kvcache_udp) -> None:
    _, port = kvcache_udp
    reply = exchange(port, [(40, 0, 1, b"stats settings\r\n")])
    text = b"".join(body for *_, body in reply)
    assert b"STAT udpport %d\r\n" % port in text


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")
@pytest.mark.parametrize("name,datagrams", CASES, ids=[name for name, _ in CASES])
def test_udp_like_memcached(kvcache_udp, memcached_udp, name, datagrams) -> None:
    missing = reference_missing()
    if missing:
        pytest.skip(f"byte-for-byte comparison needs the reference memcached: {missing}")
    _, ours = kvcache_udp
    assert masked(exchange(ours, datagrams)) == masked(exchange(memcached_udp, datagrams)), name


@pytest.fixture(scope="module")
def memcached_udp(tmp_path_factory):
    port = free_udp_port()
    real = Memcached(tmp_path_factory.mktemp("mcudp"), ["-U", str(port), "-t", "1"]).start()
    yield port
    real.stop()
