# The arena under kvcache/_kvstore.pyx: records, chunks, the hash index and the LRU lanes.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef struct Rec:
    uint64_t cas
    uint32_t hnext      # next record in the hash chain (or the free list)
    uint32_t prev       # lane neighbour towards the head (more recent); 0 at the head
    uint32_t next       # lane neighbour towards the tail; 0 at the tail
    uint32_t nvalue
    uint32_t flags
    uint32_t exptime
    uint32_t atime
    uint8_t nkey
    uint8_t bits        # kvcache.items bits (low 4), segment (SEG_SHIFT), ACTIVE, FREE
    uint8_t cls         # arena class (which lanes and free list)
    uint8_t gen         # bumped whenever the chunk's item changes: tells items apart


# Mirrors of kvcache/items.py and kvcache/storage_pure.py (checked when _kvstore imports).
cdef enum:
    FETCHED = 1
    TOKEN_SENT = 2
    STALE = 4
    KEY_BINARY = 8
    CAS_SHIFT = 4
    BITS_MASK = 15
    SEG_SHIFT = 4
    SEG_MASK = 0x30
    ACTIVE = 0x40
    FREE = 0x80  # the chunk holds no item (on its class's free list, or leaving)
    HOT = 0
    WARM = 1
    COLD = 2
    LANES = 3
    HOT_PERCENT = 20
    WARM_PERCENT = 40
    UNIT_SHIFT = 3  # references count 8-byte units


cdef inline Rec* rec_at(char* base, uint32_t ref) noexcept:
    return <Rec*>(base + (<size_t>ref << UNIT_SHIFT))


cdef inline char* key_of(Rec* r) noexcept:
    return (<char*>r) + sizeof(Rec)


cdef inline int lane_of(Rec* r) noexcept:
    return r.cls * LANES + ((r.bits & SEG_MASK) >> SEG_SHIFT)


cdef class Arena:
    cdef char* base
    cdef size_t reserved, page_bytes
    cdef uint32_t npages       # pages carved (held by a class or in the pool)
    cdef uint32_t* table
    cdef uint32_t nbuckets, count
    cdef int nclasses
    cdef uint32_t* csizes      # [cls] chunk size of arena class cls (1-based)
    cdef uint32_t* per_page    # [cls] chunks in one page
    cdef uint32_t* heads       # [lane] (lane = cls * LANES + segment)
    cdef uint32_t* tails
    cdef uint32_t* counts      # [lane] items in it
    cdef uint32_t* free_heads  # [cls]
    cdef uint32_t* free_counts  # [cls] chunks on the free list
    cdef uint32_t cursor       # the crawler's next record: kept valid as records move
    cdef public list page_class  # [page] the class holding it, 0 in the pool
    cdef public list of_class    # [cls] its pages, in the order it got them
    cdef public list pool        # pages no class holds (a stack)

    cdef size_t reserve_for(self, int64_t limit) noexcept
    cdef void grow_reserve(self, int64_t limit) noexcept
    cdef size_t used_bytes(self) noexcept
    cdef int cls_of(self, size_t nbytes) noexcept
    cdef uint32_t lookup(self, const char* key, Py_ssize_t n) noexcept
    cdef void index(self, Rec* r, uint32_t ref) noexcept
    cdef void unindex(self, Rec* r, uint32_t ref) noexcept
    cdef void maybe_grow_table(self, int64_t limit) except *
    cdef uint32_t take_chunk(self, int cls) noexcept
    cdef void free_chunk(self, Rec* r, uint32_t ref) noexcept
    cdef uint32_t page_ref(self, Py_ssize_t page, Py_ssize_t slot, int cls) noexcept
    cdef bint carve_page(self, int cls, int64_t limit, bint over) except -1
    cdef void give(self, Py_ssize_t page, int cls) except *
    cdef bint from_pool(self, int cls) except -1
    cdef Py_ssize_t emptiest(self, int cls) except -1
    cdef void withdraw(self, Py_ssize_t page) except *
    cdef void release(self, Py_ssize_t page) except *
    cdef void relink(self, uint32_t old, uint32_t new) noexcept
    cdef uint32_t victim(self, int cls) noexcept
    cdef void push(self, Rec* r, uint32_t ref, int lane) noexcept
    cdef void pop(self, Rec* r, uint32_t ref) noexcept
    cdef void move(self, Rec* r, uint32_t ref, int lane) noexcept
