"""The dfs namespace's log entries and path rules, sans I/O: what dfs/namespace.py applies.

Strategy: every change is a msgpack list [op, now_ms, *args], built here by one `encode_*`
function per op; the node that takes the command stamps `now_ms` (see dfs/namespace.py).
Paths are absolute, `/`-separated, without empty, "." or ".." names (one trailing `/` is
allowed and ignored); every refusal is a PathError whose text is one of the ERR_* replies.
"""

from __future__ import annotations

import msgpack

__all__ = [
    "ERR_BAD_ENTRY",
    "ERR_BAD_PATH",
    "ERR_DIR_NOT_EMPTY",
    "ERR_EXISTS",
    "ERR_INTO_ITSELF",
    "ERR_IS_DIR",
    "ERR_NOT_DIR",
    "ERR_NOT_FILE",
    "ERR_NO_ENTRY",
    "ERR_ROOT",
    "MAX_NAME",
    "MAX_PATH",
    "OP_AS",
    "OP_CHMOD",
    "OP_CHOWN",
    "OP_CREATE",
    "OP_DELETE",
    "OP_MKDIR",
    "OP_PURGE",
    "OP_RENAME",
    "OP_RESTORE",
    "OP_SNAPSHOT",
    "OP_SETQUOTA",
    "OP_SETVERSIONS",
    "PathError",
    "canonical",
    "check_path",
    "encode_as",
    "encode_chmod",
    "encode_chown",
    "encode_create",
    "encode_delete",
    "encode_mkdir",
    "encode_purge",
    "encode_rename",
    "encode_restore",
    "encode_snapshot",
    "encode_setquota",
    "encode_setversions",
]

MAX_PATH = 4096  # bytes of a path, as Linux's PATH_MAX
MAX_NAME = 255  # bytes of one name, as Linux's NAME_MAX


ERR_NO_ENTRY = "ERR no such file or directory '{}'"
ERR_EXISTS = "ERR already exists '{}'"
ERR_NOT_DIR = "ERR not a directory '{}'"
ERR_IS_DIR = "ERR is a directory '{}'"
ERR_DIR_NOT_EMPTY = "ERR directory not empty '{}'"
ERR_BAD_PATH = "ERR invalid path '{}': absolute, no empty, '.' or '..' names"
ERR_INTO_ITSELF = "ERR cannot move '{}' into itself or its own subtree '{}'"
ERR_ROOT = "ERR the root '/' cannot be renamed or deleted"
ERR_BAD_ENTRY = "ERR bad namespace entry: {!r}"
ERR_NOT_FILE = "ERR not a file '{}'"

OP_MKDIR = "mkdir"
OP_CREATE = "create"
OP_RENAME = "rename"
OP_DELETE = "delete"
OP_PURGE = "purge"
OP_AS = "as"
OP_CHMOD = "chmod"
OP_CHOWN = "chown"
OP_SETQUOTA = "setquota"
OP_SETVERSIONS = "setversions"
OP_RESTORE = "restore"
OP_SNAPSHOT = "snapshot"


class PathError(ValueError):
    """A refused operation; its text is the error reply."""


def check_path(path: str) -> list[str]:
    """The names of an absolute path (root: []); PathError when it is not a valid path."""
    if not path.startswith("/") or len(path.encode()) > MAX_PATH or "\x00" in path:
        raise PathError(ERR_BAD_PATH.format(path))
    if path == "/":
        return []
    names = path[1:].split("/")
    if len(names) > 1 and names[-1] == "":  # one trailing "/" after a name
        names.pop()
    for name in names:
        if name in ("", ".", "..") or len(name.encode()) > MAX_NAME:
            raise PathError(ERR_BAD_PATH.format(path))
    return names


def canonical(path: str) -> str:
    """The path as replies and trash items name it (no trailing `/`)."""
    return "/" + "/".join(check_path(path))


# -- entries ------------------------------------------------------------------------------------

def encode_mkdir(now_ms: int, path: str, parents: bool) -> bytes:
    return msgpack.packb([OP_MKDIR, now_ms, path, parents])


def encode_create(now_ms: int, path: str, overwrite: bool = False) -> bytes:
    """An empty file; with `overwrite` an existing file is replaced and kept as a version."""
    return msgpack.packb([OP_CREATE, now_ms, path, *([True] if overwrite else [])])


def encode_rename(now_ms: int, src: str, dst: str, replace: bool) -> bytes:
    return msgpack.packb([OP_RENAME, now_ms, src, dst, replace])


def encode_delete(now_ms: int, path: str, recursive: bool, keep_ms: int) -> bytes:
    """Delete `path` to the trash, purgeable `keep_ms` after the delete."""
    return msgpack.packb([OP_DELETE, now_ms, path, recursive, keep_ms])


def encode_purge(now_ms: int) -> bytes:
    """Drop the trash items whose expiry is at or before `now_ms` (the leader proposes it)."""
    return msgpack.packb([OP_PURGE, now_ms])


def encode_as(now_ms: int, user: str, entry: bytes) -> bytes:
    """`entry` applied as `user`: permissions checked, new nodes owned by `user`."""
    return msgpack.packb([OP_AS, now_ms, user, entry])


def encode_chmod(now_ms: int, path: str, mode: int) -> bytes:
    return msgpack.packb([OP_CHMOD, now_ms, path, mode])


def encode_chown(now_ms: int, path: str, owner: str | None, group: str | None) -> bytes:
    """A new owner and/or group (None: unchanged)."""
    return msgpack.packb([OP_CHOWN, now_ms, path, owner, group])


def encode_setquota(now_ms: int, path: str, limits: dict[str, int | None]) -> bytes:
    """Set a directory's FILES and/or BYTES limits (None: no limit); see dfs/quotas.py."""
    return msgpack.packb([OP_SETQUOTA, now_ms, path, limits])


def encode_setversions(now_ms: int, path: str, keep: int) -> bytes:
    """How many old versions the files under a directory keep."""
    return msgpack.packb([OP_SETVERSIONS, now_ms, path, keep])


def encode_restore(now_ms: int, path: str, version: int) -> bytes:
    """Make old version `version` of a file current again (the current one is kept)."""
    return msgpack.packb([OP_RESTORE, now_ms, path, version])


def encode_snapshot(now_ms: int, path: str, name: str, delete: bool = False) -> bytes:
    """Take snapshot `name` of the directory `path` (dfs/snapshots.py), or delete it."""
    return msgpack.packb([OP_SNAPSHOT, now_ms, path, name, delete])
