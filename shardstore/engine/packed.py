"""Packed sorted runs: the immutable, compact half of the keydir (keydir.py holds the rest).

Strategy: a run holds n keys in key order without one Python object per key.
- Every key is concatenated into one `bytes`; `koff` (an array of n + 1 offsets) cuts it.
- A location (segment id, value offset, value length, expire_at_ms, seq) is spread over
  five columns, each an `array` of the narrowest type that holds its values ('I', widened to
  'Q' when a value needs it), or None when every value is 0 (most keys never expire).
- `sparse` keeps every SPARSE_STRIDE-th key as a bytes object: `bisect` on it (in C) finds
  the block, a short binary search inside the block finds the key.
A run is never changed after `RunBuilder.finish`, so views and merges may share it freely.
`RunBuilder` appends keys in increasing order: one at a time (`add`) or a whole range of
another run at once (`extend_from`, slices of arrays and bytes, no loop per key in Python).
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import repeat
from operator import add

__all__ = ["COLUMNS", "SPARSE_STRIDE", "Location", "PackedRun", "RunBuilder"]

# A keydir value: (segment id, value offset, value length, expire_at_ms, seq).
Location = tuple[int, int, int, int, int]

COLUMNS = 5  # the fields of a Location, one column each
SPARSE_STRIDE = 32  # keys per block of the sparse index
NARROW = "I"  # a column starts 32-bit ...
WIDE = "Q"  # ... and becomes 64-bit when a value needs it
NARROW_MAX = 2**32 - 1

Column = array | None  # None: every value is 0


class PackedRun:
    """An immutable sorted run of (key, Location); see the module header.

    Invariant: keys are strictly increasing; `koff[i]:koff[i + 1]` is key i in `keys`;
    `sparse[j]` is key j * SPARSE_STRIDE.
    """

    __slots__ = ("cols", "keys", "koff", "sparse")

    def __init__(self, keys: bytes, koff: array, cols: tuple[Column, ...],
                 sparse: list[bytes]) -> None:
        self.keys = keys
        self.koff = koff
        self.cols = cols
        self.sparse = sparse

    def __len__(self) -> int:
        return len(self.koff) - 1

    def key_at(self, i: int) -> bytes:
        """The i-th key (0 <= i < len)."""
        koff = self.koff
        return self.keys[koff[i]:koff[i + 1]]

    def loc_at(self, i: int) -> Location:
        """The i-th Location (0 <= i < len)."""
        s, o, n, e, q = self.cols
        return (s[i] if s is not None else 0, o[i] if o is not None else 0,
                n[i] if n is not None else 0, e[i] if e is not None else 0,
                q[i] if q is not None else 0)

    def bisect_left(self, key: bytes, lo: int = 0) -> int:
        """The first index >= lo whose key is >= `key` (len if none)."""
        n = len(self)
        block = bisect_left(self.sparse, key)
        low = max(lo, (block - 1) * SPARSE_STRIDE if block else 0)
        high = max(low, min(n, block * SPARSE_STRIDE))
        keys, koff = self.keys, self.koff
        while low < high:
            mid = (low + high) // 2
            if keys[koff[mid]:koff[mid + 1]] < key:
                low = mid + 1
            else:
                high = mid
        return low

    def find(self, key: bytes) -> int:
        """The index of `key`, or -1: a bytes.find inside its block, kept only where the
        match starts and ends exactly at a key's boundaries."""
        block = bisect_right(self.sparse, key) - 1
        if block < 0:
            return -1
        koff = self.koff
        lo = block * SPARSE_STRIDE
        hi = min(len(koff) - 1, lo + SPARSE_STRIDE)
        if not key:  # only the first key of the run can be empty
            return 0 if koff[1] == 0 else -1
        end, size = koff[hi], len(key)
        pos = self.keys.find(key, koff[lo], end)
        while pos >= 0:
            i = bisect_right(koff, pos, lo, hi) - 1  # the empty key shares its offset
            if koff[i] == pos and koff[i + 1] - pos == size:
                return i
            pos = self.keys.find(key, pos + 1, end)
        return -1

    def get(self, key: bytes) -> Location | None:
        """The Location of `key`, or None."""
        i = self.find(key)
        return self.loc_at(i) if i >= 0 else None

    def iter_from(self, i: int) -> Iterator[tuple[bytes, Location]]:
        """(key, Location) from index i on, in key order."""
        for j in range(i, len(self)):
            yield self.key_at(j), self.loc_at(j)

    def nbytes(self) -> int:
        """Bytes this run holds: key bytes, offsets, columns and the sparse index."""
        size = sys.getsizeof(self.keys) + self.koff.itemsize * len(self.koff)
        size += sum(c.itemsize * len(c) for c in self.cols if c is not None)
        size += sys.getsizeof(self.sparse) + sum(sys.getsizeof(k) for k in self.sparse)
        return size


