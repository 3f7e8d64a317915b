"""TABLE.MOVE of a HASH table (shardstore/table_move.py): the key set of a HASH table's rows
in a set of slots (keysets.KIND_TABLE_SLOTS) and its wire form fuzzed with hypothesis, the
plan of slot runs between two keyspaces' slot maps, the record's arrivals, switch and
cancel sans I/O, the copy on live nodes (a HASH table's rows in the keyspace `default`,
three nodes and three shards, carried by the generic move machinery to the keyspace
`users` on node 4, checked by checksums, none left in `default`), and TABLE.MOVE of a
HASH table under a small write load through shardstore.client: every acknowledged write
read back with its last value through shardstore.client and the router (both seeded with
a node of `default`), none left in `default`, whose nodes refuse the table's rows with a
plain error naming its keyspace (never `-MOVED`, which would repoint the slot for the
keyspace's other keys), and TABLE.MOVE.REVERSE brings it all back; a move cancelled
before its switch leaves every row in `default`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.resp_client import ReplyError
from native.crc16 import key_slot
from shardstore import catalog
from shardstore import table_move_record as record
from shardstore.catalog import NOT_HERE, Catalog, Table
from shardstore.client import AsyncShardstoreClient, ShardstoreClient, ShardstoreError
from shardstore.keysets import KIND_TABLE_SLOTS, KeySet, prefix_end
from shardstore.router import Router, RouterOptions
from shardstore.router_plan import SHARD, RouteMap
from shardstore.table_move import make_hash_plan
from shardstore.table_moves import TableMoveHooks
from tests.conftest import find_free_port
from tests.shardstore_procs import table_bound, table_rows, until_true
from tests.test_shardstore_keyspaces import KeyspaceCluster

MOVE_S = 60.0
ROWS = 120
SLOTS = 16384


# -- the key set ----------------------------------------------------------------------------

@given(st.binary(min_size=1, max_size=6), st.sets(st.integers(0, SLOTS - 1), min_size=1,
                                                 max_size=20), st.binary(max_size=8))
def test_a_table_slots_set_holds_its_table_rows_in_its_slots(prefix: bytes, slots: set[int],
                                                            rest: bytes) -> None:
    keys = KeySet.of_table_slots(prefix, slots)
    key = prefix + rest
    assert (key in keys) == (key_slot(key) in slots)
    assert (rest in keys) == (rest.startswith(prefix) and key_slot(rest) in slots)
    assert KeySet.from_wire(keys.to_wire()) == keys
    first, end = keys.scan_bounds()
    assert first == prefix and (end is None or key < end)
    assert keys.minus(KeySet.of_table_slots(prefix, slots)) == []
    assert keys.minus(KeySet.of_table_slots(prefix + b"x", slots)) == [keys]
    assert keys.minus(KeySet.of_slots(slots)) == [keys]


@given(st.lists(st.one_of(st.binary(max_size=4), st.integers(-2, SLOTS + 2), st.none(),
                          st.text(max_size=4), st.lists(st.integers(-1, SLOTS), max_size=3)),
                max_size=4))
def test_a_key_set_wire_form_is_parsed_or_refused_clearly(wire: list[object]) -> None:
    for candidate in (wire, [KIND_TABLE_SLOTS, *wire]):
        try:
            parsed = KeySet.from_wire(candidate)
        except ValueError as exc:
            assert "bad key set" in str(exc)
        else:
            assert KeySet.from_wire(parsed.to_wire()) == parsed


def test_prefix_end_bounds_every_key_of_a_prefix() -> None:
    assert prefix_end(b"carts:") == b"carts;"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None


# -- the plan and the record ------------------------------------------------------------------

def _map(*runs: tuple[int, int, int]) -> list[int]:
    table = [0] * SLOTS
    for low, high, sid in runs:
        table[low:high] = [sid] * (high - low)
    return table


def test_a_hash_plan_has_one_run_per_pair_of_owners() -> None:
    here = _map((0, 5000, 1), (5000, 10000, 2), (10000, SLOTS, 3))
    there = _map((0, 8000, 4), (8000, SLOTS, 5))
    plan = make_hash_plan(here, there, {1, 2, 3, 4, 5})
    assert plan == [(0, 5000, 1, 4), (5000, 8000, 2, 4), (8000, 10000, 2, 5),
                    (10000, SLOTS, 3, 5)]
    with pytest.raises(ValueError):
        make_hash_plan(here, there, {1, 2, 3, 4})
    with pytest.raises(ValueError):
        make_hash_plan(here, [], {1, 2, 3, 4, 5})


def _carts() -> tuple[Catalog, Table, list[tuple[int, int, int, int]]]:
    found = Catalog()
    table = Table("carts")
    found.tables["carts"] = table
    plan = make_hash_plan(_map((0, SLOTS, 1)), _map((0, 9000, 4), (9000, SLOTS, 5)),
                          {1, 4, 5})
    return found, table, plan


def test_the_record_switches_a_hash_table_when_every_run_arrived() -> None:
    cat, table, plan = _carts()

    def apply(op: str, **fields: object) -> object:
        return cat.apply({"op": op, "name": "carts", **fields}, [1, 4, 5],
                         ["default", "users"])

    assert "changed meanwhile" in str(apply(catalog.OP_MOVE, keyspace="users",
                                            plan=plan[:1]))
    assert apply(catalog.OP_MOVE, keyspace="users", plan=plan) is True
    assert table.moving is not None
    record.arrive(table, 0, True)
    assert table.keyspace == "default" and table.moving.state == catalog.MOVE_COPYING
    wire = Table.from_wire(msgpack.unpackb(msgpack.packb(table.to_wire())))
    assert wire.moving is not None and wire.moving.arrived == [0]
    record.arrive(table, 1, True)
    assert table.keyspace == "users" and table.moving.state == catalog.MOVE_SWITCHED
    assert apply(catalog.OP_MOVE_REVERSE) is True
    record.arrive(table, 0, False)
    record.arrive(table, 1, False)
    assert table.keyspace == "default" and table.moving is None


def test_a_cancelled_hash_move_ends_when_its_runs_are_home() -> None:
    cat, table, plan = _carts()
    assert cat.apply({"op": catalog.OP_MOVE, "name": "carts", "keyspace": "users",
                      "plan": plan}, [1, 4, 5], ["default", "users"]) is True
    record.arrive(table, 0, True)
    record.step(table, catalog.OP_MOVE_CANCEL)
    record.step(table, catalog.OP_MOVE_CANCEL)  # closing: run 0 is still away
    assert table.moving is not None
    record.arrive(table, 0, False)
    record.step(table, catalog.OP_MOVE_CANCEL)
    assert table.moving is None and table.keyspace == "default"


def test_slot_moves_wait_while_a_hash_table_has_a_move_recorded() -> None:
    cat, table, plan = _carts()
    hooks = TableMoveHooks(cat, {})
    assert hooks.begin(KeySet.of_slots([7]), 1) is None
    assert cat.apply({"op": catalog.OP_MOVE, "name": "carts", "keyspace": "users",
                      "plan": plan}, [1, 4, 5], ["default", "users"]) is True
    assert "after TABLE.MOVE.FINISH" in str(hooks.begin(KeySet.of_slots([7]), 1))
    run = KeySet.of_table_slots(b"carts:", range(plan[0][0], plan[0][1]))
    assert hooks.begin(run, 1) is None
    assert "is not a slot run" in str(hooks.begin(run, 5))
    assert "is not a slot run" in str(hooks.begin(KeySet.of_table_slots(b"carts:", [1]), 1))


def test_routes_follow_a_hash_tables_own_slot_map() -> None:
    """TABLE.INFO's `slots` routes a HASH table's rows by its keyspace's map; a MOVED for
    such a row never repoints the seeds' map."""
    info = {b"name": b"carts", b"keyspace": b"users", b"rule": b"HASH", b"kind": b"",
            b"epoch": 0, b"ranges": [],
            b"slots": [[0, 8999, 4, [b"127.0.0.5:7"]], [9000, SLOTS - 1, 5, [b"h:8"]]]}
    routes = RouteMap()
    routes.load_slots([[0, SLOTS - 1, [b"127.0.0.2", 6]]])
    routes.load_tables([info])
    key = b"carts:1"
    owner = 4 if key_slot(key) < 9000 else 5
    assert routes.target(key) == (SHARD, owner)
    assert routes.target(b"plain") == ("slot", key_slot(b"plain"))
    router = Router(RouterOptions(["127.0.0.2:6"]))
    router.routes = routes
    moved = ReplyError(f"MOVED {key_slot(key)} 127.0.0.9:1")
    assert router._redirect(moved, repoint=False) == ("127.0.0.9:1", False)
    assert routes.slots[key_slot(key)] == "127.0.0.2:6"
    with pytest.raises(ValueError):
        routes.load_tables([{**info, b"slots": [[0, 1]]}])


