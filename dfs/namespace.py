"""The dfs masters' namespace, sans I/O: a deterministic state machine the Raft log drives.

Strategy: the tree lives in memory as `Node`s (a directory holds its children by name), so
a rename moves a whole subtree by relinking one node. Every change is a log entry, msgpack
[op, now_ms, *args] (see the `encode_*` functions): the node that builds the entry stamps
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
A snapshot is the tree in pre-order as a flat list (no recursion, however deep the tree).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "DIR", "ERR_BAD_ENTRY", "ERR_BAD_PATH", "ERR_DIR_NOT_EMPTY", "ERR_EXISTS",
    "ERR_INTO_ITSELF", "ERR_IS_DIR", "ERR_NOT_DIR", "ERR_NO_ENTRY", "ERR_ROOT", "FILE",
    "MAX_NAME", "MAX_PATH", "Namespace", "Node", "TrashItem", "check_path", "encode_create",
    "encode_delete", "encode_mkdir", "encode_purge", "encode_rename",
]

DIR = "dir"
FILE = "file"
MAX_PATH = 4096  # bytes of a path, as Linux's PATH_MAX
MAX_NAME = 255  # bytes of one name, as Linux's NAME_MAX
ROOT_INODE = 1

ERR_NO_ENTRY = "ERR no such file or directory '{}'"
ERR_EXISTS = "ERR already exists '{}'"
ERR_NOT_DIR = "ERR not a directory '{}'"
ERR_IS_DIR = "ERR is a directory '{}'"
ERR_DIR_NOT_EMPTY = "ERR directory not empty '{}'"
ERR_BAD_PATH = "ERR invalid path '{}': absolute, no empty, '.' or '..' names"
ERR_INTO_ITSELF = "ERR cannot move '{}' into itself or its own subtree '{}'"
ERR_ROOT = "ERR the root '/' cannot be renamed or deleted"
ERR_BAD_ENTRY = "ERR bad namespace entry: {!r}"

OP_MKDIR = "mkdir"
OP_CREATE = "create"
OP_RENAME = "rename"
OP_DELETE = "delete"
OP_PURGE = "purge"


class PathError(ValueError):
    """A refused operation; its text is the error reply."""


@dataclass
class Node:
    """A directory (children by name) or a file (size, chunk list: empty in this slice)."""

    kind: str
    inode: int
    ctime_ms: int
    mtime_ms: int
    size: int = 0
    chunks: list[Any] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)

    def stat(self) -> dict[str, Any]:
        """FS.STAT's reply for this node."""
        out: dict[str, Any] = {"type": self.kind, "inode": self.inode, "size": self.size,
                               "ctime_ms": self.ctime_ms, "mtime_ms": self.mtime_ms}
        if self.kind == DIR:
            out["children"] = len(self.children)
        else:
            out["chunks"] = list(self.chunks)
        return out


@dataclass
class TrashItem:
    """A deleted subtree: where it was, when, and when it may be purged."""

    trash_id: int
    path: str
    deleted_ms: int
    expires_ms: int
    node: Node

    def listing(self) -> list[Any]:
        """FS.TRASH's row: [id, original path, type, deleted_ms, expires_ms]."""
        return [self.trash_id, self.path, self.node.kind, self.deleted_ms, self.expires_ms]


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


def encode_create(now_ms: int, path: str) -> bytes:
    return msgpack.packb([OP_CREATE, now_ms, path])


def encode_rename(now_ms: int, src: str, dst: str, replace: bool) -> bytes:
    return msgpack.packb([OP_RENAME, now_ms, src, dst, replace])


def encode_delete(now_ms: int, path: str, recursive: bool, keep_ms: int) -> bytes:
    """Delete `path` to the trash, purgeable `keep_ms` after the delete."""
    return msgpack.packb([OP_DELETE, now_ms, path, recursive, keep_ms])


def encode_purge(now_ms: int) -> bytes:
    """Drop the trash items whose expiry is at or before `now_ms` (the leader proposes it)."""
    return msgpack.packb([OP_PURGE, now_ms])


