"""Named users for RESP daemons, sans I/O: `AUTH username password` checks against this table.

Strategy: a password is never stored, only a `Credential`: a random salt and the
PBKDF2-HMAC-SHA256 digest of the password under that salt (hashlib), with the iteration
count beside them so a table written with one count still verifies after the default
changes. Verification recomputes the digest and compares in constant time
(hmac.compare_digest). The salt is drawn where the credential is made (`make_credential`,
which takes the randomness source), never where it is stored: a daemon that replicates its
users through a Raft log puts the finished credential in the entry, so every replica
applies the same bytes.

`UserTable` holds name -> (credential, superuser flag, groups) and is plain data: a daemon
may keep one in its own state machine (dfs's masters do) and hand it to the RESP server as
its `users` (the `UserDirectory` protocol); daemons without one keep only the default user
and `--requirepass`. The default user's name is DEFAULT_USER, as Redis's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DEFAULT_USER", "HASH_NAME", "ITERATIONS", "MAX_PASSWORD_BYTES", "MAX_USER_NAME",
    "SALT_BYTES", "Credential", "User", "UserDirectory", "UserError", "UserTable",
    "check_user_name", "make_credential",
]

DEFAULT_USER = "default"
HASH_NAME = "sha256"
ITERATIONS = 50_000  # PBKDF2 rounds per new credential (stored per credential)
MIN_ITERATIONS = 1
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
MAX_USER_NAME = 64  # bytes of a user or group name
MAX_PASSWORD_BYTES = 512
MAX_GROUPS = 64  # groups one user may belong to, beyond its own

ERR_USER_NAME = "ERR invalid user name '{}': 1-64 letters, digits, '.', '_' or '-'"
ERR_PASSWORD = "ERR a password must be 1-512 bytes"
ERR_USER_EXISTS = "ERR user '{}' already exists"
ERR_NO_USER = "ERR no such user '{}'"
ERR_BAD_CREDENTIAL = "ERR bad credential record"
ERR_TOO_MANY_GROUPS = "ERR a user belongs to at most 64 groups"

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class UserError(ValueError):
    """A refused user operation; its text is the error reply."""


def check_user_name(name: str) -> str:
    """`name` when it is a valid user or group name; UserError otherwise."""
    if not name or len(name) > MAX_USER_NAME or not set(name) <= _NAME_CHARS:
        raise UserError(ERR_USER_NAME.format(name[:MAX_USER_NAME]))
    return name


@dataclass(frozen=True)
class Credential:
    """A salted password digest: what a table stores instead of the password."""

    salt: bytes
    digest: bytes
    iterations: int = ITERATIONS

    def verify(self, password: bytes) -> bool:
        """True when `password` is the one this credential was made from."""
        if len(password) > MAX_PASSWORD_BYTES:
            return False
        digest = hashlib.pbkdf2_hmac(HASH_NAME, password, self.salt, self.iterations)
        return hmac.compare_digest(digest, self.digest)

    def to_wire(self) -> list[Any]:
        """[salt, digest, iterations] (msgpack-friendly)."""
        return [self.salt, self.digest, self.iterations]

    @classmethod
    def from_wire(cls, row: Any) -> Credential:
        """The credential `to_wire` wrote; UserError when it is malformed."""
        try:
            salt, digest, iterations = row
            ok = (isinstance(salt, bytes) and isinstance(digest, bytes)
                  and isinstance(iterations, int)
                  and MIN_ITERATIONS <= iterations <= MAX_ITERATIONS)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(ERR_BAD_CREDENTIAL)
        return cls(salt, digest, iterations)


def make_credential(password: bytes, *, iterations: int = ITERATIONS,
                    random_bytes: Callable[[int], bytes] = os.urandom) -> Credential:
    """A fresh credential for `password` (UserError when it is empty or too long)."""
    if not password or len(password) > MAX_PASSWORD_BYTES:
        raise UserError(ERR_PASSWORD)
    salt = random_bytes(SALT_BYTES)
    return Credential(salt, hashlib.pbkdf2_hmac(HASH_NAME, password, salt, iterations),
                      iterations)


@dataclass
class User:
    """One named user: its credential, whether it is a superuser, its extra groups."""

    name: str
    credential: Credential
    superuser: bool = False
    groups: list[str] = field(default_factory=list)

    def all_groups(self) -> list[str]:
        """Its primary group (named as the user) first, then the others."""
        return [self.name, *(g for g in self.groups if g != self.name)]


class UserDirectory(Protocol):
    """What a RESP server asks of a daemon's user table when a client sends AUTH."""

    def verify(self, name: str, password: bytes) -> bool:
        """True when `name` is a known user and `password` its password."""
        ...


class UserTable:
    """Named users (not the default user): add, remove, verify, list, and a wire form."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.users

    def get(self, name: str) -> User | None:
        """The user called `name`, or None."""
        return self.users.get(name)

    def add(self, name: str, credential: Credential, superuser: bool = False) -> User:
        """A new user (UserError when the name is invalid or taken)."""
        check_user_name(name)
        if name in self.users or name == DEFAULT_USER:
            raise UserError(ERR_USER_EXISTS.format(name))
        user = User(name, credential, superuser)
        self.users[name] = user
        return user

    def remove(self, name: str) -> None:
        """Forget `name` (UserError when unknown)."""
        if self.users.pop(name, None) is None:
            raise UserError(ERR_NO_USER.format(name))

    def set_groups(self, name: str, groups: Iterable[str]) -> None:
        """Replace the extra groups of `name` (each a valid name)."""
        user = self.users.get(name)
        if user is None:
            raise UserError(ERR_NO_USER.format(name))
        wanted = sorted({check_user_name(g) for g in groups})
        if len(wanted) > MAX_GROUPS:
            raise UserError(ERR_TOO_MANY_GROUPS)
        user.groups = wanted

    def verify(self, name: str, password: bytes) -> bool:
        """True when `name` is a known user and `password` its password."""
        user = self.users.get(name)
        return user is not None and user.credential.verify(password)

    def names(self) -> list[str]:
        """Every user's name, sorted."""
        return sorted(self.users)

    def to_wire(self) -> list[Any]:
        """Every user as [name, credential, superuser, groups], sorted by name."""
        return [[u.name, u.credential.to_wire(), u.superuser, list(u.groups)]
                for _, u in sorted(self.users.items())]

    @classmethod
    def from_wire(cls, rows: Iterable[Any]) -> UserTable:
        """The table `to_wire` wrote."""
        table = cls()
        for name, credential, superuser, groups in rows:
            user = table.add(name, Credential.from_wire(credential), bool(superuser))
            user.groups = list(groups)
        return table
