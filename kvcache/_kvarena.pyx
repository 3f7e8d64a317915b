# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The arena under kvcache/_kvstore.pyx: memory, chunks, the hash index and the LRU lanes.

The rules (what to store, evict, reclaim, count) are _kvstore's; this layer only keeps the
structures, as memcached keeps slabs.c apart from items.c. The model and its arithmetic
are the pure twin's (kvcache/storage_pure.py, kvcache/slabs.py):

- Memory is one anonymous mapping, reserved for the limit plus one page of every class
  (a class's first page may go over the limit); the kernel backs it only as pages are
  carved from it, bottom up, so RSS follows what is carved. Records are named by 32-bit
  references, their offset in 8-byte units (0 is none): 32 GiB at most.
- Pages follow kvcache/pages_pure.py's rules exactly (numbered as carved; a page given to
  a class puts its chunks on the free list, slot 0 on top; the emptiest page leaves).
  The free list is linked through `hnext`; a chunk holding no item has the FREE bit.
- The index is a chained hash table of u32 heads (FNV-1a over the key), chained through
  `hnext`, doubled as kvcache.slabs.grown_buckets says while the limit allows.
- Each class has three lanes (HOT, WARM, COLD) linked through `prev`/`next`; a record's
  segment and active bit sit in the upper bits of `bits` (kvcache/_kvlru.pyx keeps
  the segments' shares and counts the moves).
"""

from libc.stdlib cimport calloc, free
from libc.string cimport memcmp

from kvcache.slabs import INITIAL_BUCKETS, RECORD_HEADER_BYTES


cdef extern from "sys/mman.h":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...)
    void* MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MREMAP_MAYMOVE

assert sizeof(Rec) == RECORD_HEADER_BYTES

cdef size_t MAX_ARENA = (<size_t>1) << 35  # what 32-bit references to 8-byte units reach
cdef size_t RESERVE_ALIGN = 1 << 21


cdef inline uint64_t fnv1a(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h ^ (h >> 29)


cdef class Arena:
    """Pages of `page_bytes` cut into chunks of the size classes `sizes`
    (kvcache.slabs.ArenaClasses), carved while the limit allows, plus the index and the
    lanes over them."""

    def __cinit__(self, list sizes, int64_t limit, size_t page_bytes):
        cdef int i
        cdef int n = len(sizes) + 1  # class ids start at 1
        self.nclasses = len(sizes)
        self.page_bytes = page_bytes
        self.page_class = []
        self.of_class = [[] for i in range(n)]
        self.pool = []
        self.csizes = <uint32_t*>calloc(n, sizeof(uint32_t))
        self.per_page = <uint32_t*>calloc(n, sizeof(uint32_t))
        self.free_counts = <uint32_t*>calloc(n, sizeof(uint32_t))
        self.heads = <uint32_t*>calloc(n * LANES, sizeof(uint32_t))
        self.tails = <uint32_t*>calloc(n * LANES, sizeof(uint32_t))
        self.counts = <uint32_t*>calloc(n * LANES, sizeof(uint32_t))
        self.free_heads = <uint32_t*>calloc(n, sizeof(uint32_t))
        self.nbuckets = INITIAL_BUCKETS
        self.table = <uint32_t*>calloc(self.nbuckets, sizeof(uint32_t))
        if not (self.csizes and self.heads and self.tails and self.counts and self.free_heads
                and self.per_page and self.free_counts and self.table):
            raise MemoryError()
        for i in range(self.nclasses):
            self.csizes[i + 1] = sizes[i]
            self.per_page[i + 1] = page_bytes // sizes[i]
        self.reserved = self.reserve_for(limit)
        self.base = <char*>mmap(NULL, self.reserved, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if self.base == <char*>MAP_FAILED:
            self.base = NULL
            raise MemoryError(f"cannot reserve {self.reserved} bytes of arena")

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.reserved)
        free(self.csizes)
        free(self.heads)
        free(self.tails)
        free(self.counts)
        free(self.free_heads)
        free(self.per_page)
        free(self.free_counts)
        free(self.table)

    # -- memory --------------------------------------------------------------------------
    cdef size_t reserve_for(self, int64_t limit) noexcept:
        # Everything the limit allows, plus a first page for every class.
        cdef size_t want = <size_t>(limit if limit > 0 else 0) + 8 + (
            <size_t>(self.nclasses + 1) * self.page_bytes)
        want = (want + RESERVE_ALIGN - 1) // RESERVE_ALIGN * RESERVE_ALIGN
        return want if want < MAX_ARENA else MAX_ARENA

    cdef void grow_reserve(self, int64_t limit) noexcept:
        cdef size_t want = self.reserve_for(limit)
        cdef void* moved
        if want > self.reserved:
            moved = mremap(self.base, self.reserved, want, MREMAP_MAYMOVE)
            if moved != MAP_FAILED:  # else carving stays bounded by the old reservation
                self.base = <char*>moved
                self.reserved = want

    cdef size_t used_bytes(self) noexcept:
        """Carved pages plus the hash table: what the limit is checked against."""
        return <size_t>self.npages * self.page_bytes + <size_t>self.nbuckets * sizeof(uint32_t)

    cdef int cls_of(self, size_t nbytes) noexcept:
        """The class whose chunks hold `nbytes` (bisect); 0 if none does."""
        cdef int lo = 1, hi = self.nclasses + 1, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.csizes[mid] < nbytes:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo <= self.nclasses else 0

    cdef uint32_t take_chunk(self, int cls) noexcept:
        """The top of class `cls`'s free list, or 0 when it is empty."""
        cdef uint32_t ref = self.free_heads[cls]
        if ref:
            self.free_heads[cls] = rec_at(self.base, ref).hnext
            self.free_counts[cls] -= 1
        return ref

    cdef void free_chunk(self, Rec* r, uint32_t ref) noexcept:
        r.hnext = self.free_heads[r.cls]
        self.free_heads[r.cls] = ref
        self.free_counts[r.cls] += 1
        r.bits = FREE
        r.gen += 1  # views of the item it held no longer match

    # -- pages ---------------------------------------------------------------------------
    cdef uint32_t page_ref(self, Py_ssize_t page, Py_ssize_t slot, int cls) noexcept:
        return <uint32_t>((8 + <size_t>page * self.page_bytes + <size_t>slot * self.csizes[cls])
                          >> UNIT_SHIFT)

    cdef bint carve_page(self, int cls, int64_t limit, bint over) except -1:
        """A new page for `cls` if the limit allows (or `over` it: a class's first page)
        and the reservation holds it."""
        cdef size_t end = <size_t>(self.npages + 1) * self.page_bytes
        if not over and (limit < 0 or end + <size_t>self.nbuckets * sizeof(uint32_t)
                         > <size_t>limit):
            return False
        if 8 + end > self.reserved:
            return False
        self.page_class.append(0)
        self.npages += 1
        self.give(self.npages - 1, cls)
        return True

    cdef void give(self, Py_ssize_t page, int cls) except *:
        """Hand `page` to `cls`: every chunk free, slot 0 on top of the free list."""
        cdef Py_ssize_t slot
        cdef uint32_t ref
        cdef Rec* r
        self.page_class[page] = cls
        self.of_class[cls].append(page)
        for slot in range(<Py_ssize_t>self.per_page[cls] - 1, -1, -1):
            ref = self.page_ref(page, slot, cls)
            r = rec_at(self.base, ref)
            r.bits = FREE
            r.cls = <uint8_t>cls
            r.hnext = self.free_heads[cls]
            self.free_heads[cls] = ref
        self.free_counts[cls] += self.per_page[cls]

    cdef bint from_pool(self, int cls) except -1:
        if not self.pool:
            return False
        self.give(self.pool.pop(), cls)
        return True

    cdef Py_ssize_t emptiest(self, int cls) except -1:
        """The page of `cls` holding the fewest items (the first such)."""
        cdef Py_ssize_t best = -1, fewest = -1, used, slot, page
        for page in self.of_class[cls]:
            used = 0
            for slot in range(self.per_page[cls]):
                if not rec_at(self.base, self.page_ref(page, slot, cls)).bits & FREE:
                    used += 1
            if fewest < 0 or used < fewest:
                best, fewest = page, used
        return best

    cdef void withdraw(self, Py_ssize_t page) except *:
        """Take the free chunks of `page` off its class's free list (order kept)."""
        cdef int cls = self.page_class[page]
        cdef uint32_t low = self.page_ref(page, 0, cls)
        cdef uint32_t high = low + <uint32_t>(self.page_bytes >> UNIT_SHIFT)
        cdef uint32_t* link = &self.free_heads[cls]
        cdef uint32_t ref = link[0]
        while ref:
            if low <= ref < high:
                link[0] = rec_at(self.base, ref).hnext
                self.free_counts[cls] -= 1
            else:
                link = &rec_at(self.base, ref).hnext
            ref = link[0]

    cdef void release(self, Py_ssize_t page) except *:
        """`page`, emptied and withdrawn, leaves its class (for the caller to give on)."""
        self.of_class[self.page_class[page]].remove(page)
        self.page_class[page] = 0

    cdef void relink(self, uint32_t old, uint32_t new) noexcept:
        """The record copied from `old` to `new` takes its place in its hash chain, its
        lane and under the crawler's cursor."""
        cdef Rec* r = rec_at(self.base, new)
        cdef int lane = lane_of(r)
        cdef uint32_t* link = &self.table[
            fnv1a(<const unsigned char*>key_of(r), r.nkey) & (self.nbuckets - 1)]
        while link[0] != old:
            link = &rec_at(self.base, link[0]).hnext
        link[0] = new
        if r.prev:
            rec_at(self.base, r.prev).next = new
        else:
            self.heads[lane] = new
        if r.next:
            rec_at(self.base, r.next).prev = new
        else:
            self.tails[lane] = new
        if self.cursor == old:
            self.cursor = new

    cdef uint32_t victim(self, int cls) noexcept:
        """Who goes to make room in `cls`: COLD's tail, else WARM's, else HOT's."""
        cdef int base = cls * LANES
        return self.tails[base + COLD] or self.tails[base + WARM] or self.tails[base + HOT]

    # -- the index -----------------------------------------------------------------------
    cdef uint32_t lookup(self, const char* key, Py_ssize_t n) noexcept:
        cdef uint32_t ref = self.table[
            fnv1a(<const unsigned char*>key, n) & (self.nbuckets - 1)]
        cdef Rec* r
        while ref:
            r = rec_at(self.base, ref)
            if r.nkey == n and memcmp(key_of(r), key, n) == 0:
                return ref
            ref = r.hnext
        return 0

    cdef void index(self, Rec* r, uint32_t ref) noexcept:
        cdef uint32_t* bucket = &self.table[
            fnv1a(<const unsigned char*>key_of(r), r.nkey) & (self.nbuckets - 1)]
        r.hnext = bucket[0]
        bucket[0] = ref
        self.count += 1

    cdef void unindex(self, Rec* r, uint32_t ref) noexcept:
        cdef uint32_t* link = &self.table[
            fnv1a(<const unsigned char*>key_of(r), r.nkey) & (self.nbuckets - 1)]
        while link[0] != ref:
            link = &rec_at(self.base, link[0]).hnext
        link[0] = r.hnext
        self.count -= 1

    cdef void maybe_grow_table(self, int64_t limit) except *:
        """Double the table once it holds more items than buckets, if the limit allows."""
        cdef uint32_t nb = self.nbuckets * 2
        cdef uint32_t* grown
        cdef uint32_t i, ref, nxt
        cdef Rec* r
        cdef uint32_t* bucket
        if self.count <= self.nbuckets or limit < 0 or (
                <size_t>self.npages * self.page_bytes + <size_t>nb * sizeof(uint32_t)
                > <size_t>limit):
            return
        grown = <uint32_t*>calloc(nb, sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        for i in range(self.nbuckets):
            ref = self.table[i]
            while ref:
                r = rec_at(self.base, ref)
                nxt = r.hnext
                bucket = &grown[fnv1a(<const unsigned char*>key_of(r), r.nkey) & (nb - 1)]
                r.hnext = bucket[0]
                bucket[0] = ref
                ref = nxt
        free(self.table)
        self.table = grown
        self.nbuckets = nb

    # -- the lanes -----------------------------------------------------------------------
    cdef void push(self, Rec* r, uint32_t ref, int lane) noexcept:
        cdef uint32_t head = self.heads[lane]
        r.bits = (r.bits & ~SEG_MASK) | ((lane % LANES) << SEG_SHIFT)
        r.prev = 0
        r.next = head
        if head:
            rec_at(self.base, head).prev = ref
        else:
            self.tails[lane] = ref
        self.heads[lane] = ref
        self.counts[lane] += 1

    cdef void pop(self, Rec* r, uint32_t ref) noexcept:
        cdef int lane = lane_of(r)
        if ref == self.cursor:
            self.cursor = r.prev
        if r.prev:
            rec_at(self.base, r.prev).next = r.next
        else:
            self.heads[lane] = r.next
        if r.next:
            rec_at(self.base, r.next).prev = r.prev
        else:
            self.tails[lane] = r.prev
        self.counts[lane] -= 1

    cdef void move(self, Rec* r, uint32_t ref, int lane) noexcept:
        self.pop(r, ref)
        self.push(r, ref, lane)
