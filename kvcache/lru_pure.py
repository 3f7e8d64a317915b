"""The item layer of the pure storage twin: chunks, the index, the segmented LRU, the crawler.

`Lru` is the base class of kvcache.storage_pure.Storage, which adds what the commands mean
(store modes, CAS, incr/decr, touch, flush); this layer links and unlinks items, charges
their memory, keeps their LRU and counts all of it per memcached size class, as memcached
keeps items.c (link, unlink, LRU, alloc with eviction) apart from do_store_item. The native
twin has the same split (kvcache/_kvlru.pyx under kvcache/_kvstore.pyx).

Memory is modelled on memcached's slab allocator, with the arithmetic of kvcache/slabs.py
(`ArenaClasses`, `page_size`) and the page rules of kvcache/pages_pure.py: an item takes
one chunk of its class, carved from the class's own pages; a freed chunk goes back to its
class. A class with no free chunk gets a page (`_grow`): from the pool of pages no class
holds, else a new one while the pages plus the hash table stay within the limit (-m).
When memory is full, a class that has no page yet takes one from the class holding the
most (kvcache/slab_policy.py), so no size is locked out and the limit holds; only when no
class can spare a page, or evictions are off (-M), does it get its first page over the
limit (memcached's do_slabs_newslab grants a class its first page whatever the limit).
A class that can get no page evicts from the tail of its own LRU (as memcached's per-class
LRUs do).
A page leaving a class (`slabs reassign`, automove, the taking above) is emptied: each of
its items moves to a free chunk of the class on another page (a rescue), or, when there is
none, is evicted (counted apart, as memcached's slab_reassign_evictions_nomem). With CAS
disabled (-C), items carry CAS 0 and their memcached size drops the CAS's 8 bytes, which
may put them in a smaller class. This twin only counts chunks and buckets (its items are
Python objects); the native twin really has them.

Each class has a segmented LRU as memcached's (HOT, WARM, COLD; each list intrusive: `prev`
and `next` in the item, around a sentinel, most recent at `sentinel.next`). We call one
class's segment a lane, numbered cls * LANES + segment. A new item enters HOT. A read only
sets bits: the first marks the item fetched, the second active (and stamps its atime); an
active item in COLD is moved to WARM at once (memcached does it a moment later). After each
insert or move `_balance` keeps HOT within hot_percent and WARM within warm_percent of
the class's items (HOT_PERCENT and WARM_PERCENT unless `lru tune` changed them): HOT's
tail goes to WARM if active, else to COLD; WARM's tail goes round WARM once more if
active, else to COLD; moving clears the active bit. Eviction takes COLD's tail
(WARM's, then HOT's, if COLD is empty). So hits cost no relinking and an item read twice
survives a burst of new writes. Expired and flushed items are reclaimed when a lookup or an
eviction meets them, and by `crawl`, which walks every lane in order, each from its tail, a
bounded number of items per call.
"""

from __future__ import annotations

from bisect import bisect_left

from kvcache.counters import CacheStats
from kvcache.items import CAS_SHIFT, FETCHED, Item, Outcome
from kvcache.pages_pure import Pages
from kvcache.slab_policy import (
    POOL_CLASS,
    REASSIGN_OK,
    ClassFigures,
    automove_pick,
    reassign_check,
    reassign_source,
    richest,
)
from kvcache.slabs import (
    HOT_PERCENT,
    INITIAL_BUCKETS,
    WARM_PERCENT,
    ArenaClasses,
    SlabClasses,
    grown_buckets,
    item_ntotal,
    page_size,
    table_bytes,
)

ITEM_UPDATE_INTERVAL_S = 60  # memcached's: a write refreshes atime at most once a minute
HOT, WARM, COLD = 0, 1, 2  # the segments of a class's LRU
LANES = 3

__all__ = ["COLD", "HOT", "HOT_PERCENT", "ITEM_UPDATE_INTERVAL_S", "LANES", "WARM",
           "WARM_PERCENT", "Lru"]



def _sentinel() -> Item:
    sentinel = Item()
    sentinel.prev = sentinel.next = sentinel
    return sentinel


