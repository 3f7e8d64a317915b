"""The masters' chunk table, sans I/O: which chunks make each file, and their versions and
sizes; replicated by the same Raft log as the namespace (dfs/namespace.py).

Strategy: the table sits beside the namespace in `MasterMachine`, the state machine the
master hands its service. Entries are msgpack [op, now_ms, *args] like the namespace's; the
ops of this table start with "chunk." and go here, every other entry to the namespace.
The table reads the namespace (a path's file node and its inode); the one thing it writes
there is a complete file's size and chunk ids on its node (so FS.STAT shows them).

- `chunk.alloc path index`: the file's chunk number `index`. The next one (index == the
  number of chunks so far) gets a new chunk id at version 1; an existing one (a write that
  failed and is retried) gets its version bumped, so replicas written under the old version
  are recognised as stale wherever they come back. A complete file takes no allocation.
  Reply: [chunk id, version].
- `chunk.complete path sizes`: the file's chunks all written; their sizes. Reply: the size.
- `chunk.forget inodes`: drop the chunk lists of files that are gone from the namespace
  (the leader proposes it: see `dead_inodes`); their chunks become orphans that the chunk
  servers are told to delete.
- `chunk.decommission node on`: mark (on) or unmark a chunk server (its id or address) as
  decommissioning: the leader places no new chunk on it and drains it
  (dfs/chunk_placement.py). Reply: the number of marked servers.

Where chunks are (their replicas' servers) is not here: the leader rebuilds it from the
chunk servers' reports (dfs/chunk_placement.py). A snapshot is the table as a msgpack map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dfs import namespace as ns
from dfs.namespace import Namespace, Node, PathError

__all__ = [
    "ERR_BAD_INDEX", "ERR_COMPLETE", "ERR_SIZES", "ChunkMeta", "ChunkTable", "FileChunks",
    "MasterMachine", "WRITING_SUFFIX", "dead_inodes", "encode_alloc", "encode_complete",
    "encode_decommission", "encode_forget", "is_chunk_entry", "writing_files",
]

WRITING_SUFFIX = "._COPYING_"  # the name dfs.client writes a file under until its close
OP_ALLOC = "chunk.alloc"
OP_COMPLETE = "chunk.complete"
OP_FORGET = "chunk.forget"
OP_DECOMMISSION = "chunk.decommission"
PREFIX = b"chunk."

ERR_COMPLETE = "ERR file '{}' is complete: its chunks cannot change"
ERR_BAD_INDEX = "ERR file '{}' has {} chunks: chunk {} cannot be allocated"
ERR_SIZES = "ERR file '{}' has {} chunks, {} sizes given"


def encode_alloc(now_ms: int, path: str, index: int) -> bytes:
    return msgpack.packb([OP_ALLOC, now_ms, path, index])


def encode_complete(now_ms: int, path: str, sizes: Sequence[int]) -> bytes:
    return msgpack.packb([OP_COMPLETE, now_ms, path, list(sizes)])


def encode_forget(now_ms: int, inodes: Sequence[int]) -> bytes:
    return msgpack.packb([OP_FORGET, now_ms, list(inodes)])


def encode_decommission(now_ms: int, node: str, on: bool) -> bytes:
    return msgpack.packb([OP_DECOMMISSION, now_ms, node, on])


def is_chunk_entry(data: bytes) -> bool:
    """True for an entry of this table (its op, the msgpack array's first string, starts
    with "chunk.")."""
    return PREFIX in data[:16] and msgpack.unpackb(data)[0].startswith("chunk.")


@dataclass
class ChunkMeta:
    """One chunk: the file (inode) and place it belongs to, its version and size."""

    chunk: int
    inode: int
    index: int
    version: int
    size: int = 0


@dataclass
class FileChunks:
    """A file's chunk ids in order, and whether it is complete (closed)."""

    chunks: list[int] = field(default_factory=list)
    complete: bool = False


