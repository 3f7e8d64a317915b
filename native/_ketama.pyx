# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Ketama continuum, compiled twin of native.ketama_pure (see there for the rules).

Same API and behaviour as the reference. The speed comes from two things: the key's md5 is
computed in C (only the first 32-bit word of the digest is needed, and keys are short, so one
or two 64-byte blocks and no hashlib object per call), and the search is a C binary search
over a uint32_t array.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* MD5 (RFC 1321). Returns the digest's first 32-bit word as little-endian bytes read it,
       i.e. the final value of register A: exactly the ketama key hash. */
    #define KM_ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

    #define KM_F(b, c, d) (((b) & (c)) | (~(b) & (d)))
    #define KM_G(b, c, d) (((d) & (b)) | (~(d) & (c)))
    #define KM_H(b, c, d) ((b) ^ (c) ^ (d))
    #define KM_I(b, c, d) ((c) ^ ((b) | ~(d)))
    #define KM_STEP(f, a, b, c, d, x, k, s) \\
        (a) += KM_##f((b), (c), (d)) + (x) + (k); (a) = KM_ROTL((a), (s)) + (b);

    /* One 64-byte block; the 64 steps unrolled (round, message word, constant, shift). */
    static void km_block(uint32_t st[4], const unsigned char *p) {
        uint32_t x[16], a = st[0], b = st[1], c = st[2], d = st[3];
        int i;
        for (i = 0; i < 16; i++)
            x[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8)
                 | ((uint32_t)p[4 * i + 2] << 16) | ((uint32_t)p[4 * i + 3] << 24);
        KM_STEP(F, a, b, c, d, x[ 0], 0xd76aa478u,  7); KM_STEP(F, d, a, b, c, x[ 1], 0xe8c7b756u, 12);
        KM_STEP(F, c, d, a, b, x[ 2], 0x242070dbu, 17); KM_STEP(F, b, c, d, a, x[ 3], 0xc1bdceeeu, 22);
        KM_STEP(F, a, b, c, d, x[ 4], 0xf57c0fafu,  7); KM_STEP(F, d, a, b, c, x[ 5], 0x4787c62au, 12);
        KM_STEP(F, c, d, a, b, x[ 6], 0xa8304613u, 17); KM_STEP(F, b, c, d, a, x[ 7], 0xfd469501u, 22);
        KM_STEP(F, a, b, c, d, x[ 8], 0x698098d8u,  7); KM_STEP(F, d, a, b, c, x[ 9], 0x8b44f7afu, 12);
        KM_STEP(F, c, d, a, b, x[10], 0xffff5bb1u, 17); KM_STEP(F, b, c, d, a, x[11], 0x895cd7beu, 22);
        KM_STEP(F, a, b, c, d, x[12], 0x6b901122u,  7); KM_STEP(F, d, a, b, c, x[13], 0xfd987193u, 12);
        KM_STEP(F, c, d, a, b, x[14], 0xa679438eu, 17); KM_STEP(F, b, c, d, a, x[15], 0x49b40821u, 22);
        KM_STEP(G, a, b, c, d, x[ 1], 0xf61e2562u,  5); KM_STEP(G, d, a, b, c, x[ 6], 0xc040b340u,  9);
        KM_STEP(G, c, d, a, b, x[11], 0x265e5a51u, 14); KM_STEP(G, b, c, d, a, x[ 0], 0xe9b6c7aau, 20);
        KM_STEP(G, a, b, c, d, x[ 5], 0xd62f105du,  5); KM_STEP(G, d, a, b, c, x[10], 0x02441453u,  9);
        KM_STEP(G, c, d, a, b, x[15], 0xd8a1e681u, 14); KM_STEP(G, b, c, d, a, x[ 4], 0xe7d3fbc8u, 20);
        KM_STEP(G, a, b, c, d, x[ 9], 0x21e1cde6u,  5); KM_STEP(G, d, a, b, c, x[14], 0xc33707d6u,  9);
        KM_STEP(G, c, d, a, b, x[ 3], 0xf4d50d87u, 14); KM_STEP(G, b, c, d, a, x[ 8], 0x455a14edu, 20);
        KM_STEP(G, a, b, c, d, x[13], 0xa9e3e905u,  5); KM_STEP(G, d, a, b, c, x[ 2], 0xfcefa3f8u,  9);
        KM_STEP(G, c, d, a, b, x[ 7], 0x676f02d9u, 14); KM_STEP(G, b, c, d, a, x[12], 0x8d2a4c8au, 20);
        KM_STEP(H, a, b, c, d, x[ 5], 0xfffa3942u,  4); KM_STEP(H, d, a, b, c, x[ 8], 0x8771f681u, 11);
        KM_STEP(H, c, d, a, b, x[11], 0x6d9d6122u, 16); KM_STEP(H, b, c, d, a, x[14], 0xfde5380cu, 23);
        KM_STEP(H, a, b, c, d, x[ 1], 0xa4beea44u,  4); KM_STEP(H, d, a, b, c, x[ 4], 0x4bdecfa9u, 11);
        KM_STEP(H, c, d, a, b, x[ 7], 0xf6bb4b60u, 16); KM_STEP(H, b, c, d, a, x[10], 0xbebfbc70u, 23);
        KM_STEP(H, a, b, c, d, x[13], 0x289b7ec6u,  4); KM_STEP(H, d, a, b, c, x[ 0], 0xeaa127fau, 11);
        KM_STEP(H, c, d, a, b, x[ 3], 0xd4ef3085u, 16); KM_STEP(H, b, c, d, a, x[ 6], 0x04881d05u, 23);
        KM_STEP(H, a, b, c, d, x[ 9], 0xd9d4d039u,  4); KM_STEP(H, d, a, b, c, x[12], 0xe6db99e5u, 11);
        KM_STEP(H, c, d, a, b, x[15], 0x1fa27cf8u, 16); KM_STEP(H, b, c, d, a, x[ 2], 0xc4ac5665u, 23);
        KM_STEP(I, a, b, c, d, x[ 0], 0xf4292244u,  6); KM_STEP(I, d, a, b, c, x[ 7], 0x432aff97u, 10);
        KM_STEP(I, c, d, a, b, x[14], 0xab9423a7u, 15); KM_STEP(I, b, c, d, a, x[ 5], 0xfc93a039u, 21);
        KM_STEP(I, a, b, c, d, x[12], 0x655b59c3u,  6); KM_STEP(I, d, a, b, c, x[ 3], 0x8f0ccc92u, 10);
        KM_STEP(I, c, d, a, b, x[10], 0xffeff47du, 15); KM_STEP(I, b, c, d, a, x[ 1], 0x85845dd1u, 21);
        KM_STEP(I, a, b, c, d, x[ 8], 0x6fa87e4fu,  6); KM_STEP(I, d, a, b, c, x[15], 0xfe2ce6e0u, 10);
        KM_STEP(I, c, d, a, b, x[ 6], 0xa3014314u, 15); KM_STEP(I, b, c, d, a, x[13], 0x4e0811a1u, 21);
        KM_STEP(I, a, b, c, d, x[ 4], 0xf7537e82u,  6); KM_STEP(I, d, a, b, c, x[11], 0xbd3af235u, 10);
        KM_STEP(I, c, d, a, b, x[ 2], 0x2ad7d2bbu, 15); KM_STEP(I, b, c, d, a, x[ 9], 0xeb86d391u, 21);
        st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    }

    static uint32_t km_md5_word0(const unsigned char *data, size_t len) {
        uint32_t st[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
        unsigned char tail[128];
        size_t full = len & ~(size_t)63, rest = len - full, padded, i;
        uint64_t bits = (uint64_t)len * 8;
        for (i = 0; i < full; i += 64) km_block(st, data + i);
        memcpy(tail, data + full, rest);
        tail[rest] = 0x80;
        padded = rest < 56 ? 64 : 128;
        memset(tail + rest + 1, 0, padded - rest - 1 - 8);
        for (i = 0; i < 8; i++) tail[padded - 8 + i] = (unsigned char)(bits >> (8 * i));
        km_block(st, tail);
        if (padded == 128) km_block(st, tail + 64);
        return st[0];
    }
    """
    uint32_t km_md5_word0(const unsigned char *data, size_t length) nogil

POINT_MAX = 0xFFFFFFFF


cdef inline uint32_t _hash_bytes(bytes key):
    if key is None:
        raise TypeError("key must be bytes, not NoneType")
    return km_md5_word0(<const unsigned char *>PyBytes_AS_STRING(key),
                        <size_t>PyBytes_GET_SIZE(key))


def key_hash(key):
    """First 4 bytes of md5(key), little-endian: the key's position on the continuum."""
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    return _hash_bytes(key)


cdef class Continuum:
    """Sorted distinct points, each owned by a server index; lookups by key or by hash."""

    cdef uint32_t *_points
    cdef int32_t *_owners
    cdef Py_ssize_t _size
    cdef int _servers

    def __cinit__(self, points, owners):
        self._points = NULL
        self._owners = NULL
        self._size = 0

    def __init__(self, points, owners):
        cdef Py_ssize_t i, size = len(points)
        cdef long long previous = -1
        if size != len(owners):
            raise ValueError("points and owners differ in length")
        point_list = list(points)
        owner_list = list(owners)
        for i in range(size):
            if not previous < point_list[i] <= POINT_MAX:
                raise ValueError("points must be strictly ascending 32-bit values")
            if owner_list[i] < 0:
                raise ValueError("owners must be >= 0")
            if owner_list[i] > 0x7FFFFFFF:
                raise OverflowError("owner index too large")
            previous = point_list[i]
        self._points = <uint32_t *>PyMem_Malloc(max(size, 1) * sizeof(uint32_t))
        self._owners = <int32_t *>PyMem_Malloc(max(size, 1) * sizeof(int32_t))
        if self._points == NULL or self._owners == NULL:
            raise MemoryError()
        for i in range(size):
            self._points[i] = <uint32_t>point_list[i]
            self._owners[i] = <int32_t>owner_list[i]
        self._size = size
        self._servers = len(set(owner_list))

    def __dealloc__(self):
        PyMem_Free(self._points)
        PyMem_Free(self._owners)

    def __len__(self):
        return self._size

    @property
    def servers(self):
        """How many distinct owners hold at least one point."""
        return self._servers

    cdef inline Py_ssize_t _index(self, uint32_t hash_value) except -1:
        cdef Py_ssize_t low = 0, high = self._size, middle
        if high == 0:
            raise LookupError("empty continuum")
        while low < high:
            middle = (low + high) >> 1
            if self._points[middle] < hash_value:
                low = middle + 1
            else:
                high = middle
        return 0 if low == self._size else low

    def lookup_hash(self, hash_value):
        """Owner of the first point >= hash_value, wrapping around (0 <= hash_value < 2**32)."""
        if not 0 <= hash_value <= POINT_MAX:
            raise ValueError("hash must be a 32-bit unsigned value")
        return self._owners[self._index(<uint32_t>hash_value)]

    def lookup(self, bytes key):
        """Owner of `key`: `lookup_hash(key_hash(key))`."""
        return self._owners[self._index(_hash_bytes(key))]

    def lookup_many(self, keys):
        """`[lookup(k) for k in keys]`."""
        cdef list result = []
        cdef bytes key
        for key in keys:
            result.append(self._owners[self._index(_hash_bytes(key))])
        return result

    def successors(self, bytes key, Py_ssize_t n):
        """The first min(n, servers) distinct owners met walking the ring from key's point."""
        cdef Py_ssize_t i, want
        cdef int32_t owner
        cdef list found = []
        if n < 0:
            raise ValueError("n must be >= 0")
        i = self._index(_hash_bytes(key))
        want = min(n, self._servers)
        while len(found) < want:
            owner = self._owners[i]
            if owner not in found:
                found.append(owner)
            i = i + 1 if i + 1 < self._size else 0
        return found
