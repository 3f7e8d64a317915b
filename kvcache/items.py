"""One cached item, the interface types of the storage, and what an item costs.

Layout, chosen to keep the bytes per item low in pure Python:
- `Item` has __slots__ and no per-item dict; the storage's dict maps key -> Item;
- the LRU links `prev`/`next` live in the item (an intrusive list, no separate nodes);
- the CAS and four state bits share one int (`casbits`): CAS << 4 | bits;
- `atime` points at the storage's per-second int (shared by every item stamped in that
  second); `exptime` 0 and flags up to 256 are CPython's cached small ints.

What an item costs this process, for a key of K bytes and a value of V bytes on 64-bit
CPython 3.11 (measured with sys.getsizeof, checked with tracemalloc in
tests/test_kvcache_storage.py):

    alloc(n)   = n rounded up to 16 (pymalloc, n <= 512) or n + 8 rounded up to 16 (malloc)
    item_cost  = 96 (Item: 16 header + 8 slots * 8 + 16 GC head)
               + alloc(33 + K) + alloc(33 + V)      (the key and value bytes objects)
               + 32                                 (the casbits int)
               + 32 if exptime != 0, + 32 if flags > 256   (their own int objects)
    index      = sys.getsizeof(dict), about 30-60 bytes per item depending on fill

For K = 11, V = 100: 96 + 48 + 144 + 32 = 320 bytes, plus ~42 bytes of index at 1M items.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

# Bits of Item.casbits below the CAS.
FETCHED = 1  # read at least once since stored (mg h, me fetch=)
TOKEN_SENT = 2  # a client won the recache token (mg W / Z)
STALE = 4  # invalidated by md I or ms I (mg X)
KEY_BINARY = 8  # stored with a base64 key (meta k flag answers in base64)
CAS_SHIFT = 4
BITS_MASK = (1 << CAS_SHIFT) - 1

ITEM_OBJECT_BYTES = 96
INT_OBJECT_BYTES = 32
SMALL_INT_MAX = 256  # CPython caches ints up to here
def alloc_size(nbytes: int) -> int:
    """Bytes an allocation of `nbytes` really takes (pymalloc classes or glibc chunks)."""
    if nbytes <= 512:
        return (nbytes + 15) & ~15
    return (nbytes + 8 + 15) & ~15


def item_cost(key: bytes, value: bytes, flags: int, exptime: int) -> int:
    """What one item costs this process, in bytes (the formula in the module docstring)."""
    cost = ITEM_OBJECT_BYTES + INT_OBJECT_BYTES
    cost += alloc_size(33 + len(key)) + alloc_size(33 + len(value))
    if exptime:
        cost += INT_OBJECT_BYTES
    if flags > SMALL_INT_MAX:
        cost += INT_OBJECT_BYTES
    return cost


class Item:
    """One cached value. `value` excludes the CRLF; `exptime` is a Unix time (0: never);
    `atime` the time it was stored or last read."""

    __slots__ = ("key", "value", "flags", "exptime", "atime", "casbits", "prev", "next")

    key: bytes
    value: bytes
    flags: int
    exptime: int
    atime: int
    casbits: int
    prev: Item
    next: Item

    @property
    def cas(self) -> int:
        return self.casbits >> CAS_SHIFT


class Mode(IntEnum):
    """What a store does with an existing item (memcached's NREAD_* commands)."""

    SET = 1
    ADD = 2
    REPLACE = 3
    APPEND = 4
    PREPEND = 5
    CAS = 6


class Outcome(IntEnum):
    STORED = 1
    NOT_STORED = 2
    EXISTS = 3
    NOT_FOUND = 4
    NO_MEMORY = 5  # the item alone is larger than the memory limit
    NON_NUMERIC = 6  # incr/decr on a value that is not a number


class Delta(NamedTuple):
    """What incr/decr did: the new number, the item now holding it, and whether that is
    the same item rewritten in place (else a new item replaced it)."""

    outcome: Outcome
    number: int
    item: Item | None
    in_place: bool
