"""A shard's replicated state machine: the storage engine under the command layer; sans I/O.

Strategy: a shard's Raft entries are msgpack lists, built by the node that takes the
request and applied identically by every replica:

- [KIND_COMMAND, now_ms, [arg, ...]] or [KIND_COMMAND, now_ms, [arg, ...], ROUTE_RANGED]:
  a write command (the second form: routed as rows of a range table, not by slot);
  `execute_write(kv, now_ms, args, index)` of the command layer computes its effect and
  writes it with the entry's index;
- [KIND_BATCH, now_ms, [[arg, ...], ...], [i, ...]]: several write commands in one entry
  (a connection's pipelined writes to the shard, and the writes of every connection taken
  in one loop pass: shardstore/writes.py), applied in order as if each were its own entry
  at this index; the result is the list of their replies; the optional last item lists
  the positions of the commands routed as rows of a range table;
- [KIND_EXPIRE, now_ms, [key, ...]]: the leader's expiry sweep (`expired_keys`); each key
  that still exists and has expired at `now_ms` is deleted;
- the entries of a move (shardstore/migrate.py), whose items start with the move's id:
  [KIND_FREEZE, now_ms, [move, keyset]] fences the key set (shardstore/fences.py: from
  this entry on, commands on those keys are refused, TRYAGAIN, with no effect);
  [KIND_COPY, now_ms, [move, [[key, value, expire_at], ...], keyset, start, end]] writes
  copied records as they are, those past what earlier batches walked (the walk went on
  after `start` and stopped at `end`: fences.Fences.copy_rows; the older form without
  keyset, start and end writes them all); refused once the move's lift was applied here;
  [KIND_LIFT, now_ms, [move, keyset]] closes the move's copy into this shard and lifts
  fences on the key set (keys moving back in); [KIND_LIFT, now_ms, [move, keyset, mode]]
  is a step of a cancelled move's roll-back (fences.MODE_ABORT, MODE_UNFREEZE);
  [KIND_PURGE, now_ms, [move, keyset, [key, ...]]] deletes those keys the move's fence
  still holds here (the moved-out copy).

A command's keys (`keys_of(args)`, from the command table) are checked against the fences
when it is applied, so every replica refuses the same entries; so is FLUSHALL while a move
is moving keys of the shard (fences.Fences.flush_refusal). A command entry routed
ROUTE_ASKING (sent under Redis Cluster's ASKING to the target of a move) is applied only
if the move's copy into this shard has passed each of its keys (fences.Fences.unimported),
whatever fence an earlier move out of this shard left on them: the copy supersedes it.

The writes of all the entries of one `apply` call gather in a `BatchKV` (later entries read
what earlier ones wrote) and reach the engine as one atomic batch carrying the last index:
one append and one fsync per apply run, not per entry. With `sync_writes=False` (a group
whose Raft log is fsynced before anything is applied) that append is not fsynced: the
log holds every applied entry durably, the node syncs the engine on a timer, and after a
power cut Raft replays what the engine lost (the log is only cut behind a snapshot).

An entry at or below the engine's stored `applied_index` was applied before a restart and
is skipped (the engine is the state machine's durable copy; Raft replays the log tail
from its last snapshot). Snapshots are the engine's `dump()` pieces framed with their
lengths behind a header naming the applied index, streamed: `snapshot` returns a
core StreamedSnapshot that writes them one at a time to the Raft snapshot file, and
`restore` reads them one at a time from a SnapshotReader into a fresh engine, so neither
holds more than a piece. A snapshot not ahead of the engine leaves it alone (a restart).

`now_ms` is stamped by the shard's leader (shardstore/writes.py; the expiry sweep's by
the leader that sweeps). Every replica applies the same stamp, so they agree.

Replies come back from `apply` as msgpack-safe values (a leader's result crosses the
node link to a follower that forwarded the write): `encode_reply` tags the core.resp types
and `decode_reply` turns them back.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import msgpack

from core.raft.snapshot_file import SnapshotReader, SnapshotSink, open_reader
from core.raft.snapshot_hooks import StreamedSnapshot, restores_from_reader
from core.resp import CommandError, RespSet, Simple, Verbatim
from shardstore.fences import (
    ERR_FENCED,
    ERR_FLUSH_MOVING,
    ERR_IMPORTING,
    Fences,
    HiddenKV,
)
from shardstore.keysets import KeySet

__all__ = [
    "KIND_BATCH", "KIND_COMMAND", "KIND_COPY", "KIND_EXPIRE", "KIND_FREEZE", "KIND_LIFT",
    "KIND_PURGE", "ROUTE_RANGED", "BatchKV", "CommandLayer", "MergedKV", "ShardMachine",
    "decode_reply", "encode_batch", "encode_command", "encode_expire", "encode_reply",
    "expired_keys",
    "ROUTE_ASKING",
]

KIND_COMMAND = 0
KIND_EXPIRE = 1
KIND_FREEZE = 2
KIND_COPY = 3
KIND_LIFT = 4
KIND_PURGE = 5
KIND_BATCH = 6
ROUTE_RANGED = 1  # a command entry's route flag: rows of a range table
ROUTE_ASKING = 2  # a command entry's route flag: under ASKING, to a move's target
FLUSH_COMMANDS = (b"FLUSHALL", b"FLUSHDB")  # refused while a move is moving keys here
SNAPSHOT_MAGIC = b"SSHARD1"
_HEADER = struct.Struct(">Q")  # the applied index of the snapshot
_PIECE = struct.Struct(">I")  # the length of each engine piece
ERR_BAD_ENTRY = "ERR bad shard entry: {!r}"
ERR_MERGED_WRITE = "ERR a write must go to one shard"
ERR_CLOSED = "ERR the copy of move {} into this shard is closed"
# Reply tags (msgpack lists [tag, payload]); plain bytes, ints, None stay as they are.
TAG_SIMPLE, TAG_ERROR, TAG_LIST, TAG_SET, TAG_MAP, TAG_VERBATIM, TAG_STR = range(7)


class CommandLayer(Protocol):
    """What the machine needs of shardstore.commands."""

    def execute_write(self, kv: Any, now_ms: int, args: list[bytes],
                      applied_index: int) -> Any: ...


def encode_command(now_ms: int, args: Sequence[bytes], ranged: bool = False,
                   asking: bool = False) -> bytes:
    """A write command's entry; `ranged`: routed as rows of a range table; `asking`: sent
    under ASKING to the target of a move."""
    if ranged:
        return msgpack.packb([KIND_COMMAND, now_ms, list(args), ROUTE_RANGED])
    if asking:
        return msgpack.packb([KIND_COMMAND, now_ms, list(args), ROUTE_ASKING])
    return msgpack.packb([KIND_COMMAND, now_ms, list(args)])


def encode_batch(now_ms: int, commands: Sequence[tuple[Sequence[bytes], bool]]) -> bytes:
    """One entry of several write commands, each (args, ranged), applied in order."""
    ranged = [i for i, (_, is_ranged) in enumerate(commands) if is_ranged]
    items: list[Any] = [KIND_BATCH, now_ms, [list(args) for args, _ in commands]]
    if ranged:
        items.append(ranged)
    return msgpack.packb(items)


def encode_expire(now_ms: int, keys: Sequence[bytes]) -> bytes:
    return msgpack.packb([KIND_EXPIRE, now_ms, list(keys)])


def encode_move(kind: int, now_ms: int, move_id: int, *items: Any) -> bytes:
    """A move's entry (KIND_FREEZE, KIND_COPY, KIND_LIFT, KIND_PURGE: see the header)."""
    return msgpack.packb([kind, now_ms, [move_id, *items]])


