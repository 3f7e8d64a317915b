"""The master's metadata commands: users (USER.*), permissions (FS.CHMOD, FS.CHOWN,
FS.WHOAMI), quotas (FS.SETQUOTA, FS.COUNT), versions (FS.SETVERSIONS, FS.VERSIONS,
FS.RESTORE) and snapshots (FS.SNAPSHOT, FS.DELSNAPSHOT, FS.SNAPSHOTS); and who a connection
is, for every FS.* command.

Strategy: who calls is the RESP session's user (core/resp_session.py). A connection that
did not AUTH as a named user is the default user, which dfs maps to ROOT_USER, the
superuser, while the masters have no `--superuser-password` (a trusted single-user setup,
as a fresh HDFS where the user who started it is the superuser), and to NOBODY, an
unprivileged user, once they have one. ROOT_USER then logs in with `AUTH root <password>`;
other users are added by a superuser with USER.ADD and log in with `AUTH name password`.

Writes are wrapped in an "as user" entry (dfs/namespace.py's `encode_as`), so permissions
are checked when the entry is applied, against the state every master shares; reads wait
for the service's read barrier and check against the local tree. This object is also the
RESP server's user directory: ROOT_USER's credential is configuration (the same on every
master), the others are the namespace's replicated user table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from core.resp import OK, CommandError
from core.resp_server import Command
from core.resp_session import Session
from core.users import (
    DEFAULT_USER,
    ITERATIONS,
    Credential,
    UserError,
    check_user_name,
    make_credential,
)
from dfs import accounts, perms, quotas, snapshots, versions
from dfs import namespace as ns
from dfs.namespace import Namespace, PathError
from dfs.perms import NOBODY, ROOT_USER, Caller

__all__ = ["ERR_CHOWN", "ERR_INTEGER", "MetaCommands", "parse_owner"]

WRITE = frozenset({"write"})
READ = frozenset({"readonly"})
ERR_INTEGER = "ERR value is not an integer or out of range"
ERR_CHOWN = "ERR syntax: FS.CHOWN path owner[:group] or :group"
ERR_UTF8 = "ERR a name must be UTF-8"
ERR_SUPERUSER_WORD = "ERR syntax: USER.ADD name password [SUPERUSER]"
MAX_VERSION = 2**63 - 1

PathArg = Callable[[bytes], str]


def parse_owner(raw: str) -> tuple[str | None, str | None]:
    """FS.CHOWN's `owner`, `owner:group` or `:group` (None: unchanged); ValueError else."""
    owner, sep, group = raw.partition(":")
    try:
        new_owner = check_user_name(owner) if owner else None
        new_group = check_user_name(group) if group else None
    except UserError:
        raise ValueError(ERR_CHOWN) from None
    if (new_owner, new_group) == (None, None) or (sep and not group):
        raise ValueError(ERR_CHOWN)
    return new_owner, new_group


