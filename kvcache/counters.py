"""The cache's counters: every figure `stats` prints that the cache itself moves.

The storage twins (and their LRUs) and the command handlers write here; kvcache/stats.py
reads these counters, with the storage and the process, to answer the `stats` family. The
counters hold no reference to the storage, so the storage layers can import them.
Per-class figures are int64 arrays indexed by memcached's slab class ids (kvcache/slabs.py),
never replaced, only zeroed in place: the compiled storage and fast lane write them through a
buffer.
"""

from __future__ import annotations

from array import array
from typing import Any

from kvcache.slabs import MAX_SLAB_CLASSES

_CLASS_FIELDS = (
    # items.c
    "number", "peak", "requested", "evicted", "evicted_nonzero", "evicted_time",
    "outofmemory", "reclaimed", "expired_unfetched", "evicted_unfetched", "crawler_reclaimed",
    "crawler_items_checked",
    # slabs.c (slab_stats)
    "get_hits", "set_cmds", "delete_hits", "incr_hits", "decr_hits", "cas_hits", "cas_badval",
    "touch_hits",
)
# The segmented LRU's figures, per class as memcached's `stats items` rows. Arrays of int64
# rather than lists: the native storage writes them through a buffer on every LRU move, so
# they are never replaced, only zeroed in place. number_hot and number_warm are state
# (number_cold is number minus both); the moves and hits are counters. A get hit counts to
# get_hits and to the segment the item was in when found (memcached's lru_hits), so
# get_hits == hits_to_hot + hits_to_warm + hits_to_cold per class.
_LRU_FIELDS = ("number_hot", "number_warm", "moves_to_cold", "moves_to_warm", "moves_within_lru",
               "hits_to_hot", "hits_to_warm", "hits_to_cold")
_LRU_STATE = ("number_hot", "number_warm")


class SlabStats:
    """Per-class counters: each field is an int64 array indexed by class id (0 unused).
    Arrays, never replaced (`reset` zeroes them in place): the native storage and the
    server's compiled fast lane write some of them through a buffer."""

    number: array[int]
    peak: array[int]
    requested: array[int]
    evicted: array[int]
    evicted_nonzero: array[int]
    evicted_time: array[int]
    outofmemory: array[int]
    reclaimed: array[int]
    expired_unfetched: array[int]
    evicted_unfetched: array[int]
    crawler_reclaimed: array[int]
    crawler_items_checked: array[int]
    get_hits: array[int]
    set_cmds: array[int]
    delete_hits: array[int]
    incr_hits: array[int]
    decr_hits: array[int]
    cas_hits: array[int]
    cas_badval: array[int]
    touch_hits: array[int]
    number_hot: array[int]
    number_warm: array[int]
    moves_to_cold: array[int]  # HOT or WARM tail -> COLD (not active)
    moves_to_warm: array[int]  # active HOT tail, or active item in COLD -> WARM
    moves_within_lru: array[int]  # active WARM tail -> WARM head
    hits_to_hot: array[int]  # get hits on an item found in HOT (before the read bumps it)
    hits_to_warm: array[int]
    hits_to_cold: array[int]

    def __init__(self) -> None:
        for name in _CLASS_FIELDS:
            setattr(self, name, array("q", bytes(8 * (MAX_SLAB_CLASSES + 1))))
        for name in _LRU_FIELDS:
            setattr(self, name, array("q", bytes(8 * (MAX_SLAB_CLASSES + 1))))

    def total(self, name: str) -> int:
        return sum(getattr(self, name))

    def reset(self) -> None:
        """stats reset: counters go to zero; what the cache holds (number...) stays."""
        for name in _CLASS_FIELDS:
            if name not in ("number", "peak", "requested"):
                counters = getattr(self, name)
                counters[:] = array("q", bytes(8 * len(counters)))
        for name in _LRU_FIELDS:
            if name not in _LRU_STATE:
                counters = getattr(self, name)
                counters[:] = array("q", bytes(8 * len(counters)))


class _HotCounter:
    """An attribute of CacheStats that lives in its `hot` array."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, stats: CacheStats | None, owner: type | None = None) -> Any:
        return self if stats is None else stats.hot[self.index]

    def __set__(self, stats: CacheStats, value: int) -> None:
        stats.hot[self.index] = value


# The counters every plain get or set moves, by their index in CacheStats.hot: the compiled
# fast lane and storage add to them in C, through a buffer, not as Python attributes.
HOT_COUNTERS = ("get_cmds", "get_misses", "bytes_read", "bytes_written", "bytes", "curr_items",
                "total_items")


class CacheStats:
    """Every counter `stats` prints; storage and commands both write here. The ones in
    HOT_COUNTERS are kept in `hot`, an int64 array never replaced (reset zeroes it)."""

    get_cmds = _HotCounter(HOT_COUNTERS.index("get_cmds"))
    get_misses = _HotCounter(HOT_COUNTERS.index("get_misses"))
    bytes_read = _HotCounter(HOT_COUNTERS.index("bytes_read"))
    bytes_written = _HotCounter(HOT_COUNTERS.index("bytes_written"))
    bytes = _HotCounter(HOT_COUNTERS.index("bytes"))
    curr_items = _HotCounter(HOT_COUNTERS.index("curr_items"))
    total_items = _HotCounter(HOT_COUNTERS.index("total_items"))

    def __init__(self) -> None:
        self.hot = array("q", bytes(8 * len(HOT_COUNTERS)))
        self.slab = SlabStats()
        # state, not counters: survive `stats reset`
        self.bytes = 0
        self.curr_items = 0
        self.curr_connections = 0
        self.reset()

    def reset(self) -> None:
        self.slab.reset()
        self.total_items = 0
        self.get_cmds = 0
        self.get_misses = 0
        self.get_expired = 0
        self.get_flushed = 0
        self.touch_cmds = 0
        self.touch_misses = 0
        self.delete_misses = 0
        self.incr_misses = 0
        self.decr_misses = 0
        self.cas_misses = 0
        self.flush_cmds = 0
        self.meta_cmds = 0
        self.store_too_large = 0
        self.store_no_memory = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.idle_kicks = 0
        self.crawler_starts = 0
