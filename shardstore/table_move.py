"""TABLE.MOVE: a table moved online to another keyspace, reversible until finished.

Strategy: Vitess's MoveTables is the model; its steps map onto ours as follows.

- `TABLE.MOVE table keyspace` is MoveTables Create and SwitchTraffic in one. It commits a
  plan in the configuration group (catalog.OP_MOVE, shardstore/table_move_record.py):
  for each range of the table's map, its shard and a shard of the target keyspace,
  round-robin in shard id order (a range already there stays). Then one generic move of
  each range's rows (shardstore/moves.py with a positions key set) is begun from its
  shard to the planned one, and the configuration leader drives those moves
  (shardstore/migrate.py): the source's log freezes the range's rows, they are copied in
  idempotent batches through the target's log, and both sides' rows are compared by
  xxhash checksums (shardstore/table_verify.py). Only then is the range handed over with
  an epoch, and the source's copy is purged. When the last range has arrived, the
  catalog switches the table's keyspace binding in the same configuration entry.
  Traffic switches range by range, not for the whole table at once as in Vitess:
  the freeze that the existing moves use is the catch-up. A range's rows are refused
  with TRYAGAIN from its freeze until its move ends; clients retry and land on the new
  shard. The freeze window is the copy time of one range, not the whole table. Vitess
  replicates from the source's binlog instead, so its window is shorter.
- `TABLE.MOVE.CANCEL table` is Cancel, before the switch. The generic moves still
  copying are rolled back (moves.OP_CANCEL: the source serves its rows again and the
  target's copies are deleted). Ranges that arrived already are moved back. Once every
  range is on its first shard again, the record goes; the binding never changed.
- `TABLE.MOVE.REVERSE table` is ReverseTraffic, after the switch. It moves every range
  back to the shard it came from (the same generic moves, reversed). When the last one
  is back, the binding returns to the origin keyspace and the record goes.
- `TABLE.MOVE.FINISH table` is Complete: it drops the record, so the move can no longer
  be reversed and the table can be split again. TABLE.SPLIT is refused while a move is
  recorded, because the plan names the table's ranges.

The record, not a command's connection, drives the move: `drive` runs first in each of
the coordinator's rounds (Mover.before_round). For every recorded table move it begins
the generic moves still needed and cancels the ones a cancel stops. A coordinator
SIGKILLed mid-move is replaced by the next configuration leader, which goes on from the
records. TABLE.MOVE, REVERSE and CANCEL do the same once on their own node, after a
read barrier on the configuration group, and answer the ids of the moves they began
(FINISH answers OK). Every command may be sent again. Progress shows in `TABLE.INFO`
(`move`: target, origin, state, switches, ranges arrived of all, and the moves under way)
and in `SHARDSTORE.MOVES`.

A HASH table moves the same way, by slot runs instead of ranges (`make_hash_plan`): its
rows lie on the shards of its keyspace's slot map and go to the owners of the same slots
in the target keyspace's map, so the plan has one run of slots for each pair (owner
here, owner there), and one generic move per run carries the table's rows in those
slots (keysets.KIND_TABLE_SLOTS), frozen, copied and checked by checksums like a range.
A run has no map of its own to hand over: the record counts the runs arrived
(table_move_record.arrive), and the binding switches when the last has arrived. Until
then every arrived run's rows answer TRYAGAIN on the source (its fence stays), so a
HASH table's freeze window is its whole copy, not one run's. The plan is made from both
keyspaces' slot maps, so TABLE.MOVE of a HASH table is refused while slots move there,
and slot moves of its slots are refused while it moves (shardstore/moves.py). Who
serves its rows before and after the switch, and how the router and shardstore.client
follow the binding, is shardstore/table_bindings.py's part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgpack

from core.command_table import Command
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_session import Session
from shardstore import catalog as catalog_mod
from shardstore.catalog import (
    MOVE_CANCELLING,
    MOVE_COPYING,
    OP_MOVE,
    OP_MOVE_CANCEL,
    OP_MOVE_FINISH,
    OP_MOVE_REVERSE,
    Catalog,
    CatalogError,
    Table,
    TableMove,
)
from shardstore.cluster import ClusterConfig
from shardstore.keysets import KIND_POSITIONS, KIND_SLOTS, KIND_TABLE_SLOTS, KeySet
from shardstore.moves import STATE_COPY, STATE_DONE, Move, encode_begin, encode_cancel
from shardstore.table_keys import MAX_POSITION, MIN_POSITION

__all__ = ["ERR_MOVE_SYNTAX", "TableMoveCommands", "make_hash_plan", "make_plan", "move_status",
           "parse_move"]

ERR_MOVE_SYNTAX = "ERR syntax: TABLE.MOVE table keyspace"
ERR_NO_SHARDS = "ERR keyspace {!r} has no shards"
ERR_NO_TARGETS = "ERR a plan needs the target keyspace's shards"
ERR_NO_MAP = "ERR keyspace {!r} has no slot map with every slot owned"
ERR_SLOTS_MOVING = "ERR slots are moving (move {}): move a HASH table after that move ends"
SLOT_COUNT = 16384
STEP_OPS = {"TABLE.MOVE.REVERSE": OP_MOVE_REVERSE, "TABLE.MOVE.CANCEL": OP_MOVE_CANCEL,
            "TABLE.MOVE.FINISH": OP_MOVE_FINISH}

log = logging.getLogger("shardstore.table_move")


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
        raise ValueError(ERR_NO_TARGETS)
    return [(low, high, sid, sid if sid in targets else targets[i % len(targets)])
            for i, (low, high, sid) in enumerate(table.ranges())]


def make_hash_plan(here: Sequence[int], there: Sequence[int], shards: set[int]
                   ) -> list[tuple[int, int, int, int]]:
    """(low, high, from shard, to shard) for each run of slots [low, high) whose owner in
    the slot map `here` (slot -> shard id) and in the map `there` are one shard each;
    ValueError when a map misses a slot or names a shard not in `shards`."""
    if len(here) != SLOT_COUNT or len(there) != SLOT_COUNT:
        raise ValueError(ERR_NO_TARGETS)
    plan: list[tuple[int, int, int, int]] = []
    for slot in range(SLOT_COUNT):
        pair = (here[slot], there[slot])
        if not set(pair) <= shards:
            raise ValueError(ERR_NO_TARGETS)
        if plan and plan[-1][2:] == pair:
            plan[-1] = (plan[-1][0], slot + 1, *pair)
        else:
            plan.append((slot, slot + 1, *pair))
    return plan


def _arrived(table: Table, move: TableMove) -> int:
    """How many ranges of the plan lie where the move's state sends them."""
    if not table.ranged:
        there = move.state in (MOVE_COPYING, catalog_mod.MOVE_SWITCHED)
        return len(move.arrived) if there else len(move.plan) - len(move.arrived)
    column = 3 if move.state in (MOVE_COPYING, catalog_mod.MOVE_SWITCHED) else 2
    return sum(1 for step in move.plan if table.shard_at(step[0]) == step[column])


