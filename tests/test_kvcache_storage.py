"""The cache core alone (kvcache/storage.py, whichever twin runs): no sockets, time moved by
hand with `tick`. tests/test_kvcache_storage_twins.py proves the two twins agree."""

from __future__ import annotations

import random

import pytest

from kvcache.items import STALE, Mode, Outcome, item_cost
from kvcache.slabs import INITIAL_BUCKETS, record_bytes, table_bytes
from kvcache.stats import items_stats
from kvcache.storage import REALTIME_MAXDELTA, Storage

NOW = 1_750_000_000
MB = 1024 * 1024


SMALL = 16 * 1024  # -I and the page size of the small caches below: pages enough to share


def make(limit: int = 64 * MB, item_size_max: int = MB) -> Storage:
    """A cache of `limit` bytes; below 64 MB with SMALL pages (and -I), so every class
    in use can have pages of its own."""
    if limit < 64 * MB:
        return Storage(limit, min(item_size_max, SMALL), NOW, page_bytes=SMALL)
    return Storage(limit, item_size_max, NOW)


def put(s: Storage, key: bytes, value: bytes = b"v", exptime: int = 0, flags: int = 0) -> None:
    outcome, _ = s.store(Mode.SET, key, value, flags, s.expiry(exptime))
    assert outcome is Outcome.STORED


def check_accounting(s: Storage) -> None:
    """`bytes` is exactly the cost of what is linked, and never above the limit."""
    items = s.items()
    assert s.stats.curr_items == len(items) == len(s)
    assert s.stats.bytes == sum(item_cost(i.key, i.value, i.flags, i.exptime) for i in items)
    assert s.used_bytes <= s.limit_bytes


# -- expiry ---------------------------------------------------------------------------------
def test_relative_exptime_expires_when_the_clock_reaches_it() -> None:
    s = make()
    put(s, b"a", exptime=10)
    s.tick(NOW + 9)
    assert s.get(b"a") is not None
    s.tick(NOW + 10)
    assert s.get(b"a") is None
    assert s.stats.get_expired == 1


def test_thirty_days_is_relative_and_one_second_more_is_absolute() -> None:
    s = make()
    assert s.expiry(REALTIME_MAXDELTA) == NOW + REALTIME_MAXDELTA
    assert s.expiry(REALTIME_MAXDELTA + 1) == REALTIME_MAXDELTA + 1  # 1970: already past
    put(s, b"rel", exptime=REALTIME_MAXDELTA)
    put(s, b"abs-past", exptime=REALTIME_MAXDELTA + 1)
    put(s, b"abs-future", exptime=NOW + 100)
    assert s.get(b"rel") is not None
    assert s.get(b"abs-past") is None
    s.tick(NOW + 99)
    assert s.get(b"abs-future") is not None
    s.tick(NOW + 100)
    assert s.get(b"abs-future") is None


def test_negative_exptime_is_already_expired() -> None:
    s = make()
    put(s, b"a", exptime=-1)
    assert s.find(b"a") is None


def test_touch_moves_the_expiry_and_costs_nothing() -> None:
    s = make()
    put(s, b"a")
    before = s.stats.bytes
    assert s.touch(b"a", s.expiry(5)) is not None
    assert s.stats.bytes == before  # the exptime lives in the record's fixed header
    check_accounting(s)
    s.tick(NOW + 5)
    assert s.touch(b"a", 0) is None
    check_accounting(s)


# -- flush_all ------------------------------------------------------------------------------
def test_flush_now_kills_what_exists_and_spares_what_comes_after() -> None:
    s = make()
    put(s, b"old")
    s.flush(0)
    put(s, b"new")  # same second as the flush
    assert s.get(b"old") is None
    assert s.get(b"new") is not None
    assert s.stats.get_flushed == 1


def test_delayed_flush_acts_at_its_deadline() -> None:
    s = make()
    put(s, b"a")
    s.flush(10)
    s.tick(NOW + 5)
    put(s, b"b")
    assert s.get(b"a") is not None and s.get(b"b") is not None
    s.tick(NOW + 9)  # deadline - 1: memcached's oldest_live
    assert s.get(b"a") is None
    assert s.get(b"b") is None  # read at NOW+5, before the deadline: flushed too
    s.tick(NOW + 10)
    put(s, b"c")
    assert s.get(b"c") is not None


