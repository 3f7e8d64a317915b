"""The two storage twins agree: kvcache._kvstore against kvcache.storage_pure, its reference.

Hypothesis drives both with the same random operation sequences (every store mode, counted
or not, reads, whole `get` replies, touch, delete, incr/decr with items pinned by earlier
reads, flush with and without delay, the clock moving, the crawler, the per-item mutations
meta commands make, eviction under a small limit) and after every step compares what each
returned, what each holds (items with their CAS, flags, times and bits, in LRU order),
every counter (get hits by LRU segment too) and the ages of the segments' tails.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcache import storage_pure
from kvcache.counters import SlabStats
from kvcache.items import Delta, Mode
from kvcache.slabs import INITIAL_BUCKETS, table_bytes


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("kvcache._kvstore")
    except ImportError:
        return None


NATIVE = _import_native()
pytestmark = pytest.mark.skipif(NATIVE is None,
                                reason="kvcache._kvstore is not built (make native)")

NOW = 1_750_000_000
ITEM_SIZE_MAX = 8 * 1024
KEYS = [b"k%d" % i for i in range(8)]
COUNTERS = ("bytes", "curr_items", "total_items", "get_expired", "get_flushed", "cas_misses",
            "get_cmds", "get_misses", "store_no_memory")
SLAB_FIELDS = tuple(SlabStats().__dict__)
LIMIT_FLOOR = table_bytes(INITIAL_BUCKETS)  # limits just above it make every class evict
PAGE_BYTES = ITEM_SIZE_MAX  # the smallest page -I allows: a few pages make a small cache

keys = st.sampled_from(KEYS)
numbers = st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1))
values = st.one_of(
    numbers.map(lambda n: b"%d" % n),
    numbers.map(lambda n: b"%d" % n),
    st.binary(max_size=40),
    st.integers(100, 3000).map(lambda n: b"v" * n),  # other size classes
    # around the first class boundaries: an arena lane holds items of two memcached classes
    st.integers(20, 120).map(lambda n: b"s" * n),
)
cas_backs = st.sampled_from([0, 0, 0, 1, 2])  # 0: no CAS; else near the current one
wire_exptimes = st.sampled_from([0, 0, 0, 1, 2, 5, 100, -1, 2_592_001, NOW + 3])

operations = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(list(Mode)), keys, values,
              st.sampled_from([0, 1, 300, 2**32 - 1]), wire_exptimes,
              cas_backs, st.booleans(), st.booleans()),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("get_reply"), keys),  # the fast lane's get: the reply bytes
    st.tuples(st.just("read"), keys),  # the counted get of get/gets and mg
    st.tuples(st.just("store_command"), st.sampled_from(list(Mode)), keys, values,
              st.sampled_from([0, 1, 2**32 - 1]), wire_exptimes, cas_backs),
    st.tuples(st.just("find"), keys),
    st.tuples(st.just("touch"), keys, wire_exptimes),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("delta"), keys, st.booleans(), numbers,
              cas_backs),
    st.tuples(st.just("pin"), keys),
    st.tuples(st.just("unpin")),
    st.tuples(st.just("flush"), st.sampled_from([0, 0, 2, 30])),
    st.tuples(st.just("tick"), st.sampled_from([1, 1, 2, 30, 61])),
    st.tuples(st.just("crawl"), st.integers(1, 20)),
    st.tuples(st.just("mutate"), keys,
              st.sampled_from(["bump", "refresh", "grant", "exptime", "invalidate",
                               "invalidate_ttl", "remove", "count_hit"])),
    st.tuples(st.just("vivify"), keys, st.booleans()),
    st.tuples(st.just("limit"), st.integers(LIMIT_FLOOR, LIMIT_FLOOR + 40_000)),
    st.tuples(st.just("reassign"), st.integers(-1, 8), st.integers(-1, 8)),
    st.tuples(st.just("automove"), st.integers(0, 2)),
)


def check_hits_add_up(s: Any) -> None:
    """Every get hit counts to exactly one segment (memcached: get_hits sums lru_hits)."""
    slab = s.stats.slab
    assert list(slab.get_hits) == [h + w + c for h, w, c in zip(
        slab.hits_to_hot, slab.hits_to_warm, slab.hits_to_cold, strict=True)]


def check_tail_ages(s: storage_pure.Storage) -> None:
    """The pure twin's tail_ages, which stops walking a lane early, against every item: per
    lane, the item of each class nearest the tail; per class, the oldest of those."""
    tails: dict[tuple[int, int], Any] = {}
    for item in s.items():  # lane by lane, head to tail: the last one met is the tail-most
        tails[item.lane, s.clsid_of(item)] = item
    expected: tuple[dict[int, int], ...] = ({}, {}, {})
    for (lane, mcls), item in tails.items():
        ages = expected[lane % storage_pure.LANES]
        ages[mcls] = max(ages.get(mcls, 0), s.now - item.atime)
    assert s.tail_ages() == expected


def snapshot(item: Any) -> tuple | None:
    if item is None:
        return None
    return (item.key, item.value, item.flags, item.exptime, item.atime, item.casbits, item.cas)


def observe(result: Any) -> Any:
    """A return value with items replaced by their contents (twins hand out other types)."""
    if isinstance(result, Delta):
        return (result.outcome, result.number, snapshot(result.item), result.in_place)
    if isinstance(result, tuple):
        return tuple(observe(r) for r in result)
    if result is None or isinstance(result, (int, bool, bytes)):
        return result
    return snapshot(result)


def state(s: Any) -> dict:
    stats = s.stats
    return {
        "items": [snapshot(i) for i in s.items()],
        "len": len(s),
        "used": s.used_bytes,
        "crawling": s.crawling,
        "age": s.oldest_age(),
        "tail_ages": s.tail_ages(),  # stats items: age_hot, age_warm, age per class
        "flush": (s.oldest_live, s.oldest_cas),
        "pages": (s.page_table(), s.pool_pages, s.slabs_moved, s.reassign_rescues,
                  s.reassign_evictions, s.hash_bytes),
        "counters": [getattr(stats, name) for name in COUNTERS],
        "slab": {name: list(getattr(stats.slab, name)) for name in SLAB_FIELDS},
    }


class Driver:
    """One twin, plus the items its caller holds (the pinned set of a pipeline)."""

    def __init__(self, module: ModuleType, limit: int, use_cas: bool = True) -> None:
        self.s = module.Storage(limit, ITEM_SIZE_MAX, NOW, page_bytes=PAGE_BYTES,
                                use_cas=use_cas)
        self.pinned: set = set()

    def step(self, op: tuple) -> Any:  # noqa: PLR0911 - one branch per operation
        s = self.s
        name, args = op[0], op[1:]
        if name == "store":
            mode, key, value, flags, wire, cas_back, stale, binary = args
            cas = max(0, s.next_cas() - cas_back) if cas_back else 0  # near-current CAS
            return s.store(mode, key, value, flags, s.expiry(wire), cas,
                           set_stale=stale, key_binary=binary)
        if name == "store_command":  # the counted store of the commands and the fast lane
            mode, key, value, flags, wire, cas_back = args
            cas = max(0, s.next_cas() - cas_back) if cas_back else 0
            return s.store_command(mode, key, value, flags, s.expiry(wire), cas)
        if name in ("get", "find", "delete", "get_reply", "read"):
            return getattr(s, name)(args[0])
        if name == "touch":
            return s.touch(args[0], s.expiry(args[1]))
        if name == "delta":
            key, incr, amount, cas_back = args
            cas = max(0, s.next_cas() - cas_back) if cas_back else 0
            return s.delta(key, incr, amount, cas, pinned=self.pinned)
        if name == "pin":
            item = s.find(args[0])
            if item is not None:
                self.pinned.add(item)
            return item
        if name == "unpin":
            self.pinned.clear()
            return None
        if name == "flush":
            return s.flush(args[0])
        if name == "tick":
            return s.tick(s.now + args[0])
        if name == "crawl":
            return s.crawl(args[0])
        if name == "vivify":  # as mg N: only on a miss
            return s.vivify(args[0], s.expiry(5), args[1]) if s.find(args[0]) is None else 0
        if name == "limit":
            return s.set_limit(args[0])
        if name == "reassign":
            return s.slabs_reassign(args[0], args[1])
        if name == "automove":
            return s.automove(args[0])
        if name == "fill":  # a run of keys of one size: a class takes pages of its own
            first, value = args
            return tuple(s.store_command(Mode.SET, b"p%d" % i, value, 0, 0)
                         for i in range(first, first + 8))
        return self.mutate(*args)

    def mutate(self, key: bytes, how: str) -> Any:
        s = self.s
        item = s.find(key)
        if item is None:
            return None
        if how == "bump":
            s.bump(item)
        elif how == "refresh":
            s.refresh(item)
        elif how == "count_hit":  # mg: its hit counted apart from the bump
            s.count_hit(item)
        elif how == "grant":
            s.grant_token(item)
        elif how == "exptime":
            s.set_exptime(item, s.expiry(7))
        elif how.startswith("invalidate"):
            s.invalidate(item, s.expiry(3) if how == "invalidate_ttl" else None)
        else:
            s.remove(item)
            return None
        return item  # the view must have followed the change


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.sampled_from([LIMIT_FLOOR + 300, LIMIT_FLOOR + 3000, LIMIT_FLOOR + 3 * PAGE_BYTES,
                              LIMIT_FLOOR + 6 * PAGE_BYTES, 1 << 20]),
       use_cas=st.sampled_from([True, True, False]),
       ops=st.lists(operations, max_size=120))
def test_twins_agree_step_by_step(limit: int, use_cas: bool, ops: list[tuple]) -> None:
    pure, native = Driver(storage_pure, limit, use_cas), Driver(NATIVE, limit, use_cas)
    assert state(pure.s) == state(native.s)
    for number, op in enumerate(ops):
        expected = observe(pure.step(op))
        assert observe(native.step(op)) == expected, (number, op)
        assert state(native.s) == state(pure.s), (number, op)
    check_hits_add_up(pure.s)
    check_tail_ages(pure.s)


many_keys = st.sampled_from([b"r%d" % i for i in range(40)])
read_heavy = st.one_of(  # one size class, many keys, reads repeated: every segment moves
    st.tuples(st.just("store"), st.just(Mode.SET), many_keys, st.just(b"12345"),
              st.just(0), st.sampled_from([0, 0, 3]), st.just(0), st.just(False),
              st.just(False)),
    st.tuples(st.just("get"), many_keys),
    st.tuples(st.just("read"), many_keys),
    st.tuples(st.just("get_reply"), many_keys),
    st.tuples(st.just("delta"), many_keys, st.booleans(), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("tick"), st.sampled_from([1, 61])),
    st.tuples(st.just("crawl"), st.integers(1, 20)),
    st.tuples(st.just("mutate"), many_keys, st.sampled_from(["refresh", "remove"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.sampled_from([LIMIT_FLOOR + 600, LIMIT_FLOOR + 5000]),
       ops=st.lists(read_heavy, min_size=100, max_size=300))
def test_twins_agree_on_a_read_heavy_mix(limit: int, ops: list[tuple]) -> None:
    pure, native = Driver(storage_pure, limit), Driver(NATIVE, limit)
    for number, op in enumerate(ops):
        assert observe(native.step(op)) == observe(pure.step(op)), (number, op)
        assert state(native.s) == state(pure.s), (number, op)
    check_hits_add_up(pure.s)
    check_tail_ages(pure.s)


straddling = st.one_of(  # sizes either side of memcached's first class boundary, which
    # falls inside one arena class: its lanes hold items of two memcached classes
    st.tuples(st.just("store_command"), st.just(Mode.SET), many_keys,
              st.integers(26, 40).map(lambda n: b"s" * n), st.sampled_from([0, 1]),
              st.just(0), st.just(0)),
    st.tuples(st.just("read"), many_keys),
    st.tuples(st.just("get_reply"), many_keys),
    st.tuples(st.just("delete"), many_keys),
    st.tuples(st.just("tick"), st.sampled_from([1, 2, 61])),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(straddling, min_size=20, max_size=200))
def test_twins_agree_on_lanes_shared_by_two_classes(ops: list[tuple]) -> None:
    pure, native = Driver(storage_pure, 1 << 20), Driver(NATIVE, 1 << 20)
    for number, op in enumerate(ops):
        assert observe(native.step(op)) == observe(pure.step(op)), (number, op)
        assert state(native.s) == state(pure.s), (number, op)
    check_hits_add_up(pure.s)
    check_tail_ages(pure.s)


def test_views_follow_storage_changes_and_refuse_reuse_after_removal() -> None:
    s = NATIVE.Storage(1 << 20, ITEM_SIZE_MAX, NOW)
    _, item = s.store(Mode.SET, b"a", b"1", 0, 0)
    s.set_exptime(item, NOW + 9)
    s.grant_token(item)
    assert item.exptime == NOW + 9 and item.casbits & 2
    s.remove(item)
    with pytest.raises(ValueError):
        s.bump(item)
    _, again = s.store(Mode.SET, b"a", b"2", 0, 0)  # the same chunk, a new item
    assert again != item and again == s.find(b"a")


def test_many_items_and_a_growing_table() -> None:
    pure = storage_pure.Storage(1 << 22, ITEM_SIZE_MAX, NOW)
    native = NATIVE.Storage(1 << 22, ITEM_SIZE_MAX, NOW)
    for s in (pure, native):
        for i in range(30_000):
            s.store(Mode.SET, b"key:%d" % i, b"x" * (i % 200), i % 3, 0)
        for i in range(0, 30_000, 7):
            s.delete(b"key:%d" % i)
        s.get(b"key:1")
    assert state(pure) == state(native)
    assert native.find(b"key:29999") is not None


page_keys = st.sampled_from([b"p%d" % i for i in range(60)])
paging = st.one_of(  # few chunks per page, many keys: classes hold several pages, pages move
    st.tuples(st.just("store_command"), st.just(Mode.SET), page_keys,
              st.sampled_from([b"s" * 10, b"m" * 1500, b"l" * 2500, b"x" * 3900]),
              st.just(0), st.sampled_from([0, 0, 0, 5]), st.just(0)),
    st.tuples(st.just("fill"), st.integers(0, 52),
              st.sampled_from([b"m" * 1500, b"l" * 2500, b"x" * 3900])),
    st.tuples(st.just("read"), page_keys),
    st.tuples(st.just("delete"), page_keys),
    st.tuples(st.just("pin"), page_keys),
    st.tuples(st.just("unpin")),
    st.tuples(st.just("delta"), page_keys, st.booleans(), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("tick"), st.sampled_from([1, 3, 61])),
    st.tuples(st.just("crawl"), st.integers(1, 30)),
    st.tuples(st.just("flush"), st.sampled_from([0, 2])),
    # the classes of those values (1, 14, 16, 17), -1 (any), 0 (the pool) and none (99)
    st.tuples(st.just("reassign"), st.sampled_from([-1, -1, 0, 1, 14, 16, 17, 99]),
              st.sampled_from([0, 1, 14, 16, 17, 99])),
    st.tuples(st.just("automove"), st.integers(1, 2)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages=st.integers(3, 12), ops=st.lists(paging, min_size=20, max_size=120))
def test_twins_agree_while_pages_move(pages: int, ops: list[tuple]) -> None:
    limit = LIMIT_FLOOR + pages * PAGE_BYTES
    pure, native = Driver(storage_pure, limit), Driver(NATIVE, limit)
    for number, op in enumerate(ops):
        assert observe(native.step(op)) == observe(pure.step(op)), (number, op)
        assert state(native.s) == state(pure.s), (number, op)
    check_hits_add_up(pure.s)
    check_tail_ages(pure.s)


counter_texts = st.one_of(
    st.integers(0, 10**19 - 1).map(lambda n: b"%d" % n),
    st.integers(0, 2**64 - 1).map(lambda n: b"%d" % n),
    st.tuples(st.integers(0, 10**6), st.integers(0, 5)).map(  # padded, as a decr leaves it
        lambda t: b"%d" % t[0] + b" " * t[1]),
    st.tuples(st.sampled_from([b"", b" ", b"+", b"-", b"0000", b"\t"]),
              st.integers(0, 2**64 - 1),
              st.sampled_from([b"", b" ", b"\t", b"\n", b"\x0b", b"\x0c", b"\r", b"x",
                               b"\x00", b"1"])).map(lambda t: t[0] + b"%d" % t[1] + t[2]),
    st.binary(min_size=1, max_size=24),
)


@settings(max_examples=300, deadline=None)
@given(text=counter_texts, incr=st.booleans(), amount=numbers, pin=st.booleans(),
       use_cas=st.booleans())
def test_twins_read_and_rewrite_counters_alike(text: bytes, incr: bool, amount: int,
                                               pin: bool, use_cas: bool) -> None:
    """incr/decr over the value shapes safe_strtoull reads (and those it refuses): the
    native twin's C reader for plain digits and its fallback agree with the pure twin."""
    pure, native = Driver(storage_pure, 1 << 20, use_cas), Driver(NATIVE, 1 << 20, use_cas)
    for driver in (pure, native):
        driver.step(("store", Mode.SET, b"c", text, 0, 0, 0, False, False))
        if pin:
            driver.step(("pin", b"c"))
    for _ in range(2):  # the second one reads what the first one wrote
        expected = observe(pure.step(("delta", b"c", incr, amount, 0)))
        assert observe(native.step(("delta", b"c", incr, amount, 0))) == expected
        assert state(native.s) == state(pure.s)