class ChunkTable:
    """The table (see the module header); `apply_one`, `snapshot` and `restore` are called
    by `MasterMachine`, the rest are local reads."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.files: dict[int, FileChunks] = {}
        self.chunks: dict[int, ChunkMeta] = {}
        self.next_chunk = 1
        self.decommissioning: set[str] = set()  # chunk server ids or addresses
        # chunks dropped or given a new version since the leader's live view last looked
        # (Placement.recheck): their replicas are no longer reported again and again, so
        # the leader rechecks these; a follower empties it (a leader starts from reports)
        self.changed: set[int] = set()

    # -- reads ------------------------------------------------------------------------------

    def file_of(self, path: str) -> tuple[Node, FileChunks]:
        """The file node at `path` and its chunks (empty if none yet); PathError if the
        path is not a file."""
        node = self.namespace.lookup(path)
        if node.kind != ns.FILE:
            raise PathError(ns.ERR_IS_DIR.format(ns.canonical(path)))
        return node, self.files.get(node.inode) or FileChunks()

    def file_size(self, inode: int) -> int:
        """The bytes of a file's chunks."""
        entry = self.files.get(inode)
        return sum(self.chunks[c].size for c in entry.chunks) if entry else 0

    def sealed_chunks(self) -> Iterator[ChunkMeta]:
        """The chunks of complete files (those that must be on every replica)."""
        for entry in self.files.values():
            if entry.complete:
                for chunk in entry.chunks:
                    yield self.chunks[chunk]

    # -- apply ------------------------------------------------------------------------------

    def apply_one(self, data: bytes) -> Any:
        """Apply one chunk entry; its reply or error text."""
        try:
            op, now_ms, *args = msgpack.unpackb(data)
            self.namespace.clock_ms = max(self.namespace.clock_ms, int(now_ms))
            handler = {OP_ALLOC: self._alloc, OP_COMPLETE: self._complete,
                       OP_FORGET: self._forget, OP_DECOMMISSION: self._decommission}[op]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            return ns.ERR_BAD_ENTRY.format(exc)
        try:
            return handler(*args)
        except PathError as exc:
            return str(exc)

    def _alloc(self, path: str, index: int) -> list[int]:
        node, entry = self.file_of(path)
        if entry.complete:
            raise PathError(ERR_COMPLETE.format(ns.canonical(path)))
        if index < len(entry.chunks):
            meta = self.chunks[entry.chunks[index]]
            meta.version += 1
            self.changed.add(meta.chunk)
            meta.size = 0
            return [meta.chunk, meta.version]
        if index != len(entry.chunks):
            raise PathError(ERR_BAD_INDEX.format(ns.canonical(path), len(entry.chunks), index))
        meta = ChunkMeta(self.next_chunk, node.inode, index, 1)
        self.next_chunk += 1
        self.chunks[meta.chunk] = meta
        entry.chunks.append(meta.chunk)
        self.files[node.inode] = entry
        return [meta.chunk, meta.version]

    def _complete(self, path: str, sizes: list[int]) -> int:
        node, entry = self.file_of(path)
        if entry.complete:
            raise PathError(ERR_COMPLETE.format(ns.canonical(path)))
        if len(sizes) != len(entry.chunks):
            raise PathError(ERR_SIZES.format(ns.canonical(path), len(entry.chunks), len(sizes)))
        self.namespace.charge(path, sum(int(s) for s in sizes) - node.size)  # quotas may refuse
        for chunk, size in zip(entry.chunks, sizes, strict=True):
            self.chunks[chunk].size = int(size)
        entry.complete = True
        self.files[node.inode] = entry
        node.size = sum(int(s) for s in sizes)
        node.chunks = list(entry.chunks)
        return node.size

    def _forget(self, inodes: list[int]) -> int:
        dropped = 0
        for inode in inodes:
            entry = self.files.pop(int(inode), None)
            for chunk in entry.chunks if entry else ():
                del self.chunks[chunk]
                self.changed.add(chunk)
                dropped += 1
        return dropped

    def _decommission(self, node: str, on: bool) -> int:
        if on:
            self.decommissioning.add(str(node))
        else:
            self.decommissioning.discard(str(node))
        return len(self.decommissioning)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        files = [[inode, entry.complete,
                  [[c, self.chunks[c].version, self.chunks[c].size] for c in entry.chunks]]
                 for inode, entry in sorted(self.files.items())]
        return msgpack.packb({"next_chunk": self.next_chunk, "files": files,
                              "decommissioning": sorted(self.decommissioning)})

    def restore(self, blob: bytes) -> None:
        state = msgpack.unpackb(blob)
        self.next_chunk = state["next_chunk"]
        self.files, self.chunks = {}, {}
        self.decommissioning = set(state.get("decommissioning", ()))
        for inode, complete, rows in state["files"]:
            entry = FileChunks([row[0] for row in rows], complete)
            self.files[inode] = entry
            for index, (chunk, version, size) in enumerate(rows):
                self.chunks[chunk] = ChunkMeta(chunk, inode, index, version, size)


def _live_inodes(namespace: Namespace) -> set[int]:
    """Every inode in the tree or the trash."""
    live: set[int] = set()
    stack = [namespace.root, *(item.node for item in namespace.trash.values())]
    while stack:
        node = stack.pop()
        live.add(node.inode)
        live.update(v.inode for v in node.versions)  # old versions keep their chunks
        stack.extend(node.children.values())
    return live


def writing_files(table: ChunkTable) -> list[tuple[str, int]]:
    """(path, inode) of every file named `*._COPYING_` (WRITING_SUFFIX) that is not complete:
    writes under way, or left by a writer that died before its close."""
    found: list[tuple[str, int]] = []
    stack = [("", table.namespace.root)]
    while stack:
        path, node = stack.pop()
        for name, child in node.children.items():
            if child.kind == ns.DIR:
                stack.append((f"{path}/{name}", child))
            elif name.endswith(WRITING_SUFFIX):
                entry = table.files.get(child.inode)
                if entry is None or not entry.complete:
                    found.append((f"{path}/{name}", child.inode))
    return found


def dead_inodes(table: ChunkTable) -> list[int]:
    """Files with chunks that the namespace no longer holds (purged from the trash, or
    replaced by a rename): what a `chunk.forget` entry should drop."""
    live = _live_inodes(table.namespace)
    return sorted(inode for inode in table.files if inode not in live)


class MasterMachine:
    """The master's state machine for the service: the namespace and the chunk table, one
    log (see the module header). A snapshot holds both."""

    def __init__(self, namespace: Namespace, table: ChunkTable) -> None:
        self.namespace = namespace
        self.table = table

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        """One result per entry, each applied by the part its op names."""
        return [self.table.apply_one(data) if _safe_is_chunk(data)
                else self.namespace.apply([(index, data)])[0] for index, data in entries]

    def snapshot(self) -> bytes:
        return msgpack.packb({"namespace": self.namespace.snapshot(),
                              "chunks": self.table.snapshot()})

    def restore(self, blob: bytes) -> None:
        state = msgpack.unpackb(blob)
        if isinstance(state, dict) and "namespace" in state and "chunks" in state:
            self.namespace.restore(state["namespace"])
            self.table.restore(state["chunks"])
            return
        self.namespace.restore(blob)  # a snapshot from before the chunk table
        self.table.restore(ChunkTable(self.namespace).snapshot())


def _safe_is_chunk(data: bytes) -> bool:
    try:
        return is_chunk_entry(data)
    except (ValueError, TypeError, AttributeError, IndexError, msgpack.UnpackException):
        return False
