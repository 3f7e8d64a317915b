"""memcached's item sizes and slab classes, as arithmetic.

Two layouts live here. memcached's, as arithmetic only: three things clients can see
depend on it and are reproduced from it: the largest value a `-I` limit admits (memcached
counts its 48-byte item header, the key, the flags and the CAS against `-I`), the
`cls=`/`size=` of `me`, and the per-class sections of `stats items` / `stats slabs`.

And kvcache's own arena (`ArenaClasses`), shared by both storage twins (kvcache/_kvstore.pyx
and kvcache/storage_pure.py) so they charge and evict identically: an item is one record
(a RECORD_HEADER_BYTES header, the key, the value) in a chunk of its size class; chunks are
carved from one arena on demand and freed chunks go to their class's free list. What the
memory limit is checked against is every carved chunk plus the hash table's buckets.
"""

from __future__ import annotations

from bisect import bisect_left

ITEM_HEADER_BYTES = 48  # sizeof(item) on 64-bit builds
CAS_BYTES = 8
FLAGS_BYTES = 4  # only stored when the client flags are non-zero
CRLF_BYTES = 2  # memcached keeps "\r\n" after each value
SLAB_PAGE_BYTES = 1 << 20
MIN_CHUNK_BYTES = 48  # -n
GROWTH_FACTOR = 1.25  # -f
CHUNK_ALIGN_BYTES = 8
MAX_SLAB_CLASSES = 64


def item_ntotal(nkey: int, client_flags: int, nvalue: int) -> int:
    """ITEM_ntotal: the bytes memcached charges for an item (what `me` reports as size)."""
    return (
        ITEM_HEADER_BYTES
        + nkey
        + 1
        + (FLAGS_BYTES if client_flags else 0)
        + nvalue
        + CRLF_BYTES
        + CAS_BYTES
    )


class SlabClasses:
    """The chunk sizes memcached derives from -n, -f and -I (`stats slabs` chunk_size)."""

    def __init__(
        self,
        item_size_max: int,
        growth_factor: float = GROWTH_FACTOR,
        min_chunk: int = MIN_CHUNK_BYTES,
    ) -> None:
        self.item_size_max = item_size_max
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

    def fits(self, nkey: int, client_flags: int, nvalue: int) -> bool:
        """item_size_ok: whether memcached would accept a value of `nvalue` bytes."""
        return item_ntotal(nkey, client_flags, nvalue) <= self.item_size_max

    def chunked(self, ntotal: int) -> bool:
        """Items above the largest chunk are stored in chunks (incr refuses them)."""
        return ntotal > self.chunk_max


# -- kvcache's arena ----------------------------------------------------------------------
# Record header: cas u64, then hash-chain next, LRU prev/next, value length, client flags,
# exptime, atime (u32 each), then key length, state bits and two spare bytes.
RECORD_HEADER_BYTES = 40
ARENA_MIN_CHUNK_BYTES = 48
ARENA_GROWTH_FACTOR = 1.15
BUCKET_BYTES = 4  # one u32 record reference per hash bucket
HOT_PERCENT = 20  # of a class's items in its HOT and WARM LRUs at most (memcached's
WARM_PERCENT = 40  # hot_lru_pct and warm_lru_pct; `stats settings` reports them)
INITIAL_BUCKETS = 1024


def record_bytes(nkey: int, nvalue: int) -> int:
    """The bytes one item's record needs in the arena."""
    return RECORD_HEADER_BYTES + nkey + nvalue


def table_bytes(buckets: int) -> int:
    return buckets * BUCKET_BYTES


def grown_buckets(count: int, buckets: int) -> int:
    """The table doubles once it holds more items than buckets (chains of ~1 on average)."""
    return buckets * 2 if count > buckets else buckets


def _geometric_chunks(limit: int) -> list[int]:
    sizes = [ARENA_MIN_CHUNK_BYTES]
    while sizes[-1] < limit:
        grown = int(sizes[-1] * ARENA_GROWTH_FACTOR) + CHUNK_ALIGN_BYTES - 1
        sizes.append(grown & ~(CHUNK_ALIGN_BYTES - 1))
    return sizes


# Every arena chunk size there can be, whatever -I is: a chunk's size depends only on the
# record it holds, so `item_cost` needs no settings.
ARENA_CHUNKS = _geometric_chunks(1 << 31)


def item_cost(key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> int:
    """What one item costs in the arena: the whole chunk its record sits in (flags and
    exptime live in the fixed header, so they cost nothing extra)."""
    return ARENA_CHUNKS[bisect_left(ARENA_CHUNKS, record_bytes(len(key), len(value)))]


class ArenaClasses:
    """The arena's size classes for one -I: ARENA_CHUNKS up to the first chunk that holds
    the largest record -I admits (memcached's item_ntotal bounds it, and a record is
    smaller than memcached's item)."""

    def __init__(self, item_size_max: int) -> None:
        last = bisect_left(ARENA_CHUNKS, item_size_max)
        self.sizes = ARENA_CHUNKS[: last + 1]  # sizes[i] is the chunk size of class i + 1

    def clsid(self, nkey: int, nvalue: int) -> int:
        """The arena class of a record; 0 if no chunk holds it (only bigger than -I)."""
        index = bisect_left(self.sizes, record_bytes(nkey, nvalue))
        return index + 1 if index < len(self.sizes) else 0

    def chunk_size(self, clsid: int) -> int:
        return self.sizes[clsid - 1]
