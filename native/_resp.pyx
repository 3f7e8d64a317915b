# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""RESP request parser, compiled: the hot path of native/resp_pure.py (the reference).

Same API, behaviour, error class and texts as the pure twin; read its docstrings for the
contract (tests/test_native_resp.py proves the two agree). What differs is only how:
- a feed into an empty buffer (the common case) is parsed in place over the `bytes` it was
  given, with no copy; only an unconsumed tail is kept, in a bytearray that later feeds
  extend (amortised, so a large bulk arriving in many reads is not copied quadratically);
- scanning is C over a char*: CRLF by memchr, counts by a digit loop, inline quoting by a
  C port of split_inline;
- a multibulk command left incomplete remembers the arguments it already has, so the next
  feed resumes at its next element instead of rescanning every header. The tail still
  starts at the command's first byte, so `buffered` and the buffer limit are those of the
  pure parser; changing a limit or `authenticated` drops that memo (the pure parser
  rechecks the whole command against the new values).
Limits are kept both as given (returned by the attributes) and as C integers: every use is
`value > limit` with an integer value, so a limit is stored as floor(limit), clamped to
the C range (a NaN limit is never exceeded, as in Python). One difference: a limit that is
not a number raises TypeError when assigned, where the pure parser fails at the next feed.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.stdlib cimport free, malloc
from libc.string cimport memchr

import math

from native.resp_pure import (
    ERR_BUFFER_LIMIT,
    ERR_BULK_COUNT_TOO_BIG,
    ERR_EXPECTED_DOLLAR,
    ERR_INLINE_TOO_BIG,
    ERR_INVALID_BULK,
    ERR_INVALID_MBULK,
    ERR_MBULK_COUNT_TOO_BIG,
    ERR_UNAUTH_BULK,
    ERR_UNAUTH_MBULK,
    ERR_UNBALANCED_QUOTES,
    MAX_BUFFER_BYTES,
    MAX_BULK_BYTES,
    MAX_ELEMENTS,
    MAX_INLINE_BYTES,
    UNAUTH_MAX_BULK_BYTES,
    UNAUTH_MAX_ELEMENTS,
    ProtocolError,
)

cdef long long _UNAUTH_ELEMENTS = UNAUTH_MAX_ELEMENTS
cdef long long _UNAUTH_BULK = UNAUTH_MAX_BULK_BYTES

# Outcome of one step of the parse.
cdef enum:
    _OK = 0          # a whole element / header / command was taken
    _INCOMPLETE = 1  # the buffer ends inside it: wait for more bytes
    _FAILED = 2      # protocol error, already recorded in `error`
    _UNAUTH = 5      # a bulk over the unauthenticated limit (not recorded: see _parse)

# Outcome of reading a count header (`*N\r\n` or `$N\r\n`) besides _OK and _INCOMPLETE.
cdef enum:
    _TOO_BIG = 3     # the header line is longer than max_inline
    _INVALID = 4     # not Redis's string2ll: optional '-', 1 to 18 ASCII digits

# Bytes held on the stack for one inline argument; longer lines use malloc.
cdef enum:
    _STACK_ARG_BYTES = 256


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # b" \n\r\t\v\f", the set of isspace() in the C locale that sdssplitargs uses.
    return c == 32 or (9 <= c <= 13)


