"""A shard's fences: the key sets its state machine refuses, kept in its own engine; sans I/O.

Strategy: when a move takes keys out of a shard, the shard's log gets a freeze entry; from
that entry on, every replica refuses client reads and writes of those keys (a write is
refused when it is applied, so one that raced the freeze is never acknowledged by this
shard). The fence stays after the move ends: a node whose slot map is stale still sends
requests for those keys here, and they are refused by what this shard's own log says,
never by a clock. A move that brings keys back in lifts the fence for them (after the
copy, before the slot map names this shard their owner).

The fences are part of the shard's durable state: they live in the engine under the
reserved key FENCES_KEY, written in the same atomic batch as the entry that changed them
(so a restart or a snapshot carries them with the data, with no second file to keep in
step). `HiddenKV` is the engine as commands see it: the reserved key is invisible to
reads, scans and counts, and a command can never write it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from shardstore.keysets import KeySet

__all__ = ["ERR_FENCED", "FENCES_KEY", "Fences", "HiddenKV", "RESERVED_PREFIX"]

RESERVED_PREFIX = b"\xff\xffshardstore:"  # sorts after every printable key
FENCES_KEY = RESERVED_PREFIX + b"fences"
ERR_FENCED = ("TRYAGAIN keys of this request are moving or moved to another shard "
              "(move {}); retry")


class Fences:
    """The fenced key sets of one shard: (move id, KeySet) pairs (a range fence cut in two
    by a move back in keeps both halves under its id)."""

    def __init__(self, fenced: Iterable[tuple[int, KeySet]] = ()) -> None:
        self.fenced: list[tuple[int, KeySet]] = list(fenced)

    @classmethod
    def load(cls, kv: Any) -> Fences:
        """The fences stored in `kv` (none if it holds no FENCES_KEY)."""
        found = kv.get(FENCES_KEY)
        if found is None:
            return cls()
        wire = msgpack.unpackb(found[0])
        return cls((int(mid), KeySet.from_wire(ks)) for mid, ks in wire)

    def record(self) -> tuple[bytes, bytes | None, int]:
        """The engine write that stores these fences (a delete when there are none)."""
        if not self.fenced:
            return (FENCES_KEY, None, 0)
        wire = [[mid, ks.to_wire()] for mid, ks in self.fenced]
        return (FENCES_KEY, msgpack.packb(wire), 0)

    def add(self, move_id: int, keys: KeySet) -> bool:
        """Fence `keys` for move `move_id`; False if it was fenced already (a resumed move)."""
        if (move_id, keys) in self.fenced:
            return False
        self.fenced.append((move_id, keys))
        return True

    def lift(self, keys: KeySet) -> bool:
        """Unfence `keys` from every fence; False if none of them was fenced."""
        kept: list[tuple[int, KeySet]] = []
        for mid, fenced in self.fenced:
            kept.extend((mid, piece) for piece in fenced.minus(keys))
        changed = kept != self.fenced
        self.fenced = kept
        return changed

    def holds(self, move_id: int) -> bool:
        return any(mid == move_id for mid, _ in self.fenced)

    def refusing(self, keys: Iterable[bytes]) -> int | None:
        """The id of a move whose fence holds one of `keys`, None if none does."""
        if not self.fenced:
            return None
        for key in keys:
            for mid, fenced in self.fenced:
                if key in fenced:
                    return mid
        return None

    def __bool__(self) -> bool:
        return bool(self.fenced)


def _visible(key: bytes) -> bool:
    return not key.startswith(RESERVED_PREFIX)


class HiddenKV:
    """`kv` without the reserved keys (see the module header); anything else is passed
    through (applied_index, dump, stats, ...)."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return self.kv.get(key) if _visible(key) else None

    def write(self, batch: Sequence[tuple[bytes, bytes | None, int]],
              applied_index: int | None = None) -> None:
        self.kv.write([row for row in batch if _visible(row[0])], applied_index=applied_index)

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        rows = self.kv.scan(start, end, limit)
        kept = [row for row in rows if _visible(row[0])]
        if limit is not None and len(kept) < len(rows):  # one hidden: fill the gap
            rows = self.kv.scan(start, end, limit + len(rows) - len(kept))
            kept = [row for row in rows if _visible(row[0])][:limit]
        return kept

    def count(self) -> int:
        hidden = 1 if self.kv.get(FENCES_KEY) is not None else 0
        return int(self.kv.count()) - hidden

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        keys = self.kv.keys_after(cursor, limit)
        kept = [k for k in keys if _visible(k)]
        if len(kept) < len(keys):  # one hidden: fill the gap
            keys = self.kv.keys_after(cursor, limit + len(keys) - len(kept))
            kept = [k for k in keys if _visible(k)][:limit]
        return kept