class Maps:
    """Slot maps of `default` (shard 1) and `users` (shards 4, 5) as _carts plans them."""

    def __init__(self) -> None:
        self.shards = {1: Table("s1"), 4: Table("s4", "users"), 5: Table("s5", "users")}
        self.tables = {"default": _map((0, SLOTS, 1)),
                       "users": _map((0, 9000, 4), (9000, SLOTS, 5))}

    def slot_table(self, keyspace: str) -> list[int]:
        return self.tables.get(keyspace, [])


def test_a_run_whose_slots_changed_owner_since_the_plan_is_refused() -> None:
    cat, _, plan = _carts()
    maps = Maps()
    hooks = TableMoveHooks(cat, {}, maps)
    cat.apply({"op": catalog.OP_MOVE, "name": "carts", "keyspace": "users", "plan": plan},
              [1, 4, 5], ["default", "users"])
    run = KeySet.of_table_slots(b"carts:", range(plan[0][0], plan[0][1]))
    assert hooks.begin(run, 1) is None
    maps.tables["users"][5] = 5  # a slot move ended between the plan and the record
    assert "slot maps changed" in str(hooks.begin(run, 1))


SLOT_RUN_PARTS = st.one_of(st.integers(-3, SLOTS + 3), st.binary(max_size=3), st.none(),
                           st.lists(st.binary(max_size=6), max_size=2))


