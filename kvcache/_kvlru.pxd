# The item layer under kvcache/_kvstore.pyx: views, linking, eviction, the LRU, the crawler.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from kvcache._kvarena cimport Arena, Rec


cdef class ItemView:
    cdef readonly bytes key
    cdef readonly bytes value
    cdef readonly uint32_t flags
    cdef readonly int64_t exptime
    cdef readonly int64_t atime
    cdef readonly uint64_t casbits
    cdef uint32_t ref
    cdef uint8_t gen


cdef class Lru:
    cdef public object stats, slabs, arena
    cdef public bint evict, use_cas
    cdef public int64_t page_bytes
    cdef public long long slabs_moved, reassign_rescues, reassign_evictions
    cdef public int hot_percent, warm_percent  # `lru tune` (the pure twin's attributes)
    cdef public int64_t limit_bytes, now, oldest_live, oldest_cas
    cdef uint64_t last_cas
    cdef int64_t ntotal_fixed  # memcached's item size bar key and value (-C: no CAS)
    cdef list evictions, automove_seen  # [cls] by the LRU; at the last automove
    cdef Arena a
    cdef int nmc
    cdef uint32_t* mcsizes     # memcached's class sizes, 0-based (stats buckets)
    cdef int crawl_lane        # 0: no crawl pass under way; the record next: a.cursor
    # [mcls] the arrays of stats.slab (kvcache.counters._LRU_FIELDS), written on every move
    cdef long long[::1] number_hot, number_warm, moves_to_cold, moves_to_warm
    cdef long long[::1] moves_within_lru
    # [mcls] stats.slab's number, peak and requested; stats.hot (the item counts in it)
    cdef long long[::1] number, peak, requested, counts

    cdef int _mclsid(self, int64_t nkey, uint32_t flags, int64_t nvalue) noexcept
    cdef ItemView _view(self, uint32_t ref)
    cdef uint32_t _ref_of(self, ItemView v) except 0
    cdef void _sync(self, ItemView v, Rec* r) noexcept
    cdef bint _flushed(self, int64_t atime, uint64_t cas) noexcept
    cdef void _bump(self, uint32_t ref) noexcept
    cdef void _refresh(self, uint32_t ref) noexcept
    cdef void _move(self, Rec* r, uint32_t ref, int lane) noexcept
    cdef void _balance(self, int cls) noexcept
    cdef uint32_t _insert(self, bytes key, bytes value, uint32_t flags, int64_t exptime,
                          uint8_t bits, uint32_t old) except? 0
    cdef uint64_t _stamp(self) noexcept
    cdef uint32_t _take_chunk(self, int cls) except? 0
    cdef bint _grow(self, int cls) except -1
    cdef void _move_page(self, int src, int dst) except *
    cdef void _rescue(self, uint32_t old, uint32_t new) noexcept
    cdef void _evict(self, uint32_t ref, bint moving=*) except *
    cdef void _unlink(self, uint32_t ref) except *
