"""shardstore's tables, sans I/O: the key and point parsers of range tables
(shardstore/table_keys.py, fuzzed), the catalog's syntax, entries and routing
(shardstore/catalog.py) through the configuration machine, and range reads of one store
(shardstore/table_scan.py) over the real engine."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from unittest import mock

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from idgen.layout import DEFAULT_EPOCH_MS
from idgen.layout import parse as idgen_parse
from native.snowflake import make_id
from shardstore import catalog, cluster, table_keys, table_scan
from shardstore.catalog import Catalog, CatalogError, parse_create, parse_range, parse_split
from shardstore.cluster import ConfigMachine
from shardstore.engine import Engine
from shardstore.table_keys import (
    KIND_DATE,
    KIND_SNOWFLAKE,
    MAX_POSITION,
    MIN_POSITION,
    KeyFormatError,
    key_position,
    parse_point,
    point_text,
)
from shardstore.table_scan import merge_keys, range_keys

# -- keys and points ------------------------------------------------------------------------


def test_date_keys_begin_with_a_month_or_a_day() -> None:
    assert key_position(KIND_DATE, b"2026-12-07:1042") == 20261207
    assert key_position(KIND_DATE, b"2026-12") == 20261200
    assert key_position(KIND_DATE, b"2026-12:9") == 20261200
    assert key_position(KIND_DATE, b"2024-02-29") == 20240229
    for bad in (b"", b"2026", b"2026-13-01", b"2026-12-32", b"2025-02-29", b"2026-12-0",
                b"2026-123", b"2026-12-071", b"x2026-12", b"0000-01", b"2026-1-01"):
        with pytest.raises(KeyFormatError, match="no date"):
            key_position(KIND_DATE, bad)


def test_snowflake_keys_decode_as_idgen_does() -> None:
    assert table_keys.SNOWFLAKE_EPOCH_MS == DEFAULT_EPOCH_MS
    id_ = make_id(123_456_789, 7, 42)
    expected = idgen_parse(id_).time_ms
    assert key_position(KIND_SNOWFLAKE, str(id_).encode() + b":x") == expected
    assert key_position(KIND_SNOWFLAKE, str(id_).encode(), epoch_ms=0) == 123_456_789
    for bad in (b"", b"x1", b"12345678901234567890", str(1 << 63).encode()):
        with pytest.raises(KeyFormatError, match="no Snowflake id"):
            key_position(KIND_SNOWFLAKE, bad)


def test_points_and_their_text() -> None:
    assert parse_point(KIND_DATE, b"2027-01") == 20270100
    assert parse_point(KIND_DATE, b"2027-01-15") == 20270115
    january = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert parse_point(KIND_SNOWFLAKE, b"2027-01") == january
    assert parse_point(KIND_SNOWFLAKE, str(january).encode()) == january
    for kind in (KIND_DATE, KIND_SNOWFLAKE):
        with pytest.raises(KeyFormatError, match="not a point"):
            parse_point(kind, b"2027-01-01:x")
    assert point_text(KIND_DATE, 20270100) == "2027-01"
    assert point_text(KIND_DATE, MIN_POSITION) == "-"
    assert point_text(KIND_SNOWFLAKE, MAX_POSITION) == "+"


@given(st.binary(max_size=40))
def test_key_parsers_take_any_bytes(rest: bytes) -> None:
    for kind in (KIND_DATE, KIND_SNOWFLAKE):
        try:
            position = key_position(kind, rest)
        except KeyFormatError:
            continue
        assert MIN_POSITION < position < MAX_POSITION


@given(st.dates(min_value=date(1, 1, 1)), st.booleans(), st.binary(max_size=8))
def test_date_keys_round_trip_and_sort_by_month(day: date, whole: bool, tail: bytes) -> None:
    text = day.strftime("%Y-%m-%d") if whole else day.strftime("%Y-%m")
    text = f"{day.year:04d}" + text[len(str(day.year)):] if day.year < 1000 else text
    if tail[:1].isdigit() or (not whole and tail[:1] == b"-"):
        tail = b":" + tail
    position = key_position(KIND_DATE, text.encode() + tail)
    assert point_text(KIND_DATE, position) == text
    assert parse_point(KIND_DATE, text.encode()) == position


@given(st.lists(st.binary(max_size=12), max_size=12))
def test_table_create_syntax_takes_any_words(words: list[bytes]) -> None:
    try:
        entry = parse_create([b"TABLE.CREATE", *words])
    except CatalogError as exc:
        assert str(exc).startswith("ERR")
        return
    assert entry["op"] == catalog.OP_CREATE


@given(st.sampled_from([KIND_DATE, KIND_SNOWFLAKE]), st.binary(max_size=24))
def test_point_parser_takes_any_bytes(kind: str, text: bytes) -> None:
    try:
        position = parse_point(kind, text)
    except KeyFormatError as exc:
        assert "not a point" in str(exc)
        return
    assert parse_point(kind, point_text(kind, position).encode()) == position


WORDS = st.lists(st.one_of(st.binary(max_size=10),
                           st.sampled_from([b"orders", b"users", b"COUNT", b"SHARD", b"1",
                                            b"2026-12", b"-", b"+", b"100001"])), max_size=7)


@given(WORDS)
def test_split_and_range_syntax_take_any_words(words: list[bytes]) -> None:
    machine = _machine()
    _create(machine, "orders", "RANGE", "DATE", "SPLITS", "2026-11")
    _create(machine, "users", "HASH")
    for parse in (parse_split, parse_range):
        try:
            parse([b"TABLE.X", *words], machine.catalog)
        except CatalogError as exc:
            assert str(exc).startswith("ERR")


def test_range_syntax() -> None:
    machine = _machine()
    _create(machine, "orders", "RANGE", "DATE")
    table, low, high, count = parse_range([b"T", b"orders", b"2026-12", b"+", b"COUNT", b"5"],
                                          machine.catalog)
    assert (table.name, low, high, count) == ("orders", 20261200, MAX_POSITION, 5)
    for words, error in (([b"orders", b"-"], "syntax"), ([b"orders", b"-", b"+", b"COUNT",
                                                          b"0"], "COUNT must be"),
                         ([b"orders", b"x", b"+"], "not a point"),
                         ([b"nope", b"-", b"+"], "no such table")):
        with pytest.raises(CatalogError, match=error):
            parse_range([b"T", *words], machine.catalog)
    assert machine.catalog.is_range_row(b"orders:2026") and not machine.catalog.is_range_row(
        b"users:1")


# -- the catalog in the configuration machine -----------------------------------------------

def _machine() -> ConfigMachine:
    machine = ConfigMachine()
    machine.apply([(1, cluster.encode_init([1, 2, 3], 3, 1))])
    return machine


def _create(machine: ConfigMachine, *words: str) -> object:
    entry = parse_create([w.encode() for w in ("TABLE.CREATE", *words)])
    return machine.apply([(9, catalog.encode_create(entry))])[0]


def test_tables_are_created_split_and_kept_in_snapshots() -> None:
    machine = _machine()
    assert _create(machine, "users", "KEYSPACE", "default", "HASH") is True
    assert _create(machine, "orders", "RANGE", "DATE", "SPLITS", "2026-11", "2026-12",
                   "SHARDS", "1", "2", "3") is True
    assert _create(machine, "events", "KEYSPACE", "default", "RANGE", "SNOWFLAKE", "EPOCH",
                   "0", "SPLITS", "1000") is True
    assert _create(machine, "orders", "HASH") == "ERR table 'orders' exists"
    assert "no such keyspace 'users'" in _create(machine, "t", "KEYSPACE", "users", "HASH")
    assert "strictly increasing" in _create(machine, "t", "RANGE", "DATE", "SPLITS",
                                            "2026-12", "2026-11")
    assert "no such shard 9" in _create(machine, "t", "RANGE", "DATE", "SHARDS", "9")
    assert "one shard per range: 2" in _create(machine, "t", "RANGE", "DATE", "SPLITS",
                                               "2026-12", "SHARDS", "1")
    tables = machine.catalog.tables
    assert tables["events"].shards == [1, 2]  # round-robin by default
    orders = tables["orders"]
    assert orders.shard_at(20261031) == 1 and orders.shard_at(20261100) == 2
    assert orders.shard_at(20261231) == 3
    split = parse_split([b"TABLE.SPLIT", b"orders", b"2027-01"], machine.catalog)
    assert split["shard"] == 3  # without SHARD: the range's own shard
    split["shard"] = 1
    assert machine.apply([(10, catalog.encode_split(split))]) == [True]
    assert orders.shard_at(20270105) == 1 and orders.shard_at(20261231) == 3
    assert "already split" in machine.apply([(11, catalog.encode_split(split))])[0]
    copy = ConfigMachine()
    copy.restore(machine.snapshot())
    assert copy.catalog.to_wire() == machine.catalog.to_wire()
    assert copy.config.to_wire() == machine.config.to_wire()


def test_bad_table_entries_are_refused_not_raised() -> None:
    machine = _machine()
    bad = msgpack.packb({"op": "table.create", "name": "x"})
    assert machine.apply([(2, bad)])[0].startswith("ERR bad configuration entry")
    assert machine.apply([(3, msgpack.packb({"op": "table.nope"}))]) == ["ERR syntax error"]
    assert "has no slot map" in ConfigMachine().apply(
        [(1, catalog.encode_create(parse_create([b"T", b"t", b"RANGE", b"DATE"])))])[0]


def test_syntax_errors_are_clear() -> None:
    for words in (["orders"], ["or:ders", "HASH"], ["t", "HASH", "x"], ["t", "RANGE"],
                  ["t", "RANGE", "DATE", "EPOCH", "5"], ["t", "RANGE", "SNOWFLAKE", "EPOCH"],
                  ["t", "RANGE", "DATE", "SPLITS", "soon"], ["t", "RANGE", "DATE", "x"]):
        with pytest.raises(CatalogError, match="^ERR"):
            parse_create([b"TABLE.CREATE", *(w.encode() for w in words)])
    machine = _machine()
    _create(machine, "users", "HASH")
    with pytest.raises(CatalogError, match="not a RANGE table"):
        parse_split([b"TABLE.SPLIT", b"users", b"2026-01"], machine.catalog)
    with pytest.raises(CatalogError, match="no such table"):
        parse_split([b"TABLE.SPLIT", b"nope", b"2026-01"], machine.catalog)


def test_routing_keys_of_range_tables() -> None:
    machine = _machine()
    _create(machine, "orders", "RANGE", "DATE", "SPLITS", "2026-12", "SHARDS", "1", "2")
    _create(machine, "users", "HASH")
    found: Catalog = machine.catalog
    assert found.range_shard([b"plain", b"users:1"]) is None
    assert found.range_shard([b"orders:2026-11-30:1", b"orders:2026-11"]) == 1
    assert found.range_shard([b"orders:2026-12-01:1"]) == 2
    with pytest.raises(CatalogError, match="different shards"):
        found.range_shard([b"orders:2026-11-30:1", b"orders:2026-12-01:1"])
    with pytest.raises(CatalogError, match="and other keys"):
        found.range_shard([b"orders:2026-11-30:1", b"plain"])
    with pytest.raises(CatalogError, match="'orders:soon' of range table 'orders'"):
        found.range_shard([b"orders:soon"])
    table = found.tables["orders"]
    assert table.pieces(20261115, 20261215) == [(20261115, 20261200, 1),
                                                (20261200, 20261215, 2)]
    assert table.pieces(20261200, 20270100) == [(20261200, 20270100, 2)]


@given(st.lists(st.integers(0, 1000), unique=True, max_size=8).map(sorted),
       st.integers(0, 1005), st.integers(0, 1005))
def test_ranges_cover_every_position_once(splits: list[int], low: int, high: int) -> None:
    table = catalog.Table("t", rule=catalog.RULE_RANGE, kind=KIND_DATE, splits=splits,
                          shards=list(range(1, len(splits) + 2)))
    for position in (low, high):
        owners = [sid for a, b, sid in table.ranges() if a <= position < b]
        assert owners == [table.shard_at(position)]
    pieces = table.pieces(low, high)
    covered = [p for a, b, _ in pieces for p in range(a, b)]
    assert covered == list(range(low, high))
    assert all(table.shard_at(a) == sid == table.shard_at(b - 1) for a, b, sid in pieces)


# -- range reads of one store ---------------------------------------------------------------

class SortedKV:
    """The engine's read calls range_keys uses, over a sorted list (no expiry)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = sorted(keys)

    def scan(self, start: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes, int]]:
        return [(k, b"", 0) for k in self.keys if start <= k < end][:limit]

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        return [k for k in self.keys if k > cursor][:limit]


