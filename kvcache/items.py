"""The interface types of the storage: items, store modes, outcomes; and what an item costs.

Both storage twins (kvcache/storage.py picks one) hand out objects with the attributes of
`Item`: the pure twin its own `Item`s, the native one read-only views of arena records built
on demand (their identity is their record, so `in`-tests over held items work for both).
Callers only read them; every change goes through a `Storage` method.

What an item costs is the same for both: the arena chunk its record needs (kvcache/slabs.py:
`item_cost`, `record_bytes`), e.g. 192 bytes for a 14-byte key and a 100-byte value.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from kvcache.slabs import item_cost

# Bits of Item.casbits below the CAS.
FETCHED = 1  # read at least once since stored (mg h, me fetch=)
TOKEN_SENT = 2  # a client won the recache token (mg W / Z)
STALE = 4  # invalidated by md I or ms I (mg X)
KEY_BINARY = 8  # stored with a base64 key (meta k flag answers in base64)
CAS_SHIFT = 4
BITS_MASK = (1 << CAS_SHIFT) - 1

__all__ = ["BITS_MASK", "CAS_SHIFT", "FETCHED", "KEY_BINARY", "STALE", "TOKEN_SENT", "Delta",
           "Item", "Mode", "Outcome", "item_cost"]


class Item:
    """One cached value. `value` excludes the CRLF; `exptime` is a Unix time (0: never);
    `atime` the time it was stored or last read. The pure twin links items into its LRU
    lanes (kvcache/storage_pure.py) through `prev`/`next`; `lane` says which, `active`
    whether the item was read twice since it last moved."""

    __slots__ = ("key", "value", "flags", "exptime", "atime", "casbits", "lane", "active",
                 "prev", "next")

    key: bytes
    value: bytes
    flags: int
    exptime: int
    atime: int
    casbits: int
    lane: int
    active: bool
    prev: Item
    next: Item

    @property
    def cas(self) -> int:
        return self.casbits >> CAS_SHIFT


class Mode(IntEnum):
    """What a store does with an existing item (memcached's NREAD_* commands)."""

    SET = 1
    ADD = 2
    REPLACE = 3
    APPEND = 4
    PREPEND = 5
    CAS = 6


class Outcome(IntEnum):
    STORED = 1
    NOT_STORED = 2
    EXISTS = 3
    NOT_FOUND = 4
    NO_MEMORY = 5  # the item alone is larger than the memory limit
    NON_NUMERIC = 6  # incr/decr on a value that is not a number


class Delta(NamedTuple):
    """What incr/decr did: the new number, the item now holding it, and whether that is
    the same item rewritten in place (else a new item replaced it)."""

    outcome: Outcome
    number: int
    item: Item | None
    in_place: bool
