# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CRC16 and Redis Cluster key slots, compiled twin of native.crc16_pure (see there for the
rules).

Same API and behaviour as the reference: the same table, stepped over the key's bytes in C,
and the hash tag found by one scan without copying the key.
"""

from libc.stdint cimport uint16_t

from native.crc16_pure import POLYNOMIAL, SLOT_COUNT
from native.crc16_pure import _TABLE as _PY_TABLE

cdef uint16_t _table[256]
cdef int _i
for _i in range(256):
    _table[_i] = _PY_TABLE[_i]

cdef Py_ssize_t _SLOT_MASK = SLOT_COUNT - 1


cdef inline uint16_t _crc(const unsigned char[:] data, Py_ssize_t start, Py_ssize_t end) nogil:
    cdef uint16_t crc = 0
    cdef Py_ssize_t i
    for i in range(start, end):
        crc = <uint16_t>(crc << 8) ^ _table[(crc >> 8) ^ data[i]]
    return crc


cdef const unsigned char[:] _view(object data):
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected a bytes-like object, not {type(data).__name__}")
    if isinstance(data, memoryview):
        data = bytes(data)
    return data


def crc16(data):
    """CRC-16/XMODEM of `data`, an int in [0, 65535]. TypeError for anything not bytes-like."""
    cdef const unsigned char[:] view = _view(data)
    return _crc(view, 0, view.shape[0])


cdef (Py_ssize_t, Py_ssize_t) _tag(const unsigned char[:] key):
    cdef Py_ssize_t n = key.shape[0], start, end
    for start in range(n):
        if key[start] == b'{':
            break
    else:
        return 0, n
    for end in range(start + 1, n):
        if key[end] == b'}':
            break
    else:
        return 0, n
    if end == start + 1:
        return 0, n
    return start + 1, end


def hash_tag(key):
    """The part of `key` that decides its slot: its non-empty `{tag}` if any, else all of it."""
    cdef const unsigned char[:] view = _view(key)
    cdef Py_ssize_t start, end
    start, end = _tag(view)
    return bytes(view[start:end])


def key_slot(key):
    """Redis Cluster's slot of `key`, in [0, SLOT_COUNT), hash tags honoured."""
    cdef const unsigned char[:] view = _view(key)
    cdef Py_ssize_t start, end
    start, end = _tag(view)
    return _crc(view, start, end) & _SLOT_MASK
