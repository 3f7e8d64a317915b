"""Key sets: what one move carries from a shard to another; sans I/O.

Strategy: a move is generic over the set of keys it moves. Two kinds exist:

- slots: a set of Redis Cluster hash slots (a key belongs by `key_slot`, hash tags
  honoured), what `shardstore admin reshard` moves;
- a key range: the half-open interval [first, end) in byte order (`end` None: no upper
  bound);
- positions: the rows of one range table (its prefix `<table>:`) whose position (a date
  or a Snowflake time: shardstore/table_keys.py) lies in [low, high), what a range
  table's split moves;
- table slots: the rows of one HASH table (its prefix `<table>:`) whose slot is in a set
  of slots, what a HASH table's move to another keyspace carries from one source shard
  to one target shard (shardstore/table_move.py). Its rows are contiguous in key order,
  so its scan bounds are the prefix's, and its checksums can be compared page by page.

Slot and table-slot sets hold slot-addressed keys only, positions sets hold range-table
rows only: the
request's route (shardstore/fences.py) says which a key is, since the table catalog may
differ between nodes but a shard's log must be applied alike everywhere.

A `KeySet` is immutable, hashable and has a msgpack-safe wire form (`to_wire` /
`from_wire`) because it travels in configuration entries, shard log entries and the
node-to-node requests of a move. `minus` removes another set of the same kind (a fence
lifted by a move back in); a positions set never overlaps a set of another kind (a key is
either slot-addressed or belongs to a range table, never both). A table-slots set may
overlap a slots set; the two kinds never move the same slots at once (shardstore/moves.py
and shardstore/table_moves.py refuse it), so `minus` leaves the other kind alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from native.crc16 import SLOT_COUNT, key_slot
from shardstore import table_keys

__all__ = ["ERR_BAD_KEYSET", "KIND_POSITIONS", "KIND_RANGE", "KIND_SLOTS", "KIND_TABLE_SLOTS",
           "KeySet", "format_slots", "parse_slots", "prefix_end"]

KIND_SLOTS = "slots"
KIND_RANGE = "range"
KIND_POSITIONS = "positions"
KIND_TABLE_SLOTS = "tableslots"
ERR_BAD_KEYSET = "bad key set: {!r}"
ERR_SLOT_RANGE = "slot {} is not in 0..16383"
MAX_SLOT_DIGITS = 5
ERR_SLOT_SYNTAX = "bad slot list {!r}: expected numbers or first-last ranges, comma separated"


@dataclass(frozen=True)
class KeySet:
    """A set of keys (see the module header). `slots` for KIND_SLOTS; `first`/`end` for
    KIND_RANGE; `first` (the table's prefix), `order` (its kind of position), `epoch_ms`,
    `low` and `high` for KIND_POSITIONS; `first` (the table's prefix) and `slots` for
    KIND_TABLE_SLOTS."""

    kind: str
    slots: frozenset[int] = frozenset()
    first: bytes = b""
    end: bytes | None = None
    order: str = ""
    epoch_ms: int = 0
    low: int = 0
    high: int = 0

    @classmethod
    def of_slots(cls, slots: Iterable[int]) -> KeySet:
        """The key set of `slots`; ValueError on a slot out of 0..16383."""
        chosen = frozenset(int(s) for s in slots)
        for slot in chosen:
            if not 0 <= slot < SLOT_COUNT:
                raise ValueError(ERR_SLOT_RANGE.format(slot))
        return cls(KIND_SLOTS, slots=chosen)

    @classmethod
    def of_range(cls, first: bytes, end: bytes | None) -> KeySet:
        """The keys k with first <= k < end (end None: no bound)."""
        if end is not None and end <= first:
            raise ValueError(ERR_BAD_KEYSET.format((first, end)))
        return cls(KIND_RANGE, first=bytes(first), end=None if end is None else bytes(end))

    @classmethod
    def of_positions(cls, prefix: bytes, order: str, epoch_ms: int, low: int,
                     high: int) -> KeySet:
        """The rows of the range table with `prefix` whose position is in [low, high)."""
        if high <= low or order not in table_keys.KINDS or not prefix:
            raise ValueError(ERR_BAD_KEYSET.format((prefix, order, low, high)))
        return cls(KIND_POSITIONS, first=bytes(prefix), order=order, epoch_ms=int(epoch_ms),
                   low=int(low), high=int(high))

    @classmethod
    def of_table_slots(cls, prefix: bytes, slots: Iterable[int]) -> KeySet:
        """The rows of the HASH table with `prefix` whose slot is one of `slots`;
        ValueError on no prefix, no slot or a slot out of 0..16383."""
        chosen = cls.of_slots(slots).slots
        if not prefix or not chosen:
            raise ValueError(ERR_BAD_KEYSET.format((prefix, len(chosen))))
        return cls(KIND_TABLE_SLOTS, slots=chosen, first=bytes(prefix))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | bytearray):
            return False
        if self.kind == KIND_SLOTS:
            return key_slot(bytes(key)) in self.slots
        if self.kind == KIND_TABLE_SLOTS:
            return key.startswith(self.first) and key_slot(bytes(key)) in self.slots
        if self.kind == KIND_POSITIONS:
            return self._holds_row(bytes(key))
        return self.first <= key and (self.end is None or key < self.end)

    def _holds_row(self, key: bytes) -> bool:
        if not key.startswith(self.first):
            return False
        try:
            position = table_keys.key_position(self.order, key[len(self.first):],
                                               self.epoch_ms)
        except table_keys.KeyFormatError:
            return False
        return self.low <= position < self.high

    @property
    def empty(self) -> bool:
        return self.kind == KIND_SLOTS and not self.slots

    def scan_bounds(self) -> tuple[bytes, bytes | None]:
        """The key interval an engine scan must walk to find every member (a slot set
        is spread over the whole key order)."""
        if self.kind == KIND_RANGE:
            return self.first, self.end
        if self.kind == KIND_POSITIONS:
            return table_keys.scan_bounds(self.order, self.first, self.low, self.high)
        if self.kind == KIND_TABLE_SLOTS:
            return self.first, prefix_end(self.first)
        return b"", None

    def minus(self, other: KeySet) -> list[KeySet]:
        """This set without `other`'s keys, as zero or more sets of this kind."""
        if other.kind != self.kind:
            return [self]
        if self.kind in (KIND_SLOTS, KIND_TABLE_SLOTS):
            if other.first != self.first:
                return [self]
            rest = self.slots - other.slots
            return [KeySet(self.kind, slots=rest, first=self.first)] if rest else []
        if self.kind == KIND_POSITIONS:
            return self._minus_positions(other)
        pieces = []
        if self.first < other.first:
            end = other.first if self.end is None else min(self.end, other.first)
            pieces.append(KeySet(KIND_RANGE, first=self.first, end=end))
        if other.end is not None and (self.end is None or other.end < self.end):
            first = max(self.first, other.end)
            if self.end is None or first < self.end:
                pieces.append(KeySet(KIND_RANGE, first=first, end=self.end))
        return pieces

    def _minus_positions(self, other: KeySet) -> list[KeySet]:
        if (other.first, other.order, other.epoch_ms) != (self.first, self.order,
                                                           self.epoch_ms):
            return [self]
        pieces = []
        if self.low < other.low:
            pieces.append((self.low, min(self.high, other.low)))
        if other.high < self.high:
            pieces.append((max(self.low, other.high), self.high))
        return [KeySet.of_positions(self.first, self.order, self.epoch_ms, a, b)
                for a, b in pieces if a < b]

    def describe(self) -> str:
        """A short human form: `slots 0-99,200` or `range [a, b)`."""
        if self.kind == KIND_RANGE:
            end = "+inf" if self.end is None else repr(self.end)
            return f"range [{self.first!r}, {end})"
        if self.kind == KIND_POSITIONS:
            low = table_keys.point_text(self.order, self.low)
            high = table_keys.point_text(self.order, self.high)
            return f"rows of {self.first.decode(errors='replace')} in [{low}, {high})"
        if self.kind == KIND_TABLE_SLOTS:
            table = self.first.decode(errors="replace")
            return f"rows of {table} in slots {format_slots(self.slots)}"
        return f"slots {format_slots(self.slots)}"

    def to_wire(self) -> list[Any]:
        if self.kind == KIND_SLOTS:
            return [KIND_SLOTS, sorted(self.slots)]
        if self.kind == KIND_TABLE_SLOTS:
            return [KIND_TABLE_SLOTS, self.first, sorted(self.slots)]
        if self.kind == KIND_POSITIONS:
            return [KIND_POSITIONS, self.first, self.order, self.epoch_ms, self.low,
                    self.high]
        return [KIND_RANGE, self.first, self.end]

    @classmethod
    def from_wire(cls, wire: Any) -> KeySet:
        """The set `to_wire` made; ValueError on anything else."""
        try:
            kind = wire[0]
            if isinstance(kind, bytes):
                kind = kind.decode()
            if kind == KIND_SLOTS and len(wire) == 2:
                return cls.of_slots(wire[1])
            if kind == KIND_TABLE_SLOTS and len(wire) == 3 and isinstance(wire[1], bytes):
                return cls.of_table_slots(wire[1], wire[2])
            if kind == KIND_RANGE and len(wire) == 3 and isinstance(wire[1], bytes) and (
                    wire[2] is None or isinstance(wire[2], bytes)):
                return cls.of_range(wire[1], wire[2])
            if kind == KIND_POSITIONS and len(wire) == 6 and isinstance(wire[1], bytes):
                return cls.of_positions(wire[1], str(wire[2]), int(wire[3]), int(wire[4]),
                                        int(wire[5]))
        except (TypeError, IndexError, ValueError) as exc:  # UnicodeDecodeError too
            raise ValueError(ERR_BAD_KEYSET.format(wire)) from exc
        raise ValueError(ERR_BAD_KEYSET.format(wire))


def prefix_end(prefix: bytes) -> bytes | None:
    """The least key above every key starting with `prefix` (None: there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def format_slots(slots: Iterable[int]) -> str:
    """`0-99,200`: sorted slots as comma-separated runs."""
    runs: list[list[int]] = []
    for slot in sorted(slots):
        if runs and runs[-1][1] == slot - 1:
            runs[-1][1] = slot
        else:
            runs.append([slot, slot])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def _decimal(text: str) -> bool:
    return 0 < len(text) <= MAX_SLOT_DIGITS and text.isascii() and text.isdigit()


def parse_slots(text: str) -> KeySet:
    """`0-99,200` (the form `format_slots` writes) as a KeySet; ValueError with a clear
    message on anything else."""
    slots: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not _decimal(first) or (sep and not _decimal(last)):
            raise ValueError(ERR_SLOT_SYNTAX.format(text))
        a, b = int(first), int(last) if sep else int(first)
        if a > b or b >= SLOT_COUNT:
            raise ValueError(ERR_SLOT_RANGE.format(b if b >= SLOT_COUNT else a))
        slots.update(range(a, b + 1))
    return KeySet.of_slots(slots)