DATE_RESTS = st.builds(lambda y, m, d, tail: f"{y:04d}-{m:02d}{f'-{d:02d}' if d else ''}"
                       .encode() + tail, st.integers(2025, 2027), st.integers(1, 12),
                       st.integers(0, 28), st.sampled_from([b"", b":1", b":x", b"-a", b"!"]))


@given(st.sets(st.one_of(DATE_RESTS, st.binary(max_size=12)), max_size=40),
       st.sampled_from([b"orders:", b"ordera:", b"orders;", b""]),
       st.integers(20250000, 20280000), st.integers(20250000, 20280000),
       st.integers(1, 50))
def test_range_keys_equal_a_filter_of_every_key(rests: set[bytes], other: bytes, low: int,
                                                high: int, limit: int) -> None:
    table = catalog.Table("orders", rule=catalog.RULE_RANGE, kind=KIND_DATE)
    keys = {b"orders:" + r for r in rests} | {other + r for r in rests}
    expected = []
    for key in sorted(keys):
        try:
            if key.startswith(b"orders:") and low <= table.position(key) < high:
                expected.append(key)
        except CatalogError:
            pass
    with mock.patch.object(table_scan, "WALK_CHUNK", 3):  # several chunks per walk
        assert range_keys(SortedKV(keys), table, low, high, limit, 0) == expected[:limit]


