"""The follower's side of a streamed snapshot: chunks to a temporary file, then one snapshot.

One `SnapshotReceiver` per Raft group, in the group's data directory. Each chunk payload
(core/raft/snapshot_wire.py) is checked, hashed and written at once to a temporary file
`.raft.snapshot.incoming.tmp.<random>` (core.storage's temp naming, so a crash's leftovers
are found and removed when the next receiver opens the directory), in the snapshot file
format (core/raft/snapshot_source.py: the header first, its size and digest sealed at the
end); nothing is buffered, so the receiver holds at most the chunk it is handling. Every
chunk gets a reply: an ack with the next offset expected, or a nack
(core/raft/snapshot_wire.py lists the reasons).

Chunks are taken strictly in order; a chunk that starts past the end of the file is nacked
(the sender resends from the file's end), one that ends before it is a duplicate and only
acked again. Transfers are ordered by (term, index): a newer one aborts the one under way
(its file is removed), an older one is nacked as stale, as are chunks of a term older than
the Node's (`current_term`). When the last chunk is in, the file is fsynced and the digest
of everything written is compared with the sender's; then `on_chunk` returns a
`ReceivedSnapshot`, which the caller steps into its Node (`to_request`: the snapshot's data
is a `SnapshotFile` naming this file, never loaded). If the Node took it, the caller
`hand_over`s the file: the storage renames it into place when it persists the Ready
(core/raft/disk.py); otherwise `release` removes it.

File errors (write, fsync) raise core.storage.FatalStorageError, which is never retried:
the process must exit. Bad payloads raise SnapshotPayloadError only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from core.raft.messages import Snapshot, SnapshotRequest
from core.raft.snapshot_file import SnapshotFile
from core.raft.snapshot_source import SNAPSHOT_BUFFERS, encode_file_header, seal_file_header
from core.raft.snapshot_wire import (
    MAX_CHUNK_BYTES,
    MAX_SNAPSHOT_BYTES,
    NACK_CHECKSUM,
    NACK_DIGEST,
    NACK_GAP,
    NACK_STALE,
    NACK_TOO_LARGE,
    NACK_UNKNOWN,
    Chunk,
    ChunkReply,
    SnapshotMeta,
    SnapshotPayloadError,
    chunk_from_wire,
    chunk_hash,
)
from core.storage import TEMP_INFIX, FatalStorageError, remove_stale_temp_files

__all__ = [
    "DEFAULT_IDLE_TICKS",
    "INCOMING_NAME",
    "ReceivedSnapshot",
    "SnapshotReceiver",
]

log = logging.getLogger("core.raft.snapshot_receive")

INCOMING_NAME = "raft.snapshot.incoming"  # temp files are ".raft.snapshot.incoming.tmp.*"
DEFAULT_IDLE_TICKS = 500  # ticks without a chunk before a transfer under way is dropped
FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class ReceivedSnapshot:
    """A whole snapshot on disk, fsynced and verified: sent by `leader` in `term`, its
    data in the snapshot file `path` (`size` bytes from `offset`, xxh64 `digest`). The
    file is the receiver's until `SnapshotReceiver.release` or `hand_over`."""

    leader: int
    term: int
    meta: SnapshotMeta
    path: Path
    size: int
    digest: int
    offset: int = 0

    @property
    def file(self) -> SnapshotFile:
        """The data as a SnapshotFile the storage may move into place."""
        meta = self.meta
        return SnapshotFile(self.path, meta.index, meta.term, self.offset, self.size,
                            self.digest, transient=True)

    def read_data(self) -> bytes:
        """The snapshot's bytes, all in memory. OSError if the file is gone."""
        return self.file.read_all()

    def to_request(self, to: int) -> SnapshotRequest:
        """The SnapshotRequest to step into the Node of node `to`, as if the leader had sent
        the snapshot in one message; its data names the file (nothing is read)."""
        meta = self.meta
        return SnapshotRequest(frm=self.leader, to=to, term=self.term,
                               snapshot=Snapshot(meta.index, meta.term, meta.voters,
                                                 self.file))


class _Transfer:
    """A transfer under way: its identity, its open temp file and how far it got."""

    def __init__(self, chunk: Chunk, path: Path, fd: int, offset: int) -> None:
        assert chunk.meta is not None
        self.leader, self.term, self.meta = chunk.frm, chunk.term, chunk.meta
        self.total = chunk.total
        self.path, self.fd = path, fd
        self.offset = offset  # the data starts here, after the file's header
        self.expected = 0  # the file holds [0, expected)
        self.hasher = xxhash.xxh64()
        self.idle = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.term, self.meta.index