class Namespace:
    """The tree, the trash and the counters; `apply`, `snapshot`, `restore` are the Raft
    driver's hooks (core/service_machine.py's StateMachine), the rest are local reads."""

    def __init__(self) -> None:
        self.root = Node(DIR, ROOT_INODE, 0, 0)
        self.next_inode = ROOT_INODE + 1
        self.trash: dict[int, TrashItem] = {}
        self.next_trash = 1
        self.clock_ms = 0

    # -- reads ----------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """The node at `path`; PathError (no such entry, not a directory) otherwise."""
        node = self.root
        names = check_path(path)
        for i, name in enumerate(names):
            if node.kind != DIR:
                raise PathError(ERR_NOT_DIR.format("/" + "/".join(names[:i])))
            child = node.children.get(name)
            if child is None:
                raise PathError(ERR_NO_ENTRY.format(canonical(path)))
            node = child
        return node

    def ls(self, path: str) -> list[str]:
        """FS.LS: a directory's names sorted, directories ending in `/`; a file: its name."""
        node = self.lookup(path)
        if node.kind == FILE:
            return [check_path(path)[-1]]
        return [name + ("/" if child.kind == DIR else "")
                for name, child in sorted(node.children.items())]

    def stat(self, path: str) -> dict[str, Any]:
        """FS.STAT: the node's fields (see Node.stat)."""
        return self.lookup(path).stat()

    def trash_listing(self) -> list[list[Any]]:
        """FS.TRASH: every trash item's row, oldest first."""
        return [item.listing() for _, item in sorted(self.trash.items())]

    def expired(self, now_ms: int) -> bool:
        """True when some trash item expires at or before `now_ms` (a purge is due)."""
        return any(item.expires_ms <= now_ms for item in self.trash.values())

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """One result per entry: a reply value, or an error text."""
        return [self.apply_one(data) for _, data in entries]

    def apply_one(self, data: bytes) -> Any:
        """Apply one entry (see the module header); its reply or error text."""
        try:
            op, now_ms, *args = msgpack.unpackb(data)
            self.clock_ms = max(self.clock_ms, int(now_ms))
            handler = {OP_MKDIR: self._mkdir, OP_CREATE: self._create, OP_RENAME: self._rename,
                       OP_DELETE: self._delete, OP_PURGE: self._purge}[op]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            return ERR_BAD_ENTRY.format(exc)
        try:
            return handler(*args)
        except PathError as exc:
            return str(exc)

    def _new(self, kind: str) -> Node:
        node = Node(kind, self.next_inode, self.clock_ms, self.clock_ms)
        self.next_inode += 1
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        """The directory that holds (or would hold) `path`, and the last name."""
        names = check_path(path)
        if not names:
            raise PathError(ERR_ROOT)
        parent = self.lookup("/" + "/".join(names[:-1]))
        if parent.kind != DIR:
            raise PathError(ERR_NOT_DIR.format("/" + "/".join(names[:-1])))
        return parent, names[-1]

    def _link(self, parent: Node, name: str, node: Node) -> None:
        parent.children[name] = node
        parent.mtime_ms = self.clock_ms

    def _mkdir(self, path: str, parents: bool) -> None:
        if parents:
            return self._mkdir_parents(path)
        if not check_path(path):
            raise PathError(ERR_EXISTS.format("/"))
        parent, name = self._parent(path)
        if name in parent.children:
            raise PathError(ERR_EXISTS.format(canonical(path)))
        self._link(parent, name, self._new(DIR))
        return None

    def _mkdir_parents(self, path: str) -> None:
        """mkdir -p: create what is missing; an existing directory is fine."""
        node = self.root
        names = check_path(path)
        for i, name in enumerate(names):
            child = node.children.get(name)
            if child is None:
                child = self._new(DIR)
                self._link(node, name, child)
            elif child.kind != DIR:
                raise PathError(ERR_NOT_DIR.format("/" + "/".join(names[:i + 1])))
            node = child
        return None

    def _create(self, path: str) -> None:
        parent, name = self._parent(path)
        if name in parent.children:
            raise PathError(ERR_EXISTS.format(canonical(path)))
        self._link(parent, name, self._new(FILE))
        return None

    def _rename(self, src: str, dst: str, replace: bool) -> None:
        src_names, dst_names = check_path(src), check_path(dst)
        if not src_names:
            raise PathError(ERR_ROOT)
        node = self.lookup(src)
        if dst_names[:len(src_names)] == src_names:
            raise PathError(ERR_INTO_ITSELF.format(canonical(src), canonical(dst)))
        new_parent, new_name = self._parent(dst)
        old = new_parent.children.get(new_name)
        if old is not None:
            self._check_replace(node, old, canonical(dst), replace)
        old_parent, old_name = self._parent(src)
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
        parent, name = self._parent(path)
        node = parent.children.get(name)
        if node is None:
            raise PathError(ERR_NO_ENTRY.format(canonical(path)))
        if node.children and not recursive:
            raise PathError(ERR_DIR_NOT_EMPTY.format(canonical(path)))
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

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as one blob (see the module header)."""
        trash = [[item.trash_id, item.path, item.deleted_ms, item.expires_ms,
                  list(_flatten(item.node))] for _, item in sorted(self.trash.items())]
        return msgpack.packb({"next_inode": self.next_inode, "next_trash": self.next_trash,
                              "clock_ms": self.clock_ms, "tree": list(_flatten(self.root)),
                              "trash": trash})

    def restore(self, blob: bytes) -> None:
        """Replace the state with one `snapshot` made."""
        state = msgpack.unpackb(blob)
        self.next_inode = state["next_inode"]
        self.next_trash = state["next_trash"]
        self.clock_ms = state["clock_ms"]
        self.root = _unflatten(state["tree"])
        self.trash = {}
        for tid, path, deleted_ms, expires_ms, rows in state["trash"]:
            self.trash[tid] = TrashItem(tid, path, deleted_ms, expires_ms, _unflatten(rows))


def _flatten(top: Node) -> Iterator[list[Any]]:
    """Pre-order rows [depth, name, kind, inode, ctime, mtime, size, chunks] of a subtree."""
    stack: list[tuple[int, str, Node]] = [(0, "", top)]
    while stack:
        depth, name, node = stack.pop()
        yield [depth, name, node.kind, node.inode, node.ctime_ms, node.mtime_ms, node.size,
               node.chunks]
        for child_name, child in sorted(node.children.items(), reverse=True):
            stack.append((depth + 1, child_name, child))


def _unflatten(rows: list[list[Any]]) -> Node:
    """The subtree `_flatten` wrote."""
    path: list[Node] = []
    for depth, name, kind, inode, ctime, mtime, size, chunks in rows:
        node = Node(kind, inode, ctime, mtime, size, list(chunks))
        del path[depth:]
        if path:
            path[-1].children[name] = node
        path.append(node)
    return path[0]