def move_status(table: Table, config: ClusterConfig) -> dict[bytes, Any] | None:
    """TABLE.INFO's `move`: None when the table is not moving."""
    move = table.moving
    if move is None:
        return None
    under_way = [[m.move_id, m.state.encode(), m.copied]
                 for _, m in sorted(config.moves.items())
                 if m.state != STATE_DONE and _ours(m, table)]
    return {b"to": move.target.encode(), b"from": move.origin.encode(),
            b"state": move.state.encode(), b"switches": move.switches,
            b"ranges": len(move.plan), b"ranges_arrived": _arrived(table, move),
            b"moves": under_way}


class MoveNode(Protocol):
    """What the commands need of shardstore.server.ShardNode."""

    service: RaftService

    @property
    def full_config(self) -> ClusterConfig: ...


def _ours(move: Move, table: Table) -> bool:
    """Whether `move` carries rows of `table`."""
    return (move.keys.kind in (KIND_POSITIONS, KIND_TABLE_SLOTS)
            and move.keys.first == table.prefix)


def _overlaps(move: Move, table: Table, low: int, high: int) -> bool:
    """Whether `move` is open and carries rows of `table` in [low, high) (positions for
    a RANGE table, slots for a HASH table)."""
    keys = move.keys
    if move.state == STATE_DONE or not _ours(move, table):
        return False
    if keys.kind == KIND_TABLE_SLOTS:
        return any(low <= slot < high for slot in keys.slots)
    return max(keys.low, low) < min(keys.high, high)