def encode_reply(value: Any) -> Any:
    """A reply value as msgpack-safe data (see the module header)."""
    if value is None or type(value) in (bytes, int, bool, float):
        return value
    if isinstance(value, CommandError):
        return [TAG_ERROR, value.message]
    if isinstance(value, Simple):
        return [TAG_SIMPLE, str(value)]
    if isinstance(value, Verbatim):
        return [TAG_VERBATIM, str(value)]
    if isinstance(value, str):
        return [TAG_STR, value]
    if isinstance(value, RespSet):
        return [TAG_SET, [encode_reply(v) for v in value]]
    if isinstance(value, dict):
        return [TAG_MAP, [[encode_reply(k), encode_reply(v)] for k, v in value.items()]]
    if isinstance(value, list | tuple):
        return [TAG_LIST, [encode_reply(v) for v in value]]
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"cannot carry a {type(value).__name__} reply")


_DECODERS: dict[int, Callable[[Any], Any]] = {
    TAG_SIMPLE: Simple,
    TAG_ERROR: CommandError,
    TAG_VERBATIM: Verbatim,
    TAG_STR: str,
    TAG_LIST: lambda items: [decode_reply(v) for v in items],
    TAG_SET: lambda items: RespSet(decode_reply(v) for v in items),
    TAG_MAP: lambda pairs: {decode_reply(k): decode_reply(v) for k, v in pairs},
}


