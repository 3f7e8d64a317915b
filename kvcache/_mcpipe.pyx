# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The pipeline lane, compiled: the twin of kvcache/mcpipe_pure.py, which documents the rules
(which commands, in which forms; the two passes; the write points). tests/test_kvcache_pipe.py
proves the two equal.

What differs is only how: lines are found with memchr and cut into words over the read's
char* without making a Python object, so the first pass (the check) allocates nothing; the
second pass reads each line again into an `Op` (kvcache/_mcwords.pxd) and calls the storage
as the pure twin does; the meta commands' replies are kvcache/_mcmeta.pyx's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, strchr

from kvcache import replies
from kvcache._mcmeta cimport _meta_arith, _meta_delete, _meta_echo, _meta_get
from kvcache._mcwords cimport Op, _decimal, _next_word
from kvcache.items import Mode, Outcome
from kvcache.mcpipe_pure import (
    DELTA_DIGITS,
    GET_LINE_BYTES,
    LANE_DIGITS,
    LANE_MAX_KEYS,
    LANE_REPLY_BYTES,
    LINE_BYTES,
    MAX_FLAG_TOKENS,
    MAX_KEY_BYTES,
)
from kvcache.metaflags import MAX_OPAQUE_BYTES

cdef enum:
    K_UNSUPPORTED = -2
    K_PARTIAL = -1
    K_GET = 0
    K_GETS = 1
    K_SET = 2
    K_INCR = 3
    K_DECR = 4
    K_MN = 5
    K_MG = 6
    K_MS = 7
    K_MD = 8
    K_MA = 9

cdef Py_ssize_t _KEY_MAX = MAX_KEY_BYTES
cdef Py_ssize_t _DIGITS = LANE_DIGITS
cdef Py_ssize_t _DELTA_DIGITS = DELTA_DIGITS
cdef Py_ssize_t _LINE = LINE_BYTES
cdef Py_ssize_t _GET_LINE = GET_LINE_BYTES
cdef Py_ssize_t _MAX_KEYS = LANE_MAX_KEYS
cdef Py_ssize_t _REPLY_MAX = LANE_REPLY_BYTES
cdef Py_ssize_t _FLAG_TOKENS = MAX_FLAG_TOKENS
cdef Py_ssize_t _OPAQUE = MAX_OPAQUE_BYTES
cdef object _SET = Mode.SET, _STORED = Outcome.STORED, _NOT_FOUND = Outcome.NOT_FOUND
cdef object _NON_NUMERIC_OUTCOME = Outcome.NON_NUMERIC
cdef bytes _STORED_LINE = replies.STORED
cdef bytes _NO_MEMORY = replies.line(replies.OUT_OF_MEMORY_STORING)
cdef bytes _OUT_OF_MEMORY = replies.line(replies.OUT_OF_MEMORY)
cdef bytes _NON_NUMERIC = replies.line(replies.NON_NUMERIC)
cdef bytes _NOT_FOUND_LINE = replies.NOT_FOUND
cdef bytes _MN = replies.META_NOOP_LINE
cdef bytes _EMPTY = b""


cdef long long _number(const char* p, Py_ssize_t n, Py_ssize_t most) noexcept:
    """1..`most` plain digits, or -1."""
    cdef long long value = 0
    cdef Py_ssize_t i
    if n <= 0 or n > most:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        value = value * 10 + (p[i] - 48)
    return value


