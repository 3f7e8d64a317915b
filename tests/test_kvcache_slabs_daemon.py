"""kvcache's memory model over the wire, each case run against our daemon and a real
memcached started beside it in the same test (skipped without the memcached binary):
the issue's reproduction (a class that first appears when memory is full), a workload
whose value sizes shift (hit ratios printed side by side), `slabs reassign` / `slabs
automove` replies, and -C.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kvcache_wire import MEMCACHED, Memcached, request, stat_values
from tests.procs import kvcache_daemon

pytestmark = pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")

BIG, BIG_COUNT = 582_069, 96  # the reproduction: 64 MB of large values
MIDDLE, MIDDLE_COUNT = 143_829, 78
SHIFT_ROUNDS_S = 0.1  # pause between batches of the large phase (automove acts each second)


class Pair:
    """Our daemon and memcached, started with the same flags."""

    def __init__(self, tmp: Path, flags: list[str]) -> None:
        self.ours = kvcache_daemon(tmp, extra=flags).start()
        self.real = Memcached(tmp, [*flags, "-t", "1"]).start()

    def addresses(self) -> dict[str, tuple[str, int]]:
        return {"kvcache": (self.ours.host, self.ours.port),
                "memcached": (self.real.host, self.real.port)}

    def stop(self) -> None:
        self.real.stop()
        assert self.ours.stop() == 0, self.ours.log()


def pair(tmp: Path, flags: list[str]) -> Iterator[Pair]:
    both = Pair(tmp, flags)
    try:
        yield both
    finally:
        both.stop()


@pytest.fixture
def m64(tmp_path: Path) -> Iterator[Pair]:
    yield from pair(tmp_path, ["-m", "64"])


def send_all(host: str, port: int, payload: bytes) -> None:
    """Send `payload` (noreply commands) and wait until the server has read it all."""
    request(host, port, payload)


def test_a_class_that_first_appears_when_memory_is_full_keeps_both_items(m64: Pair) -> None:
    payload = b"".join(b"set big:%d 0 0 %d noreply\r\n%s\r\n" % (i, BIG, b"b" * BIG)
                       for i in range(BIG_COUNT))
    payload += b"".join(b"set mid:%d 0 0 %d noreply\r\n%s\r\n" % (i, MIDDLE, b"m" * MIDDLE)
                        for i in range(MIDDLE_COUNT))
    for name, (host, port) in m64.addresses().items():
        send_all(host, port, payload)
        replies = request(host, port, b"set foo1 0 0 1\r\n1\r\nset foo2 0 0 1\r\n2\r\n"
                                      b"get foo1\r\nget foo2\r\n")
        assert replies == (b"STORED\r\nSTORED\r\nVALUE foo1 0 1\r\n1\r\nEND\r\n"
                           b"VALUE foo2 0 1\r\n2\r\nEND\r\n"), name
        stats = stat_values(request(host, port, b"stats\r\n"))
        print(f"{name}: bytes {stats['bytes']} of {stats['limit_maxbytes']}, "
              f"evictions {stats['evictions']}, slabs_moved {stats['slabs_moved']}")
        assert int(stats["bytes"]) <= int(stats["limit_maxbytes"]), name
        slabs = stat_values(request(host, port, b"stats slabs\r\n"))
        assert int(slabs["1:total_pages"]) >= 1, name  # foo1's class has a page of its own


def _phase(sock: socket.socket, rng: random.Random, prefix: bytes, count: int, size: int,
           batch: int, pause: float) -> tuple[int, int]:
    """Write `count` values of `size` bytes in batches; after each batch read `batch` keys
    picked among those written so far in this phase. (hits, reads)."""
    hits = reads = 0
    value = b"v" * size
    buffer = b""
    for start in range(0, count, batch):
        sock.sendall(b"".join(b"set %s%d 0 0 %d noreply\r\n%s\r\n" % (prefix, i, size, value)
                              for i in range(start, start + batch)))
        picked = [b"%s%d" % (prefix, rng.randrange(start + batch)) for _ in range(batch)]
        sock.sendall(b"get " + b" ".join(picked) + b"\r\n")
        while not buffer.endswith(b"END\r\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed"
            buffer += chunk
        hits += buffer.count(b"VALUE ")
        reads += batch
        buffer = b""
        if pause:
            time.sleep(pause)
    return hits, reads


def shifting_workload(host: str, port: int) -> float:
    """Small values, then large, then small again, in one connection: the hit ratio."""
    rng = random.Random(14)
    with socket.create_connection((host, port), timeout=30) as sock:
        phases = [_phase(sock, rng, b"s", 40_000, 100, 500, 0),
                  _phase(sock, rng, b"l", 1_200, 10_000, 40, SHIFT_ROUNDS_S),
                  _phase(sock, rng, b"t", 40_000, 100, 500, 0)]
    return sum(h for h, _ in phases) / sum(r for _, r in phases)


def test_hit_ratio_when_value_sizes_shift_is_close_to_memcacheds(tmp_path: Path) -> None:
    ratios = {}
    for both in pair(tmp_path, ["-m", "8"]):
        # the two servers run side by side, each its own process and connection
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = {name: pool.submit(shifting_workload, host, port)
                    for name, (host, port) in both.addresses().items()}
            ratios = {name: run.result() for name, run in runs.items()}
    print(f"hit ratio with shifting value sizes: kvcache {ratios['kvcache']:.3f}, "
          f"memcached {ratios['memcached']:.3f}")
    assert ratios["kvcache"] >= 0.8 * ratios["memcached"]


def test_slabs_reassign_and_automove_answer_as_memcached_does(m64: Pair) -> None:
    fill = b"".join(b"set k%05d 0 0 10 noreply\r\n0123456789\r\n" % i for i in range(25_000))
    script = (b"slabs reassign 1 2\r\nslabs reassign 1 1\r\nslabs reassign 1 99\r\n"
              b"slabs automove 2\r\nslabs automove 0\r\nslabs automove 3\r\n")
    answers = {}
    for name, (host, port) in m64.addresses().items():
        before = request(host, port, script)
        send_all(host, port, fill)  # three pages of the first class
        after = request(host, port, b"slabs reassign 1 5\r\n")
        answers[name] = (before, after)
        assert after == b"OK\r\n", name
    assert answers["kvcache"] == answers["memcached"]
    assert answers["kvcache"][0] == (
        b"NOSPARE source class has no spare pages\r\nSAME src and dst class are identical\r\n"
        b"BADCLASS invalid src or dst class id\r\nOK\r\nOK\r\nERROR\r\n")
    host, port = m64.addresses()["kvcache"]
    stats = stat_values(request(host, port, b"stats\r\n"))
    assert stats["slabs_moved"] == "1"
    assert stat_values(request(host, port, b"stats slabs\r\n"))["5:total_pages"] == "1"
    assert stat_values(request(host, port, b"stats settings\r\n"))["slab_automove"] == "0"


def test_slab_options_on_the_command_line(tmp_path: Path) -> None:
    for both in pair(tmp_path, ["-o", "no_slab_reassign,slab_automove=2"]):
        for name, (host, port) in both.addresses().items():
            assert request(host, port, b"slabs reassign 1 2\r\n") == (
                b"CLIENT_ERROR slab reassignment disabled\r\n"), name
            settings = stat_values(request(host, port, b"stats settings\r\n"))
            assert (settings["slab_reassign"], settings["slab_automove"]) == ("no", "2"), name


def test_disabled_cas_answers_as_memcached_does(tmp_path: Path) -> None:
    script = (b"set a 0 0 1\r\n1\r\ngets a\r\ncas a 0 0 1 0\r\n2\r\ncas a 0 0 1 5\r\n3\r\n"
              b"gets a\r\ncas zz 0 0 1 1\r\n4\r\nmg a c v\r\n")
    answers = {}
    for both in pair(tmp_path, ["-C"]):
        for name, (host, port) in both.addresses().items():
            answers[name] = request(host, port, script)
            settings = stat_values(request(host, port, b"stats settings\r\n"))
            assert settings["cas_enabled"] == "no", name
            meta = request(host, port, b"me a\r\n")  # memcached's size without the CAS
            assert b" cas=0 " in meta and meta.endswith(b" cls=1 size=53\r\n"), (name, meta)
    assert answers["kvcache"] == answers["memcached"]
    assert answers["kvcache"].startswith(b"STORED\r\nVALUE a 0 1 0\r\n1\r\nEND\r\nEXISTS\r\n")