def decode_reply(data: Any) -> Any:
    """The reply value `encode_reply` made `data` of (msgpack may turn tuples to lists)."""
    if isinstance(data, list | tuple):
        return _DECODERS[data[0]](data[1])
    return data


def expired_keys(kv: Any, now_ms: int, cursor: bytes, limit: int
                 ) -> tuple[list[bytes], bytes]:
    """Up to `limit` keys after `cursor` looked at: those expired at `now_ms`, and the
    cursor to go on from (b"" once the walk wrapped around)."""
    keys = kv.keys_after(cursor, limit)
    expired = []
    for key in keys:
        found = kv.get(key)
        if found is not None and 0 < found[1] <= now_ms:
            expired.append(key)
    return expired, (keys[-1] if len(keys) == limit else b"")


class ShardMachine:
    """apply/snapshot/restore of one shard over `engine` (a KV with applied_index, dump
    and the Engine's load: see the module header); `load(pieces, index)` replaces the
    engine's contents and returns the engine to use from then on."""

    def __init__(self, engine: Any, commands: CommandLayer,
                 load: Callable[[Iterator[bytes], int], Any],
                 keys_of: Callable[[list[bytes]], list[bytes]] | None = None,
                 sync_writes: bool = True) -> None:
        self.engine = engine
        self.sync_writes = sync_writes  # False: the Raft log is the durable copy (header)
        self.commands = commands
        self._load = load
        self.keys_of = keys_of
        self.fences = Fences.load(engine)

    @property
    def store(self) -> HiddenKV:
        """The engine as client commands see it (the reserved keys hidden)."""
        return HiddenKV(self.engine)

    def refusing(self, keys: Sequence[bytes], ranged: bool = False) -> CommandError | None:
        """The TRYAGAIN error for a request on `keys` if a fence holds one of them
        (`ranged`: see Fences.refusing)."""
        move = self.fences.refusing(keys, ranged)
        return None if move is None else CommandError(ERR_FENCED.format(move))

    def refuse_unimported(self, args: list[bytes], kv: Any = None) -> CommandError | None:
        """For a command under ASKING: TRYAGAIN unless the copy of each of its keys into
        this shard is done (fences.Fences.unimported); with `kv` (a write being applied)
        the write is counted in the fences record (a roll-back must not purge it)."""
        keys = self.keys_of(args) if self.keys_of else []
        move = self.fences.unimported(keys)
        if move is not None:
            return CommandError(ERR_IMPORTING.format(move))
        if kv is not None:
            self.fences.count_asking(keys)
            kv.write([self.fences.record()])
        return None

    def refuse_flush(self, kv: Any) -> CommandError | None:
        """For FLUSHALL: TRYAGAIN while a move is moving keys of this shard
        (fences.Fences.flush_refusal)."""
        move = self.fences.flush_refusal(HiddenKV(kv))
        return None if move is None else CommandError(ERR_FLUSH_MOVING.format(move))

    def refuse_request(self, args: list[bytes], ranged: bool = False,
                       is_range_row: Callable[[bytes], bool] | None = None
                       ) -> CommandError | None:
        """`refusing` for the keys of the request `args` (none without `keys_of`);
        `is_range_row` (a read's node-local judgement) decides `ranged` when given."""
        if self.keys_of is None or not self.fences:
            return None
        keys = self.keys_of(args)
        if is_range_row is not None:
            ranged = any(is_range_row(k) for k in keys)
        return self.refusing(keys, ranged)

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """One result per entry; the run's writes reach the engine as one batch (one
        append, one fsync) before the results go back."""
        kv = BatchKV(self.engine, self.sync_writes)
        results = [self._apply_one(kv, index, data) for index, data in entries]
        kv.flush()
        return results

    def _apply_one(self, kv: BatchKV, index: int, data: bytes) -> Any:
        if index <= self.engine.applied_index:
            return None  # applied before a restart
        try:
            kind, now_ms, items, *route = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            kv.write([], applied_index=index)
            return encode_reply(CommandError(ERR_BAD_ENTRY.format(exc)))
        if kind == KIND_EXPIRE:
            return encode_reply(self._expire(kv, index, now_ms, items))
        if kind in _MOVE_KINDS:
            return self._move_entry(kv, index, kind, items)
        if kind == KIND_BATCH:
            ranged = set(route[0]) if route else set()
            return [self._command(kv, index, now_ms, args, i in ranged)
                    for i, args in enumerate(items)]
        return self._command(kv, index, now_ms, items, route == [ROUTE_RANGED],
                             route == [ROUTE_ASKING])

    def _command(self, kv: BatchKV, index: int, now_ms: int, args: list[bytes],
                 ranged: bool, asking: bool = False) -> Any:
        if asking:  # the copy into here decides, not a fence left by a move out of here
            reply = self.refuse_unimported(list(args), kv)
        else:
            reply = self.refuse_request(list(args), ranged=ranged)
        if reply is None and args and bytes(args[0]).upper() in FLUSH_COMMANDS:
            reply = self.refuse_flush(kv)
        try:
            if reply is None:
                reply = self.commands.execute_write(HiddenKV(kv), now_ms, list(args), index)
        except CommandError as err:
            reply = err
        kv.write([], applied_index=index)  # no-op if the command wrote with the index
        return encode_reply(reply)

    @staticmethod
    def _expire(kv: BatchKV, index: int, now_ms: int, keys: list[bytes]) -> int:
        batch: list[tuple[bytes, bytes | None, int]] = []
        for key in keys:
            found = kv.get(key)
            if found is not None and 0 < found[1] <= now_ms:
                batch.append((key, None, 0))
        kv.write(batch, applied_index=index)
        return len(batch)

    def _move_entry(self, kv: BatchKV, index: int, kind: int, items: list[Any]) -> Any:
        """Apply a move's entry (see the module header); its count of keys written, or
        1/0 whether a fence changed."""
        try:
            move_id, *rest = items
            move_id = int(move_id)
            if kind == KIND_COPY:
                return self._copy(kv, index, move_id, rest)
            keys = KeySet.from_wire(rest[0])
            if kind == KIND_PURGE:
                gone = [(bytes(k), None, 0) for k in rest[1]
                        if self.fences.holds_key(move_id, bytes(k))]
                HiddenKV(kv).write(gone, applied_index=index)
                return len(gone)
            changed = (self.fences.add(move_id, keys) if kind == KIND_FREEZE
                       else self.fences.lift(move_id, keys, *rest[1:2]))
        except (ValueError, TypeError, IndexError) as exc:
            kv.write([], applied_index=index)
            return encode_reply(CommandError(ERR_BAD_ENTRY.format(exc)))
        kv.write([self.fences.record()] if changed else [], applied_index=index)
        return int(changed)

    def _copy(self, kv: BatchKV, index: int, move_id: int, rest: list[Any]) -> Any:
        """KIND_COPY (see the module header): the count of rows written."""
        if move_id in self.fences.closed:
            kv.write([], applied_index=index)
            return encode_reply(CommandError(ERR_CLOSED.format(move_id)))
        rows = [(bytes(k), bytes(v), int(e)) for k, v, e in rest[0]]
        tracked = len(rest) >= 4  # the form with keyset, start and end
        if tracked:
            rows = self.fences.copy_rows(move_id, KeySet.from_wire(rest[1]), rows,
                                         rest[2], rest[3])
        HiddenKV(kv).write(rows, applied_index=index)
        kv.write([self.fences.record()] if tracked else [], applied_index=index)
        return len(rows)

    def snapshot(self) -> StreamedSnapshot:
        """The engine's consistent dump, written piece by piece off the event loop
        (calling the result gives it as bytes instead)."""
        if not self.sync_writes:  # the log is cut behind a snapshot: the engine first
            self.engine.sync()
        index = self.engine.applied_index
        pieces = self.engine.dump()

        def write(out: SnapshotSink) -> None:
            out.write(SNAPSHOT_MAGIC + _HEADER.pack(index))
            for piece in pieces:
                out.write(_PIECE.pack(len(piece)))
                out.write(piece)

        return StreamedSnapshot(write, getattr(pieces, "close", _nothing))

    @restores_from_reader
    def restore(self, snapshot: bytes | SnapshotReader) -> None:
        """Load a snapshot ahead of the engine into a fresh one, piece by piece from
        `snapshot` (a reader, or bytes); one not ahead is left alone (a restart)."""
        reader = open_reader(snapshot) if isinstance(snapshot, bytes) else snapshot
        if reader.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
            raise ValueError("not a shard snapshot")
        (index,) = _HEADER.unpack(reader.read_exact(_HEADER.size))
        if index <= self.engine.applied_index:
            return  # the engine is at or ahead of it already (a restart)
        self.engine = self._load(_pieces(reader), index)
        self.fences = Fences.load(self.engine)


