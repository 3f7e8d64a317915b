"""The small gaps of moves, sans I/O: FLUSHALL waits for a move moving keys of the shard
(fences.Fences.flush_refusal), and a shard's store as DBSIZE/SCAN see it during a move
keeps only the keys the slot map gives the shard (shardstore/owned.py), checked against a
plain filter by hypothesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.resp import CommandError
from native.crc16 import key_slot
from shardstore import cluster, owned
from shardstore.cluster import ConfigMachine
from shardstore.keysets import KeySet
from shardstore.machine import (
    KIND_COPY,
    KIND_FREEZE,
    KIND_LIFT,
    KIND_PURGE,
    decode_reply,
    encode_command,
    encode_move,
)
from shardstore.moves import encode_begin, encode_end, encode_finish
from shardstore.owned import OwnedKV, owned_store
from tests.test_shardstore_moves import _set, _shard

FLUSHALL = encode_command(1_000, [b"FLUSHALL"])


def _refused(reply: Any) -> bool:
    return isinstance(reply, CommandError) and reply.message.startswith("TRYAGAIN move ")


def test_flushall_waits_for_a_move_of_the_shards_keys(tmp_path: Path) -> None:
    keys = KeySet.of_slots([key_slot(b"a")])
    wire = keys.to_wire()
    source, target = _shard(tmp_path / "s"), _shard(tmp_path / "t")
    out = source.apply([(1, _set(b"a", b"1")), (2, _set(b"other", b"x")),
                        (3, encode_move(KIND_FREEZE, 1_000, 2, wire)), (4, FLUSHALL)])
    assert _refused(decode_reply(out[3])) and source.store.count() == 2
    out = target.apply([(1, encode_move(KIND_COPY, 1_000, 2, [[b"a", b"1", 0]], wire, None,
                                        b"a")),
                        (2, FLUSHALL), (3, encode_move(KIND_LIFT, 1_000, 2, wire)),
                        (4, FLUSHALL)])
    replies = [decode_reply(r) for r in out]
    assert _refused(replies[1]) and not isinstance(replies[3], CommandError)
    out = source.apply([(5, encode_move(KIND_PURGE, 1_000, 2, wire, [b"a"])), (6, FLUSHALL)])
    assert not isinstance(decode_reply(out[1]), CommandError)
    assert source.store.count() == 0 and target.store.count() == 0
    source.engine.close()
    target.engine.close()


class DictKV:
    """A plain sorted store: the model OwnedKV is checked against."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = sorted(keys)

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return (b"v", 0) if key in self.keys else None

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        return [k for k in self.keys if k > cursor][:limit]

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        rows = [(k, b"v", 0) for k in self.keys if k >= start and (end is None or k < end)]
        return rows if limit is None else rows[:limit]

    def count(self) -> int:
        return len(self.keys)


@given(st.sets(st.binary(max_size=4), max_size=60), st.integers(1, 20), st.binary(max_size=3))
def test_owned_reads_equal_a_plain_filter(keys: set[bytes], limit: int, start: bytes) -> None:
    kept = {k for k in keys if key_slot(k) % 2 == 0}
    model = DictKV(kept)
    saved = owned.WALK_KEYS
    owned.WALK_KEYS = 3  # walk in small steps
    try:
        view = OwnedKV(DictKV(keys), lambda k: key_slot(k) % 2 == 0)
        assert view.count() == model.count()
        assert view.keys_after(start, limit) == model.keys_after(start, limit)
        assert view.scan(start, None, limit) == model.scan(start, None, limit)
        assert view.scan(start) == model.scan(start)
        assert all((view.get(k) is None) == (k not in kept) for k in keys)
    finally:
        owned.WALK_KEYS = saved


def test_a_store_is_filtered_only_while_a_move_involves_its_shard() -> None:
    machine = ConfigMachine()
    machine.apply([(1, cluster.encode_init([1, 2, 3], 3, 3))])
    config = machine.config
    store = DictKV({b"a", b"b"})
    assert owned_store(config, 1, store, lambda k: False) is store
    [mid] = machine.apply([(2, encode_begin(KeySet.of_slots([5]), 1, 2))])
    assert isinstance(owned_store(config, 1, store, lambda k: False), OwnedKV)
    assert owned_store(config, 3, store, lambda k: False) is store
    assert machine.apply([(3, encode_end(mid)), (4, encode_finish(mid))]) == [True, True]
    assert owned_store(config, 1, store, lambda k: False) is store
