"""memcached's item sizes and slab classes, as arithmetic.

kvcache keeps no slabs, but three things clients can see depend on memcached's layout and
are reproduced from it: the largest value a `-I` limit admits (memcached counts its 48-byte
item header, the key, the flags and the CAS against `-I`), the `cls=`/`size=` of `me`, and
the per-class sections of `stats items` / `stats slabs`. What kvcache really spends on an
item is a different figure (kvcache/storage.py: `item_cost`).
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