class Lru:
    """The items of a cache bounded to `limit_bytes` and their LRUs (module header).
    Single-threaded; `now` is the current Unix time in whole seconds."""

    def __init__(
        self,
        limit_bytes: int,
        item_size_max: int,
        now: int,
        *,
        evict: bool = True,
        stats: CacheStats | None = None,
        slabs: SlabClasses | None = None,
        page_bytes: int = 0,
        use_cas: bool = True,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.slabs = slabs or SlabClasses(item_size_max)
        self.use_cas = use_cas
        self._ntotal_fixed = item_ntotal(0, 0, 0, use_cas)  # memcached's size, bar key+value
        self._class_sizes = self.slabs.sizes
        self._classes = len(self.slabs.sizes)
        self.evict = evict
        self.now = now
        self.stats = stats or CacheStats()
        # `lru tune`: the shares of a class's items HOT and WARM may hold, in percent.
        self.hot_percent = HOT_PERCENT
        self.warm_percent = WARM_PERCENT
        self.arena = ArenaClasses(self.slabs)
        self.page_bytes = page_bytes or page_size(item_size_max)
        if self.page_bytes < self.arena.sizes[-1]:
            raise ValueError(f"a page of {self.page_bytes} bytes cannot hold an item of -I")
        classes = len(self.arena.sizes) + 1  # index 0 unused, as class ids start at 1
        self._pages = Pages(self.arena.sizes, self.page_bytes)
        self._evictions = [0] * classes  # by the LRU, per class: automove's input
        self._automove_seen = [0] * classes  # _evictions at the last automove
        self.reassign_evictions = 0  # items a leaving page could not keep
        self._index: dict[bytes, Item] = {}
        self._buckets = INITIAL_BUCKETS  # the native twin's table size, modelled
        self._lanes = [_sentinel() for _ in range(classes * LANES)]
        self._counts = [0] * (classes * LANES)  # items per lane
        # The crawl: the lane it is in (0: no pass under way) and the next item to check
        # there, walking towards the head (the sentinel: that lane is done).
        self._crawl_lane = 0
        self._cursor: Item | None = None
        self._last_cas = 0
        # flush_all: items stamped at or before oldest_live, or older than oldest_cas, are
        # dead once oldest_live is reached (memcached's item_is_flushed).
        self.oldest_live = 0
        self.oldest_cas = 0

    def next_cas(self) -> int:
        """A new CAS value; 0 when CAS is disabled (-C)."""
        if not self.use_cas:
            return 0
        self._last_cas += 1
        return self._last_cas

    # -- size ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def used_bytes(self) -> int:
        """Every page carved plus the hash table: what the limit is checked against."""
        return self._pages.count * self.page_bytes + table_bytes(self._buckets)

    @property
    def hash_bytes(self) -> int:
        """The hash table's buckets."""
        return table_bytes(self._buckets)

    @property
    def pool_pages(self) -> int:
        """Pages carved that no class holds (stats: slab_global_page_pool)."""
        return len(self._pages.pool)

    def page_table(self) -> list[tuple[int, int, int]]:
        """(class, pages, free chunks) of every class holding a page, by class id."""
        return self._pages.table()

    @property
    def slabs_moved(self) -> int:
        """Pages moved between classes (stats: slabs_moved)."""
        return self._pages.moved

    @property
    def reassign_rescues(self) -> int:
        """Items moved off a leaving page into a free chunk of their class."""
        return self._pages.rescues

    def clsid_of(self, item: Item) -> int:
        """The memcached size class `item` falls in (hot: counted on every hit)."""
        ntotal = self._ntotal_fixed + len(item.key) + len(item.value) + (4 if item.flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        return index + 1 if index < self._classes else self._classes

    def clsid_for(self, nkey: int, flags: int, nvalue: int) -> int:
        """The size class of an item of these dimensions."""
        index = bisect_left(self._class_sizes,
                            self._ntotal_fixed + nkey + nvalue + (4 if flags else 0))
        return index + 1 if index < self._classes else self._classes

    def set_limit(self, limit_bytes: int) -> None:
        """cache_memlimit: a new limit for what is carved from now on (as memcached, chunks
        already carved stay with their class)."""
        self.limit_bytes = limit_bytes

    # -- the LRU -------------------------------------------------------------------------
    def bump(self, item: Item) -> None:
        """A read (memcached's do_item_bump): the first marks `item` fetched, the second
        active, stamping its atime; an active item leaves COLD for WARM. Once active, reads
        change nothing until a move clears the bit."""
        if item.active:
            return
        if not item.casbits & FETCHED:
            item.casbits |= FETCHED
            return
        item.active = True
        item.atime = self.now
        if item.lane % LANES == COLD:
            self._move(item, item.lane - COLD + WARM)
            self._balance(item.lane // LANES)

    def refresh(self, item: Item) -> None:
        """do_item_update: stamp the access time (at most once a minute); not a read."""
        if item.atime < self.now - ITEM_UPDATE_INTERVAL_S:
            item.atime = self.now

    # -- reclaiming ----------------------------------------------------------------------
    @property
    def crawling(self) -> bool:
        """A crawl pass is under way (the last `crawl` stopped before the last class's head)."""
        return self._crawl_lane != 0

    def crawl(self, budget: int) -> int:
        """Check up to `budget` items from where the last crawl stopped (class by class,
        each from its LRU tail), reclaiming the expired and flushed ones. Returns how many
        were reclaimed."""
        stats = self.stats
        if self._crawl_lane == 0:
            self._crawl_lane = LANES
            self._cursor = self._lanes[LANES].prev
        lane, item = self._crawl_lane, self._cursor
        sentinel = self._lanes[lane]
        reclaimed = 0
        now = self.now
        while budget > 0:
            if item is sentinel:
                lane += 1
                if lane == len(self._lanes):
                    break
                sentinel = self._lanes[lane]
                item = sentinel.prev
                continue
            budget -= 1
            prev = item.prev
            mcls = self.clsid_of(item)
            stats.slab.crawler_items_checked[mcls] += 1
            flushed = bool(self.oldest_live) and self._flushed(item)
            if flushed or (item.exptime and item.exptime <= now):
                if not flushed and not item.casbits & FETCHED:
                    stats.slab.expired_unfetched[mcls] += 1
                stats.slab.crawler_reclaimed[mcls] += 1
                stats.slab.reclaimed[mcls] += 1
                self._unlink(item)
                reclaimed += 1
            item = prev
        if lane == len(self._lanes):
            self._crawl_lane, self._cursor = 0, None
        else:
            self._crawl_lane, self._cursor = lane, item
        return reclaimed

    def oldest_age(self) -> int:
        """Seconds since the oldest LRU tail was last stored or read (stats items `age`)."""
        return max((max(0, self.now - lane.prev.atime) for lane in self._lanes[LANES:]
                    if lane.prev is not lane), default=0)

    def tail_ages(self) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        """For HOT, WARM and COLD: memcached class -> the age (now minus atime, at least 0)
        of the class's tail in that segment (`stats items` age_hot, age_warm, age); a class
        with no item in the segment is absent. An arena class holds the items of one
        memcached class (the large ones all hold memcached's largest), so a class's tail is
        its lanes' tail, the oldest of those for memcached's largest."""
        ages: tuple[dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {})
        for cls in range(1, len(self.arena.sizes) + 1):
            mcls = min(cls, self._classes)
            for segment in (HOT, WARM, COLD):
                lane = self._lanes[cls * LANES + segment]
                if lane.prev is not lane:
                    age = max(0, self.now - lane.prev.atime)
                    ages[segment][mcls] = max(ages[segment].get(mcls, 0), age)
        return ages

    def alive(self, item: Item) -> bool:
        """Neither expired nor flushed (a linked item may be either until reclaimed)."""
        exptime = item.exptime
        if exptime and exptime <= self.now:
            return False
        return not (self.oldest_live and self._flushed(item))

    def items(self) -> list[Item]:
        """Every linked item, lane by lane (per class HOT, WARM, COLD), most recent first
        (for tests and dumps; O(n))."""
        out = []
        for lane in self._lanes[LANES:]:
            item = lane.next
            while item is not lane:
                out.append(item)
                item = item.next
        return out

    # -- internals -----------------------------------------------------------------------
    def _flushed(self, item: Item) -> bool:
        if self.oldest_live > self.now:
            return False
        return item.atime <= self.oldest_live or (
            self.oldest_cas != 0 and item.casbits >> CAS_SHIFT < self.oldest_cas
        )

    def _insert(
        self, key: bytes, value: bytes, flags: int, exptime: int, bits: int, old: Item | None
    ) -> tuple[Outcome, Item | None]:
        if old is not None:
            self._unlink(old)
        ntotal = self._ntotal_fixed + len(key) + len(value) + (4 if flags else 0)
        cls = self.arena.clsid(ntotal)
        chunk = self._take_chunk(cls) if cls else -1
        if chunk < 0:
            self.stats.slab.outofmemory[self.clsid_for(len(key), flags, len(value))] += 1
            return Outcome.NO_MEMORY, None
        item = Item()
        item.key = key
        item.value = value
        item.flags = flags
        item.exptime = exptime
        item.atime = self.now
        item.active = False
        item.casbits = self.next_cas() << CAS_SHIFT | bits
        self._pages.place(chunk, item)
        self._push(item, cls * LANES + HOT)
        self._balance(cls)
        self._index[key] = item
        stats = self.stats
        stats.bytes += self.arena.sizes[cls - 1]
        stats.curr_items += 1
        stats.total_items += 1
        index = bisect_left(self._class_sizes, ntotal)
        mcls = index + 1 if index < self._classes else self._classes
        slab = stats.slab
        number = slab.number[mcls] + 1
        slab.number[mcls] = number
        if number > slab.peak[mcls]:
            slab.peak[mcls] = number
        slab.requested[mcls] += ntotal
        slab.number_hot[mcls] += 1  # it entered HOT (balancing may have moved it on)
        buckets = grown_buckets(len(self._index), self._buckets)
        if buckets != self._buckets and (self._pages.count * self.page_bytes
                                         + table_bytes(buckets) <= self.limit_bytes):
            self._buckets = buckets
        return Outcome.STORED, item

    def _take_chunk(self, cls: int) -> int:
        """Claim a chunk of class `cls`: a free one, one of a page the class gets now, or
        the one the class's LRU tail gives up. -1 if none can be had."""
        chunk = self._pages.take(cls)
        if chunk >= 0:
            return chunk
        if self._grow(cls):
            return self._pages.take(cls)
        if not self.evict:
            return -1
        for lane in (cls * LANES + COLD, cls * LANES + WARM, cls * LANES + HOT):
            victim = self._lanes[lane].prev
            if victim is not self._lanes[lane]:
                break
        else:
            return -1
        self._evict(victim)
        self._evictions[cls] += 1
        return self._pages.free[cls].pop()

    def _grow(self, cls: int) -> bool:
        """A page for `cls` (module docstring): from the pool, a new one within the limit,
        or, for a class with none yet, another class's or one over the limit."""
        pages = self._pages
        if pages.from_pool(cls):
            return True
        if (pages.count + 1) * self.page_bytes + table_bytes(self._buckets) <= self.limit_bytes:
            pages.carve(cls)
            return True
        if pages.of_class[cls]:
            return False
        src = richest(pages.counts(), cls) if self.evict else 0  # -M: never evicts
        if src:
            self._pages.move(src, cls, self._evict_moving, self._rescue)
        else:
            pages.carve(cls)
        return True

    def _evict_moving(self, item: Item) -> None:
        self._evict(item, moving=True)

    def _rescue(self, item: Item) -> Item:
        """A copy of `item` linked in its place (index, lane, crawl cursor), as the native
        twin copies a rescued record to its new chunk; `item` is left unlinked."""
        copy = Item()
        for name in ("key", "value", "flags", "exptime", "atime", "casbits", "lane", "active"):
            setattr(copy, name, getattr(item, name))
        copy.prev, copy.next = item.prev, item.next
        item.prev.next = copy
        item.next.prev = copy
        self._index[item.key] = copy
        if self._cursor is item:
            self._cursor = copy
        item.prev = item.next = None  # type: ignore[assignment]
        return copy

    # -- slab pages: reassign and automove -----------------------------------------------
    def slabs_reassign(self, src: int, dst: int) -> int:
        """`slabs reassign src dst`: move one page from class `src` (-1: the class with the
        most pages; 0: the pool) to `dst` (0: the pool) at once. A kvcache.slab_policy
        REASSIGN_ code (the rules and their order are there)."""
        counts = self._pages.counts()
        src = reassign_source(src, dst, counts)
        code = reassign_check(src, dst, counts)
        if code != REASSIGN_OK:
            return code
        if src == POOL_CLASS:
            self._pages.from_pool_to(dst)
        else:
            self._pages.move(src, dst, self._evict_moving, self._rescue)
        return code

    def automove(self, level: int) -> bool:
        """One automove decision over the evictions since the last call (kvcache/
        slab_policy.py); True if a page moved."""
        pages = self._pages
        seen = self._automove_seen
        figures = ClassFigures(pages.counts(), [len(free) for free in pages.free],
                               pages.per_page,
                               [count - seen[cls] for cls, count in enumerate(self._evictions)],
                               [self._tail_age(cls) for cls in range(len(seen))])
        self._automove_seen = list(self._evictions)
        pick = automove_pick(level, figures)
        if pick is None:
            return False
        self._pages.move(pick[0], pick[1], self._evict_moving, self._rescue)
        return True

    def _tail_age(self, cls: int) -> int:
        """The age of the item `cls` would evict next (0 for none or class 0)."""
        if cls == 0:
            return 0
        for lane in (cls * LANES + COLD, cls * LANES + WARM, cls * LANES + HOT):
            tail = self._lanes[lane].prev
            if tail is not self._lanes[lane]:
                return max(0, self.now - tail.atime)
        return 0

    def _evict(self, victim: Item, moving: bool = False) -> None:
        """Unlink the LRU tail to reuse its chunk (or an item on a page that leaves its
        class: `moving`), counting it reclaimed, evicted or a reassign eviction."""
        stats = self.stats
        mcls = self.clsid_of(victim)
        exptime = victim.exptime
        flushed = bool(self.oldest_live) and self._flushed(victim)
        if flushed or (exptime and exptime <= self.now):
            stats.slab.reclaimed[mcls] += 1
            if not flushed and not victim.casbits & FETCHED:
                stats.slab.expired_unfetched[mcls] += 1
        elif moving:
            self.reassign_evictions += 1
        else:
            stats.slab.evicted[mcls] += 1
            stats.slab.evicted_time[mcls] = self.now - victim.atime
            if exptime:
                stats.slab.evicted_nonzero[mcls] += 1
            if not victim.casbits & FETCHED:
                stats.slab.evicted_unfetched[mcls] += 1
        self._unlink(victim)

    def _push(self, item: Item, lane: int) -> None:
        sentinel = self._lanes[lane]
        head = sentinel.next
        item.prev = sentinel
        item.next = head
        head.prev = item
        sentinel.next = item
        item.lane = lane
        self._counts[lane] += 1

    def _pop(self, item: Item) -> None:
        prev, nxt = item.prev, item.next
        prev.next = nxt
        nxt.prev = prev
        if item is self._cursor:
            self._cursor = prev
        self._counts[item.lane] -= 1

    def _move(self, item: Item, lane: int) -> None:
        """Relink `item` at the head of `lane` (of its class), counting the move per
        memcached class as `stats items` shows it: to WARM, to COLD, or round WARM."""
        old, new = item.lane % LANES, lane % LANES
        self._pop(item)
        self._push(item, lane)
        slab = self.stats.slab
        index = bisect_left(self._class_sizes, self._ntotal_fixed + len(item.key) + len(item.value)
                            + (4 if item.flags else 0))  # clsid_of, inline: moves are hot
        mcls = index + 1 if index < self._classes else self._classes
        if old == HOT:
            slab.number_hot[mcls] -= 1
        elif old == WARM:
            slab.number_warm[mcls] -= 1
        if new == COLD:  # items never move to HOT
            slab.moves_to_cold[mcls] += 1
            return
        slab.number_warm[mcls] += 1
        if old == WARM:
            slab.moves_within_lru[mcls] += 1
        else:
            slab.moves_to_warm[mcls] += 1

    def _balance(self, cls: int) -> None:
        """Keep HOT and WARM within their shares of the class (module docstring)."""
        hot = cls * LANES + HOT
        warm, cold = hot + WARM, hot + COLD
        counts, lanes = self._counts, self._lanes
        total = counts[hot] + counts[warm] + counts[cold]
        while counts[hot] > total * self.hot_percent // 100:
            item = lanes[hot].prev
            self._move(item, warm if item.active else cold)
            item.active = False
        while counts[warm] > total * self.warm_percent // 100:
            item = lanes[warm].prev
            self._move(item, warm if item.active else cold)
            item.active = False

    def _unlink(self, item: Item) -> None:
        del self._index[item.key]
        self._pop(item)
        item.prev = item.next = None  # type: ignore[assignment]  # breaks the cycle
        cls = item.lane // LANES
        self._pages.vacate(item, cls)
        stats = self.stats
        stats.bytes -= self.arena.sizes[cls - 1]
        stats.curr_items -= 1
        ntotal = self._ntotal_fixed + len(item.key) + len(item.value) + (4 if item.flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        mcls = index + 1 if index < self._classes else self._classes
        slab = stats.slab
        slab.number[mcls] -= 1
        slab.requested[mcls] -= ntotal
        segment = item.lane % LANES
        if segment == HOT:
            slab.number_hot[mcls] -= 1
        elif segment == WARM:
            slab.number_warm[mcls] -= 1