@given(st.one_of(st.none(), st.integers(), st.lists(st.lists(SLOT_RUN_PARTS, max_size=5),
                                                     max_size=4)))
def test_a_tables_slots_are_parsed_or_refused_clearly(slots: object) -> None:
    info = {b"name": b"carts", b"keyspace": b"users", b"rule": b"HASH", b"kind": b"",
            b"epoch": 0, b"ranges": [], b"slots": slots}
    routes = RouteMap()
    try:
        routes.load_tables([info])
    except ValueError as exc:
        assert "TABLE.INFO reply not understood" in str(exc)
    else:
        for table in routes.hashed.values():
            assert len(table) == SLOTS


# -- the copy on live nodes ---------------------------------------------------------------------

async def _until(condition: Callable[[], bool], what: str) -> None:
    await until_true(condition, what, MOVE_S)


def _bound(spaces: KeyspaceCluster, keyspace: str) -> bool:
    """Every node binds carts to `keyspace` and no move is open."""
    return table_bound(spaces.nodes, "carts", keyspace)


def _rows_on(spaces: KeyspaceCluster, indexes: range) -> int:
    return table_rows(spaces.nodes, "carts", indexes)


async def _copied(spaces: KeyspaceCluster) -> None:
    default = AsyncRedisCluster(**spaces.address(0))  # type: ignore[arg-type]
    assert await default.execute_command("TABLE.CREATE", "carts", "HASH") == b"OK"
    await _until(lambda: all("carts" in n.config_machine.catalog.tables
                             for n in spaces.nodes), "the table everywhere")
    for i in range(ROWS):
        assert await default.set(f"carts:{i}", f"v{i}")
    full = spaces.nodes[0].full_config
    plan = make_hash_plan(full.slot_shard, full.slot_table("users"), set(full.shards))
    entry = {"op": catalog.OP_MOVE, "name": "carts", "keyspace": "users", "plan": plan}
    assert await spaces.nodes[0].config_write(msgpack.packb(entry)) is True
    await spaces.nodes[0].service.barrier()
    await spaces.nodes[0].commands.tables.moves.drive()  # as TABLE.MOVE does
    await _until(lambda: _bound(spaces, "users"), "the switch")
    verifiers = [n.commands.tables.verifier for n in spaces.nodes]
    assert sum(v.verified for v in verifiers) >= ROWS
    assert sum(v.mismatches for v in verifiers) == 0
    assert _rows_on(spaces, range(0, 3)) == 0
    assert _rows_on(spaces, range(3, 4)) == ROWS
    users = AsyncRedisCluster(**spaces.address(3))  # type: ignore[arg-type]
    assert [await users.get(f"carts:{i}") for i in range(ROWS)] == [
        f"v{i}".encode() for i in range(ROWS)]
    for client in (default, users):
        await client.aclose()


