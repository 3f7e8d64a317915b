"""TABLE.RANGE's cursor (shardstore/range_pages.py): its parser fuzzed with hypothesis, pages
over several simulated shards that return every key once whatever the page size, and the
cursor on three live nodes through a node, the router and shardstore.client (both kinds),
each reading a range of several hundred keys over three shards in small pages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import given, settings
from hypothesis import strategies as st

from shardstore import catalog, client_tables
from shardstore.catalog import Catalog, CatalogError, Table
from shardstore.client import AsyncShardstoreClient, ShardstoreClient
from shardstore.range_pages import (
    CURSOR_END,
    RangeRequest,
    decode_cursor,
    encode_cursor,
    join_pieces,
    page_reply,
    parse_range_request,
)
from shardstore.router import Router, RouterOptions
from shardstore.table_keys import KIND_DATE, MAX_POSITION, MIN_POSITION
from shardstore.table_scan import range_keys
from tests.conftest import find_free_port
from tests.shardstore_procs import LoopCluster
from tests.test_shardstore_catalog import DATE_RESTS, SortedKV
from tests.test_shardstore_tables import _everywhere, _ready

WORDS = st.one_of(st.sampled_from([b"COUNT", b"count", b"CURSOR", b"cursor", b"0", b"7",
                                   b"100000", b"100001", b"6b6579", b"zz", b"-", b"+",
                                   b"2026-12", b""]),
                  st.binary(max_size=10))


def _catalog() -> Catalog:
    table = Table("orders", rule=catalog.RULE_RANGE, kind=KIND_DATE,
                  splits=[20261100, 20261200], shards=[1, 2, 3])
    found = Catalog()
    found.tables[table.name] = table
    return found


@given(st.lists(WORDS, max_size=8))
def test_the_range_parser_answers_a_request_or_a_clear_error(words: list[bytes]) -> None:
    args = [b"TABLE.RANGE", b"orders", *words]
    try:
        request = parse_range_request(args, _catalog())
    except CatalogError as exc:
        assert str(exc).startswith("ERR ")
        return
    assert 1 <= request.count <= catalog.MAX_RANGE_KEYS
    assert request.paged == any(w.upper() == b"CURSOR" for w in words[2::2])


def test_the_range_options_and_cursor() -> None:
    request = parse_range_request([b"T", b"orders", b"2026-12", b"+", b"CURSOR",
                                   encode_cursor(b"orders:2026-12-01"), b"count", b"5"],
                                  _catalog())
    assert (request.low, request.high, request.count) == (20261200, MAX_POSITION, 5)
    assert request.after == b"orders:2026-12-01" and request.paged
    assert not parse_range_request([b"T", b"orders", b"-", b"+"], _catalog()).paged
    for bad in ([b"CURSOR", b"0", b"CURSOR", b"0"], [b"CURSOR", b"abc"], [b"COUNT"],
                [b"CURSOR", b"zz"], [b"LIMIT", b"1"]):
        with pytest.raises(CatalogError):
            parse_range_request([b"T", b"orders", b"-", b"+", *bad], _catalog())
    assert decode_cursor(b"0") is None and encode_cursor(None) == CURSOR_END


@given(st.binary(min_size=1, max_size=40))
def test_a_cursor_is_the_key_it_goes_on_after(key: bytes) -> None:
    assert decode_cursor(encode_cursor(key)) == key


@settings(max_examples=60)
@given(st.sets(DATE_RESTS, max_size=60), st.integers(1, 9),
       st.lists(st.integers(20250000, 20280000), max_size=3, unique=True))
def test_pages_over_shards_return_every_key_once(rests: set[bytes], count: int,
                                                 splits: list[int]) -> None:
    """Each simulated shard holds the keys of its ranges; the pages a reader gets by
    sending the cursor back, joined as the router joins them, are every key once."""
    table = Table("orders", rule=catalog.RULE_RANGE, kind=KIND_DATE, splits=sorted(splits),
                  shards=list(range(1, len(splits) + 2)))
    keys = sorted(b"orders:" + r for r in rests)
    stores = {sid: SortedKV({k for k in keys if table.shard_at(table.position(k)) == sid})
              for sid in table.shards}
    seen: list[bytes] = []
    after = None
    for _ in range(len(keys) + 2):
        request = RangeRequest(table, MIN_POSITION, MAX_POSITION, count, after, True)
        replies = [page_reply(range_keys(stores[sid], table, a, b, count + 1, 0, after),
                              count, request)
                   for a, b, sid in table.pieces(MIN_POSITION, MAX_POSITION)]
        cursor, page = join_pieces(replies, request)  # type: ignore[misc]
        assert len(page) <= count
        seen += page
        after = decode_cursor(cursor)
        if after is None:
            break
    assert seen == keys


# -- three live nodes ---------------------------------------------------------------------

MONTHS = ("2026-10", "2026-11", "2026-12", "2027-01")
ROWS_PER_MONTH = 60
PAGE = 7


def _rows() -> list[bytes]:
    return sorted(f"orders:{m}-{1 + i % 28:02d}:{i}".encode() for m in MONTHS
                  for i in range(ROWS_PER_MONTH))


async def _pages(client: aredis.Redis, low: str, high: str) -> list[bytes]:
    keys: list[bytes] = []
    cursor = b"0"
    while True:
        cursor, page = await client.execute_command("TABLE.RANGE", "orders", low, high,
                                                    "COUNT", PAGE, "CURSOR", cursor)
        assert len(page) <= PAGE
        keys += page
        if cursor == b"0":
            return keys


async def _check_paging(cluster: LoopCluster, router: Router) -> None:
    await _ready(cluster)
    node = cluster.client(0)
    assert await node.execute_command(
        "TABLE.CREATE", "orders", "RANGE", "DATE", "SPLITS", "2026-11", "2026-12",
        "SHARDS", "1", "2", "3") == b"OK"
    await _everywhere(cluster, "orders")
    rows = _rows()
    seeds = [cluster.nodes[0].settings.advertise]
    with mock.patch.object(client_tables, "PAGE_KEYS", PAGE):
        async with AsyncShardstoreClient(seeds) as client:
            for key in rows:
                assert await client.set(key, b"v")
            assert await client.range("orders", "-", "+") == rows
            assert await client.range("orders", "2026-11", "2026-12", count=20) == [
                k for k in rows if k.startswith(b"orders:2026-11")][:20]
        sync_rows = await asyncio.to_thread(_sync_range, seeds)
    assert sync_rows == rows
    via_router = aredis.Redis(port=router.server.port)
    try:
        assert await _pages(via_router, "-", "+") == rows
        december = [k for k in rows if k.startswith(b"orders:2026-12")]
        assert await _pages(via_router, "2026-12", "2027-01") == december
        assert await via_router.execute_command("TABLE.RANGE", "orders", "-", "+",
                                                "COUNT", 3) == rows[:3]
        with pytest.raises(redis.ResponseError, match="invalid cursor"):
            await via_router.execute_command("TABLE.RANGE", "orders", "-", "+", "CURSOR", "x")
    finally:
        await via_router.aclose()
    shard3 = next(i for i, n in enumerate(cluster.nodes) if 3 in n.machines)
    assert await _pages(cluster.client(shard3), "2026-12", "+") == [
        k for k in rows if k >= b"orders:2026-12"]


def _sync_range(seeds: list[str]) -> list[bytes]:
    with ShardstoreClient(seeds) as client:
        return client.range("orders", "-", "+")


def test_a_range_is_read_in_pages_through_nodes_router_and_clients(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LoopCluster(tmp_path, shards=3, replicas=1)
        await cluster.start()
        router = None
        try:
            router = Router(RouterOptions([cluster.nodes[0].settings.advertise]))
            await router.start("127.0.0.1", find_free_port("127.0.0.1"))
            await _check_paging(cluster, router)
        finally:
            if router is not None:
                await router.stop()
            await cluster.stop()

    asyncio.run(main())


README_SENTENCES = [  # checked by the tests of this file
    "`TABLE.RANGE orders - + COUNT 1000 CURSOR 0` answers one page and the cursor of the "
    "next (`0` when the range is read), so a range of any size is read page by page; the "
    "router and `shardstore.client`'s `range()` do so across shards, each key once.",
]


def test_the_readme_says_what_these_tests_show() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = " ".join(readme.read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence
