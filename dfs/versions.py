"""dfs file versions, sans I/O: an overwrite keeps the replaced file as an old version.

Strategy: a version is a whole file node of its own (its own inode, so the chunk table,
keyed by inode, keeps each version's chunks apart). The current node of a path holds the
older ones in `versions`, oldest first, each with its `version` number (1 for the file's
first content, then one more than the highest so far). An overwrite gives the path a new
empty node that takes over the versions list and the path's owner, group and mode; the
versions past the limit of the nearest directory that sets one (FS.SETVERSIONS; else
DEFAULT_KEEP_VERSIONS) are dropped, oldest first, and returned so the namespace can release
their inodes. A restore swaps: the chosen version becomes the path's node again (keeping
its number and inode) and the node it replaces joins the versions, so nothing is lost.
A file renamed over a file (FS.RENAME ... REPLACE, which is how a client commits a write)
supersedes it the same way: the replaced file becomes the newest old version.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["DEFAULT_KEEP_VERSIONS", "ERR_BAD_KEEP", "ERR_NO_VERSION", "MAX_KEEP_VERSIONS",
           "check_keep", "history", "keep_limit", "listing", "overwrite", "restore",
           "supersede", "trim"]

DEFAULT_KEEP_VERSIONS = 3  # old versions a file keeps where no directory says otherwise
MAX_KEEP_VERSIONS = 1000
ERR_NO_VERSION = "ERR '{}' has no old version {}"
ERR_BAD_KEEP = "ERR the versions to keep must be a whole number from 0 to 1000"


class Versioned(Protocol):
    """The node fields versions read and write (dfs.namespace.Node)."""

    inode: int
    mtime_ms: int
    size: int
    owner: str
    group: str
    mode: int
    version: int
    versions: list[Any]
    keep_versions: int | None


def check_keep(keep: int) -> int:
    """`keep` when it is a valid versions limit; ValueError(ERR_BAD_KEEP) otherwise."""
    if not isinstance(keep, int) or not 0 <= keep <= MAX_KEEP_VERSIONS:
        raise ValueError(ERR_BAD_KEEP)
    return keep


def keep_limit(dirs: list[Any]) -> int:
    """The versions limit for a file in the last of `dirs` (root first): the nearest
    directory's FS.SETVERSIONS, else DEFAULT_KEEP_VERSIONS."""
    for node in reversed(dirs):
        if node.keep_versions is not None:
            return int(node.keep_versions)
    return DEFAULT_KEEP_VERSIONS


def trim(node: Versioned, keep: int) -> list[Any]:
    """Drop the oldest versions past `keep`; the dropped nodes."""
    extra = max(0, len(node.versions) - keep)
    dropped, node.versions = node.versions[:extra], node.versions[extra:]
    return dropped


def overwrite(old: Versioned, new: Versioned, keep: int) -> list[Any]:
    """`new` (a fresh empty file node) takes `old`'s place: the next number, old's owner,
    group and mode, old's versions with old itself last; the versions dropped past `keep`."""
    new.version = max([old.version, *(v.version for v in old.versions)]) + 1
    new.owner, new.group, new.mode = old.owner, old.group, old.mode
    new.versions = [*old.versions, old]
    old.versions = []
    return trim(new, keep)


def history(old: Versioned, new: Versioned) -> list[Any]:
    """The old versions `new` will have once it replaces `old` by a rename, oldest first:
    old's versions, old itself, then new's own old versions. Changes nothing."""
    return [*old.versions, old, *sorted(new.versions, key=lambda v: v.version)]


def supersede(old: Versioned, new: Versioned, olds: list[Any], keep: int) -> list[Any]:
    """`new` (renamed over `old`) takes `olds` (from `history`) as its old versions, new's
    own renumbered after old's, and the next number; the versions dropped past `keep`.
    `new` keeps its own owner, group and mode."""
    top = max(v.version for v in [*old.versions, old])
    for at, v in enumerate(olds[len(old.versions) + 1:], start=1):
        v.version = top + at
    new.version = max(v.version for v in olds) + 1
    new.versions = olds
    old.versions = []
    return trim(new, keep)


def restore(current: Versioned, number: int, path: str) -> Any:
    """The old version `number` of `current` made current again (returned): it takes the
    versions list with `current` in it, and the path's owner, group and mode.
    ValueError(ERR_NO_VERSION) when there is no such old version."""
    at = next((i for i, v in enumerate(current.versions) if v.version == number), None)
    if at is None:
        raise ValueError(ERR_NO_VERSION.format(path, number))
    chosen = current.versions.pop(at)
    chosen.owner, chosen.group, chosen.mode = current.owner, current.group, current.mode
    chosen.versions = sorted([*current.versions, current], key=lambda v: v.version)
    current.versions = []
    return chosen


def listing(current: Versioned) -> list[list[Any]]:
    """FS.VERSIONS' rows, highest number first: [version, mtime_ms, size, inode, current?]
    (current? is 1 for the path's current content, 0 for an old version)."""
    rows = [[v.version, v.mtime_ms, v.size, v.inode, 0] for v in current.versions]
    rows.append([current.version, current.mtime_ms, current.size, current.inode, 1])
    return sorted(rows, key=lambda row: -row[0])
