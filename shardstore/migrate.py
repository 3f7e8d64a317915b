"""Online moves of a key set from one shard to another: the coordinator and the node service.

Strategy: a move is a record in the configuration group (shardstore/moves.py); whoever
leads the configuration group is its coordinator and drives every move step by step
(`Mover.run_once`, called by the node's background loop). Each step is an entry in a
Raft log, so each is durable, and each is idempotent, so a coordinator that crashed or
lost its leadership is simply replaced by the next leader, which starts again at the
record's state and cursor:

1. freeze (source's log, KIND_FREEZE): from that entry on the source refuses the key set
   (shardstore/fences.py); nothing written there later can be acknowledged;
2. copy: the keys of the set are read from a source replica that has applied the freeze
   (a read barrier, then the fence is checked) in key order, BATCH_KEYS at a time, and
   written through the target's log (KIND_COPY, naming where the walk of the source's
   keys went on from and where it stopped: the target writes only rows past what it had,
   and takes ASKING commands for the keys the walk has passed: shardstore/asking.py);
   after each batch the configuration records the cursor and the count (OP_STEP), which
   is the progress `admin` shows (a walk with nothing to copy sends no entry and
   records no step until its end, so a resumed walk starts where the target's stopped);
3. lift (target's log, KIND_LIFT): the target closes the move's copy (a late copy is
   refused) and lifts any fence it had on the set (keys coming back);
4. end (configuration, OP_END): the target owns the set, the epoch goes up; clients get
   MOVED to the target from every node that has applied it, and the source's fence
   answers TRYAGAIN to a node that has not yet;
5. purge: the source's copy is deleted through its log (KIND_PURGE, keys read as in 2);
   then OP_FINISH removes the record.

A move cancelled while it copies (moves.OP_CANCEL, state CANCEL) is rolled back instead:
the copy stops at its next batch; the target's copy is aborted (KIND_LIFT with
fences.MODE_ABORT: closed, and its key set fenced there under the move's id); the keys
copied in are read from a target replica and purged as in 5; the source is unfrozen
(KIND_LIFT with MODE_UNFREEZE); OP_FINISH. Every step is idempotent, so a coordinator that
dies mid-cancel is replaced by the next, which starts again at the record's state and
cursor. If the target refuses the abort (it took writes under ASKING), the cancel is
dropped (moves.OP_RESUME) and the move goes on.

Requests between nodes go over the node transport as core/rpc service SERVICE_MOVE:
[OP_ENTRY, entry] appends an entry on the group's leader and returns its apply result;
[OP_READ, move, after, limit, first, end, excluded] reads the next keys of a move on a
replica of its source: within the key set's scan bounds [first, end), leaving out keys
under the `excluded` prefixes (a slot move leaves the rows of range tables, which are
not slot-addressed, where they are: the coordinator names their tables' prefixes).
The coordinator tries the group's leader as it knows it, then every other member.
[OP_ASKING, args] runs a client's write command sent under ASKING (shardstore/asking.py)
on the group's leader, stamped with its clock: [REPLY_OK, apply result], [REPLY_REFUSED,
reason] when nothing was appended (not the leader), [REPLY_UNKNOWN, reason] when the
entry may have been appended but no outcome came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core.raft.driver_types import ProposalUnknown
from core.raft.errors import ProposalDropped, RaftError
from core.raft.host import RaftHost
from core.rpc import RpcError, UnknownGroup
from shardstore.cluster import CONFIG_GROUP, ClusterConfig
from shardstore.fences import ERR_ABORT_REFUSED, MODE_ABORT, MODE_UNFREEZE
from shardstore.keysets import KIND_SLOTS
from shardstore.machine import (
    KIND_COPY,
    KIND_FREEZE,
    KIND_LIFT,
    KIND_PURGE,
    ShardMachine,
    decode_reply,
    encode_command,
    encode_move,
)
from shardstore.moves import (
    STATE_CANCEL,
    STATE_COPY,
    STATE_DONE,
    STATE_PURGE,
    Move,
    encode_end,
    encode_finish,
    encode_resume,
    encode_step,
)

__all__ = ["BATCH_KEYS", "OP_ASKING", "REPLY_OK", "REPLY_REFUSED", "REPLY_UNKNOWN",
           "SERVICE_MOVE", "MoveService", "MoveStalled", "Mover", "Scope", "read_fenced"]

log = logging.getLogger("shardstore.migrate")

SERVICE_MOVE = "shardstore.move"
OP_ENTRY = "entry"
OP_READ = "read"
OP_ASKING = "asking"
REPLY_OK = "ok"
REPLY_REFUSED = "refused"
REPLY_UNKNOWN = "unknown"
BATCH_KEYS = 256  # keys per copy or purge entry
BATCH_BYTES = 1 << 20  # and at most about this many bytes of values
SCAN_KEYS = 2048  # keys a read looks at per request (a slot's keys are spread out)
ERR_NOT_HERE = "this node hosts no replica of group {}"
ERR_NOT_FROZEN = "move {} is not frozen on this replica yet"
ERR_MALFORMED = "malformed move request"
ABORT_REFUSED_MARK = ERR_ABORT_REFUSED.split("{}")[-1]  # in the target's refusal text


class MoveStalled(Exception):
    """No member of a group could take a step now; the coordinator tries again later."""


class MoveNode(Protocol):
    """What the mover needs of shardstore.server.ShardNode."""

    me: int
    host: RaftHost
    machines: dict[int, ShardMachine]

    @property
    def full_config(self) -> ClusterConfig: ...

    def now_ms(self) -> int: ...

    def range_prefixes(self) -> list[bytes]: ...

    async def config_write(self, entry: bytes) -> Any: ...


class MoveService:
    """The core/rpc service SERVICE_MOVE of a node (see the module header)."""

    def __init__(self, host: RaftHost, machine_of: Callable[[int], ShardMachine | None],
                 timeout_s: float, now_ms: Callable[[], int] | None = None) -> None:
        self.host = host
        self.machine_of = machine_of  # group id -> the shard machine hosted here
        self.timeout_s = timeout_s
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        """The service takes requests only."""

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        if self.host.group(group_id) is None:
            raise UnknownGroup(SERVICE_MOVE, group_id)
        return await self.serve(group_id, payload)

    async def serve(self, group_id: int, payload: Any) -> list[Any]:
        """[REPLY_OK, result] or [REPLY_REFUSED, reason] for one request."""
        try:
            if payload[0] == OP_ENTRY and isinstance(payload[1], bytes):
                return await self._entry(group_id, payload[1])
            if payload[0] == OP_ASKING and all(isinstance(a, bytes) for a in payload[1]):
                return await self._asking(group_id, list(payload[1]))
            if payload[0] == OP_READ:
                scope = Scope(payload[4], payload[5], tuple(payload[6]))
                return await self._read(group_id, int(payload[1]), payload[2],
                                        int(payload[3]), scope)
        except (TypeError, IndexError, ValueError):
            pass
        return [REPLY_REFUSED, ERR_MALFORMED]

    async def _entry(self, group_id: int, data: bytes) -> list[Any]:
        group = self.host.group(group_id)
        if group is None:
            return [REPLY_REFUSED, ERR_NOT_HERE.format(group_id)]
        try:
            result = await group.execute(data, forward=False, timeout=self.timeout_s)
        except (ProposalDropped, RaftError, TimeoutError) as exc:
            return [REPLY_REFUSED, repr(exc)]
        return [REPLY_OK, result]

    async def _asking(self, group_id: int, args: list[bytes]) -> list[Any]:
        group = self.host.group(group_id)
        if group is None:
            return [REPLY_REFUSED, ERR_NOT_HERE.format(group_id)]
        entry = encode_command(self.now_ms(), args, asking=True)
        try:
            result = await group.execute(entry, forward=False, timeout=self.timeout_s)
        except ProposalDropped as exc:  # NotLeaderError too: nothing appended
            return [REPLY_REFUSED, str(exc)]
        except (ProposalUnknown, RaftError, TimeoutError) as exc:
            return [REPLY_UNKNOWN, str(exc) or "timed out"]
        return [REPLY_OK, result]

    async def _read(self, group_id: int, move_id: int, after: bytes | None,
                    limit: int, scope: Scope) -> list[Any]:
        group, machine = self.host.group(group_id), self.machine_of(group_id)
        if group is None or machine is None:
            return [REPLY_REFUSED, ERR_NOT_HERE.format(group_id)]
        try:
            await group.read_barrier(timeout=self.timeout_s)
        except (RaftError, TimeoutError) as exc:
            return [REPLY_REFUSED, repr(exc)]
        if not machine.fences.holds(move_id):
            return [REPLY_REFUSED, ERR_NOT_FROZEN.format(move_id)]
        rows, cursor = read_fenced(machine, move_id, after, limit, scope)
        return [REPLY_OK, [list(r) for r in rows], cursor]


@dataclass(frozen=True)
class Scope:
    """Where a move's keys may lie: [first, end) in key order (end None: no bound), and
    the prefixes of keys it leaves out."""

    first: bytes = b""
    end: bytes | None = None
    excluded: tuple[bytes, ...] = ()


def read_fenced(machine: ShardMachine, move_id: int, after: bytes | None, limit: int,
                scope: Scope = Scope(), scan_keys: int = SCAN_KEYS
                ) -> tuple[list[tuple[bytes, bytes, int]], bytes | None]:
    """The records after key `after` (None: from the scope's first key) within `scope`
    that move `move_id`'s fence holds here, up to `limit` of them and BATCH_BYTES of
    values, walking `scan_keys` keys at most (only the records taken are read from
    disk); and the key to go on after (None: the walk is over)."""
    store = machine.store
    if after is None:
        head = [scope.first] if store.get(scope.first) is not None else []
        walked = head + store.keys_after(scope.first, scan_keys - len(head))
    else:
        walked = store.keys_after(after, scan_keys)
    more = len(walked) >= scan_keys  # the walk may go on past this batch
    rows: list[tuple[bytes, bytes, int]] = []
    size = 0
    for i, key in enumerate(walked):
        if scope.end is not None and key >= scope.end:
            return rows, None
        if machine.fences.holds_key(move_id, key) and not key.startswith(scope.excluded):
            found = store.get(key)
            if found is not None:
                rows.append((key, found[0], found[1]))
                size += len(key) + len(found[0])
        if len(rows) >= limit or size >= BATCH_BYTES:
            return rows, key if i + 1 < len(walked) or more else None
    return rows, (walked[-1] if more and walked else None)


class Mover:
    """The coordinator (see the module header): `await run_once()` drives every move in
    the configuration while this node leads the configuration group."""

    def __init__(self, node: MoveNode, service: MoveService, timeout_s: float,
                 batch_keys: int = BATCH_KEYS) -> None:
        self.node = node
        self.service = service
        self.timeout_s = timeout_s
        self.batch_keys = batch_keys
        # Called before a move's hand-over, MoveStalled when it must wait (the checksums
        # of shardstore/table_verify.py); None: no check.
        self.verify: Callable[[Move], Awaitable[None]] | None = None
        # Called first in each round while leading, never raising (the TABLE.MOVE
        # coordinator of shardstore/table_move.py); None: nothing.
        self.before_round: Callable[[], Awaitable[None]] | None = None

    def leading(self) -> bool:
        group = self.node.host.group(CONFIG_GROUP)
        return group is not None and group.node is not None and group.node.lead == self.node.me

    async def run_once(self) -> None:
        """Drive each move under way one step further, to its end if nothing fails."""
        if self.before_round is not None and self.leading():
            await self.before_round()  # moves of whole tables begin what they still need
        for move_id, move in sorted(self.node.full_config.moves.items()):
            if move.state == STATE_DONE:
                continue
            if not self.leading():
                return
            try:
                await self.drive(move_id)
            except MoveStalled as exc:
                log.info("move %d waits: %s", move_id, exc)

    async def drive(self, move_id: int) -> None:
        move = self.node.full_config.moves.get(move_id)
        if move is not None and move.state == STATE_COPY and await self._copy(move):
            if self.verify is not None:
                await self.verify(move)
            await self._config(encode_end(move.move_id))
            log.info("move %d: %s now served by shard %d (%d keys copied)", move.move_id,
                     move.keys.describe(), move.target, move.copied)
        move = self.node.full_config.moves.get(move_id)
        if move is not None and move.state == STATE_PURGE:
            await self._purge(move, move.source)
            await self._config(encode_finish(move.move_id))
            log.info("move %d finished", move.move_id)
        if move is not None and move.state == STATE_CANCEL:
            await self._cancel(move)

    def _state(self, move_id: int) -> str | None:
        move = self.node.full_config.moves.get(move_id)
        return None if move is None else move.state

    async def _cancel(self, move: Move) -> None:
        keys = move.keys.to_wire()
        aborted = await self._entry(move.target, encode_move(
            KIND_LIFT, self.node.now_ms(), move.move_id, keys, MODE_ABORT))
        if isinstance(aborted, Exception) and ABORT_REFUSED_MARK in str(aborted):
            await self._config(encode_resume(move.move_id))
            log.warning("move %d goes on: %s", move.move_id, aborted)
            return
        await self._purge(move, move.target)
        await self._entry(move.source, encode_move(KIND_LIFT, self.node.now_ms(),
                                                   move.move_id, keys, MODE_UNFREEZE))
        await self._config(encode_finish(move.move_id))
        log.info("move %d cancelled: shard %d serves %s again", move.move_id, move.source,
                 move.keys.describe())

    async def _copy(self, move: Move) -> bool:
        """Freeze, copy and lift (steps 1-3); False if the move left state COPY (a
        cancel) before the copy was closed."""
        keys = move.keys.to_wire()
        await self._entry(move.source, encode_move(KIND_FREEZE, self.node.now_ms(),
                                                   move.move_id, keys))
        cursor, done = move.cursor, move.copied
        sent = cursor  # the walk is at the target up to here
        while True:
            rows, cursor = await self._read(move, cursor)
            if rows or cursor is None:
                await self._entry(move.target, encode_move(
                    KIND_COPY, self.node.now_ms(), move.move_id, rows, keys, sent, cursor))
                done += len(rows)
                sent = cursor
                await self._config(encode_step(move.move_id, STATE_COPY, cursor, done))
            if self._state(move.move_id) != STATE_COPY:
                return False
            if cursor is None:
                break
        await self._entry(move.target, encode_move(KIND_LIFT, self.node.now_ms(),
                                                   move.move_id, keys))
        return True

    async def _purge(self, move: Move, shard_id: int) -> None:
        """Delete the keys the move's fence holds in `shard_id` (the source after the
        move ended, the target in a roll-back), recording the walk in the move's state."""
        cursor, done = move.cursor, move.purged
        while True:
            rows, cursor = await self._read(move, cursor, shard_id)
            if rows:
                await self._entry(shard_id, encode_move(
                    KIND_PURGE, self.node.now_ms(), move.move_id, move.keys.to_wire(),
                    [row[0] for row in rows]))
                done += len(rows)
            await self._config(encode_step(move.move_id, move.state, cursor, done))
            if cursor is None:
                return

    # -- one request, to whichever member can take it --------------------------------------

    async def _config(self, entry: bytes) -> None:
        if not self.leading():
            raise MoveStalled("no longer the configuration group's leader")
        try:
            await self.node.config_write(entry)
        except Exception as exc:  # TRYAGAIN, a lost leadership: the next round resumes
            raise MoveStalled(f"configuration write failed: {exc!r}") from exc

    async def _entry(self, shard_id: int, entry: bytes) -> Any:
        result = decode_reply(await self._ask(shard_id, [OP_ENTRY, entry]))
        if isinstance(result, Exception):
            log.warning("shard %d refused a move entry: %s", shard_id, result)
        return result

    async def _read(self, move: Move, after: bytes | None, shard_id: int | None = None
                    ) -> tuple[list[list[Any]], bytes | None]:
        first, end = move.keys.scan_bounds()
        excluded = self.node.range_prefixes() if move.keys.kind == KIND_SLOTS else []
        request = [OP_READ, move.move_id, after, self.batch_keys, first, end, excluded]
        shard = move.source if shard_id is None else shard_id
        reply = await self._ask(shard, request, full=True)
        return reply[1], reply[2]

    async def _ask(self, shard_id: int, payload: list[Any], full: bool = False) -> Any:
        shard = self.node.full_config.shards[shard_id]
        errors = []
        for member in self._candidates(shard_id):
            try:
                if member == self.node.me:
                    reply = await self.service.serve(shard.group, payload)
                else:
                    reply = await self.node.host.transport.request(
                        member, SERVICE_MOVE, shard.group, payload, self.timeout_s)
            except (RpcError, TimeoutError, OSError) as exc:
                errors.append(f"node {member}: {exc!r}")
                continue
            if reply[0] == REPLY_OK:
                return reply if full else reply[1]
            errors.append(f"node {member}: {reply[1]}")
        raise MoveStalled(f"shard {shard_id}: " + "; ".join(errors))

    def _candidates(self, shard_id: int) -> list[int]:
        """The shard's members, its leader as this node knows it first."""
        shard = self.node.full_config.shards[shard_id]
        first = []
        group = self.node.host.group(shard.group)
        if group is not None and group.node is not None and group.node.lead:
            first.append(group.node.lead)
        hint = self.node.full_config.leaders.get(shard_id)
        if hint:
            first.append(hint[0])
        return [m for m in dict.fromkeys([*first, *shard.members]) if m in shard.members]