def test_a_hash_tables_rows_are_copied_to_another_keyspace_and_checked(
        tmp_path: Path) -> None:
    async def main() -> None:
        spaces = KeyspaceCluster(tmp_path)
        await spaces.start()
        try:
            await _copied(spaces)
        finally:
            await spaces.stop()

    asyncio.run(main())


# -- TABLE.MOVE of a HASH table under writes ----------------------------------------------------

class Writer:
    """A thread setting ROWS rows of carts round after round through shardstore.client
    seeded with a node of `default`; a row's acknowledged value is the round that wrote
    it last. TRYAGAIN (frozen rows) and NOT_HERE (a binding switched) are refusals: the
    write was not applied, so it is sent again."""

    def __init__(self, seeds: list[str]) -> None:
        self.seeds = seeds
        self.acked: dict[str, str] = {}
        self.unknown: dict[str, set[str]] = {}
        self.writes = 0
        self.refused = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with ShardstoreClient(self.seeds) as client:
            rounds = 0
            while not self.stopping.is_set():
                rounds += 1
                for i in range(ROWS):
                    self.set(client, f"carts:{i}", str(rounds))

    def set(self, client: ShardstoreClient, key: str, value: str) -> None:
        while True:
            try:
                assert client.set(key, value)
            except ShardstoreError as exc:
                if "TRYAGAIN" in str(exc) or NOT_HERE in str(exc):
                    self.refused += 1
                    time.sleep(0.02)
                    continue
                self.unknown.setdefault(key, set()).add(value)  # UNKNOWN: either way
                return
            self.acked[key] = value
            self.writes += 1
            return


async def _cancelled(spaces: KeyspaceCluster, node: redis.asyncio.Redis) -> None:
    """A move of carts cancelled in the middle of a slow copy: every row stays in (or
    comes back to) `default`, and the record goes."""
    for each in spaces.nodes:
        each.mover.batch_keys = 1
    # the ids of the moves this command began: the coordinator may begin them first
    assert isinstance(await node.execute_command("TABLE.MOVE", "carts", "users"), list)
    await _until(lambda: any(m.state == "copy" and m.copied >= 2
                             for m in spaces.nodes[0].full_config.moves.values()),
                 "a copy under way")
    await node.execute_command("TABLE.MOVE.CANCEL", "carts")
    await _until(lambda: _bound(spaces, "default") and all(
        n.config_machine.catalog.tables["carts"].moving is None for n in spaces.nodes),
                 "the cancel's end")
    assert any(m.cancelled for m in spaces.nodes[0].full_config.moves.values())
    assert _rows_on(spaces, range(3, 4)) == 0 and _rows_on(spaces, range(2, 3)) == ROWS
    for each in spaces.nodes:
        each.mover.batch_keys = 256


async def _read_back(spaces: KeyspaceCluster, writer: Writer) -> None:
    """Every acknowledged write with its last value, through shardstore.client and the
    router, both seeded with a node of `default` (and some through the asyncio client)."""
    seed = spaces.nodes[0].settings.advertise

    def read() -> dict[str, bytes | None]:
        with ShardstoreClient([seed]) as client:
            return {key: client.get(key) for key in writer.acked}

    router = Router(RouterOptions([seed]))
    await router.start("127.0.0.1", find_free_port("127.0.0.1"))
    through = redis.asyncio.Redis(port=router.server.port)
    try:
        values = await asyncio.to_thread(read)
        routed = {key: await through.get(key) for key in writer.acked}
        async with AsyncShardstoreClient([seed]) as client:
            some = sorted(writer.acked)[:10]
            assert {key: await client.get(key) for key in some} == {
                key: values[key] for key in some}
    finally:
        await through.aclose()
        await router.stop()
    for key, value in writer.acked.items():
        possible = {value.encode(), *(v.encode() for v in writer.unknown.get(key, ()))}
        assert values[key] in possible and routed[key] in possible, key


