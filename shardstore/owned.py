"""A shard's store as a node's keyless reads (DBSIZE, SCAN, KEYS) see it while a slot move
involving the shard is under way: only the keys the slot map gives the shard; sans I/O.

Strategy: during a move the moving keys sit on both shards for a while (the source keeps
its frozen copy until the purge, the target holds what the copy brought), so summing
DBSIZE over the masters (as `redis-cli --cluster info` does) or scanning every master
would count them twice. While the configuration has a slot move under way from or to a
shard (`moving`), its store is wrapped in `OwnedKV`, which keeps a key only if the slot
map as this node sees it gives the key's slot to the shard (rows of range tables, which
are not slot-addressed, are kept as they are): before the move ends the source counts
them, after it the target. With no move under way the store is used as it is, so DBSIZE
stays a count, not a walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from native.crc16 import key_slot
from shardstore.cluster import ClusterConfig
from shardstore.keysets import KIND_SLOTS
from shardstore.moves import STATE_DONE

__all__ = ["WALK_KEYS", "OwnedKV", "moving", "owned_store"]

WALK_KEYS = 1024  # keys read at a time when a count or a filtered read walks the store


class OwnedKV:
    """`kv` (get, scan, count, keys_after) with only the keys `owned` keeps."""

    def __init__(self, kv: Any, owned: Callable[[bytes], bool]) -> None:
        self.kv = kv
        self.owned = owned

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return self.kv.get(key) if self.owned(key) else None

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < limit:
            keys = self.kv.keys_after(cursor, max(limit, WALK_KEYS))
            out.extend(k for k in keys if self.owned(k))
            if len(keys) < max(limit, WALK_KEYS):
                break
            cursor = keys[-1]
        return out[:limit]

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        if limit is None:
            return [row for row in self.kv.scan(start, end) if self.owned(row[0])]
        out: list[tuple[bytes, bytes, int]] = []
        while len(out) < limit:
            rows = self.kv.scan(start, end, max(limit, WALK_KEYS))
            out.extend(row for row in rows if self.owned(row[0]))
            if len(rows) < max(limit, WALK_KEYS):
                break
            start = rows[-1][0] + b"\x00"  # the least key after the last one
        return out[:limit]

    def count(self) -> int:
        total, cursor = 0, b""
        if self.kv.get(b"") is not None and self.owned(b""):
            total += 1
        while True:
            keys = self.kv.keys_after(cursor, WALK_KEYS)
            total += sum(1 for k in keys if self.owned(k))
            if len(keys) < WALK_KEYS:
                return total
            cursor = keys[-1]


def moving(config: ClusterConfig, shard_id: int) -> bool:
    """Whether a slot move from or to `shard_id` is under way in `config`."""
    return any(m.state != STATE_DONE and m.keys.kind == KIND_SLOTS
               and shard_id in (m.source, m.target) for m in config.moves.values())


def owned_store(config: ClusterConfig, shard_id: int, store: Any,
                is_range_row: Callable[[bytes], bool]) -> Any:
    """`store` (shard `shard_id`'s, as commands see it), filtered as the module header
    says while a slot move involving the shard is under way."""
    table = config.slot_shard
    if not table or not moving(config, shard_id):
        return store
    return OwnedKV(store, lambda key: is_range_row(key) or table[key_slot(key)] == shard_id)
