"""A shard's fences: the key sets its state machine refuses, kept in its own engine; sans I/O.

Strategy: when a move takes keys out of a shard, the shard's log gets a freeze entry; from
that entry on, every replica refuses client reads and writes of those keys (a write is
refused when it is applied, so one that raced the freeze is never acknowledged by this
shard). The fence stays after the move ends: a node whose slot map is stale still sends
requests for those keys here, and they are refused by what this shard's own log says,
never by a clock. A move that brings keys back in lifts the fence for them (after the
copy, before the slot map names this shard their owner).

A move's entries may come twice (a resumed move) or late (a coordinator that lost the
configuration group's leadership and has not noticed yet), so the fences also remember
which moves were ever frozen here (`frozen`: a second freeze of one is a no-op, even once
lifted) and into which moves' copies were closed by their lift (`closed`: a late copy of
one is refused, so it can never overwrite a write made after the move ended). A purge
deletes only keys the move's fence still holds here (a key set moved back in since is
not touched). Both id sets grow by one small integer per move.

The other side of a move is tracked too (`imports`): how far the copy into this shard has
walked the source's keys (the walk is in key order; each copy entry names where its batch
ended). A copy entry writes only the rows past that point, so a resumed or late copy never
overwrites a key written here since by a client under ASKING; and such a command is taken
only for keys the walk has passed (`unimported`), so it never runs on a key whose value is
still on its way (Redis Cluster's ASK/ASKING, shardstore/asking.py).

A move cancelled before it ended is rolled back with two more lift modes (the entry's last
item): MODE_ABORT on the target closes the copy and fences the key set there under the
move's id (so the keys copied in are refused, and a purge, as on a source, deletes them);
it is refused (AbortRefused) once the target has applied a write under ASKING for the move,
since purging would lose it (the move then goes on); MODE_UNFREEZE on the source drops the
move's own fence and marks the move frozen (a late freeze of it is a no-op).

FLUSHALL would break a move under way (the source's frozen keys are the copy's source;
the target's copied keys are the move's, not yet the target's to drop), so it is refused
with TRYAGAIN (`flush_refusal`) while a copy into this shard is open or a fence here still
holds a key of this shard (a move's keys not purged yet).

A slot fence holds slot-addressed keys only and a positions fence rows of a range table
only; which one a request's keys are is what the node that took the request routed it
as, carried in the entry (shardstore/writes.py), so every replica decides alike.

The fences are part of the shard's durable state: they live in the engine under the
reserved key FENCES_KEY, written in the same atomic batch as the entry that changed them
(so a restart or a snapshot carries them with the data, with no second file to keep in
step). `HiddenKV` is the engine as commands see it: the reserved key is invisible to
reads, scans and counts, and a command can never write it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from shardstore.keysets import KIND_POSITIONS, KIND_SLOTS, KeySet

__all__ = ["ERR_ABORT_REFUSED", "ERR_FENCED", "ERR_FLUSH_MOVING", "ERR_IMPORTING", "FENCES_KEY",
           "MODE_ABORT", "MODE_UNFREEZE", "RESERVED_PREFIX", "AbortRefused", "Fences",
           "HiddenKV", "Import", "fenced_move"]

RESERVED_PREFIX = b"\xff\xffshardstore:"  # sorts after every printable key
FENCES_KEY = RESERVED_PREFIX + b"fences"
ERR_FENCED = ("TRYAGAIN keys of this request are moving or moved to another shard "
              "(move {}); retry")
ERR_IMPORTING = ("TRYAGAIN keys of this request are still being copied into this shard "
                 "(move {}); retry")
ERR_ABORT_REFUSED = ("the target of move {} has applied {} writes under ASKING: the move "
                     "cannot be rolled back without losing them")
ERR_FLUSH_MOVING = ("TRYAGAIN move {} is moving keys of this shard; a flush waits for it "
                    "to end; retry")
FLUSH_WALK_KEYS = 1024  # keys read at a time when a flush looks for fenced keys
MODE_ABORT = "abort"
MODE_UNFREEZE = "unfreeze"
KEEP_IMPORTS = 16  # finished imports remembered (ASKING after the walk, before the map)
_FENCED_RE = re.compile(r"^TRYAGAIN keys of this request are moving or moved to another "
                        r"shard \(move (\d+)\); retry$")


def fenced_move(message: str) -> int | None:
    """The move id of a fence's refusal text (ERR_FENCED), None for any other text."""
    found = _FENCED_RE.match(message)
    return None if found is None else int(found.group(1))