async def _moved_under_writes(spaces: KeyspaceCluster) -> None:
    node = redis.asyncio.Redis(**spaces.address(0), protocol=3)  # type: ignore[arg-type]
    assert await node.execute_command("TABLE.CREATE", "carts", "HASH") == b"OK"
    await _until(lambda: all("carts" in n.config_machine.catalog.tables
                             for n in spaces.nodes), "the table everywhere")
    writer = Writer([spaces.nodes[0].settings.advertise])
    writer.thread.start()
    await _until(lambda: writer.writes >= ROWS, "every row written once")
    writer.stopping.set()
    await asyncio.to_thread(writer.thread.join)
    await _cancelled(spaces, node)
    writer = Writer([spaces.nodes[0].settings.advertise])
    writer.thread.start()
    await _until(lambda: writer.writes >= ROWS, "every row written once more")
    await node.execute_command("TABLE.MOVE", "carts", "users")
    await _until(lambda: _bound(spaces, "users"), "the switch")
    done_at = writer.writes
    await _until(lambda: writer.writes >= done_at + ROWS, "writes after the switch")
    writer.stopping.set()
    await asyncio.to_thread(writer.thread.join)
    info = await node.execute_command("TABLE.INFO", "carts")
    assert info[b"keyspace"] == b"users" and info[b"move"][b"state"] == b"switched"
    assert info[b"move"][b"ranges_arrived"] == info[b"move"][b"ranges"]
    await _read_back(spaces, writer)
    assert _rows_on(spaces, range(0, 3)) == 0 and _rows_on(spaces, range(3, 4)) == ROWS
    with pytest.raises(redis.ResponseError, match="bound to keyspace 'users'") as refused:
        await node.get("carts:1")
    assert NOT_HERE in str(refused.value) and "MOVED" not in str(refused.value)
    default = AsyncRedisCluster(**spaces.address(1))  # type: ignore[arg-type]
    assert await default.set("plain", "kept") and await default.get("plain") == b"kept"
    await default.aclose()
    stale = ShardstoreClient([spaces.nodes[0].settings.advertise])  # routes to users
    key = next(iter(writer.acked))
    assert await asyncio.to_thread(stale.get, key) == writer.acked[key].encode()
    assert stale.tables.address_of(("GET", key)) == spaces.nodes[3].settings.listen
    # the ids of the moves this command began: the coordinator may begin them first
    assert isinstance(await node.execute_command("TABLE.MOVE.REVERSE", "carts"), list)
    await _until(lambda: _bound(spaces, "default") and all(
        n.config_machine.catalog.tables["carts"].moving is None for n in spaces.nodes),
                 "the reverse's end")
    assert _rows_on(spaces, range(3, 4)) == 0 and _rows_on(spaces, range(2, 3)) == ROWS
    await _read_back(spaces, writer)  # the client and the router follow it back
    assert await asyncio.to_thread(stale.get, key) == writer.acked[key].encode()
    stale.close()
    await node.aclose()


def test_a_hash_table_moves_to_another_keyspace_under_writes(tmp_path: Path) -> None:
    async def main() -> None:
        spaces = KeyspaceCluster(tmp_path)
        await spaces.start()
        try:
            await _moved_under_writes(spaces)
        finally:
            await spaces.stop()

    asyncio.run(main())


README_SENTENCES = [  # checked by the tests of this file
    "A HASH table moves the same way, one run of slots at a time, from each shard of its "
    "keyspace to the shard that owns those slots in the target keyspace; the rows of a run "
    "answer `-TRYAGAIN` from its freeze until the last run has arrived, and slot moves are "
    "refused while its move is recorded.",
    "A node refuses the rows of a HASH table bound to another keyspace with an error naming "
    "that keyspace and the router, never `-MOVED`; the router and `shardstore.client` "
    "follow the table's binding.",
]


def test_the_readme_says_what_these_tests_show() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = " ".join(readme.read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence
