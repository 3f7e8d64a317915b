# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The pipeline lane's meta replies (mg, ms, md, ma), compiled: part of kvcache/_mcpipe.pyx,
which parses the lines and calls these; their rules are the pure twin's,
kvcache/mcpipe_pure.py (meta_get, meta_set, meta_delete, meta_arith). Each reply's header is
written into a C buffer of HEADER_BYTES.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from kvcache import replies
from kvcache._kvlru cimport ItemView
from kvcache._mcwords cimport Op, _decimal, _next_word, _put, _put_number
from kvcache.counters import HOT_COUNTERS
from kvcache.items import CAS_SHIFT, KEY_BINARY, STALE, TOKEN_SENT, Outcome
from kvcache.metaflags import encode_key

# A meta reply's header: code, flags with their numbers, an opaque, the key, the states.
cdef enum:
    HEADER_BYTES = 1024

cdef object _STORED = Outcome.STORED
cdef object _NON_NUMERIC_OUTCOME = Outcome.NON_NUMERIC, _NO_MEMORY_OUTCOME = Outcome.NO_MEMORY
cdef bytes _OUT_OF_MEMORY = replies.line(replies.OUT_OF_MEMORY)
cdef bytes _NON_NUMERIC = replies.line(replies.NON_NUMERIC)
cdef bytes _EMPTY = b""
cdef uint64_t _KEY_BINARY = KEY_BINARY, _STALE = STALE, _TOKEN_SENT = TOKEN_SENT
cdef int _CAS_SHIFT = CAS_SHIFT
cdef Py_ssize_t _GET_CMDS = HOT_COUNTERS.index("get_cmds")
cdef Py_ssize_t _GET_MISSES = HOT_COUNTERS.index("get_misses")


cdef bytes _meta_echo(const char* p, Op* op, const char* code, Py_ssize_t ncode, bytes key):
    """`code` and the O and k flags in request order, CRLF (an ms or a miss)."""
    cdef char w[HEADER_BYTES]
    cdef Py_ssize_t at = _put(w, 0, code, ncode), i = op.args, start
    while True:
        start = _next_word(p, &i, op.eol)
        if start < 0:
            break
        if p[start] == 79:  # O
            w[at] = 32
            at = _put(w, at + 1, p + start, i - start)
        elif p[start] == 107:  # k
            at = _put(w, at, b" k", 2)
            at = _put(w, at, p + op.key, op.nkey)
    at = _put(w, at, b"\r\n", 2)
    return PyBytes_FromStringAndSize(w, at)


cdef object _meta_get(const char* p, Op* op, bytes key, storage, set pinned,
                      long long[::1] hot):
    item = storage.meta_read(key, storage.expiry(op.n2) if op.has_ttl else None,
                             not _has_letter(p, op, 117))  # u
    if item is None:
        hot[_GET_MISSES] += 1
        hot[_GET_CMDS] += 1
        return _EMPTY if op.noreply else _meta_echo(p, op, b"EN", 2, key)
    return _meta_hit(p, op, item, storage, pinned)


cdef bint _has_letter(const char* p, Op* op, char letter) noexcept:
    """Whether the flags hold the one-letter flag `letter`."""
    cdef Py_ssize_t i = op.args, start
    while True:
        start = _next_word(p, &i, op.eol)
        if start < 0:
            return False
        if i - start == 1 and p[start] == letter:
            return True


cdef bytes _meta_hit(const char* p, Op* op, item, storage, set pinned):
    cdef char w[HEADER_BYTES]
    cdef Py_ssize_t at, nvalue
    cdef bint want_value = _has_letter(p, op, 118)  # v
    cdef uint64_t casbits, flags
    cdef long long exptime
    cdef bytes value, out
    cdef char* o
    cdef ItemView view
    if type(item) is ItemView:  # the compiled storage's: its fields read in C
        view = <ItemView>item
        value, flags, exptime, casbits = view.value, view.flags, view.exptime, view.casbits
    else:
        value, flags, exptime, casbits = item.value, item.flags, item.exptime, item.casbits
    nvalue = PyBytes_GET_SIZE(value)
    at = _put(w, 0, b"VA ", 3) if want_value else _put(w, 0, b"HD", 2)
    if want_value:
        at += _decimal(w + at, nvalue)
    at = _meta_fields(p, op, storage, w, at, nvalue, flags, exptime, casbits, item)
    if casbits & _TOKEN_SENT:
        at = _put(w, at, b" Z", 2)
    if casbits & _STALE:
        at = _put(w, at, b" X", 2)
        if not casbits & _TOKEN_SENT:
            at = _put(w, at, b" W", 2)
            storage.grant_token(item)
    at = _put(w, at, b"\r\n", 2)
    pinned.add(item)
    if not want_value:
        return PyBytes_FromStringAndSize(w, at)
    out = PyBytes_FromStringAndSize(NULL, at + nvalue + 2)
    o = PyBytes_AS_STRING(out)
    memcpy(o, w, at)
    memcpy(o + at, PyBytes_AS_STRING(value), nvalue)
    memcpy(o + at + nvalue, b"\r\n", 2)
    return out