def test_range_keys_reads_one_month_in_key_order(tmp_path: Path) -> None:
    machine = _machine()
    _create(machine, "orders", "RANGE", "DATE")
    table = machine.catalog.tables["orders"]
    engine = Engine.open(tmp_path)
    keys = [f"orders:2026-{m:02d}-{d:02d}:{i}".encode()
            for m in (10, 11, 12) for d in (1, 15, 30) for i in range(3)]
    others = [b"orders:2026-11", b"orders:2026-11:x", b"orderz:2026-11-01", b"plain"]
    engine.write([(k, b"v", 0) for k in [*keys, *others]] + [(b"orders:2026-11-02", b"v", 5)],
                 applied_index=1)
    november = [k for k in keys if k.startswith(b"orders:2026-11")]
    got = range_keys(engine, table, 20261100, 20261200, 1000, now_ms=10)
    assert got == sorted([*november, b"orders:2026-11", b"orders:2026-11:x"])
    assert range_keys(engine, table, 20261101, 20261200, 4, now_ms=10) == sorted(november)[:4]
    assert range_keys(engine, table, MIN_POSITION, MAX_POSITION, 1000, 10) == sorted(
        [*keys, b"orders:2026-11", b"orders:2026-11:x"])
    assert merge_keys([[b"a", b"c"], [b"b"]], 2) == [b"a", b"b"]
    engine.close()
