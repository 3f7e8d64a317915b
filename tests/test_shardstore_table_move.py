"""TABLE.MOVE (shardstore/table_move.py): the catalog's record of a table's move sans I/O
(plan, switch, reverse, finish, refusals), its parser fuzzed with hypothesis, and a move on
live nodes: a range table in the keyspace `default` (three nodes) with a month split off,
moved to the keyspace `users` (node 4) while a thread writes a few hundred rows through
shardstore.client; every acknowledged write is then read back with its last value from
the new keyspace and none is left in the old one; a month's read touches one shard; and
TABLE.MOVE.REVERSE brings it all back; a move cancelled in the middle of a slow copy leaves
every row in `default`, and none in `users`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import given
from hypothesis import strategies as st

from shardstore import catalog
from shardstore.catalog import Catalog, CatalogError, Table
from shardstore.client import ShardstoreClient, ShardstoreError
from shardstore.cluster import ClusterConfig, Shard
from shardstore.keysets import KeySet
from shardstore.migrate import MoveStalled
from shardstore.moves import Move
from shardstore.router import Router, RouterOptions
from shardstore.table_keys import KIND_DATE
from shardstore.table_move import make_plan, parse_move
from shardstore.table_moves import give_range
from shardstore.table_verify import DigestService, Verifier, digest_rows
from tests.conftest import find_free_port
from tests.shardstore_procs import table_bound, table_rows, until_true
from tests.test_shardstore_catalog import DATE_RESTS, SortedKV
from tests.test_shardstore_keyspaces import KeyspaceCluster

MOVE_S = 60.0
ROWS = 200


def _orders() -> tuple[Catalog, Table]:
    table = Table("orders", rule=catalog.RULE_RANGE, kind=KIND_DATE,
                  splits=[20261100, 20261200], shards=[1, 2, 3])
    found = Catalog()
    found.tables[table.name] = table
    return found, table


def _entry(op: str, **fields: object) -> dict[str, object]:
    return {"op": op, "name": "orders", **fields}


def _arrive(cat: Catalog, table: Table, column: int) -> None:
    """Each range handed over as the generic moves' ends hand them (table_moves.py)."""
    assert table.moving is not None
    for step in table.moving.plan:
        give_range(table, step[0], step[1], step[column])
        cat.settle(table)


def test_the_catalog_records_switches_reverses_and_finishes_a_move() -> None:
    cat, table = _orders()
    plan = make_plan(table, [4, 5])
    assert [p[2:] for p in plan] == [(1, 4), (2, 5), (3, 4)]

    def apply(op: str, **fields: object) -> object:
        return cat.apply(_entry(op, **fields), [1, 2, 3, 4, 5], ["default", "users"])

    assert "is in keyspace 'default' already" in apply(catalog.OP_MOVE, keyspace="default",
                                                       plan=plan)
    assert "no such keyspace 'x'" in apply(catalog.OP_MOVE, keyspace="x", plan=plan)
    assert "changed meanwhile" in apply(catalog.OP_MOVE, keyspace="users", plan=plan[:2])
    assert apply(catalog.OP_MOVE_FINISH) == "ERR table 'orders' is not moving"
    assert apply(catalog.OP_MOVE, keyspace="users", plan=plan) is True
    assert apply(catalog.OP_MOVE, keyspace="users", plan=plan) is True  # again: no-op
    assert "moving to keyspace 'users'" in apply(catalog.OP_SPLIT, at=20270100, shard=3)
    assert "needs it switched" in apply(catalog.OP_MOVE_REVERSE)
    _arrive(cat, table, 3)
    assert table.keyspace == "users" and table.moving is not None
    assert (table.moving.state, table.moving.switches) == (catalog.MOVE_SWITCHED, 1)
    assert Table.from_wire(table.to_wire()) == table
    assert apply(catalog.OP_MOVE_REVERSE) is True and apply(catalog.OP_MOVE_REVERSE) is True
    _arrive(cat, table, 2)
    assert (table.keyspace, table.moving, table.shards) == ("default", None, [1, 2, 3])
    assert apply(catalog.OP_MOVE, keyspace="users", plan=plan) is True
    _arrive(cat, table, 3)
    assert apply(catalog.OP_MOVE_FINISH) is True
    assert table.moving is None and table.keyspace == "users"
    assert apply(catalog.OP_MOVE_CANCEL) == "ERR table 'orders' is not moving"
    back = make_plan(table, [1, 2, 3])
    assert apply(catalog.OP_MOVE, keyspace="default", plan=back) is True
    assert apply(catalog.OP_MOVE_CANCEL) is True  # nothing arrived yet, but some may
    assert table.moving is not None and table.moving.state == catalog.MOVE_CANCELLING
    assert apply(catalog.OP_MOVE_CANCEL) is True  # the coordinator saw none open: over
    assert table.moving is None and table.keyspace == "users"
    assert apply(catalog.OP_MOVE, keyspace="default", plan=back) is True
    give_range(table, back[0][0], back[0][1], back[0][3])  # one range arrived
    cat.settle(table)
    assert "TABLE.MOVE.REVERSE needs it switched" in apply(catalog.OP_MOVE_REVERSE)
    assert apply(catalog.OP_MOVE_CANCEL) is True and table.moving is not None
    assert table.moving.state == catalog.MOVE_CANCELLING
    give_range(table, back[0][0], back[0][1], back[0][2])  # and back again
    cat.settle(table)
    assert table.moving is not None  # until the coordinator closes it
    assert apply(catalog.OP_MOVE_CANCEL) is True
    assert table.moving is None and table.keyspace == "users"
    hashed = Table("users")
    cat.tables["users"] = hashed
    assert "changed meanwhile" in cat.apply({"op": catalog.OP_MOVE, "name": "users",
                                             "keyspace": "users", "plan": []},
                                            [1], ["default", "users"])


