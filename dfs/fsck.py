"""`dfs fsck PATH`: the health of the files under a path, as `hdfs fsck` reports it.

Strategy: a walk of FS.LS and FS.STAT (a stack, no recursion) finds the files; FS.LOCATE
gives each file's chunks and the live replicas the leader knows; a chunk with no replica
is missing (the file cannot be read whole), one with fewer than the target replication
(FS.REPORT's) is under-replicated. Files still being written are counted apart (their
chunks are not complete yet). `check` returns a `Health`; `lines` formats it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEALTHY", "MISSING", "Health", "check", "lines"]

HEALTHY = "Status: HEALTHY"
MISSING = "Status: CORRUPT (missing chunks: some files cannot be read whole)"
UNDER = "{}: chunk {} has {} of {} replicas (under-replicated)"
LOST = "{}: chunk {} has no live replica (MISSING)"


@dataclass
class Health:
    """What `check` found under a path."""

    replication: int
    files: int = 0
    directories: int = 0
    open_files: int = 0
    chunks: int = 0
    bytes: int = 0
    under: list[tuple[str, int, int]] = field(default_factory=list)  # path, chunk, replicas
    missing: list[tuple[str, int]] = field(default_factory=list)  # path, chunk

    @property
    def healthy(self) -> bool:
        """True when no chunk is missing (under-replicated chunks are being repaired)."""
        return not self.missing


def _check_file(fs: Any, path: str, health: Health) -> None:
    size, complete, rows = fs.locate(path)
    if not int(complete):
        health.open_files += 1
        return
    health.files += 1
    health.bytes += int(size)
    for chunk, _version, _size, servers in rows:
        health.chunks += 1
        if not servers:
            health.missing.append((path, int(chunk)))
        elif len(servers) < health.replication:
            health.under.append((path, int(chunk), len(servers)))


def check(fs: Any, path: str, progress: Callable[[int], None] | None = None) -> Health:
    """Walk `path` (a file or a directory) with the client `fs`; `progress(files seen)`
    after each file."""
    health = Health(int(fs.report()["replication"]))
    todo = [path]
    while todo:
        current = todo.pop()
        if fs.stat(current)["type"] == "dir":
            health.directories += 1
            todo += [posixpath.join(current, n.rstrip("/")) for n in fs.ls(current)]
            continue
        _check_file(fs, current, health)
        if progress is not None:
            progress(health.files + health.open_files)
    return health


def lines(health: Health, path: str) -> list[str]:
    """The report: one line per damaged chunk, then the totals and the status."""
    out = [LOST.format(p, c) for p, c in health.missing]
    out += [UNDER.format(p, c, n, health.replication) for p, c, n in health.under]
    out += [f"fsck of {path}",
            f"  directories: {health.directories}",
            f"  files: {health.files} ({health.bytes} bytes)",
            f"  files being written: {health.open_files}",
            f"  chunks: {health.chunks}",
            f"  under-replicated chunks: {len(health.under)}",
            f"  missing chunks: {len(health.missing)}",
            HEALTHY if health.healthy else MISSING]
    return out
