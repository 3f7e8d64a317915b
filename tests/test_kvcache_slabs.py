"""kvcache's memory model: slab pages per class, `slabs reassign`, automove and -C, in both
storage twins (no sockets) and against the daemon beside a real memcached.

The storage tests run on each twin (kvcache.storage_pure and kvcache._kvstore);
tests/test_kvcache_storage_twins.py proves them equal step by step, reassign and automove
among its operations. The daemon tests need the memcached binary (skipped without it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.daemon import ConfigError
from kvcache import storage_pure
from kvcache.__main__ import _slab_options
from kvcache.items import Mode, Outcome
from kvcache.settings import Settings, SettingsError
from kvcache.slab_policy import (
    REASSIGN_BADCLASS,
    REASSIGN_NOSPARE,
    REASSIGN_OK,
    REASSIGN_SAME,
)
from kvcache.slabs import INITIAL_BUCKETS, item_ntotal, page_size, table_bytes

NOW = 1_750_000_000
MB = 1024 * 1024
PAGE = 16 * 1024  # -I and page size of the small caches


def _twins() -> list[ModuleType]:
    twins = [storage_pure]
    try:
        twins.append(importlib.import_module("kvcache._kvstore"))
    except ImportError:
        pass
    return twins


TWINS = _twins()
twin = pytest.mark.parametrize("module", TWINS, ids=lambda m: m.__name__.split(".")[-1])


def small(module: ModuleType, pages: int, **kwargs: Any) -> Any:
    """A cache with room for `pages` pages of PAGE bytes (plus the hash table)."""
    return module.Storage(pages * PAGE + table_bytes(INITIAL_BUCKETS), PAGE, NOW,
                          page_bytes=PAGE, **kwargs)


def put(s: Any, key: bytes, size: int) -> Outcome:
    return s.store(Mode.SET, key, b"x" * size, 0, 0)[0]


def pages_of(s: Any) -> dict[int, int]:
    return {cls: pages for cls, pages, _ in s.page_table()}


# -- the reproduction, in the storage --------------------------------------------------
@twin
def test_a_class_that_appears_after_memory_is_full_keeps_its_items(module: ModuleType) -> None:
    s = module.Storage(64 * MB, MB, NOW)
    for i in range(96):
        assert put(s, b"big:%d" % i, 582_069) is Outcome.STORED
    for i in range(78):
        assert put(s, b"mid:%d" % i, 143_829) is Outcome.STORED
    assert put(s, b"foo1", 1) is Outcome.STORED
    assert put(s, b"foo2", 1) is Outcome.STORED
    assert s.get(b"foo1") is not None and s.get(b"foo2") is not None
    assert s.stats.bytes <= s.limit_bytes
    assert s.used_bytes <= s.limit_bytes
    # the big values filled memory; the middle ones' class and foo1's each took a page
    # from the class holding the most
    assert s.slabs_moved == 2


@twin
def test_pages_go_whole_to_classes_and_chunks_come_from_their_own(module: ModuleType) -> None:
    s = small(module, 4)
    for i in range(100):
        put(s, b"a%d" % i, 10)
    tiny = s.clsid_of(s.find(b"a0"))
    assert pages_of(s) == {tiny: 1}
    per_page = PAGE // s.arena.sizes[tiny - 1]
    assert s.page_table() == [(tiny, 1, per_page - 100)]
    assert s.used_bytes == PAGE + table_bytes(INITIAL_BUCKETS)


@twin
def test_after_flush_all_the_crawler_and_automove_give_the_pages_to_another_class(
        module: ModuleType) -> None:
    s = small(module, 3)
    for i in range(2000):  # fills all three pages, evicting within its class
        put(s, b"a%d" % i, 40)
    first = s.clsid_of(s.find(b"a1999"))
    s.flush(0)
    while s.crawl(1000) or s.crawling:
        pass
    assert s.page_table() == [(first, 3, 3 * (PAGE // s.arena.sizes[first - 1]))]
    for i in range(12):
        assert put(s, b"b%d" % i, 3000) is Outcome.STORED
        s.automove(1)  # as the daemon does once a second
    second = s.clsid_of(s.find(b"b11"))
    # one page taken when the class first appeared, one moved by automove when it evicted;
    # the first class keeps its last page
    assert pages_of(s) == {first: 1, second: 2}
    assert s.slabs_moved == 2 and s.reassign_evictions == 0
    assert s.used_bytes <= s.limit_bytes


# -- slabs reassign ------------------------------------------------------------------------------
@twin
def test_reassign_answers_in_memcacheds_order(module: ModuleType) -> None:
    s = small(module, 4)
    classes = len(s.arena.sizes)
    assert s.slabs_reassign(1, 1) == REASSIGN_SAME
    assert s.slabs_reassign(1, classes + 1) == REASSIGN_BADCLASS
    assert s.slabs_reassign(-2, 1) == REASSIGN_BADCLASS
    assert s.slabs_reassign(1, 2) == REASSIGN_NOSPARE  # no page at all
    assert s.slabs_reassign(-1, 2) == REASSIGN_BADCLASS  # no class to pick (memcached's)
    for i in range(300):
        put(s, b"a%d" % i, 10)
    cls = s.clsid_of(s.find(b"a0"))
    assert pages_of(s) == {cls: 2}
    assert s.slabs_reassign(cls, cls + 5) == REASSIGN_OK
    assert pages_of(s) == {cls: 1, cls + 5: 1}
    assert s.slabs_reassign(cls, cls + 5) == REASSIGN_NOSPARE  # a class keeps its last page
    assert s.slabs_moved == 1


@twin
def test_a_leaving_page_rescues_its_items_into_free_chunks(module: ModuleType) -> None:
    s = small(module, 4)
    put(s, b"a", 10)
    cls = s.clsid_of(s.find(b"a"))
    per_page = PAGE // s.arena.sizes[cls - 1]
    keys = [b"a%d" % i for i in range(per_page + 29)]  # with "a": a full page, 30 on a second
    for key in keys:
        put(s, key, 10)
    s.delete(b"a")
    for key in keys[:100]:  # room on the first page for the second's items
        s.delete(key)
    assert s.slabs_reassign(cls, 0) == REASSIGN_OK  # the emptiest page, to the pool
    assert s.pool_pages == 1
    assert (s.reassign_rescues, s.reassign_evictions) == (30, 0)
    assert all(s.get(key) is not None for key in keys[100:])
    assert s.slabs_reassign(0, cls + 1) == REASSIGN_NOSPARE  # the pool gives while it has 2
    put(s, b"big", 5000)  # a new class takes the pooled page first
    assert s.pool_pages == 0


@twin
def test_reassign_evicts_what_no_free_chunk_can_hold(module: ModuleType) -> None:
    s = small(module, 4)
    for i in range(2000):
        put(s, b"a%d" % i, 10)  # all four pages, full
    cls = s.clsid_of(s.find(b"a1999"))
    before = s.stats.curr_items
    assert s.slabs_reassign(cls, cls + 1) == REASSIGN_OK
    per_page = PAGE // s.arena.sizes[cls - 1]
    assert s.reassign_evictions == per_page
    assert s.stats.curr_items == before - per_page
    assert s.stats.slab.total("evicted") > 0  # the LRU's, before; the move's are apart


# -- automove ------------------------------------------------------------------------------------
@twin
def test_automove_gives_the_evicting_class_a_page_from_a_class_with_free_ones(
        module: ModuleType) -> None:
    s = small(module, 6)
    for i in range(1000):
        put(s, b"a%d" % i, 10)
    small_cls = s.clsid_of(s.find(b"a0"))
    for i in range(1000):
        s.delete(b"a%d" % i)  # three pages of small chunks, all free
    for i in range(60):
        put(s, b"b%d" % i, 3000)  # the rest of memory, then evictions
    big_cls = s.clsid_of(s.find(b"b59"))
    assert s.automove(0) is False  # off
    for i in range(60, 90):
        put(s, b"b%d" % i, 3000)
    big_pages = pages_of(s)[big_cls]
    assert s.automove(1) is True
    assert pages_of(s)[big_cls] == big_pages + 1
    assert s.automove(1) is False  # no eviction since the last call: nothing moves
    assert s.reassign_evictions == 0 and small_cls != big_cls


@twin
def test_automove_level_one_spares_classes_that_evict_and_level_two_does_not(
        module: ModuleType) -> None:
    s = small(module, 6)
    for i in range(3000):  # two classes, both evicting
        put(s, b"a%d" % i, 10)
        put(s, b"b%d" % i, 3000)
    s.automove(1)  # window start
    for i in range(3000, 3400):
        put(s, b"a%d" % i, 10)
        if i % 4 == 0:
            put(s, b"b%d" % i, 3000)
    assert s.automove(1) is False
    for i in range(3400, 3800):
        put(s, b"a%d" % i, 10)
        if i % 4 == 0:
            put(s, b"b%d" % i, 3000)
    assert s.automove(2) is True  # the class evicting less gives a page


@twin
def test_automove_level_one_takes_from_an_idle_class_with_older_data(module: ModuleType) -> None:
    s = small(module, 6)
    for i in range(500):  # three pages of older data, then idle
        put(s, b"old%d" % i, 10)
    old = s.clsid_of(s.find(b"old0"))
    s.tick(NOW + 100)
    for i in range(40):  # the rest of memory and evictions, all young
        put(s, b"new%d" % i, 3000)
    assert s.automove(1) is True
    assert pages_of(s)[old] == 2 and s.reassign_evictions > 0  # the oldest went
    for i in range(40, 80):
        put(s, b"new%d" % i, 3000)
    s.tick(NOW + 101)
    for i in range(500, 1400):  # the small class is young again and evicting itself
        put(s, b"old%d" % i, 10)
    assert s.automove(1) is False  # the other class evicts too: level 1 leaves it be


# -- -C --------------------------------------------------------------------------------------
@twin
def test_without_cas_items_carry_none_refuse_cas_and_save_eight_bytes(module: ModuleType) -> None:
    with_cas = module.Storage(64 * MB, MB, NOW)
    without = module.Storage(64 * MB, MB, NOW, use_cas=False)
    value = b"v" * (96 - item_ntotal(1, 0, 0))  # exactly the first chunk with its CAS
    for s in (with_cas, without):
        assert s.store(Mode.SET, b"k", value, 0, 0)[0] is Outcome.STORED
        s.store(Mode.SET, b"big", value + b"x" * 5, 0, 0)
    assert with_cas.find(b"k").cas > 0 and without.find(b"k").cas == 0
    assert with_cas.clsid_of(with_cas.find(b"big")) == 2
    assert without.clsid_of(without.find(b"big")) == 1  # 8 bytes less: the smaller class
    assert without.store(Mode.CAS, b"k", b"1", 0, 0, 0)[0] is Outcome.EXISTS
    assert without.store(Mode.CAS, b"nope", b"1", 0, 0, 1)[0] is Outcome.NOT_FOUND
    without.flush(0)
    assert without.store(Mode.SET, b"after", b"1", 0, 0)[0] is Outcome.STORED
    assert without.get(b"after") is not None  # flushed by time alone, not by CAS


# -- the property: nothing is evicted while its class's memory could hold it ---------------
SIZES = [10, 40, 300, 1500, 6000]
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 60), st.sampled_from(SIZES)),
    st.tuples(st.just("delete"), st.integers(0, 60)),
    st.tuples(st.just("get"), st.integers(0, 60)),
    st.tuples(st.just("reassign"), st.integers(-1, 12), st.integers(0, 12)),
    st.tuples(st.just("automove"), st.integers(1, 2)),
), max_size=150)


def room_for_a_page(s: Any) -> bool:
    return s.pool_pages > 0 or s.used_bytes + s.page_bytes <= s.limit_bytes


@pytest.mark.parametrize("module", TWINS, ids=lambda m: m.__name__.split(".")[-1])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(pages=st.integers(1, 6), script=ops)
def test_no_stored_item_is_evicted_while_its_class_could_hold_it(
        module: ModuleType, pages: int, script: list[tuple]) -> None:
    s = small(module, pages)
    alive: dict[bytes, int] = {}  # key -> its class, for every item stored and not deleted
    for op in script:
        room = room_for_a_page(s)
        key = b"k%d" % op[1] if op[0] in ("set", "delete", "get") else b""
        if op[0] == "set":
            if put(s, key, op[2]) is Outcome.STORED:
                alive[key] = s.clsid_of(s.find(key))
            else:
                alive.pop(key, None)
        elif op[0] == "delete":
            s.delete(key)
            alive.pop(key, None)
        elif op[0] == "get":
            s.get(key)
        elif op[0] == "reassign":
            s.slabs_reassign(op[1], op[2])
        else:
            s.automove(op[1])
        gone = {k: cls for k, cls in alive.items() if s.find(k) is None}
        free = {cls: free for cls, _, free in s.page_table()}
        for k, cls in gone.items():
            assert free.get(cls, 0) == 0, (op, k, cls)  # its class's pages are full
            if op[0] == "set":
                assert not room, (op, k)  # and no page could be had
            del alive[k]


# -- README.md's memory paragraph, sentence by sentence ----------------------------------------
README_PROMISES = [
    "Items live in one arena laid out as memcached's slab allocator: memory goes to size "
    "classes in whole pages (1 MiB, or `-I` when larger), and each class carves its chunks "
    "from its own pages.",
    "A class that first appears when memory is full takes a page from the class holding the "
    "most, so it never holds just one item.",
    "`-m` bounds what items really cost: the pages carved and the hash index, not only the "
    "values.",
    "`slabs reassign <src> <dst>` moves one page at once, and with `slabs automove 1` (the "
    "default, as in memcached 1.6) the daemon moves at most one page a second to the class "
    "that evicts most.",
    "`-C` disables CAS: items carry none and take 8 bytes less.",
    "A value too large for half a page takes a chunk of a large class of its own, where "
    "memcached splits it over smaller chunks, so such values pack less tightly than in "
    "memcached.",
]


@pytest.mark.parametrize("promise", README_PROMISES)
def test_the_readme_says_it_in_these_words(promise: str) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert promise in " ".join(readme.split())


@twin
def test_the_readme_promises_hold(module: ModuleType) -> None:
    assert page_size(MB) == MB and page_size(2 * MB) == 2 * MB  # 1 MiB, or -I when larger
    s = module.Storage(8 * MB, MB, NOW)
    put(s, b"a", 10)
    assert s.used_bytes == MB + s.hash_bytes  # a whole page and the index
    for i in range(3000):  # a class appearing when memory is full holds more than one
        put(s, b"big%d" % i, 200_000)
    put(s, b"x1", 1000)
    put(s, b"x2", 1000)
    assert s.find(b"x1") is not None and s.find(b"x2") is not None
    assert s.used_bytes <= s.limit_bytes
    moved = s.slabs_moved
    assert s.slabs_reassign(-1, 3) == REASSIGN_OK and s.slabs_moved == moved + 1  # one page
    assert Settings().slab_automove == 1
    assert item_ntotal(1, 0, 1) - item_ntotal(1, 0, 1, use_cas=False) == 8
    large = s.arena.clsid(item_ntotal(1, 0, MB // 2))
    assert large > s.slabs.largest  # beyond memcached's classes


# -- the -o slab options, fuzzed ---------------------------------------------------------------
option_words = st.sampled_from(["slab_reassign", "no_slab_reassign", "slab_automove",
                                "no_slab_automove", "idle_timeout", "other"])
options = st.lists(st.one_of(
    option_words,
    st.tuples(option_words, st.text(max_size=4)).map(lambda pair: f"{pair[0]}={pair[1]}"),
    st.text(max_size=12),
), max_size=5).map(",".join)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(options, max_size=3))
def test_slab_options_parse_or_say_what_is_wrong(values: list[str]) -> None:
    try:
        reassign, automove = _slab_options(values)
    except ConfigError as exc:
        assert "slab_automove" in str(exc)
        return
    assert isinstance(reassign, bool) and automove >= 0


def test_slab_options_as_memcached_takes_them() -> None:
    assert _slab_options([]) == (True, 1)
    assert _slab_options(["no_slab_reassign,slab_automove=2"]) == (False, 2)
    assert _slab_options(["slab_automove=0", "slab_automove"]) == (True, 1)  # later wins
    assert _slab_options(["no_slab_automove", "slab_reassign"]) == (True, 0)
    with pytest.raises(ConfigError, match="expected 0, 1 or 2"):
        _slab_options(["slab_automove=x"])
    with pytest.raises(SettingsError, match="between 0 and 2"):
        Settings(slab_automove=3).validate()


@pytest.mark.skipif(len(TWINS) < 2, reason="kvcache._kvstore is not built (make native)")
def test_a_rescued_item_is_a_new_item_in_both_twins() -> None:
    """The native twin copies a rescued record, so a view held before the move no longer
    names the item (a pinned view does not pin it); the pure twin links a copy likewise."""
    outcomes = []
    for module in TWINS:
        s = small(module, 4)
        put(s, b"a", 10)
        cls = s.clsid_of(s.find(b"a"))
        per_page = PAGE // s.arena.sizes[cls - 1]
        for i in range(per_page + 4):
            s.store(Mode.SET, b"n%d" % i, b"7", 0, 0)  # the last five on a second page
        for i in range(5):  # room on the first page
            s.delete(b"n%d" % i)
        held = s.find(b"n%d" % (per_page + 3))
        assert s.slabs_reassign(cls, 0) == REASSIGN_OK and s.reassign_rescues == 5
        delta = s.delta(b"n%d" % (per_page + 3), True, 1, pinned={held})
        outcomes.append((delta.outcome, delta.number, delta.in_place, len(s.items())))
    assert outcomes[0] == outcomes[1] == (Outcome.STORED, 8, True, per_page)


@twin
def test_without_evictions_a_new_class_gets_its_first_page_over_the_limit(
        module: ModuleType) -> None:
    s = module.Storage(3 * PAGE + table_bytes(INITIAL_BUCKETS), PAGE, NOW, page_bytes=PAGE,
                       evict=False)
    stored = sum(put(s, b"a%d" % i, 10) is Outcome.STORED for i in range(1000))
    assert stored < 1000 and s.stats.slab.total("evicted") == 0  # -M: full means refused
    assert put(s, b"big", 3000) is Outcome.STORED  # memcached's do_slabs_newslab
    assert s.slabs_moved == 0 and s.reassign_evictions == 0
    assert s.stats.curr_items == stored + 1