@given(st.lists(st.one_of(st.sampled_from([b"orders", b"users", b"", b"a b", b"\xff"]),
                          st.binary(max_size=8)), max_size=4))
def test_the_move_parser_answers_names_or_a_clear_error(words: list[bytes]) -> None:
    try:
        name, keyspace = parse_move([b"TABLE.MOVE", *words])
    except CatalogError as exc:
        assert str(exc) == "ERR syntax: TABLE.MOVE table keyspace"
    else:
        assert [name.encode(), keyspace.encode()] == words


# -- live nodes ----------------------------------------------------------------------------

class Writer:
    """A thread setting ROWS rows round after round through shardstore.client; a row's
    acknowledged value is the round that wrote it last. TRYAGAIN (a frozen range) is
    retried: the fence refused the write when it was applied."""

    def __init__(self, seeds: list[str]) -> None:
        self.seeds = seeds
        self.acked: dict[str, str] = {}
        self.unknown: dict[str, set[str]] = {}
        self.writes = 0
        self.refused = 0  # TRYAGAIN answers (a frozen range)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def key(i: int) -> str:
        return f"orders:{('2026-10', '2026-11', '2026-12', '2027-01')[i % 4]}-{1 + i % 28:02d}:{i}"

    def run(self) -> None:
        with ShardstoreClient(self.seeds) as client:
            rounds = 0
            while not self.stopping.is_set():
                rounds += 1
                for i in range(ROWS):
                    self.set(client, self.key(i), str(rounds))

    def set(self, client: ShardstoreClient, key: str, value: str) -> None:
        while True:
            try:
                assert client.set(key, value)
            except ShardstoreError as exc:
                if "TRYAGAIN" in str(exc):
                    self.refused += 1
                    time.sleep(0.02)
                    continue
                self.unknown.setdefault(key, set()).add(value)  # UNKNOWN: either way
                return
            self.acked[key] = value
            self.writes += 1
            return


async def _until(condition: Callable[[], bool], what: str) -> None:
    await until_true(condition, what, MOVE_S)


def _settled(spaces: KeyspaceCluster, keyspace: str) -> bool:
    """Every node's catalog binds orders to `keyspace` (moved there, or back with no
    record left) and no move of its rows is open."""
    if not table_bound(spaces.nodes, "orders", keyspace):
        return False
    return keyspace != "default" or all(
        node.config_machine.catalog.tables["orders"].moving is None for node in spaces.nodes)


def _rows_on(spaces: KeyspaceCluster, indexes: range) -> int:
    return table_rows(spaces.nodes, "orders", indexes)