cdef Py_ssize_t _meta_fields(const char* p, Op* op, storage, char* w, Py_ssize_t at,
                             Py_ssize_t nvalue, uint64_t flags, long long exptime,
                             uint64_t casbits, item) except -1:
    """The flags of an mg hit in request order (its T was applied by meta_read)."""
    cdef Py_ssize_t i = op.args, start
    cdef char letter
    cdef bytes shown
    while True:
        start = _next_word(p, &i, op.eol)
        if start < 0:
            return at
        letter = p[start]
        if letter == 115:  # s
            at = _put_number(w, at, 115, nvalue)
        elif letter == 116:  # t
            if not exptime:
                at = _put(w, at, b" t-1", 4)
            else:
                at = _put_number(w, at, 116, <uint64_t>((exptime - storage.now) & 0xFFFFFFFF))
        elif letter == 99:  # c
            at = _put_number(w, at, 99, casbits >> _CAS_SHIFT)
        elif letter == 102:  # f
            at = _put_number(w, at, 102, flags)
        elif letter == 79:  # O
            w[at] = 32
            at = _put(w, at + 1, p + start, i - start)
        elif letter == 107:  # k
            at = _put(w, at, b" k", 2)
            if casbits & _KEY_BINARY:
                shown = encode_key(item.key) + b" b"
            else:
                shown = item.key
            at = _put(w, at, PyBytes_AS_STRING(shown), PyBytes_GET_SIZE(shown))


cdef bytes _meta_delete(const char* p, Op* op, bytes key, storage):
    item = storage.delete(key)
    stats = storage.stats
    if item is None:
        stats.delete_misses += 1
        return _meta_echo(p, op, b"NF", 2, key)
    stats.slab.delete_hits[storage.clsid_of(item)] += 1
    return _EMPTY if op.noreply else _meta_echo(p, op, b"HD", 2, key)


cdef bytes _meta_arith(const char* p, Op* op, bytes key, storage, set pinned):
    cdef char w[HEADER_BYTES]
    cdef char text[24]
    cdef int ntext
    cdef Py_ssize_t at, i = op.args, start
    cdef bint want_value = _has_letter(p, op, 118)  # v
    cdef bint incr = not op.decr
    delta = storage.delta(key, incr, op.n1, 0, pinned)
    outcome = delta[0]
    if outcome is _NON_NUMERIC_OUTCOME:
        return _NON_NUMERIC
    if outcome is _NO_MEMORY_OUTCOME:
        return _OUT_OF_MEMORY
    if outcome is not _STORED:  # NOT_FOUND
        stats = storage.stats
        if incr:
            stats.incr_misses += 1
        else:
            stats.decr_misses += 1
        return _meta_echo(p, op, b"NF", 2, key)
    if op.noreply:
        return _EMPTY
    item = delta[2]
    ntext = _decimal(text, <uint64_t>delta[1])
    if want_value:
        at = _put(w, 0, b"VA ", 3)
        at += _decimal(w + at, ntext)
    else:
        at = _put(w, 0, b"HD", 2)
    while True:
        start = _next_word(p, &i, op.eol)
        if start < 0:
            break
        if p[start] == 99:  # c
            at = _put_number(w, at, 99, <uint64_t>item.cas)
        elif p[start] == 116:  # t
            if not item.exptime:
                at = _put(w, at, b" t-1", 4)
            else:
                at = _put_number(w, at, 116,
                                 <uint64_t>((item.exptime - storage.now) & 0xFFFFFFFF))
        elif p[start] == 79:  # O
            w[at] = 32
            at = _put(w, at + 1, p + start, i - start)
        elif p[start] == 107:  # k
            at = _put(w, at, b" k", 2)
            at = _put(w, at, p + op.key, op.nkey)
    if want_value:
        at = _put(w, at, b"\r\n", 2)
        at = _put(w, at, text, ntext)
    at = _put(w, at, b"\r\n", 2)
    return PyBytes_FromStringAndSize(w, at)