class TableMoveCommands:
    """TABLE.MOVE, TABLE.MOVE.REVERSE, TABLE.MOVE.CANCEL and TABLE.MOVE.FINISH, and
    `drive`, the coordinator's round (see the module header)."""

    def __init__(self, node: MoveNode, catalog_of: Callable[[], Catalog]) -> None:
        self.node = node
        self.catalog_of = catalog_of  # this node's Catalog

    def rows(self) -> list[Command]:
        write = frozenset({"write"})
        return [
            Command("TABLE.MOVE", self.cmd_move, 3, write,
                    summary="Move a table online to another keyspace"),
            Command("TABLE.MOVE.REVERSE", self.cmd_step, 2, write,
                    summary="Move a moved table back to the keyspace it came from"),
            Command("TABLE.MOVE.CANCEL", self.cmd_step, 2, write,
                    summary="Roll a table's move back before its switch"),
            Command("TABLE.MOVE.FINISH", self.cmd_step, 2, write,
                    summary="End a table's move: it can no longer be reversed"),
        ]

    def _table(self, name: str) -> Table:
        table = self.catalog_of().tables.get(name)
        if table is None:
            raise CommandError(catalog_mod.ERR_NO_TABLE.format(name))
        return table

    async def cmd_move(self, session: Session, args: list[bytes]) -> Any:
        """The ids of the moves begun (none when every range moves or moved already)."""
        try:
            name, keyspace = parse_move(args)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        await self.node.service.barrier()  # the catalog as of every committed change
        table = self._table(name)
        if table.moving is not None and table.moving.target == keyspace:
            plan = table.moving.plan  # the same move again: begin what is left
        else:
            full = self.node.full_config
            known = set(full.spaces) or {catalog_mod.DEFAULT_KEYSPACE}
            if keyspace not in known:
                raise CommandError(catalog_mod.ERR_NO_KEYSPACE.format(
                    keyspace, ", ".join(sorted(known))))
            targets = sorted(sid for sid, s in full.shards.items() if s.keyspace == keyspace)
            if not targets:
                raise CommandError(ERR_NO_SHARDS.format(keyspace))
            plan = make_plan(table, targets) if table.ranged else self._hash_plan(
                table, keyspace)
        await self.node.service.write(msgpack.packb(
            {"op": OP_MOVE, "name": name, "keyspace": keyspace, "plan": plan}))
        return await self._after_write(name)

    def _hash_plan(self, table: Table, keyspace: str) -> list[tuple[int, int, int, int]]:
        """The slot runs of a HASH table's move (see `make_hash_plan`); CommandError
        while slots move (the maps would change under the plan)."""
        full = self.node.full_config
        for move in full.moves.values():
            if move.state != STATE_DONE and move.keys.kind in (KIND_SLOTS, KIND_TABLE_SLOTS):
                raise CommandError(ERR_SLOTS_MOVING.format(move.move_id))
        here, there = full.slot_table(table.keyspace), full.slot_table(keyspace)
        if not here and table.keyspace == catalog_mod.DEFAULT_KEYSPACE:
            here = full.slot_shard
        try:
            return make_hash_plan(here, there, set(full.shards))
        except ValueError:
            missing = keyspace if len(there) == SLOT_COUNT else table.keyspace
            raise CommandError(ERR_NO_MAP.format(missing)) from None

    async def cmd_step(self, session: Session, args: list[bytes]) -> Any:
        """REVERSE and CANCEL: the ids of the moves begun back; FINISH: OK."""
        op = STEP_OPS[_text(args[0]).upper()]
        name = _text(args[1])
        await self.node.service.write(msgpack.packb({"op": op, "name": name}))
        if op == OP_MOVE_FINISH:
            return OK
        return await self._after_write(name)

    async def _after_write(self, name: str) -> list[int]:
        """Once this node's catalog has the entry just committed: what `drive` begins."""
        await self.node.service.barrier()
        table = self.catalog_of().tables.get(name)
        return await self._drive_table(table) if table is not None else []

    async def drive(self) -> None:
        """Begin (or, for a cancel, cancel) the generic moves every recorded table move
        still needs; errors are logged and the next round tries again."""
        for table in list(self.catalog_of().tables.values()):
            if table.moving is None:
                continue
            try:
                await self._drive_table(table)
            except CommandError as exc:
                log.info("the move of table %s waits: %s", table.name, exc)

    async def _drive_table(self, table: Table) -> list[int]:
        move = table.moving
        if move is None or move.state == catalog_mod.MOVE_SWITCHED:
            return []  # nothing to move until REVERSE or FINISH
        moves = self.node.full_config.moves
        if move.state == MOVE_CANCELLING:
            for other in [m for m in moves.values() if m.state == STATE_COPY]:
                if _overlaps(other, table, MIN_POSITION, MAX_POSITION):
                    await self._write_quietly(encode_cancel(other.move_id))
        forward = move.state == MOVE_COPYING
        begun: list[int] = []
        for index, (low, high, origin, target) in enumerate(move.plan):
            source, destination = (origin, target) if forward else (target, origin)
            if table.ranged:
                at = table.shard_at(low)
                keys = KeySet.of_positions(table.prefix, table.kind, table.epoch_ms, low,
                                           high)
            else:
                at = target if index in move.arrived else origin
                keys = KeySet.of_table_slots(table.prefix, range(low, high))
            if source == destination or at != source or any(
                    _overlaps(m, table, low, high) for m in moves.values()):
                continue  # there already, not there (yet), or moving
            begun_id = await self._write_quietly(encode_begin(keys, source, destination))
            if isinstance(begun_id, int) and not isinstance(begun_id, bool):
                begun.append(begun_id)
        if move.state == MOVE_CANCELLING and not begun and not any(
                _overlaps(m, table, MIN_POSITION, MAX_POSITION) for m in moves.values()):
            await self._write_quietly(msgpack.packb({"op": OP_MOVE_CANCEL,
                                                     "name": table.name}))  # closes it
        return begun

    async def _write_quietly(self, entry: bytes) -> Any:
        """The entry's result, or None when it was refused (another node's round or a
        command got there first: the next round looks again)."""
        try:
            return await self.node.service.write(entry)
        except CommandError as exc:
            log.info("a table move's entry was refused: %s", exc)
            return None
