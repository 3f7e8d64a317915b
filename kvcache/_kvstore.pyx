# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""kvcache's storage over arena memory: the compiled twin of kvcache/storage_pure.py.

Same rules, same interface, same figures (tests/test_kvcache_storage_twins.py drives both);
the rules are documented in the pure twin. As there, this module holds what the commands
mean (store modes and CAS, incr/decr, touch, meta's invalidation, flush_all, lookups that
reclaim what they meet) over the item layer of kvcache/_kvlru.pyx (its base class `Lru`:
views, linking, eviction, the LRU, the crawler, the per-class counts), which sits on the
arena of kvcache/_kvarena.pyx.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from kvcache._kvarena cimport (
    HOT,
    KEY_BINARY,
    SEG_MASK,
    SEG_SHIFT,
    STALE,
    TOKEN_SENT,
    WARM,
    Rec,
    key_of,
    rec_at,
)
from kvcache._kvlru cimport ItemView, Lru

from kvcache import storage_pure as _pure
from kvcache.items import Delta, Mode, Outcome
from kvcache.numbers import parse_u64_prefix
from kvcache.replies import END
from kvcache.slabs import item_ntotal
from kvcache.counters import HOT_COUNTERS

cdef enum:
    REALTIME_MAXDELTA = 2592000

assert REALTIME_MAXDELTA == _pure.REALTIME_MAXDELTA

cdef object U64_MASK = (1 << 64) - 1
cdef object _SET = Mode.SET, _ADD = Mode.ADD, _CAS = Mode.CAS
cdef object _APPEND = Mode.APPEND, _PREPEND = Mode.PREPEND
cdef object _STORED = Outcome.STORED, _NO_MEMORY = Outcome.NO_MEMORY
cdef object _NOT_FOUND = Outcome.NOT_FOUND, _NON_NUMERIC = Outcome.NON_NUMERIC
cdef object _EXISTS = Outcome.EXISTS
cdef object _tuple_new = tuple.__new__
cdef bytes _END = END
cdef Py_ssize_t _GET_CMDS = HOT_COUNTERS.index("get_cmds")
cdef Py_ssize_t _GET_MISSES = HOT_COUNTERS.index("get_misses")
cdef Py_ssize_t _BLOCK_SLACK = _pure.VALUE_BLOCK_SLACK


cdef inline object _delta(outcome, number, item, bint in_place):
    """A Delta, made as its NamedTuple's __new__ makes it, without that Python frame."""
    return _tuple_new(Delta, (outcome, number, item, in_place))


cdef int _decimal(char* w, uint64_t n) noexcept:
    """` <n>` written at w (snprintf's formatting costs more than the rest of a get)."""
    cdef char digits[20]
    cdef int count = 0, i
    while True:
        digits[count] = <char>(48 + n % 10)
        count += 1
        n //= 10
        if n == 0:
            break
    w[0] = 32
    for i in range(count):
        w[1 + i] = digits[count - 1 - i]
    return count + 1


cdef bint _plain_number(const char* p, Py_ssize_t n, uint64_t* out) noexcept:
    """The common stored counter: 1 to 19 digits from the first byte, then the end or a C
    whitespace byte (what safe_strtoull reads the same way, see kvcache/numbers.py);
    False for anything else (signs, leading spaces, 20 digits and more)."""
    cdef Py_ssize_t i = 0
    cdef uint64_t value = 0
    while i < n and i < 20 and p[i] >= 48 and p[i] <= 57:
        value = value * 10 + <uint64_t>(p[i] - 48)
        i += 1
    if i == 0 or i >= 20:
        return False
    if i < n and p[i] != 32 and not (9 <= p[i] <= 13):
        return False
    out[0] = value
    return True


cdef bytes _value_reply(Rec* r):
    """`VALUE <key> <flags> <bytes>\\r\\n<value>\\r\\nEND\\r\\n` from a record, one allocation."""
    cdef char numbers[32]
    cdef int nnum = _decimal(numbers, r.flags)
    nnum += _decimal(numbers + nnum, r.nvalue)
    numbers[nnum] = 13
    numbers[nnum + 1] = 10
    nnum += 2
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 6 + r.nkey + nnum + r.nvalue + 7)
    cdef char* w = PyBytes_AS_STRING(out)
    memcpy(w, b"VALUE ", 6)
    memcpy(w + 6, key_of(r), r.nkey)
    w += 6 + r.nkey
    memcpy(w, numbers, nnum)
    memcpy(w + nnum, key_of(r) + r.nkey, r.nvalue)
    memcpy(w + nnum + r.nvalue, b"\r\nEND\r\n", 7)
    return out


