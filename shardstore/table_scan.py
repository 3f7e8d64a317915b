"""Range reads of a range table on one shard's store; sans I/O.

Strategy: the rows of a range table with a position in [low, high) lie inside key bounds
table_keys.scan_bounds gives (for DATE tables a stretch of months, else the table's whole
prefix); the walk goes through those bounds in key order, `WALK_CHUNK` keys at a time
(`keys_after`), keeps the keys whose position is in [low, high) and that have not expired,
and stops at `limit` keys or the end of the bounds. Keys come back in key order. A page of
a longer read (shardstore/range_pages.py) starts after a key (`after`) instead: the walk
begins there when it lies inside the bounds.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from shardstore.catalog import CatalogError, Table
from shardstore.table_keys import scan_bounds

__all__ = ["WALK_CHUNK", "merge_keys", "range_keys"]

WALK_CHUNK = 512  # keys read from the key index at a time
EXPIRE_FIELD = 3  # the expire time in an engine Location (engine.locate)


def _expired(kv: Any, key: bytes, now_ms: int) -> bool:
    locate = getattr(kv, "locate", None)
    if locate is None:
        return False
    location = locate(key)
    if location is None:
        return True
    expire = location[EXPIRE_FIELD]
    return bool(0 < expire <= now_ms)


def _wanted(table: Table, key: bytes, low: int, high: int) -> bool:
    if not key.startswith(table.prefix):
        return False
    try:
        return low <= table.position(key) < high
    except CatalogError:
        return False  # a key of the prefix without a position was never written by rows


def range_keys(kv: Any, table: Table, low: int, high: int, limit: int,
               now_ms: int, after: bytes | None = None) -> list[bytes]:
    """Up to `limit` live keys of `table` in `kv` (a store with keys_after and scan) with a
    position in [low, high), in key order; only keys after `after` when it is given."""
    first, end = scan_bounds(table.kind, table.prefix, low, high)
    found: list[bytes] = []
    if limit <= 0 or (after is not None and after >= end):
        return found
    if after is not None and after >= first:
        cursor = after
    else:
        if kv.scan(first, first + b"\x00", 1):  # keys_after starts after its cursor
            if _wanted(table, first, low, high) and not _expired(kv, first, now_ms):
                found.append(first)
        cursor = first
    while len(found) < limit:
        keys = kv.keys_after(cursor, WALK_CHUNK)
        for key in keys:
            if key >= end or len(found) >= limit:
                return found
            if _wanted(table, key, low, high) and not _expired(kv, key, now_ms):
                found.append(key)
        if len(keys) < WALK_CHUNK:
            break
        cursor = keys[-1]
    return found


def merge_keys(parts: Iterable[Sequence[bytes]], limit: int) -> list[bytes]:
    """The first `limit` keys of several key-ordered lists, in key order."""
    return list(itertools.islice(heapq.merge(*parts), limit))
