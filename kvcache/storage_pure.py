"""The cache itself, sans I/O, in pure Python: the reference twin of native/_kvstore.pyx.

kvcache/storage.py picks one of the two; both keep exactly these rules, and
tests/test_kvcache_storage_twins.py drives them side by side to prove it.

No sockets and no clock: time enters as whole seconds through `tick(now)` (the server calls
it about ten times a second and the value changes once a second, as memcached's timer
updates `current_time`).

Memory is modelled on memcached's slab allocator, with the arithmetic of kvcache/slabs.py
(`ArenaClasses`): an item takes one chunk of its size class; chunks are carved from the
arena on demand while the carved bytes plus the hash table stay within the limit (-m), and
a freed chunk goes back to its class. A class that may carve no more evicts from the tail
of its own LRU (as memcached's per-class LRUs do). As in memcached, a class with no chunk
at all may carve its first one over the limit, so no size is locked out. This twin only
counts chunks and buckets (its items are Python objects); the native twin really has them.

Each class has a segmented LRU as memcached's (HOT, WARM, COLD; each list intrusive: `prev`
and `next` in the item, around a sentinel, most recent at `sentinel.next`). We call one
class's segment a lane, numbered cls * LANES + segment. A new item enters HOT. A read only
sets bits: the first marks the item fetched, the second active (and stamps its atime); an
active item in COLD is moved to WARM at once (memcached does it a moment later). After each
insert or move `_balance` keeps HOT within HOT_PERCENT and WARM within WARM_PERCENT of the
class's items: HOT's tail goes to WARM if active, else to COLD; WARM's tail goes round WARM
once more if active, else to COLD; moving clears the active bit. Eviction takes COLD's tail
(WARM's, then HOT's, if COLD is empty). So hits cost no relinking and an item read twice
survives a burst of new writes. Expired and flushed items are reclaimed when a lookup or an
eviction meets them, and by `crawl`, which walks every lane in order, each from its tail, a
bounded number of items per call.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container

from kvcache.items import (
    BITS_MASK,
    CAS_SHIFT,
    FETCHED,
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
from kvcache.slabs import (
    HOT_PERCENT,
    INITIAL_BUCKETS,
    WARM_PERCENT,
    ArenaClasses,
    SlabClasses,
    grown_buckets,
    item_ntotal,
    table_bytes,
)
from kvcache.stats import CacheStats

REALTIME_MAXDELTA = 60 * 60 * 24 * 30  # exptimes above this are Unix times
U64_MASK = (1 << 64) - 1
_NTOTAL_FIXED = item_ntotal(0, 0, 0)  # what memcached adds to the key and value lengths

ITEM_UPDATE_INTERVAL_S = 60  # memcached's: a write refreshes atime at most once a minute
HOT, WARM, COLD = 0, 1, 2  # the segments of a class's LRU
LANES = 3

__all__ = ["COLD", "HOT", "HOT_PERCENT", "ITEM_UPDATE_INTERVAL_S", "LANES", "REALTIME_MAXDELTA",
           "WARM", "WARM_PERCENT", "Delta", "Item", "Mode", "Outcome",
           "Storage", "item_cost"]


def _sentinel() -> Item:
    sentinel = Item()
    sentinel.prev = sentinel.next = sentinel
    return sentinel


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
        self.arena = ArenaClasses(item_size_max)
        classes = len(self.arena.sizes) + 1  # index 0 unused, as class ids start at 1
        self._index: dict[bytes, Item] = {}
        self._buckets = INITIAL_BUCKETS  # the native twin's table size, modelled
        self._lanes = [_sentinel() for _ in range(classes * LANES)]
        self._counts = [0] * (classes * LANES)  # items per lane
        self._carved = [0] * classes  # chunks carved per class; invariant: used <= carved
        self._used = [0] * classes
        self._carved_bytes = 0
        # The crawl: the lane it is in (0: no pass under way) and the next item to check
        # there, walking towards the head (the sentinel: that lane is done).
        self._crawl_lane = 0
        self._cursor: Item | None = None
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
        """Carved chunks plus the hash table: what the limit is checked against."""
        return self._carved_bytes + table_bytes(self._buckets)

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
        """cache_memlimit: a new limit for what is carved from now on (as memcached, chunks
        already carved stay with their class)."""
        self.limit_bytes = limit_bytes

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
        """A read (memcached's do_item_bump): the first marks `item` fetched, the second
        active, stamping its atime; an active item leaves COLD for WARM. Once active, reads
        change nothing until a move clears the bit."""
        if item.active:
            return
        if not item.casbits & FETCHED:
            item.casbits |= FETCHED
            return
        item.active = True
        item.atime = self.now
        if item.lane % LANES == COLD:
            self._move(item, item.lane - COLD + WARM)
            self._balance(item.lane // LANES)

    def refresh(self, item: Item) -> None:
        """do_item_update: stamp the access time (at most once a minute); not a read."""
        if item.atime < self.now - ITEM_UPDATE_INTERVAL_S:
            item.atime = self.now

    def touch(self, key: bytes, exptime: int) -> Item | None:
        """gat/touch: read the item and give it a new (already converted) exptime."""
        item = self.get(key)
        if item is not None:
            self.set_exptime(item, exptime)
        return item

    def set_exptime(self, item: Item, exptime: int) -> None:
        """A new (converted) exptime for a linked item."""
        item.exptime = exptime

    def grant_token(self, item: Item) -> None:
        """mg W: this client won the recache token; others see Z until it is stored."""
        item.casbits |= TOKEN_SENT

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
        """A crawl pass is under way (the last `crawl` stopped before the last class's head)."""
        return self._crawl_lane != 0

    def crawl(self, budget: int) -> int:
        """Check up to `budget` items from where the last crawl stopped (class by class,
        each from its LRU tail), reclaiming the expired and flushed ones. Returns how many
        were reclaimed."""
        stats = self.stats
        if self._crawl_lane == 0:
            self._crawl_lane = LANES
            self._cursor = self._lanes[LANES].prev
        lane, item = self._crawl_lane, self._cursor
        sentinel = self._lanes[lane]
        reclaimed = 0
        now = self.now
        while budget > 0:
            if item is sentinel:
                lane += 1
                if lane == len(self._lanes):
                    break
                sentinel = self._lanes[lane]
                item = sentinel.prev
                continue
            budget -= 1
            prev = item.prev
            mcls = self.clsid_of(item)
            stats.slab.crawler_items_checked[mcls] += 1
            flushed = bool(self.oldest_live) and self._flushed(item)
            if flushed or (item.exptime and item.exptime <= now):
                if not flushed and not item.casbits & FETCHED:
                    stats.slab.expired_unfetched[mcls] += 1
                stats.slab.crawler_reclaimed[mcls] += 1
                stats.slab.reclaimed[mcls] += 1
                self._unlink(item)
                reclaimed += 1
            item = prev
        if lane == len(self._lanes):
            self._crawl_lane, self._cursor = 0, None
        else:
            self._crawl_lane, self._cursor = lane, item
        return reclaimed

    def oldest_age(self) -> int:
        """Seconds since the oldest LRU tail was last stored or read (stats items `age`)."""
        return max((max(0, self.now - lane.prev.atime) for lane in self._lanes[LANES:]
                    if lane.prev is not lane), default=0)

    def alive(self, item: Item) -> bool:
        """Neither expired nor flushed (a linked item may be either until reclaimed)."""
        exptime = item.exptime
        if exptime and exptime <= self.now:
            return False
        return not (self.oldest_live and self._flushed(item))

    def items(self) -> list[Item]:
        """Every linked item, lane by lane (per class HOT, WARM, COLD), most recent first
        (for tests and dumps; O(n))."""
        out = []
        for lane in self._lanes[LANES:]:
            item = lane.next
            while item is not lane:
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
        if old is not None:
            self._unlink(old)
        cls = self.arena.clsid(len(key), len(value))
        if cls == 0 or not self._take_chunk(cls):
            self.stats.slab.outofmemory[self.clsid_for(len(key), flags, len(value))] += 1
            return Outcome.NO_MEMORY, None
        item = Item()
        item.key = key
        item.value = value
        item.flags = flags
        item.exptime = exptime
        item.atime = self.now
        item.active = False
        self._last_cas += 1
        item.casbits = self._last_cas << CAS_SHIFT | bits
        self._push(item, cls * LANES + HOT)
        self._balance(cls)
        self._index[key] = item
        stats = self.stats
        stats.bytes += self.arena.sizes[cls - 1]
        stats.curr_items += 1
        stats.total_items += 1
        ntotal = _NTOTAL_FIXED + len(key) + len(value) + (4 if flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        mcls = index + 1 if index < self._classes else self._classes
        slab = stats.slab
        number = slab.number[mcls] + 1
        slab.number[mcls] = number
        if number > slab.peak[mcls]:
            slab.peak[mcls] = number
        slab.requested[mcls] += ntotal
        buckets = grown_buckets(len(self._index), self._buckets)
        if buckets != self._buckets and (
                self._carved_bytes + table_bytes(buckets) <= self.limit_bytes):
            self._buckets = buckets
        return Outcome.STORED, item

    def _take_chunk(self, cls: int) -> bool:
        """Claim a chunk of class `cls`: a free one, a newly carved one, or the one the
        class's LRU tail gives up. False if none can be had."""
        if self._used[cls] < self._carved[cls]:
            self._used[cls] += 1
            return True
        size = self.arena.sizes[cls - 1]
        table = table_bytes(self._buckets)
        if self._carved_bytes + table + size <= self.limit_bytes or (
                self._carved[cls] == 0 and table + size <= self.limit_bytes):
            self._carved[cls] += 1
            self._carved_bytes += size
            self._used[cls] += 1
            return True
        if not self.evict:
            return False
        for lane in (cls * LANES + COLD, cls * LANES + WARM, cls * LANES + HOT):
            victim = self._lanes[lane].prev
            if victim is not self._lanes[lane]:
                break
        else:
            return False
        self._evict(victim)
        self._used[cls] += 1
        return True

    def _evict(self, victim: Item) -> None:
        """Unlink the LRU tail to reuse its chunk, counting it reclaimed or evicted."""
        stats = self.stats
        mcls = self.clsid_of(victim)
        exptime = victim.exptime
        flushed = bool(self.oldest_live) and self._flushed(victim)
        if flushed or (exptime and exptime <= self.now):
            stats.slab.reclaimed[mcls] += 1
            if not flushed and not victim.casbits & FETCHED:
                stats.slab.expired_unfetched[mcls] += 1
        else:
            stats.slab.evicted[mcls] += 1
            stats.slab.evicted_time[mcls] = self.now - victim.atime
            if exptime:
                stats.slab.evicted_nonzero[mcls] += 1
            if not victim.casbits & FETCHED:
                stats.slab.evicted_unfetched[mcls] += 1
        self._unlink(victim)

    def _push(self, item: Item, lane: int) -> None:
        sentinel = self._lanes[lane]
        head = sentinel.next
        item.prev = sentinel
        item.next = head
        head.prev = item
        sentinel.next = item
        item.lane = lane
        self._counts[lane] += 1

    def _pop(self, item: Item) -> None:
        prev, nxt = item.prev, item.next
        prev.next = nxt
        nxt.prev = prev
        if item is self._cursor:
            self._cursor = prev
        self._counts[item.lane] -= 1

    def _move(self, item: Item, lane: int) -> None:
        self._pop(item)
        self._push(item, lane)

    def _balance(self, cls: int) -> None:
        """Keep HOT and WARM within their shares of the class (module docstring)."""
        hot = cls * LANES + HOT
        warm, cold = hot + WARM, hot + COLD
        counts, lanes = self._counts, self._lanes
        total = counts[hot] + counts[warm] + counts[cold]
        while counts[hot] > total * HOT_PERCENT // 100:
            item = lanes[hot].prev
            self._move(item, warm if item.active else cold)
            item.active = False
        while counts[warm] > total * WARM_PERCENT // 100:
            item = lanes[warm].prev
            self._move(item, warm if item.active else cold)
            item.active = False

    def _unlink(self, item: Item) -> None:
        del self._index[item.key]
        self._pop(item)
        item.prev = item.next = None  # type: ignore[assignment]  # breaks the cycle
        cls = item.lane // LANES
        self._used[cls] -= 1
        stats = self.stats
        stats.bytes -= self.arena.sizes[cls - 1]
        stats.curr_items -= 1
        ntotal = _NTOTAL_FIXED + len(item.key) + len(item.value) + (4 if item.flags else 0)
        index = bisect_left(self._class_sizes, ntotal)
        mcls = index + 1 if index < self._classes else self._classes
        stats.slab.number[mcls] -= 1
        stats.slab.requested[mcls] -= ntotal
