"""TABLE.MOVE: a range table moved online to another keyspace, reversible until finished.

Strategy: Vitess's MoveTables is the model; its steps map onto ours as follows.

- `TABLE.MOVE table keyspace` is MoveTables Create and SwitchTraffic in one. It commits a
  plan in the configuration group (catalog.OP_MOVE: for each range of the table's map,
  its shard and a shard of the target keyspace, round-robin in shard id order), then
  begins one generic move of that range's rows (shardstore/moves.py with a positions key
  set) from its shard to the planned one. The configuration leader drives those moves
  (shardstore/migrate.py): the source's log freezes the range's rows, they are copied in
  idempotent batches through the target's log, the range is handed over with an epoch,
  and the source's copy is purged. A coordinator killed mid-move is replaced by the next
  leader, which resumes from the recorded cursor. When the last range has arrived, the
  catalog switches the table's keyspace binding in the same configuration entry
  (`Catalog.settle`), and the record's `switches` counts it.
  Traffic switches range by range, not for the whole table at once as in Vitess:
  the freeze that the existing moves use is the catch-up. A range's rows are refused
  with TRYAGAIN from its freeze until its move ends; clients retry and land on the new
  shard. The freeze window is the copy time of one range, not the whole table. Vitess
  replicates from the source's binlog instead, so its window is shorter.
- `TABLE.MOVE.REVERSE table` is ReverseTraffic: after the switch, it moves every range
  back to the shard it came from (the same generic moves, reversed). When the last one
  is back, the binding returns to the origin keyspace and the record goes.
- `TABLE.MOVE.FINISH table` is Complete: it drops the record, so the move can no longer
  be reversed and the table can be split again. TABLE.SPLIT is refused while a move is
  recorded, because the plan names the table's ranges.
- Cancel before cut-over is Vitess's Cancel. It needs a generic move to be rolled back
  mid-copy (lift the source's freeze, delete the target's copies, drop the record);
  that belongs to shardstore/moves.py and is not offered here yet.

Every command may be sent again. TABLE.MOVE with the same keyspace begins the ranges
that are neither moving nor moved: a node that died between the plan and the begins
leaves no range behind once TABLE.MOVE is repeated. Progress shows in `TABLE.INFO`
(`move`: target, origin, state, switches, ranges moved of all, and the moves under way)
and in `SHARDSTORE.MOVES`.

Only RANGE tables move. A HASH table's rows are placed by the slot map of whichever
keyspace's node is asked, so its binding does not route them yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgpack

from core.command_table import Command
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_session import Session
from shardstore import catalog as catalog_mod
from shardstore.catalog import (
    MOVE_REVERSING,
    OP_MOVE,
    OP_MOVE_FINISH,
    OP_MOVE_REVERSE,
    Catalog,
    CatalogError,
    Table,
    TableMove,
)
from shardstore.cluster import ClusterConfig
from shardstore.keysets import KIND_POSITIONS, KeySet
from shardstore.moves import STATE_DONE, encode_begin

__all__ = ["ERR_MOVE_SYNTAX", "TableMoveCommands", "make_plan", "move_status", "parse_move"]

ERR_MOVE_SYNTAX = "ERR syntax: TABLE.MOVE table keyspace"
ERR_NO_SHARDS = "ERR keyspace {!r} has no shards"
# The generic move's refusals that mean "this range needs no begin": it moves or moved.
SKIPPED_REFUSALS = ("already moving", "not on shard")


def _text(word: bytes) -> str:
    return word.decode("utf-8", "replace")


def parse_move(args: Sequence[bytes]) -> tuple[str, str]:
    """(table, keyspace) of `TABLE.MOVE table keyspace`; CatalogError otherwise."""
    if len(args) != 3:
        raise CatalogError(ERR_MOVE_SYNTAX)
    name, keyspace = _text(args[1]), _text(args[2])
    if not (catalog_mod.NAME_PATTERN.fullmatch(name)
            and catalog_mod.NAME_PATTERN.fullmatch(keyspace)):
        raise CatalogError(ERR_MOVE_SYNTAX)
    return name, keyspace


def make_plan(table: Table, targets: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(low, high, from shard, to shard) for each range of `table`: a range on one of
    the `targets` (the target keyspace's shards) stays there, the others take them
    round-robin; ValueError when there are none."""
    if not targets:
        raise ValueError("no target shards")
    return [(low, high, sid, sid if sid in targets else targets[i % len(targets)])
            for i, (low, high, sid) in enumerate(table.ranges())]


