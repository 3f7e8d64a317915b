"""Runs of a connection's pipelined commands taken together (core's RespServer.pipeline).

Strategy: core offers the commands it parsed from one on; `Pipelines.take` looks at the
first and takes the run of consecutive commands like it, to the same shard, when the run
saves work; otherwise it takes nothing and core dispatches the command alone:

- writes (keyed, "write" flag): the run goes to the shard's leader as one request and
  one Raft entry (shardstore/writes.py's `write_many`), applied in order; one reply per
  command, in order. An unknown outcome of the entry is every command's: each is
  answered `-UNKNOWN ...`; a fence's refusal becomes ASK or MOVED per command, as alone;
- reads (keyed, slot-addressed) of a shard whose reads need a barrier (a shard of
  several replicas; not on a READONLY connection, where reads are served at once): one
  read barrier covers the run, then each read runs on the local replica. Every read of
  the run arrived before the barrier began, so each is still linearizable;
- reads that need no barrier (a READONLY connection, or shards whose group says
  `reads_ready`: this node is the only voter and leader, with everything committed
  applied): the run of them, over any shards hosted here, is answered at once from the
  local replicas, in one pass, with no task and no await (core writes the replies in
  one write). Each read is exactly what it would be alone: the state is the same.

Routing a keyed command of one key in its first argument (GET, SET, INCR, ...) takes the
key's slot directly, without walking the row's key specs.

A run is at most MAX_BATCH_COMMANDS long and never mixes reads and writes, so a read
after writes in the pipeline runs once they are applied, as it would one by one. A
connection that sent ASKING leaves its next command to the handler, which takes the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from core.command_table import (
    BeginIndex,
    Command,
    CrossSlotError,
    FindRange,
    KeysError,
    request_slot,
)
from core.raft.driver_types import ProposalUnknown
from core.raft.errors import RaftError
from core.raft_service import ERR_OUTCOME_UNKNOWN
from core.resp import CommandError
from core.resp_session import Session
from native.crc16 import key_slot
from shardstore.asking import ASKING_ATTR, Asking
from shardstore.barriers import SharedBarriers
from shardstore.cluster import Shard
from shardstore.cmd_tables import TableCommands
from shardstore.machine import decode_reply
from shardstore.writes import MAX_BATCH_COMMANDS

__all__ = ["ClientView", "Pipelines", "single_key"]

WRITE_FLAG = "write"
MISSING = object()  # not looked up yet


class ClientView(Protocol):
    """What a run needs of the node's client commands (shardstore.handlers)."""

    node: Any  # shardstore.handlers.NodeView
    layer: Any  # shardstore.commands
    tables: TableCommands
    asking: Asking
    barriers: SharedBarriers

    def local_shard(self, slot: int) -> Shard: ...

    def read_local(self, shard: Shard, args: list[bytes], read: Any = None) -> Any: ...

Routed = tuple[Command, Shard, bool, bool]  # row, shard, routed as range rows, a write
Run = tuple[list[Command], Coroutine[Any, Any, list[Any]] | list[Any]]


def single_key(row: Command) -> bool:
    """Whether the row's one key is always its first argument (GET, SET, INCR, HSET...):
    its slot is then that key's, without walking the key specs."""
    if len(row.key_specs) != 1:
        return False
    spec = row.key_specs[0]
    return spec.begin == BeginIndex(1) and spec.find == FindRange(0, 1, 0)


