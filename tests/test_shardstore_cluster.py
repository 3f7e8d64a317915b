"""shardstore's sans-I/O daemon parts: the slot map and configuration machine
(shardstore/cluster.py), the Redis Cluster replies (shardstore/cluster_replies.py) as
redis-py parses them, and the shard machine (shardstore/machine.py) over the engine and
the command layer."""

from __future__ import annotations

from pathlib import Path

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from redis._parsers.helpers import parse_cluster_info, parse_cluster_nodes
from redis.cluster import parse_cluster_shards, parse_cluster_slots

from core.resp import OK, CommandError, RespSet, Simple, Verbatim, encode
from native.crc16 import SLOT_COUNT, key_slot
from shardstore import cluster, cluster_replies, commands
from shardstore.cluster import ClusterView, ConfigMachine, layout
from shardstore.engine import Engine
from shardstore.machine import (
    MergedKV,
    ShardMachine,
    decode_reply,
    encode_command,
    encode_expire,
    encode_reply,
    expired_keys,
)
from tests.shardstore_procs import engine_shard


def test_layout_splits_slots_evenly_and_members_round_robin() -> None:
    shards, ranges = layout([3, 1, 2], 3, 2)
    assert [s.members for s in shards.values()] == [[1, 2], [2, 3], [3, 1]]
    assert ranges == [(0, 5460, 1), (5461, 10921, 2), (10922, 16383, 3)]
    covered = [slot for first, last, _ in ranges for slot in range(first, last + 1)]
    assert covered == list(range(SLOT_COUNT))
    _, one = layout([1], 1, 1)
    assert one == [(0, 16383, 1)]


def _machine(shards: int = 3, replicas: int = 3) -> ConfigMachine:
    machine = ConfigMachine()
    machine.apply([(1, cluster.encode_init([1, 2, 3], shards, replicas))])
    return machine


def test_the_first_init_wins_and_snapshots_carry_the_map() -> None:
    machine = _machine(3, 2)
    results = machine.apply([(2, cluster.encode_init([1, 2, 3], 5, 1)),
                             (3, cluster.encode_name(2, "ab" * 20)),
                             (4, b"\x93not a map")])
    assert results[:2] == [False, None]
    assert results[2].startswith("ERR bad configuration entry")
    config = machine.config
    assert config.epoch == 1 and len(config.shards) == 3
    assert config.shard_of_key(b"foo").shard_id == 3  # slot 12182
    assert [s.shard_id for s in config.hosted_by(1)] == [1, 3]
    copy = ConfigMachine()
    copy.restore(machine.snapshot())
    assert copy.config.to_wire() == config.to_wire()
    assert copy.config.shard_of_slot(0).shard_id == 1


def test_node_names_are_40_hex_and_stay(tmp_path: Path) -> None:
    name = cluster.load_node_name(tmp_path, 1)
    assert len(name) == 40 and int(name, 16) >= 0
    assert cluster.load_node_name(tmp_path, 1) == name
    (tmp_path / "other").mkdir()
    assert cluster.load_node_name(tmp_path / "other", 1) != name


def _view(leaders: dict[int, int] | None = None) -> ClusterView:
    machine = _machine()
    for node_id in (1, 2, 3):
        machine.apply([(10 + node_id, cluster.encode_name(node_id, f"{node_id:040x}"))])
    addresses = {1: "127.0.0.2:7001", 2: "127.0.0.3:7002", 3: "127.0.0.4:7003"}
    return ClusterView(machine.config, 1, addresses, leaders or {1: 2, 2: 3, 3: 1})


def test_cluster_slots_as_redis_py_reads_them() -> None:
    assert _view().complete
    slots = parse_cluster_slots(cluster_replies.slots_reply(_view()))
    assert slots[(0, 5460)]["primary"] == ("127.0.0.3", 7002)
    assert slots[(10922, 16383)]["primary"] == ("127.0.0.2", 7001)
    assert len(slots[(5461, 10921)]["replicas"]) == 2
    # the wire shape: start, end, then [ip, port, id, metadata] per node
    first = cluster_replies.slots_reply(_view())[0]
    assert first[2] == [b"127.0.0.3", 7002, f"{2:040x}", {}]
    assert encode(first[2], 2).endswith(b"*0\r\n") and encode(first[2], 3).endswith(b"%0\r\n")