cdef int _width(uint64_t n) noexcept:
    """How many digits _decimal writes for n."""
    cdef int count = 1
    while n >= 10:
        n //= 10
        count += 1
    return count


cdef Py_ssize_t _block_size(Rec* r, bint with_cas) noexcept:
    """The length of the VALUE block _write_block writes for r."""
    cdef Py_ssize_t size = 6 + r.nkey + 1 + _width(r.flags) + 1 + _width(r.nvalue) + 4
    if with_cas:
        size += 1 + _width(r.cas)
    return size + r.nvalue


cdef char* _write_block(char* w, Rec* r, bint with_cas) noexcept:
    """`VALUE <key> <flags> <bytes>[ <cas>]\r\n<value>\r\n` at w; returns its end."""
    memcpy(w, b"VALUE ", 6)
    memcpy(w + 6, key_of(r), r.nkey)
    w += 6 + r.nkey
    w += _decimal(w, r.flags)
    w += _decimal(w, r.nvalue)
    if with_cas:
        w += _decimal(w, r.cas)
    w[0] = 13
    w[1] = 10
    memcpy(w + 2, key_of(r) + r.nkey, r.nvalue)
    w += 2 + r.nvalue
    w[0] = 13
    w[1] = 10
    return w + 2


cdef class Storage(Lru):
    """A memcached-semantics cache bounded to `limit_bytes`, over arena memory. Single-
    threaded; `now` is the current Unix time in whole seconds, advanced by `tick`.
    Constructed as `Lru`: `Storage(limit_bytes, item_size_max, now, *, evict=True,
    stats=None, slabs=None)`."""

    # counters a plain get or set moves, written in C (kvcache/counters.py: HOT_COUNTERS)
    cdef long long[::1] hot, get_hits, set_cmds, incr_hits, decr_hits
    cdef long long[::1] hits_to_hot, hits_to_warm, hits_to_cold  # [mcls], by segment

    def __cinit__(self, *args, **kwargs):
        stats = self.stats
        slab = stats.slab
        self.hot, self.get_hits, self.set_cmds = stats.hot, slab.get_hits, slab.set_cmds
        self.incr_hits, self.decr_hits = slab.incr_hits, slab.decr_hits
        self.hits_to_hot, self.hits_to_warm, self.hits_to_cold = (
            slab.hits_to_hot, slab.hits_to_warm, slab.hits_to_cold)

    # -- time ----------------------------------------------------------------------------
    def tick(self, int64_t now) -> None:
        """Advance the cache's clock (whole seconds)."""
        self.now = now

    def expiry(self, int64_t exptime) -> int:
        """memcached's realtime(): a wire exptime -> Unix time, 0 for never."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > REALTIME_MAXDELTA:
            return exptime
        return self.now + exptime

    # -- lookups -------------------------------------------------------------------------
    cdef uint32_t _find(self, bytes key) except? 0:
        cdef uint32_t ref = self.a.lookup(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        cdef Rec* r
        if ref == 0:
            return 0
        r = rec_at(self.a.base, ref)
        if self.oldest_live and self._flushed(r.atime, r.cas):
            self._unlink(ref)
            self.stats.get_flushed += 1
            return 0
        if r.exptime and r.exptime <= self.now:
            self._unlink(ref)
            self.stats.get_expired += 1
            return 0
        return ref

    def find(self, bytes key not None):
        """do_item_get without the bump: a live item or None (see the pure twin)."""
        cdef uint32_t ref = self._find(key)
        return self._view(ref) if ref else None

    def get(self, bytes key not None):
        """A read: the live item, marked fetched and moved to the LRU front."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        self._bump(ref)
        return self._view(ref)

    cdef void _count_hit(self, Rec* r) noexcept:
        # a get hit: to the class's get_hits and to the segment the record is in (before
        # the bump, see the pure twin's count_hit)
        cdef int mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
        cdef int segment = (r.bits & SEG_MASK) >> SEG_SHIFT
        self.get_hits[mcls] += 1
        if segment == HOT:
            self.hits_to_hot[mcls] += 1
        elif segment == WARM:
            self.hits_to_warm[mcls] += 1
        else:
            self.hits_to_cold[mcls] += 1

    def count_hit(self, ItemView item not None) -> None:
        """Count a get hit on `item`, found and not yet bumped (see the pure twin)."""
        self._count_hit(rec_at(self.a.base, self._ref_of(item)))

    def read(self, bytes key not None):
        """A get/gets/mg of one key: the live item, its hit counted, then bumped."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        self._count_hit(rec_at(self.a.base, ref))
        self._bump(ref)
        return self._view(ref)

    def get_reply(self, bytes key not None):
        """The whole reply to `get <key>`, written from the record (see the pure twin)."""
        cdef uint32_t ref
        cdef Rec* r
        self.hot[_GET_CMDS] += 1
        ref = self._find(key)
        if ref == 0:
            self.hot[_GET_MISSES] += 1
            return _END
        r = rec_at(self.a.base, ref)
        self._count_hit(r)
        self._bump(ref)
        return _value_reply(r)

    def get_many_reply(self, list keys not None, bint with_cas, Py_ssize_t most):
        """The whole reply to `get`/`gets` of `keys`, or None when it could be longer than
        `most` (see the pure twin). Hits are found, counted and bumped key by key, as the
        request loop does, and kept as refs: nothing here allocates or frees a record, so
        they stay valid until the reply is written in one allocation."""
        cdef Py_ssize_t count = len(keys), size = PyBytes_GET_SIZE(_END), i
        cdef long long misses = 0
        cdef uint32_t ref
        cdef uint32_t* refs
        cdef Rec* r
        cdef bytes key, out
        cdef char* w
        if self.reply_bound(keys) > most:
            return None
        refs = <uint32_t*>PyMem_Malloc((count + 1) * sizeof(uint32_t))
        if refs == NULL:
            raise MemoryError()
        try:
            for i in range(count):
                key = keys[i]
                ref = refs[i] = self._find(key)
                if ref == 0:
                    misses += 1
                    continue
                r = rec_at(self.a.base, ref)
                self._count_hit(r)
                self._bump(ref)
                size += _block_size(r, with_cas)
            out = PyBytes_FromStringAndSize(NULL, size)
            w = PyBytes_AS_STRING(out)
            for i in range(count):
                if refs[i]:
                    w = _write_block(w, rec_at(self.a.base, refs[i]), with_cas)
            memcpy(w, PyBytes_AS_STRING(_END), PyBytes_GET_SIZE(_END))
        finally:
            PyMem_Free(refs)
        self.hot[_GET_CMDS] += count
        self.hot[_GET_MISSES] += misses
        return out

    cpdef Py_ssize_t reply_bound(self, list keys) except -1:
        """At least the length of a get/gets reply to `keys`, nothing read (see the pure
        twin: the same figure)."""
        cdef Py_ssize_t bound = PyBytes_GET_SIZE(_END)
        cdef uint32_t ref
        cdef Rec* r
        cdef bytes key
        for key in keys:
            ref = self.a.lookup(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            if ref:
                r = rec_at(self.a.base, ref)
                bound += r.nkey + r.nvalue + _BLOCK_SLACK
        return bound

    def touch(self, bytes key not None, int64_t exptime):
        """gat/touch: read the item and give it a new (already converted) exptime."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        self._bump(ref)
        rec_at(self.a.base, ref).exptime = <uint32_t>exptime
        return self._view(ref)

    def meta_read(self, bytes key not None, exptime, bint bump):
        """mg's lookup, counted, touched and bumped in one call (see the pure twin)."""
        cdef uint32_t ref = self._find(key)
        cdef Rec* r
        if ref == 0:
            return None
        r = rec_at(self.a.base, ref)
        if exptime is None:
            self.hot[_GET_CMDS] += 1
            self._count_hit(r)
        else:
            r.exptime = <uint32_t>exptime
            stats = self.stats
            stats.touch_cmds += 1
            stats.slab.touch_hits[self._mclsid(r.nkey, r.flags, r.nvalue)] += 1
        if bump:
            self._bump(ref)
        return self._view(ref)

    def set_exptime(self, ItemView item not None, int64_t exptime) -> None:
        """A new (converted) exptime for a linked item."""
        cdef Rec* r = rec_at(self.a.base, self._ref_of(item))
        r.exptime = <uint32_t>exptime
        self._sync(item, r)

    def grant_token(self, ItemView item not None) -> None:
        """mg W: this client won the recache token; others see Z until it is stored."""
        cdef Rec* r = rec_at(self.a.base, self._ref_of(item))
        r.bits |= TOKEN_SENT
        self._sync(item, r)

    # -- mutations -----------------------------------------------------------------------
    def store(self, mode, bytes key not None, bytes value not None, uint32_t flags,
              int64_t exptime,
              uint64_t cas=0, *, bint set_stale=False, bint key_binary=False):
        """do_store_item (see the pure twin). Returns (Outcome, the stored item or None)."""
        cdef uint32_t old = self._find(key)
        cdef uint8_t bits = KEY_BINARY if key_binary else 0
        cdef Rec* r
        cdef uint64_t old_cas
        cdef int mcls
        stats = self.stats
        if old == 0:
            if mode is _CAS:
                stats.cas_misses += 1
                return Outcome.NOT_FOUND, None
            if mode is _SET or mode is _ADD:
                return self._store_new(key, value, flags, exptime, bits, 0)
            return Outcome.NOT_STORED, None
        r = rec_at(self.a.base, old)
        old_cas = r.cas
        if mode is _ADD:
            self._refresh(old)
            return Outcome.NOT_STORED, None
        if mode is _CAS:
            mcls = self._mclsid(r.nkey, r.flags, r.nvalue)
            if not self.use_cas:  # -C: memcached answers EXISTS to every cas
                stats.slab.cas_badval[mcls] += 1
                return Outcome.EXISTS, None
            if cas == old_cas:
                stats.slab.cas_hits[mcls] += 1
            elif set_stale and cas and cas < old_cas:
                exptime = r.exptime
                bits |= STALE | (r.bits & TOKEN_SENT)
                stats.slab.cas_hits[mcls] += 1
            else:
                stats.slab.cas_badval[mcls] += 1
                return Outcome.EXISTS, None
        elif mode is _APPEND or mode is _PREPEND:
            if cas and cas != old_cas:
                return Outcome.EXISTS, None
            current = PyBytes_FromStringAndSize(key_of(r) + r.nkey, r.nvalue)
            value = current + value if mode is _APPEND else value + current
            flags, exptime = r.flags, r.exptime
            if not self.slabs.fits(len(key), flags, len(value)):
                return Outcome.NOT_STORED, None
        return self._store_new(key, value, flags, exptime, bits, old)

    cdef tuple _store_new(self, bytes key, bytes value, uint32_t flags, int64_t exptime,
                          uint8_t bits, uint32_t old):
        cdef uint32_t ref = self._insert(key, value, flags, exptime, bits, old)
        if ref == 0:
            return Outcome.NO_MEMORY, None
        return Outcome.STORED, self._view(ref)

    def store_command(self, mode, bytes key not None, bytes value not None, uint32_t flags,
                      int64_t exptime, uint64_t cas=0):
        """A classic storage command, counted (see the pure twin)."""
        cdef uint32_t ref
        self.set_cmds[self._mclsid(len(key), flags, len(value))] += 1
        if mode is _SET:  # the common case, without a view of the new item
            ref = self._insert(key, value, flags, exptime, 0, self._find(key))
            outcome = _STORED if ref else _NO_MEMORY
        else:
            outcome = self.store(mode, key, value, flags, exptime, cas)[0]
        if outcome is _NO_MEMORY:
            self.stats.store_no_memory += 1
        return outcome

    def delete(self, bytes key not None):
        """Remove a live item; returns it (None if there was none)."""
        cdef uint32_t ref = self._find(key)
        if ref == 0:
            return None
        view = self._view(ref)
        self._unlink(ref)
        return view

    def remove(self, ItemView item not None) -> None:
        """Unlink an item the caller holds (it must still be linked)."""
        self._unlink(self._ref_of(item))

    def invalidate(self, ItemView item not None, exptime) -> None:
        """md with I: mark stale, new CAS, token up for grabs again, optionally a new TTL."""
        cdef Rec* r = rec_at(self.a.base, self._ref_of(item))
        if exptime is not None:
            r.exptime = <uint32_t>exptime
        r.bits = (r.bits & ~TOKEN_SENT) | STALE
        r.cas = self._stamp()
        self._sync(item, r)

    def vivify(self, bytes key not None, int64_t exptime, bint key_binary):
        """mg N on a miss: an empty placeholder item (None if it cannot fit)."""
        cdef uint32_t ref = self._insert(key, b"", 0, exptime,
                                         KEY_BINARY if key_binary else 0, 0)
        return self._view(ref) if ref else None

    def delta(self, bytes key not None, bint incr, delta, uint64_t cas=0, pinned=()):
        """do_add_delta (see the pure twin): in place unless the item is `pinned`. The
        common value (up to 19 digits, then nothing or whitespace) is read and rewritten
        in C; any other value takes the pure twin's reader, parse_u64_prefix."""
        return self._delta_of(key, incr, delta, cas, pinned, True)

    def delta_number(self, bytes key not None, bint incr, delta, pinned=()):
        """`delta` without a view of the item (see the pure twin)."""
        return self._delta_of(key, incr, delta, 0, pinned, False)

    cdef object _delta_of(self, bytes key, bint incr, delta, uint64_t cas, pinned,
                          bint want_item):
        cdef uint32_t ref = self._find(key)
        cdef Rec* r
        cdef int64_t ntotal
        cdef uint64_t number, d
        cdef char digits[24]
        cdef int width
        cdef char* value
        if ref == 0:
            return _delta(_NOT_FOUND, 0, None, False)
        r = rec_at(self.a.base, ref)
        ntotal = self.ntotal_fixed + r.nkey + r.nvalue + (4 if r.flags else 0)
        if r.nvalue == 0 or ntotal > self.slabs.chunk_max:
            return _delta(_NON_NUMERIC, 0, None, False)
        if cas and cas != r.cas:
            return _delta(_EXISTS, 0, None, False)
        value = key_of(r) + r.nkey
        if not _plain_number(value, r.nvalue, &number) or not 0 <= delta <= U64_MASK:
            slow = self._delta_slow(key, ref, incr, delta, pinned)
            return slow if want_item else _delta(slow[0], slow[1], None, slow[3])
        d = delta
        if incr:
            number += d  # wraps at 2**64, as memcached's does
        else:
            number = number - d if d <= number else 0
        if incr:
            self.incr_hits[self._mclsid(r.nkey, r.flags, r.nvalue)] += 1
        else:
            self.decr_hits[self._mclsid(r.nkey, r.flags, r.nvalue)] += 1
        width = _decimal(digits, number) - 1  # digits[0] is _decimal's leading space
        if width <= r.nvalue and (not pinned or self._view(ref) not in pinned):
            memcpy(value, digits + 1, width)
            memset(value + width, 32, r.nvalue - width)
            r.cas = self._stamp()
            self._refresh(ref)
            return _delta(_STORED, number, self._view(ref) if want_item else None, True)
        outcome, new = self._store_new(key, PyBytes_FromStringAndSize(digits + 1, width),
                                       r.flags, r.exptime, 0, ref)
        return _delta(outcome, number, new if want_item else None, False)

    cdef object _delta_slow(self, bytes key, uint32_t ref, bint incr, delta, pinned):
        # the pure twin's steps, for values _plain_number does not read
        cdef Rec* r = rec_at(self.a.base, ref)
        view = self._view(ref)
        number = parse_u64_prefix(view.value)
        if number is None:
            return _delta(_NON_NUMERIC, 0, None, False)
        if incr:
            number = (number + delta) & U64_MASK
        else:
            number = number - delta if delta <= number else 0
        if incr:
            self.incr_hits[self._mclsid(r.nkey, r.flags, r.nvalue)] += 1
        else:
            self.decr_hits[self._mclsid(r.nkey, r.flags, r.nvalue)] += 1
        text = b"%d" % number
        if len(text) <= r.nvalue and view not in pinned:
            padded = text.ljust(r.nvalue)
            memcpy(key_of(r) + r.nkey, PyBytes_AS_STRING(padded), r.nvalue)
            r.cas = self._stamp()
            self._refresh(ref)
            return _delta(_STORED, number, self._view(ref), True)
        outcome, new = self._store_new(key, text, r.flags, r.exptime, 0, ref)
        return _delta(outcome, number, new, False)

    def flush(self, int64_t delay) -> None:
        """flush_all [delay]: everything stored before the deadline dies at the deadline."""
        deadline = self.expiry(delay) if delay > 0 else self.now
        self.oldest_live = deadline - 1
        if self.oldest_live <= self.now and self.use_cas:  # -C: by time alone
            self.oldest_cas = self.last_cas + 1
