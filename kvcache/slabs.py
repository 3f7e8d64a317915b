"""memcached's item sizes and slab classes, as arithmetic, and the page model both twins share.

memcached's layout: what clients can see depends on it and is reproduced from it: the
largest value a `-I` limit admits (memcached counts its 48-byte item header, the key, the
flags and the CAS against `-I`; `-C` drops the CAS), the `cls=`/`size=` of `me`, and the
per-class sections of `stats items` / `stats slabs`.

kvcache's arena (`ArenaClasses`), shared by both storage twins (kvcache/_kvstore.pyx and
kvcache/storage_pure.py) so they charge, evict and move pages identically: an item is one
record (a RECORD_HEADER_BYTES header, the key, the value) in one chunk of its class. The
classes are memcached's, chosen by memcached's item size (`item_ntotal`), so class ids are
memcached's; records above memcached's largest chunk (which memcached splits over chunks)
get "large" classes of their own, up to -I. Memory is handed to classes in whole pages
(`page_size`: 1 MiB, or -I when that is larger); a class carves chunks only from its own
pages. The memory limit is checked against every page plus the hash table's buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache

ITEM_HEADER_BYTES = 48  # sizeof(item) on 64-bit builds
CAS_BYTES = 8
FLAGS_BYTES = 4  # only stored when the client flags are non-zero
CRLF_BYTES = 2  # memcached keeps "\r\n" after each value
SLAB_PAGE_BYTES = 1 << 20
MIN_CHUNK_BYTES = 48  # -n
GROWTH_FACTOR = 1.25  # -f
CHUNK_ALIGN_BYTES = 8
MAX_SLAB_CLASSES = 64


def item_ntotal(nkey: int, client_flags: int, nvalue: int, use_cas: bool = True) -> int:
    """ITEM_ntotal: the bytes memcached charges for an item (what `me` reports as size);
    `use_cas` False (-C) drops the 8 bytes of the CAS."""
    return (
        ITEM_HEADER_BYTES
        + nkey
        + 1
        + (FLAGS_BYTES if client_flags else 0)
        + nvalue
        + CRLF_BYTES
        + (CAS_BYTES if use_cas else 0)
    )


def page_size(item_size_max: int) -> int:
    """The bytes of one slab page: 1 MiB, or -I (rounded up to 8 bytes) when larger."""
    return max(SLAB_PAGE_BYTES, _align(item_size_max))


def _align(size: int) -> int:
    return (size + CHUNK_ALIGN_BYTES - 1) & ~(CHUNK_ALIGN_BYTES - 1)


class SlabClasses:
    """The chunk sizes memcached derives from -n, -f and -I (`stats slabs` chunk_size)."""

    def __init__(
        self,
        item_size_max: int,
        growth_factor: float = GROWTH_FACTOR,
        min_chunk: int = MIN_CHUNK_BYTES,
    ) -> None:
        self.item_size_max = item_size_max
        self.growth_factor = growth_factor
        self.chunk_max = min(item_size_max, SLAB_PAGE_BYTES) // 2
        sizes: list[int] = []
        size = ITEM_HEADER_BYTES + min_chunk
        while len(sizes) < MAX_SLAB_CLASSES - 2 and size < self.chunk_max / growth_factor:
            if size % CHUNK_ALIGN_BYTES:
                size += CHUNK_ALIGN_BYTES - size % CHUNK_ALIGN_BYTES
            sizes.append(size)
            size = int(size * growth_factor)
        sizes.append(self.chunk_max)
        self.sizes = sizes  # sizes[i] is the chunk size of class i + 1

    @property
    def largest(self) -> int:
        return len(self.sizes)

    def clsid(self, ntotal: int) -> int:
        """slabs_clsid: the class of an item of `ntotal` bytes; 0 if it exceeds -I.
        Items above the largest chunk are chunked by memcached and report the last class."""
        if ntotal > self.item_size_max:
            return 0
        index = bisect_left(self.sizes, ntotal)
        return min(index, len(self.sizes) - 1) + 1

    def chunk_size(self, clsid: int) -> int:
        return self.sizes[clsid - 1]

    def per_page(self, clsid: int) -> int:
        return SLAB_PAGE_BYTES // self.sizes[clsid - 1]

    def fits(self, nkey: int, client_flags: int, nvalue: int, use_cas: bool = True) -> bool:
        """item_size_ok: whether memcached would accept a value of `nvalue` bytes (with
        `use_cas` False, -C, an item carries no CAS: 8 bytes more fit)."""
        return item_ntotal(nkey, client_flags, nvalue, use_cas) <= self.item_size_max

    def chunked(self, ntotal: int) -> bool:
        """Items above the largest chunk are stored in chunks (incr refuses them)."""
        return ntotal > self.chunk_max


# -- kvcache's arena ----------------------------------------------------------------------
# Record header: cas u64, then hash-chain next, LRU prev/next, value length, client flags,
# exptime, atime (u32 each), then key length, state bits, class and generation bytes.
RECORD_HEADER_BYTES = 40
BUCKET_BYTES = 4  # one u32 record reference per hash bucket
HOT_PERCENT = 20  # of a class's items in its HOT and WARM LRUs at most (memcached's
WARM_PERCENT = 40  # hot_lru_pct and warm_lru_pct; `stats settings` reports them)
INITIAL_BUCKETS = 1024


def record_bytes(nkey: int, nvalue: int) -> int:
    """The bytes one item's record needs in the arena (never more than its item_ntotal)."""
    return RECORD_HEADER_BYTES + nkey + nvalue


