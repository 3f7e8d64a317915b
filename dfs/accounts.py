"""The dfs masters' users, sans I/O: USER.ADD / DEL / GROUPS / PASSWD as namespace entries.

Strategy: the table is core/users.py's `UserTable`, kept inside the namespace's state
machine, so it is replicated by the masters' Raft log and saved in their snapshots. The
master that takes USER.ADD or USER.PASSWD draws the salt and hashes the password, so the
entry carries only the finished credential and every master applies the same bytes. Only a
superuser may change the table, except that a user may change its own password (checked
when the entry is applied, like every permission). ROOT_USER is not in the table: its
password is the masters' configuration (`--superuser-password`), the same on every master.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from core.users import ERR_NO_USER, Credential, UserError, UserTable, check_user_name
from dfs.perms import ERR_SUPERUSER_ONLY, NOBODY, ROOT_USER, Caller

__all__ = ["OP_USER_ADD", "OP_USER_DEL", "OP_USER_GROUPS", "OP_USER_PASSWD", "USER_OPS",
           "apply_user_op", "encode_user_add", "encode_user_del", "encode_user_groups",
           "encode_user_passwd"]

OP_USER_ADD = "user.add"
OP_USER_DEL = "user.del"
OP_USER_GROUPS = "user.groups"
OP_USER_PASSWD = "user.passwd"
USER_OPS = frozenset({OP_USER_ADD, OP_USER_DEL, OP_USER_GROUPS, OP_USER_PASSWD})
RESERVED = frozenset({ROOT_USER, NOBODY})
ERR_RESERVED = "ERR user name '{}' is reserved"


def encode_user_add(now_ms: int, name: str, credential: Credential, superuser: bool) -> bytes:
    """Add user `name` with a credential made by core.users.make_credential."""
    return msgpack.packb([OP_USER_ADD, now_ms, name, credential.to_wire(), superuser])


def encode_user_del(now_ms: int, name: str) -> bytes:
    return msgpack.packb([OP_USER_DEL, now_ms, name])


def encode_user_groups(now_ms: int, name: str, groups: list[str]) -> bytes:
    """Replace the extra groups of `name` (its own group always stays)."""
    return msgpack.packb([OP_USER_GROUPS, now_ms, name, list(groups)])


def encode_user_passwd(now_ms: int, name: str, credential: Credential) -> bytes:
    """A new password for `name` (a user for itself, or a superuser for anyone)."""
    return msgpack.packb([OP_USER_PASSWD, now_ms, name, credential.to_wire()])


def apply_user_op(users: UserTable, caller: Caller, op: str, args: list[Any]) -> Any:
    """Apply one user entry as `caller`; None, or raise UserError with the reply text."""
    own_password = op == OP_USER_PASSWD and args[:1] == [caller.name]
    if not caller.superuser and not own_password:
        raise UserError(ERR_SUPERUSER_ONLY.format("change users"))
    handlers: dict[str, Callable[..., None]] = {
        OP_USER_ADD: lambda name, cred, su: _add(users, name, cred, su),
        OP_USER_DEL: users.remove,
        OP_USER_GROUPS: users.set_groups,
        OP_USER_PASSWD: lambda name, cred: _passwd(users, name, cred),
    }
    handlers[op](*args)
    return None


def _add(users: UserTable, name: str, credential: Any, superuser: bool) -> None:
    if check_user_name(name) in RESERVED:
        raise UserError(ERR_RESERVED.format(name))
    users.add(name, Credential.from_wire(credential), bool(superuser))


def _passwd(users: UserTable, name: str, credential: Any) -> None:
    user = users.get(name)
    if user is None:
        raise UserError(ERR_NO_USER.format(name))
    user.credential = Credential.from_wire(credential)
