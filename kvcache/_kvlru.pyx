# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The item layer of the native storage twin: the compiled twin of kvcache/lru_pure.py.

`Lru` is the base class of kvcache._kvstore.Storage, which adds what the commands mean; this
layer links and unlinks records, allocates chunks (evicting when a class may carve no
more), keeps the segmented LRU's bumps, walks the lanes for the crawler, and counts it all
per memcached size class. The rules are documented in kvcache/lru_pure.py, the memory
layout in kvcache/_kvarena.pyx (records in size-class chunks of one mapping, a chained hash
index, HOT/WARM/COLD lanes).

Items handed out are `ItemView`s: snapshots of a record built on demand (the value copied
out). Storage methods that change an item also update the view they are given. A view's
identity is its record and the chunk's generation (bumped whenever the chunk is given an
item or freed), so a set of views held over a pipeline (Engine.pinned) answers `in` as the
pure twin's item objects do (unless one chunk is reused 128 times while a view is held).
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from kvcache._kvarena cimport (
    ACTIVE,
    BITS_MASK,
    CAS_SHIFT,
    COLD,
    FETCHED,
    FREE,
    HOT,
    HOT_PERCENT,
    KEY_BINARY,
    LANES,
    SEG_MASK,
    SEG_SHIFT,
    STALE,
    TOKEN_SENT,
    UNIT_SHIFT,
    WARM,
    WARM_PERCENT,
    Arena,
    Rec,
    key_of,
    rec_at,
)

from kvcache import items as _items
from kvcache import lru_pure as _pure
from kvcache.slab_policy import (
    POOL_CLASS,
    REASSIGN_OK,
    ClassFigures,
    automove_pick,
    reassign_check,
    reassign_source,
    richest,
)
from kvcache.slabs import ArenaClasses, SlabClasses, item_ntotal, page_size
from kvcache.counters import HOT_COUNTERS, CacheStats

cdef Py_ssize_t _BYTES = HOT_COUNTERS.index("bytes")
cdef Py_ssize_t _CURR_ITEMS = HOT_COUNTERS.index("curr_items")
cdef Py_ssize_t _TOTAL_ITEMS = HOT_COUNTERS.index("total_items")

cdef enum:
    ITEM_UPDATE_INTERVAL_S = 60

assert (FETCHED, TOKEN_SENT, STALE, KEY_BINARY, CAS_SHIFT) == (
    _items.FETCHED, _items.TOKEN_SENT, _items.STALE, _items.KEY_BINARY, _items.CAS_SHIFT)
assert (ITEM_UPDATE_INTERVAL_S, HOT, WARM, COLD, LANES, HOT_PERCENT, WARM_PERCENT) == (
    _pure.ITEM_UPDATE_INTERVAL_S, _pure.HOT, _pure.WARM, _pure.COLD, _pure.LANES,
    _pure.HOT_PERCENT, _pure.WARM_PERCENT)


cdef class ItemView:
    """A read-only snapshot of one arena record, with the attributes of kvcache.items.Item."""

    @property
    def cas(self) -> int:
        return self.casbits >> CAS_SHIFT

    def __hash__(self) -> int:
        return self.ref

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemView):
            return NotImplemented
        return (<ItemView>other).ref == self.ref and (<ItemView>other).gen == self.gen

    def __repr__(self) -> str:
        return f"ItemView({self.key!r}, {len(self.value)} bytes, cas={self.cas})"


