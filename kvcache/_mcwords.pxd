# Shared by kvcache/_mcpipe.pyx and kvcache/_mcmeta.pyx (no module of its own): a parsed
# simple command, and the inline helpers both read lines and write replies with.

from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef struct Op:
    int kind
    Py_ssize_t end      # where the next command starts
    Py_ssize_t args     # get: the keys' start; mg/ms: the flags' start
    Py_ssize_t eol      # the line's end (its CR)
    Py_ssize_t key
    Py_ssize_t nkey
    Py_ssize_t data     # set/ms: the block's start
    long long n1        # set: flags; incr/decr: delta; ms: client flags
    long long n2        # set, ms: exptime (wire)
    long long vlen      # set, ms: the block's length
    bint noreply        # set, incr/decr: noreply; mg, ms: q
    bint has_ttl        # mg: T
    bint decr           # ma: MD or M-


cdef inline Py_ssize_t _next_word(const char* p, Py_ssize_t* i, Py_ssize_t end) noexcept:
    """Skip spaces from *i; the start of the next word (*i then at its end), or -1."""
    cdef Py_ssize_t start
    while i[0] < end and p[i[0]] == 32:
        i[0] += 1
    if i[0] >= end:
        return -1
    start = i[0]
    while i[0] < end and p[i[0]] != 32:
        i[0] += 1
    return start


cdef inline int _decimal(char* w, uint64_t n) noexcept:
    """n in decimal at w; the number of digits."""
    cdef char digits[20]
    cdef int count = 0, i
    while True:
        digits[count] = <char>(48 + n % 10)
        count += 1
        n //= 10
        if n == 0:
            break
    for i in range(count):
        w[i] = digits[count - 1 - i]
    return count


cdef inline Py_ssize_t _put(char* w, Py_ssize_t at, const char* s, Py_ssize_t n) noexcept:
    memcpy(w + at, s, n)
    return at + n


cdef inline Py_ssize_t _put_number(char* w, Py_ssize_t at, char letter, uint64_t n) noexcept:
    w[at] = 32
    w[at + 1] = letter
    return at + 2 + _decimal(w + at + 2, n)
