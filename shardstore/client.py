"""Cluster-aware clients for shardstore: `ShardstoreClient` (blocking) and
`AsyncShardstoreClient` (asyncio), with the same methods.

Strategy: a client starts from seed nodes, fetches `CLUSTER SLOTS` once and keeps it as its
slot map (shardstore/client_core.py's `SlotRouter`), and sends each key command to the master
of its key's slot through core/failover_io.py, so failover is core/failover.py's (its header
states it): `-MOVED` updates that slot's entry and goes to the named node, `-ASK` goes once
with `ASKING` before it, `-TRYAGAIN` (a shard without a leader) tries the next node or the
hinted leader with jittered pauses up to the deadline, an unreachable node is skipped for a
backoff, and giving up raises `ShardstoreUnavailable` listing each node's last failure.
`-CROSSSLOT` is the caller's mistake and raises `CrossSlotError`; any other error reply
raises `ShardstoreError`. A map found stale (another node answered for a slot) is fetched
again before the next request. `scan_iter` walks every master in turn with its own cursor
(a node's SCAN covers the shards it is master of).

Rows of range tables are not slot-addressed, nor are, for the seeds' keyspace, the rows of
a HASH table bound to another keyspace (shardstore/client_tables.py): the first time
a node refuses one with its "use the router or shardstore.client" error, the client loads
the tables (TABLE.LIST, TABLE.INFO) and from then on sends such rows to the master of their
range (loaded again when a node refuses a row the loaded map sent it: the range moved, by
TABLE.SPLIT or TABLE.MOVE); `range(table, low, high)` reads a range table's keys from the
shards that hold [low, high) only, merged in key order, page by page (paged TABLE.RANGE)
to its end.

A write whose node vanished mid-request may or may not have been applied; the client sends
it again to the next node, as every Redis Cluster client does (INCR may then count twice).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from core.failover import Address, Failover
from core.failover_io import call_async, call_blocking
from core.resp_client import AsyncRespConnection, ProtocolError, ReplyError, RespConnection
from shardstore.client_core import (
    DEFAULT_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
    CrossSlotError,
    Node,
    Settings,
    ShardstoreError,
    ShardstoreUnavailable,
    SlotRouter,
    hash_pairs,
    hset_args,
    is_ok,
    mset_args,
    scan_args,
    scan_page,
    set_args,
    slot_of,
    usage_error,
)
from shardstore.client_tables import NOT_HERE, TableRoutes, next_page, page_size
from shardstore.range_pages import RangeRequest

__all__ = [
    "AsyncShardstoreClient",
    "CrossSlotError",
    "ShardstoreClient",
    "ShardstoreError",
    "ShardstoreUnavailable",
]

SCAN_ERRORS = (OSError, ProtocolError)
ERR_SCAN_NODE = "SCAN on {}:{} failed: {}"
ERR_NO_RANGE = "no range of a known table holds {!r}"


def _usage(exc: ValueError) -> ShardstoreError:
    text = str(exc)
    return ShardstoreError(text if text.startswith("ERR") else f"ERR {text}")


def _page_parts(tables: TableRoutes, name: str, low: Any, high: Any, count: int,
                after: bytes | None
                ) -> tuple[RangeRequest, list[tuple[Address, tuple[object, ...]]]]:
    try:
        return tables.page_parts(name, low, high, count, after)
    except ValueError as exc:
        raise _usage(exc) from None


def _next_page(request: RangeRequest, replies: list[object]
               ) -> tuple[list[bytes], bytes | None]:
    try:
        return next_page(request, replies)
    except ValueError as exc:
        raise _usage(exc) from None


def _learned_route(tables: TableRoutes, args: tuple[Any, ...], slot: int | None
                   ) -> Address | None:
    """Where a command a node refused as not its own goes once the tables are loaded: the
    master of its range table's range, or None for the slot route (a row of a HASH table
    bound to the seeds' keyspace); ShardstoreError when it is neither."""
    address = tables.address_of(args)
    if address is None and not (slot is not None and tables.hash_row(args)):
        raise ShardstoreError(ERR_NO_RANGE.format(args[1]))
    return address


def _same(reply: object) -> object:
    return reply


def _scan_failed(address: Address, error: BaseException) -> ShardstoreUnavailable:
    name = f"{address[0]}:{address[1]}"
    return ShardstoreUnavailable(ERR_SCAN_NODE.format(*address, error), {name: error})