def _arrived(table: Table, move: TableMove) -> int:
    """How many ranges of the plan lie where the move's state sends them."""
    column = 2 if move.state == MOVE_REVERSING else 3
    return sum(1 for step in move.plan if table.shard_at(step[0]) == step[column])


def move_status(table: Table, config: ClusterConfig) -> dict[bytes, Any] | None:
    """TABLE.INFO's `move`: None when the table is not moving."""
    move = table.moving
    if move is None:
        return None
    under_way = [[m.move_id, m.state.encode(), m.copied]
                 for _, m in sorted(config.moves.items())
                 if m.state != STATE_DONE and m.keys.kind == KIND_POSITIONS
                 and m.keys.first == table.prefix]
    return {b"to": move.target.encode(), b"from": move.origin.encode(),
            b"state": move.state.encode(), b"switches": move.switches,
            b"ranges": len(move.plan), b"ranges_arrived": _arrived(table, move),
            b"moves": under_way}


class MoveNode(Protocol):
    """What the commands need of shardstore.server.ShardNode."""

    service: RaftService

    @property
    def full_config(self) -> ClusterConfig: ...


class TableMoveCommands:
    """TABLE.MOVE, TABLE.MOVE.REVERSE and TABLE.MOVE.FINISH (see the module header)."""

    def __init__(self, node: MoveNode, catalog_of: Any) -> None:
        self.node = node
        self.catalog_of = catalog_of  # () -> this node's Catalog

    def rows(self) -> list[Command]:
        write = frozenset({"write"})
        return [
            Command("TABLE.MOVE", self.cmd_move, 3, write,
                    summary="Move a range table online to another keyspace"),
            Command("TABLE.MOVE.REVERSE", self.cmd_reverse, 2, write,
                    summary="Move a moved table back to the keyspace it came from"),
            Command("TABLE.MOVE.FINISH", self.cmd_finish, 2, write,
                    summary="End a table's move: it can no longer be reversed"),
        ]

    def _table(self, name: str) -> Table:
        catalog: Catalog = self.catalog_of()
        table = catalog.tables.get(name)
        if table is None:
            raise CommandError(catalog_mod.ERR_NO_TABLE.format(name))
        if not table.ranged:
            raise CommandError(catalog_mod.ERR_MOVE_HASH)
        return table

    async def cmd_move(self, session: Session, args: list[bytes]) -> Any:
        """The ids of the moves begun (none when every range moves or moved already)."""
        try:
            name, keyspace = parse_move(args)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        table = self._table(name)
        if table.moving is not None and table.moving.target == keyspace:
            plan = table.moving.plan  # the same move again: begin what is left
        else:
            full = self.node.full_config
            targets = sorted(sid for sid, s in full.shards.items() if s.keyspace == keyspace)
            if not targets and keyspace in full.spaces:
                raise CommandError(ERR_NO_SHARDS.format(keyspace))
            plan = make_plan(table, targets or [0])  # an unknown keyspace: apply says so
        await self.node.service.write(msgpack.packb(
            {"op": OP_MOVE, "name": name, "keyspace": keyspace, "plan": plan}))
        return await self._begin(table, plan, forward=True)

    async def cmd_reverse(self, session: Session, args: list[bytes]) -> Any:
        """The ids of the moves begun back to the origin's shards."""
        table = self._table(_text(args[1]))
        plan = table.moving.plan if table.moving is not None else []
        await self.node.service.write(msgpack.packb({"op": OP_MOVE_REVERSE,
                                                     "name": table.name}))
        return await self._begin(table, plan, forward=False)

    async def cmd_finish(self, session: Session, args: list[bytes]) -> Any:
        await self.node.service.write(msgpack.packb({"op": OP_MOVE_FINISH,
                                                     "name": _text(args[1])}))
        return OK

    async def _begin(self, table: Table, plan: Sequence[tuple[int, int, int, int]],
                     forward: bool) -> list[int]:
        begun: list[int] = []
        for low, high, origin, target in plan:
            source, destination = (origin, target) if forward else (target, origin)
            if source == destination:
                continue  # a range that was on the target keyspace already
            keys = KeySet.of_positions(table.prefix, table.kind, table.epoch_ms, low, high)
            try:
                begun.append(int(await self.node.service.write(
                    encode_begin(keys, source, destination))))
            except CommandError as exc:
                if not any(words in str(exc) for words in SKIPPED_REFUSALS):
                    raise
        return begun