def test_flushed_items_are_reclaimed_by_the_crawler() -> None:
    s = make()
    for i in range(100):
        put(s, b"k%d" % i)
    s.flush(0)
    assert s.stats.curr_items == 100  # lazily, as memcached
    assert s.crawl(1000) == 100
    assert s.stats.curr_items == 0
    assert s.stats.slab.total("expired_unfetched") == 0  # flushed is not expired
    check_accounting(s)


# -- eviction -------------------------------------------------------------------------------
def test_eviction_keeps_bytes_under_the_limit() -> None:
    limit = 2 * MB
    s = make(limit=limit)
    rng = random.Random(7)
    for i in range(20000):
        put(s, b"key:%d" % i, b"x" * rng.randrange(1, 400))
        assert s.used_bytes <= limit
    assert s.stats.slab.total("evicted") > 0
    assert s.stats.total_items == 20000
    assert s.stats.slab.total("evicted") == 20000 - s.stats.curr_items
    check_accounting(s)


ROOM_FOR_3000 = 3000 * item_cost(b"key:0000", b"x" * 100) + 8192  # + the hash table


def test_items_read_twice_survive_eviction() -> None:
    s = make(limit=ROOM_FOR_3000)
    for i in range(1000):
        put(s, b"key:%d" % i, b"x" * 100)
    hot = [b"key:%d" % i for i in range(0, 1000, 10)]  # the oldest ones, read again
    for key in hot:  # the first read marks them fetched, the second active: out of COLD
        assert s.get(key) is not None
        assert s.get(key) is not None
    for i in range(1000, 3500):  # ~3000 fit: about 500 of the first 1000 must go
        put(s, b"key:%d" % i, b"x" * 100)
    assert s.stats.slab.total("evicted") > 100
    assert all(s.find(key) is not None for key in hot)
    assert s.find(b"key:1") is None  # old and never read: evicted


def test_a_single_read_does_not_rescue_an_item_from_cold() -> None:
    s = make(limit=ROOM_FOR_3000)
    for i in range(1000):
        put(s, b"key:%d" % i, b"x" * 100)
    assert s.get(b"key:0") is not None  # fetched once: marked, not moved
    for i in range(1000, 3500):
        put(s, b"key:%d" % i, b"x" * 100)
    assert s.find(b"key:0") is None
    assert s.stats.slab.total("evicted_unfetched") > 0


def test_expired_tail_items_are_reclaimed_before_anything_is_evicted() -> None:
    s = make(limit=ROOM_FOR_3000)
    for i in range(2000):
        put(s, b"ttl:%d" % i, b"x" * 100, exptime=5)
    s.tick(NOW + 5)
    for i in range(2000):
        put(s, b"live:%d" % i, b"x" * 100)
    assert s.stats.slab.total("evicted") == 0
    assert s.stats.slab.total("reclaimed") > 0
    assert s.stats.slab.total("expired_unfetched") == s.stats.slab.total("reclaimed")


def test_an_item_larger_than_the_limit_is_refused() -> None:
    s = make(limit=64 * 1024, item_size_max=32 * 1024)
    outcome, _ = s.store(Mode.SET, b"a", b"x" * 70_000, 0, 0)
    assert outcome is Outcome.NO_MEMORY
    check_accounting(s)


def test_no_evictions_mode_refuses_writes_when_full() -> None:
    s = Storage(MB, SMALL, NOW, evict=False, page_bytes=SMALL)
    outcomes = {s.store(Mode.SET, b"k%d" % i, b"x" * 1000, 0, 0)[0] for i in range(2000)}
    assert Outcome.NO_MEMORY in outcomes
    assert s.stats.slab.total("evicted") == 0
    check_accounting(s)


# -- crawler --------------------------------------------------------------------------------
def test_crawler_counts_reclaimed_and_expired_unfetched() -> None:
    s = make()
    for i in range(10):
        put(s, b"t%d" % i, exptime=3)
    put(s, b"forever")
    assert s.get(b"t0") is not None  # fetched once: not "unfetched"
    s.tick(NOW + 3)
    reclaimed = 0
    while True:
        reclaimed += s.crawl(4)
        if not s.crawling:
            break
    assert reclaimed == 10
    slab = s.stats.slab
    assert slab.total("crawler_reclaimed") == 10
    assert slab.total("reclaimed") == 10
    assert slab.total("expired_unfetched") == 9
    assert slab.total("crawler_items_checked") == 11
    assert s.find(b"forever") is not None
    check_accounting(s)


