"""Moves of a range table's rows: what a move of a positions key set means to the table
catalog; sans I/O.

Strategy: the generic move (shardstore/moves.py, shardstore/migrate.py) carries any key
set; for slots the configuration's slot map says who owns what, for the rows of a range
table the table's map (shardstore/catalog.py: split points and one shard per range)
does. `TableMoveHooks` is what `apply_move` calls for key sets that are not slots:

- `begin(keys, source)`: refuses (an error string) unless the key set is the rows of one
  RANGE table in [low, high) and every range of the table's map meeting [low, high) is
  the source's; a raw key range is refused (nothing routes by it);
- `end(move)`: the table's map gives [low, high) to the target: split points are added at
  low and high where the map has none, and the ranges between them get the target; a
  table moving to another keyspace (shardstore/table_move.py) switches its binding when
  its last range arrives (`Catalog.settle`).

For the rows of a HASH table in a set of slots (KIND_TABLE_SLOTS: one slot run of a
HASH table's move to another keyspace, shardstore/table_move.py):

- `begin` refuses unless the table is moving, the set is one run of its plan, the source
  is that run's first or its target shard, both still own the run's slots in their
  keyspaces' slot maps, and no open move carries any of its slots (of this table, or a
  slot move: the plan was made from both keyspaces' slot maps);
- `end` records that the run arrived at its target shard, or came back to its first
  (table_move_record.arrive), which switches the binding when the last one arrived.

A slot move's `begin` is refused while any HASH table has a move recorded: its plan names
the shards that own its slots in both keyspaces, which a slot move would change under a
reverse or a cancel.

Both run inside the configuration group's apply, so every node's catalog changes alike.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

from shardstore import table_move_record as record
from shardstore.catalog import Catalog, CatalogError, Table
from shardstore.keysets import KIND_POSITIONS, KIND_SLOTS, KIND_TABLE_SLOTS, KeySet
from shardstore.moves import Move
from shardstore.table_keys import MAX_POSITION, MIN_POSITION

__all__ = ["ERR_RAW_RANGE", "TableMoveHooks", "give_range"]

ERR_RAW_RANGE = ("ERR a raw key range has no owner to hand over: move slots, or the rows "
                 "of a range table")
ERR_NOT_TABLE = "ERR no range table has the prefix {!r}"
ERR_NOT_SOURCE = "ERR rows of {} in [{}, {}) are on shard {}, not on shard {}"
ERR_TABLE_MOVING = "ERR rows of {} in that range are already moving (move {})"
ERR_NOT_HASH_MOVING = "ERR no HASH table with the prefix {!r} is moving"
ERR_NOT_RUN = "ERR {} is not a slot run of the move of table {} from or to shard {}"
ERR_SLOTS_MOVING = "ERR slots of {} are already moving (move {})"
ERR_STALE_PLAN = ("ERR the slot maps changed under the move of table {!r} ({}): "
                  "TABLE.MOVE.CANCEL it and run TABLE.MOVE again")
ERR_HASH_MOVING = ("ERR HASH table {!r} has a move recorded (TABLE.MOVE), whose plan "
                   "names the slot maps: move slots after TABLE.MOVE.FINISH, or once its "
                   "reverse or cancel has ended")


class SlotMaps(Protocol):
    """What the hooks need of shardstore.cluster.ClusterConfig."""

    shards: dict[int, Any]

    def slot_table(self, keyspace: str) -> list[int]: ...


class TableMoveHooks:
    """The catalog's side of moves of range-table rows (see the module header)."""

    def __init__(self, catalog: Catalog, moves: dict[int, Move],
                 maps: SlotMaps | None = None) -> None:
        self.catalog = catalog
        self.moves = moves
        self.maps = maps  # the configuration's slot maps (None: runs are not checked)

    def _table(self, keys: KeySet) -> Table:
        name = keys.first[:-1].decode("utf-8", "replace")
        table = self.catalog.tables.get(name)
        if table is None or not table.ranged or table.prefix != keys.first:
            raise CatalogError(ERR_NOT_TABLE.format(keys.first.decode("utf-8", "replace")))
        return table

    def _hash_table(self, keys: KeySet) -> Table:
        table = self.catalog.tables.get(keys.first[:-1].decode("utf-8", "replace"))
        if (table is None or table.ranged or table.prefix != keys.first
                or table.moving is None):
            raise CatalogError(ERR_NOT_HASH_MOVING.format(
                keys.first.decode("utf-8", "replace")))
        return table

    def _run(self, table: Table, keys: KeySet) -> int:
        """The index of the plan's run that is `keys`'s slots; -1 if none is."""
        assert table.moving is not None
        for index, (low, high, _, _) in enumerate(table.moving.plan):
            if keys.slots == frozenset(range(low, high)):
                return index
        return -1

    def _begin_hash(self, keys: KeySet, source: int) -> str | None:
        try:
            table = self._hash_table(keys)
        except CatalogError as exc:
            return str(exc)
        assert table.moving is not None
        index = self._run(table, keys)
        if index < 0 or source not in table.moving.plan[index][2:]:
            return ERR_NOT_RUN.format(keys.describe(), table.name, source)
        if not self._owned(table.moving.plan[index]):
            return ERR_STALE_PLAN.format(table.name, keys.describe())
        for other in self.moves.values():
            if (other.state != "done" and other.keys.kind in (KIND_SLOTS, KIND_TABLE_SLOTS)
                    and other.keys.first in (b"", keys.first)
                    and other.keys.slots & keys.slots):
                return ERR_SLOTS_MOVING.format(table.name, other.move_id)
        return None

    def _owned(self, run: tuple[int, int, int, int]) -> bool:
        """Whether the run's first shard and its target own its slots in their keyspaces'
        maps (a slot move that began before the table's move was recorded and ended
        since makes the plan stale)."""
        if self.maps is None:
            return True
        low, high, first, target = run
        for sid in (first, target):
            shard = self.maps.shards.get(sid)
            owners = self.maps.slot_table(shard.keyspace) if shard is not None else []
            if len(owners) < high or any(owners[s] != sid for s in range(low, high)):
                return False
        return True

    def begin(self, keys: KeySet, source: int) -> str | None:
        if keys.kind == KIND_SLOTS:
            moving = sorted(t.name for t in self.catalog.tables.values()
                            if not t.ranged and t.moving is not None)
            return ERR_HASH_MOVING.format(moving[0]) if moving else None
        if keys.kind == KIND_TABLE_SLOTS:
            return self._begin_hash(keys, source)
        if keys.kind != KIND_POSITIONS:
            return ERR_RAW_RANGE
        try:
            table = self._table(keys)
        except CatalogError as exc:
            return str(exc)
        for low, high, sid in table.pieces(keys.low, keys.high):
            if sid != source:
                return ERR_NOT_SOURCE.format(table.name, low, high, sid, source)
        for other in self.moves.values():
            if (other.state != "done" and other.keys.kind == KIND_POSITIONS
                    and other.keys.first == keys.first
                    and max(other.keys.low, keys.low) < min(other.keys.high, keys.high)):
                return ERR_TABLE_MOVING.format(table.name, other.move_id)
        return None

    def end(self, move: Move) -> None:
        if move.keys.kind == KIND_TABLE_SLOTS:
            self._end_hash(move)
            return
        table = self._table(move.keys)
        give_range(table, move.keys.low, move.keys.high, move.target)
        self.catalog.settle(table)  # a table move's switch of keyspace (table_move.py)


    def _end_hash(self, move: Move) -> None:
        table = self.catalog.tables.get(move.keys.first[:-1].decode("utf-8", "replace"))
        if table is None or table.moving is None:
            return  # begin checked it; nothing else changes a moving table's record
        index = self._run(table, move.keys)
        if index >= 0:
            record.arrive(table, index, move.target == table.moving.plan[index][3])
            self.catalog.version += 1


def give_range(table: Table, low: int, high: int, shard: int) -> None:
    """Give the positions [low, high) of `table`'s map to `shard` (see the module header)."""
    for point in (low, high):
        if MIN_POSITION < point < MAX_POSITION and point not in table.splits:
            index = bisect.bisect_right(table.splits, point)
            table.splits.insert(index, point)
            table.shards.insert(index + 1, table.shards[index])
    edges = [MIN_POSITION, *table.splits, MAX_POSITION]
    for i in range(len(table.shards)):
        if low <= edges[i] and edges[i + 1] <= high:
            table.shards[i] = shard
