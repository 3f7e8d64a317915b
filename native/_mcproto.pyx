# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""memcached text-protocol request parser, compiled: the hot path of native/mcproto_pure.py.

Same API, requests (the reference module's own Store, Reject and Close classes) and framing
as the pure twin, which documents the rules; tests/test_native_mcproto.py proves the two
agree on random streams cut at random points. What differs is only how:
- lines are found with memchr and split into tokens in C over the buffer's char*;
- the plainest storage line (`set k 0 0 5`, `cas k 0 0 5 7`, optional `noreply`: numbers
  of plain digits short enough that no wrapping or range rule applies) is read in C; every
  other storage line, `ms` included, goes to the reference's `storage_header`, so the
  memcached quirks (signs, whitespace, truncation, meta flags) are written once;
- the fast lane's `VALUE` reply is written into one bytes object with memcpy.
One difference: `feed` takes `bytes` only (what asyncio hands a protocol); the pure twin
also takes other bytes-like objects.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy

from native.mcproto_pure import (
    CLASSIC_STORAGE,
    COLLECT_BLOCKS_OVER,
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
from kvcache.slabs import SlabClasses

cdef Py_ssize_t _KEY_MAX = MAX_KEY_BYTES
cdef Py_ssize_t _NO_NEWLINE_MAX = LINE_WITHOUT_NEWLINE_BYTES
cdef Py_ssize_t _READ_BUFFER = READ_BUFFER_BYTES
cdef Py_ssize_t _LEADING_SPACES = MAX_LEADING_SPACES
cdef long long _COLLECT_OVER = COLLECT_BLOCKS_OVER
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
    """Turns one connection's byte stream into requests (see native/mcproto_pure.py)."""

    cdef public object slabs
    cdef public long long max_multiget_line
    cdef public bint closed
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef long long _swallow  # bytes still to discard
    cdef object _pending  # a Store waiting for its block
    cdef long long _need  # size of that block, CRLF included
    cdef list _parts  # pieces of a big block still incomplete (None otherwise)
    cdef long long _parts_len

    def __init__(self, item_size_max, max_multiget_line=MAX_MULTIGET_LINE_BYTES):
        self.slabs = SlabClasses(item_size_max)
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
        if not self.slabs.fits(len(request.key), nflags, vlen):
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


# -- the fast lane: one plain get per read (see native/mcproto_pure.py) -----------------------
cdef bytes _END = b"END\r\n"


def get_reply(storage, stats, bytes key not None):
    """The reply to `get <key>`, counted as memcached counts a get (see the reference)."""
    stats.get_cmds += 1
    item = storage.get(key)
    if item is None:
        stats.get_misses += 1
        return _END
    stats.slab.get_hits[storage.clsid_of(item)] += 1
    return _value_reply(key, item.flags, item.value)


cdef bytes _value_reply(bytes key, unsigned long long flags, bytes value):
    """`VALUE <key> <flags> <bytes>\r\n<value>\r\nEND\r\n`, written in one allocation."""
    cdef char numbers[48]
    cdef Py_ssize_t nkey = PyBytes_GET_SIZE(key), nvalue = PyBytes_GET_SIZE(value)
    cdef int nnum = snprintf(numbers, sizeof(numbers), " %llu %lld\r\n", flags,
                             <long long>nvalue)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 6 + nkey + nnum + nvalue + 7)
    cdef char* w = PyBytes_AS_STRING(out)
    memcpy(w, b"VALUE ", 6)
    memcpy(w + 6, PyBytes_AS_STRING(key), nkey)
    w += 6 + nkey
    memcpy(w, numbers, nnum)
    memcpy(w + nnum, PyBytes_AS_STRING(value), nvalue)
    memcpy(w + nnum + nvalue, b"\r\nEND\r\n", 7)
    return out


def answer_get(RequestParser parser not None, bytes data not None, storage, stats):
    """The reply if `data` is exactly one `get <key>\\r\\n` on an idle parser, else None."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t nkey = n - 6
    if (parser.closed or parser._pos != PyBytes_GET_SIZE(parser._buf) or parser._swallow
            or parser._pending is not None or parser._parts is not None):
        return None
    if nkey <= 0 or nkey > _KEY_MAX or memcmp(p, b"get ", 4) != 0:
        return None
    if p[n - 2] != 13 or p[n - 1] != 10:
        return None
    if (memchr(p + 4, 32, nkey) != NULL or memchr(p + 4, 10, nkey) != NULL
            or memchr(p + 4, 0, nkey) != NULL):
        return None
    return get_reply(storage, stats, PyBytes_FromStringAndSize(p + 4, nkey))
