"""Range-table awareness of shardstore's clients; sans I/O.

Strategy: rows of range tables are not slot-addressed, so the slot map cannot route them:
a node that does not hold a row's range refuses it with an error naming the router and
shardstore.client (NOT_HERE). `TableRoutes` is the client's copy of the catalog and of
each range shard's master, made from the `TABLE.INFO` replies of every table
(shardstore/router_plan.py's `RouteMap`, the router's own picture). A client loads it
the first time a node answers NOT_HERE, or when it reads a range (`range_parts`); from
then on `address_of` sends a command whose first key is a range row to the master of its
range, and any other command by the slot map as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.failover import Address
from shardstore.catalog import MAX_RANGE_KEYS, NOT_HERE
from shardstore.router_plan import SHARD, RouteMap
from shardstore.table_keys import parse_bound, point_text

__all__ = ["MAX_RANGE_KEYS", "NOT_HERE", "TableRoutes"]

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
        if table is None or not table.ranged:
            return None
        try:
            target = self.routes.target(key)
        except ValueError:
            return None
        address = self.routes.address(target)
        return _address(address) if address else None

    def range_parts(self, name: str, low: object, high: object, count: int
                    ) -> list[tuple[Address, tuple[object, ...]]]:
        """One TABLE.RANGE per range of table `name` that [low, high) meets, each with the
        master of its shard. ValueError (KeyFormatError, CatalogError) for a bad table or
        bound."""
        table = self.routes.catalog.range_table(name)
        first = parse_bound(table.kind, _bytes(low), low=True)
        end = parse_bound(table.kind, _bytes(high), low=False)
        parts = []
        for a, b, sid in table.pieces(first, end):
            address = self.routes.address((SHARD, sid))
            if address is None:
                raise ValueError(ERR_NO_MASTER.format(sid, name))
            parts.append((_address(address), ("TABLE.RANGE", table.name,
                                               point_text(table.kind, a),
                                               point_text(table.kind, b), "COUNT", count)))
        return parts
