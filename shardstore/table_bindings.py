"""A HASH table's keyspace binding on the wire: who serves its rows, and how clients learn it.

Strategy: a HASH table's rows are slot-addressed within the keyspace it is bound to (the
catalog's `Table.keyspace`; TABLE.MOVE switches it, shardstore/table_move.py). A node of
another keyspace has its own slot map, in which the same slot belongs to one of its own
shards: answering `-MOVED` to a node of the table's keyspace would repoint that slot in a
cluster client's map for every key of the node's keyspace (a Redis Cluster client keeps
one map), and serving the key would split the table's rows over two keyspaces. So such
a node refuses the row (`Bindings.refuse`) with ERR_ELSEWHERE, a plain error naming the
table's keyspace, the router and shardstore.client (catalog.NOT_HERE, the words the
router and the client already recognise for range rows), exactly as it refuses range
rows it does not hold. The refusal is decided by the node's own catalog; a node whose
catalog is behind a switch still has the rows fenced in its shard (the table-slots fence
of the move stays after the hand-over) and answers TRYAGAIN until its catalog catches
up, so no row is ever served from two keyspaces.

The router and shardstore.client reach every keyspace on one address: TABLE.INFO of a
HASH table bound to a keyspace other than the answering node's carries `slots`
(`slot_runs`: [first slot, last slot, shard id, [address ...] master first] for the
table's keyspace's map), and they route its rows by it (shardstore/router_plan.py),
loading the tables again when a node answers NOT_HERE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from core.resp import CommandError
from shardstore.catalog import NOT_HERE, Catalog

__all__ = ["ERR_ELSEWHERE", "Bindings", "slot_runs"]

ERR_ELSEWHERE = ("ERR key {!r} is a row of table {!r}, bound to keyspace {!r}, which this "
                 "node does not serve: " + NOT_HERE)


class Bindings:
    """The HASH tables bound to keyspaces other than this node's, cached per catalog
    version (asked on every keyed command)."""

    def __init__(self) -> None:
        self._at: tuple[int, str] | None = None
        self._elsewhere: dict[str, str] = {}  # table name -> its keyspace

    def _foreign(self, catalog: Catalog, keyspace: str) -> dict[str, str]:
        if self._at != (catalog.version, keyspace):
            self._elsewhere = {name: t.keyspace for name, t in catalog.tables.items()
                               if not t.ranged and t.keyspace != keyspace}
            self._at = (catalog.version, keyspace)
        return self._elsewhere

    def elsewhere(self, catalog: Catalog, keyspace: str) -> bool:
        """Whether some HASH table is bound to a keyspace other than `keyspace`."""
        return bool(self._foreign(catalog, keyspace))

    def refuse(self, catalog: Catalog, keyspace: str, keys: Iterable[bytes]) -> None:
        """CommandError ERR_ELSEWHERE when a key is a row of a HASH table bound to a
        keyspace other than `keyspace` (this node's)."""
        foreign = self._foreign(catalog, keyspace)
        if not foreign:
            return
        for key in keys:
            table = catalog.table_of(key)
            if table is not None and table.name in foreign:
                raise CommandError(ERR_ELSEWHERE.format(key.decode("utf-8", "replace"),
                                                        table.name, table.keyspace))


class View(Protocol):
    """What `slot_runs` needs of shardstore.cluster.ClusterView."""

    addresses: dict[int, str]

    def ordered_members(self, shard: Any) -> list[int]: ...


def slot_runs(ranges: Iterable[tuple[int, int, int]], shards: dict[int, Any],
              view: View) -> list[list[Any]]:
    """TABLE.INFO's `slots`: each run of a keyspace's slot map (`ranges`: (first, last,
    shard id)) with its shard's addresses, master first."""
    out: list[list[Any]] = []
    for first, last, sid in ranges:
        shard = shards.get(sid)
        members = view.ordered_members(shard) if shard is not None else []
        out.append([first, last, sid, [view.addresses[m].encode() for m in members
                                       if m in view.addresses]])
    return out
