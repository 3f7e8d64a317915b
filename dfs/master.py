"""The `dfs master` daemon: the namespace (dfs/namespace.py) on the RESP-on-Raft service.

Strategy: exactly the scheduler's shape. Every master answers every command; the FS.*
writes become namespace entries the service forwards to the leader from any master, and
reads wait for the service's read barrier, then read the local tree. The service answers
TRYAGAIN while there is no leader or quorum, the CLUSTER.* commands, and keeps the address
book. Arguments are checked here before anything enters the log; the namespace checks
them again when it applies (its replies are the same on every master).

Times: the master that takes a write stamps its clock into the entry (the namespace keeps
its time monotonic across entries). The trash purger runs on every master but acts only on
the leader: every `purge_every_s` it proposes a PURGE entry stamped with its clock when
some trash item has expired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from core.clock import Clock
from core.raft.driver import RaftDriver
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_commands import ERR_SYNTAX
from core.resp_server import Command, Limits
from dfs import namespace as ns
from dfs.chunk_commands import ChunkCommands
from dfs.chunks import ChunkTable, MasterMachine
from dfs.meta_commands import MetaCommands
from dfs.namespace import Namespace, PathError
from dfs.perms import Caller

__all__ = ["DEFAULT_PURGE_EVERY_S", "DEFAULT_TRASH_KEEP_MS", "ERR_UTF8", "Master", "VERSION"]

log = logging.getLogger("dfs.master")

VERSION = "0.1.0"
WRITE = frozenset({"write"})
READ = frozenset({"readonly"})
DEFAULT_TRASH_KEEP_MS = 24 * 3600 * 1000  # a deleted path stays in the trash a day
DEFAULT_PURGE_EVERY_S = 1.0
ERR_UTF8 = "ERR a path must be UTF-8"

DriverFactory = Callable[..., RaftDriver]


def path_arg(raw: bytes) -> str:
    """A path argument, checked (CommandError with the namespace's error text)."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(ERR_UTF8) from None
    try:
        ns.check_path(path)
    except PathError as exc:
        raise CommandError(str(exc)) from None
    return path


def flag_arg(args: list[bytes], at: int, word: bytes) -> bool:
    """True when the optional word at `at` is `word` (any case), False when absent."""
    if len(args) <= at:
        return False
    if args[at].upper() != word:
        raise CommandError(ERR_SYNTAX)
    return True


class Master:
    """One master: the namespace, its commands, the service and the trash purger.
    `start(host, port)`, use, `stop()`."""

    def __init__(self, driver_factory: DriverFactory, clock: Clock, *,
                 password: str | None = None, max_clients: int = 10_000,
                 trash_keep_ms: int = DEFAULT_TRASH_KEEP_MS,
                 purge_every_s: float = DEFAULT_PURGE_EVERY_S,
                 timeout_s: float = 10.0, placement: dict[str, Any] | None = None,
                 superuser_password: str | None = None) -> None:
        self.namespace = Namespace()
        self.clock = clock
        self.trash_keep_ms = trash_keep_ms
        self.purge_every_s = purge_every_s
        # The chunk table beside the namespace, and its commands (dfs/chunk_commands.py).
        self.chunk_table = ChunkTable(self.namespace)
        self.chunks = ChunkCommands(None, self.chunk_table, path_arg, clock, placement=placement)
        # Users, permissions, quotas, versions (dfs/meta_commands.py): who calls, and checks.
        self.meta = MetaCommands(self.namespace, clock, path_arg,
                                 superuser_password=superuser_password)
        self.service = RaftService("dfs-master", VERSION,
                                   MasterMachine(self.namespace, self.chunk_table),
                                   driver_factory, [*self.commands(), *self.chunks.commands(),
                                                    *self.meta.commands()],
                                   password=password, users=self.meta,
                                   limits=Limits(max_clients=max_clients),
                                   timeout_s=timeout_s)
        self.chunks.service = self.service
        self.meta.service = self.service
        self.chunks.access = self.meta.check_access
        self.chunks.superuser = self.meta._need_superuser
        self.driver = self.service.driver
        self._purger: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The RESP port it listens on."""
        return int(self.service.resp.port)

    async def start(self, host: str, port: int) -> None:
        """Start the service (Raft and RESP), then the purger."""
        await self.service.start(host, port)
        self._purger = asyncio.create_task(self._purge_loop())
        self.chunks.start()

    async def stop(self) -> None:
        """Stop the purger, then the service (handing leadership over)."""
        await self.chunks.stop()
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
        await self.service.stop()

    def is_leader(self) -> bool:
        """True while this master's Raft node is the leader."""
        return self.driver.status().get("role") == "leader"

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.purge_every_s)
            now = self.clock.wall_ms()
            if not self.is_leader() or not self.namespace.expired(now):
                continue
            try:
                purged = await self.service.write(ns.encode_purge(now))
                log.info("trash: %d expired item(s) purged", purged)
            except CommandError as exc:
                log.debug("trash purge not committed: %s", exc)

    # -- commands ---------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [
            Command("FS.MKDIR", self.cmd_mkdir, -2, WRITE, max_arity=3,
                    summary="FS.MKDIR path [PARENTS]: a directory (PARENTS: also the missing "
                            "ones above it, and an existing directory is fine)"),
            Command("FS.CREATE", self.cmd_create, -2, WRITE, max_arity=3,
                    summary="FS.CREATE path [OVERWRITE]: an empty file; refused if the path "
                            "exists, unless OVERWRITE (the replaced file is kept as a version)"),
            Command("FS.RENAME", self.cmd_rename, -3, WRITE, max_arity=4,
                    summary="FS.RENAME src dst [REPLACE]: atomic; REPLACE lets a file "
                            "replace a file, a directory an empty directory"),
            Command("FS.DELETE", self.cmd_delete, -2, WRITE, max_arity=3,
                    summary="FS.DELETE path [RECURSIVE]: moves it to the trash; the trash "
                            "item's id"),
            Command("FS.LS", self.cmd_ls, 2, READ,
                    summary="FS.LS path: the names in a directory (directories end in /)"),
            Command("FS.STAT", self.cmd_stat, 2, READ,
                    summary="FS.STAT path: type, inode, size, times, chunks or children"),
            Command("FS.TRASH", self.cmd_trash, 1, READ,
                    summary="FS.TRASH: [id, path, type, deleted_ms, expires_ms] per item"),
        ]

    async def _write(self, session: Any, entry: bytes) -> Any:
        return await self.meta.write(session, entry)  # applied as the session's user

    async def cmd_mkdir(self, session: Any, args: list[bytes]) -> Any:
        path, parents = path_arg(args[1]), flag_arg(args, 2, b"PARENTS")
        await self._write(session, ns.encode_mkdir(self.clock.wall_ms(), path, parents))
        return OK

    async def cmd_create(self, session: Any, args: list[bytes]) -> Any:
        path, overwrite = path_arg(args[1]), flag_arg(args, 2, b"OVERWRITE")
        await self._write(session, ns.encode_create(self.clock.wall_ms(), path, overwrite))
        return OK

    async def cmd_rename(self, session: Any, args: list[bytes]) -> Any:
        src, dst = path_arg(args[1]), path_arg(args[2])
        replace = flag_arg(args, 3, b"REPLACE")
        await self._write(session, ns.encode_rename(self.clock.wall_ms(), src, dst, replace))
        return OK

    async def cmd_delete(self, session: Any, args: list[bytes]) -> Any:
        path, recursive = path_arg(args[1]), flag_arg(args, 2, b"RECURSIVE")
        entry = ns.encode_delete(self.clock.wall_ms(), path, recursive, self.trash_keep_ms)
        return await self._write(session, entry)

    async def _read(self, session: Any, read: Callable[[Caller], Any]) -> Any:
        return await self.meta.read(session, read)  # checked as the session's user

    async def cmd_ls(self, session: Any, args: list[bytes]) -> Any:
        path = path_arg(args[1])
        return await self._read(session, lambda c: self.namespace.ls(path, c))

    async def cmd_stat(self, session: Any, args: list[bytes]) -> Any:
        path = path_arg(args[1])
        return await self._read(session, lambda c: self.namespace.stat(path, c))

    async def cmd_trash(self, session: Any, args: list[bytes]) -> Any:
        return await self._read(session, self.namespace.trash_listing)
