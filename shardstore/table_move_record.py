"""The record of a table's move to another keyspace, kept on the table in the catalog;
sans I/O.

Strategy: shardstore/table_move.py says the life of a move; this module holds its record
and the configuration entries that change it, which the catalog (shardstore/catalog.py)
applies on every node alike:

- OP_MOVE {name, keyspace, plan}: the record is made (state copying) from the plan, which
  gives, for each range of a RANGE table's map, (low, high, from shard, to shard), and
  for a HASH table, for each run of slots [low, high) whose owner in the table's keyspace
  and owner in the target keyspace are both one shard, (low, high, from, to); refused
  unless the keyspace exists and is not the table's own, and the plan's ranges are the
  table's ranges now (a HASH table's runs must cover the 16384 slots in order); the
  same move again is a no-op;
- OP_MOVE_REVERSE {name}: switched -> reversing; OP_MOVE_CANCEL {name}: copying ->
  cancelling; OP_MOVE_FINISH {name}: switched -> the record goes. Each again: a no-op,
  but OP_MOVE_CANCEL again closes a cancel whose ranges are all home (the coordinator
  sends it once none of the table's generic moves is open).

`settle` runs after any range of a moving table changed shard (a generic move's end,
shardstore/table_moves.py) and after a cancel. A HASH table's runs have no map of their
own: the record keeps `arrived`, the indexes of the plan's runs that lie on their target
shard (`arrive` adds or drops one at a generic move's end). In state copying, once every
range (every run) lies on its planned shard, the table is bound to the target keyspace,
the state becomes switched and `switches` (the binding's epoch) goes up. In state
reversing (and cancelling, when closing), once every range is back on its first shard,
the table is bound to its origin again and the record goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ERR_MOVE_HASH", "ERR_NO_KEYSPACE", "MOVE_CANCELLING", "MOVE_COPYING", "MOVE_REVERSING",
    "MOVE_SWITCHED", "OP_MOVE", "OP_MOVE_CANCEL", "OP_MOVE_FINISH", "OP_MOVE_REVERSE",
    "MoveRefused", "TableMove", "arrive", "begin", "settle", "step",
]

SLOT_COUNT = 16384  # a HASH table's plan covers the slots [0, SLOT_COUNT)

OP_MOVE = "table.move"
OP_MOVE_REVERSE = "table.move.reverse"
OP_MOVE_FINISH = "table.move.finish"
OP_MOVE_CANCEL = "table.move.cancel"
MOVE_COPYING = "copying"  # the ranges are moving to the target keyspace
MOVE_SWITCHED = "switched"  # they all lie there; the table is bound to it
MOVE_REVERSING = "reversing"  # they are moving back
MOVE_CANCELLING = "cancelling"  # cancelled before the switch: the ranges go back or stay
ERR_NO_KEYSPACE = "ERR no such keyspace {!r} (the keyspaces are: {})"
ERR_MOVE_HASH = ("ERR TABLE.MOVE moves RANGE tables only: the rows of a HASH table are "
                 "placed by their keyspace's slot map")  # no longer sent; kept for callers
ERR_MOVE_SAME = "ERR table {!r} is in keyspace {!r} already"
ERR_MOVE_BUSY = "ERR table {!r} is moving to keyspace {!r} already ({})"
ERR_MOVE_PLAN = "ERR the map of table {!r} changed meanwhile: run TABLE.MOVE again"
ERR_MOVE_NONE = "ERR table {!r} is not moving"
ERR_MOVE_STATE = "ERR the move of table {!r} is {}: {} needs it {}"
_STEPS = {  # op -> (the state it needs, the state it leaves; "": the record goes)
    OP_MOVE_REVERSE: (MOVE_SWITCHED, MOVE_REVERSING),
    OP_MOVE_FINISH: (MOVE_SWITCHED, ""),
    OP_MOVE_CANCEL: (MOVE_COPYING, MOVE_CANCELLING),
}
_VERBS = {OP_MOVE_REVERSE: "TABLE.MOVE.REVERSE", OP_MOVE_FINISH: "TABLE.MOVE.FINISH",
          OP_MOVE_CANCEL: "TABLE.MOVE.CANCEL"}


class MoveRefused(ValueError):
    """An entry the record refuses; the message is the error reply's text."""