cdef inline int _hex_value(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline unsigned char _unescape(unsigned char c) noexcept nogil:
    if c == 110:  # n
        return 10
    if c == 114:  # r
        return 13
    if c == 116:  # t
        return 9
    if c == 98:  # b
        return 8
    if c == 97:  # a
        return 7
    return c


cdef inline Py_ssize_t _find_crlf(
    const unsigned char* s, Py_ssize_t start, Py_ssize_t n
) noexcept nogil:
    """Index of the first b"\\r\\n" at or after `start`, or -1 (bytes.find)."""
    cdef const unsigned char* p
    while start < n - 1:
        p = <const unsigned char*>memchr(s + start, 13, <size_t>(n - 1 - start))
        if p == NULL:
            return -1
        if p[1] == 10:
            return p - s
        start = (p - s) + 1
    return -1


cdef object _split_inline(const unsigned char* line, Py_ssize_t n):
    """C port of resp_pure.split_inline: the argument list, or None on unbalanced quotes."""
    cdef list args = []
    cdef unsigned char stack_buf[_STACK_ARG_BYTES]
    cdef unsigned char* cur = stack_buf
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t k
    cdef unsigned char c
    cdef bint in_double, in_single
    cdef bint bad = False
    if n > _STACK_ARG_BYTES:
        cur = <unsigned char*>malloc(<size_t>n)
        if cur == NULL:
            raise MemoryError()
    try:
        while True:
            while i < n and _is_space(line[i]):
                i += 1
            if i >= n:
                break
            k = 0  # an argument never holds more bytes than the line has left
            in_double = False
            in_single = False
            while True:
                if in_double:
                    if i >= n:
                        bad = True
                        break
                    c = line[i]
                    if (
                        c == 92 and i + 3 < n and line[i + 1] == 120
                        and _hex_value(line[i + 2]) >= 0 and _hex_value(line[i + 3]) >= 0
                    ):
                        cur[k] = <unsigned char>(
                            _hex_value(line[i + 2]) * 16 + _hex_value(line[i + 3])
                        )
                        k += 1
                        i += 3
                    elif c == 92 and i + 1 < n:
                        i += 1
                        cur[k] = _unescape(line[i])
                        k += 1
                    elif c == 34:
                        if i + 1 < n and not _is_space(line[i + 1]):
                            bad = True
                        i += 1
                        break
                    else:
                        cur[k] = c
                        k += 1
                elif in_single:
                    if i >= n:
                        bad = True
                        break
                    c = line[i]
                    if c == 92 and i + 1 < n and line[i + 1] == 39:
                        i += 1
                        cur[k] = 39
                        k += 1
                    elif c == 39:
                        if i + 1 < n and not _is_space(line[i + 1]):
                            bad = True
                        i += 1
                        break
                    else:
                        cur[k] = c
                        k += 1
                else:
                    if i >= n:
                        break
                    c = line[i]
                    if _is_space(c):
                        break
                    if c == 34:
                        in_double = True
                    elif c == 39:
                        in_single = True
                    else:
                        cur[k] = c
                        k += 1
                i += 1
            if bad:
                return None
            args.append(PyBytes_FromStringAndSize(<char*>cur, k))
    finally:
        if cur != stack_buf:
            free(cur)
    return args


cdef long long _c_limit(object value) except? -1:
    """The C integer L with `v > L` == `v > value` for every C integer v (see module doc)."""
    if not isinstance(value, int):
        if isinstance(value, float):
            if value != value:
                return LLONG_MAX
            if value == math.inf:
                return LLONG_MAX
            if value == -math.inf:
                return LLONG_MIN
        value = math.floor(value)
    if value > LLONG_MAX:
        return LLONG_MAX
    if value < LLONG_MIN:
        return LLONG_MIN
    return value


cdef class RequestParser:
    """Bytes in, commands out: the compiled twin of resp_pure.RequestParser (see there)."""

    cdef public object error
    cdef object _authenticated
    cdef object _max_inline_obj, _max_bulk_obj, _max_elements_obj, _max_buffer_obj
    cdef long long _max_inline, _max_bulk, _max_elements, _max_buffer
    # Unconsumed bytes, None when there are none. Invariant: they start at the first byte
    # of a command, so len(_tail) is what the pure parser keeps in its buffer.
    cdef bytearray _tail
    # Memo of the incomplete multibulk command at the start of _tail: the arguments taken so
    # far (None when there is no memo), how many are still due, the offset in _tail of the
    # next one, and the `authenticated` truth value they were checked against.
    cdef list _mb_args
    cdef long long _mb_left
    cdef Py_ssize_t _mb_pos
    cdef bint _mb_authed

    def __init__(
        self,
        max_inline=MAX_INLINE_BYTES,
        max_bulk=MAX_BULK_BYTES,
        max_elements=MAX_ELEMENTS,
        max_buffer=MAX_BUFFER_BYTES,
        authenticated=True,
    ):
        self.max_inline = max_inline
        self.max_bulk = max_bulk
        self.max_elements = max_elements
        self.max_buffer = max_buffer
        self.authenticated = authenticated
        self.error = None
        self._tail = None
        self._mb_args = None

    @property
    def max_inline(self):
        return self._max_inline_obj

    @max_inline.setter
    def max_inline(self, value):
        self._max_inline = _c_limit(value)
        self._max_inline_obj = value
        self._mb_args = None

    @property
    def max_bulk(self):
        return self._max_bulk_obj

    @max_bulk.setter
    def max_bulk(self, value):
        self._max_bulk = _c_limit(value)
        self._max_bulk_obj = value
        self._mb_args = None

    @property
    def max_elements(self):
        return self._max_elements_obj

    @max_elements.setter
    def max_elements(self, value):
        self._max_elements = _c_limit(value)
        self._max_elements_obj = value
        self._mb_args = None

    @property
    def max_buffer(self):
        return self._max_buffer_obj

    @max_buffer.setter
    def max_buffer(self, value):
        self._max_buffer = _c_limit(value)
        self._max_buffer_obj = value

    @property
    def authenticated(self):
        return self._authenticated

    @authenticated.setter
    def authenticated(self, value):
        self._authenticated = value
        self._mb_args = None

    @property
    def buffered(self):
        """Bytes received but not yet part of a complete command."""
        return 0 if self._tail is None else PyByteArray_GET_SIZE(self._tail)

    def feed(self, data):
        """Add received bytes; return the commands they complete (possibly none)."""
        cdef list commands
        cdef bytearray tail
        cdef object buf
        cdef Py_buffer view
        cdef Py_ssize_t n, left, consumed = 0
        cdef const unsigned char* s
        cdef int status
        if self.error is not None:
            return []
        commands = []
        if self._tail is None:
            # Common case: parse the caller's bytes in place; copy only what is left over.
            buf = data if type(data) is bytes else bytes(data)
            n = PyBytes_GET_SIZE(buf)
            s = <const unsigned char*>PyBytes_AS_STRING(buf)
            status = self._parse(s, n, commands, &consumed)
            if status != _FAILED and consumed < n:
                self._tail = PyByteArray_FromStringAndSize(<char*>s + consumed, n - consumed)
        else:
            tail = self._tail
            tail += data
            # Holding a buffer export keeps the bytearray from being resized under `s`.
            PyObject_GetBuffer(tail, &view, PyBUF_SIMPLE)
            try:
                n = view.len
                s = <const unsigned char*>view.buf
                status = self._parse(s, n, commands, &consumed)
                if status != _FAILED:
                    if consumed == n:
                        self._tail = None
                    elif consumed > 0:
                        self._tail = PyByteArray_FromStringAndSize(
                            <char*>s + consumed, n - consumed
                        )
            finally:
                PyBuffer_Release(&view)
        if status != _FAILED:
            # Compared even when nothing is left: a negative limit is exceeded by 0 bytes.
            left = 0 if self._tail is None else PyByteArray_GET_SIZE(self._tail)
            if left > self._max_buffer:
                self._fail(ERR_BUFFER_LIMIT)
        return commands

    cdef int _fail(self, str text) except -1:
        self.error = ProtocolError(text)
        self._tail = None
        self._mb_args = None
        return _FAILED

    cdef int _parse(
        self, const unsigned char* s, Py_ssize_t n, list commands, Py_ssize_t* consumed
    ) except -1:
        """Take every complete command of s[:n] into `commands`.

        Returns _FAILED (error recorded, tail dropped) or _OK with `consumed` set to the
        start of the incomplete command at the end, if any (else n).
        """
        cdef bint authed = bool(self._authenticated)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t start, end, line_end
        cdef long long count
        cdef list args
        cdef int status
        cdef const unsigned char* nl
        if self._mb_args is not None:
            args = self._mb_args
            self._mb_args = None
            if self._mb_authed == authed:  # resume the command at the start of the tail
                pos = self._mb_pos
                count = self._mb_left
                status = self._parse_elements(s, n, &pos, args, &count, authed)
                if status == _UNAUTH:
                    return self._fail(ERR_UNAUTH_BULK)
                if status == _FAILED:
                    return _FAILED
                if status == _INCOMPLETE:
                    self._remember(args, count, pos, authed)
                    consumed[0] = 0
                    return _OK
                commands.append(args)
        while pos < n:
            start = pos
            if s[pos] == 42:  # '*'
                status = self._read_count(s, n, pos + 1, &pos, &count)
                if status == _INCOMPLETE:
                    consumed[0] = start
                    return _OK
                if status == _TOO_BIG:
                    return self._fail(ERR_MBULK_COUNT_TOO_BIG)
                if status == _INVALID or count > self._max_elements:
                    return self._fail(ERR_INVALID_MBULK)
                if not authed and count > _UNAUTH_ELEMENTS:
                    if commands:  # stop before it: a command before may be AUTH
                        consumed[0] = start
                        return _OK
                    return self._fail(ERR_UNAUTH_MBULK)
                if count <= 0:
                    continue  # `*0` and `*-1` carry no command
                args = []
                status = self._parse_elements(s, n, &pos, args, &count, authed)
                if status == _UNAUTH:
                    if commands:  # stop before it, as above
                        consumed[0] = start
                        return _OK
                    return self._fail(ERR_UNAUTH_BULK)
                if status == _FAILED:
                    return _FAILED
                if status == _INCOMPLETE:
                    self._remember(args, count, pos - start, authed)
                    consumed[0] = start
                    return _OK
                commands.append(args)
            else:
                nl = <const unsigned char*>memchr(s + pos, 10, <size_t>(n - pos))
                if nl == NULL:
                    if n - pos > self._max_inline:
                        return self._fail(ERR_INLINE_TOO_BIG)
                    consumed[0] = start
                    return _OK
                end = nl - s
                if end - pos > self._max_inline:
                    return self._fail(ERR_INLINE_TOO_BIG)
                line_end = end - 1 if end > pos and s[end - 1] == 13 else end
                args = _split_inline(s + pos, line_end - pos)
                if args is None:
                    return self._fail(ERR_UNBALANCED_QUOTES)
                pos = end + 1
                if args:
                    commands.append(args)
        consumed[0] = n
        return _OK

    cdef inline void _remember(
        self, list args, long long left, Py_ssize_t offset, bint authed
    ) noexcept:
        self._mb_args = args
        self._mb_left = left
        self._mb_pos = offset
        self._mb_authed = authed

    cdef int _parse_elements(
        self,
        const unsigned char* s,
        Py_ssize_t n,
        Py_ssize_t* ppos,
        list args,
        long long* pleft,
        bint authed,
    ) except -1:
        """Append the `$N\\r\\n<bytes>\\r\\n` elements due (*pleft) to `args`.

        On _INCOMPLETE, *ppos is the first element not taken and *pleft how many are due.
        """
        cdef Py_ssize_t pos = ppos[0]
        cdef Py_ssize_t data_pos
        cdef long long left = pleft[0]
        cdef long long size
        cdef int status
        while left > 0:
            if pos >= n:
                break
            if s[pos] != 36:  # '$'
                return self._fail(ERR_EXPECTED_DOLLAR.format(chr(s[pos])))
            status = self._read_count(s, n, pos + 1, &data_pos, &size)
            if status == _INCOMPLETE:
                break
            if status == _TOO_BIG:
                return self._fail(ERR_BULK_COUNT_TOO_BIG)
            if status == _INVALID or size < 0 or size > self._max_bulk:
                return self._fail(ERR_INVALID_BULK)
            if not authed and size > _UNAUTH_BULK:
                return _UNAUTH
            if data_pos + size + 2 > n:
                break
            args.append(PyBytes_FromStringAndSize(<char*>s + data_pos, <Py_ssize_t>size))
            pos = data_pos + <Py_ssize_t>size + 2  # the CRLF after a bulk is not checked
            left -= 1
        ppos[0] = pos
        pleft[0] = left
        return _INCOMPLETE if left > 0 else _OK

    cdef inline int _read_count(
        self,
        const unsigned char* s,
        Py_ssize_t n,
        Py_ssize_t start,
        Py_ssize_t* next_pos,
        long long* value,
    ) noexcept:
        """Read the count line starting at `start` (after '*' or '$') up to its CRLF.

        _OK: *value is the count and *next_pos the byte after the CRLF. Otherwise
        _INCOMPLETE, _TOO_BIG (longer than max_inline, CRLF seen or not) or _INVALID.
        """
        cdef Py_ssize_t i = start
        cdef Py_ssize_t digits_start, end
        cdef unsigned long long v = 0  # wraps past 19 digits, which are rejected anyway
        cdef bint negative = False
        cdef unsigned char c
        if i < n and s[i] == 45:  # '-'
            negative = True
            i += 1
        digits_start = i
        while i < n:
            c = s[i] - 48
            if c > 9:
                break
            v = v * 10 + c
            i += 1
        if i + 1 < n and s[i] == 13 and s[i + 1] == 10:
            # Fast path: the first CRLF follows the digits directly.
            if i - start > self._max_inline:
                return _TOO_BIG
            if i == digits_start or i - digits_start > 18:
                return _INVALID
            value[0] = -<long long>v if negative else <long long>v
            next_pos[0] = i + 2
            return _OK
        # A byte that is neither a digit nor the CRLF: the first CRLF, if any, is after it.
        end = _find_crlf(s, i, n)
        if end < 0:
            return _TOO_BIG if n - start > self._max_inline else _INCOMPLETE
        if end - start > self._max_inline:
            return _TOO_BIG
        return _INVALID


# -- reply encoding -------------------------------------------------------------------------

cdef inline Py_ssize_t _put_int(char* out, long long value) noexcept:
    """Write `value` in decimal at `out`; return the number of bytes written."""
    cdef char digits[24]
    cdef Py_ssize_t n = 0, i
    cdef unsigned long long v
    cdef bint negative = value < 0
    if negative:
        v = <unsigned long long>(-(value + 1)) + 1
    else:
        v = <unsigned long long>value
    while True:
        digits[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    cdef Py_ssize_t written = 0
    if negative:
        out[0] = 45
        written = 1
    for i in range(n - 1, -1, -1):
        out[written] = digits[i]
        written += 1
    return written


def encode_int_array(list values):
    """A RESP array of integers; see native.resp_pure.encode_int_array (the reference)."""
    cdef Py_ssize_t count = len(values)
    # Each element takes at most ':' + 20 digits + sign + CRLF = 24 bytes.
    cdef Py_ssize_t capacity = 32 + 24 * count
    cdef char* buf = <char*>malloc(capacity)
    if buf == NULL:
        raise MemoryError()
    cdef Py_ssize_t pos = 0, i
    cdef long long value
    try:
        buf[0] = 42
        pos = 1 + _put_int(buf + 1, count)
        buf[pos] = 13
        buf[pos + 1] = 10
        pos += 2
        for i in range(count):
            value = values[i]  # OverflowError / TypeError for what is not a 64-bit int
            buf[pos] = 58
            pos += 1 + _put_int(buf + pos + 1, value)
            buf[pos] = 13
            buf[pos + 1] = 10
            pos += 2
        return PyBytes_FromStringAndSize(buf, pos)
    finally:
        free(buf)