class AbortRefused(ValueError):
    """A roll-back refused by the target (ERR_ABORT_REFUSED)."""


@dataclass
class Import:
    """How far the copy of one move into this shard got: `started` once a batch came,
    `cursor` the last source key walked, `walked` once the walk is over (or the copy
    was closed by its lift); `asked`: writes applied under ASKING; `aborted`: rolled
    back (MODE_ABORT)."""

    keys: KeySet
    started: bool = False
    cursor: bytes | None = None
    walked: bool = False
    asked: int = 0
    aborted: bool = False

    def passed(self, key: bytes) -> bool:
        """Whether the walk has gone past `key` (its value, if any, is here)."""
        if self.aborted:
            return False
        return self.walked or (self.started and self.cursor is not None
                               and key <= self.cursor)

    def to_wire(self) -> list[Any]:
        return [self.keys.to_wire(), self.started, self.cursor, self.walked, self.asked,
                self.aborted]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Import:
        keys, started, cursor, walked, *rest = wire
        asked, aborted = (rest + [0, False])[:2]
        return cls(KeySet.from_wire(keys), bool(started), cursor, bool(walked), int(asked),
                   bool(aborted))


class Fences:
    """The fenced key sets of one shard: (move id, KeySet) pairs (a range fence cut in two
    by a move back in keeps both halves under its id)."""

    def __init__(self, fenced: Iterable[tuple[int, KeySet]] = (),
                 frozen: Iterable[int] = (), closed: Iterable[int] = (),
                 imports: dict[int, Import] | None = None) -> None:
        self.fenced: list[tuple[int, KeySet]] = list(fenced)
        self.frozen: set[int] = set(frozen)  # moves ever frozen here
        self.closed: set[int] = set(closed)  # moves whose copy into here is over
        self.imports: dict[int, Import] = dict(imports or {})  # copies into here, by move

    @classmethod
    def load(cls, kv: Any) -> Fences:
        """The fences stored in `kv` (none if it holds no FENCES_KEY)."""
        found = kv.get(FENCES_KEY)
        if found is None:
            return cls()
        fenced, frozen, closed, *rest = msgpack.unpackb(found[0])
        imports = {int(mid): Import.from_wire(w) for mid, w in rest[0]} if rest else {}
        return cls(((int(mid), KeySet.from_wire(ks)) for mid, ks in fenced), frozen, closed,
                   imports)

    def record(self) -> tuple[bytes, bytes | None, int]:
        """The engine write that stores these fences (a delete when there are none)."""
        if not (self.fenced or self.frozen or self.closed or self.imports):
            return (FENCES_KEY, None, 0)
        wire: list[Any] = [[[mid, ks.to_wire()] for mid, ks in self.fenced],
                           sorted(self.frozen), sorted(self.closed)]
        if self.imports:
            wire.append([[mid, imp.to_wire()] for mid, imp in sorted(self.imports.items())])
        return (FENCES_KEY, msgpack.packb(wire), 0)

    def add(self, move_id: int, keys: KeySet) -> bool:
        """Fence `keys` for move `move_id`; False if that move was frozen here before (a
        resumed or late freeze: nothing changes)."""
        if move_id in self.frozen:
            return False
        self.frozen.add(move_id)
        self.fenced.append((move_id, keys))
        return True

    def lift(self, move_id: int, keys: KeySet, mode: str | None = None) -> bool:
        """Close move `move_id`'s copy into this shard and unfence `keys` from every
        fence; False if the copy was closed before. `mode` MODE_ABORT or MODE_UNFREEZE:
        a roll-back's step instead (the module header, `abort`, `unfreeze`)."""
        if mode == MODE_ABORT:
            return self.abort(move_id, keys)
        if mode == MODE_UNFREEZE:
            return self.unfreeze(move_id)
        if mode is not None:
            raise ValueError(f"unknown lift mode {mode!r}")
        if move_id in self.closed:
            return False
        self.closed.add(move_id)
        self.imports.setdefault(move_id, Import(keys)).walked = True
        self._prune_imports()
        kept: list[tuple[int, KeySet]] = []
        for mid, fenced in self.fenced:
            kept.extend((mid, piece) for piece in fenced.minus(keys))
        self.fenced = kept
        return True

    def abort(self, move_id: int, keys: KeySet) -> bool:
        """Roll back move `move_id`'s copy into this shard: close it and fence `keys`
        here under its id; False if done before; AbortRefused once a write under ASKING
        was applied for it."""
        imp = self.imports.setdefault(move_id, Import(keys))
        if imp.aborted:
            return False
        if imp.asked:
            raise AbortRefused(ERR_ABORT_REFUSED.format(move_id, imp.asked))
        imp.aborted = True
        self.closed.add(move_id)
        self.fenced.append((move_id, keys))
        return True

    def unfreeze(self, move_id: int) -> bool:
        """Drop move `move_id`'s own fence here and mark it frozen (a late freeze is a
        no-op); False if nothing changed."""
        kept = [(mid, ks) for mid, ks in self.fenced if mid != move_id]
        changed = len(kept) != len(self.fenced) or move_id not in self.frozen
        self.fenced = kept
        self.frozen.add(move_id)
        return changed

    def count_asking(self, keys: Iterable[bytes]) -> None:
        """A write under ASKING on `keys` (each passed: `unimported`) was applied."""
        for key in keys:
            covering = [mid for mid, imp in self.imports.items() if key in imp.keys]
            if covering:
                self.imports[max(covering)].asked += 1

    def copy_rows(self, move_id: int, keys: KeySet, rows: list[tuple[bytes, bytes, int]],
                  start: bytes | None, end: bytes | None
                  ) -> list[tuple[bytes, bytes, int]]:
        """The rows of a copy batch of move `move_id` (its walk went on after `start`, None:
        from the first key, and stopped at `end`, None: the walk is over) to write here:
        those past what earlier batches walked. Records the walk's progress."""
        imp = self.imports.setdefault(move_id, Import(keys))
        if imp.walked:
            return []
        if imp.started:
            assert imp.cursor is not None
            rows = [row for row in rows if row[0] > imp.cursor]
        contiguous = start is None or (imp.started and imp.cursor is not None
                                       and start <= imp.cursor)
        if contiguous:  # a batch that leaves no gap behind it moves the walk on
            if end is None:
                imp.walked = True
            elif not imp.started or imp.cursor is None or end > imp.cursor:
                imp.cursor = end
            imp.started = True
        return rows

    def unimported(self, keys: Iterable[bytes]) -> int | None:
        """For a command under ASKING: the id of a move whose copy into here has not
        passed one of `keys` yet (0: no copy into here holds the key), or of a later move
        that fenced it here again, None if the copy of every key is here (a fence of an
        earlier move out of here does not count: the copy supersedes it)."""
        for key in keys:
            covering = [(mid, imp) for mid, imp in self.imports.items() if key in imp.keys]
            if not covering:
                return 0
            mid, imp = max(covering, key=lambda pair: pair[0])
            if not imp.passed(key):
                return mid
            later = [fmid for fmid, fenced in self.fenced if fmid > mid and key in fenced]
            if later:  # moved out again since: that fence wins
                return max(later)
        return None

    def _prune_imports(self) -> None:
        done = sorted(mid for mid, imp in self.imports.items() if imp.walked or imp.aborted)
        for mid in done[:-KEEP_IMPORTS]:
            del self.imports[mid]

    def flush_refusal(self, kv: Any) -> int | None:
        """For FLUSHALL on this shard (its store `kv`): the id of a move it must wait for
        (see the module header), None if none."""
        for mid, imp in self.imports.items():
            if imp.started and mid not in self.closed and not imp.aborted:
                return mid
        if not self.fenced:
            return None
        cursor = b""
        while True:
            keys = kv.keys_after(cursor, FLUSH_WALK_KEYS)
            for key in keys:
                for mid, fenced in self.fenced:
                    if key in fenced:
                        return mid
            if len(keys) < FLUSH_WALK_KEYS:
                return None
            cursor = keys[-1]

    def holds_key(self, move_id: int, key: bytes) -> bool:
        """Whether move `move_id`'s fence here still holds `key`."""
        return any(mid == move_id and key in fenced for mid, fenced in self.fenced)

    def holds(self, move_id: int) -> bool:
        return any(mid == move_id for mid, _ in self.fenced)

    def refusing(self, keys: Iterable[bytes], ranged: bool = False) -> int | None:
        """The id of a move whose fence holds one of `keys`, None if none does. `ranged`:
        the request was routed as rows of a range table (only fences of range rows and
        key ranges apply), else by slot (only fences of slots and key ranges apply)."""
        if not self.fenced:
            return None
        skip = KIND_SLOTS if ranged else KIND_POSITIONS
        for key in keys:
            for mid, fenced in self.fenced:
                if fenced.kind != skip and key in fenced:
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
