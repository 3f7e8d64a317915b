"""The cache itself, sans I/O: expiry, flush, CAS, LRU eviction, memory accounting.

No sockets and no clock: time enters as whole seconds through `tick(now)` (the server calls
it about ten times a second and the value changes once a second, as memcached's timer
updates `current_time`), so one int object is shared by every item stamped in that second.
A Cython arena-backed twin can replace this module behind the same interface (the public
methods of `Storage`, and `Item`, `Mode`, `Outcome`, `Delta` from kvcache/items.py).

The index is one dict `key -> Item`. The LRU is intrusive: `prev`/`next` live in the item,
around a sentinel (most recent at `sentinel.next`); every hit moves the item to the front,
eviction takes the back. This is a plain LRU, not memcached's segmented hot/warm/cold one:
no background juggling and an exact order, at the price of a pointer update per hit.

Memory: every item is charged what it really costs this process (kvcache/items.py:
`item_cost`), and the dict's own table is charged as it grows, so `bytes` plus the index
never exceed the limit (-m): to make room the back of the LRU is reclaimed (if expired or
flushed) or evicted. Expired and flushed items are also reclaimed when a lookup meets them
and by `crawl`, which walks the LRU from the tail a bounded number of items per call.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Container

from kvcache.items import (
    BITS_MASK,
    CAS_SHIFT,
    FETCHED,
    INT_OBJECT_BYTES,
    KEY_BINARY,
    STALE,
    TOKEN_SENT,
    Delta,
    Item,
    Mode,
    Outcome,
    item_cost,
)
from kvcache.numbers import parse_u64_prefix
from kvcache.slabs import SlabClasses, item_ntotal
from kvcache.stats import CacheStats

REALTIME_MAXDELTA = 60 * 60 * 24 * 30  # exptimes above this are Unix times
U64_MASK = (1 << 64) - 1
_NTOTAL_FIXED = item_ntotal(0, 0, 0)  # what memcached adds to the key and value lengths

__all__ = ["REALTIME_MAXDELTA", "Delta", "Item", "Mode", "Outcome", "Storage", "item_cost"]


ITEM_UPDATE_INTERVAL_S = 60  # memcached's: a read moves an item only once a minute


class Storage:
    """A memcached-semantics cache bounded to `limit_bytes`. Single-threaded; `now` is
    the current Unix time in whole seconds, advanced by `tick`."""

    def __init__(
        self,
        limit_bytes: int,
        item_size_max: int,
        now: int,
        *,
        evict: bool = True,
        stats: CacheStats | None = None,
        slabs: SlabClasses | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.slabs = slabs or SlabClasses(item_size_max)
        self._class_sizes = self.slabs.sizes
        self._classes = len(self.slabs.sizes)
        self.evict = evict
        self.now = now
        self.stats = stats or CacheStats()
        self._index: dict[bytes, Item] = {}
        self._index_bytes = sys.getsizeof(self._index)
        sentinel = Item()
        sentinel.prev = sentinel.next = sentinel
        self._lru = sentinel
        self._cursor: Item | None = None  # where the next crawl resumes (towards the head)
        self._last_cas = 0
        # flush_all: items stamped at or before oldest_live, or older than oldest_cas, are
        # dead once oldest_live is reached (memcached's item_is_flushed).
        self.oldest_live = 0
        self.oldest_cas = 0

    # -- time ----------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        """Advance the cache's clock (whole seconds; never call with a float)."""
        self.now = now

    def expiry(self, exptime: int) -> int:
        """memcached's realtime(): a wire exptime -> Unix time, 0 for never.

        Negative means already expired, up to 30 days is relative, above is absolute."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > REALTIME_MAXDELTA:
            return exptime
        return self.now + exptime

    def next_cas(self) -> int:
        self._last_cas += 1
        return self._last_cas

    # -- size ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def used_bytes(self) -> int:
        """Items plus the index: what the limit is checked against."""
        return self.stats.bytes + self._index_bytes

    def clsid_of(self, item: Item) -> int:
        """The memcached size class `item` falls in (hot: counted on every hit)."""
        ntotal = _NTOTAL_FIXED + len(item.key) + len(item.value) + (4 if item.flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        return index + 1 if index < self._classes else self._classes

    def clsid_for(self, nkey: int, flags: int, nvalue: int) -> int:
        """The size class of an item of these dimensions."""
        index = bisect_left(self._class_sizes,
                            _NTOTAL_FIXED + nkey + nvalue + (4 if flags else 0))
        return index + 1 if index < self._classes else self._classes

    def set_limit(self, limit_bytes: int) -> None:
        """cache_memlimit: a new limit, enforced at once."""
        self.limit_bytes = limit_bytes
        self._make_room(0)

    # -- lookups -------------------------------------------------------------------------
    def find(self, key: bytes) -> Item | None:
        """do_item_get without the bump: a live item or None. Meeting an expired or flushed
        item unlinks it and counts get_expired / get_flushed, whatever the command."""
        item = self._index.get(key)
        if item is None:
            return None
        if self.oldest_live and self._flushed(item):
            self._unlink(item)
            self.stats.get_flushed += 1
            return None
        exptime = item.exptime
        if exptime and exptime <= self.now:
            self._unlink(item)
            self.stats.get_expired += 1
            return None
        return item

    def get(self, key: bytes) -> Item | None:
        """A read: the live item, marked fetched and moved to the LRU front."""
        item = self.find(key)
        if item is not None:
            self.bump(item)
        return item

    def bump(self, item: Item) -> None:
        """Mark `item` fetched and most recently used. As memcached (ITEM_UPDATE_INTERVAL),
        an item used within the last minute is not moved again: hot keys cost no relinking."""
        if not item.casbits & FETCHED:
            item.casbits |= FETCHED
        if item.atime > self.now - ITEM_UPDATE_INTERVAL_S and item.atime != 0:
            return
        item.atime = self.now
        lru = self._lru
        if lru.next is not item:
            prev, nxt = item.prev, item.next
            prev.next = nxt
            nxt.prev = prev
            if item is self._cursor:
                self._cursor = prev
            head = lru.next
            item.prev = lru
            item.next = head
            head.prev = item
            lru.next = item

    def refresh(self, item: Item) -> None:
        """do_item_update: most recently used again, without counting as a read."""
        fetched = item.casbits & FETCHED
        self.bump(item)
        if not fetched:
            item.casbits &= ~FETCHED

    def touch(self, key: bytes, exptime: int) -> Item | None:
        """gat/touch: read the item and give it a new (already converted) exptime."""
        item = self.get(key)
        if item is not None:
            self.set_exptime(item, exptime)
        return item

    def set_exptime(self, item: Item, exptime: int) -> None:
        """A new (converted) exptime for a linked item; its cost may change by one int."""
        had = bool(item.exptime)
        item.exptime = exptime
        if had != bool(exptime):
            self.stats.bytes += -INT_OBJECT_BYTES if had else INT_OBJECT_BYTES
            if not had:
                self._make_room(0, keep=item)

    # -- mutations -----------------------------------------------------------------------
    def store(
        self,
        mode: Mode,
        key: bytes,
        value: bytes,
        flags: int,
        exptime: int,
        cas: int = 0,
        *,
        set_stale: bool = False,
        key_binary: bool = False,
    ) -> tuple[Outcome, Item | None]:
        """do_store_item: `exptime` already converted by `expiry`. `cas` non-zero asks for a
        CAS match (CAS mode; append/prepend check it too). Returns the stored item."""
        stats = self.stats
        old = self.find(key)
        bits = KEY_BINARY if key_binary else 0
        if old is None:
            if mode is Mode.CAS:
                stats.cas_misses += 1
                return Outcome.NOT_FOUND, None
            if mode is Mode.SET or mode is Mode.ADD:
                return self._insert(key, value, flags, exptime, bits, None)
            return Outcome.NOT_STORED, None
        old_cas = old.casbits >> CAS_SHIFT
        if mode is Mode.ADD:
            self.refresh(old)
            return Outcome.NOT_STORED, None
        if mode is Mode.CAS:
            cls = self.clsid_of(old)
            if cas == old_cas:
                stats.slab.cas_hits[cls] += 1
            elif set_stale and cas and cas < old_cas:
                exptime = old.exptime
                bits |= STALE | (old.casbits & TOKEN_SENT)
                stats.slab.cas_hits[cls] += 1
            else:
                stats.slab.cas_badval[cls] += 1
                return Outcome.EXISTS, None
        elif mode is Mode.APPEND or mode is Mode.PREPEND:
            if cas and cas != old_cas:
                return Outcome.EXISTS, None
            value = old.value + value if mode is Mode.APPEND else value + old.value
            flags, exptime = old.flags, old.exptime
            if not self.slabs.fits(len(key), flags, len(value)):
                return Outcome.NOT_STORED, None
        return self._insert(key, value, flags, exptime, bits, old)

    def delete(self, key: bytes) -> Item | None:
        """Remove a live item; returns it (None if there was none)."""
        item = self.find(key)
        if item is not None:
            self._unlink(item)
        return item

    def remove(self, item: Item) -> None:
        """Unlink an item the caller holds (it must still be linked)."""
        self._unlink(item)

    def invalidate(self, item: Item, exptime: int | None) -> None:
        """md with I: mark stale, new CAS, token up for grabs again, optionally a new TTL."""
        if exptime is not None:
            self.set_exptime(item, exptime)
        bits = (item.casbits & BITS_MASK & ~TOKEN_SENT) | STALE
        item.casbits = self.next_cas() << CAS_SHIFT | bits

    def vivify(self, key: bytes, exptime: int, key_binary: bool) -> Item | None:
        """mg N on a miss: an empty placeholder item (None if it cannot fit)."""
        outcome, item = self._insert(key, b"", 0, exptime, KEY_BINARY if key_binary else 0,
                                     None)
        return item if outcome is Outcome.STORED else None

    def delta(
        self, key: bytes, incr: bool, delta: int, cas: int = 0,
        pinned: Container[Item] = (),
    ) -> Delta:
        """do_add_delta: incr wraps at 2**64, decr stops at 0. A result no longer than the
        old value is written in place, padded with spaces, as memcached does, unless the
        item is `pinned` (memcached: another reference is held, by a reply not yet sent):
        then a new item holds the bare number."""
        item = self.find(key)
        if item is None:
            return Delta(Outcome.NOT_FOUND, 0, None, False)
        old = item.value
        ntotal = item_ntotal(len(key), item.flags, len(old))
        if not old or self.slabs.chunked(ntotal):
            return Delta(Outcome.NON_NUMERIC, 0, None, False)
        if cas and cas != item.casbits >> CAS_SHIFT:
            return Delta(Outcome.EXISTS, 0, None, False)
        number = parse_u64_prefix(old)
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
        if len(text) <= len(old) and item not in pinned:
            item.value = text.ljust(len(old))
            item.casbits = self.next_cas() << CAS_SHIFT | (item.casbits & BITS_MASK)
            self.refresh(item)
            return Delta(Outcome.STORED, number, item, True)
        outcome, new = self._insert(key, text, item.flags, item.exptime, 0, item)
        return Delta(outcome, number, new, False)

    def flush(self, delay: int) -> None:
        """flush_all [delay]: everything stored before the deadline dies at the deadline."""
        deadline = self.expiry(delay) if delay > 0 else self.now
        self.oldest_live = deadline - 1
        if self.oldest_live <= self.now:
            self.oldest_cas = self._last_cas + 1

    # -- reclaiming ----------------------------------------------------------------------
    @property
    def crawling(self) -> bool:
        """A crawl pass is under way (the last `crawl` stopped before the LRU head)."""
        return self._cursor is not None

    def crawl(self, budget: int) -> int:
        """Check up to `budget` items from where the last crawl stopped (LRU tail first),
        reclaiming the expired and flushed ones. Returns how many were reclaimed."""
        stats = self.stats
        lru = self._lru
        item = self._cursor if self._cursor is not None else lru.prev
        reclaimed = 0
        now = self.now
        while budget > 0 and item is not lru:
            budget -= 1
            prev = item.prev
            cls = self.clsid_of(item)
            stats.slab.crawler_items_checked[cls] += 1
            flushed = bool(self.oldest_live) and self._flushed(item)
            if flushed or (item.exptime and item.exptime <= now):
                if not flushed and not item.casbits & FETCHED:
                    stats.slab.expired_unfetched[cls] += 1
                stats.slab.crawler_reclaimed[cls] += 1
                stats.slab.reclaimed[cls] += 1
                self._unlink(item)
                reclaimed += 1
            item = prev
        self._cursor = None if item is lru else item
        return reclaimed

    def oldest_age(self) -> int:
        """Seconds since the LRU tail was last stored or read (stats items `age`)."""
        tail = self._lru.prev
        return 0 if tail is self._lru else max(0, self.now - tail.atime)

    def alive(self, item: Item) -> bool:
        """Neither expired nor flushed (a linked item may be either until reclaimed)."""
        exptime = item.exptime
        if exptime and exptime <= self.now:
            return False
        return not (self.oldest_live and self._flushed(item))

    def items(self) -> list[Item]:
        """Every linked item, most recent first (for tests and dumps; O(n))."""
        out = []
        item = self._lru.next
        while item is not self._lru:
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
        cost = item_cost(key, value, flags, exptime)
        if old is not None:
            self._unlink(old)
        if not self._make_room(cost):
            self.stats.slab.outofmemory[self.clsid_for(len(key), flags, len(value))] += 1
            return Outcome.NO_MEMORY, None
        item = Item()
        item.key = key
        item.value = value
        item.flags = flags
        item.exptime = exptime
        item.atime = self.now
        self._last_cas += 1
        item.casbits = self._last_cas << CAS_SHIFT | bits
        lru = self._lru
        head = lru.next
        item.prev = lru
        item.next = head
        head.prev = item
        lru.next = item
        self._index[key] = item
        stats = self.stats
        stats.bytes += cost
        stats.curr_items += 1
        stats.total_items += 1
        ntotal = _NTOTAL_FIXED + len(key) + len(value) + (4 if flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        cls = index + 1 if index < self._classes else self._classes
        slab = stats.slab
        number = slab.number[cls] + 1
        slab.number[cls] = number
        if number > slab.peak[cls]:
            slab.peak[cls] = number
        slab.requested[cls] += ntotal
        index_bytes = sys.getsizeof(self._index)
        if index_bytes != self._index_bytes:
            self._index_bytes = index_bytes
            if not self._make_room(0, keep=item):
                self._unlink(item)
                return Outcome.NO_MEMORY, None
        return Outcome.STORED, item

    def _make_room(self, cost: int, keep: Item | None = None) -> bool:
        """Evict from the LRU tail until `cost` more bytes fit; False if they cannot."""
        stats = self.stats
        if stats.bytes + self._index_bytes + cost <= self.limit_bytes:
            return True
        lru = self._lru
        while stats.bytes + self._index_bytes + cost > self.limit_bytes:
            victim = lru.prev
            if victim is keep:
                victim = victim.prev
            if victim is lru or not self.evict:
                return False
            cls = self.clsid_of(victim)
            exptime = victim.exptime
            flushed = bool(self.oldest_live) and self._flushed(victim)
            if flushed or (exptime and exptime <= self.now):
                stats.slab.reclaimed[cls] += 1
                if not flushed and not victim.casbits & FETCHED:
                    stats.slab.expired_unfetched[cls] += 1
            else:
                stats.slab.evicted[cls] += 1
                stats.slab.evicted_time[cls] = self.now - victim.atime
                if exptime:
                    stats.slab.evicted_nonzero[cls] += 1
                if not victim.casbits & FETCHED:
                    stats.slab.evicted_unfetched[cls] += 1
            self._unlink(victim)
        return True

    def _unlink(self, item: Item) -> None:
        del self._index[item.key]
        prev, nxt = item.prev, item.next
        prev.next = nxt
        nxt.prev = prev
        if item is self._cursor:
            self._cursor = prev if prev is not self._lru else None
        item.prev = item.next = None  # type: ignore[assignment]  # breaks the cycle
        stats = self.stats
        stats.bytes -= item_cost(item.key, item.value, item.flags, item.exptime)
        stats.curr_items -= 1
        ntotal = _NTOTAL_FIXED + len(item.key) + len(item.value) + (4 if item.flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        cls = index + 1 if index < self._classes else self._classes
        stats.slab.number[cls] -= 1
        stats.slab.requested[cls] -= ntotal
