"""The cache itself, sans I/O, in pure Python: the reference twin of kvcache/_kvstore.pyx.

kvcache/storage.py picks one of the two; both keep exactly these rules, and
tests/test_kvcache_storage_twins.py drives them side by side to prove it.

No sockets and no clock: time enters as whole seconds through `tick(now)` (the server calls
it about ten times a second and the value changes once a second, as memcached's timer
updates `current_time`).

This module holds what the commands mean: store modes and CAS, incr/decr, touch, meta's
invalidation and vivification, flush_all, and lookups that reclaim the expired and flushed
items they meet. The item layer under it (memory, the index, the segmented HOT/WARM/COLD
LRU per class, eviction, the crawler and the per-class counts) is kvcache/lru_pure.py,
whose header documents those rules.
"""

from __future__ import annotations

from collections.abc import Container

from kvcache.items import (
    BITS_MASK,
    CAS_SHIFT,
    KEY_BINARY,
    STALE,
    TOKEN_SENT,
    Delta,
    Item,
    Mode,
    Outcome,
    item_cost,
)
from kvcache.lru_pure import (
    COLD,
    HOT,
    HOT_PERCENT,
    ITEM_UPDATE_INTERVAL_S,
    LANES,
    WARM,
    WARM_PERCENT,
    Lru,
)
from kvcache.numbers import parse_u64_prefix
from kvcache.replies import END, value_block
from kvcache.slabs import item_ntotal

REALTIME_MAXDELTA = 60 * 60 * 24 * 30  # exptimes above this are Unix times
U64_MASK = (1 << 64) - 1
# A VALUE block's bytes besides its key and value, at most: "VALUE ", three numbers with
# their spaces (flags < 2**32, length < 2**31, CAS < 2**64) and two CRLFs.
VALUE_BLOCK_SLACK = 6 + 11 + 11 + 21 + 4

__all__ = ["COLD", "HOT", "HOT_PERCENT", "ITEM_UPDATE_INTERVAL_S", "LANES", "REALTIME_MAXDELTA",
           "VALUE_BLOCK_SLACK", "WARM", "WARM_PERCENT", "Delta", "Item", "Mode", "Outcome",
           "Storage", "item_cost"]