def table_bytes(buckets: int) -> int:
    return buckets * BUCKET_BYTES


def grown_buckets(count: int, buckets: int) -> int:
    """The table doubles once it holds more items than buckets (chains of ~1 on average)."""
    return buckets * 2 if count > buckets else buckets


# The large classes grow by -f, but at least by this much: with -I 1g they stay few enough
# for the record's one-byte class id.
LARGE_CLASS_GROWTH = 1.25


class ArenaClasses:
    """The arena's size classes for one SlabClasses: memcached's classes (ids 1 to
    `slabs.largest`, chunk sizes equal), then large classes growing by -f (at least
    LARGE_CLASS_GROWTH) up to -I for the items memcached would split over chunks. A class
    holds the items whose item_ntotal fits its chunk (a record is smaller than that)."""

    def __init__(self, slabs: SlabClasses) -> None:
        sizes = list(slabs.sizes)
        largest = _align(slabs.item_size_max)
        growth = max(slabs.growth_factor, LARGE_CLASS_GROWTH)
        size = sizes[-1]
        while size < largest:
            size = min(largest, _align(int(size * growth)))
            sizes.append(size)
        self.sizes = sizes  # sizes[i] is the chunk size of class i + 1
        self.largest_memcached = slabs.largest

    def clsid(self, ntotal: int) -> int:
        """The arena class of an item of `ntotal` bytes; 0 if no chunk holds it."""
        index = bisect_left(self.sizes, ntotal)
        return index + 1 if index < len(self.sizes) else 0

    def chunk_size(self, clsid: int) -> int:
        return self.sizes[clsid - 1]


_DEFAULT_ARENA = ArenaClasses(SlabClasses(SLAB_PAGE_BYTES))


@lru_cache(maxsize=8)
def shared_classes(item_size_max: int) -> SlabClasses:
    """The default classes of -I `item_size_max`, one object per size for every caller
    that only reads them (each connection's request parser: building them per connection
    cost more than the rest of accepting it). Callers must not change it."""
    return SlabClasses(item_size_max)


def item_cost(key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> int:
    """What one item costs under the default classes (-I 1m, -f 1.25, -n 48): the whole
    chunk of its class (exptime lives in the fixed header, so it costs nothing extra)."""
    ntotal = item_ntotal(len(key), flags, len(value))
    return _DEFAULT_ARENA.sizes[_DEFAULT_ARENA.clsid(ntotal) - 1]
