"""Moves, sans I/O: key sets (shardstore/keysets.py), the move records of the configuration
(shardstore/moves.py through cluster.ConfigMachine), and a shard machine's fences
(shardstore/fences.py through machine.ShardMachine): a write applied after the freeze is
refused on every replica and has no effect, a copy is idempotent, fences survive a restart
and a snapshot, and the reserved record is invisible to commands."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.command_table import get_keys
from core.resp import CommandError
from native.crc16 import SLOT_COUNT, key_slot
from shardstore import admin_commands, cluster, commands
from shardstore.admin import plan_rebalance
from shardstore.catalog import Table, encode_create, parse_create
from shardstore.cluster import ConfigMachine
from shardstore.fences import FENCES_KEY, Fences, HiddenKV
from shardstore.keysets import KeySet, format_slots, parse_slots
from shardstore.machine import (
    KIND_COPY,
    KIND_FREEZE,
    KIND_LIFT,
    KIND_PURGE,
    ShardMachine,
    decode_reply,
    encode_command,
    encode_move,
)
from shardstore.migrate import Scope, read_fenced
from shardstore.moves import (
    STATE_DONE,
    STATE_PURGE,
    encode_begin,
    encode_end,
    encode_finish,
    encode_step,
    ranges_of,
)
from shardstore.table_keys import parse_point
from shardstore.table_moves import give_range
from tests.shardstore_procs import engine_shard

ROWS = {row.name.upper(): row for row in commands.COMMANDS}


def keys_of(args: list[bytes]) -> list[bytes]:
    row = ROWS.get(args[0].decode().upper())
    return list(get_keys(row, args)) if row is not None and row.key_specs else []


# -- key sets ---------------------------------------------------------------------------------

def test_key_sets_hold_their_keys_and_subtract() -> None:
    slots = KeySet.of_slots([key_slot(b"a"), key_slot(b"b")])
    assert b"a" in slots and b"b" in slots and b"{a}x" in slots
    assert KeySet.from_wire(msgpack.unpackb(msgpack.packb(slots.to_wire()))) == slots
    assert slots.minus(KeySet.of_slots([key_slot(b"a")])) == \
        [KeySet.of_slots([key_slot(b"b")])]
    rng = KeySet.of_range(b"2024-01", b"2024-03")
    assert b"2024-02-10" in rng and b"2024-03" not in rng and b"2023" not in rng
    assert rng.minus(KeySet.of_range(b"2024-01-15", b"2024-02")) == [
        KeySet.of_range(b"2024-01", b"2024-01-15"), KeySet.of_range(b"2024-02", b"2024-03")]
    assert rng.minus(slots) == [rng]
    with pytest.raises(ValueError, match="bad key set"):
        KeySet.from_wire(["nope", 1])


@given(st.sets(st.integers(0, SLOT_COUNT - 1), min_size=1, max_size=50))
def test_slot_lists_round_trip(slots: set[int]) -> None:
    assert parse_slots(format_slots(slots)) == KeySet.of_slots(slots)


@given(st.text(max_size=30))
def test_the_slot_list_parser_refuses_clearly(text: str) -> None:
    try:
        keys = parse_slots(text)
    except ValueError as exc:
        assert "slot" in str(exc)
    else:
        assert all(0 <= s < SLOT_COUNT for s in keys.slots)


# -- the configuration's move records ---------------------------------------------------------

def _config() -> ConfigMachine:
    machine = ConfigMachine()
    machine.apply([(1, cluster.encode_init([1, 2, 3], 3, 3))])
    return machine


def test_a_move_begins_ends_and_finishes_in_the_configuration() -> None:
    machine = _config()
    keys = KeySet.of_slots(range(0, 10))
    [mid] = machine.apply([(2, encode_begin(keys, 1, 2))])
    config = machine.config
    assert mid == 1 and config.epoch == 2 and config.moves[1].keys == keys
    refused = machine.apply([(3, encode_begin(KeySet.of_slots([5]), 1, 3)),
                             (4, encode_begin(KeySet.of_slots([6000]), 1, 3)),
                             (5, encode_begin(keys, 1, 1))])
    assert refused == ["ERR slot 5 is already moving (move 1)",
                       "ERR slot 6000 is not owned by shard 1",
                       "ERR a move needs two different shards"]
    assert machine.apply([(6, encode_step(1, "copy", b"k9", 42))]) == [True]
    copy = ConfigMachine()
    copy.restore(machine.snapshot())
    assert copy.config.moves[1].cursor == b"k9" and copy.config.moves[1].copied == 42
    assert machine.apply([(7, encode_end(1)), (8, encode_end(1))]) == [True, False]
    assert config.epoch == 3 and config.moves[1].state == STATE_PURGE
    assert config.ranges[:2] == [(0, 9, 2), (10, 5460, 1)]
    assert config.shard_of_slot(3).shard_id == 2
    assert machine.apply([(9, encode_finish(1))]) == [True]
    assert config.moves[1].state == STATE_DONE and config.moves_done == 1
    assert machine.apply([(10, encode_begin(KeySet.of_slots([5]), 2, 3))]) == [2]
    assert ranges_of(config.slot_shard) == config.ranges


# -- a shard machine's fences -----------------------------------------------------------------

def _shard(directory: Path) -> ShardMachine:
    return engine_shard(directory, keys_of)


def _set(key: bytes, value: bytes) -> bytes:
    return encode_command(1_000, [b"SET", key, value])


def test_writes_after_the_freeze_are_refused_and_a_copy_is_idempotent(tmp_path: Path) -> None:
    source = _shard(tmp_path / "a")
    keys = KeySet.of_slots([key_slot(b"moving")])
    out = source.apply([(1, _set(b"moving", b"1")),
                        (2, encode_move(KIND_FREEZE, 1_000, 7, keys.to_wire())),
                        (3, _set(b"moving", b"2")), (4, _set(b"staying", b"x")),
                        (5, encode_move(KIND_FREEZE, 1_000, 7, keys.to_wire()))])
    replies = [decode_reply(r) for r in out]
    assert replies[1] == 1 and replies[4] == 0  # a resumed freeze changes nothing
    assert isinstance(replies[2], CommandError) and replies[2].message.startswith("TRYAGAIN")
    assert source.engine.get(b"moving")[0].endswith(b"1")
    assert source.refusing([b"moving"]) is not None and source.refusing([b"staying"]) is None
    rows = [list(r) for r in source.store.scan() if r[0] in keys]
    target = _shard(tmp_path / "b")
    copy = encode_move(KIND_COPY, 1_000, 7, rows)
    assert [decode_reply(r) for r in target.apply([(1, copy), (2, copy)])] == [1, 1]
    assert target.engine.get(b"moving") == source.engine.get(b"moving")
    lift = encode_move(KIND_LIFT, 1_000, 7, keys.to_wire())
    late = target.apply([(3, lift), (4, _set(b"moving", b"3")), (5, copy)])
    assert decode_reply(late[0]) == 1 and "closed" in str(decode_reply(late[2]))
    assert target.engine.get(b"moving")[0].endswith(b"3")  # the late copy changed nothing
    purge = encode_move(KIND_PURGE, 1_000, 7, keys.to_wire(), [b"moving", b"staying"])
    assert decode_reply(source.apply([(6, purge)])[0]) == 1
    assert source.engine.get(b"moving") is None and source.engine.get(b"staying") is not None
    assert source.store.count() == 1 and source.engine.get(FENCES_KEY) is not None


def test_fences_survive_a_restart_and_a_snapshot_and_lift(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "a")
    keys = KeySet.of_slots([key_slot(b"k")])
    shard.apply([(1, encode_move(KIND_FREEZE, 1_000, 3, keys.to_wire()))])
    blob = shard.snapshot()()
    shard.engine.close()
    again = _shard(tmp_path / "a")
    assert again.fences.holds(3)
    other = _shard(tmp_path / "b")
    other.restore(blob)
    assert other.fences.holds(3)
    assert decode_reply(other.apply([(2, encode_move(KIND_LIFT, 1, 9,
                                                     keys.to_wire()))])[0]) == 1
    assert not other.fences.fenced and other.fences.closed == {9}
    late = encode_move(KIND_FREEZE, 1_000, 3, keys.to_wire())  # move 3 again: a no-op
    assert decode_reply(other.apply([(5, late)])[0]) == 0 and not other.fences.fenced
    assert not isinstance(decode_reply(other.apply([(3, _set(b"k", b"v"))])[0]), CommandError)
    again.engine.close()


def test_the_reserved_record_is_invisible_to_commands(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "a")
    shard.apply([(1, encode_move(KIND_FREEZE, 1, 1, KeySet.of_slots([1]).to_wire())),
                 (2, _set(b"\xff\xff\xff", b"after the record")), (3, _set(b"a", b"1"))])
    store = shard.store
    assert store.count() == 2 and store.get(FENCES_KEY) is None
    assert [r[0] for r in store.scan(limit=2)] == [b"a", b"\xff\xff\xff"]
    assert store.keys_after(b"", 2) == [b"a", b"\xff\xff\xff"]
    shard.apply([(4, encode_command(1, [b"FLUSHALL"])),
                 (5, encode_command(1, [b"SET", FENCES_KEY, b"forged"]))])
    assert Fences.load(shard.engine).holds(1) and HiddenKV(shard.engine).count() == 0


def test_positions_key_sets_hold_the_rows_of_a_range_table() -> None:
    jan = parse_point_ms(b"2024-01")
    feb = parse_point_ms(b"2024-02")
    rows = KeySet.of_positions(b"orders:", "DATE", 0, jan, feb)
    assert b"orders:2024-01-15:7" in rows and b"orders:2024-01" in rows
    assert b"orders:2024-02-01:1" not in rows and b"users:2024-01-15" not in rows
    assert b"orders:not-a-date" not in rows
    assert KeySet.from_wire(msgpack.unpackb(msgpack.packb(rows.to_wire()))) == rows
    first, end = rows.scan_bounds()
    assert first <= b"orders:2024-01-15:7" < end
    mid = parse_point_ms(b"2024-01-10")
    assert rows.minus(KeySet.of_positions(b"orders:", "DATE", 0, mid, feb)) == \
        [KeySet.of_positions(b"orders:", "DATE", 0, jan, mid)]
    assert rows.minus(KeySet.of_slots([1])) == [rows]
    assert "rows of orders: in [2024-01, 2024-02)" == rows.describe()


def parse_point_ms(text: bytes) -> int:
    return parse_point("DATE", text)


def test_fences_judge_keys_by_the_route_the_entry_carries(tmp_path: Path) -> None:
    """A slot fence does not touch a range table's row that hashes into its slots, and a
    positions fence does not touch a slot-routed key: the entry says which it is."""
    shard = _shard(tmp_path / "a")
    row = b"orders:2024-01-15:1"
    slot_fence = KeySet.of_slots([key_slot(row)])
    jan, feb = parse_point_ms(b"2024-01"), parse_point_ms(b"2024-02")
    row_fence = KeySet.of_positions(b"orders:", "DATE", 0, jan, feb)
    out = shard.apply([
        (1, encode_move(KIND_FREEZE, 1, 1, slot_fence.to_wire())),
        (2, encode_command(1, [b"SET", row, b"ranged"], ranged=True)),
        (3, encode_command(1, [b"SET", row, b"by slot"])),
        (4, encode_move(KIND_FREEZE, 1, 2, row_fence.to_wire())),
        (5, encode_command(1, [b"SET", row, b"ranged again"], ranged=True)),
    ])
    replies = [decode_reply(r) for r in out]
    assert not isinstance(replies[1], CommandError)
    assert str(replies[2]).startswith("TRYAGAIN") and str(replies[4]).startswith("TRYAGAIN")
    assert shard.engine.get(row)[0].endswith(b"ranged")
    assert shard.refuse_request([b"GET", row], is_range_row=lambda k: False) is not None


def test_a_move_of_range_table_rows_hands_over_the_table_map() -> None:
    machine = _config()
    create = parse_create([b"TABLE.CREATE", b"orders", b"RANGE", b"DATE", b"SPLITS",
                           b"2024-01", b"SHARDS", b"1", b"2"])
    assert machine.apply([(2, encode_create(create))]) == [True]
    jan, feb = parse_point_ms(b"2024-01"), parse_point_ms(b"2024-02")
    rows = KeySet.of_positions(b"orders:", "DATE", create["epoch"], jan, feb)
    refused = machine.apply([(3, encode_begin(rows, 1, 3)),
                             (4, encode_begin(KeySet.of_range(b"a", b"b"), 1, 2)),
                             (5, encode_begin(KeySet.of_positions(b"nope:", "DATE", 0, jan,
                                                                  feb), 2, 1))])
    assert refused[0].startswith("ERR rows of orders in [")  # January is shard 2's
    assert refused[1].startswith("ERR a raw key range has no owner")
    assert refused[2] == "ERR no range table has the prefix 'nope:'"
    [mid] = machine.apply([(6, encode_begin(rows, 2, 3))])
    assert machine.apply([(7, encode_begin(rows, 2, 1))])[0].startswith("ERR rows of orders")
    table = machine.catalog.tables["orders"]
    assert machine.apply([(8, encode_end(mid))]) == [True]
    assert table.splits == [jan, feb] and table.shards == [1, 3, 2]
    assert table.shard_at(parse_point_ms(b"2024-01-20")) == 3


def test_give_range_cuts_and_hands_over() -> None:
    table = Table("t", rule="RANGE", kind="DATE", splits=[100, 200], shards=[1, 2, 3])
    give_range(table, 150, 250, 9)
    assert table.splits == [100, 150, 200, 250] and table.shards == [1, 2, 9, 9, 3]
    give_range(table, -1, 1 << 62, 4)
    assert set(table.shards) == {4}


_SCALAR = (st.none() | st.integers(-5, 20_000) | st.binary(max_size=6)
           | st.sampled_from(["slots", "range", "positions", "DATE", b"slots"]))
_WIRE = st.lists(_SCALAR | st.lists(_SCALAR, max_size=4), max_size=7)


@given(_WIRE)
def test_key_set_wire_forms_are_read_or_refused_clearly(wire: object) -> None:
    try:
        keys = KeySet.from_wire(wire)
    except ValueError as exc:
        assert "bad key set" in str(exc) or "slot" in str(exc)
    else:
        assert KeySet.from_wire(keys.to_wire()) == keys


@given(st.lists(st.binary(max_size=10), min_size=1, max_size=5))
def test_the_move_command_parser_refuses_clearly(words: list[bytes]) -> None:
    catalog = ConfigMachine().catalog
    try:
        keys = admin_commands._keyset(words, catalog)
    except CommandError as exc:
        assert exc.message.startswith("ERR ")
    else:
        assert keys.kind == "slots" and keys.slots


def test_rebalance_plans_moves_to_even_shares() -> None:
    owners = {1: list(range(0, 10_000)), 2: list(range(10_000, 16_000)),
              3: list(range(16_000, 16_384))}
    plan = plan_rebalance(owners)
    assert plan == [(1, 3, 10_000 - 5462), (2, 3, 6_000 - 5461)]
    after = {sid: len(slots) for sid, slots in owners.items()}
    for giver, taker, amount in plan:
        after[giver] -= amount
        after[taker] += amount
    assert after == {1: 5462, 2: 5461, 3: 5461}
    assert plan_rebalance({1: list(range(8192)), 2: list(range(8192, 16384))}) == []


@given(st.integers(1, 7), st.integers(2, 9), st.booleans())
def test_a_move_reads_every_fenced_key_once_in_batches(limit: int, scan: int,
                                                      empty_key: bool) -> None:
    """read_fenced, resumed from each cursor, yields each key of the fence exactly once,
    leaves out the excluded prefixes and stops at the scope's end."""
    with tempfile.TemporaryDirectory() as tmp:
        shard = _shard(Path(tmp))
        keys = [f"k{i}".encode() for i in range(40)] + [b"skip:1", b"zz"]
        keys += [b""] if empty_key else []
        fence = KeySet.of_slots({key_slot(k) for k in keys[::3]} | {key_slot(b"")})
        shard.apply([(1, encode_command(1, [b"MSET", *[x for k in keys for x in (k, k)]])),
                     (2, encode_move(KIND_FREEZE, 1, 5, fence.to_wire()))])
        scope = Scope(b"", b"z", (b"skip:",))
        seen: list[bytes] = []
        cursor: bytes | None = None
        while True:
            rows, cursor = read_fenced(shard, 5, cursor, limit, scope, scan_keys=scan)
            seen.extend(r[0] for r in rows)
            if cursor is None:
                break
        wanted = sorted(k for k in keys if k in fence and k < b"z" and not k.startswith(b"skip:"))
        assert seen == wanted
        shard.engine.close()