class ShardstoreClient:
    """`ShardstoreClient(["127.0.0.1:7601", ("127.0.0.1", 7602)], password=None)`: any nodes
    of the cluster as seeds; use as a context. `timeout_s` bounds one attempt on one node,
    `deadline_s` a whole call; `rng` (a seeded `random.Random`) draws the pauses' jitter.
    Not thread-safe."""

    def __init__(self, nodes: list[Node] | tuple[Node, ...], *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, deadline_s: float = DEFAULT_DEADLINE_S,
                 rng: random.Random | None = None) -> None:
        self._settings = Settings(nodes, password, timeout_s, deadline_s, rng)
        self._failover: Failover[RespConnection] = self._settings.failover()
        self.router = SlotRouter(self._failover)
        self.tables = TableRoutes()

    def execute(self, *args: Any) -> Any:
        """Any command, routed by its key (argument 1) unless it is keyless; the raw reply.
        A row of a range table goes to the master of its range."""
        address = self.tables.address_of(args)
        slot = slot_of(args)
        if address is None and slot is not None and self.router.wants_refresh():
            self.refresh_slots()
        try:
            if address is not None:  # a stale range map is refused as a stranger is
                return self._on_node(address, args)
            return self._call(args, slot)
        except ShardstoreError as exc:
            if NOT_HERE not in str(exc) and not (address and exc.code == "MOVED"):
                raise  # (a MOVED for a HASH table's row: its keyspace's map changed)
        self.load_tables()  # a range row: the node named us; learn the ranges
        address = _learned_route(self.tables, args, slot)
        if address is None:
            return self._call(args, slot)
        return self._on_node(address, args)

    def load_tables(self) -> None:
        """Fetch the tables (TABLE.LIST, TABLE.INFO of each) from any node."""
        names = self._call(("TABLE.LIST",), None)
        self.tables.load([self._call(("TABLE.INFO", row[0]), None) for row in names])

    def range(self, table: str, low: Any, high: Any, count: int | None = None) -> list[bytes]:
        """The keys of range table `table` whose position lies in [low, high) (points as
        TABLE.RANGE reads them, `-`/`+` the open ends), in key order, at most `count`
        (None: every one); read from the shards that hold those ranges only, a page of at
        most PAGE_KEYS keys at a time, each key once."""
        self.load_tables()
        keys: list[bytes] = []
        after: bytes | None = None
        while count is None or len(keys) < count:
            request, parts = _page_parts(self.tables, table, low, high,
                                         page_size(count, len(keys)), after)
            page, after = _next_page(request, [self._on_node(a, args) for a, args in parts])
            keys += page
            if after is None:
                break
        return keys

    def refresh_slots(self) -> None:
        """Fetch `CLUSTER SLOTS` from any node and make it the slot map."""
        self.router.load(self._call(("CLUSTER", "SLOTS"), None))

    def _call(self, args: tuple[object, ...], slot: int | None) -> Any:
        try:
            reply = call_blocking(self._failover, args, _same, self._connect,
                                  self._settings.raises, slot=slot)
        except ShardstoreUnavailable:
            self.router.failed()
            raise
        self.router.settled(slot)
        return reply

    def _connect(self, host: str, port: int) -> RespConnection:
        settings = self._settings
        return RespConnection.connect(host, port, timeout=settings.timeout_s,
                                      password=settings.password)

    def close(self) -> None:
        """Close the connections; the client may still be used (it reconnects)."""
        for conn in self._failover.detach_all():
            conn.close()

    def __enter__(self) -> ShardstoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------------------------

    def get(self, key: Any) -> bytes | None:
        """GET: the value, or None."""
        return self.execute("GET", key)

    def set(self, key: Any, value: Any, *, ex: int | None = None, px: int | None = None,
            nx: bool = False, xx: bool = False) -> bool:
        """SET with EX/PX and NX/XX: True if set, False if NX/XX kept it from happening."""
        return is_ok(self.execute(*set_args(key, value, ex, px, nx, xx)))

    def delete(self, *keys: Any) -> int:
        """DEL (keys in one slot): how many existed."""
        return self.execute("DEL", *keys)

    def exists(self, *keys: Any) -> int:
        """EXISTS (keys in one slot): how many exist."""
        return self.execute("EXISTS", *keys)

    def incr(self, key: Any) -> int:
        """INCR: the new value."""
        return self.execute("INCR", key)

    def incrby(self, key: Any, amount: int) -> int:
        """INCRBY: the new value."""
        return self.execute("INCRBY", key, amount)

    def mget(self, *keys: Any) -> list[bytes | None]:
        """MGET of keys in one slot (CrossSlotError otherwise)."""
        return self.execute("MGET", *keys)

    def mset(self, mapping: Mapping[Any, Any]) -> bool:
        """MSET of keys in one slot (CrossSlotError otherwise)."""
        return is_ok(self.execute(*mset_args(mapping)))

    def expire(self, key: Any, seconds: int) -> bool:
        """EXPIRE: True if the key exists."""
        return self.execute("EXPIRE", key, seconds) == 1

    def ttl(self, key: Any) -> int:
        """TTL: seconds left, -1 without expiry, -2 for no key."""
        return self.execute("TTL", key)

    def hset(self, key: Any, mapping: Mapping[Any, Any]) -> int:
        """HSET: how many fields were new."""
        return self.execute(*hset_args(key, mapping))

    def hget(self, key: Any, field: Any) -> bytes | None:
        """HGET: the field's value, or None."""
        return self.execute("HGET", key, field)

    def hgetall(self, key: Any) -> dict[bytes, bytes]:
        """HGETALL as a dict."""
        return hash_pairs(self.execute("HGETALL", key))

    def hdel(self, key: Any, *fields: Any) -> int:
        """HDEL: how many fields were removed."""
        return self.execute("HDEL", key, *fields)

    def scan_iter(self, match: str | None = None, count: int | None = None,
                  type_: str | None = None) -> Iterator[bytes]:
        """Every key of the cluster (filtered as SCAN's MATCH/TYPE), master by master."""
        if self.router.wants_refresh():
            self.refresh_slots()
        for address in list(self.router.masters):
            cursor = 0
            while True:
                cursor, keys = scan_page(self._on_node(address, scan_args(cursor, match,
                                                                          count, type_)))
                yield from keys
                if cursor == 0:
                    break

    def _on_node(self, address: Address, args: tuple[object, ...]) -> object:
        """One command on that very node (no failover: SCAN is about the node's shards)."""
        index = self._failover.index_of(address)
        try:
            conn = self._failover.live(index)
            if conn is None:
                conn = self._connect(*address)
                self._failover.keep(index, conn)
            return conn.call(*args)  # type: ignore[arg-type]
        except ReplyError as exc:
            raise usage_error(exc) from None
        except SCAN_ERRORS as exc:
            self.router.failed()
            if (conn := self._failover.detach(index)) is not None:
                conn.close()
            raise _scan_failed(address, exc) from exc


