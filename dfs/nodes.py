"""The dfs namespace's nodes and their snapshot rows, sans I/O (dfs/namespace.py applies the
changes; this module only holds the data).

Strategy: a `Node` is a directory (children by name) or a file (size, chunk list), with the
owner, group and mode every node has (dfs/perms.py), a directory's quota and versions limit
(dfs/quotas.py, dfs/versions.py) and snapshots (dfs/snapshots.py), and a file's version
number and old versions. A subtree is saved as pre-order rows [depth, name, kind, inode,
ctime, mtime, size, chunks, meta] (no recursion, however deep the tree); meta is [owner,
group, mode, quota, keep_versions, version, old versions as [inode, ctime, mtime, size,
chunks, version], snapshots as [name, ctime, rows]] (a snapshot's copy holds no snapshots,
so that nests one level only). A row without meta (a Raft snapshot from before permissions)
restores as root's node with the default mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dfs import perms
from dfs.perms import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, ROOT_USER, SUPERGROUP
from dfs.quotas import Quota

__all__ = ["DIR", "FILE", "Node", "Snapshot", "TrashItem", "flatten", "unflatten"]

DIR = "dir"
FILE = "file"


@dataclass
class Node:
    """A directory (children by name) or a file (size, chunk list). Every node has an owner,
    a group and a mode (dfs/perms.py); a directory may have a quota (dfs/quotas.py) and a
    versions limit, a file has its version number and its old versions (dfs/versions.py)."""

    kind: str
    inode: int
    ctime_ms: int
    mtime_ms: int
    size: int = 0
    chunks: list[Any] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)
    owner: str = ROOT_USER
    group: str = SUPERGROUP
    mode: int = DEFAULT_DIR_MODE
    quota: Quota | None = None
    keep_versions: int | None = None
    version: int = 1
    versions: list[Node] = field(default_factory=list)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)

    def stat(self) -> dict[str, Any]:
        """FS.STAT's reply for this node."""
        out: dict[str, Any] = {"type": self.kind, "inode": self.inode, "size": self.size,
                               "ctime_ms": self.ctime_ms, "mtime_ms": self.mtime_ms,
                               "owner": self.owner, "group": self.group,
                               "permission": perms.mode_string(self.kind == DIR, self.mode)}
        if self.kind == DIR:
            out["children"] = len(self.children)
        else:
            out["chunks"] = list(self.chunks)
            out["version"] = self.version
            out["versions"] = len(self.versions)
        return out


@dataclass
class Snapshot:
    """One snapshot of a directory (dfs/snapshots.py): its name, when it was taken, and the
    frozen copy of the subtree."""

    name: str
    ctime_ms: int
    root: Node


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


def _meta(node: Node) -> list[Any]:
    return [node.owner, node.group, node.mode,
            None if node.quota is None else node.quota.to_wire(), node.keep_versions,
            node.version, [[v.inode, v.ctime_ms, v.mtime_ms, v.size, v.chunks, v.version]
                           for v in node.versions],
            [[s.name, s.ctime_ms, list(flatten(s.root))] for s in node.snapshots.values()]]


def _set_meta(node: Node, meta: list[Any]) -> None:
    owner, group, mode, quota, keep, version, olds, *more = meta
    node.owner, node.group, node.mode = owner, group, mode
    node.quota = None if quota is None else Quota.from_wire(quota)
    node.keep_versions, node.version = keep, version
    node.versions = [Node(FILE, inode, ctime, mtime, size, list(chunks), owner=owner,
                          group=group, mode=mode, version=number)
                     for inode, ctime, mtime, size, chunks, number in olds]
    for name, ctime, rows in more[0] if more else ():
        node.snapshots[name] = Snapshot(name, ctime, unflatten(rows))


def flatten(top: Node) -> Iterator[list[Any]]:
    """Pre-order rows of a subtree (see the module header)."""
    stack: list[tuple[int, str, Node]] = [(0, "", top)]
    while stack:
        depth, name, node = stack.pop()
        yield [depth, name, node.kind, node.inode, node.ctime_ms, node.mtime_ms, node.size,
               node.chunks, _meta(node)]
        for child_name, child in sorted(node.children.items(), reverse=True):
            stack.append((depth + 1, child_name, child))


def unflatten(rows: list[list[Any]]) -> Node:
    """The subtree `flatten` wrote."""
    path: list[Node] = []
    for depth, name, kind, inode, ctime, mtime, size, chunks, *meta in rows:
        node = Node(kind, inode, ctime, mtime, size, list(chunks))
        if meta:
            _set_meta(node, meta[0])
        elif kind == FILE:
            node.mode = DEFAULT_FILE_MODE
        del path[depth:]
        if path:
            path[-1].children[name] = node
        path.append(node)
    return path[0]