def _pieces(reader: SnapshotReader) -> Iterator[bytes]:
    """The engine pieces of a shard snapshot, one at a time."""
    while reader.remaining:
        (length,) = _PIECE.unpack(reader.read_exact(_PIECE.size))
        yield reader.read_exact(length)


def _nothing() -> None:
    return None


_MOVE_KINDS = (KIND_FREEZE, KIND_COPY, KIND_LIFT, KIND_PURGE)


class MergedKV:
    """Several shards' stores read as one (DBSIZE, SCAN, KEYS of a node: the shards it
    leads): a key lives in one shard, keys come in key order across them; no writes."""

    def __init__(self, kvs: Sequence[Any]) -> None:
        self.kvs = list(kvs)

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        for kv in self.kvs:
            found = kv.get(key)
            if found is not None:
                return found
        return None

    def write(self, batch: Any, applied_index: int | None = None) -> None:
        raise CommandError(ERR_MERGED_WRITE)

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        rows = heapq.merge(*(kv.scan(start, end, limit) for kv in self.kvs),
                           key=lambda row: row[0])
        return list(itertools.islice(rows, limit))

    def count(self) -> int:
        return sum(kv.count() for kv in self.kvs)

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        keys = heapq.merge(*(kv.keys_after(cursor, limit) for kv in self.kvs))
        return list(itertools.islice(keys, limit))