class SnapshotReceiver:
    """The streamed snapshots arriving for one group on node `node_id`, written under
    `directory` (the group's data directory, which the caller holds locked). Opening it
    removes temp files a previous process left. Limits: `max_snapshot_bytes` (larger
    transfers are nacked as too large), `max_chunk_bytes` (larger chunks are bad payloads),
    `idle_ticks` (a transfer without a chunk for that long is dropped)."""

    def __init__(self, directory: str | os.PathLike[str], node_id: int, *,
                 max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES,
                 idle_ticks: int = DEFAULT_IDLE_TICKS) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.max_snapshot_bytes = max_snapshot_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.idle_ticks = idle_ticks
        self._current: _Transfer | None = None
        self._completed: ReceivedSnapshot | None = None
        # (leader, term, index, size) of the last transfer completed, kept after release so
        # that a sender whose final ack was lost hears it again instead of starting over
        self._finished: tuple[int, int, int, int] | None = None
        self.stats = {"chunks": 0, "bytes": 0, "nacks": 0, "completed": 0, "aborted": 0}
        remove_stale_temp_files(self.directory / INCOMING_NAME)

    @property
    def receiving(self) -> tuple[int, int, int] | None:
        """(term, index, bytes so far) of the transfer under way, or None."""
        cur = self._current
        return None if cur is None else (cur.term, cur.meta.index, cur.expected)

    @property
    def completed(self) -> ReceivedSnapshot | None:
        """The completed snapshot not yet released, if any."""
        return self._completed

    def on_chunk(self, payload: object,
                 current_term: int = 0) -> tuple[dict[str, Any], ReceivedSnapshot | None]:
        """Take one chunk payload: (the reply payload to send back, the snapshot if this
        chunk completed one, else None). `current_term` is the Node's term: chunks of an
        older term are stale. Raises SnapshotPayloadError for a payload that does not
        decode or is not addressed to this node, FatalStorageError if the file cannot be
        written."""
        chunk = chunk_from_wire(payload, self.max_chunk_bytes)
        if chunk.to != self.node_id:
            raise SnapshotPayloadError(f"chunk for node {chunk.to} reached node {self.node_id}")
        self.stats["chunks"] += 1
        reason = self._refusal(chunk, current_term)
        if reason is not None:
            return self._nack(chunk, 0, reason), None
        finished = self._finished
        if finished is not None and finished[:3] == (chunk.frm, chunk.term, chunk.index):
            return self._ack(chunk, finished[3]), None  # the last ack was lost: say it again
        cur = self._current
        if cur is None or (cur.leader, cur.key) != (chunk.frm, (chunk.term, chunk.index)):
            if chunk.offset != 0:
                return self._nack(chunk, 0, NACK_UNKNOWN), None
            cur = self._begin(chunk)
        return self._write(cur, chunk)

    def tick(self) -> None:
        """One tick of the caller's clock: drop a transfer idle for `idle_ticks`."""
        cur = self._current
        if cur is None:
            return
        cur.idle += 1
        if cur.idle >= self.idle_ticks:
            log.warning("raft: dropping snapshot %d from node %d after %d idle ticks",
                        cur.meta.index, cur.leader, cur.idle)
            self.abort()

    def abort(self) -> None:
        """Drop the transfer under way, if any, and remove its file."""
        cur, self._current = self._current, None
        if cur is not None:
            self.stats["aborted"] += 1
            _close_quietly(cur.fd)
            _unlink_quietly(cur.path)

    def release(self) -> None:
        """Forget the completed snapshot and remove its file (if still there): to discard
        it, or once the Node has persisted it."""
        done, self._completed = self._completed, None
        if done is not None:
            _unlink_quietly(done.path)

    def hand_over(self) -> None:
        """Forget the completed snapshot but keep its file: the Node took it, and the
        storage moves the file into place when it persists it (a crash first leaves a
        temp file the next receiver removes)."""
        self._completed = None

    def close(self) -> None:
        """Abort and release everything (the group is stopping or being destroyed)."""
        self.abort()
        self.release()

    # -- internals -----------------------------------------------------------------------------

    def _refusal(self, chunk: Chunk, current_term: int) -> str | None:
        """Why this chunk is refused outright (a nack that makes the sender give up)."""
        if chunk.total > self.max_snapshot_bytes:
            return NACK_TOO_LARGE
        key = (chunk.term, chunk.index)
        known = [(cur.leader, cur.key)] if (cur := self._current) is not None else []
        if self._finished is not None:
            leader, term, index, _ = self._finished
            known.append((leader, (term, index)))
        if chunk.term < current_term or any(key < other for _, other in known):
            return NACK_STALE
        if any(key == other and leader != chunk.frm for leader, other in known):
            return NACK_STALE  # the same transfer from another leader: one leader per term
        return None

    def _begin(self, chunk: Chunk) -> _Transfer:
        """Start the transfer `chunk` opens, dropping an older one and an unreleased
        completed snapshot (a newer one supersedes it)."""
        self.abort()
        self.release()
        path = self.directory / f".{INCOMING_NAME}{TEMP_INFIX}{os.urandom(6).hex()}"
        assert chunk.meta is not None
        header = encode_file_header(chunk.meta.index, chunk.meta.term, chunk.meta.voters)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise FatalStorageError(f"cannot create {path}: {exc}") from exc
        self._current = _Transfer(chunk, path, fd, len(header))
        self._append(self._current, memoryview(header))
        return self._current

    def _write(self, cur: _Transfer, chunk: Chunk) -> tuple[dict[str, Any],
                                                              ReceivedSnapshot | None]:
        if chunk.total != cur.total:
            raise SnapshotPayloadError(f"chunk says total {chunk.total}, the transfer "
                                       f"{cur.total}")
        if chunk.offset > cur.expected:
            return self._nack(chunk, cur.expected, NACK_GAP), None
        if chunk_hash(chunk.data) != chunk.hash:
            return self._nack(chunk, cur.expected, NACK_CHECKSUM), None
        skip = cur.expected - chunk.offset
        if skip >= len(chunk.data) and not chunk.last:
            return self._ack(chunk, cur.expected), None  # a duplicate
        view = memoryview(chunk.data)[skip:]
        SNAPSHOT_BUFFERS.note(len(chunk.data))
        self._append(cur, view)
        cur.hasher.update(view)
        cur.expected += len(view)
        cur.idle = 0
        self.stats["bytes"] += len(view)
        if not chunk.last:
            return self._ack(chunk, cur.expected), None
        return self._finish(cur, chunk)

    def _finish(self, cur: _Transfer, chunk: Chunk) -> tuple[dict[str, Any],
                                                               ReceivedSnapshot | None]:
        """The last chunk is in: seal the header, fsync, verify the digest, hand the
        snapshot out."""
        try:
            seal_file_header(cur.fd, cur.total, cur.hasher.intdigest())
            os.fsync(cur.fd)
        except OSError as exc:
            self.abort()
            raise FatalStorageError(f"fsync of {cur.path} failed: {exc}") from exc
        if cur.hasher.intdigest() != chunk.digest:
            log.warning("raft: snapshot %d from node %d failed its digest; starting over",
                        chunk.index, chunk.frm)
            self.abort()
            return self._nack(chunk, 0, NACK_DIGEST), None
        os.close(cur.fd)
        self._current = None
        done = ReceivedSnapshot(cur.leader, cur.term, cur.meta, cur.path, cur.total,
                                chunk.digest, cur.offset)
        self._completed = done
        self._finished = (done.leader, done.term, done.meta.index, done.size)
        self.stats["completed"] += 1
        return self._ack(chunk, cur.total), done

    def _append(self, cur: _Transfer, view: memoryview) -> None:
        try:
            while view:
                written = os.write(cur.fd, view)
                if written <= 0:
                    raise OSError(f"os.write wrote {written} bytes")
                view = view[written:]
        except OSError as exc:
            self.abort()
            raise FatalStorageError(f"write to {cur.path} failed: {exc}") from exc

    def _ack(self, chunk: Chunk, next_offset: int) -> dict[str, Any]:
        return ChunkReply(frm=self.node_id, to=chunk.frm, term=chunk.term, index=chunk.index,
                          next=next_offset).to_wire()

    def _nack(self, chunk: Chunk, next_offset: int, reason: str) -> dict[str, Any]:
        self.stats["nacks"] += 1
        return ChunkReply(frm=self.node_id, to=chunk.frm, term=chunk.term, index=chunk.index,
                          next=next_offset, reason=reason).to_wire()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