async def _move_under_writes(spaces: KeyspaceCluster) -> None:
    node = aredis.Redis(**spaces.address(0), protocol=3)  # type: ignore[arg-type]
    assert await node.execute_command("TABLE.CREATE", "orders", "RANGE", "DATE", "SPLITS",
                                      "2026-11", "2026-12") == b"OK"
    assert await node.execute_command("TABLE.SPLIT", "orders", "2027-01") == b"OK"
    assert await node.execute_command("TABLE.CREATE", "carts", "HASH") == b"OK"
    for words, text in ((("orders", "sales"), "no such keyspace 'sales'"),
                        (("carts", "default"), "is in keyspace 'default' already")):
        with pytest.raises(redis.ResponseError, match=text):
            await node.execute_command("TABLE.MOVE", *words)
    await _until(lambda: all(len(n.config_machine.catalog.tables.get("orders", Table(
        "x")).shards) == 4 for n in spaces.nodes), "the split everywhere")
    writer = Writer([spaces.nodes[0].settings.advertise])
    writer.thread.start()
    await _until(lambda: writer.writes >= ROWS + ROWS // 4, "every row written once")
    begun = await node.execute_command("TABLE.MOVE", "orders", "users")
    assert len(begun) <= 4  # the coordinator's round may begin some (or all) first
    info = await node.execute_command("TABLE.INFO", "orders")
    assert info[b"move"] is None or info[b"move"][b"to"] == b"users"
    await _until(lambda: _settled(spaces, "users"), "the move's end")
    verifiers = [n.commands.tables.verifier for n in spaces.nodes]
    assert sum(v.verified for v in verifiers) >= ROWS  # checksums equal before hand-over
    assert sum(v.mismatches for v in verifiers) == 0
    done_at = writer.writes
    await _until(lambda: writer.writes >= done_at + ROWS, "writes after the move")
    writer.stopping.set()
    await asyncio.to_thread(writer.thread.join)
    await _check_rows(spaces, writer, new=range(3, 4), old=range(0, 3))
    month = aredis.Redis(**spaces.address(3), protocol=3)  # type: ignore[arg-type]
    december = await month.execute_command("TABLE.RANGE", "orders", "2026-12", "2027-01")
    assert len(december) == ROWS // 4
    info = await month.execute_command("TABLE.INFO", "orders")
    assert info[b"last_range_shards"] == 1 and info[b"keyspace"] == b"users"
    assert info[b"move"][b"state"] == b"switched" and info[b"move"][b"ranges_arrived"] == 4
    await _through_the_router(spaces, writer, december)
    # the ids of the moves this command began: the coordinator's round may begin them first
    assert len(await node.execute_command("TABLE.MOVE.REVERSE", "orders")) <= 4
    await _until(lambda: _settled(spaces, "default"), "the reverse's end")
    await _check_rows(spaces, writer, new=range(0, 3), old=range(3, 4))
    await _cancelled(spaces, node)
    await _check_rows(spaces, writer, new=range(0, 3), old=range(3, 4))
    for client in (node, month):
        await client.aclose()


async def _through_the_router(spaces: KeyspaceCluster, writer: Writer,
                              december: list[bytes]) -> None:
    """A router seeded with a node of `default` reads the moved rows from `users`."""
    router = Router(RouterOptions([spaces.nodes[0].settings.advertise]))
    await router.start("127.0.0.1", find_free_port("127.0.0.1"))
    client = aredis.Redis(port=router.server.port)
    try:
        key = next(k for k in writer.acked if k.startswith("orders:2026-12"))
        assert await client.get(key) == writer.acked[key].encode()
        assert await client.execute_command("TABLE.RANGE", "orders", "2026-12",
                                            "2027-01") == december
        with pytest.raises(redis.ResponseError, match="needs it copying"):
            await client.execute_command("TABLE.MOVE.CANCEL", "orders")
    finally:
        await client.aclose()
        await router.stop()


async def _cancelled(spaces: KeyspaceCluster, node: aredis.Redis) -> None:
    """A move cancelled in the middle of a slow copy: every range stays on (or comes
    back to) its shard of `default`, and the record goes."""
    for each in spaces.nodes:
        each.mover.batch_keys = 1
    await node.execute_command("TABLE.MOVE", "orders", "users")
    await _until(lambda: any(m.state == "copy" and m.copied >= 2
                             for m in spaces.nodes[0].full_config.moves.values()),
                 "a copy under way")
    assert await node.execute_command("TABLE.MOVE.CANCEL", "orders") == []  # none back
    await _until(lambda: _settled(spaces, "default"), "the cancel's end")
    assert any(m.cancelled for m in spaces.nodes[0].full_config.moves.values())
    info = await node.execute_command("TABLE.INFO", "orders")
    assert info[b"move"] is None and info[b"keyspace"] == b"default"


async def _check_rows(spaces: KeyspaceCluster, writer: Writer, new: range,
                      old: range) -> None:
    """Every acknowledged row read back with its last value; all of them in `new`'s
    nodes' engines (each node of default holds every shard), none in `old`'s."""
    def read() -> dict[str, bytes | None]:
        with ShardstoreClient([spaces.nodes[3].settings.advertise]) as client:
            return {key: client.get(key) for key in writer.acked}

    values = await asyncio.to_thread(read)
    for key, value in writer.acked.items():
        possible = {value.encode(), *(v.encode() for v in writer.unknown.get(key, ()))}
        assert values[key] in possible, key
    assert _rows_on(spaces, old) == 0
    await _until(lambda: _rows_on(spaces, new[-1:]) == ROWS, "every row on the new shards")


def test_a_range_table_moves_to_another_keyspace_under_writes_and_back(
        tmp_path: Path) -> None:
    async def main() -> None:
        spaces = KeyspaceCluster(tmp_path)
        await spaces.start()
        try:
            await _move_under_writes(spaces)
        finally:
            await spaces.stop()

    asyncio.run(main())


# -- checksums before the hand-over -----------------------------------------------------

class Store(SortedKV):
    """A store with values and expiries (the calls digest_rows uses)."""

    def __init__(self, rows: dict[bytes, tuple[bytes, int]]) -> None:
        super().__init__(set(rows))
        self.rows = rows

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return self.rows.get(key)


ROW_KEYS = st.dictionaries(DATE_RESTS.map(lambda r: b"orders:" + r),
                           st.tuples(st.binary(max_size=4), st.sampled_from([0, 5, 50])),
                           max_size=30)


@given(ROW_KEYS, st.integers(1, 7))
def test_checksum_pages_cover_every_live_row_once(rows: dict[bytes, tuple[bytes, int]],
                                                  page: int) -> None:
    keys = KeySet.of_positions(b"orders:", KIND_DATE, 0, 20261100, 20270100)
    store = Store({**rows, b"other:2026-11-01": (b"x", 0)})
    whole = digest_rows(store, keys, None, 10_000, now_ms=10)
    live = [k for k, (_, expire) in rows.items() if k in keys and not 0 < expire <= 10]
    assert whole[1] == len(live) and whole[2] is None
    after, counted = None, 0
    while True:
        _, count, after = digest_rows(store, keys, after, page, now_ms=10)
        counted += count
        if after is None:
            break
    assert counted == len(live)
    if live:
        changed = dict(rows)
        changed[live[0]] = (changed[live[0]][0] + b"!", changed[live[0]][1])
        assert digest_rows(Store(changed), keys, None, 10_000, 10) != whole


class FakeGroup:
    async def read_barrier(self, timeout: float) -> int:
        return 0


class FakeNode:
    """One node hosting both shards of a move, each a Store."""

    me = 1

    def __init__(self, stores: dict[int, Store]) -> None:
        self.stores = stores
        self.full_config = ClusterConfig(shards={sid: Shard(sid, sid, [1]) for sid in stores})
        self.host = self

    def group(self, group_id: int) -> FakeGroup | None:
        return FakeGroup() if group_id in self.stores else None

    def now_ms(self) -> int:
        return 10


def test_the_verifier_stops_a_hand_over_when_the_rows_differ() -> None:
    keys = KeySet.of_positions(b"orders:", KIND_DATE, 0, 20261100, 20270100)
    rows = {b"orders:2026-11-%02d" % d: (b"v", 0) for d in range(1, 20)}
    node = FakeNode({1: Store(rows), 2: Store(dict(rows))})
    service = DigestService(node, node.stores.get, 1.0)  # type: ignore[arg-type]
    verifier = Verifier(node, service, 1.0, page_keys=4)  # type: ignore[arg-type]
    move = Move(7, keys, 1, 2)
    asyncio.run(verifier.verify(move))
    assert (verifier.verified, verifier.mismatches) == (len(rows), 0)
    node.stores[2].rows[b"orders:2026-11-05"] = (b"lost write", 0)
    with pytest.raises(MoveStalled, match="rows of move 7 differ"):
        asyncio.run(verifier.verify(move))
    assert verifier.mismatches == 1


README_SENTENCES = [  # checked by the tests of this file
    "`TABLE.MOVE orders users` moves a range table online to the keyspace `users`: each "
    "range is frozen on its shard, copied to a shard of `users`, checked by xxhash "
    "checksums on both sides and handed over, and the table is bound to `users` when the "
    "last range has arrived; `TABLE.INFO orders` shows the move's progress.",
    "Until `TABLE.MOVE.FINISH orders`, `TABLE.MOVE.REVERSE orders` moves it back; before "
    "the switch, `TABLE.MOVE.CANCEL orders` rolls it back and every row stays in the "
    "keyspace it was in.",
]


def test_the_readme_says_what_these_tests_show() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = " ".join(readme.read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence
