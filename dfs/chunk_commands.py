"""The master's chunk commands (FS.ALLOCATE/RENEW/RENEWLEASE/COMPLETE/LOCATE/HEARTBEAT/
BADREPLICA/REPORT/DECOMMISSION) and the leader's chunk upkeep loop.

Strategy: changes to which chunks make a file go through the Raft log (dfs/chunks.py's
entries, via the service's `write`); where replicas are, leases and safe mode live only in
the leader's memory (dfs/chunk_placement.py). So every command that needs them is answered
by the leader alone: another master answers TRYAGAIN with the leader's client address
(the service's leader hint), which the clients' failover follows. When a master becomes
leader (a new term) its live view starts empty, in safe mode, and fills from heartbeats.

The upkeep loop, every `check_every_s` on the leader: servers silent for too long are
declared dead, under-replicated chunks get copies (handed out in heartbeat replies), and
every `gc_every_s` files left by writers that died are deleted (Placement.abandoned) and
the chunk lists of files gone from the namespace are dropped by a `chunk.forget` entry
(their chunks become orphans the servers are told to delete). A writer is alive while it
allocates, renews a chunk's lease, or renews its client's write lease (FS.RENEWLEASE, one
call per client listing the files it has open, as an HDFS client renews its lease): only a
writer that vanished stops calling and has its file reaped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack

from core.resp import OK, CommandError
from core.resp_server import Command
from dfs import chunks as ct
from dfs import namespace as ns
from dfs.chunk_placement import Placement
from dfs.chunks import ChunkTable
from dfs.namespace import PathError
from dfs.perms import R, W

__all__ = ["ChunkCommands", "ERR_BAD_REPORT", "ERR_NOT_LEADER", "ERR_STALE_LEASE"]

log = logging.getLogger("dfs.chunks")

WRITE = frozenset({"write"})
READ = frozenset({"readonly"})
DEFAULT_CHECK_EVERY_S = 0.5
DEFAULT_GC_EVERY_S = 5.0
ERR_NOT_LEADER = "not the leader (chunk locations live on the leader)"
ERR_BAD_REPORT = "ERR bad heartbeat report: {}"
ERR_STALE_LEASE = "ERR chunk {} version {} is not current (a newer lease exists)"
ERR_INTEGER = "ERR value is not an integer or out of range"
ERR_CANCEL_WORD = "ERR syntax error: FS.DECOMMISSION node [CANCEL]"
ERR_NODE = "ERR a chunk server's id or address: 1 to {} characters"
MAX_NODE_CHARS = 256
ERR_LOCATE_SYNTAX = "ERR syntax error: FS.LOCATE path [VERSION n]"
ERR_NO_VERSION = "ERR no version {} of this file (see FS.VERSIONS)"

PathArg = Callable[[bytes], str]


def int_arg(raw: bytes) -> int:
    """A non-negative integer argument (CommandError otherwise)."""
    try:
        value = int(raw)
    except ValueError:
        raise CommandError(ERR_INTEGER) from None
    if value < 0:
        raise CommandError(ERR_INTEGER)
    return value


class ChunkCommands:
    """The chunk commands of one master. `service` is its RaftService, `table` the chunk
    table its state machine holds, `path_arg` the master's path check, `clock` its clock,
    `placement` keyword arguments of `Placement` (replication, dead_after_s, ...)."""

    def __init__(self, service: Any, table: ChunkTable, path_arg: PathArg, clock: Any, *,
                 placement: dict[str, Any] | None = None,
                 check_every_s: float = DEFAULT_CHECK_EVERY_S,
                 gc_every_s: float = DEFAULT_GC_EVERY_S) -> None:
        self.service = service  # (may be set after construction: the service needs commands)
        # access(session, path, want): raise CommandError unless the session's user may do
        # `want` (dfs.perms.R or W) to the file; set by the master (dfs/meta_commands.py).
        self.access: Callable[[Any, str, int], None] = lambda session, path, want: None
        # superuser(session, what): raise CommandError unless a superuser calls (set by the
        # master, dfs/meta_commands.py).
        self.superuser: Callable[[Any, str], None] = lambda session, what: None
        self.table = table
        self.path_arg = path_arg
        self.clock = clock
        self.placement = Placement(table, random.Random(), **(placement or {}))
        self.check_every_s = check_every_s
        self.gc_every_s = gc_every_s
        self._term = -1
        self._task: asyncio.Task[None] | None = None

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the upkeep loop."""
        self._task = asyncio.create_task(self._upkeep())

    async def stop(self) -> None:
        """Stop the upkeep loop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _leading(self) -> bool:
        """True on the leader; a new term resets the live view (see the module header)."""
        status = self.service.driver.status()
        if status.get("role") != "leader":
            self._term = -1
            return False
        if status.get("term") != self._term:
            self._term = status.get("term")
            self.placement.reset()
            log.info("leader in term %s: safe mode until the chunk servers report",
                     self._term)
        return True

    def _leader_only(self) -> None:
        if not self._leading():
            raise self.service.unavailable(self.service.handle(), RuntimeError(ERR_NOT_LEADER))

    async def _upkeep(self) -> None:
        last_gc = time.monotonic()
        while True:
            await asyncio.sleep(self.check_every_s)
            if not self._leading():
                self.table.changed.clear()  # (see ChunkTable.changed)
                continue
            now = time.monotonic()
            for sid in self.placement.expire(now):
                log.warning("chunk server %s is dead: its replicas no longer count", sid)
            if not self.placement.safe:
                handed = self.placement.plan(now)
                if handed:
                    log.info("re-replication: %d chunk copies handed out", handed)
            if now - last_gc >= self.gc_every_s:
                last_gc = now
                await self._delete_abandoned(now)
                await self._forget_dead()

    async def _delete_abandoned(self, now: float) -> None:
        for path in self.placement.abandoned(ct.writing_files(self.table), now):
            try:
                await self.service.write(ns.encode_delete(self.clock.wall_ms(), path, False, 0))
                log.warning("%s: its writer is gone (no call for %g s): deleted", path,
                            self.placement.abandon_after_s)
            except CommandError as exc:
                log.debug("abandoned write %s not deleted: %s", path, exc)

    async def _forget_dead(self) -> None:
        dead = ct.dead_inodes(self.table)
        if not dead:
            return
        try:
            dropped = await self.service.write(ct.encode_forget(self.clock.wall_ms(), dead))
            log.info("chunks of %d deleted file(s) dropped: %d chunk(s)", len(dead), dropped)
        except CommandError as exc:
            log.debug("chunk gc not committed: %s", exc)

    # -- commands ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [
            Command("FS.ALLOCATE", self.cmd_allocate, -3, WRITE,
                    summary="FS.ALLOCATE path index [avoid-server ...]: a chunk for the "
                            "file's chunk number `index` (again: a new version): [chunk, "
                            "version, lease_ms, [servers, primary first]]"),
            Command("FS.RENEW", self.cmd_renew, 3, WRITE,
                    summary="FS.RENEW chunk version: extend the writer's lease; lease_ms"),
            Command("FS.RENEWLEASE", self.cmd_renew_lease, -2, WRITE,
                    summary="FS.RENEWLEASE path [path ...]: a client's write lease: the "
                            "writer of each file still being written is alive; [files "
                            "renewed, the masters' abandoned-write time in ms]"),
            Command("FS.COMPLETE", self.cmd_complete, -2, WRITE,
                    summary="FS.COMPLETE path [size ...]: close the file, every chunk's "
                            "size in order; the file's size"),
            Command("FS.LOCATE", self.cmd_locate, -2, READ, max_arity=4,
                    summary="FS.LOCATE path [VERSION n]: [size, complete, [[chunk, "
                            "version, size, [servers]], ...]] of the file or of its version "
                            "n (FS.VERSIONS' numbers)"),
            Command("FS.HEARTBEAT", self.cmd_heartbeat, 2, WRITE,
                    summary="FS.HEARTBEAT report: a chunk server's msgpack report; the "
                            "msgpack reply (chunks to delete and to copy)"),
            Command("FS.BADREPLICA", self.cmd_bad_replica, 3, WRITE,
                    summary="FS.BADREPLICA chunk server: a client read damage there"),
            Command("FS.REPORT", self.cmd_report, 1, READ,
                    summary="FS.REPORT: safe mode, chunk servers, under-replicated chunks, "
                            "decommissioning servers"),
            Command("FS.DECOMMISSION", self.cmd_decommission, -2, WRITE, max_arity=3,
                    summary="FS.DECOMMISSION node [CANCEL]: drain a chunk server (its id or "
                            "address): no new chunks on it, its replicas copied elsewhere; "
                            "FS.REPORT's decommissioning rows show when it may be stopped "
                            "(superusers only)"),
        ]

    async def cmd_allocate(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        if self.placement.safe:
            raise CommandError(self.placement.safe_mode_text())
        path, index = self.path_arg(args[1]), int_arg(args[2])
        self.access(session, path, W)
        chunk, version = await self.service.write(
            ct.encode_alloc(self.clock.wall_ms(), path, index))
        self.placement.touch(self.table.chunks[chunk].inode, time.monotonic())
        try:
            avoid = [a.decode("utf-8", "replace") for a in args[3:]]
            servers = self.placement.grant(time.monotonic(), chunk, avoid)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return [chunk, version, self.placement.lease_ms, servers]

    async def cmd_renew(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        chunk, version = int_arg(args[1]), int_arg(args[2])
        meta = self.table.chunks.get(chunk)
        if meta is None or meta.version != version or not self.placement.renew(
                time.monotonic(), chunk):
            raise CommandError(ERR_STALE_LEASE.format(chunk, version))
        self.placement.touch(meta.inode, time.monotonic())
        return self.placement.lease_ms

    async def cmd_renew_lease(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        now, renewed = time.monotonic(), 0
        for raw in args[1:]:
            path = self.path_arg(raw)
            try:
                self.access(session, path, W)
                node, entry = self.table.file_of(path)
            except (PathError, CommandError):
                continue  # gone (reaped, renamed) or not the caller's: nothing to renew
            if not entry.complete:
                self.placement.touch(node.inode, now)
                renewed += 1
        return [renewed, int(self.placement.abandon_after_s * 1000)]

    async def cmd_complete(self, session: Any, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        sizes = [int_arg(a) for a in args[2:]]
        self.access(session, path, W)
        size = await self.service.write(ct.encode_complete(self.clock.wall_ms(), path, sizes))
        try:
            _, entry = self.table.file_of(path)
            self.placement.release(entry.chunks)
        except PathError:
            pass
        return size

    async def cmd_locate(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        path = self.path_arg(args[1])
        await self.service.barrier()
        self.access(session, path, R)
        try:
            node, entry = self.table.file_of(path)
        except PathError as exc:
            raise CommandError(str(exc)) from None
        inode = node.inode
        if len(args) > 2:
            inode = self._version_inode(node, args[2:])
            entry = self.table.files.get(inode) or ct.FileChunks()
        rows = []
        for chunk in entry.chunks:
            meta = self.table.chunks[chunk]
            where = self.placement.locate(chunk)
            if not where and self.placement.safe:
                raise CommandError(self.placement.safe_mode_text())
            rows.append([chunk, meta.version, meta.size, where])
        return [self.table.file_size(inode), int(entry.complete), rows]

    def _version_inode(self, node: Any, words: list[bytes]) -> int:
        """The inode of the file's version named by `VERSION n` (the current one too)."""
        if len(words) != 2 or words[0].upper() != b"VERSION":
            raise CommandError(ERR_LOCATE_SYNTAX)
        number = int_arg(words[1])
        found = [v.inode for v in [node, *node.versions] if v.version == number]
        if not found:
            raise CommandError(ERR_NO_VERSION.format(number))
        return int(found[0])

    async def cmd_heartbeat(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        try:
            report = msgpack.unpackb(args[1])
            reply = self.placement.heartbeat(time.monotonic(), report)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise CommandError(ERR_BAD_REPORT.format(exc)) from None
        return msgpack.packb(reply)

    async def cmd_bad_replica(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        chunk, address = int_arg(args[1]), args[2].decode("utf-8", "replace")
        if self.placement.bad_replica(chunk, address):
            log.warning("chunk %d: the replica on %s is damaged; re-replicating", chunk,
                        address)
        return OK

    async def cmd_report(self, session: Any, args: list[bytes]) -> Any:
        self._leader_only()
        now = time.monotonic()
        placement = self.placement
        return {"safe_mode": int(placement.safe), "replication": placement.replication,
                "chunks": len(self.table.chunks),
                "under_replicated": [[c, n] for c, n in placement.under_replicated()],
                "servers": [s.row(now) for s in sorted(placement.servers.values(),
                                                       key=lambda s: s.address)],
                "decommissioning": placement.drains()}

    async def cmd_decommission(self, session: Any, args: list[bytes]) -> Any:
        node = args[1].decode("utf-8", "replace")
        cancel = len(args) == 3
        if cancel and args[2].upper() != b"CANCEL":
            raise CommandError(ERR_CANCEL_WORD)
        if not node or len(node) > MAX_NODE_CHARS:
            raise CommandError(ERR_NODE.format(MAX_NODE_CHARS))
        self.superuser(session, "decommission chunk servers")
        return await self.service.write(
            ct.encode_decommission(self.clock.wall_ms(), node, not cancel))