class BatchKV:
    """The engine as the commands of one apply run see it: their writes gather here
    (reads see them) and `flush` hands them to the engine as one batch carrying the last
    index. A scan or count flushes first, so it reads the engine itself."""

    def __init__(self, engine: Any, sync: bool = True) -> None:
        self.engine = engine
        self.sync = sync  # False: the engine's append is not fsynced (ShardMachine)
        self.pending: dict[bytes, tuple[bytes | None, int]] = {}
        self.index: int | None = None

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        if key in self.pending:
            value, expire = self.pending[key]
            return None if value is None else (value, expire)
        return self.engine.get(key)

    def write(self, batch: Sequence[tuple[bytes, bytes | None, int]],
              applied_index: int | None = None) -> None:
        for key, value, expire in batch:
            self.pending[key] = (value, expire)
        if applied_index is not None:
            self.index = applied_index

    def flush(self) -> None:
        """Write what gathered (and the index) to the engine; nothing if nothing did."""
        if not self.pending and self.index is None:
            return
        batch = [(key, value, expire) for key, (value, expire) in self.pending.items()]
        if self.sync:
            self.engine.write(batch, applied_index=self.index)
        else:
            self.engine.write(batch, applied_index=self.index, sync=False)
        self.pending, self.index = {}, None

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        self.flush()
        return self.engine.scan(start, end, limit)

    def count(self) -> int:
        self.flush()
        return int(self.engine.count())

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        self.flush()
        return self.engine.keys_after(cursor, limit)
