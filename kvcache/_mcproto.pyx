# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""memcached text-protocol request parser, compiled: the hot path of kvcache/mcproto_pure.py.

Same API, requests (the reference module's own Store, Reject and Close classes) and framing
as the pure twin, which documents the rules; tests/test_kvcache_mcproto.py proves the two
agree on random streams cut at random points. What differs is only how:
- lines are found with memchr and split into tokens in C over the buffer's char*;
- the plainest storage line (`set k 0 0 5`, `cas k 0 0 5 7`, optional `noreply`: numbers
  of plain digits short enough that no wrapping or range rule applies) is read in C; every
  other storage line, `ms` included, goes to the reference's `storage_header`, so the
  memcached quirks (signs, whitespace, truncation, meta flags) are written once;
- the fast lane (`answer`: a read that is one plain get, multi-get, gets or set) is read in C
  over the read's char*; the storage does the rest (`Storage.get_reply`,
  `Storage.get_many_reply`, `Storage.store_command`).
One difference: `feed` takes `bytes` only (what asyncio hands a protocol); the pure twin
also takes other bytes-like objects.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

from kvcache.mcproto_pure import (
    CLASSIC_STORAGE,
    COLLECT_BLOCKS_OVER,
    LANE_LINE_BYTES,
    LANE_MAX_KEYS,
    LANE_REPLY_BYTES,
    LINE_WITHOUT_NEWLINE_BYTES,
    MAX_KEY_BYTES,
    MAX_LEADING_SPACES,
    MAX_MULTIGET_LINE_BYTES,
    READ_BUFFER_BYTES,
    Close,
    Reject,
    Store,
    storage_header,
)
from time import perf_counter_ns

from kvcache import replies
from kvcache._mcpipe import pipeline
from kvcache.latency import SAMPLE_MASK

cdef long long _SAMPLE_MASK = SAMPLE_MASK  # (a C constant on the per-read path)
from kvcache.mcpipe_pure import LANE_JOIN_BYTES
from kvcache.items import Mode, Outcome
from kvcache.slabs import item_ntotal, shared_classes
from kvcache.counters import HOT_COUNTERS

cdef Py_ssize_t _KEY_MAX = MAX_KEY_BYTES
cdef Py_ssize_t _NO_NEWLINE_MAX = LINE_WITHOUT_NEWLINE_BYTES
cdef Py_ssize_t _READ_BUFFER = READ_BUFFER_BYTES
cdef Py_ssize_t _LEADING_SPACES = MAX_LEADING_SPACES
cdef long long _COLLECT_OVER = COLLECT_BLOCKS_OVER
cdef Py_ssize_t _LANE_LINE = LANE_LINE_BYTES
cdef Py_ssize_t _LANE_KEYS = LANE_MAX_KEYS
cdef Py_ssize_t _LANE_REPLY = LANE_REPLY_BYTES
cdef Py_ssize_t _JOIN_MAX = LANE_JOIN_BYTES
# Digits a number may have for the C path: below every wrap and range limit it would meet
# (flags < 2**32, exptime and length < 2**31 - 2, CAS < 2**63).
cdef Py_ssize_t _SHORT_DIGITS = 9
cdef Py_ssize_t _CAS_DIGITS = 18