@dataclass
class TableMove:
    """A table's move to another keyspace: `plan` holds (low, high, from shard, to shard)
    for each range of the table's map when the move began; `switches` counts the times
    the table's binding switched keyspace by this move (its epoch); `arrived` (HASH
    tables) the indexes of the plan's slot runs on their target shard."""

    target: str
    origin: str
    plan: list[tuple[int, int, int, int]]
    state: str = MOVE_COPYING
    switches: int = 0
    arrived: list[int] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.target, self.origin, [list(p) for p in self.plan], self.state,
                self.switches, sorted(self.arrived)]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> TableMove:
        target, origin, plan, state, switches, *rest = wire
        return cls(str(target), str(origin),
                   [(int(a), int(b), int(c), int(d)) for a, b, c, d in plan], str(state),
                   int(switches), [int(i) for i in rest[0]] if rest else [])


class MovingTable(Protocol):
    """What the record needs of shardstore.catalog.Table."""

    name: str
    keyspace: str
    shards: list[int]
    moving: TableMove | None

    @property
    def ranged(self) -> bool: ...

    def ranges(self) -> list[tuple[int, int, int]]: ...


def begin(table: MovingTable, entry: dict[str, Any], shard_ids: set[int],
          keyspaces: set[str]) -> None:
    """Apply OP_MOVE to `table` (see the module header); MoveRefused otherwise."""
    target = str(entry["keyspace"])
    if table.moving is not None:
        if table.moving.target == target and table.moving.state == MOVE_COPYING:
            return
        raise MoveRefused(ERR_MOVE_BUSY.format(table.name, table.moving.target,
                                               table.moving.state))
    if target not in keyspaces:
        raise MoveRefused(ERR_NO_KEYSPACE.format(target, ", ".join(sorted(keyspaces))))
    if target == table.keyspace:
        raise MoveRefused(ERR_MOVE_SAME.format(table.name, target))
    plan = [(int(a), int(b), int(c), int(d)) for a, b, c, d in entry["plan"]]
    ranges = table.ranges() if table.ranged else _slot_runs(plan)
    if [p[:3] for p in plan] != ranges or any(p[3] not in shard_ids for p in plan):
        raise MoveRefused(ERR_MOVE_PLAN.format(table.name))
    table.moving = TableMove(target, table.keyspace, plan)


def _slot_runs(plan: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int]] | None:
    """The plan's (low, high, from) when its runs cover the slots in order, else None."""
    edges = [0, *(p[1] for p in plan)]
    if not plan or edges[-1] != SLOT_COUNT or any(p[0] != edges[i] or p[1] <= p[0]
                                                  for i, p in enumerate(plan)):
        return None
    return [p[:3] for p in plan]


def arrive(table: MovingTable, index: int, there: bool) -> None:
    """A HASH table's slot run `index` of the plan is on its target shard (`there`) or
    back on its first one; then `settle`."""
    move = table.moving
    if move is None or not 0 <= index < len(move.plan):
        return
    arrived = set(move.arrived)
    arrived = arrived | {index} if there else arrived - {index}
    move.arrived = sorted(arrived)
    settle(table)


def step(table: MovingTable, op: str) -> None:
    """Apply OP_MOVE_REVERSE, OP_MOVE_CANCEL or OP_MOVE_FINISH to `table`."""
    move = table.moving
    if move is None:
        raise MoveRefused(ERR_MOVE_NONE.format(table.name))
    wanted, after = _STEPS[op]
    if move.state == after:
        if op == OP_MOVE_CANCEL:
            settle(table, closing=True)  # the coordinator saw no move of it left open
        return  # sent again
    if move.state != wanted:
        raise MoveRefused(ERR_MOVE_STATE.format(table.name, move.state, _VERBS[op], wanted))
    if not after:
        table.moving = None
        return
    move.state = after


def settle(table: MovingTable, closing: bool = False) -> None:
    """After a range of `table` changed shard (see the module header). A cancelled move
    ends only `closing`: when its coordinator saw none of its generic moves left open (a
    range still copying changes no shard until it arrives, so the map alone cannot say
    the cancel is over)."""
    move = table.moving
    if move is None:
        return
    if table.ranged:
        home = set(table.shards) <= {p[2] for p in move.plan}
        there = set(table.shards) <= {p[3] for p in move.plan}
    else:
        home, there = not move.arrived, len(move.arrived) == len(move.plan)
    if move.state == MOVE_COPYING and there:
        table.keyspace, move.state = move.target, MOVE_SWITCHED
        move.switches += 1
    elif home and (move.state == MOVE_REVERSING
                   or (move.state == MOVE_CANCELLING and closing)):
        table.keyspace, table.moving = move.origin, None
