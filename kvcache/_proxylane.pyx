# cython: language_level=3, boundscheck=False, wraparound=False
"""The proxy's fast lane, compiled: the twin of kvcache/proxylane_pure.py (the reference,
whose docstring states the rules). Same functions, same results (tests/
test_kvcache_proxy_lane.py); the bytes are scanned in place instead of split and sliced."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from kvcache.client_codec import MAX_VALUE_BYTES
from kvcache.mcproto_pure import MAX_KEY_BYTES
from kvcache.proxylane_pure import LANE_DIGITS
from kvcache.proxylane_pure import may_hold_a_block as _may_hold_a_block
from kvcache.proxy_wire import LINE, WHOLE_VALUES

cdef Py_ssize_t _KEY_MAX = MAX_KEY_BYTES
cdef Py_ssize_t _DIGITS = LANE_DIGITS
cdef long long _VALUE_MAX = MAX_VALUE_BYTES
cdef object _LINE = LINE
cdef object _WHOLE = WHOLE_VALUES
cdef long long _SATURATED = 1LL << 50  # above any value size: a bigger number stays here

__all__ = ["LANE_DIGITS", "Answer", "deliver", "lane_request", "may_hold_a_block",
           "quick_take"]


cdef inline bint _crlf_at(const char* p, Py_ssize_t i):
    return p[i] == 13 and p[i + 1] == 10


cdef long long _number(const char* p, Py_ssize_t start, Py_ssize_t end, Py_ssize_t most):
    """The plain digits p[start:end] (1..most of them; any number when most < 0, the value
    then held at _SATURATED), or -1."""
    cdef Py_ssize_t i
    cdef long long value = 0
    if end <= start or (most >= 0 and end - start > most):
        return -1
    for i in range(start, end):
        if p[i] < 48 or p[i] > 57:
            return -1
        if value < _SATURATED:
            value = value * 10 + (p[i] - 48)
    return value


def lane_request(bytes data not None, long long value_max):
    """(key, is_set) if `data` is exactly one plain get or set, else None."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t nkey
    if n >= 4 and memcmp(p, b"get ", 4) == 0:
        nkey = n - 6
        if nkey <= 0 or nkey > _KEY_MAX or not _crlf_at(p, n - 2):
            return None
        if (memchr(p + 4, 32, nkey) != NULL or memchr(p + 4, 10, nkey) != NULL
                or memchr(p + 4, 0, nkey) != NULL):
            return None
        return PyBytes_FromStringAndSize(p + 4, nkey), False
    if n >= 4 and memcmp(p, b"set ", 4) == 0:
        return _lane_set(p, n, value_max)
    return None


cdef object _lane_set(const char* p, Py_ssize_t n, long long value_max):
    cdef const char* hit = <const char*>memchr(p, 10, n)
    cdef Py_ssize_t end, head
    cdef Py_ssize_t words[5]
    cdef Py_ssize_t count = 0, i
    cdef long long size
    if hit == NULL:
        return None
    end = hit - p
    if end < 5 or p[end - 1] != 13 or memchr(p, 0, end) != NULL:
        return None
    head = end - 1  # the header without its CR, split on single spaces as bytes.split does
    words[0] = 0
    count = 1
    for i in range(head):
        if p[i] == 32:
            if count == 5:
                return None
            words[count] = i + 1
            count += 1
    if count != 5:
        return None
    # word k spans words[k] .. (words[k+1] - 1), the last one up to head
    if words[2] - 1 - words[1] <= 0 or words[2] - 1 - words[1] > _KEY_MAX:
        return None
    if (_number(p, words[2], words[3] - 1, _DIGITS) < 0
            or _number(p, words[3], words[4] - 1, _DIGITS) < 0):
        return None
    size = _number(p, words[4], head, _DIGITS)
    if size < 0 or size > value_max or n != end + 1 + size + 2 or not _crlf_at(p, n - 2):
        return None
    return PyBytes_FromStringAndSize(p + words[1], words[2] - 1 - words[1]), True


def may_hold_a_block(bytes data not None, bint held_before):
    """Whether a parser holding no byte after `data` may wait for a block (the pure twin's
    rule, which it calls: the lane asks only after a read the parser took)."""
    return _may_hold_a_block(data, held_before)


def quick_take(bytes data not None, Py_ssize_t pos, shape):
    """(the reply as the framer's take(shape) returns it, the position after it), or None."""
    if shape is _WHOLE or shape == _WHOLE:
        return _whole_values(data, pos)
    if shape is _LINE or shape == _LINE:
        return _line(data, pos)
    return None


def deliver(bytes data not None, pending, future_type):
    """quick_take for the requests at the head of `pending`, each reply handed to its
    waiter; (the position after the last reply taken, the number taken)."""
    cdef Py_ssize_t pos = 0, answered = 0
    cdef tuple entry
    while pending:
        entry = <tuple>pending[0]
        waiter = entry[0]
        shape = entry[1]
        if shape is _WHOLE or shape == _WHOLE:
            got = _whole_values(data, pos)
        elif shape is _LINE or shape == _LINE:
            got = _line(data, pos)
        else:
            break
        if got is None:
            break
        reply, pos = got
        pending.popleft()
        answered += 1
        if type(waiter) is not future_type or not waiter.done():
            waiter.set_result(reply)
    return pos, answered


