"""Moves in the configuration group: what is moving, from where to where, how far; sans I/O.

Strategy: a move of a key set (shardstore/keysets.py) from a source shard to a target
shard is a record in the configuration (`ClusterConfig.moves`), so whoever leads the
configuration group drives it, and a new leader resumes it from the record after a crash.
Its life, one configuration entry per step (ops, each a msgpack map):

- OP_BEGIN {keys, source, target}: the record is made in state COPY and the epoch goes
  up; refused (an error string) when a slot is not the source's or is already moving;
  the result is the move's id;
- OP_STEP {id, state, cursor, done}: how far the copy (state COPY) or the purge (state
  PURGE) got: the key to go on after and the keys handled so far. Advisory: a resumed
  step starts there, and every step is idempotent anyway;
- OP_END {id}: the target owns the key set (for slots: the slot map changes), the epoch
  goes up, state PURGE (the source deletes its copy);
- OP_FINISH {id}: state DONE; `moves_done` counts it. The last KEEP_DONE finished
  records stay (so `admin` sees how many keys a move copied), older ones go.

- OP_CANCEL {id}: a move still copying is rolled back: state CANCEL, the epoch goes up
  (the slot map never changed); the coordinator then aborts the target's copy (its
  copied keys fenced there), purges them (OP_STEP in state CANCEL), unfreezes the source
  and finishes the record (OP_FINISH: state DONE, `cancelled`). Refused once the move
  has ended (OP_END: the target owns the keys; move them back instead);
- OP_RESUME {id}: a cancel the target refused (it took writes under ASKING, which a purge
  would lose) is dropped: state COPY again, the copy walks from the start (the target
  keeps what it has).

What the shards' logs get meanwhile (freeze, copy, lift, purge) is shardstore/migrate.py's
part. A key set that is not slots changes no slot map: `apply_move`'s `hooks` (for range
tables shardstore/table_moves.py) check it at OP_BEGIN and hand it over at OP_END; with
no hooks such a move is refused. The hooks see a slot move's OP_BEGIN too, and refuse it
while a HASH table's move to another keyspace is recorded (its plan was made from the
slot maps).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from native.crc16 import SLOT_COUNT
from shardstore.keysets import KIND_SLOTS, KIND_TABLE_SLOTS, KeySet

__all__ = [
    "OP_BEGIN", "OP_CANCEL", "OP_END", "OP_FINISH", "OP_PREFIX", "OP_RESUME", "OP_STEP",
    "STATE_CANCEL", "STATE_COPY", "STATE_DONE", "STATE_PURGE",
    "Move", "MoveHooks", "apply_move", "encode_begin", "encode_cancel", "encode_end",
    "encode_finish", "encode_resume", "encode_step", "ranges_of",
]

OP_PREFIX = "move."
OP_BEGIN = "move.begin"
OP_STEP = "move.step"
OP_END = "move.end"
OP_FINISH = "move.finish"
OP_CANCEL = "move.cancel"
OP_RESUME = "move.resume"
STATE_COPY = "copy"
STATE_PURGE = "purge"
STATE_DONE = "done"
STATE_CANCEL = "cancel"
KEEP_DONE = 16  # finished move records kept for `SHARDSTORE.MOVES`
ERR_NO_SHARD = "ERR no shard {}"
ERR_SAME_SHARD = "ERR a move needs two different shards"
ERR_NOT_OWNER = "ERR slot {} is not owned by shard {}"
ERR_MOVING = "ERR slot {} is already moving (move {})"
ERR_NO_MOVE = "ERR no move {}"
ERR_EMPTY = "ERR a move needs at least one slot"
ERR_UNKNOWN_OP = "ERR unknown move op {!r}"
ERR_NOT_SLOTS = "ERR only slots can move here"
ERR_KEYSPACES = "ERR shards {} and {} serve different keyspaces"
ERR_NOT_CANCELLABLE = ("ERR move {} is {}: only a move still copying can be cancelled (an "
                       "ended move is undone by moving its keys back)")


class MoveHooks(Protocol):
    """The owner of key sets that are not slots; `begin` may refuse slots too (see the
    module header)."""

    def begin(self, keys: KeySet, source: int) -> str | None: ...

    def end(self, move: Move) -> None: ...


@dataclass
class Move:
    """One move's record. `cursor`: the last key handled by the current state's walk
    (None: from the start, or the walk is over: `walked`); `copied`/`purged`: keys
    handled so far."""

    move_id: int
    keys: KeySet
    source: int
    target: int
    state: str = STATE_COPY
    cursor: bytes | None = None
    copied: int = 0
    purged: int = 0
    began_epoch: int = 0
    walked: bool = False  # the copy's walk is over (every key is at the target)
    cancelled: bool = False  # finished by a roll-back (OP_CANCEL), not by OP_END

    def copied_past(self, key: bytes) -> bool:
        """Whether the copy has (as far as this record says) taken `key` to the target."""
        if self.state != STATE_COPY:
            return self.state != STATE_CANCEL
        return self.walked or (self.cursor is not None and key <= self.cursor)

    def to_wire(self) -> list[Any]:
        return [self.move_id, self.keys.to_wire(), self.source, self.target, self.state,
                self.cursor, self.copied, self.purged, self.began_epoch, self.walked,
                self.cancelled]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Move:
        mid, keys, source, target, state, cursor, copied, purged, began, *rest = wire
        walked, cancelled = (list(rest) + [False, False])[:2]
        return cls(int(mid), KeySet.from_wire(keys), int(source), int(target), str(state),
                   cursor, int(copied), int(purged), int(began), bool(walked), bool(cancelled))


class MovesConfig(Protocol):
    """What the ops need of shardstore.cluster.ClusterConfig."""

    epoch: int
    shards: dict[int, Any]
    moves: dict[int, Move]  # under way and the last finished ones
    next_move: int
    moves_done: int

    def slot_table(self, keyspace: str) -> list[int]: ...

    def assign_slots(self, slots: Iterable[int], shard_id: int) -> None: ...


def encode_begin(keys: KeySet, source: int, target: int) -> bytes:
    return msgpack.packb({"op": OP_BEGIN, "keys": keys.to_wire(), "source": source,
                          "target": target})


def encode_step(move_id: int, state: str, cursor: bytes | None, done: int) -> bytes:
    return msgpack.packb({"op": OP_STEP, "id": move_id, "state": state, "cursor": cursor,
                          "done": done})


def encode_end(move_id: int) -> bytes:
    return msgpack.packb({"op": OP_END, "id": move_id})


def encode_finish(move_id: int) -> bytes:
    return msgpack.packb({"op": OP_FINISH, "id": move_id})


def encode_cancel(move_id: int) -> bytes:
    return msgpack.packb({"op": OP_CANCEL, "id": move_id})


def encode_resume(move_id: int) -> bytes:
    return msgpack.packb({"op": OP_RESUME, "id": move_id})


def apply_move(config: MovesConfig, entry: dict[str, Any],
               hooks: MoveHooks | None = None) -> Any:
    """Apply one move op to `config` (see the module header): the op's result, or an
    error string the service replies with."""
    op = entry["op"]
    if op == OP_BEGIN:
        return _begin(config, KeySet.from_wire(entry["keys"]), int(entry["source"]),
                      int(entry["target"]), hooks)
    move = config.moves.get(int(entry["id"]))
    if move is None:
        if op == OP_CANCEL:
            return ERR_NO_MOVE.format(entry["id"])
        return False if op in (OP_END, OP_FINISH, OP_STEP, OP_RESUME) \
            else ERR_UNKNOWN_OP.format(op)
    if op == OP_CANCEL:
        return _cancel(config, move)
    if op == OP_RESUME:
        if move.state != STATE_CANCEL:
            return False
        move.state, move.cursor = STATE_COPY, None
        config.epoch += 1
        return True
    if op == OP_STEP:
        return _step(move, str(entry["state"]), entry["cursor"], int(entry["done"]))
    if op == OP_END:
        return _end(config, move, hooks)
    if op == OP_FINISH:
        if move.state not in (STATE_PURGE, STATE_CANCEL):
            return False
        move.cancelled = move.state == STATE_CANCEL
        move.state, move.cursor = STATE_DONE, None
        config.moves_done += 0 if move.cancelled else 1
        done = sorted(mid for mid, m in config.moves.items() if m.state == STATE_DONE)
        for old in done[:-KEEP_DONE]:
            del config.moves[old]
        return True
    return ERR_UNKNOWN_OP.format(op)


def _begin(config: MovesConfig, keys: KeySet, source: int, target: int,
           hooks: MoveHooks | None) -> Any:
    for shard in (source, target):
        if shard not in config.shards:
            return ERR_NO_SHARD.format(shard)
    if source == target:
        return ERR_SAME_SHARD
    space = config.shards[source].keyspace  # range rows follow their table's map, which
    if keys.kind == KIND_SLOTS and config.shards[target].keyspace != space:  # may cross
        return ERR_KEYSPACES.format(source, target)  # keyspaces (shardstore/table_move.py)
    if keys.kind == KIND_SLOTS:
        refusal = _slots_refusal(config, keys, source)
        if not refusal and hooks is not None:  # a HASH table's move holds the slot maps
            refusal = hooks.begin(keys, source)
    else:
        refusal = hooks.begin(keys, source) if hooks is not None else ERR_NOT_SLOTS
    if refusal:
        return refusal
    config.next_move += 1
    config.epoch += 1
    move = Move(config.next_move, keys, source, target, began_epoch=config.epoch)
    config.moves[move.move_id] = move
    return move.move_id


def _cancel(config: MovesConfig, move: Move) -> Any:
    if move.state == STATE_CANCEL:
        return False  # cancelled before: the roll-back is under way
    if move.state != STATE_COPY:
        return ERR_NOT_CANCELLABLE.format(move.move_id, move.state)
    move.state, move.cursor = STATE_CANCEL, None
    config.epoch += 1
    return True


def _slots_refusal(config: MovesConfig, keys: KeySet, source: int) -> str | None:
    if keys.empty:
        return ERR_EMPTY
    table = config.slot_table(config.shards[source].keyspace)
    for slot in sorted(keys.slots):
        if table[slot] != source:
            return ERR_NOT_OWNER.format(slot, source)
    for other in config.moves.values():
        if other.state == STATE_DONE:
            continue
        if other.keys.kind in (KIND_SLOTS, KIND_TABLE_SLOTS) and other.keys.slots & keys.slots:
            return ERR_MOVING.format(min(other.keys.slots & keys.slots), other.move_id)
    return None


def _step(move: Move, state: str, cursor: bytes | None, done: int) -> bool:
    if state != move.state:
        return False
    move.cursor = cursor
    if state == STATE_COPY:
        move.copied = max(move.copied, done)
        move.walked = move.walked or cursor is None
    else:
        move.purged = max(move.purged, done)
    return True


def _end(config: MovesConfig, move: Move, hooks: MoveHooks | None) -> bool:
    if move.state != STATE_COPY:
        return False
    if move.keys.kind == KIND_SLOTS:
        config.assign_slots(move.keys.slots, move.target)
    elif hooks is not None:
        hooks.end(move)
    move.state, move.cursor = STATE_PURGE, None
    config.epoch += 1
    return True


def ranges_of(slot_shard: list[int]) -> list[tuple[int, int, int]]:
    """The slot table as [(first, last, shard id)] runs in slot order."""
    ranges: list[tuple[int, int, int]] = []
    first = 0
    for slot in range(1, SLOT_COUNT + 1):
        if slot == SLOT_COUNT or slot_shard[slot] != slot_shard[first]:
            ranges.append((first, slot - 1, slot_shard[first]))
            first = slot
    return ranges