def test_cluster_nodes_shards_and_info_as_redis_py_reads_them() -> None:
    view = _view(leaders={1: 2, 2: 2, 3: 2})
    view.bus_ports = {1: 7701, 2: 7702, 3: 7703}
    text = str(cluster_replies.nodes_reply(view))
    assert f"{1:040x} 127.0.0.2:7001@7701 myself,slave {2:040x} 0 0 1 connected\n" in text
    nodes = parse_cluster_nodes(text)
    me = nodes["127.0.0.2:7001"]
    assert me["flags"] == "myself,slave" and me["master_id"] == f"{2:040x}"
    leader = nodes["127.0.0.3:7002"]
    assert leader["flags"] == "master"
    assert leader["slots"] == [["0", "5460"], ["5461", "10921"], ["10922", "16383"]]
    shards = parse_cluster_shards(cluster_replies.shards_reply(view))
    assert shards[0][b"slots"] == [0, 5460]
    roles = [n[b"role"] for n in shards[0][b"nodes"]]
    assert roles == [b"master", b"replica", b"replica"]
    info = parse_cluster_info(str(cluster_replies.info_reply(view)))
    assert info["cluster_state"] == "ok"
    assert info["cluster_slots_assigned"] == "16384" and info["cluster_size"] == "3"
    assert info["cluster_known_nodes"] == "3" and info["cluster_current_epoch"] == "1"
    # a shard member with no known client address: not ok yet
    view.addresses.pop(3)
    assert "cluster_state:fail" in cluster_replies.info_reply(view)


def test_moved_text() -> None:
    assert cluster.moved(key_slot(b"foo"), "h:1") == "MOVED 12182 h:1"


# -- the shard machine ------------------------------------------------------------------------