def _int(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_VERSION:
        raise CommandError(ERR_INTEGER)
    return int(raw)


def _text(raw: bytes, error: str = ERR_UTF8) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(error) from None


class MetaCommands:
    """The metadata commands of one master and its user directory. `service` (set after
    construction) is its RaftService; `superuser_password`: ROOT_USER's password, or None
    for the open setup (see the module header)."""

    def __init__(self, namespace: Namespace, clock: Any, path_arg: PathArg, *,
                 superuser_password: str | None = None, iterations: int = ITERATIONS) -> None:
        self.namespace = namespace
        self.clock = clock
        self.path_arg = path_arg
        self.iterations = iterations
        self.service: Any = None
        self.root_credential: Credential | None = (
            None if superuser_password is None
            else make_credential(superuser_password.encode(), iterations=iterations))

    # -- who calls ------------------------------------------------------------------------------

    def verify(self, name: str, password: bytes) -> bool:
        """The RESP server's check for `AUTH name password` (core.users.UserDirectory)."""
        if name == ROOT_USER:
            return self.root_credential is not None and self.root_credential.verify(password)
        return self.namespace.users.verify(name, password)

    def user_of(self, session: Session) -> str:
        """The dfs user a connection acts as (see the module header)."""
        if session.user != DEFAULT_USER:
            return session.user
        return ROOT_USER if self.root_credential is None else NOBODY

    def caller(self, session: Session) -> Caller:
        """The session's user with its groups and superuser flag, as the namespace has them."""
        return perms.caller_for(self.namespace.users, self.user_of(session))

    def wrap(self, session: Session, entry: bytes) -> bytes:
        """`entry` to be applied as the session's user."""
        return ns.encode_as(self.clock.wall_ms(), self.user_of(session), entry)

    def check_access(self, session: Session, path: str, want: int) -> None:
        """CommandError unless the session's user may do `want` (perms.R, W) to `path` (the
        chunk commands' check before a write or a read of a file's data)."""
        try:
            self.namespace.check_access(path, self.caller(session), want)
        except PathError as exc:
            raise CommandError(str(exc)) from None

    async def write(self, session: Session, entry: bytes) -> Any:
        """Commit `entry` as the session's user; its result (CommandError on a refusal)."""
        return await self.service.write(self.wrap(session, entry))

    async def read(self, session: Session, read: Callable[[Caller], Any]) -> Any:
        """`read(caller)` after the read barrier; a PathError becomes the error reply."""
        await self.service.barrier()
        try:
            return read(self.caller(session))
        except (PathError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    # -- commands -------------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """The command rows (see the module header)."""
        return [
            Command("USER.ADD", self.cmd_user_add, -3, WRITE, max_arity=4,
                    summary="USER.ADD name password [SUPERUSER]: a dfs user (superusers only)"),
            Command("USER.DEL", self.cmd_user_del, 2, WRITE,
                    summary="USER.DEL name: forget a user (superusers only)"),
            Command("USER.GROUPS", self.cmd_user_groups, -2, WRITE,
                    summary="USER.GROUPS name [group ...]: set a user's groups beside its own"),
            Command("USER.PASSWD", self.cmd_user_passwd, 3, WRITE,
                    summary="USER.PASSWD name password: a new password (for oneself, or by a "
                            "superuser)"),
            Command("USER.LIST", self.cmd_user_list, 1, READ,
                    summary="USER.LIST: [name, superuser, groups] per user"),
            Command("FS.WHOAMI", self.cmd_whoami, 1, READ,
                    summary="FS.WHOAMI: this connection's user, superuser flag and groups"),
            Command("FS.CHMOD", self.cmd_chmod, 3, WRITE,
                    summary="FS.CHMOD path mode: octal mode (owner or superuser)"),
            Command("FS.CHOWN", self.cmd_chown, 3, WRITE,
                    summary="FS.CHOWN path owner[:group]|:group: owner by a superuser only"),
            Command("FS.SETQUOTA", self.cmd_setquota, -4, WRITE,
                    summary="FS.SETQUOTA path [FILES n|NONE] [BYTES n|NONE]: a directory's "
                            "name and space quotas (superusers only)"),
            Command("FS.COUNT", self.cmd_count, 2, READ,
                    summary="FS.COUNT path: dirs, files, bytes, quotas and what remains"),
            Command("FS.SETVERSIONS", self.cmd_setversions, 3, WRITE,
                    summary="FS.SETVERSIONS dir n: old versions each file under it keeps"),
            Command("FS.VERSIONS", self.cmd_versions, 2, READ,
                    summary="FS.VERSIONS path: [version, mtime_ms, size, inode, current] "
                            "per version, newest first"),
            Command("FS.RESTORE", self.cmd_restore, 3, WRITE,
                    summary="FS.RESTORE path version: make an old version current again"),
            Command("FS.SNAPSHOT", self.cmd_snapshot, 3, WRITE,
                    summary="FS.SNAPSHOT dir name: a read-only copy, read at "
                            "dir/.snapshot/name (the directory's owner or a superuser)"),
            Command("FS.DELSNAPSHOT", self.cmd_delsnapshot, 3, WRITE,
                    summary="FS.DELSNAPSHOT dir name: drop a snapshot"),
            Command("FS.SNAPSHOTS", self.cmd_snapshots, 2, READ,
                    summary="FS.SNAPSHOTS dir: [name, ctime_ms] per snapshot, oldest first"),
        ]

    def _need_superuser(self, session: Session, what: str) -> None:
        if not self.caller(session).superuser:
            raise CommandError(perms.ERR_SUPERUSER_ONLY.format(what))

    async def cmd_user_add(self, session: Session, args: list[bytes]) -> Any:
        if len(args) == 4 and args[3].upper() != b"SUPERUSER":
            raise CommandError(ERR_SUPERUSER_WORD)
        self._need_superuser(session, "change users")
        try:
            name = check_user_name(args[1].decode("utf-8", "replace"))
            credential = await asyncio.to_thread(make_credential, args[2],
                                                 iterations=self.iterations)
        except UserError as exc:
            raise CommandError(str(exc)) from None
        entry = accounts.encode_user_add(self.clock.wall_ms(), name, credential, len(args) == 4)
        await self.write(session, entry)
        return OK

    async def cmd_user_passwd(self, session: Session, args: list[bytes]) -> Any:
        name = args[1].decode("utf-8", "replace")
        caller = self.caller(session)
        if not caller.superuser and caller.name != name:
            raise CommandError(perms.ERR_SUPERUSER_ONLY.format("change users"))
        try:
            credential = await asyncio.to_thread(make_credential, args[2],
                                                 iterations=self.iterations)
        except UserError as exc:
            raise CommandError(str(exc)) from None
        await self.write(session, accounts.encode_user_passwd(self.clock.wall_ms(), name,
                                                              credential))
        return OK

    async def cmd_user_del(self, session: Session, args: list[bytes]) -> Any:
        name = args[1].decode("utf-8", "replace")
        await self.write(session, accounts.encode_user_del(self.clock.wall_ms(), name))
        return OK

    async def cmd_user_groups(self, session: Session, args: list[bytes]) -> Any:
        name = args[1].decode("utf-8", "replace")
        groups = [g.decode("utf-8", "replace") for g in args[2:]]
        await self.write(session, accounts.encode_user_groups(self.clock.wall_ms(), name,
                                                              groups))
        return OK

    async def cmd_user_list(self, session: Session, args: list[bytes]) -> Any:
        def rows(caller: Caller) -> list[list[Any]]:
            users = self.namespace.users
            return [[u.name, int(u.superuser), u.all_groups()]
                    for u in (users.users[n] for n in users.names())]
        return await self.read(session, rows)

    async def cmd_whoami(self, session: Session, args: list[bytes]) -> Any:
        return await self.read(session, lambda c: [c.name, int(c.superuser), list(c.groups)])

    async def cmd_chmod(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        try:
            mode = perms.parse_mode(args[2].decode("ascii", "replace"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        await self.write(session, ns.encode_chmod(self.clock.wall_ms(), path, mode))
        return OK

    async def cmd_chown(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        try:
            owner, group = parse_owner(_text(args[2], ERR_CHOWN))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        await self.write(session, ns.encode_chown(self.clock.wall_ms(), path, owner, group))
        return OK

    async def cmd_setquota(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        try:
            limits = quotas.parse_quota_args([a.decode("ascii", "replace") for a in args[2:]])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        await self.write(session, ns.encode_setquota(self.clock.wall_ms(), path, limits))
        return OK

    async def cmd_count(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        return await self.read(session, lambda c: self.namespace.count(path, c))

    async def cmd_setversions(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        if not args[2].isdigit() or int(args[2]) > versions.MAX_KEEP_VERSIONS:
            raise CommandError(versions.ERR_BAD_KEEP)
        keep = int(args[2])
        await self.write(session, ns.encode_setversions(self.clock.wall_ms(), path, keep))
        return OK

    async def cmd_versions(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        return await self.read(session, lambda c: self.namespace.versions(path, c))

    async def cmd_restore(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])
        number = _int(args[2])
        await self.write(session, ns.encode_restore(self.clock.wall_ms(), path, number))
        return OK

    async def cmd_snapshot(self, session: Session, args: list[bytes]) -> Any:
        path, name = self.path_arg(args[1]), _text(args[2])
        await self.write(session, ns.encode_snapshot(self.clock.wall_ms(), path, name))
        return OK

    async def cmd_delsnapshot(self, session: Session, args: list[bytes]) -> Any:
        path, name = self.path_arg(args[1]), _text(args[2])
        await self.write(session, ns.encode_snapshot(self.clock.wall_ms(), path, name, True))
        return OK

    async def cmd_snapshots(self, session: Session, args: list[bytes]) -> Any:
        path = self.path_arg(args[1])

        def rows(caller: Caller) -> list[list[Any]]:
            node = self.namespace.check_access(path, caller, perms.R)
            if node.kind != ns.DIR:
                raise PathError(ns.ERR_NOT_DIR.format(ns.canonical(path)))
            return snapshots.listing(node)
        return await self.read(session, rows)
