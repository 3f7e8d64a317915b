"""`stats items` per LRU segment through a live daemon: hits by segment, ages of the tails.

memcached counts a get hit (get, gets, mg; not gat, whose hit is a touch hit) to the LRU
segment the item is in when it is found: a fresh item sits in HOT, an item pushed out of
HOT by newer ones sits in COLD, and an item read twice in COLD is moved to WARM (memcached
does that move a moment later, in its LRU maintainer; we do it at once). `age_hot`,
`age_warm` and `age` are the ages of each segment's tail.

The same scenario runs against a real memcached where its outcome does not depend on
its background thread's timing: we wait (poll `stats items`) for the states it reaches
asynchronously, never for an amount of time. Ages are checked only as orderings against
the daemon's own `time`, so a slow machine cannot fail them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from kvcache.slabs import SlabClasses, item_ntotal
from tests.kvcache_wire import Memcached, reference_missing, stat_values
from tests.procs import kvcache_daemon

FLAGS = ["-m", "64", "-t", "1", "-U", "0"]
ITEMS = 100  # of one size: HOT keeps 20% of them, the oldest 80% go to COLD
WAIT_S = 60  # the most we wait for memcached's maintainer to reach a state (not asserted)


class Conn:
    """One client connection: a request, then its whole reply, before the next request (so
    a single `get` takes kvcache's fast lane)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=20)

    def ask(self, data: bytes, end: bytes = b"END\r\n", count: int = 1) -> bytes:
        self.sock.sendall(data)
        reply = b""
        while reply.count(end) < count or not reply.endswith(end):
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {reply!r}"
            reply += chunk
        return reply

    def row(self, cls: int) -> dict[str, int]:
        """The `stats items` figures of class `cls`, without the `items:N:` prefix."""
        prefix = f"items:{cls}:"
        values = stat_values(self.ask(b"stats items\r\n"))
        return {k[len(prefix):]: int(v) for k, v in values.items() if k.startswith(prefix)}

    def now(self) -> int:
        return int(stat_values(self.ask(b"stats\r\n"))["time"])

    def close(self) -> None:
        self.sock.close()


def class_of(value_bytes: int) -> int:
    """The memcached class of one of our items (4-byte key, no flags)."""
    return SlabClasses(1 << 20).clsid(item_ntotal(4, 0, value_bytes))


def fill(conn: Conn, prefix: bytes, value_bytes: int) -> None:
    """ITEMS sets, k000 the oldest."""
    sets = b"".join(b"set %s%03d 0 0 %d\r\n%s\r\n" % (prefix, i, value_bytes, b"v" * value_bytes)
                    for i in range(ITEMS))
    conn.ask(sets, b"STORED\r\n", ITEMS)


def wait_for(conn: Conn, cls: int, done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll the class's row until `done` holds (memcached's maintainer gets there)."""
    deadline = time.monotonic() + WAIT_S
    row = conn.row(cls)
    while not done(row):
        assert time.monotonic() < deadline, f"never reached: {row}"
        time.sleep(0.05)
        row = conn.row(cls)
    return row


def hits(row: dict[str, int]) -> tuple[int, int, int, int]:
    return row["hits_to_hot"], row["hits_to_warm"], row["hits_to_cold"], row["hits_to_temp"]


def cold_warm_scenario(conn: Conn) -> list[tuple[int, int, int, int]]:
    """Reads of items pushed to COLD, one read per request: the hits by segment after each
    step. Deterministic for memcached too, as each step waits for its LRU moves."""
    cls = class_of(10)
    fill(conn, b"c", 10)
    wait_for(conn, cls, lambda row: row["number_cold"] >= ITEMS * 8 // 10)
    seen = []
    conn.ask(b"get c000\r\n")  # the oldest: in COLD; fetched
    seen.append(hits(conn.row(cls)))
    conn.ask(b"get c000\r\n")  # in COLD still when found; now active: off to WARM
    seen.append(hits(conn.row(cls)))
    wait_for(conn, cls, lambda row: row["number_warm"] == 1)
    conn.ask(b"get c000\r\n")  # found in WARM
    seen.append(hits(conn.row(cls)))
    conn.ask(b"mg c001 f\r\n", b"\r\n")  # a meta get hit counts as a get hit
    conn.ask(b"get c002 c003\r\n")  # a multi-get: each key
    conn.ask(b"gets c004\r\n")
    seen.append(hits(conn.row(cls)))
    conn.ask(b"gat 0 c005\r\n")  # a touch hit, not a get hit: no segment counts it
    seen.append(hits(conn.row(cls)))
    slabs = stat_values(conn.ask(b"stats slabs\r\n"))
    seen.append((int(slabs[f"{cls}:get_hits"]), int(slabs[f"{cls}:touch_hits"]), 0, 0))
    return seen


EXPECTED = [(0, 0, 1, 0), (0, 0, 2, 0), (0, 1, 2, 0), (0, 1, 6, 0), (0, 1, 6, 0), (7, 1, 0, 0)]


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conn]:
    daemon = kvcache_daemon(tmp_path_factory.mktemp("segments"), extra=FLAGS).start()
    conn = Conn(daemon.host, daemon.port)
    yield conn
    conn.close()
    assert daemon.stop() == 0, daemon.log()


def test_hits_count_to_the_segment_the_item_was_found_in(ours: Conn) -> None:
    assert cold_warm_scenario(ours) == EXPECTED


def test_memcached_counts_the_same_hits(tmp_path) -> None:
    reason = reference_missing()
    if reason is not None:
        pytest.skip(reason)
    real = Memcached(tmp_path, FLAGS).start()
    try:
        conn = Conn(real.host, real.port)
        assert cold_warm_scenario(conn) == EXPECTED
        conn.close()
    finally:
        real.stop()


def test_a_fresh_item_is_hit_in_hot_and_the_tails_age(ours: Conn) -> None:
    """Ours only: memcached's maintainer moves HOT items to COLD by their age as well, so
    whether its newest item is still in HOT depends on when the second ticks over."""
    cls = class_of(40)
    fill(ours, b"h", 40)
    set_by = ours.now()  # every item's last access is at or before this
    ours.ask(b"get h099\r\n")  # the newest: in HOT
    row = ours.row(cls)
    assert hits(row) == (1, 0, 0, 0)
    assert (row["number_hot"], row["number_warm"]) == (ITEMS // 5, 0)
    while ours.now() < set_by + 2:  # the clock ticks over (waited for, not timed)
        time.sleep(0.1)
    before = ours.now()
    row = ours.row(cls)
    # nobody touched the tails since set_by, and at least two seconds have gone
    assert row["age_hot"] >= before - set_by >= 2
    assert row["age"] >= before - set_by
    assert row["age_warm"] == 0  # WARM is empty
    ours.ask(b"get h000\r\n")
    ours.ask(b"get h000\r\n")  # active: to WARM, its access time now
    row = ours.row(cls)
    assert hits(row) == (1, 0, 2, 0)
    assert row["number_warm"] == 1
    assert row["age_warm"] < row["age"]  # WARM's tail was read after COLD's was stored
    after = ours.now()
    while ours.now() <= after:
        time.sleep(0.1)
    later = ours.row(cls)
    assert later["age"] > row["age"] and later["age_hot"] > row["age_hot"]  # they move