cdef long long _digits(bytes token, Py_ssize_t most):
    """The value of a token of 1..`most` ASCII digits, or -1 (the reference decides)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(token)
    cdef const char* p = PyBytes_AS_STRING(token)
    cdef long long value = 0
    cdef Py_ssize_t i
    if n == 0 or n > most:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        value = value * 10 + (p[i] - 48)
    return value


cdef list _tokenize(const char* p, Py_ssize_t n):
    """tokenize() of the reference: split on spaces, empty words dropped."""
    cdef list tokens = []
    cdef Py_ssize_t i = 0, start
    while i < n:
        if p[i] == 32:
            i += 1
            continue
        start = i
        while i < n and p[i] != 32:
            i += 1
        tokens.append(PyBytes_FromStringAndSize(p + start, i - start))
    return tokens


cdef object _plain_header(list tokens, long long* vlen):
    """A Store for the plainest classic storage line, or None for storage_header to read."""
    cdef Py_ssize_t n = len(tokens)
    cdef bytes name = tokens[0]
    cdef Py_ssize_t words = 6 if name == b"cas" else 5
    cdef long long flags, exptime, cas = 0
    cdef bint noreply = False
    if name == b"ms":
        return None
    if n == words + 1:
        if tokens[words] != b"noreply":
            return None
        noreply = True
    elif n != words:
        return None
    key = tokens[1]
    if PyBytes_GET_SIZE(key) > _KEY_MAX:
        return None
    flags = _digits(tokens[2], _SHORT_DIGITS)
    exptime = _digits(tokens[3], _SHORT_DIGITS)
    vlen[0] = _digits(tokens[4], _SHORT_DIGITS)
    if words == 6:
        cas = _digits(tokens[5], _CAS_DIGITS)
    if flags < 0 or exptime < 0 or vlen[0] < 0 or cas < 0:
        return None
    return Store(name, key, flags, exptime, cas, noreply)


cdef class RequestParser:
    """Turns one connection's byte stream into requests (see kvcache/mcproto_pure.py)."""

    cdef public object slabs
    cdef public long long max_multiget_line
    cdef public bint closed
    cdef readonly bint use_cas  # False (-C): items carry no CAS, 8 bytes more fit
    # item_ntotal of an empty key and value, without and with client flags; -I
    cdef long long _ntotal_plain, _ntotal_flags, _item_size_max
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef long long _swallow  # bytes still to discard
    cdef object _pending  # a Store waiting for its block
    cdef long long _need  # size of that block, CRLF included
    cdef list _parts  # pieces of a big block still incomplete (None otherwise)
    cdef long long _parts_len
    cdef readonly long long lane_value_max  # the fast lane's sets: values surely fitting

    def __init__(self, item_size_max, max_multiget_line=MAX_MULTIGET_LINE_BYTES,
                 bint use_cas=True):
        self.slabs = shared_classes(item_size_max)
        self.use_cas = use_cas
        self._ntotal_plain = item_ntotal(0, 0, 0, use_cas)
        self._ntotal_flags = item_ntotal(0, 1, 0, use_cas)
        self._item_size_max = item_size_max
        self.lane_value_max = item_size_max - item_ntotal(_KEY_MAX, 1, 0)
        self.max_multiget_line = max_multiget_line
        self._buf = b""
        self._pos = 0
        self._swallow = 0
        self._pending = None
        self._need = 0
        self._parts = None
        self._parts_len = 0
        self.closed = False

    def feed(self, bytes data):
        """Add bytes received from the client."""
        cdef long long taken
        if self._swallow and self._pos == PyBytes_GET_SIZE(self._buf):
            taken = min(self._swallow, PyBytes_GET_SIZE(data))
            self._swallow -= taken
            data = data[taken:]
        if self._parts is not None:
            # A big data block arriving in pieces: collect them, join once (not per piece).
            self._parts.append(data)
            self._parts_len += PyBytes_GET_SIZE(data)
            if self._parts_len >= self._need:
                self._buf = b"".join(self._parts)
                self._pos = 0
                self._parts = None
            return
        if self._pos == PyBytes_GET_SIZE(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0
        if self._pending is not None and self._need > _COLLECT_OVER:
            if PyBytes_GET_SIZE(self._buf) < self._need:
                self._parts = [self._buf]
                self._parts_len = PyBytes_GET_SIZE(self._buf)
                self._buf = b""

    def buffered(self):
        """Bytes received but not yet turned into requests."""
        cdef long long collected = self._parts_len if self._parts is not None else 0
        return PyBytes_GET_SIZE(self._buf) - self._pos + collected

    def next_request(self):
        """The next complete request, or None until more bytes arrive."""
        cdef const char* p
        cdef const char* hit
        cdef Py_ssize_t n, pos, end
        cdef long long taken
        cdef list tokens
        while not self.closed:
            n = PyBytes_GET_SIZE(self._buf)
            if self._swallow:
                taken = min(self._swallow, n - self._pos)
                self._swallow -= taken
                self._pos += taken
                if self._swallow:
                    return None
            if self._pending is not None:
                return self._take_block()
            pos = self._pos
            p = PyBytes_AS_STRING(self._buf)
            hit = <const char*>memchr(p + pos, 10, n - pos)
            if hit == NULL:
                return self._check_partial_line()
            end = hit - p
            if end - pos >= _READ_BUFFER and not self._multiget_at(pos):
                return self._close("command line longer than the read buffer")
            self._pos = end + 1
            if end - pos > 1 and p[end - 1] == 13:
                end -= 1
            hit = <const char*>memchr(p + pos, 0, end - pos)
            if hit != NULL:
                end = hit - p
            tokens = _tokenize(p + pos, end - pos)
            if tokens and (tokens[0] in CLASSIC_STORAGE or tokens[0] == b"ms"):
                return self._storage(tokens)
            return tokens
        return None

    # -- framing -----------------------------------------------------------------------
    cdef object _check_partial_line(self):
        cdef Py_ssize_t pending = PyBytes_GET_SIZE(self._buf) - self._pos
        if pending <= _NO_NEWLINE_MAX:
            return None
        if not self._multiget_at(self._pos):
            return self._close("no newline in the first 2048 bytes of a command")
        if pending > self.max_multiget_line:
            return self._close("multi-get line over the limit")
        return None

    cdef bint _multiget_at(self, Py_ssize_t pos):
        cdef const char* p = PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t limit = min(PyBytes_GET_SIZE(self._buf), pos + _LEADING_SPACES + 8)
        cdef Py_ssize_t i = pos
        while i < limit and p[i] == 32:
            i += 1
        if i - pos > _LEADING_SPACES:
            return False
        if limit - i >= 4 and memcmp(p + i, b"get ", 4) == 0:
            return True
        return limit - i >= 5 and memcmp(p + i, b"gets ", 5) == 0

    cdef object _close(self, str reason):
        self.closed = True
        self._buf = b""
        self._pos = 0
        return Close(reason)

    cdef object _storage(self, list tokens):
        cdef long long vlen = 0
        request = _plain_header(tokens, &vlen)
        if request is None:
            request, size = storage_header(tokens)
            if type(request) is Reject:
                self._swallow = size
                return request
            vlen = size
        return self._expect_block(request, vlen)

    cdef object _expect_block(self, object request, long long vlen):
        """Wait for `vlen` bytes and CRLF, or swallow them if the item cannot be stored."""
        meta = request.meta
        nflags = meta.client_flags if meta is not None else request.flags
        request.size = vlen
        # SlabClasses.fits (the pure twin's call), in C
        if ((self._ntotal_flags if nflags else self._ntotal_plain) + len(request.key) + vlen
                > self._item_size_max):
            request.too_large = True
            self._swallow = vlen + 2
            return request
        self._pending = request
        self._need = vlen + 2
        return self._take_block()

    cdef object _take_block(self):
        request = self._pending
        cdef Py_ssize_t pos = self._pos
        cdef long long need = self._need
        cdef const char* p = PyBytes_AS_STRING(self._buf)
        if PyBytes_GET_SIZE(self._buf) - pos < need:
            return None
        cdef Py_ssize_t end = pos + need
        if p[end - 2] == 13 and p[end - 1] == 10:
            request.data = PyBytes_FromStringAndSize(p + pos, need - 2)
        self._pos = end
        self._pending = None
        return request


# -- the fast lane: one plain get, gets or set per read (see kvcache/mcproto_pure.py) ----------
cdef bytes _STORED = replies.STORED
cdef bytes _NO_MEMORY = replies.line(replies.OUT_OF_MEMORY_STORING)
cdef Py_ssize_t _BYTES_READ = HOT_COUNTERS.index("bytes_read")
cdef Py_ssize_t _BYTES_WRITTEN = HOT_COUNTERS.index("bytes_written")
cdef object _SET = Mode.SET, _OUTCOME_STORED = Outcome.STORED  # a set stores or finds no memory


cdef inline bint _idle(RequestParser parser):
    """Nothing buffered, nothing pending, not closed: a read may bypass the parser."""
    return not (parser.closed or parser._pos != PyBytes_GET_SIZE(parser._buf)
                or parser._swallow or parser._pending is not None
                or parser._parts is not None)


def answer(RequestParser parser not None, bytes data not None, storage):
    """The reply if `data` is exactly one plain get, gets or set on an idle parser, else
    None."""
    return _answer(parser, data, storage.get_reply, storage.get_many_reply,
                   storage.store_command, storage.expiry)


cdef class Lane:
    """One connection's read callback, fast lane first (see the pure twin)."""

    cdef public bint open
    cdef public long long last_command
    cdef public object latency  # where timed reads go (kvcache/latency.py), or None
    cdef public long long reads
    cdef RequestParser parser
    cdef object storage, settings, transport, fallback
    cdef set pinned
    # bound once: a method looked up per read is a measurable part of a get
    cdef object get_reply, get_many_reply, store_command, expiry, write, is_closing
    cdef long long[::1] hot  # CacheStats.hot: bytes_read and bytes_written, added in C

    def __init__(self, RequestParser parser not None, storage, settings, set pinned not None,
                 fallback):
        self.parser = parser
        self.storage = storage
        self.get_reply = storage.get_reply
        self.get_many_reply = storage.get_many_reply
        self.store_command = storage.store_command
        self.expiry = storage.expiry
        self.hot = storage.stats.hot
        self.settings = settings
        self.pinned = pinned
        self.fallback = fallback
        self.last_command = storage.now
        self.open = False

    def attach(self, transport):
        """The connection is admitted: replies go to `transport`, the lane may answer."""
        self.transport = transport
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.open = True

    def release(self):
        """The connection is gone: drop the transport and the fallback (no cycles)."""
        self.open = False
        self.transport = self.write = self.is_closing = None
        self.fallback = None

    def data_received(self, bytes data not None):
        """`_receive`, one read in 8 timed into `latency` (see the pure twin)."""
        cdef long long started
        self.reads += 1
        if self.latency is None or self.reads & _SAMPLE_MASK or not _idle(self.parser):
            self._receive(data)
            return
        started = perf_counter_ns()
        self._receive(data)
        self.latency.record(data, perf_counter_ns() - started)

    cdef _receive(self, bytes data):
        """Answer `data` if it is one plain get, gets or set and the lane is open, or the
        simple commands it begins with (kvcache/_mcpipe.pyx); hand the rest, or all of it,
        to the fallback (the connection's request loop)."""
        if self.open and self.settings.verbose < 2:
            reply = _answer(self.parser, data, self.get_reply, self.get_many_reply,
                            self.store_command, self.expiry)
            if reply is not None:
                self.hot[_BYTES_READ] += PyBytes_GET_SIZE(data)
                self.last_command = self.storage.now
                self.send(reply)
                return
            done = pipeline(data, self.storage, self.pinned, self.parser.lane_value_max,
                            self.settings.reqs_per_event) if _idle(self.parser) else None
            if done is not None:
                parts, size, consumed = done
                self.hot[_BYTES_READ] += consumed
                self.last_command = self.storage.now
                if size > _JOIN_MAX:
                    self.send_parts(parts, size)
                elif size:
                    self.send(b"".join(parts))
                if consumed == PyBytes_GET_SIZE(data):
                    return
                data = data[consumed:]
        if self.fallback is not None:
            self.fallback(data)

    cpdef send(self, bytes data):
        """One write: a write point (the pinned items are released), counted in
        bytes_written; nothing once the transport is closing."""
        if self.transport is None or self.is_closing():
            return
        if len(self.pinned):
            self.pinned.clear()
        self.hot[_BYTES_WRITTEN] += PyBytes_GET_SIZE(data)
        self.write(data)

    cpdef send_parts(self, list parts, Py_ssize_t size):
        """`send` of the pieces of one write, not joined (see the pure twin)."""
        if self.transport is None or self.is_closing():
            return
        if len(self.pinned):
            self.pinned.clear()
        self.hot[_BYTES_WRITTEN] += size
        self.transport.writelines(parts)


cdef object _answer(RequestParser parser, bytes data, get_reply, get_many_reply,
                    store_command, expiry):
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n < 7 or not _idle(parser):
        return None
    if memcmp(p, b"get ", 4) == 0:
        return _answer_get(p, n, 4, False, get_reply, get_many_reply)
    if memcmp(p, b"gets ", 5) == 0:
        return _answer_get(p, n, 5, True, get_reply, get_many_reply)
    if memcmp(p, b"set ", 4) == 0:
        return _answer_set(parser, p, n, store_command, expiry)
    return None


cdef object _answer_get(const char* p, Py_ssize_t n, Py_ssize_t start, bint with_cas,
                        get_reply, get_many_reply):
    """A get of one key (get_reply) or a multi-get or gets (get_many_reply) whose keys
    start at p[start]."""
    cdef Py_ssize_t nline = n - 2 - start
    cdef Py_ssize_t i
    cdef list keys
    if n > _LANE_LINE or p[n - 2] != 13 or p[n - 1] != 10:
        return None
    if memchr(p + start, 10, nline) != NULL or memchr(p + start, 0, nline) != NULL:
        return None
    if not with_cas and memchr(p + start, 32, nline) == NULL:
        if nline > _KEY_MAX:
            return None
        return get_reply(PyBytes_FromStringAndSize(p + start, nline))
    keys = _tokenize(p + start, nline)
    if not keys or len(keys) > _LANE_KEYS:
        return None
    for i in range(len(keys)):
        if PyBytes_GET_SIZE(keys[i]) > _KEY_MAX:
            return None
    return get_many_reply(keys, with_cas, _LANE_REPLY)


cdef long long _field(const char* p, Py_ssize_t* pos, Py_ssize_t end, char stop):
    """The 1.._SHORT_DIGITS digits at *pos, ended by `stop` (or by `end` when stop is 0);
    *pos moves past the stop. -1 when the field is anything else."""
    cdef Py_ssize_t i = pos[0]
    cdef long long value = 0
    while i < end and p[i] >= 48 and p[i] <= 57 and i - pos[0] < _SHORT_DIGITS:
        value = value * 10 + (p[i] - 48)
        i += 1
    if i == pos[0] or (stop and (i >= end or p[i] != stop)) or (not stop and i != end):
        return -1
    pos[0] = i + 1
    return value


cdef object _answer_set(RequestParser parser, const char* p, Py_ssize_t n, store_command,
                        expiry):
    cdef const char* hit = <const char*>memchr(p, 10, n)
    cdef Py_ssize_t head, pos, nkey
    cdef long long flags, exptime, vlen
    if hit == NULL:
        return None
    head = hit - p - 1  # where the header's CR must be
    if head < 4 or p[head] != 13 or memchr(p, 0, head) != NULL:
        return None
    hit = <const char*>memchr(p + 4, 32, head - 4)
    if hit == NULL:
        return None
    nkey = hit - p - 4
    pos = 4 + nkey + 1
    if nkey == 0 or nkey > _KEY_MAX:
        return None
    flags = _field(p, &pos, head, 32)
    exptime = _field(p, &pos, head, 32) if flags >= 0 else -1
    vlen = _field(p, &pos, head, 0) if exptime >= 0 else -1
    if vlen < 0 or vlen > parser.lane_value_max or n != head + 2 + vlen + 2:
        return None
    if p[n - 2] != 13 or p[n - 1] != 10:
        return None
    outcome = store_command(_SET, PyBytes_FromStringAndSize(p + 4, nkey),
                            PyBytes_FromStringAndSize(p + head + 2, vlen), flags,
                            expiry(exptime))
    return _STORED if outcome is _OUTCOME_STORED else _NO_MEMORY
