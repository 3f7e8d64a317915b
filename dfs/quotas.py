"""dfs directory quotas, sans I/O: HDFS's namespace quota (FILES: names under a directory,
itself included) and space quota (BYTES: file data under it).

Strategy: a directory with a quota keeps its usage beside its limits (`Quota`), counted once
when the quota is set (a walk of its subtree) and then moved by deltas: every change the
namespace makes passes the changed amounts for the directories above it to `Charges`, which
first checks every directory that would grow against its limits (a refusal changes nothing)
and then applies all the deltas. Shrinking is never refused, so a quota set below the usage
only stops growth, as in HDFS.

What counts: a directory and a file are one name each; an old version of a file (dfs/
versions.py) is one more name and its bytes; bytes are a file's size as its chunk table
reports it, not multiplied by the replication (unlike HDFS's space quota). The trash counts
against nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ERR_BAD_QUOTA", "ERR_QUOTA", "MAX_QUOTA", "Charges", "Quota", "count",
           "parse_quota_args", "set_quota", "usage"]

MAX_QUOTA = 2**63 - 1
ERR_QUOTA = ("ERR quota exceeded: the {} quota of '{}' is {}, {} used, {} more asked")
ERR_BAD_QUOTA = ("ERR syntax: FS.SETQUOTA path [FILES n|NONE] [BYTES n|NONE], "
                 "n a whole number >= 1")
FILES, BYTES = "FILES", "BYTES"


class Counted(Protocol):
    """The node fields usage reads (dfs.namespace.Node)."""

    kind: str
    size: int
    children: dict[str, Any]
    versions: list[Any]
    quota: Quota | None


@dataclass
class Quota:
    """A directory's limits (None: no limit) and what is used under it now."""

    files: int | None = None
    bytes: int | None = None
    used_files: int = 0
    used_bytes: int = 0

    def to_wire(self) -> list[Any]:
        return [self.files, self.bytes, self.used_files, self.used_bytes]

    @classmethod
    def from_wire(cls, row: list[Any]) -> Quota:
        return cls(*row)


def usage(top: Counted) -> tuple[int, int]:
    """(names, bytes) under `top`, itself and every old version included; no recursion."""
    names = size = 0
    stack = [top]
    while stack:
        node = stack.pop()
        names += 1 + len(node.versions)
        size += node.size + sum(v.size for v in node.versions)
        stack.extend(node.children.values())
    return names, size


def count(top: Counted) -> dict[str, Any]:
    """FS.COUNT's reply for `top`, as `hdfs dfs -count -q`: directories, files and bytes
    under it (old versions included), its quotas and what remains (None: no quota)."""
    dirs = files = size = 0
    stack = [top]
    while stack:
        node = stack.pop()
        dirs += node.kind == "dir"
        files += (node.kind != "dir") * (1 + len(node.versions))
        size += node.size + sum(v.size for v in node.versions)
        stack.extend(node.children.values())
    quota = top.quota or Quota()
    return {"dirs": dirs, "files": files, "bytes": size,
            "quota_files": quota.files, "remaining_files": _left(quota.files, dirs + files),
            "quota_bytes": quota.bytes, "remaining_bytes": _left(quota.bytes, size)}


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else limit - used


def set_quota(node: Counted, limits: dict[str, int | None]) -> None:
    """Set a directory's FILES and/or BYTES limits (as `parse_quota_args` returns them),
    counting its usage when it had no quota; with no limit left it has no quota."""
    quota = node.quota or Quota(None, None, *usage(node))
    quota.files = limits.get(FILES, quota.files)
    quota.bytes = limits.get(BYTES, quota.bytes)
    node.quota = quota if (quota.files, quota.bytes) != (None, None) else None


class Charges:
    """Deltas of (names, bytes) for the quota directories above a change: `check` them all,
    then `apply` them all, so a refused change leaves every usage as it was."""

    def __init__(self) -> None:
        self._deltas: dict[int, list[Any]] = {}

    def add(self, chain: Iterable[tuple[str, Counted]], names: int, size: int) -> Charges:
        """Charge (names, size) to every directory of `chain` ((path, node) pairs) that has
        a quota."""
        for path, node in chain:
            if node.quota is not None:
                row = self._deltas.setdefault(id(node), [node, 0, 0, path])
                row[1] += names
                row[2] += size
        return self

    def check(self) -> None:
        """ValueError(ERR_QUOTA) when a growing directory would pass one of its limits."""
        for node, names, size, where in self._deltas.values():
            quota: Quota = node.quota
            if names > 0 and quota.files is not None and quota.used_files + names > quota.files:
                raise ValueError(ERR_QUOTA.format("file count", where, quota.files,
                                                  quota.used_files, names))
            if size > 0 and quota.bytes is not None and quota.used_bytes + size > quota.bytes:
                raise ValueError(ERR_QUOTA.format("space", where, quota.bytes,
                                                  quota.used_bytes, size))

    def apply(self) -> None:
        """Move every directory's usage by its delta."""
        for node, names, size, _ in self._deltas.values():
            node.quota.used_files += names
            node.quota.used_bytes += size


def parse_quota_args(words: list[str]) -> dict[str, int | None]:
    """FS.SETQUOTA's options after the path: {"FILES": n or None, "BYTES": n or None} for
    the ones given (NONE clears a limit); ValueError(ERR_BAD_QUOTA) on anything else."""
    if not words or len(words) % 2:
        raise ValueError(ERR_BAD_QUOTA)
    out: dict[str, int | None] = {}
    for at in range(0, len(words), 2):
        key, raw = words[at].upper(), words[at + 1]
        if key not in (FILES, BYTES) or key in out:
            raise ValueError(ERR_BAD_QUOTA)
        if raw.upper() == "NONE":
            out[key] = None
        elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_QUOTA:
            out[key] = int(raw)
        else:
            raise ValueError(ERR_BAD_QUOTA)
    return out