EMPTY_RUN = PackedRun(b"", array(NARROW, [0]), (None,) * COLUMNS, [])


class RunBuilder:
    """Builds a PackedRun from keys given in strictly increasing order."""

    def __init__(self) -> None:
        self.keys = bytearray()
        self.koff = array(NARROW, [0])
        self.cols: list[Column] = [None] * COLUMNS
        self.count = 0

    def add(self, key: bytes, loc: Location) -> None:
        """Append one key (greater than every key before) and its Location."""
        self.keys += key
        self._append_offset(len(self.keys))
        for c, value in enumerate(loc):
            col = self.cols[c]
            if col is None:
                if not value:
                    continue
                col = self.cols[c] = array(NARROW, repeat(0, self.count))
            try:
                col.append(value)
            except OverflowError:
                col = self.cols[c] = array(WIDE, col)
                col.append(value)
        self.count += 1

    def _append_offset(self, offset: int) -> None:
        try:
            self.koff.append(offset)
        except OverflowError:
            self.koff = array(WIDE, self.koff)
            self.koff.append(offset)

    def extend_from(self, run: PackedRun, i: int, j: int) -> None:
        """Append keys i..j-1 of `run` (all greater than every key before) in bulk."""
        if i >= j:
            return
        a, b = run.koff[i], run.koff[j]
        shift = len(self.keys) - a
        if self.koff.typecode == NARROW and len(self.keys) + b - a > NARROW_MAX:
            self.koff = array(WIDE, self.koff)
        self.keys += memoryview(run.keys)[a:b]
        self.koff.extend(array(self.koff.typecode, map(add, run.koff[i + 1:j + 1],
                                                       repeat(shift))))
        cols = self.cols
        for c, src in enumerate(run.cols):
            col = cols[c]
            if col is not None and src is not None and col.typecode == src.typecode:
                col.extend(src[i:j])  # the common case, inline
            else:
                self._extend_column(c, src, i, j)
        self.count += j - i

    def _extend_column(self, c: int, src: Column, i: int, j: int) -> None:
        col = self.cols[c]
        if src is None:
            if col is not None:
                col.extend(repeat(0, j - i))
            return
        if col is None:
            col = self.cols[c] = array(src.typecode, repeat(0, self.count))
        elif col.typecode == NARROW and src.typecode == WIDE:
            col = self.cols[c] = array(WIDE, col)
        col.extend(_converted(src[i:j], col.typecode))

    def finish(self) -> PackedRun:
        """The run built so far (the builder must not be used afterwards)."""
        keys = bytes(self.keys)
        koff = self.koff
        sparse = [keys[koff[i]:koff[i + 1]] for i in range(0, self.count, SPARSE_STRIDE)]
        cols = tuple(None if col is None else col[:] for col in self.cols)
        self.keys = bytearray()
        return PackedRun(keys, koff[:], cols, sparse)


def _converted(values: array, typecode: str) -> array:
    return values if values.typecode == typecode else array(typecode, values)


def build_run(items: Iterator[tuple[bytes, Location]] | list[tuple[bytes, Location]]
              ) -> PackedRun:
    """A run of `items`, given in strictly increasing key order."""
    builder = RunBuilder()
    for key, loc in items:
        builder.add(key, loc)
    return builder.finish()
