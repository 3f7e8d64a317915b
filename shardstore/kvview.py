"""The store a command runs against: the KV protocol, an in-memory KV, and the view that
judges expiry and gathers one command's writes.

`KV` is what the command layer needs from a store (shardstore.engine.Engine has it;
`DictKV` is a dict-backed one for tests). A command never calls the KV's write itself: it
runs against a `View` that reads through the KV, hides keys whose expiry time is at or
before `now_ms` (lazy expiry: an expired key is invisible to every command), and keeps the
command's writes in order. The command layer then hands the View's batch to `KV.write`
exactly once, so one command is one atomic engine append and one Raft entry's effect.

A write View also deletes each expired key it looks at (Redis deletes on write access the
same way); since `now_ms` is stamped by the leader into the entry, every replica deletes
the same keys.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

from shardstore.values import Entry, decode

Batch = Sequence[tuple[bytes, bytes | None, int]]


class KV(Protocol):
    """A key-value store of (value, expire_at_ms) records in key order."""

    def get(self, key: bytes) -> tuple[bytes, int] | None: ...

    def write(self, batch: Batch, applied_index: int | None = None) -> None: ...

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]: ...

    def count(self) -> int: ...

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]: ...


class DictKV:
    """An in-memory KV: a dict and a sorted key list. `writes` counts write calls (tests
    check that every command writes exactly once)."""

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.sorted_keys: list[bytes] = []
        self.applied_index = 0
        self.writes = 0

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """The record of `key`, or None."""
        return self.data.get(key)

    def write(self, batch: Batch, applied_index: int | None = None) -> None:
        """Apply every (key, value or None, expire_at_ms) in order; remember applied_index."""
        self.writes += 1
        for key, value, expire_at_ms in batch:
            if value is None:
                if self.data.pop(key, None) is not None:
                    del self.sorted_keys[bisect.bisect_left(self.sorted_keys, key)]
                continue
            if key not in self.data:
                bisect.insort(self.sorted_keys, key)
            self.data[key] = (value, expire_at_ms)
        if applied_index is not None:
            self.applied_index = applied_index

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        """Records with start <= key < end, in key order, at most `limit`."""
        first = bisect.bisect_left(self.sorted_keys, start)
        last = len(self.sorted_keys) if end is None else bisect.bisect_left(self.sorted_keys, end)
        if limit is not None:
            last = min(last, first + limit)
        return [(k, *self.data[k]) for k in self.sorted_keys[first:last]]

    def count(self) -> int:
        """How many keys are stored (expired ones not yet deleted included)."""
        return len(self.data)

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        """Up to `limit` keys strictly after `cursor`, in key order (as the engine's: the
        empty key is never after anything; see walk_keys)."""
        first = bisect.bisect_right(self.sorted_keys, cursor)
        return self.sorted_keys[first : first + limit]


def walk_keys(kv: KV, after: bytes | None, limit: int) -> list[bytes]:
    """Up to `limit` stored keys in key order, strictly after `after`, or from the very
    first (the empty key included, which KV.keys_after never returns) when `after` is None."""
    if after is not None:
        return kv.keys_after(after, limit)
    head = [b""] if kv.get(b"") is not None else []
    return head + kv.keys_after(b"", limit - len(head)) if limit > len(head) else head


class View:
    """One command's window on a KV at time `now_ms`: reads see its own writes, expired keys
    are absent. `writable` Views gather writes into `batch()`; read Views refuse them."""

    def __init__(self, kv: KV, now_ms: int, *, writable: bool) -> None:
        self.kv = kv
        self.now_ms = now_ms
        self.writable = writable
        self.pending: dict[bytes, tuple[bytes | None, int]] = {}

    def lookup(self, key: bytes) -> Entry | None:
        """The live entry of `key`, or None (missing, deleted or expired)."""
        if key in self.pending:
            value, expire_at_ms = self.pending[key]
            return None if value is None else decode(value, expire_at_ms)
        record = self.kv.get(key)
        if record is None:
            return None
        value, expire_at_ms = record
        if self.expired(expire_at_ms):
            if self.writable:
                self.pending[key] = (None, 0)
            return None
        return decode(value, expire_at_ms)

    def expired(self, expire_at_ms: int) -> bool:
        """Whether a record with this expiry is dead at now_ms."""
        return expire_at_ms != 0 and expire_at_ms <= self.now_ms

    def put(self, key: bytes, stored: bytes, expire_at_ms: int = 0) -> None:
        """Set `key` to a stored value (tag byte first) with an expiry (0 = none)."""
        assert self.writable, "a read command tried to write"
        self.pending[key] = (stored, expire_at_ms)

    def delete(self, key: bytes) -> None:
        """Delete `key`; a key the store does not hold adds nothing to the batch."""
        assert self.writable, "a read command tried to write"
        if key in self.pending or self.kv.get(key) is not None:
            self.pending[key] = (None, 0)

    def batch(self) -> list[tuple[bytes, bytes | None, int]]:
        """The gathered writes, one per key, in the order keys were first written."""
        return [(key, value, expire) for key, (value, expire) in self.pending.items()]
