# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""kvcache's storage over arena memory: the compiled twin of kvcache/storage_pure.py.

Same rules, same interface, same figures (tests/test_kvcache_storage_twins.py drives both);
the rules are documented in the pure twin, and the memory layout in native/_kvarena.pyx
(records in size-class chunks of one mapping, a chained hash index, HOT/WARM/COLD lanes).

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

from native._kvarena cimport (
    ACTIVE,
    BITS_MASK,
    CAS_SHIFT,
    COLD,
    FETCHED,
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
from kvcache import storage_pure as _pure
from kvcache.items import Delta, Mode, Outcome
from kvcache.numbers import parse_u64_prefix
from kvcache.slabs import ArenaClasses, SlabClasses, item_ntotal
from kvcache.stats import CacheStats

cdef enum:
    ITEM_UPDATE_INTERVAL_S = 60
    REALTIME_MAXDELTA = 2592000

assert (FETCHED, TOKEN_SENT, STALE, KEY_BINARY, CAS_SHIFT) == (
    _items.FETCHED, _items.TOKEN_SENT, _items.STALE, _items.KEY_BINARY, _items.CAS_SHIFT)
assert (ITEM_UPDATE_INTERVAL_S, REALTIME_MAXDELTA, HOT, WARM, COLD, LANES, HOT_PERCENT,
        WARM_PERCENT) == (
    _pure.ITEM_UPDATE_INTERVAL_S, _pure.REALTIME_MAXDELTA, _pure.HOT, _pure.WARM, _pure.COLD,
    _pure.LANES, _pure.HOT_PERCENT, _pure.WARM_PERCENT)

cdef int64_t NTOTAL_FIXED = item_ntotal(0, 0, 0)
cdef object U64_MASK = (1 << 64) - 1
cdef object _SET = Mode.SET, _ADD = Mode.ADD, _CAS = Mode.CAS
cdef object _APPEND = Mode.APPEND, _PREPEND = Mode.PREPEND


cdef class ItemView:
    """A read-only snapshot of one arena record, with the attributes of kvcache.items.Item."""

    cdef readonly bytes key
    cdef readonly bytes value
    cdef readonly uint32_t flags
    cdef readonly int64_t exptime
    cdef readonly int64_t atime
    cdef readonly uint64_t casbits
    cdef uint32_t ref
    cdef uint8_t gen

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


cdef class Storage:
    """A memcached-semantics cache bounded to `limit_bytes`, over arena memory. Single-
    threaded; `now` is the current Unix time in whole seconds, advanced by `tick`."""

    cdef public object stats, slabs, arena
    cdef public bint evict
    cdef public int64_t limit_bytes, now, oldest_live, oldest_cas
    cdef uint64_t last_cas
    cdef Arena a
    cdef int nmc
    cdef uint32_t* mcsizes     # memcached's class sizes, 0-based (stats buckets)
    cdef int crawl_lane        # 0: no crawl pass under way; the record next: a.cursor

    def __cinit__(self, int64_t limit_bytes, int64_t item_size_max, int64_t now, *,
                  bint evict=True, stats=None, slabs=None):
        cdef int i
        self.limit_bytes = limit_bytes
        self.slabs = slabs or SlabClasses(item_size_max)
        self.arena = ArenaClasses(item_size_max)
        self.evict = evict
        self.now = now
        self.stats = stats or CacheStats()
        self.a = Arena(list(self.arena.sizes), limit_bytes)
        self.nmc = len(self.slabs.sizes)
        self.mcsizes = <uint32_t*>PyMem_Malloc(self.nmc * sizeof(uint32_t))
        if self.mcsizes == NULL:
            raise MemoryError()
        for i in range(self.nmc):
            self.mcsizes[i] = self.slabs.sizes[i]

    def __dealloc__(self):
        PyMem_Free(self.mcsizes)

    cdef inline Rec* rec(self, uint32_t ref) noexcept:
        return rec_at(self.a.base, ref)

    # -- time ----------------------------------------------------------------------------
    def tick(self, int64_t now) -> None:
        """Advance the cache's clock (whole seconds)."""
        self.now = now

    def expiry(self, int64_t exptime) -> int:
        """memcached's realtime(): a wire exptime -> Unix time, 0 for never."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > REALTIME_MAXDELTA:
            return exptime
        return self.now + exptime

    def next_cas(self) -> int:
        self.last_cas += 1
        return self.last_cas

    # -- size ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.a.count

    @property
    def used_bytes(self) -> int:
        """Carved chunks plus the hash table: what the limit is checked against."""
        return self.a.used_bytes()

    cdef int _mclsid(self, int64_t nkey, uint32_t flags, int64_t nvalue) noexcept:
        cdef int64_t ntotal = NTOTAL_FIXED + nkey + nvalue + (4 if flags else 0)
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
        cdef Rec* r = self.rec(ref)
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
        cdef Rec* r = self.rec(v.ref)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(v.key)
        if v.ref == 0 or <size_t>v.ref << UNIT_SHIFT >= self.a.top or r.gen != v.gen or (
                r.nkey != n) or memcmp(
                key_of(r), PyBytes_AS_STRING(v.key), n) != 0:
            raise ValueError(f"{v!r} is no longer in the cache")
        return v.ref

    cdef inline void _sync(self, ItemView v, Rec* r) noexcept:
        v.exptime = r.exptime
        v.atime = r.atime
        v.casbits = r.cas << CAS_SHIFT | (r.bits & BITS_MASK)

    # -- lookups -------------------------------------------------------------------------
    cdef bint _flushed(self, int64_t atime, uint64_t cas) noexcept:
        if self.oldest_live > self.now:
            return False
        return atime <= self.oldest_live or (self.oldest_cas != 0 and
                                            cas < <uint64_t>self.oldest_cas)

    cdef uint32_t _find(self, bytes key) except? 0:
        cdef uint32_t ref = self.a.lookup(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        cdef Rec* r
        if ref == 0:
            return 0
        r = self.rec(ref)
        if self.oldest_live and self._flushed(r.atime, r.cas):
            self._unlink(ref)
            self.stats.get_flushed += 1
            return 0
        if r.exptime and r.exptime <= self.now:
            self._unlink(ref)
            self.stats.get_expired += 1
            return 0
        return ref

    def find(self, bytes key not None):
        """do_item_get without the bump: a live item or None (see the pure twin)."""
        cdef uint32_t ref = self._find(key)
        return self._view(ref) if ref else None

    def get(self, bytes key not None):
        """A read: the live item, marked fetched and moved to the LRU front."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        self._bump(ref)
        return self._view(ref)

    cdef void _bump(self, uint32_t ref) noexcept:
        # do_item_bump: fetched, then active (see the pure twin's bump)
        cdef Rec* r = self.rec(ref)
        if r.bits & ACTIVE:
            return
        if not r.bits & FETCHED:
            r.bits |= FETCHED
            return
        r.bits |= ACTIVE
        r.atime = <uint32_t>self.now
        if (r.bits & SEG_MASK) >> SEG_SHIFT == COLD:
            self.a.move(r, ref, r.cls * LANES + WARM)
            self.a.balance(r.cls)

    cdef void _refresh(self, uint32_t ref) noexcept:
        cdef Rec* r = self.rec(ref)
        if <int64_t>r.atime < self.now - ITEM_UPDATE_INTERVAL_S:
            r.atime = <uint32_t>self.now

    def bump(self, ItemView item not None) -> None:
        """Mark `item` fetched and most recently used (at most once a minute)."""
        cdef uint32_t ref = self._ref_of(item)
        self._bump(ref)
        self._sync(item, self.rec(ref))

    def refresh(self, ItemView item not None) -> None:
        """do_item_update: most recently used again, without counting as a read."""
        cdef uint32_t ref = self._ref_of(item)
        self._refresh(ref)
        self._sync(item, self.rec(ref))

    def touch(self, bytes key not None, int64_t exptime):
        """gat/touch: read the item and give it a new (already converted) exptime."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        self._bump(ref)
        self.rec(ref).exptime = <uint32_t>exptime
        return self._view(ref)

    def set_exptime(self, ItemView item not None, int64_t exptime) -> None:
        """A new (converted) exptime for a linked item."""
        cdef Rec* r = self.rec(self._ref_of(item))
        r.exptime = <uint32_t>exptime
        self._sync(item, r)

    def grant_token(self, ItemView item not None) -> None:
        """mg W: this client won the recache token; others see Z until it is stored."""
        cdef Rec* r = self.rec(self._ref_of(item))
        r.bits |= TOKEN_SENT
        self._sync(item, r)

    # -- mutations -----------------------------------------------------------------------
    def store(self, mode, bytes key not None, bytes value not None, uint32_t flags,
              int64_t exptime,
              uint64_t cas=0, *, bint set_stale=False, bint key_binary=False):
        """do_store_item (see the pure twin). Returns (Outcome, the stored item or None)."""
        cdef uint32_t old = self._find(key)
        cdef uint8_t bits = KEY_BINARY if key_binary else 0
        cdef Rec* r
        cdef uint64_t old_cas
        cdef int mcls
        stats = self.stats
        if old == 0:
            if mode is _CAS:
                stats.cas_misses += 1
                return Outcome.NOT_FOUND, None
            if mode is _SET or mode is _ADD:
                return self._store_new(key, value, flags, exptime, bits, 0)
            return Outcome.NOT_STORED, None
        r = self.rec(old)
        old_cas = r.cas
        if mode is _ADD:
            self._refresh(old)
            return Outcome.NOT_STORED, None
        if mode is _CAS:
            mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
            if cas == old_cas:
                stats.slab.cas_hits[mcls] += 1
            elif set_stale and cas and cas < old_cas:
                exptime = r.exptime
                bits |= STALE | (r.bits & TOKEN_SENT)
                stats.slab.cas_hits[mcls] += 1
            else:
                stats.slab.cas_badval[mcls] += 1
                return Outcome.EXISTS, None
        elif mode is _APPEND or mode is _PREPEND:
            if cas and cas != old_cas:
                return Outcome.EXISTS, None
            current = PyBytes_FromStringAndSize(key_of(r) + r.nkey, r.nvalue)
            value = current + value if mode is _APPEND else value + current
            flags, exptime = r.flags, r.exptime
            if not self.slabs.fits(len(key), flags, len(value)):
                return Outcome.NOT_STORED, None
        return self._store_new(key, value, flags, exptime, bits, old)

    cdef tuple _store_new(self, bytes key, bytes value, uint32_t flags, int64_t exptime,
                          uint8_t bits, uint32_t old):
        cdef uint32_t ref = self._insert(key, value, flags, exptime, bits, old)
        if ref == 0:
            return Outcome.NO_MEMORY, None
        return Outcome.STORED, self._view(ref)

    def delete(self, bytes key not None):
        """Remove a live item; returns it (None if there was none)."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        view = self._view(ref)
        self._unlink(ref)
        return view

    def remove(self, ItemView item not None) -> None:
        """Unlink an item the caller holds (it must still be linked)."""
        self._unlink(self._ref_of(item))

    def invalidate(self, ItemView item not None, exptime) -> None:
        """md with I: mark stale, new CAS, token up for grabs again, optionally a new TTL."""
        cdef Rec* r = self.rec(self._ref_of(item))
        if exptime is not None:
            r.exptime = <uint32_t>exptime
        r.bits = (r.bits & ~TOKEN_SENT) | STALE
        self.last_cas += 1
        r.cas = self.last_cas
        self._sync(item, r)

    def vivify(self, bytes key not None, int64_t exptime, bint key_binary):
        """mg N on a miss: an empty placeholder item (None if it cannot fit)."""
        cdef uint32_t ref = self._insert(key, b"", 0, exptime,
                                         KEY_BINARY if key_binary else 0, 0)
        return self._view(ref) if ref else None

    def delta(self, bytes key not None, bint incr, delta, uint64_t cas=0, pinned=()):
        """do_add_delta (see the pure twin): in place unless the item is `pinned`."""
        cdef uint32_t ref = self._find(key)
        cdef Rec* r
        if ref == 0:
            return Delta(Outcome.NOT_FOUND, 0, None, False)
        r = self.rec(ref)
        ntotal = item_ntotal(r.nkey, r.flags, r.nvalue)
        if r.nvalue == 0 or self.slabs.chunked(ntotal):
            return Delta(Outcome.NON_NUMERIC, 0, None, False)
        if cas and cas != r.cas:
            return Delta(Outcome.EXISTS, 0, None, False)
        view = self._view(ref)
        number = parse_u64_prefix(view.value)
        if number is None:
            return Delta(Outcome.NON_NUMERIC, 0, None, False)
        if incr:
            number = (number + delta) & U64_MASK
        else:
            number = number - delta if delta <= number else 0
        cls = self.slabs.clsid(ntotal)
        if incr:
            self.stats.slab.incr_hits[cls] += 1
        else:
            self.stats.slab.decr_hits[cls] += 1
        text = b"%d" % number
        if len(text) <= r.nvalue and view not in pinned:
            padded = text.ljust(r.nvalue)
            memcpy(key_of(r) + r.nkey, PyBytes_AS_STRING(padded), r.nvalue)
            self.last_cas += 1
            r.cas = self.last_cas
            self._refresh(ref)
            return Delta(Outcome.STORED, number, self._view(ref), True)
        outcome, new = self._store_new(key, text, r.flags, r.exptime, 0, ref)
        return Delta(outcome, number, new, False)

    def flush(self, int64_t delay) -> None:
        """flush_all [delay]: everything stored before the deadline dies at the deadline."""
        deadline = self.expiry(delay) if delay > 0 else self.now
        self.oldest_live = deadline - 1
        if self.oldest_live <= self.now:
            self.oldest_cas = self.last_cas + 1

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
            r = self.rec(ref)
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
                age = self.now - <int64_t>self.rec(self.a.tails[lane]).atime
                if age > oldest:
                    oldest = age
        return oldest

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
                ref = self.rec(ref).next
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
        cls = self.a.cls_of(sizeof(Rec) + nkey + nvalue)
        if cls:
            ref = self._take_chunk(cls)
        slab = self.stats.slab
        if ref == 0:
            slab.outofmemory[self._mclsid(nkey, flags, nvalue)] += 1
            return 0
        r = self.rec(ref)
        r.nkey = <uint8_t>nkey
        r.nvalue = <uint32_t>nvalue
        r.flags = flags
        r.exptime = <uint32_t>exptime
        r.atime = <uint32_t>self.now
        r.cls = <uint8_t>cls
        r.bits = bits
        r.gen += 1  # a fresh carve is zeroed; a reused chunk counts on from its last item
        self.last_cas += 1
        r.cas = self.last_cas
        k = key_of(r)
        memcpy(k, PyBytes_AS_STRING(key), nkey)
        memcpy(k + nkey, PyBytes_AS_STRING(value), nvalue)
        self.a.push(r, ref, cls * LANES + HOT)
        self.a.balance(cls)
        self.a.index(r, ref)
        stats = self.stats
        stats.bytes += self.a.csizes[cls]
        stats.curr_items += 1
        stats.total_items += 1
        mcls = self._mclsid(nkey, flags, nvalue)
        number = slab.number[mcls] + 1
        slab.number[mcls] = number
        if number > slab.peak[mcls]:
            slab.peak[mcls] = number
        slab.requested[mcls] += NTOTAL_FIXED + nkey + nvalue + (4 if flags else 0)
        self.a.maybe_grow_table(self.limit_bytes)
        return ref

    cdef uint32_t _take_chunk(self, int cls) except? 0:
        """A chunk of class `cls`: a free one, a newly carved one, or the LRU tail's."""
        cdef uint32_t ref = self.a.take_chunk(cls, self.limit_bytes)
        if ref or not self.evict:
            return ref
        ref = self.a.victim(cls)
        if ref == 0:
            return 0
        self._evict(ref)
        return self.a.take_chunk(cls, self.limit_bytes)

    cdef void _evict(self, uint32_t ref) except *:
        cdef Rec* r = self.rec(ref)
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        cdef bint flushed = self.oldest_live != 0 and self._flushed(r.atime, r.cas)
        slab = self.stats.slab
        if flushed or (r.exptime and r.exptime <= self.now):
            slab.reclaimed[mcls] += 1
            if not flushed and not r.bits & FETCHED:
                slab.expired_unfetched[mcls] += 1
        else:
            slab.evicted[mcls] += 1
            slab.evicted_time[mcls] = self.now - <int64_t>r.atime
            if r.exptime:
                slab.evicted_nonzero[mcls] += 1
            if not r.bits & FETCHED:
                slab.evicted_unfetched[mcls] += 1
        self._unlink(ref)

    cdef void _unlink(self, uint32_t ref) except *:
        cdef Rec* r = self.rec(ref)
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        self.a.unindex(r, ref)
        self.a.pop(r, ref)
        stats = self.stats
        stats.bytes -= self.a.csizes[r.cls]
        stats.curr_items -= 1
        stats.slab.number[mcls] -= 1
        stats.slab.requested[mcls] -= NTOTAL_FIXED + r.nkey + r.nvalue + (4 if r.flags else 0)
        self.a.free_chunk(r, ref)
