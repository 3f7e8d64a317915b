"""Key sets: what one move carries from a shard to another; sans I/O.

Strategy: a move is generic over the set of keys it moves. Two kinds exist:

- slots: a set of Redis Cluster hash slots (a key belongs by `key_slot`, hash tags
  honoured), what `shardstore admin reshard` moves;
- a key range: the half-open interval [first, end) in byte order (`end` None: no upper
  bound), what a range-sharded table's split moves.

A `KeySet` is immutable, hashable and has a msgpack-safe wire form (`to_wire` /
`from_wire`) because it travels in configuration entries, shard log entries and the
node-to-node requests of a move. `minus` removes another set of the same kind (a fence
lifted by a move back in); sets of different kinds never overlap by definition (a key is
either slot-addressed or belongs to a range table, never both).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from native.crc16 import SLOT_COUNT, key_slot

__all__ = ["KIND_RANGE", "KIND_SLOTS", "ERR_BAD_KEYSET", "KeySet", "parse_slots"]

KIND_SLOTS = "slots"
KIND_RANGE = "range"
ERR_BAD_KEYSET = "bad key set: {!r}"
ERR_SLOT_RANGE = "slot {} is not in 0..16383"
MAX_SLOT_DIGITS = 5
ERR_SLOT_SYNTAX = "bad slot list {!r}: expected numbers or first-last ranges, comma separated"


@dataclass(frozen=True)
class KeySet:
    """A set of keys (see the module header). `slots` for KIND_SLOTS; `first`/`end` for
    KIND_RANGE."""

    kind: str
    slots: frozenset[int] = frozenset()
    first: bytes = b""
    end: bytes | None = None

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

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | bytearray):
            return False
        if self.kind == KIND_SLOTS:
            return key_slot(bytes(key)) in self.slots
        return self.first <= key and (self.end is None or key < self.end)

    @property
    def empty(self) -> bool:
        return self.kind == KIND_SLOTS and not self.slots

    def scan_bounds(self) -> tuple[bytes, bytes | None]:
        """The key interval an engine scan must walk to find every member (a slot set
        is spread over the whole key order)."""
        if self.kind == KIND_RANGE:
            return self.first, self.end
        return b"", None

    def minus(self, other: KeySet) -> list[KeySet]:
        """This set without `other`'s keys, as zero or more sets of this kind."""
        if other.kind != self.kind:
            return [self]
        if self.kind == KIND_SLOTS:
            rest = self.slots - other.slots
            return [KeySet(KIND_SLOTS, slots=rest)] if rest else []
        pieces = []
        if self.first < other.first:
            end = other.first if self.end is None else min(self.end, other.first)
            pieces.append(KeySet(KIND_RANGE, first=self.first, end=end))
        if other.end is not None and (self.end is None or other.end < self.end):
            first = max(self.first, other.end)
            if self.end is None or first < self.end:
                pieces.append(KeySet(KIND_RANGE, first=first, end=self.end))
        return pieces

    def describe(self) -> str:
        """A short human form: `slots 0-99,200` or `range [a, b)`."""
        if self.kind == KIND_RANGE:
            end = "+inf" if self.end is None else repr(self.end)
            return f"range [{self.first!r}, {end})"
        return f"slots {format_slots(self.slots)}"

    def to_wire(self) -> list[Any]:
        if self.kind == KIND_SLOTS:
            return [KIND_SLOTS, sorted(self.slots)]
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
            if kind == KIND_RANGE and len(wire) == 3 and isinstance(wire[1], bytes) and (
                    wire[2] is None or isinstance(wire[2], bytes)):
                return cls.of_range(wire[1], wire[2])
        except (TypeError, IndexError, UnicodeDecodeError):
            pass
        raise ValueError(ERR_BAD_KEYSET.format(wire))


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