cdef class Lru:
    """The records of a cache bounded to `limit_bytes` and their LRUs (module header).
    Single-threaded; `now` is the current Unix time in whole seconds."""

    def __cinit__(self, int64_t limit_bytes, int64_t item_size_max, int64_t now, *,
                  bint evict=True, stats=None, slabs=None, int64_t page_bytes=0,
                  bint use_cas=True):
        cdef int i
        self.limit_bytes = limit_bytes
        self.slabs = slabs or SlabClasses(item_size_max)
        self.use_cas = use_cas
        self.ntotal_fixed = item_ntotal(0, 0, 0, use_cas)
        self.arena = ArenaClasses(self.slabs)
        self.page_bytes = page_bytes or page_size(item_size_max)
        largest = self.arena.sizes[len(self.arena.sizes) - 1]  # (no wraparound here)
        if self.page_bytes < largest or self.page_bytes % 8:
            raise ValueError(f"a page of {self.page_bytes} bytes cannot hold an item of -I")
        self.evict = evict
        self.now = now
        self.stats = stats or CacheStats()
        self.hot_percent = HOT_PERCENT
        self.warm_percent = WARM_PERCENT
        self.a = Arena(list(self.arena.sizes), limit_bytes, self.page_bytes)
        self.evictions = [0] * (len(self.arena.sizes) + 1)
        self.automove_seen = list(self.evictions)
        self.nmc = len(self.slabs.sizes)
        self.mcsizes = <uint32_t*>PyMem_Malloc(self.nmc * sizeof(uint32_t))
        if self.mcsizes == NULL:
            raise MemoryError()
        for i in range(self.nmc):
            self.mcsizes[i] = self.slabs.sizes[i]
        slab = self.stats.slab
        self.number_hot, self.number_warm = slab.number_hot, slab.number_warm
        self.moves_to_cold, self.moves_to_warm = slab.moves_to_cold, slab.moves_to_warm
        self.moves_within_lru = slab.moves_within_lru
        self.number, self.peak, self.requested = slab.number, slab.peak, slab.requested
        self.counts = self.stats.hot

    def __dealloc__(self):
        PyMem_Free(self.mcsizes)

    def next_cas(self) -> int:
        """A new CAS value; 0 when CAS is disabled (-C)."""
        return self._stamp()

    cdef uint64_t _stamp(self) noexcept:
        if not self.use_cas:
            return 0
        self.last_cas += 1
        return self.last_cas

    # -- size ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.a.count

    @property
    def used_bytes(self) -> int:
        """Every page carved plus the hash table: what the limit is checked against."""
        return self.a.used_bytes()

    @property
    def hash_bytes(self) -> int:
        """The hash table's buckets."""
        return self.a.nbuckets * 4

    @property
    def pool_pages(self) -> int:
        """Pages carved that no class holds (stats: slab_global_page_pool)."""
        return len(self.a.pool)

    def page_table(self) -> list:
        """(class, pages, free chunks) of every class holding a page, by class id."""
        return [(cls, len(self.a.of_class[cls]), self.a.free_counts[cls])
                for cls in range(1, self.a.nclasses + 1) if self.a.of_class[cls]]

    cdef int _mclsid(self, int64_t nkey, uint32_t flags, int64_t nvalue) noexcept:
        cdef int64_t ntotal = self.ntotal_fixed + nkey + nvalue + (4 if flags else 0)
        cdef int lo = 0, hi = self.nmc, mid
        while lo < hi:  # bisect_left
            mid = (lo + hi) >> 1
            if self.mcsizes[mid] < ntotal:
                lo = mid + 1
            else:
                hi = mid
        return lo + 1 if lo < self.nmc else self.nmc

    def clsid_of(self, ItemView item not None) -> int:
        """The memcached size class `item` falls in."""
        return self._mclsid(len(item.key), item.flags, len(item.value))

    def clsid_for(self, int64_t nkey, uint32_t flags, int64_t nvalue) -> int:
        """The size class of an item of these dimensions."""
        return self._mclsid(nkey, flags, nvalue)

    def set_limit(self, int64_t limit_bytes) -> None:
        """cache_memlimit: a new limit for what is carved from now on."""
        self.a.grow_reserve(limit_bytes)
        self.limit_bytes = limit_bytes

    # -- views ---------------------------------------------------------------------------
    cdef ItemView _view(self, uint32_t ref):
        cdef Rec* r = rec_at(self.a.base, ref)
        cdef char* k = key_of(r)
        cdef ItemView v = ItemView.__new__(ItemView)
        v.ref = ref
        v.gen = r.gen
        v.key = PyBytes_FromStringAndSize(k, r.nkey)
        v.value = PyBytes_FromStringAndSize(k + r.nkey, r.nvalue)
        v.flags = r.flags
        v.exptime = r.exptime
        v.atime = r.atime
        v.casbits = r.cas << CAS_SHIFT | (r.bits & BITS_MASK)
        return v

    cdef uint32_t _ref_of(self, ItemView v) except 0:
        """The record behind a view; it must still hold the view's item (be linked)."""
        cdef Rec* r = rec_at(self.a.base, v.ref)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(v.key)
        if v.ref == 0 or <size_t>v.ref << UNIT_SHIFT >= self.a.reserved or (
                r.bits & FREE) or r.gen != v.gen or (
                r.nkey != n) or memcmp(
                key_of(r), PyBytes_AS_STRING(v.key), n) != 0:
            raise ValueError(f"{v!r} is no longer in the cache")
        return v.ref

    cdef void _sync(self, ItemView v, Rec* r) noexcept:
        v.exptime = r.exptime
        v.atime = r.atime
        v.casbits = r.cas << CAS_SHIFT | (r.bits & BITS_MASK)

    # -- the LRU -------------------------------------------------------------------------
    cdef bint _flushed(self, int64_t atime, uint64_t cas) noexcept:
        if self.oldest_live > self.now:
            return False
        return atime <= self.oldest_live or (self.oldest_cas != 0 and
                                            cas < <uint64_t>self.oldest_cas)

    cdef void _bump(self, uint32_t ref) noexcept:
        # do_item_bump: fetched, then active (see the pure twin's bump)
        cdef Rec* r = rec_at(self.a.base, ref)
        if r.bits & ACTIVE:
            return
        if not r.bits & FETCHED:
            r.bits |= FETCHED
            return
        r.bits |= ACTIVE
        r.atime = <uint32_t>self.now
        if (r.bits & SEG_MASK) >> SEG_SHIFT == COLD:
            self._move(r, ref, r.cls * LANES + WARM)
            self._balance(r.cls)

    cdef void _refresh(self, uint32_t ref) noexcept:
        cdef Rec* r = rec_at(self.a.base, ref)
        if <int64_t>r.atime < self.now - ITEM_UPDATE_INTERVAL_S:
            r.atime = <uint32_t>self.now

    def bump(self, ItemView item not None) -> None:
        """Mark `item` fetched and most recently used (at most once a minute)."""
        cdef uint32_t ref = self._ref_of(item)
        self._bump(ref)
        self._sync(item, rec_at(self.a.base, ref))

    def refresh(self, ItemView item not None) -> None:
        """do_item_update: most recently used again, without counting as a read."""
        cdef uint32_t ref = self._ref_of(item)
        self._refresh(ref)
        self._sync(item, rec_at(self.a.base, ref))

    # -- reclaiming ----------------------------------------------------------------------
    @property
    def crawling(self) -> bool:
        """A crawl pass is under way."""
        return self.crawl_lane != 0

    def crawl(self, int budget) -> int:
        """Check up to `budget` items from where the last crawl stopped (class by class,
        each from its LRU tail), reclaiming the expired and flushed ones."""
        cdef int lane, mcls
        cdef uint32_t ref, prev
        cdef Rec* r
        cdef bint flushed
        cdef int reclaimed = 0
        slab = self.stats.slab
        cdef int lanes_end = (self.a.nclasses + 1) * LANES
        if self.crawl_lane == 0:
            self.crawl_lane = LANES
            self.a.cursor = self.a.tails[LANES]
        lane, ref = self.crawl_lane, self.a.cursor
        while budget > 0:
            if ref == 0:
                lane += 1
                if lane == lanes_end:
                    break
                ref = self.a.tails[lane]
                continue
            budget -= 1
            r = rec_at(self.a.base, ref)
            prev = r.prev
            mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
            slab.crawler_items_checked[mcls] += 1
            flushed = self.oldest_live != 0 and self._flushed(r.atime, r.cas)
            if flushed or (r.exptime and r.exptime <= self.now):
                if not flushed and not r.bits & FETCHED:
                    slab.expired_unfetched[mcls] += 1
                slab.crawler_reclaimed[mcls] += 1
                slab.reclaimed[mcls] += 1
                self._unlink(ref)
                reclaimed += 1
            ref = prev
        if lane == lanes_end:
            self.crawl_lane, self.a.cursor = 0, 0
        else:
            self.crawl_lane, self.a.cursor = lane, ref
        return reclaimed

    def oldest_age(self) -> int:
        """Seconds since the oldest LRU tail was last stored or read (stats items `age`)."""
        cdef int lane
        cdef int64_t age, oldest = 0
        for lane in range(LANES, (self.a.nclasses + 1) * LANES):
            if self.a.tails[lane]:
                age = self.now - <int64_t>rec_at(self.a.base, self.a.tails[lane]).atime
                if age > oldest:
                    oldest = age
        return oldest

    def tail_ages(self):
        """For HOT, WARM and COLD: memcached class -> the age of its tail in that segment
        (see the pure twin: an arena class holds the items of one memcached class)."""
        cdef int cls, segment, mcls
        cdef uint32_t tail
        cdef int64_t age
        ages = ({}, {}, {})
        for cls in range(1, self.a.nclasses + 1):
            mcls = min(cls, self.nmc)
            for segment in range(LANES):
                tail = self.a.tails[cls * LANES + segment]
                if tail:
                    age = max(0, self.now - <int64_t>rec_at(self.a.base, tail).atime)
                    if mcls not in ages[segment] or age > ages[segment][mcls]:
                        ages[segment][mcls] = age
        return ages

    def alive(self, ItemView item not None) -> bool:
        """Neither expired nor flushed (a linked item may be either until reclaimed)."""
        if item.exptime and item.exptime <= self.now:
            return False
        return not (self.oldest_live and self._flushed(item.atime, item.casbits >> CAS_SHIFT))

    def items(self) -> list:
        """Every linked item, lane by lane, most recent first (for tests and dumps)."""
        cdef int lane
        cdef uint32_t ref
        out = []
        for lane in range(LANES, (self.a.nclasses + 1) * LANES):
            ref = self.a.heads[lane]
            while ref:
                out.append(self._view(ref))
                ref = rec_at(self.a.base, ref).next
        return out

    # -- internals -----------------------------------------------------------------------
    cdef uint32_t _insert(self, bytes key, bytes value, uint32_t flags, int64_t exptime,
                          uint8_t bits, uint32_t old) except? 0:
        cdef Py_ssize_t nkey = PyBytes_GET_SIZE(key), nvalue = PyBytes_GET_SIZE(value)
        cdef int cls, mcls
        cdef uint32_t ref = 0
        cdef Rec* r
        cdef char* k
        if old:
            self._unlink(old)
        cls = self.a.cls_of(self.ntotal_fixed + nkey + nvalue + (4 if flags else 0))
        if cls:
            ref = self._take_chunk(cls)
        if ref == 0:
            self.stats.slab.outofmemory[self._mclsid(nkey, flags, nvalue)] += 1
            return 0
        r = rec_at(self.a.base, ref)
        r.nkey = <uint8_t>nkey
        r.nvalue = <uint32_t>nvalue
        r.flags = flags
        r.exptime = <uint32_t>exptime
        r.atime = <uint32_t>self.now
        r.cls = <uint8_t>cls
        r.bits = bits
        r.gen += 1  # a fresh carve is zeroed; a reused chunk counts on from its last item
        r.cas = self._stamp()
        k = key_of(r)
        memcpy(k, PyBytes_AS_STRING(key), nkey)
        memcpy(k + nkey, PyBytes_AS_STRING(value), nvalue)
        self.a.push(r, ref, cls * LANES + HOT)
        self._balance(cls)
        self.a.index(r, ref)
        self.counts[_BYTES] += self.a.csizes[cls]
        self.counts[_CURR_ITEMS] += 1
        self.counts[_TOTAL_ITEMS] += 1
        mcls = self._mclsid(nkey, flags, nvalue)
        self.number[mcls] += 1
        if self.number[mcls] > self.peak[mcls]:
            self.peak[mcls] = self.number[mcls]
        self.requested[mcls] += self.ntotal_fixed + nkey + nvalue + (4 if flags else 0)
        self.number_hot[mcls] += 1  # it entered HOT (balancing may have moved it on)
        self.a.maybe_grow_table(self.limit_bytes)
        return ref

    cdef uint32_t _take_chunk(self, int cls) except? 0:
        """A chunk of class `cls`: a free one, one of a page it gets now, or the LRU
        tail's (see the pure twin)."""
        cdef uint32_t ref = self.a.take_chunk(cls)
        if ref:
            return ref
        if self._grow(cls):
            return self.a.take_chunk(cls)
        if not self.evict:
            return 0
        ref = self.a.victim(cls)
        if ref == 0:
            return 0
        self._evict(ref)
        self.evictions[cls] += 1
        return self.a.take_chunk(cls)

    cdef bint _grow(self, int cls) except -1:
        """A page for `cls`: the pool's, a new one within the limit, or, for a class with
        none yet, another class's or one over the limit (the pure twin's _grow)."""
        cdef int src
        if self.a.from_pool(cls) or self.a.carve_page(cls, self.limit_bytes, False):
            return True
        if self.a.of_class[cls]:
            return False
        src = richest(self._page_counts(), cls) if self.evict else 0  # -M: never evicts
        if src:
            self._move_page(src, cls)
            return True
        return self.a.carve_page(cls, self.limit_bytes, True)

    def _page_counts(self) -> list:
        return [len(held) for held in self.a.of_class]

    cdef void _move_page(self, int src, int dst) except *:
        """Empty the emptiest page of `src` (rescuing its items into free chunks of `src`
        elsewhere, evicting the rest) and give it to `dst` (0: the pool)."""
        cdef Py_ssize_t page = self.a.emptiest(src), slot
        cdef uint32_t ref, target
        self.a.withdraw(page)
        for slot in range(self.a.per_page[src]):
            ref = self.a.page_ref(page, slot, src)
            if rec_at(self.a.base, ref).bits & FREE:
                continue
            target = self.a.take_chunk(src)
            if target:
                self._rescue(ref, target)
                self.reassign_rescues += 1
            else:
                self._evict(ref, True)
                self.a.take_chunk(src)  # the chunk just freed: it leaves with its page
        self.a.release(page)
        if dst == POOL_CLASS:
            self.a.pool.append(page)
        else:
            self.a.give(page, dst)
        self.slabs_moved += 1

    cdef void _rescue(self, uint32_t old, uint32_t new) noexcept:
        """Copy the record at `old` to the free chunk `new` and put it in its place."""
        cdef Rec* r = rec_at(self.a.base, old)
        cdef Rec* d = rec_at(self.a.base, new)
        cdef uint8_t gen = d.gen + 1
        memcpy(d, r, sizeof(Rec) + r.nkey + r.nvalue)
        d.gen = gen
        self.a.relink(old, new)
        r.bits = FREE
        r.gen += 1

    # -- slab pages: reassign and automove -----------------------------------------------
    def slabs_reassign(self, int src, int dst) -> int:
        """`slabs reassign src dst` at once (see the pure twin): a REASSIGN_ code."""
        counts = self._page_counts()
        counts[0] = len(self.a.pool)
        src = reassign_source(src, dst, counts)
        code = reassign_check(src, dst, counts)
        if code != REASSIGN_OK:
            return code
        if src == POOL_CLASS:
            self.a.give(self.a.pool.pop(), dst)
            self.slabs_moved += 1
        else:
            self._move_page(src, dst)
        return code

    def automove(self, int level) -> bool:
        """One automove decision over the evictions since the last call (see the pure
        twin); True if a page moved."""
        cdef int cls
        cdef uint32_t tail
        seen = self.automove_seen
        ages = [0]
        for cls in range(1, self.a.nclasses + 1):
            tail = self.a.victim(cls)
            ages.append(max(0, self.now - <int64_t>rec_at(self.a.base, tail).atime)
                        if tail else 0)
        figures = ClassFigures(
            self._page_counts(),
            [self.a.free_counts[cls] for cls in range(self.a.nclasses + 1)],
            [self.a.per_page[cls] for cls in range(self.a.nclasses + 1)],
            [count - seen[cls] for cls, count in enumerate(self.evictions)], ages)
        self.automove_seen = list(self.evictions)
        pick = automove_pick(level, figures)
        if pick is None:
            return False
        self._move_page(pick[0], pick[1])
        return True

    cdef void _evict(self, uint32_t ref, bint moving=False) except *:
        cdef Rec* r = rec_at(self.a.base, ref)
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        cdef bint flushed = self.oldest_live != 0 and self._flushed(r.atime, r.cas)
        slab = self.stats.slab
        if flushed or (r.exptime and r.exptime <= self.now):
            slab.reclaimed[mcls] += 1
            if not flushed and not r.bits & FETCHED:
                slab.expired_unfetched[mcls] += 1
        elif moving:
            self.reassign_evictions += 1
        else:
            slab.evicted[mcls] += 1
            slab.evicted_time[mcls] = self.now - <int64_t>r.atime
            if r.exptime:
                slab.evicted_nonzero[mcls] += 1
            if not r.bits & FETCHED:
                slab.evicted_unfetched[mcls] += 1
        self._unlink(ref)

    cdef void _unlink(self, uint32_t ref) except *:
        cdef Rec* r = rec_at(self.a.base, ref)
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        cdef int segment = (r.bits & SEG_MASK) >> SEG_SHIFT
        self.a.unindex(r, ref)
        self.a.pop(r, ref)
        if segment == HOT:
            self.number_hot[mcls] -= 1
        elif segment == WARM:
            self.number_warm[mcls] -= 1
        self.counts[_BYTES] -= self.a.csizes[r.cls]
        self.counts[_CURR_ITEMS] -= 1
        self.number[mcls] -= 1
        self.requested[mcls] -= self.ntotal_fixed + r.nkey + r.nvalue + (4 if r.flags else 0)
        self.a.free_chunk(r, ref)

    cdef void _move(self, Rec* r, uint32_t ref, int lane) noexcept:
        """Relink at the head of `lane`, counting the move per memcached class (the pure
        twin's _move)."""
        cdef int old = (r.bits & SEG_MASK) >> SEG_SHIFT, new = lane % LANES
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        self.a.move(r, ref, lane)
        if old == HOT:
            self.number_hot[mcls] -= 1
        elif old == WARM:
            self.number_warm[mcls] -= 1
        if new == COLD:  # items never move to HOT
            self.moves_to_cold[mcls] += 1
            return
        self.number_warm[mcls] += 1
        if old == WARM:
            self.moves_within_lru[mcls] += 1
        else:
            self.moves_to_warm[mcls] += 1

    cdef void _balance(self, int cls) noexcept:
        """Keep HOT and WARM within their shares of the class (the pure twin's rules)."""
        cdef int hot = cls * LANES + HOT
        cdef int warm = hot + WARM, cold = hot + COLD
        cdef uint32_t* counts = self.a.counts
        cdef uint64_t total = <uint64_t>counts[hot] + counts[warm] + counts[cold]
        cdef uint32_t ref
        cdef Rec* r
        while counts[hot] > total * <uint64_t>self.hot_percent // 100:
            ref = self.a.tails[hot]
            r = rec_at(self.a.base, ref)
            self._move(r, ref, warm if r.bits & ACTIVE else cold)
            r.bits &= ~ACTIVE
        while counts[warm] > total * <uint64_t>self.warm_percent // 100:
            ref = self.a.tails[warm]
            r = rec_at(self.a.base, ref)
            self._move(r, ref, warm if r.bits & ACTIVE else cold)
            r.bits &= ~ACTIVE