cdef inline bint _same(const char* a, const char* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef int _meta_flags(const char* p, Py_ssize_t i, Py_ssize_t eol, const char* letters,
                     const char* valued, const char* modes, Op* op) noexcept:
    """Check the flags of an mg/ms/md/ma from p[i] (see the pure twin's _meta_flags and
    _parse_ma); 0 or -1. Sets op.noreply (q), op.has_ttl, op.n1 (F or D), op.n2 (T) and
    op.decr (an M of `modes`)."""
    cdef unsigned char seen[128]
    cdef Py_ssize_t start, n, count = 0
    cdef unsigned char letter
    cdef long long value
    for start in range(128):
        seen[start] = 0
    while True:
        start = _next_word(p, &i, eol)
        if start < 0:
            return 0
        count += 1
        n = i - start
        letter = <unsigned char>p[start]
        if count > _FLAG_TOKENS or letter >= 128 or seen[letter]:
            return -1
        if letter == 84 and seen[116]:  # a t before a T: the loop's
            return -1
        seen[letter] = 1
        if n == 1 and strchr(letters, letter) != NULL:
            if letter == 113:  # q
                op.noreply = True
            continue
        if letter == 77:  # M
            if n != 2 or strchr(modes, p[start + 1]) == NULL:
                return -1
            op.decr = p[start + 1] == 68 or p[start + 1] == 45  # D -
            continue
        if letter == 79 and strchr(valued, 79) != NULL:  # O
            if n > _OPAQUE:
                return -1
            continue
        if strchr(valued, letter) == NULL:
            return -1
        value = _number(p + start + 1, n - 1, _DIGITS)
        if value < 0:
            return -1
        if letter == 84:  # T
            op.has_ttl = True
            op.n2 = value
        elif letter == 70 or letter == 68:  # F D
            op.n1 = value


cdef int _block(Py_ssize_t n, const char* p, Op* op, int kind, long long value_max) noexcept:
    """A storage command's block at op.end: whole (kind), pending or bad."""
    cdef Py_ssize_t start = op.end
    if op.vlen < 0 or op.vlen > value_max:
        return K_UNSUPPORTED
    if n < start + op.vlen + 2:
        return K_PARTIAL
    if p[start + op.vlen] != 13 or p[start + op.vlen + 1] != 10:
        return K_UNSUPPORTED
    op.data = start
    op.end = start + op.vlen + 2
    return kind


cdef int _parse(const char* p, Py_ssize_t pos, Py_ssize_t n, long long value_max,
                Op* op) noexcept:
    """The simple command at p[pos:] into *op; its kind, K_PARTIAL or K_UNSUPPORTED."""
    cdef const char* hit = <const char*>memchr(p + pos, 10, n - pos)
    cdef Py_ssize_t nl, eol, i, name, nname, start, words
    if hit == NULL:
        return K_PARTIAL if n - pos <= _LINE else K_UNSUPPORTED
    nl = hit - p
    if nl - pos < 2 or p[nl - 1] != 13 or memchr(p + pos, 0, nl - pos) != NULL:
        return K_UNSUPPORTED
    eol = nl - 1
    op.end = nl + 1
    op.eol = eol
    op.noreply = False
    op.has_ttl = False
    op.decr = False
    op.n1 = op.n2 = 0
    i = pos
    name = _next_word(p, &i, eol)
    if name < 0:
        return K_UNSUPPORTED
    nname = i - name
    if (nname == 3 and _same(p + name, b"get", 3)) or (nname == 4 and _same(p + name, b"gets", 4)):
        return _parse_get(p, i, eol, nl - pos, K_GET if nname == 3 else K_GETS, op)
    if nname == 2 and _same(p + name, b"mn", 2):
        return K_MN if nl - pos < _LINE and _next_word(p, &i, eol) < 0 else K_UNSUPPORTED
    if nl - pos >= _LINE:
        return K_UNSUPPORTED
    op.key = _next_word(p, &i, eol)
    op.nkey = i - op.key
    if op.key < 0 or op.nkey > _KEY_MAX:
        return K_UNSUPPORTED
    if nname == 3 and _same(p + name, b"set", 3):
        return _parse_set(p, i, eol, n, op, value_max)
    if nname == 4 and (_same(p + name, b"incr", 4) or _same(p + name, b"decr", 4)):
        return _parse_delta(p, i, eol, op, K_INCR if p[name] == 105 else K_DECR)
    if nname == 2 and _same(p + name, b"mg", 2):
        op.args = i
        if _meta_flags(p, i, eol, b"vftcskqu", b"OT", b"", op) < 0:
            return K_UNSUPPORTED
        return K_MG
    if nname == 2 and _same(p + name, b"ms", 2):
        start = _next_word(p, &i, eol)
        if start < 0:
            return K_UNSUPPORTED
        op.vlen = _number(p + start, i - start, _DIGITS)
        op.args = i
        if _meta_flags(p, i, eol, b"qk", b"OTF", b"", op) < 0:
            return K_UNSUPPORTED
        return _block(n, p, op, K_MS, value_max)
    if nname == 2 and _same(p + name, b"md", 2):
        op.args = i
        return K_MD if _meta_flags(p, i, eol, b"qk", b"O", b"", op) == 0 else K_UNSUPPORTED
    if nname == 2 and _same(p + name, b"ma", 2):
        op.args = i
        op.n1 = 1  # the default delta
        return K_MA if _meta_flags(p, i, eol, b"qkvtc", b"OD", b"I+D-", op) == 0 else K_UNSUPPORTED
    return K_UNSUPPORTED


cdef int _parse_get(const char* p, Py_ssize_t i, Py_ssize_t eol, Py_ssize_t nline, int kind,
                    Op* op) noexcept:
    cdef Py_ssize_t start, keys = 0
    if nline >= _GET_LINE:
        return K_UNSUPPORTED
    op.args = i
    while True:
        start = _next_word(p, &i, eol)
        if start < 0:
            break
        keys += 1
        if i - start > _KEY_MAX or keys > _MAX_KEYS:
            return K_UNSUPPORTED
    return kind if keys else K_UNSUPPORTED


cdef int _parse_set(const char* p, Py_ssize_t i, Py_ssize_t eol, Py_ssize_t n, Op* op,
                    long long value_max) noexcept:
    cdef long long values[3]
    cdef Py_ssize_t start, k
    for k in range(3):
        start = _next_word(p, &i, eol)
        values[k] = _number(p + start, i - start, _DIGITS) if start >= 0 else -1
        if values[k] < 0:
            return K_UNSUPPORTED
    start = _next_word(p, &i, eol)
    if start >= 0:
        if not (i - start == 7 and _same(p + start, b"noreply", 7)):
            return K_UNSUPPORTED
        if _next_word(p, &i, eol) >= 0:
            return K_UNSUPPORTED
        op.noreply = True
    op.n1, op.n2, op.vlen = values[0], values[1], values[2]
    return _block(n, p, op, K_SET, value_max)


cdef int _parse_delta(const char* p, Py_ssize_t i, Py_ssize_t eol, Op* op, int kind) noexcept:
    cdef Py_ssize_t start = _next_word(p, &i, eol)
    if start < 0:
        return K_UNSUPPORTED
    op.n1 = _number(p + start, i - start, _DELTA_DIGITS)
    if op.n1 < 0:
        return K_UNSUPPORTED
    start = _next_word(p, &i, eol)
    if start >= 0:
        if not (i - start == 7 and _same(p + start, b"noreply", 7)):
            return K_UNSUPPORTED
        if _next_word(p, &i, eol) >= 0:
            return K_UNSUPPORTED
        op.noreply = True
    return kind


cdef Py_ssize_t _scan(const char* p, Py_ssize_t n, long long value_max) noexcept:
    """The first pass: how many complete simple commands the read begins with, every other
    byte being a pending one's; -1 when the read holds anything else or none."""
    cdef Op op
    cdef Py_ssize_t pos = 0, count = 0
    cdef int kind
    while pos < n:
        kind = _parse(p, pos, n, value_max, &op)
        if kind == K_UNSUPPORTED:
            return -1
        if kind == K_PARTIAL:
            break
        count += 1
        pos = op.end
    return count if count else -1


def pipeline(bytes data not None, storage, set pinned not None, long long value_max,
             long long reqs_per_event):
    """Answer the simple commands `data` holds: (replies, their size, bytes consumed) or
    None (see the pure twin)."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t ops = _scan(p, n, value_max), done, size = 0, consumed = 0, pos = 0
    cdef long long count = 0
    cdef Op op
    cdef int kind
    cdef list out
    cdef long long[::1] hot
    if ops < 0:
        return None
    hot = storage.stats.hot  # get_cmds and get_misses, added in C (kvcache/counters.py)
    out = []
    for done in range(ops):
        kind = _parse(p, pos, n, value_max, &op)
        reply = _run(kind, p, &op, storage, pinned, hot)
        if reply is None:
            break
        pos = consumed = op.end
        if len(reply):
            out.append(reply)
            size += len(reply)
        count += 1
        if count >= reqs_per_event or kind == K_GET or kind == K_GETS or kind == K_MN:
            count = 0
            if len(pinned):
                pinned.clear()
        if size >= _REPLY_MAX:
            break
    if not consumed:
        return None
    return out, size, consumed


cdef inline bytes _slice(const char* p, Py_ssize_t start, Py_ssize_t n):
    return PyBytes_FromStringAndSize(p + start, n)


cdef object _run(int kind, const char* p, Op* op, storage, set pinned, long long[::1] hot):
    cdef bytes key
    if kind == K_GET or kind == K_GETS:
        return _get(kind, p, op, storage)
    if kind == K_MN:
        return _MN
    key = _slice(p, op.key, op.nkey)
    if kind == K_SET or kind == K_MS:
        return _set(kind, p, op, key, storage)
    if kind == K_INCR or kind == K_DECR:
        return _delta(kind == K_INCR, op, key, storage, pinned)
    if kind == K_MD:
        return _meta_delete(p, op, key, storage)
    if kind == K_MA:
        return _meta_arith(p, op, key, storage, pinned)
    return _meta_get(p, op, key, storage, pinned, hot)


cdef object _get(int kind, const char* p, Op* op, storage):
    cdef Py_ssize_t i = op.args, start
    cdef list keys = []
    while True:
        start = _next_word(p, &i, op.eol)
        if start < 0:
            break
        keys.append(_slice(p, start, i - start))
    if kind == K_GET and len(keys) == 1:
        return storage.get_reply(keys[0])
    return storage.get_many_reply(keys, kind == K_GETS, _REPLY_MAX)


cdef bytes _set(int kind, const char* p, Op* op, bytes key, storage):
    outcome = storage.store_command(_SET, key, _slice(p, op.data, op.vlen), op.n1,
                                    storage.expiry(op.n2))
    if outcome is not _STORED:
        return _EMPTY if kind == K_SET and op.noreply else _NO_MEMORY
    if op.noreply:
        return _EMPTY
    if kind == K_SET:
        return _STORED_LINE
    return _meta_echo(p, op, b"HD", 2, key)


cdef bytes _delta(bint incr, Op* op, bytes key, storage, set pinned):
    cdef char digits[24]
    cdef int width
    delta = storage.delta_number(key, incr, op.n1, pinned)
    outcome = delta[0]
    if outcome is _STORED:
        if op.noreply:
            return _EMPTY
        width = _decimal(digits, <uint64_t>delta[1])
        digits[width] = 13
        digits[width + 1] = 10
        return PyBytes_FromStringAndSize(digits, width + 2)
    if outcome is _NOT_FOUND:
        stats = storage.stats
        if incr:
            stats.incr_misses += 1
        else:
            stats.decr_misses += 1
        reply = _NOT_FOUND_LINE
    else:
        reply = _NON_NUMERIC if outcome is _NON_NUMERIC_OUTCOME else _OUT_OF_MEMORY
    return _EMPTY if op.noreply else reply