class AsyncShardstoreClient:
    """`ShardstoreClient` for asyncio, on one event loop: the same arguments and methods, as
    coroutines (`scan_iter` an async iterator); use as an async context. Calls are
    serialised (one at a time)."""

    def __init__(self, nodes: list[Node] | tuple[Node, ...], *, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, deadline_s: float = DEFAULT_DEADLINE_S,
                 rng: random.Random | None = None) -> None:
        self._settings = Settings(nodes, password, timeout_s, deadline_s, rng)
        self._failover: Failover[AsyncRespConnection] = self._settings.failover()
        self.router = SlotRouter(self._failover)
        self.tables = TableRoutes()
        self._lock = asyncio.Lock()

    async def execute(self, *args: Any) -> Any:
        """Any command, routed by its key (argument 1) unless it is keyless; the raw reply.
        A row of a range table goes to the master of its range."""
        slot = slot_of(args)
        async with self._lock:
            address = self.tables.address_of(args)
            if address is None and slot is not None and self.router.wants_refresh():
                await self._refresh()
            try:
                if address is not None:  # a stale range map is refused as a stranger is
                    return await self._on_node(address, args)
                return await self._call(args, slot)
            except ShardstoreError as exc:
                if NOT_HERE not in str(exc) and not (address and exc.code == "MOVED"):
                    raise  # (a MOVED for a HASH table's row: its keyspace's map changed)
            await self._load_tables()  # a range row: the node named us; learn the ranges
            address = _learned_route(self.tables, args, slot)
            if address is None:
                return await self._call(args, slot)
            return await self._on_node(address, args)

    async def load_tables(self) -> None:
        """Fetch the tables (TABLE.LIST, TABLE.INFO of each) from any node."""
        async with self._lock:
            await self._load_tables()

    async def _load_tables(self) -> None:
        names = await self._call(("TABLE.LIST",), None)
        self.tables.load([await self._call(("TABLE.INFO", row[0]), None) for row in names])

    async def range(self, table: str, low: Any, high: Any, count: int | None = None
                    ) -> list[bytes]:
        """ShardstoreClient.range as a coroutine."""
        keys: list[bytes] = []
        after: bytes | None = None
        async with self._lock:
            await self._load_tables()
            while count is None or len(keys) < count:
                request, parts = _page_parts(self.tables, table, low, high,
                                             page_size(count, len(keys)), after)
                page, after = _next_page(
                    request, [await self._on_node(a, args) for a, args in parts])
                keys += page
                if after is None:
                    break
        return keys

    async def refresh_slots(self) -> None:
        """Fetch `CLUSTER SLOTS` from any node and make it the slot map."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self.router.load(await self._call(("CLUSTER", "SLOTS"), None))

    async def _call(self, args: tuple[object, ...], slot: int | None) -> Any:
        try:
            reply = await call_async(self._failover, args, _same, self._connect,
                                     self._settings.raises, slot=slot)
        except ShardstoreUnavailable:
            self.router.failed()
            raise
        self.router.settled(slot)
        return reply

    async def _connect(self, host: str, port: int) -> AsyncRespConnection:
        settings = self._settings
        return await AsyncRespConnection.connect(host, port, timeout=settings.timeout_s,
                                                 password=settings.password)

    async def close(self) -> None:
        """Close the connections; the client may still be used (it reconnects)."""
        for conn in self._failover.detach_all():
            await conn.close()

    async def __aenter__(self) -> AsyncShardstoreClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- commands --------------------------------------------------------------------------

    async def get(self, key: Any) -> bytes | None:
        """GET: the value, or None."""
        return await self.execute("GET", key)

    async def set(self, key: Any, value: Any, *, ex: int | None = None,
                  px: int | None = None, nx: bool = False, xx: bool = False) -> bool:
        """SET with EX/PX and NX/XX: True if set, False if NX/XX kept it from happening."""
        return is_ok(await self.execute(*set_args(key, value, ex, px, nx, xx)))

    async def delete(self, *keys: Any) -> int:
        """DEL (keys in one slot): how many existed."""
        return await self.execute("DEL", *keys)

    async def exists(self, *keys: Any) -> int:
        """EXISTS (keys in one slot): how many exist."""
        return await self.execute("EXISTS", *keys)

    async def incr(self, key: Any) -> int:
        """INCR: the new value."""
        return await self.execute("INCR", key)

    async def incrby(self, key: Any, amount: int) -> int:
        """INCRBY: the new value."""
        return await self.execute("INCRBY", key, amount)

    async def mget(self, *keys: Any) -> list[bytes | None]:
        """MGET of keys in one slot (CrossSlotError otherwise)."""
        return await self.execute("MGET", *keys)

    async def mset(self, mapping: Mapping[Any, Any]) -> bool:
        """MSET of keys in one slot (CrossSlotError otherwise)."""
        return is_ok(await self.execute(*mset_args(mapping)))

    async def expire(self, key: Any, seconds: int) -> bool:
        """EXPIRE: True if the key exists."""
        return await self.execute("EXPIRE", key, seconds) == 1

    async def ttl(self, key: Any) -> int:
        """TTL: seconds left, -1 without expiry, -2 for no key."""
        return await self.execute("TTL", key)

    async def hset(self, key: Any, mapping: Mapping[Any, Any]) -> int:
        """HSET: how many fields were new."""
        return await self.execute(*hset_args(key, mapping))

    async def hget(self, key: Any, field: Any) -> bytes | None:
        """HGET: the field's value, or None."""
        return await self.execute("HGET", key, field)

    async def hgetall(self, key: Any) -> dict[bytes, bytes]:
        """HGETALL as a dict."""
        return hash_pairs(await self.execute("HGETALL", key))

    async def hdel(self, key: Any, *fields: Any) -> int:
        """HDEL: how many fields were removed."""
        return await self.execute("HDEL", key, *fields)

    async def scan_iter(self, match: str | None = None, count: int | None = None,
                        type_: str | None = None) -> AsyncIterator[bytes]:
        """Every key of the cluster (filtered as SCAN's MATCH/TYPE), master by master."""
        async with self._lock:
            if self.router.wants_refresh():
                await self._refresh()
            masters = list(self.router.masters)
        for address in masters:
            cursor = 0
            while True:
                async with self._lock:
                    reply = await self._on_node(address, scan_args(cursor, match, count,
                                                                   type_))
                cursor, keys = scan_page(reply)
                for key in keys:
                    yield key
                if cursor == 0:
                    break

    async def _on_node(self, address: Address, args: tuple[object, ...]) -> object:
        """One command on that very node (no failover: SCAN is about the node's shards)."""
        index = self._failover.index_of(address)
        try:
            conn = self._failover.live(index)
            if conn is None:
                conn = await self._connect(*address)
                self._failover.keep(index, conn)
            return await conn.call(*args)  # type: ignore[arg-type]
        except ReplyError as exc:
            raise usage_error(exc) from None
        except SCAN_ERRORS as exc:
            self.router.failed()
            if (conn := self._failover.detach(index)) is not None:
                conn.abort()
            raise _scan_failed(address, exc) from exc
