"""The keydir: key -> Location of every live key, compact in memory, ordered for scans.

Strategy (an LSM of the index, in memory):
- `base` is one immutable PackedRun (packed.py): most keys, about 20 bytes each beyond the
  key itself, no Python object per key.
- `active` is a small SortedDict of recent changes: key -> Location, or None for a deleted
  key (a tombstone that hides the key in older layers).
- When `active` reaches `delta_limit` keys (DELTA_MIN_KEYS or 1/DELTA_RATIO of the base,
  whichever is more), it is frozen and merged with the base into a new run by a generator
  that advances one small step every STEP_EVERY changes: a request never waits for a whole
  merge. While it runs, reads look at active, then the frozen delta, then the old base.
  Should active grow to HARD_FACTOR times its limit first, the merge is finished at once.
- Reads: a dict lookup in each delta, then a bisect of the base's sparse index (in C) and a
  short binary search. Scans merge the three layers in key order, newest first on ties.
- `view()` is a frozen copy for snapshots: the runs are shared (never changed), only the
  active delta is copied.
- After a merge the freed heap pages go back to the kernel (memory.py), or the old runs'
  buffers would stay in the process's RSS.
Not thread-safe: the engine calls it under its lock.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict

from shardstore.engine.memory import trim_heap
from shardstore.engine.packed import EMPTY_RUN, Location, PackedRun, RunBuilder, build_run

__all__ = ["DELTA_MIN_KEYS", "DELTA_RATIO", "Keydir", "KeydirView"]

DELTA_MIN_KEYS = 2048  # the active delta is merged once it holds this many keys ...
DELTA_RATIO = 64  # ... or 1/DELTA_RATIO of the base, whichever is more
HARD_FACTOR = 4  # active this many times its limit: finish the running merge now
STEP_EVERY = 16  # changes between two merge steps
STEP_KEYS = 64  # delta keys merged per step
STEP_COPY = 8192  # base entries copied per step
SORTED_SLOT_BYTES = 40  # a delta key's share of a SortedDict: dict slot, list slot, index
_MISSING = object()

Delta = SortedDict  # bytes -> Location | None


class KeydirView:
    """A frozen keydir: what it held when `Keydir.view` was called, whatever happens next."""

    def __init__(self, base: PackedRun, deltas: tuple[Delta, ...]) -> None:
        self._base = base
        self._deltas = deltas  # newest first

    def items(self, start: bytes = b"", end: bytes | None = None, *,
              after: bool = False) -> Iterator[tuple[bytes, Location]]:
        """Live (key, Location) with start <= key < end (start < key with `after`), in order."""
        return _merged(self._base, self._deltas, start, end, after)


class Keydir:
    """key -> Location for every live key; see the module header.

    `get`, `put`, `pop`, `replace_if`, `items`, `len` keep the contract of a sorted dict;
    `delta_min` and `step_every` (default: the module's DELTA_MIN_KEYS and STEP_EVERY, read
    when the keydir is made) exist so tests can make merges frequent.
    """

    def __init__(self, base: PackedRun = EMPTY_RUN, *, delta_min: int | None = None,
                 step_every: int | None = None) -> None:
        self._base = base
        self._active: Delta = SortedDict()
        self._frozen: Delta | None = None
        self._merge: Iterator[PackedRun | None] | None = None
        self._count = len(base)
        self._delta_min = DELTA_MIN_KEYS if delta_min is None else delta_min
        self._step_every = STEP_EVERY if step_every is None else step_every
        self._changes = 0
        self.merges = 0

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, Location]], **options: int) -> Keydir:
        """A keydir of `items` given in strictly increasing key order (built packed)."""
        return cls(build_run(iter(items)), **options)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes) -> Location | None:
        """The Location of a live key, or None."""
        loc = self._active.get(key, _MISSING)
        if loc is not _MISSING:
            return loc  # type: ignore[return-value]
        if self._frozen is not None:
            loc = self._frozen.get(key, _MISSING)
            if loc is not _MISSING:
                return loc  # type: ignore[return-value]
        return self._base.get(key)

    def __len__(self) -> int:
        return self._count

    def items(self, start: bytes = b"", end: bytes | None = None, *,
              after: bool = False) -> Iterator[tuple[bytes, Location]]:
        """Live (key, Location) with start <= key < end (start < key with `after`), in key
        order. Do not change the keydir while iterating (use `view` for that)."""
        return _merged(self._base, self._deltas(), start, end, after)

    def view(self) -> KeydirView:
        """A frozen copy for snapshots: shares the runs, copies the small active delta."""
        return KeydirView(self._base, (self._active.copy(), *self._deltas()[1:]))

    def _deltas(self) -> tuple[Delta, ...]:
        return (self._active,) if self._frozen is None else (self._active, self._frozen)

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: bytes, loc: Location) -> Location | None:
        """Set `key` to `loc`; return its previous Location (None if it was not live)."""
        old = self.get(key)
        self._active[key] = loc
        if old is None:
            self._count += 1
        self._changed()
        return old

    def pop(self, key: bytes) -> Location | None:
        """Delete `key`; return its Location (None if it was not live)."""
        old = self.get(key)
        if old is not None:
            self._active[key] = None
            self._count -= 1
            self._changed()
        return old

    def replace_if(self, key: bytes, expected: Location, loc: Location) -> bool:
        """Set `key` to `loc` only if it is live at `expected` (compaction's swap)."""
        if self.get(key) != expected:
            return False
        self._active[key] = loc
        self._changed()
        return True

    # -- merging -------------------------------------------------------------------------------

    @property
    def delta_limit(self) -> int:
        """Keys in the active delta that start a merge."""
        return max(self._delta_min, len(self._base) // DELTA_RATIO)

    def _changed(self) -> None:
        self._changes += 1
        if self._changes >= self._step_every:
            self._changes = 0
            self.maintain()

    def maintain(self) -> None:
        """One step of the running merge, or start one if the active delta is full."""
        if self._merge is None:
            if len(self._active) >= self.delta_limit:
                self._frozen, self._active = self._active, SortedDict()
                self._merge = _merge_steps(self._base, self._frozen)
            return
        self._step()
        if self._merge is not None and len(self._active) >= HARD_FACTOR * self.delta_limit:
            self.flush()

    def _step(self) -> None:
        assert self._merge is not None
        done = next(self._merge)
        if done is not None:
            self._base, self._frozen, self._merge = done, None, None
            self.merges += 1
            trim_heap()  # the old run's buffers were freed just now

    def flush(self) -> None:
        """Finish the running merge, then merge the active delta too (tests, bulk loads)."""
        for _ in range(2):
            if self._merge is None and self._active:
                self._frozen, self._active = self._active, SortedDict()
                self._merge = _merge_steps(self._base, self._frozen)
            while self._merge is not None:
                self._step()

    # -- accounting ----------------------------------------------------------------------------

    def nbytes(self) -> int:
        """An estimate of the bytes the keydir holds (runs exact, deltas per entry)."""
        size = self._base.nbytes()
        for delta in self._deltas():
            size += sys.getsizeof(delta) + len(delta) * SORTED_SLOT_BYTES
            for key, loc in delta.items():
                size += sys.getsizeof(key) + (0 if loc is None else _loc_bytes(loc))
        return size

    def stats(self) -> dict[str, int]:
        """keydir_bytes, keydir_key_bytes (the keys' own bytes), keydir_delta_keys,
        keydir_merges."""
        deltas = self._deltas()
        key_bytes = len(self._base.keys) + sum(len(k) for d in deltas for k in d)
        return {"keydir_bytes": self.nbytes(), "keydir_key_bytes": key_bytes,
                "keydir_delta_keys": sum(len(d) for d in deltas),
                "keydir_merges": self.merges}


def _loc_bytes(loc: Location) -> int:
    """A Location tuple and the int objects it owns (small ints are shared)."""
    return sys.getsizeof(loc) + sum(sys.getsizeof(v) for v in loc if v > 256)


def _merge_steps(base: PackedRun, frozen: Delta) -> Iterator[PackedRun | None]:
    """Merge `frozen` into `base`, yielding None after each bounded step, then the new run.

    Frozen keys win over base keys; tombstones drop the key.
    """
    out = RunBuilder()
    keys = list(frozen.keys())
    pos = 0
    for start in range(0, len(keys), STEP_KEYS):
        for key in keys[start:start + STEP_KEYS]:
            i = base.bisect_left(key, pos)
            if i - pos > STEP_COPY:
                yield from _copy(out, base, pos, i)
            elif i > pos:
                out.extend_from(base, pos, i)
            pos = i
            if pos < len(base) and base.key_at(pos) == key:
                pos += 1
            loc = frozen[key]
            if loc is not None:
                out.add(key, loc)
        yield None
    yield from _copy(out, base, pos, len(base))
    yield out.finish()


def _copy(out: RunBuilder, base: PackedRun, i: int, j: int) -> Iterator[None]:
    """Copy base[i:j] to `out`, yielding between pieces of STEP_COPY entries."""
    while j - i > STEP_COPY:
        out.extend_from(base, i, i + STEP_COPY)
        i += STEP_COPY
        yield None
    out.extend_from(base, i, j)


def _merged(base: PackedRun, deltas: tuple[Delta, ...], start: bytes, end: bytes | None,
            after: bool) -> Iterator[tuple[bytes, Location]]:
    """The live entries of the layers (deltas newest first, then base) in key order."""
    inclusive = (not after, False)
    sources = [_delta_entries(d, rank, d.irange(start, end, inclusive=inclusive))
               for rank, d in enumerate(deltas)]
    i = base.bisect_left(start)
    if after and i < len(base) and base.key_at(i) == start:
        i += 1
    sources.append(_base_entries(base, i, end, len(deltas)))
    previous = None
    for key, _rank, loc in heapq.merge(*sources):
        if key == previous:
            continue
        previous = key
        if loc is not None:
            yield key, loc


def _delta_entries(delta: Delta, rank: int,
                   keys: Iterable[bytes]) -> Iterator[tuple[bytes, int, Location | None]]:
    for key in keys:
        yield key, rank, delta[key]


def _base_entries(base: PackedRun, i: int, end: bytes | None,
                  rank: int) -> Iterator[tuple[bytes, int, Location | None]]:
    for key, loc in base.iter_from(i):
        if end is not None and key >= end:
            return
        yield key, rank, loc

