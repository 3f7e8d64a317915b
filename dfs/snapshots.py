"""dfs directory snapshots, sans I/O: FS.SNAPSHOT dir name freezes a directory's subtree,
read back under `dir/.snapshot/name/...`, as HDFS names them.

Strategy: a snapshot copies the subtree's metadata (names, owners, modes, sizes, times) once,
when it is taken, and shares the files' data: a copied file keeps its inode, so the chunk
table's chunks of that inode are the snapshot's chunks too. Files are written once (a
change is an overwrite, which gives the path a new inode), so the shared chunks never change
under a snapshot; the namespace counts a snapshot's inodes as live, so their chunks outlive
a delete or an overwrite in the tree until the snapshot is deleted. Snapshots are read-only
and count against no quota. `.snapshot` is a reserved name in every directory.
"""

from __future__ import annotations

from typing import Any

from dfs.nodes import DIR, Node, Snapshot

__all__ = ["ERR_NO_SNAPSHOT", "ERR_READ_ONLY", "ERR_RESERVED", "ERR_SNAPSHOT_EXISTS",
           "ERR_TOO_MANY", "MAX_SNAPSHOTS", "SNAPSHOT_DIR", "copy_tree", "delete", "listing",
           "take", "view"]

SNAPSHOT_DIR = ".snapshot"
MAX_SNAPSHOTS = 65536  # per directory, as HDFS's limit
ERR_SNAPSHOT_EXISTS = "ERR snapshot '{}' of '{}' already exists"
ERR_NO_SNAPSHOT = "ERR '{}' has no snapshot '{}'"
ERR_READ_ONLY = "ERR '{}' is in a snapshot: snapshots are read-only"
ERR_RESERVED = "ERR '.snapshot' is a reserved name"
ERR_TOO_MANY = "ERR '{}' has 65536 snapshots: delete one first"


def copy_tree(top: Node) -> Node:
    """A copy of `top`'s subtree: every node's metadata, the files' inodes and chunk lists
    (shared data); no quotas, old versions or snapshots. No recursion."""
    copy = _copy_one(top)
    stack = [(top, copy)]
    while stack:
        source, target = stack.pop()
        for name, child in source.children.items():
            twin = _copy_one(child)
            target.children[name] = twin
            stack.append((child, twin))
    return copy


def _copy_one(node: Node) -> Node:
    return Node(node.kind, node.inode, node.ctime_ms, node.mtime_ms, node.size,
                list(node.chunks), owner=node.owner, group=node.group, mode=node.mode,
                version=node.version)


def take(directory: Node, name: str, now_ms: int, path: str) -> None:
    """Snapshot `directory` (at `path`) as `name`; ValueError when the name is taken or the
    directory has MAX_SNAPSHOTS already."""
    if name in directory.snapshots:
        raise ValueError(ERR_SNAPSHOT_EXISTS.format(name, path))
    if len(directory.snapshots) >= MAX_SNAPSHOTS:
        raise ValueError(ERR_TOO_MANY.format(path))
    directory.snapshots[name] = Snapshot(name, now_ms, copy_tree(directory))


def delete(directory: Node, name: str, path: str) -> None:
    """Drop snapshot `name` of `directory` (its files' chunks go unless still held)."""
    if directory.snapshots.pop(name, None) is None:
        raise ValueError(ERR_NO_SNAPSHOT.format(path, name))


def listing(directory: Node) -> list[list[Any]]:
    """FS.SNAPSHOTS' rows, oldest first: [name, ctime_ms]."""
    return [[s.name, s.ctime_ms] for s in sorted(directory.snapshots.values(),
                                                 key=lambda s: (s.ctime_ms, s.name))]


def view(directory: Node) -> Node:
    """The read-only `.snapshot` directory of `directory`: one entry per snapshot."""
    return Node(DIR, directory.inode, directory.ctime_ms, directory.mtime_ms,
                children={s.name: s.root for s in directory.snapshots.values()},
                owner=directory.owner, group=directory.group, mode=directory.mode)