def test_crawler_survives_items_moving_and_vanishing_under_it() -> None:
    s = make()
    for i in range(100):
        put(s, b"k%d" % i, exptime=10 if i % 2 else 0)
    s.crawl(30)
    assert s.crawling
    for i in range(0, 100, 3):
        s.get(b"k%d" % i)
        s.delete(b"k%d" % (i + 1))
    s.tick(NOW + 10)
    while s.crawling:
        s.crawl(7)
    s.crawl(1000)
    assert all(not s.items()[j].exptime for j in range(len(s)))
    check_accounting(s)


# -- CAS and the store modes ----------------------------------------------------------------
def test_every_store_gets_a_new_unique_cas() -> None:
    s = make()
    seen = set()
    for i in range(100):
        _, item = s.store(Mode.SET, b"k%d" % (i % 7), b"v", 0, 0)
        assert item is not None and item.cas not in seen
        seen.add(item.cas)
    s.store(Mode.SET, b"n", b"1", 0, 0)
    item = s.delta(b"n", True, 1).item
    assert item is not None and item.cas > max(seen)


def test_cas_mode() -> None:
    s = make()
    assert s.store(Mode.CAS, b"a", b"x", 0, 0, 1)[0] is Outcome.NOT_FOUND
    assert s.stats.cas_misses == 1
    _, item = s.store(Mode.SET, b"a", b"x", 0, 0)
    assert item is not None
    assert s.store(Mode.CAS, b"a", b"y", 0, 0, item.cas + 1)[0] is Outcome.EXISTS
    assert s.store(Mode.CAS, b"a", b"y", 0, 0, item.cas)[0] is Outcome.STORED
    assert s.store(Mode.CAS, b"a", b"z", 0, 0, item.cas)[0] is Outcome.EXISTS
    assert s.stats.slab.total("cas_hits") == 1
    assert s.stats.slab.total("cas_badval") == 2


def test_stale_cas_write_is_kept_but_marked() -> None:
    s = make()
    _, item = s.store(Mode.SET, b"a", b"x", 0, s.expiry(100))
    assert item is not None
    s.invalidate(item, None)
    assert item.casbits & STALE
    outcome, new = s.store(Mode.CAS, b"a", b"y", 0, 0, 1, set_stale=True)
    assert outcome is Outcome.STORED and new is not None
    assert new.casbits & STALE and new.exptime == item.exptime


def test_add_replace_append_prepend() -> None:
    s = make()
    assert s.store(Mode.REPLACE, b"a", b"x", 0, 0)[0] is Outcome.NOT_STORED
    assert s.store(Mode.APPEND, b"a", b"x", 0, 0)[0] is Outcome.NOT_STORED
    assert s.store(Mode.ADD, b"a", b"mid", 7, s.expiry(50))[0] is Outcome.STORED
    assert s.store(Mode.ADD, b"a", b"x", 0, 0)[0] is Outcome.NOT_STORED
    s.store(Mode.APPEND, b"a", b">", 1, 0)
    s.store(Mode.PREPEND, b"a", b"<", 2, 0)
    item = s.get(b"a")
    assert item is not None
    assert (item.value, item.flags, item.exptime) == (b"<mid>", 7, NOW + 50)
    check_accounting(s)


# -- incr / decr ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "incr", "delta", "number", "stored"),
    [
        (b"100", False, 1, 99, b"99 "),
        (b"99", True, 1, 100, b"100"),
        (b"18446744073709551615", True, 1, 0, b"0" + b" " * 19),
        (b"5", False, 10, 0, b"0"),
        (b"  12", True, 1, 13, b"13  "),
        (b"7 tail", True, 1, 8, b"8     "),
    ],
)
def test_delta(value: bytes, incr: bool, delta: int, number: int, stored: bytes) -> None:
    s = make()
    put(s, b"n", value)
    outcome, result, _, _ = s.delta(b"n", incr, delta)
    assert (outcome, result) == (Outcome.STORED, number)
    item = s.find(b"n")
    assert item is not None and item.value == stored
    check_accounting(s)