cdef bint _line_ok(const char* p, Py_ssize_t n):
    """A success line (or a number) of n bytes at p: what the framer's LINE accepts, errors
    left out."""
    cdef Py_ssize_t i
    if n == 0:
        return False
    if 48 <= p[0] <= 57:
        for i in range(n):
            if p[i] < 48 or p[i] > 57:
                return False
        return True
    return ((n >= 6 and memcmp(p, b"STORED", 6) == 0)
            or (n >= 10 and memcmp(p, b"NOT_STORED", 10) == 0)
            or (n >= 6 and memcmp(p, b"EXISTS", 6) == 0)
            or (n >= 9 and memcmp(p, b"NOT_FOUND", 9) == 0)
            or (n >= 7 and memcmp(p, b"DELETED", 7) == 0)
            or (n >= 7 and memcmp(p, b"TOUCHED", 7) == 0)
            or (n >= 2 and memcmp(p, b"OK", 2) == 0)
            or (n >= 8 and memcmp(p, b"VERSION ", 8) == 0))


cdef Py_ssize_t _find_crlf(const char* p, Py_ssize_t pos, Py_ssize_t n):
    cdef const char* hit
    while pos < n - 1:
        hit = <const char*>memchr(p + pos, 13, n - 1 - pos)
        if hit == NULL:
            return -1
        pos = hit - p
        if p[pos + 1] == 10:
            return pos
        pos += 1
    return -1


cdef object _line(bytes data, Py_ssize_t pos):
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t eol
    if pos < 0 or pos > n:
        return None
    eol = _find_crlf(p, pos, n)
    if eol < 0 or not _line_ok(p + pos, eol - pos):
        return None
    if pos == 0 and eol + 2 == n:
        return data, n
    return PyBytes_FromStringAndSize(p + pos, eol + 2 - pos), eol + 2


cdef object _whole_values(bytes data, Py_ssize_t pos):
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t start = pos, eol, i, spaces, end
    cdef Py_ssize_t field[5]
    cdef long long hits = 0, size
    if pos < 0 or pos > n:
        return None
    while not (n - pos >= 5 and memcmp(p + pos, b"END\r\n", 5) == 0):
        if n - pos < 6 or memcmp(p + pos, b"VALUE ", 6) != 0:
            return None
        eol = _find_crlf(p, pos, n)
        if eol < 0:
            return None
        # VALUE <key> <flags> <bytes> [<cas>]: 4 or 5 words split on single spaces
        spaces = 0
        for i in range(pos, eol):
            if p[i] == 32:
                if spaces == 4:
                    return None
                field[spaces] = i + 1
                spaces += 1
        if spaces != 3 and spaces != 4:
            return None
        field[spaces] = eol + 1  # one past the last word's end, as a space would be
        for i in range(spaces):
            if field[i + 1] - 1 - field[i] <= 0:  # an empty word
                return None
        if (_number(p, field[1], field[2] - 1, -1) < 0
                or (spaces == 4 and _number(p, field[3], field[4] - 1, -1) < 0)):
            return None
        size = _number(p, field[2], field[3] - 1, -1)
        if size < 0 or size > _VALUE_MAX:
            return None
        end = eol + 2 + size
        if end + 2 > n or not _crlf_at(p, end):
            return None
        pos = end + 2
        hits += 1
    end = pos + 5
    if start == 0 and end == n:
        return (data, hits), end
    return (PyBytes_FromStringAndSize(p + start, end - start), hits), end


cdef class Answer:
    """The slot of a request one backend answers (see the pure twin): made, completed and
    read once per request, so its methods are C calls."""

    cdef public object reply, error, notify
    cdef public bint silent, waiting
    cdef public Py_ssize_t keys

    def __init__(self, bint silent, Py_ssize_t keys):
        self.reply = b""
        self.error = None
        self.silent = silent
        self.keys = keys
        self.waiting = True
        self.notify = None

    @property
    def fut(self):
        return None

    @property
    def barrier(self):
        return False

    cpdef bint done(self):
        return not self.waiting

    cpdef set_result(self, reply):
        self.reply = reply
        self.waiting = False
        if self.notify is not None:
            self.notify(self)

    cpdef set_exception(self, exc):
        self.error = exc
        self.waiting = False
        if self.notify is not None:
            self.notify(self)

    cpdef result(self, counters):
        """The client's reply; counts errors, hits and misses in `counters`."""
        cdef Py_ssize_t hits
        if self.error is not None:
            counters.proxy_errors += 1
            return b"" if self.silent else self.error.line
        reply = self.reply
        if self.keys:
            reply, hits = reply
            counters.get_hits += hits
            counters.get_misses += self.keys - hits
        return b"" if self.silent else reply