class Storage(Lru):
    """A memcached-semantics cache bounded to `limit_bytes`. Single-threaded; `now` is
    the current Unix time in whole seconds, advanced by `tick`. Constructed as `Lru`:
    `Storage(limit_bytes, item_size_max, now, *, evict=True, stats=None, slabs=None)`."""

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

    def count_hit(self, item: Item) -> None:
        """Count a get hit on `item`, found and not yet bumped: to its class's get_hits and
        to the segment it is in (memcached counts lru_hits by the LRU the item is in when
        found; its move out of COLD comes later, ours comes with the bump)."""
        slab = self.stats.slab
        mcls = self.clsid_of(item)
        slab.get_hits[mcls] += 1
        segment = item.lane % LANES
        hits = (slab.hits_to_hot if segment == HOT else
                slab.hits_to_warm if segment == WARM else slab.hits_to_cold)
        hits[mcls] += 1

    def read(self, key: bytes) -> Item | None:
        """A get/gets/mg of one key as memcached counts its hit: the live item, its hit
        counted (count_hit), then bumped. Misses and cmd_get are the caller's to count."""
        item = self.find(key)
        if item is not None:
            self.count_hit(item)
            self.bump(item)
        return item

    def get_reply(self, key: bytes) -> bytes:
        """The whole reply to `get <key>` (one key, at most MAX_KEY_BYTES): its VALUE block
        and END, read and counted as memcached counts a get: cmd_get, then get_misses or
        the hit (`read`). The server's fast lane and `get` use it."""
        stats = self.stats
        stats.get_cmds += 1
        item = self.read(key)
        if item is None:
            stats.get_misses += 1
            return END
        value = item.value
        return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, item.flags, len(value), value)

    def get_many_reply(self, keys: list[bytes], with_cas: bool, most: int) -> bytes | None:
        """The whole reply to `get`/`gets` of `keys` (each at most MAX_KEY_BYTES): every
        hit's VALUE block in order (with its CAS for gets), then END, read and counted as
        the request loop counts a multi-get (cmd_get and get_misses per key, each hit by
        `read`). None, and nothing read or counted, when the reply could be longer than
        `most` bytes (`reply_bound`): the request loop streams such replies."""
        if self.reply_bound(keys) > most:
            return None
        stats = self.stats
        read = self.read
        parts = []
        for key in keys:
            item = read(key)
            if item is None:
                stats.get_misses += 1
                continue
            parts.append(value_block(key, item.flags, item.value, item.cas if with_cas else None))
        stats.get_cmds += len(keys)
        parts.append(END)
        return b"".join(parts)

    def reply_bound(self, keys: list[bytes]) -> int:
        """At least the length of a get/gets reply to `keys`, without reading them: every
        item the index holds under each key (live or not) with the longest header, and END.
        Both twins compute exactly this figure, so they decline the same multi-gets."""
        index = self._index
        bound = len(END)
        for key in keys:
            item = index.get(key)
            if item is not None:
                bound += len(key) + len(item.value) + VALUE_BLOCK_SLACK
        return bound

    def touch(self, key: bytes, exptime: int) -> Item | None:
        """gat/touch: read the item and give it a new (already converted) exptime."""
        item = self.get(key)
        if item is not None:
            self.set_exptime(item, exptime)
        return item

    def meta_read(self, key: bytes, exptime: int | None, bump: bool) -> Item | None:
        """mg's lookup (kvcache/mcpipe_pure.py): the live item or None, nothing counted for
        a miss. A hit with `exptime` None is counted as a get hit (cmd_get, `count_hit`);
        otherwise it takes that (converted) exptime and is counted as a touch. Then, with
        `bump`, it is bumped; the item is returned as it is after all that."""
        item = self.find(key)
        if item is None:
            return None
        stats = self.stats
        if exptime is None:
            stats.get_cmds += 1
            self.count_hit(item)
        else:
            self.set_exptime(item, exptime)
            stats.touch_cmds += 1
            stats.slab.touch_hits[self.clsid_of(item)] += 1
        if bump:
            self.bump(item)
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
            if not self.use_cas:  # -C: memcached answers EXISTS to every cas
                stats.slab.cas_badval[cls] += 1
                return Outcome.EXISTS, None
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

    def store_command(self, mode: Mode, key: bytes, value: bytes, flags: int, exptime: int,
                      cas: int = 0) -> Outcome:
        """A classic storage command (set add replace append prepend cas) with its data,
        counted as memcached counts one: the class's set_cmds whatever the outcome, and
        store_no_memory when the item cannot be stored. `exptime` already converted."""
        self.stats.slab.set_cmds[self.clsid_for(len(key), flags, len(value))] += 1
        outcome, _ = self.store(mode, key, value, flags, exptime, cas)
        if outcome is Outcome.NO_MEMORY:
            self.stats.store_no_memory += 1
        return outcome

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
        ntotal = item_ntotal(len(key), item.flags, len(old), self.use_cas)
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

    def delta_number(self, key: bytes, incr: bool, delta: int,
                     pinned: Container[Item] = ()) -> Delta:
        """`delta` (no CAS) whose Delta names no item: the pipeline lane's incr/decr, which
        needs only the outcome and the number (the compiled twin makes no view for it)."""
        outcome, number, _, in_place = self.delta(key, incr, delta, 0, pinned)
        return Delta(outcome, number, None, in_place)

    def flush(self, delay: int) -> None:
        """flush_all [delay]: everything stored before the deadline dies at the deadline."""
        deadline = self.expiry(delay) if delay > 0 else self.now
        self.oldest_live = deadline - 1
        if self.oldest_live <= self.now and self.use_cas:  # -C: by time alone
            self.oldest_cas = self._last_cas + 1
