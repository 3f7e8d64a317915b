"""Range-table awareness of shardstore's clients; sans I/O.

Strategy: rows of range tables are not slot-addressed, so the slot map cannot route them:
a node that does not hold a row's range refuses it with an error naming the router and
shardstore.client (NOT_HERE). `TableRoutes` is the client's copy of the catalog and of
each range shard's master, made from the `TABLE.INFO` replies of every table
(shardstore/router_plan.py's `RouteMap`, the router's own picture). A client loads it
the first time a node answers NOT_HERE, or when it reads a range (`page_parts`); from
then on `address_of` sends a command whose first key is a range row to the master of its
range, or a row of a HASH table bound to another keyspace than the seeds' to the master
of its slot in that keyspace's map (TABLE.INFO's `slots`, shardstore/table_bindings.py),
and any other command by the slot map as before. A range read goes page by page
(`page_parts`, `next_page`: paged TABLE.RANGE calls, shardstore/range_pages.py), so a
whole range of any size is read, PAGE_KEYS keys at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.failover import Address
from shardstore.catalog import ERR_COUNT, MAX_RANGE_KEYS, NOT_HERE
from shardstore.range_pages import (
    RangeRequest,
    decode_cursor,
    join_pieces,
    piece_args,
    split_page,
)
from shardstore.router_plan import SHARD, RouteMap
from shardstore.table_keys import parse_bound

__all__ = ["MAX_RANGE_KEYS", "NOT_HERE", "PAGE_KEYS", "TableRoutes", "next_page", "page_size"]

PAGE_KEYS = 10_000  # keys one page of a client's range read asks for at most

ERR_NO_MASTER = "no master known for shard {} of table {!r}"


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


class TableRoutes:
    """The client's copy of the tables (see the module header)."""

    def __init__(self) -> None:
        self.routes = RouteMap()
        self.loaded = False

    def load(self, infos: Sequence[object]) -> None:
        """Take the TABLE.INFO replies of every table."""
        self.routes.load_tables(infos)
        self.loaded = True

    def address_of(self, args: Sequence[object]) -> Address | None:
        """The master of the range a command's first key (argument 1) falls in, or None
        when that key is no row of a known range table (or has no position: the node
        answers that)."""
        if not self.loaded or len(args) < 2:
            return None
        key = _bytes(args[1])
        table = self.routes.catalog.table_of(key)
        if table is None or not (table.ranged or table.name in self.routes.hashed):
            return None
        try:
            target = self.routes.target(key)
        except ValueError:
            return None
        address = self.routes.address(target)
        return _address(address) if address else None

    def hash_row(self, args: Sequence[object]) -> bool:
        """Whether a command's first key is a row of a known HASH table (after a reload,
        one with no address is routed by the slot map: its table is in the seeds'
        keyspace)."""
        if not self.loaded or len(args) < 2:
            return False
        table = self.routes.catalog.table_of(_bytes(args[1]))
        return table is not None and not table.ranged

    def page_parts(self, name: str, low: object, high: object, count: int,
                   after: bytes | None = None
                   ) -> tuple[RangeRequest, list[tuple[Address, tuple[object, ...]]]]:
        """One page of a range read: the request (at most `count` keys after key `after`)
        and one paged TABLE.RANGE per range of table `name` that [low, high) meets, each
        with the master of its shard. ValueError (KeyFormatError, CatalogError) for a bad
        table, bound or count."""
        table = self.routes.catalog.range_table(name)
        if not 1 <= count <= MAX_RANGE_KEYS:
            raise ValueError(ERR_COUNT)
        request = RangeRequest(table, parse_bound(table.kind, _bytes(low), low=True),
                               parse_bound(table.kind, _bytes(high), low=False), count,
                               after, paged=True)
        parts = []
        for a, b, sid in table.pieces(request.low, request.high):
            address = self.routes.address((SHARD, sid))
            if address is None:
                raise ValueError(ERR_NO_MASTER.format(sid, name))
            parts.append((_address(address), tuple(piece_args(request, a, b))))
        return request, parts


def next_page(request: RangeRequest, replies: Sequence[object]
              ) -> tuple[list[bytes], bytes | None]:
    """The keys of one page from its parts' replies and the key the next page goes on
    after (None: the range is read); ValueError on a reply that is not a page."""
    cursor, keys = split_page(join_pieces(replies, request))
    return keys, decode_cursor(cursor)


def page_size(count: int | None, taken: int) -> int:
    """The keys the next page asks for: PAGE_KEYS, or fewer when `count` caps the read."""
    return PAGE_KEYS if count is None else min(PAGE_KEYS, count - taken)