replies = st.recursive(
    st.none() | st.binary(max_size=8) | st.integers(-2**63, 2**63 - 1)
    | st.builds(Simple, st.text("abcOK", max_size=5))
    | st.builds(CommandError, st.text("ERR x", min_size=1, max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.builds(RespSet, st.lists(inner, max_size=3))
    | st.dictionaries(st.binary(max_size=4), inner, max_size=3),
    max_leaves=10)


@given(replies)
def test_replies_cross_the_node_link_unchanged(value: object) -> None:
    carried = msgpack.unpackb(msgpack.packb(encode_reply(value)))
    back = decode_reply(carried)
    assert encode(back, 3) == encode(value, 3)
    assert encode(back, 2) == encode(value, 2)


def test_verbatim_survives() -> None:
    assert type(decode_reply(encode_reply(Verbatim("a")))) is Verbatim


def _get(machine: ShardMachine, key: bytes, now_ms: int = 0) -> object:
    return commands.execute_read(machine.engine, now_ms, [b"GET", key])


def test_apply_runs_writes_once_and_skips_what_the_engine_has(tmp_path: Path) -> None:
    machine = engine_shard(tmp_path)
    out = machine.apply([(1, encode_command(0, [b"SET", b"a", b"1"])),
                         (2, encode_command(0, [b"INCR", b"n"])),
                         (3, encode_command(0, [b"NOPE"]))])
    assert [decode_reply(r) for r in out[:2]] == [OK, 1]
    assert str(decode_reply(out[2])).startswith("ERR unknown command 'NOPE'")
    assert machine.engine.applied_index == 3
    # replayed after a restart: nothing applied twice
    assert machine.apply([(2, encode_command(0, [b"INCR", b"n"]))]) == [None]
    assert _get(machine, b"n") == b"1"


def test_one_apply_run_is_one_engine_write_and_entries_see_each_other(tmp_path: Path) -> None:
    machine = engine_shard(tmp_path)
    writes: list[int | None] = []
    original = machine.engine.write

    def counted(batch: object, applied_index: int | None = None) -> None:
        writes.append(applied_index)
        original(batch, applied_index)  # type: ignore[arg-type]

    machine.engine.write = counted  # type: ignore[method-assign]
    out = machine.apply([(1, encode_command(0, [b"INCR", b"n"])),
                         (2, encode_command(0, [b"INCR", b"n"])),
                         (3, encode_command(0, [b"HSET", b"h", b"f", b"v"])),
                         (4, encode_command(0, [b"FLUSHALL"])),
                         (5, encode_command(0, [b"INCR", b"n"]))])
    assert [decode_reply(r) for r in out] == [1, 2, 1, OK, 1]
    assert writes == [3, 5]  # FLUSHALL walks the engine: what gathered is written first
    assert _get(machine, b"n") == b"1" and machine.engine.applied_index == 5


def test_expire_entries_delete_only_what_expired_at_their_time(tmp_path: Path) -> None:
    machine = engine_shard(tmp_path)
    machine.apply([(1, encode_command(1000, [b"SET", b"a", b"1", b"PX", b"10"])),
                   (2, encode_command(1000, [b"SET", b"b", b"1", b"PX", b"500"])),
                   (3, encode_command(1000, [b"SET", b"c", b"1"]))])
    keys, cursor = expired_keys(machine.engine, 1100, b"", 10)
    assert keys == [b"a"] and cursor == b""
    # b was set again without expiry between the sweep and the entry: it stays
    out = machine.apply([(4, encode_command(1200, [b"SET", b"b", b"2"])),
                         (5, encode_expire(2000, [b"a", b"b"]))])
    assert decode_reply(out[1]) == 1
    assert machine.engine.get(b"a") is None and _get(machine, b"b", 2000) == b"2"
    assert machine.engine.applied_index == 5


def test_snapshots_restore_only_when_ahead_of_the_engine(tmp_path: Path) -> None:
    machine = engine_shard(tmp_path / "a")
    machine.apply([(1, encode_command(0, [b"MSET", b"x", b"1", b"y", b"2"]))])
    blob = machine.snapshot()()  # type: ignore[operator]
    other = engine_shard(tmp_path / "b")
    other.restore(blob)
    assert [k for k, _, _ in other.engine.scan()] == [b"x", b"y"]
    assert _get(other, b"y") == b"2" and other.engine.applied_index == 1
    machine.apply([(2, encode_command(0, [b"SET", b"z", b"3"]))])
    machine.restore(blob)  # behind the engine (a restart): left alone
    assert _get(machine, b"z") == b"3"


def test_merged_kv_reads_shards_as_one(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    one, two = Engine.open(tmp_path / "1"), Engine.open(tmp_path / "2")
    one.write([(b"a", b"1", 0), (b"c", b"3", 0)])
    two.write([(b"b", b"2", 0)])
    merged = MergedKV([one, two])
    assert merged.count() == 3 and merged.get(b"b") == (b"2", 0)
    assert merged.keys_after(b"", 2) == [b"a", b"b"]
    assert [k for k, _, _ in merged.scan(b"b")] == [b"b", b"c"]


def test_snapshots_of_the_real_engine_move_a_shard(tmp_path: Path) -> None:
    source, target = engine_shard(tmp_path / "source"), engine_shard(tmp_path / "target")
    source.apply([(i + 1, encode_command(0, [b"HSET", b"h%d" % i, b"f", b"%d" % i]))
                  for i in range(50)])
    blob = source.snapshot()()  # type: ignore[operator]
    target.restore(blob)
    assert target.engine.applied_index == 50 and target.engine.count() == 50
    assert commands.execute_read(target.engine, 0, [b"HGET", b"h7", b"f"]) == b"7"
    source.engine.close()
    target.engine.close()