class Pipelines:
    """The pipeline taker of a node's client commands (see the module header)."""

    def __init__(self, commands: ClientView, readonly: Callable[[Session], bool]) -> None:
        self.commands = commands
        self.readonly = readonly  # whether the connection sent READONLY
        self._readers: dict[str, Any] = {}  # command name -> commands.read_runner's
        self._single: dict[str, bool] = {}  # command name -> single_key(row)

    def take(self, session: Session, commands: list[list[bytes]], index: int) -> Run | None:
        """core.resp_server.Pipeline: the run that starts at commands[index], or None."""
        if getattr(session, ASKING_ATTR, False):
            return None
        slots_only = self._slots_only()
        first = self._routed(commands[index], slots_only)
        if first is None:
            return None
        row, shard, ranged, write = first
        if not write:
            if ranged:
                return None  # answered one by one
            stale_ok = self.readonly(session)
            if stale_ok or self.commands.node.service.reads_ready(shard.group):
                return self._ready_reads(commands, index, first, stale_ok, slots_only)
        rows, run = [row], [(commands[index], ranged)]
        end = min(len(commands), index + MAX_BATCH_COMMANDS)
        for args in commands[index + 1:end]:
            routed = self._routed(args, slots_only)
            if (routed is None or routed[1].shard_id != shard.shard_id or routed[3] != write
                    or (not write and routed[2])):
                break
            rows.append(routed[0])
            run.append((args, routed[2]))
        if len(run) < 2:
            return None
        if write:
            return rows, self._write_run(shard, run)
        return rows, self._read_run(shard, rows, [args for args, _ in run])

    def _slots_only(self) -> bool:
        """Whether the slot map alone routes every key now (no range table, no HASH table
        bound to another keyspace): TableCommands.range_shard would answer None for all."""
        tables = self.commands.tables
        catalog = tables.catalog
        return not (catalog.has_ranges
                    or tables.bindings.elsewhere(catalog, self.commands.node.config.keyspace))

    def _routed(self, args: list[bytes], slots_only: bool = False) -> Routed | None:
        """(row, shard, routed as range rows, a write) of a keyed command this node serves
        from one of its shards; None for anything else (dispatch answers it, errors
        included). `slots_only`: _slots_only() said so for this run."""
        client = self.commands
        row = client.node.service.resp.plain_row(args)
        if row is None or not row.key_specs:
            return None
        write = WRITE_FLAG in row.flags
        try:
            ranged = None if slots_only else client.tables.range_shard(row, args)
            if ranged is not None:
                return row, ranged, True, write
            single = self._single.get(row.name)
            if single is None:
                single = self._single[row.name] = single_key(row)
            slot = key_slot(args[1]) if single else request_slot(row, args)
            if slot is None:
                return None
            return row, client.local_shard(slot), False, write
        except (CommandError, CrossSlotError, KeysError):
            return None

    async def _write_run(self, shard: Shard, run: list[tuple[list[bytes], bool]]
                         ) -> list[Any]:
        client = self.commands
        try:
            results = await client.node.writes.write_many(shard.group, run)
        except (ProposalUnknown, TimeoutError) as exc:  # every command's outcome
            unknown = CommandError(ERR_OUTCOME_UNKNOWN.format(exc or "timed out"))
            return [unknown] * len(run)
        except RaftError as exc:
            return [self._unavailable(shard, exc)] * len(run)
        replies = [decode_reply(result) for result in results]
        return [client.asking.redirect(reply, args) if isinstance(reply, CommandError)
                else reply for reply, (args, _) in zip(replies, run, strict=True)]

    def _ready_reads(self, commands: list[list[bytes]], index: int, first: Routed,
                     stale_ok: bool, slots_only: bool) -> Run | None:
        """The run of reads from commands[index] (routed as `first`) that need no barrier,
        answered now from the local replicas; None when the run is one read long."""
        reads_ready = self.commands.node.service.reads_ready
        ready = {first[1].group: True}  # group -> reads_ready, asked once per run
        run = [(commands[index], first[0], first[1])]
        end = min(len(commands), index + MAX_BATCH_COMMANDS)
        for args in commands[index + 1:end]:
            routed = self._routed(args, slots_only)
            if routed is None or routed[2] or routed[3]:
                break
            shard = routed[1]
            if not stale_ok:
                ok = ready.get(shard.group)
                if ok is None:
                    ok = ready[shard.group] = reads_ready(shard.group)
                if not ok:
                    break
            run.append((args, routed[0], shard))
        if len(run) < 2:
            return None
        return [row for _, row, _ in run], self._read_all(run)

    def _read_all(self, run: list[tuple[list[bytes], Command, Shard]]) -> list[Any]:
        """Each read of `run` on the local replica, at one `now` (they are served at one
        instant). A shard with no fence is read through its store directly, taken once per
        run; a fenced or missing one goes through read_local, which refuses as alone."""
        client = self.commands
        now = client.node.now_ms()
        stores: dict[int, Any] = {}  # shard id -> its store, or None: ask read_local
        results: list[Any] = []
        for args, row, shard in run:
            reader = self._reader(row)
            store = stores.get(shard.shard_id, MISSING)
            if store is MISSING:
                machine = client.node.machines.get(shard.shard_id)
                store = stores[shard.shard_id] = (
                    machine.store if machine is not None and not machine.fences else None)
            if store is not None and reader is not None:
                results.append(reader(store, now, args))  # a CommandError as a value
                continue
            try:
                results.append(client.read_local(shard, args, reader))
            except CommandError as error:
                results.append(error)
        return results

    def _unavailable(self, shard: Shard, exc: BaseException) -> CommandError:
        service = self.commands.node.service
        try:
            return service.unavailable(service.handle(shard.group), exc)
        except CommandError as gone:  # the group is not hosted here any more
            return gone

    async def _read_run(self, shard: Shard, rows: list[Command], run: list[list[bytes]]
                        ) -> list[Any]:
        client = self.commands
        try:
            await client.barriers.wait(shard.group)
        except CommandError as error:  # TRYAGAIN: no leader, no quorum
            return [error] * len(run)
        replies: list[Any] = []
        for row, args in zip(rows, run, strict=True):
            try:
                replies.append(client.read_local(shard, args, self._reader(row)))
            except CommandError as error:
                replies.append(error)
        return replies

    def _reader(self, row: Command) -> Any:
        if row.name not in self._readers:
            runner = getattr(self.commands.layer, "read_runner", None)
            self._readers[row.name] = runner(row.name) if runner is not None else None
        return self._readers[row.name]
