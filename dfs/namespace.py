"""The dfs masters' namespace, sans I/O: a deterministic state machine the Raft log drives.

Strategy: the tree lives in memory as `Node`s (a directory holds its children by name), so
a rename moves a whole subtree by relinking one node. Every change is a log entry, msgpack
[op, now_ms, *args] (dfs/entries.py's `encode_*` functions): the node that builds the entry stamps
`now_ms`, and apply never reads a clock, only the entries, so every master that applies
the same log holds the same tree. The machine's time is the largest `now_ms` it has applied
(`clock_ms`), so times never go backwards when masters' clocks differ.

A delete moves the subtree out of the tree into the trash (as HDFS's trash does): each
trash item keeps the original path, the time of the delete and its expiry; a PURGE entry
(proposed by the leader) drops the items whose expiry is at or before its `now_ms`. A
rename over an existing path replaces it only with REPLACE (and like rename(2), a
directory only over an empty directory, a file only over a file); the replaced node is
dropped, not trashed.

Paths are absolute, `/`-separated, without empty, "." or ".." names (a trailing `/` is
allowed and ignored). A change returns None, a delete its trash id, a purge how many items
it dropped; a refusal returns its error text (the ERR_* strings), as core's StateMachine
contract says.
A snapshot is the tree in pre-order as a flat list (no recursion, however deep the tree;
dfs/nodes.py's rows), with the trash and the users.

Users, permissions, quotas and versions (dfs/accounts.py, dfs/perms.py, dfs/quotas.py,
dfs/versions.py): an entry wrapped by `encode_as(now_ms, user, entry)` is applied as that
user, and every path it touches is checked against the nodes' owner, group and mode (an
unwrapped entry is the masters' own and is trusted). Quota directories are charged for every
name and byte a change adds or removes; a refusal leaves the tree as it was. An overwrite
(FS.CREATE ... OVERWRITE) keeps the replaced file as an old version. The inodes of files the
namespace drops for good (old versions past the limit) collect in `released` until the
master takes them (`take_released`); `live_inodes` is every inode still held, versions,
snapshots (dfs/snapshots.py, read through `dir/.snapshot/name`, never changed) and the
trash included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from core.users import UserError, UserTable
from dfs import accounts, perms, snapshots, versions
from dfs.entries import (  # noqa: F401 - re-exported: the names callers knew here
    ERR_BAD_ENTRY,
    ERR_BAD_PATH,
    ERR_DIR_NOT_EMPTY,
    ERR_EXISTS,
    ERR_INTO_ITSELF,
    ERR_IS_DIR,
    ERR_NO_ENTRY,
    ERR_NOT_DIR,
    ERR_NOT_FILE,
    ERR_ROOT,
    MAX_NAME,
    MAX_PATH,
    OP_AS,
    OP_CHMOD,
    OP_CHOWN,
    OP_CREATE,
    OP_DELETE,
    OP_MKDIR,
    OP_PURGE,
    OP_RENAME,
    OP_RESTORE,
    OP_SETQUOTA,
    OP_SETVERSIONS,
    OP_SNAPSHOT,
    PathError,
    canonical,
    check_path,
    encode_as,
    encode_chmod,
    encode_chown,
    encode_create,
    encode_delete,
    encode_mkdir,
    encode_purge,
    encode_rename,
    encode_restore,
    encode_setquota,
    encode_setversions,
    encode_snapshot,
)
from dfs.nodes import DIR, FILE, Node, TrashItem, flatten, unflatten
from dfs.perms import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, ROOT_USER, Caller, R, W, X
from dfs.quotas import Charges, count, set_quota, usage

ROOT_INODE = 1

__all__ = [
    "DIR", "ERR_BAD_ENTRY", "ERR_BAD_PATH", "ERR_DIR_NOT_EMPTY", "ERR_EXISTS",
    "ERR_INTO_ITSELF", "ERR_IS_DIR", "ERR_NOT_DIR", "ERR_NO_ENTRY", "ERR_ROOT", "FILE",
    "MAX_NAME", "MAX_PATH", "Namespace", "Node", "TrashItem", "check_path", "encode_as",
    "encode_chmod", "encode_chown", "encode_create", "encode_delete", "encode_mkdir",
    "encode_purge", "encode_rename", "encode_restore", "encode_setquota", "encode_setversions",
    "encode_snapshot",
    "PathError", "canonical", "ERR_NOT_FILE",
]

class Namespace:
    """The tree, the trash, the users and the counters; `apply`, `snapshot`, `restore` are the
    Raft driver's hooks (core/service_machine.py's StateMachine), the rest are local reads.
    A read given a `caller` checks its permissions (PathError), one without is trusted."""

    def __init__(self) -> None:
        self.root = Node(DIR, ROOT_INODE, 0, 0, mode=perms.ROOT_DIR_MODE)
        self.next_inode = ROOT_INODE + 1
        self.trash: dict[int, TrashItem] = {}
        self.next_trash = 1
        self.clock_ms = 0
        self.users = UserTable()
        self.caller: Caller | None = None  # who the entry being applied runs as
        self.released: list[int] = []  # inodes dropped for good, for the chunk table
        self.applying = False  # True while an entry applies: snapshots are read-only then

    # -- reads ----------------------------------------------------------------------------------

    def walk(self, path: str, caller: Caller | None = None) -> list[tuple[str, Node]]:
        """(path, node) from the root to `path`'s node; PathError when it is missing, a
        name under a file, or `caller` may not traverse (x) a directory on the way."""
        node = self.root
        names = check_path(path)
        chain = [("/", node)]
        for i, name in enumerate(names):
            here = "/" + "/".join(names[:i])
            if node.kind != DIR:
                raise PathError(ERR_NOT_DIR.format(here))
            perms.need(node, X, here, caller)
            child = node.children.get(name)
            if child is None and name == snapshots.SNAPSHOT_DIR and node.kind == DIR:
                if self.applying:  # every change of the tree comes through apply
                    raise PathError(snapshots.ERR_READ_ONLY.format(canonical(path)))
                child = snapshots.view(node)
            if child is None:
                raise PathError(ERR_NO_ENTRY.format(canonical(path)))
            node = child
            chain.append(("/" + "/".join(names[:i + 1]), node))
        return chain

    def lookup(self, path: str, caller: Caller | None = None) -> Node:
        """The node at `path`; PathError (no such entry, not a directory, denied)."""
        return self.walk(path, caller)[-1][1]

    def ls(self, path: str, caller: Caller | None = None) -> list[str]:
        """FS.LS: a directory's names sorted, directories ending in `/`; a file: its name.
        A directory needs r and x."""
        node = self.lookup(path, caller)
        if node.kind == FILE:
            return [check_path(path)[-1]]
        perms.need(node, R | X, canonical(path), caller)
        return [name + ("/" if child.kind == DIR else "")
                for name, child in sorted(node.children.items())]

    def stat(self, path: str, caller: Caller | None = None) -> dict[str, Any]:
        """FS.STAT: the node's fields (see Node.stat)."""
        return self.lookup(path, caller).stat()

    def check_access(self, path: str, caller: Caller | None, want: int) -> Node:
        """The node at `path` when `caller` may traverse to it and do `want` (perms.R, W, X)
        to it; PathError otherwise. For the data path: reading a file needs R, writing W."""
        if want & W and snapshots.SNAPSHOT_DIR in check_path(path):
            self.walk(path, caller)  # (no such entry, or a path through a snapshot)
            raise PathError(snapshots.ERR_READ_ONLY.format(canonical(path)))
        node = self.lookup(path, caller)
        perms.need(node, want, canonical(path), caller)
        return node

    def versions(self, path: str, caller: Caller | None = None) -> list[list[Any]]:
        """FS.VERSIONS: a file's versions, newest first (dfs/versions.py's listing)."""
        return versions.listing(self._file(path, caller, R))

    def count(self, path: str, caller: Caller | None = None) -> dict[str, Any]:
        """FS.COUNT, as `hdfs dfs -count -q` (dfs/quotas.py's `count`); a directory needs
        r and x, as listing it does."""
        node = self.lookup(path, caller)
        return count(self.check_access(path, caller, R | X) if node.kind == DIR else node)

    def trash_listing(self, caller: Caller | None = None) -> list[list[Any]]:
        """FS.TRASH: every trash item's row, oldest first (a user sees its own items only)."""
        return [item.listing() for _, item in sorted(self.trash.items())
                if caller is None or caller.superuser or item.node.owner == caller.name]

    def expired(self, now_ms: int) -> bool:
        """True when some trash item expires at or before `now_ms` (a purge is due)."""
        return any(item.expires_ms <= now_ms for item in self.trash.values())

    def live_inodes(self) -> set[int]:
        """Every inode the namespace holds: the tree, the trash, their old versions."""
        live: set[int] = set()
        stack = [self.root, *(item.node for item in self.trash.values())]
        while stack:
            node = stack.pop()
            live.add(node.inode)
            live.update(v.inode for v in node.versions)
            stack.extend(node.children.values())
            stack.extend(s.root for s in node.snapshots.values())
        return live

    def take_released(self) -> list[int]:
        """The inodes dropped for good since the last call (old versions past a limit)."""
        out, self.released = self.released, []
        return out

    # -- the data path's hooks --------------------------------------------------------------------

    def charge(self, path: str, bytes_delta: int) -> None:
        """Charge `bytes_delta` more bytes of the file at `path` to the space quotas above it
        (call it while applying an entry, before changing the file's size); PathError with
        quotas.ERR_QUOTA when a quota refuses, and then nothing changed."""
        charges = Charges().add(self.walk(path)[:-1], 0, int(bytes_delta))
        try:
            charges.check()
        except ValueError as exc:
            raise PathError(str(exc)) from None
        charges.apply()

    def set_size(self, path: str, size: int) -> Node:
        """The file at `path` now holds `size` bytes, charged to its quotas (see `charge`)."""
        node = self._file(path, None, 0)
        self.charge(path, int(size) - node.size)
        node.size = int(size)
        return node

    # -- permissions ----------------------------------------------------------------------------

    def _file(self, path: str, caller: Caller | None, want: int) -> Node:
        node = self.check_access(path, caller, want)
        if node.kind != FILE:
            raise PathError(ERR_NOT_FILE.format(canonical(path)))
        return node

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """One result per entry: a reply value, or an error text."""
        return [self.apply_one(data) for _, data in entries]

    def apply_one(self, data: bytes) -> Any:
        """Apply one entry (see the module header); its reply or error text."""
        try:
            op, now_ms, *args = msgpack.unpackb(data)
            self.clock_ms = max(self.clock_ms, int(now_ms))
            if op == OP_AS and self.caller is None:
                return self._apply_as(*args)
            if op in accounts.USER_OPS:
                return self._user_op(op, args)
            handler = {OP_MKDIR: self._mkdir, OP_CREATE: self._create, OP_RENAME: self._rename,
                       OP_DELETE: self._delete, OP_PURGE: self._purge, OP_CHMOD: self._chmod,
                       OP_CHOWN: self._chown, OP_SETQUOTA: self._setquota,
                       OP_SETVERSIONS: self._setversions, OP_RESTORE: self._restore,
                       OP_SNAPSHOT: self._snapshot}[op]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            return ERR_BAD_ENTRY.format(exc)
        self.applying = True
        try:
            return handler(*args)
        except ValueError as exc:  # PathError, UserError, or a quota or version refusal
            return str(exc)
        finally:
            self.applying = False

    def _apply_as(self, user: str, entry: bytes) -> Any:
        self.caller = perms.caller_for(self.users, user)
        try:
            return self.apply_one(entry)
        finally:
            self.caller = None

    def _user_op(self, op: str, args: list[Any]) -> Any:
        try:
            return accounts.apply_user_op(self.users, self.caller or perms.TRUSTED, op, args)
        except UserError as exc:
            return str(exc)

    def _new(self, kind: str, parent: Node) -> Node:
        """A node for the caller, in `parent`'s group (as HDFS), with the default mode."""
        owner = self.caller.name if self.caller is not None else ROOT_USER
        mode = DEFAULT_DIR_MODE if kind == DIR else DEFAULT_FILE_MODE
        node = Node(kind, self.next_inode, self.clock_ms, self.clock_ms, owner=owner,
                    group=parent.group, mode=mode)
        self.next_inode += 1
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        """The directory that holds (or would hold) `path`, and the last name."""
        chain, name = self._parent_chain(path)
        return chain[-1][1], name

    def _parent_chain(self, path: str, want: int = 0) -> tuple[list[tuple[str, Node]], str]:
        """The walk to the directory that holds `path`, and the last name; the caller must
        have `want` on that directory."""
        names = check_path(path)
        if not names:
            raise PathError(ERR_ROOT)
        where = "/" + "/".join(names[:-1])
        chain = self.walk(where, self.caller)
        parent = chain[-1][1]
        if parent.kind != DIR:
            raise PathError(ERR_NOT_DIR.format(where))
        if want:
            perms.need(parent, want, where, self.caller)
        return chain, names[-1]

    def _link(self, parent: Node, name: str, node: Node) -> None:
        parent.children[name] = node
        parent.mtime_ms = self.clock_ms

    def _add(self, chain: list[tuple[str, Node]], name: str, kind: str) -> Node:
        """A new node `name` in the last directory of `chain`, charged to its quotas."""
        if name == snapshots.SNAPSHOT_DIR:
            raise PathError(snapshots.ERR_RESERVED)
        charges = Charges().add(chain, 1, 0)
        charges.check()
        node = self._new(kind, chain[-1][1])
        charges.apply()
        self._link(chain[-1][1], name, node)
        return node

    def _mkdir(self, path: str, parents: bool) -> None:
        if parents:
            return self._mkdir_parents(path)
        if not check_path(path):
            raise PathError(ERR_EXISTS.format("/"))
        chain, name = self._parent_chain(path, W | X)
        if name in chain[-1][1].children:
            raise PathError(ERR_EXISTS.format(canonical(path)))
        self._add(chain, name, DIR)
        return None

    def _mkdir_parents(self, path: str) -> None:
        """mkdir -p: create what is missing; an existing directory is fine. Everything is
        checked before anything is created, so a refusal changes nothing."""
        self._check_mkdir_parents(check_path(path))
        chain = [("/", self.root)]
        for name in check_path(path):
            where, node = chain[-1]
            here = where.rstrip("/") + "/" + name
            child = node.children.get(name)
            if child is None:
                perms.need(node, W | X, where, self.caller)
                child = self._add(chain, name, DIR)
            elif child.kind != DIR:
                raise PathError(ERR_NOT_DIR.format(here))
            else:
                perms.need(node, X, where, self.caller)
            chain.append((here, child))
        return None

    def _check_mkdir_parents(self, names: list[str]) -> None:
        """Raise what `_mkdir_parents` would raise part way, before it changes anything:
        types and x bits of what exists, w on the deepest, the missing names' quota."""
        chain = [("/", self.root)]
        for at, name in enumerate(names):
            where, node = chain[-1]
            child = node.children.get(name)
            if child is None:
                perms.need(node, W | X, where, self.caller)
                if snapshots.SNAPSHOT_DIR in names[at:]:
                    raise PathError(snapshots.ERR_RESERVED)
                Charges().add(chain, len(names) - at, 0).check()
                return
            here = where.rstrip("/") + "/" + name
            if child.kind != DIR:
                raise PathError(ERR_NOT_DIR.format(here))
            perms.need(node, X, where, self.caller)
            chain.append((here, child))

    def _create(self, path: str, overwrite: bool = False) -> None:
        chain, name = self._parent_chain(path)
        parent = chain[-1][1]
        old = parent.children.get(name)
        if old is not None and overwrite:
            return self._overwrite(chain, name, old, canonical(path))
        perms.need(parent, W | X, chain[-1][0], self.caller)
        if old is not None:
            raise PathError(ERR_EXISTS.format(canonical(path)))
        self._add(chain, name, FILE)
        return None

    def _overwrite(self, chain: list[tuple[str, Node]], name: str, old: Node,
                   path: str) -> None:
        """A new empty file in `old`'s place, `old` kept as a version (dfs/versions.py)."""
        if old.kind != FILE:
            raise PathError(ERR_IS_DIR.format(path))
        perms.need(old, W, path, self.caller)
        keep = versions.keep_limit([node for _, node in chain])
        dropped = old.versions[:max(0, len(old.versions) + 1 - keep)]
        charges = Charges().add(chain, 1 - len(dropped), -sum(v.size for v in dropped))
        charges.check()
        charges.apply()
        new = self._new(FILE, chain[-1][1])
        gone = versions.overwrite(old, new, keep)
        self.released.extend(v.inode for v in gone)
        self._link(chain[-1][1], name, new)
        return None

    def _rename(self, src: str, dst: str, replace: bool) -> None:
        src_names, dst_names = check_path(src), check_path(dst)
        if not src_names:
            raise PathError(ERR_ROOT)
        node = self.lookup(src, self.caller)
        if dst_names[:len(src_names)] == src_names:
            raise PathError(ERR_INTO_ITSELF.format(canonical(src), canonical(dst)))
        new_chain, new_name = self._parent_chain(dst, W | X)
        old_chain, old_name = self._parent_chain(src, W | X)
        if new_name == snapshots.SNAPSHOT_DIR:
            raise PathError(snapshots.ERR_RESERVED)
        new_parent = new_chain[-1][1]
        old = new_parent.children.get(new_name)
        if old is not None:
            self._check_replace(node, old, canonical(dst), replace)
        kept = old is not None and old.kind == FILE  # a file over a file: old is a version
        olds = versions.history(old, node) if kept else []
        dropped = olds[:max(0, len(olds) - versions.keep_limit([n for _, n in new_chain]))]
        moved = usage(node)
        gone = (len(dropped), sum(v.size for v in dropped)) if kept else (
            usage(old) if old is not None else (0, 0))
        charges = Charges().add(new_chain, moved[0] - gone[0], moved[1] - gone[1])
        charges.add(old_chain, -moved[0], -moved[1])
        charges.check()
        charges.apply()
        if kept:
            self.released.extend(v.inode for v in versions.supersede(
                old, node, olds, len(olds) - len(dropped)))
        old_parent = old_chain[-1][1]
        del old_parent.children[old_name]
        old_parent.mtime_ms = self.clock_ms
        self._link(new_parent, new_name, node)
        return None

    @staticmethod
    def _check_replace(node: Node, old: Node, dst: str, replace: bool) -> None:
        if not replace:
            raise PathError(ERR_EXISTS.format(dst))
        if node.kind == DIR and old.kind != DIR:
            raise PathError(ERR_NOT_DIR.format(dst))
        if node.kind == FILE and old.kind == DIR:
            raise PathError(ERR_IS_DIR.format(dst))
        if old.children:
            raise PathError(ERR_DIR_NOT_EMPTY.format(dst))

    def _delete(self, path: str, recursive: bool, keep_ms: int) -> int:
        chain, name = self._parent_chain(path, W | X)
        parent = chain[-1][1]
        node = parent.children.get(name)
        if node is None:
            raise PathError(ERR_NO_ENTRY.format(canonical(path)))
        if node.children and not recursive:
            raise PathError(ERR_DIR_NOT_EMPTY.format(canonical(path)))
        perms.need_subtree(node, canonical(path), self.caller)
        names, size = usage(node)
        Charges().add(chain, -names, -size).apply()
        del parent.children[name]
        parent.mtime_ms = self.clock_ms
        item = TrashItem(self.next_trash, canonical(path), self.clock_ms,
                         self.clock_ms + int(keep_ms), node)
        self.trash[item.trash_id] = item
        self.next_trash += 1
        return item.trash_id

    def _purge(self) -> int:
        gone = [tid for tid, item in self.trash.items() if item.expires_ms <= self.clock_ms]
        for tid in gone:
            del self.trash[tid]
        return len(gone)

    def _chmod(self, path: str, mode: int) -> None:
        perms.chmod(self.lookup(path, self.caller), self.caller, canonical(path), int(mode))

    def _chown(self, path: str, owner: str | None, group: str | None) -> None:
        perms.chown(self.lookup(path, self.caller), self.caller, canonical(path), owner, group)

    def _setquota(self, path: str, limits: dict[str, int | None]) -> None:
        """A superuser only, as HDFS's dfsadmin -setQuota (dfs/quotas.py's `set_quota`)."""
        if self.caller is not None and not self.caller.superuser:
            raise PathError(perms.ERR_SUPERUSER_ONLY.format("set quotas"))
        set_quota(self._dir(path), limits)

    def _setversions(self, path: str, keep: int) -> None:
        """The versions limit of the files under a directory (its owner or a superuser)."""
        node = self._dir(path)
        perms.need_owner(node, self.caller, canonical(path))
        node.keep_versions = versions.check_keep(keep)

    def _snapshot(self, path: str, name: str, delete: bool) -> None:
        """Take or delete a snapshot of a directory (its owner or a superuser)."""
        node = self._dir(path)
        perms.need_owner(node, self.caller, canonical(path))
        if delete:
            return snapshots.delete(node, name, canonical(path))
        if check_path("/" + name) != [name] or name == snapshots.SNAPSHOT_DIR:
            raise PathError(ERR_BAD_PATH.format(name))
        return snapshots.take(node, name, self.clock_ms, canonical(path))

    def _dir(self, path: str) -> Node:
        node = self.lookup(path, self.caller)
        if node.kind != DIR:
            raise PathError(ERR_NOT_DIR.format(canonical(path)))
        return node

    def _restore(self, path: str, number: int) -> None:
        """Old version `number` of a file becomes current (w on the file)."""
        chain, name = self._parent_chain(path)
        current = self._file(path, self.caller, W)
        chosen = versions.restore(current, int(number), canonical(path))
        chosen.mtime_ms = self.clock_ms
        self._link(chain[-1][1], name, chosen)
        return None

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as one blob (see the module header)."""
        trash = [[item.trash_id, item.path, item.deleted_ms, item.expires_ms,
                  list(flatten(item.node))] for _, item in sorted(self.trash.items())]
        return msgpack.packb({"next_inode": self.next_inode, "next_trash": self.next_trash,
                              "clock_ms": self.clock_ms, "tree": list(flatten(self.root)),
                              "trash": trash, "users": self.users.to_wire(),
                              "released": self.released})

    def restore(self, blob: bytes) -> None:
        """Replace the state with one `snapshot` made."""
        state = msgpack.unpackb(blob)
        self.next_inode = state["next_inode"]
        self.next_trash = state["next_trash"]
        self.clock_ms = state["clock_ms"]
        self.root = unflatten(state["tree"])
        self.trash = {}
        for tid, path, deleted_ms, expires_ms, rows in state["trash"]:
            self.trash[tid] = TrashItem(tid, path, deleted_ms, expires_ms, unflatten(rows))
        self.users = UserTable.from_wire(state.get("users", []))
        self.released = list(state.get("released", []))

