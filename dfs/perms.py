"""dfs permissions, sans I/O: who is calling (a `Caller`) and what a node's mode lets it do.

Strategy: POSIX's and HDFS's model. Every node has an owner, a group and nine mode bits
(rwx for owner, group, others); the caller's class is the first that matches: owner, then
any of its groups, then other. A superuser passes every check. The namespace asks:
- traverse (x) on every directory on the way to a path;
- read a file: r on it; list a directory: r and x on it;
- create, mkdir, delete or rename an entry: w and x on the directory that holds it;
- delete a non-empty directory: also r, w and x on every directory below it (as HDFS);
- chmod: the owner or a superuser; chown to another owner: a superuser only; chgrp: the
  owner, to one of its own groups, or a superuser.
New nodes belong to the caller and, as HDFS and BSD do, to the group of their parent
directory; their mode is DEFAULT_FILE_MODE or DEFAULT_DIR_MODE (umask 022's result).

Who the caller is comes from the masters' user table (core/users.py): a user's groups are
its own name (its primary group) and the groups the table lists. ROOT_USER is always a
superuser, so are users added as superusers and the members of SUPERGROUP (as HDFS's
dfs.permissions.superusergroup). NOBODY is the unprivileged identity of a
connection that did not AUTH as a named user while the masters have a superuser password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from core.users import UserTable
from dfs.entries import PathError

__all__ = [
    "DEFAULT_DIR_MODE", "DEFAULT_FILE_MODE", "ERR_BAD_MODE", "ERR_NOT_OWNER", "ERR_PERMISSION",
    "ERR_SUPERUSER_ONLY", "NOBODY", "R", "ROOT_USER", "SUPERGROUP", "TRUSTED", "W", "X",
    "Caller", "PermissionRefused", "allowed", "caller_for", "chmod", "chown", "mode_string",
    "need", "need_owner", "need_subtree", "parse_mode",
]

R, W, X = 4, 2, 1
ROOT_USER = "root"
SUPERGROUP = "supergroup"
NOBODY = "nobody"
DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
ROOT_DIR_MODE = 0o755
MAX_MODE = 0o777

ERR_PERMISSION = "ERR permission denied: user={} access={} path='{}' ({})"
ERR_NOT_OWNER = "ERR permission denied: user={} is not the owner of '{}'"
ERR_SUPERUSER_ONLY = "ERR permission denied: only a superuser may {}"
ERR_BAD_MODE = "ERR invalid mode '{}': three octal digits, 000 to 777"


class PermissionRefused(PathError):
    """A refused operation; its text is the error reply."""


@dataclass(frozen=True)
class Caller:
    """Who an operation runs as: a name, its groups, and whether it is a superuser."""

    name: str
    groups: tuple[str, ...] = ()
    superuser: bool = False

    def in_group(self, group: str) -> bool:
        """True when `group` is one of the caller's groups."""
        return group in self.groups


TRUSTED = Caller(ROOT_USER, (ROOT_USER, SUPERGROUP), True)  # the masters' own entries


def caller_for(users: UserTable, name: str) -> Caller:
    """The Caller for user `name` as the table knows it now; a name the table does not know
    (NOBODY, or a user removed since it logged in) is unprivileged with its own group. A
    member of SUPERGROUP is a superuser, as HDFS's superuser group."""
    if name == ROOT_USER:
        return TRUSTED
    user = users.get(name)
    if user is None:
        return Caller(name, (name,))
    groups = tuple(user.all_groups())
    return Caller(name, groups, user.superuser or SUPERGROUP in groups)


def allowed(owner: str, group: str, mode: int, caller: Caller, want: int) -> bool:
    """True when `caller` may do `want` (a sum of R, W, X) to a node with these fields."""
    if caller.superuser:
        return True
    if caller.name == owner:
        bits = mode >> 6
    elif caller.in_group(group):
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


def access_name(want: int) -> str:
    """`want` as rwx letters, with '-' for the bits not asked ("r-x")."""
    return "".join(c if want & bit else "-" for c, bit in (("r", R), ("w", W), ("x", X)))


def mode_string(kind_is_dir: bool, mode: int) -> str:
    """`ls -l`'s ten characters: "drwxr-xr-x"."""
    bits = "".join(access_name((mode >> shift) & 7) for shift in (6, 3, 0))
    return ("d" if kind_is_dir else "-") + bits


def parse_mode(raw: str) -> int:
    """An octal mode of one to four digits ("755", "0644"); ValueError(ERR_BAD_MODE) else."""
    digits = raw[1:] if len(raw) == 4 and raw[0] == "0" else raw
    if not 1 <= len(digits) <= 3 or any(c not in "01234567" for c in digits):
        raise ValueError(ERR_BAD_MODE.format(raw[:16]))
    return int(digits, 8)


class Owned(Protocol):
    """The node fields these checks read and write (dfs.namespace.Node)."""

    owner: str
    group: str
    mode: int


def need_owner(node: Owned, caller: Caller | None, path: str) -> None:
    """PermissionRefused unless `caller` owns `node` or is a superuser (None: trusted)."""
    if caller is not None and not caller.superuser and caller.name != node.owner:
        raise PermissionRefused(ERR_NOT_OWNER.format(caller.name, path))


def chmod(node: Owned, caller: Caller | None, path: str, mode: int) -> None:
    """Set `node`'s mode: its owner or a superuser."""
    need_owner(node, caller, path)
    node.mode = mode & MAX_MODE


def chown(node: Owned, caller: Caller | None, path: str, owner: str | None,
          group: str | None) -> None:
    """A superuser sets owner and group; the owner may set the group to one of its own."""
    who = caller or TRUSTED
    if not who.superuser:
        if owner is not None and owner != node.owner:
            raise PermissionRefused(ERR_SUPERUSER_ONLY.format("change an owner"))
        need_owner(node, who, path)
        if group is not None and not who.in_group(group):
            raise PermissionRefused(ERR_PERMISSION.format(who.name, "chgrp", path,
                                                          f"not in group {group}"))
    node.owner = owner if owner is not None else node.owner
    node.group = group if group is not None else node.group



class Guarded(Owned, Protocol):
    """A node as `need_subtree` walks it."""

    kind: str
    children: dict[str, Any]


def need(node: Owned, want: int, path: str, caller: Caller | None) -> None:
    """PermissionRefused unless `caller` may do `want` to `node` (None: trusted)."""
    if caller is not None and not allowed(node.owner, node.group, node.mode, caller, want):
        raise PermissionRefused(ERR_PERMISSION.format(
            caller.name, access_name(want), path,
            "owner" if caller.name == node.owner else "mode"))


def need_subtree(top: Guarded, path: str, caller: Caller | None) -> None:
    """rwx on every non-empty directory under `top` (a recursive delete, as HDFS asks)."""
    stack = [(path, top)]
    while stack:
        here, node = stack.pop()
        if node.kind == "dir" and node.children:
            need(node, R | W | X, here, caller)
            stack.extend((here.rstrip("/") + "/" + n, c) for n, c in node.children.items())