@pytest.mark.parametrize("value", [b"abc", b"", b"-1", b"1x", b"18446744073709551616", b"   "])
def test_delta_on_non_numbers(value: bytes) -> None:
    s = make()
    put(s, b"n", value)
    assert s.delta(b"n", True, 1)[0] is Outcome.NON_NUMERIC


# -- accounting -----------------------------------------------------------------------------
def test_bytes_return_to_zero() -> None:
    s = make()
    for i in range(500):
        put(s, b"k%d" % i, b"x" * i, exptime=i % 3, flags=i)
    check_accounting(s)
    for i in range(500):
        s.delete(b"k%d" % i)
    assert s.stats.bytes == 0 and s.stats.curr_items == 0


def test_an_item_costs_its_arena_chunk() -> None:
    s = make()
    put(s, b"k" * 14, b"v" * 100)
    assert s.stats.bytes == item_cost(b"k" * 14, b"v" * 100) == 192
    assert record_bytes(14, 100) == 154  # the record, in the chunk of its memcached class
    assert s.used_bytes == MB + table_bytes(INITIAL_BUCKETS)  # one whole page


def test_freed_chunks_are_reused_not_carved_again() -> None:
    s = make()
    for i in range(1000):
        put(s, b"k%04d" % i, b"x" * 100)
    carved = s.used_bytes
    for i in range(1000):
        assert s.delete(b"k%04d" % i) is not None
    for i in range(1000):
        put(s, b"n%04d" % i, b"y" * 100)
    assert s.used_bytes == carved


def test_a_full_class_evicts_from_its_own_lru_only() -> None:
    s = make(limit=ROOM_FOR_3000)
    put(s, b"big", b"b" * 5000)
    for i in range(5000):
        put(s, b"key:%d" % i, b"x" * 100)
    assert s.find(b"big") is not None  # another class: untouched by the small items
    assert s.used_bytes <= s.limit_bytes
    check_accounting(s)


# -- stats items: the LRU segments ----------------------------------------------------------
def segment_rows(s: Storage, key: bytes) -> dict[str, int]:
    """The `stats items` row of `key`'s size class, without the `items:N:` prefix."""
    prefix = f"items:{s.clsid_of(s.find(key))}:"
    return {k[len(prefix):]: int(v) for k, v in items_stats(s) if k.startswith(prefix)}


def test_stats_items_counts_each_segment_and_the_moves_between_them() -> None:
    s = make()
    for i in range(100):
        put(s, b"k%03d" % i)
    row = segment_rows(s, b"k000")
    assert row["number"] == 100
    assert (row["number_hot"], row["number_warm"], row["number_cold"]) == (20, 0, 80)
    assert (row["moves_to_cold"], row["moves_to_warm"], row["moves_within_lru"]) == (80, 0, 0)
    for i in range(10):  # the oldest: in COLD; read twice they are active and go to WARM
        s.get(b"k%03d" % i)
        s.get(b"k%03d" % i)
    row = segment_rows(s, b"k000")
    assert (row["number_hot"], row["number_warm"], row["number_cold"]) == (20, 10, 70)
    assert row["moves_to_warm"] == 10
    s.stats.reset()  # `stats reset`: the moves are counters, the segments are state
    row = segment_rows(s, b"k000")
    assert (row["moves_to_cold"], row["moves_to_warm"]) == (0, 0)
    assert (row["number_hot"], row["number_warm"], row["number_cold"]) == (20, 10, 70)
    for i in range(99):
        s.delete(b"k%03d" % i)
    row = segment_rows(s, b"k099")
    assert (row["number"], row["number_hot"], row["number_warm"], row["number_cold"]) == (
        1, 1, 0, 0)


def test_an_overfull_warm_sends_its_active_tail_round_and_the_rest_to_cold() -> None:
    s = make()
    for i in range(100):
        put(s, b"k%03d" % i)
    for i in range(60):  # more than WARM's 40% share wants to leave COLD
        s.get(b"k%03d" % i)
        s.get(b"k%03d" % i)
    row = segment_rows(s, b"k000")
    assert row["moves_within_lru"] > 0  # active WARM tails went round once
    assert row["number_warm"] <= 40 and row["number_hot"] <= 20
    assert row["number_hot"] + row["number_warm"] + row["number_cold"] == 100
    assert s.stats.slab.total("moves_to_cold") == row["moves_to_cold"]  # what `stats` sums
