"""The client's file objects: `ChunkWriter` and `ChunkReader`, raw binary streams
(io.RawIOBase) that `DfsClient.open` wraps in io.BufferedWriter / io.BufferedReader.

Writing. The bytes of a file go chunk by chunk: the writer keeps the current chunk's bytes
(at most `chunk_size`) so that a failed chunk can be sent again; a full chunk (or the last
one, at close) is allocated by the master (FS.ALLOCATE: chunk id, version, lease, the
servers with the primary first), then sent to the primary as a PUT whose chain is the other
servers, in pieces of PIECE_BYTES, with its xxh3_64 digest at the end; a send that lasts
renews the lease (FS.RENEW) every RENEW_EVERY_S, which also tells the master the writer is
alive. The primary's ok
means every replica has it on disk. On any failure the chunk is allocated again (a new
version: the half-written replicas become stale) avoiding the servers that failed, up to
MAX_CHUNK_ATTEMPTS times. `close` then commits the chunk list and sizes (FS.COMPLETE) and
only then returns (a retried FS.CREATE/COMPLETE/RENAME whose first try took effect, its reply
lost with a master, counts as done). The file is written under a temporary name
(`<path>.<token>._COPYING_`, as `hdfs dfs -put` does) and renamed over `path` at close, so
readers see the old file or the whole new one, never part of it.

While a writer is open its client's lease renewer (dfs/client_lease.py) tells the masters it
is alive, however long it pauses between writes. A writer dropped without `close` abandons
its file, as HDFS does when a writer vanishes: the finalizer (of `WriteFile`, the buffered
file `DfsClient.open` returns, and of the raw `ChunkWriter`) does no network I/O and never
commits, so the garbage collector can neither publish a half-written file nor wait on
unreachable masters; the temporary file is left to the master's abandoned-write reaper
(`--abandoned-write-ms`).

Reading. FS.LOCATE gives each chunk's version, size and replicas. A replica on this host is
read from its file directly (short-circuit, dfs/chunk_local.py: the chunk server passes an
open descriptor, every block is still checked against its checksum), into the caller's
buffer; any other is asked over TCP. A read asks one replica for at most PIECE_BYTES; on an
error (unreachable, no such version, a checksum mismatch: the server checks every block) it
fails over to the next replica, and a checksum mismatch is reported to the master
(FS.BADREPLICA) so the bad copy is replaced. When every replica failed it locates the file
again (the master may know new replicas) and retries, up to MAX_LOCATE_ROUNDS times, then
raises OSError.
"""

from __future__ import annotations

import io
import secrets
import time
from typing import Any

import xxhash

from dfs import chunk_wire as wire
from dfs.chunk_local import LocalReads
from dfs.chunk_net import ReplyError, SyncLink, check_reply
from dfs.chunks import WRITING_SUFFIX
from dfs.client_lease import LeaseRenewer, WriteLease
from dfs.client_master import DfsError, MasterLink

__all__ = ["COPYING_SUFFIX", "ChunkReader", "ChunkWriter", "PIECE_BYTES", "WriteFile",
           "temp_path"]

PIECE_BYTES = 1024 * 1024  # one DATA frame, one GET
MAX_CHUNK_ATTEMPTS = 6
RENEW_EVERY_S = 1.0  # a long chunk send renews its lease (and shows the writer alive) this often
MAX_LOCATE_ROUNDS = 5
RETRY_PAUSE_S = 0.3
COPYING_SUFFIX = WRITING_SUFFIX
ALREADY_EXISTS = "already exists"  # (words of the masters' error replies)
IS_COMPLETE = "is complete"
NO_SUCH = "no such file"
ERR_CHUNK_FAILED = "chunk {} of {} could not be written after {} attempts: {}"
ERR_READ_FAILED = "{}: chunk {} could not be read from any replica: {}"
ERR_INCOMPLETE = "{} is being written (not closed yet)"
ERR_CLOSED = "I/O operation on closed file"


def temp_path(path: str) -> str:
    """The name a file is written under before its close renames it to `path`."""
    return f"{path}.{secrets.token_hex(4)}{COPYING_SUFFIX}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChunkWriter(io.RawIOBase):
    """Writes a new file at `path` (see the module header)."""

    def __init__(self, master: MasterLink, path: str, chunk_size: int, timeout_s: float,
                 renewer: LeaseRenewer | None = None) -> None:
        super().__init__()
        self.master = master
        self.path = path
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
        self.temp = temp_path(path)
        self.sizes: list[int] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._lease: WriteLease | None = None
        try:
            self.master.call("FS.CREATE", self.temp)
        except DfsError as exc:
            if ALREADY_EXISTS not in str(exc):  # (a retried create of our own random name)
                raise
        if renewer is not None:
            self._lease = renewer.add(self.temp)

    def _end_lease(self) -> None:
        if self._lease is not None:
            self._lease.end()

    def writable(self) -> bool:
        return True

    def abandon(self) -> None:
        """Give the file up: drop what is buffered and close without committing, with no
        network I/O (the temporary file is left to the master's reaper)."""
        self._pending, self._pending_bytes = [], 0
        self._end_lease()
        super().close()

    def __del__(self) -> None:
        if not self.closed:
            self.abandon()

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(ERR_CLOSED)
        view = memoryview(data).cast("B")
        taken = len(view)
        while view:
            room = self.chunk_size - self._pending_bytes
            self._pending.append(bytes(view[:room]))
            self._pending_bytes += min(room, len(view))
            view = view[room:]
            if self._pending_bytes == self.chunk_size:
                self._flush_chunk()
        return taken

    def _flush_chunk(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        index = len(self.sizes)
        avoid: list[str] = []
        last: BaseException | None = None
        for _attempt in range(MAX_CHUNK_ATTEMPTS):
            chunk, version, lease_ms, servers = self.master.call(
                "FS.ALLOCATE", self.temp, index, *avoid)
            servers = [_text(s) for s in servers]
            try:
                self._send(int(chunk), int(version), int(lease_ms), servers, data)
                self.sizes.append(len(data))
                return
            except (OSError, ReplyError, wire.FrameError) as exc:
                last = exc
                failed = exc.failed if isinstance(exc, ReplyError) and exc.failed else []
                if not failed and not isinstance(exc, ReplyError):
                    failed = servers[:1]  # the primary itself could not be reached
                avoid += [f for f in failed if f not in avoid]
                time.sleep(RETRY_PAUSE_S)
        raise OSError(ERR_CHUNK_FAILED.format(index, self.path, MAX_CHUNK_ATTEMPTS, last))

    def _send(self, chunk: int, version: int, lease_ms: int, servers: list[str],
              data: bytes) -> None:
        link = SyncLink(servers[0], self.timeout_s)
        try:
            link.send({"op": wire.OP_PUT, "chunk": chunk, "version": version,
                       "chain": servers[1:], "lease_ms": lease_ms})
            granted = time.monotonic()
            view = memoryview(data)
            for offset in range(0, len(data), PIECE_BYTES):
                header: dict[str, Any] = {"op": wire.OP_DATA}
                if time.monotonic() - granted > min(lease_ms / 2000, RENEW_EVERY_S):
                    header["lease_ms"] = int(self.master.call("FS.RENEW", chunk, version))
                    granted = time.monotonic()
                link.send(header, view[offset:offset + PIECE_BYTES])
            link.send({"op": wire.OP_END, "size": len(data),
                       "digest": xxhash.xxh3_64_intdigest(data)})
            check_reply(link.receive(), servers[0])
        finally:
            link.close()

    def close(self) -> None:
        """Send what is left, commit the file (FS.COMPLETE), rename it into place; returns
        once the master committed it (see the module header)."""
        if self.closed:
            return
        try:
            if self._pending_bytes:
                self._flush_chunk()
            self._commit()
        finally:
            self._end_lease()
            super().close()

    def _commit(self) -> None:
        """FS.COMPLETE then FS.RENAME. The failover core retries a request whose reply was
        lost, so a refusal that says the first try took effect is success."""
        try:
            self.master.call("FS.COMPLETE", self.temp, *self.sizes)
        except DfsError as exc:
            if IS_COMPLETE not in str(exc):
                raise
        try:
            self.master.call("FS.RENAME", self.temp, self.path, "REPLACE")
        except DfsError as exc:
            if NO_SUCH not in str(exc) or not self._renamed():
                raise

    def _renamed(self) -> bool:
        """True when the temporary name is gone and `path` is a complete file of our size."""
        try:
            self.master.call("FS.STAT", self.temp)
            return False
        except DfsError:
            pass
        size, complete, _rows = self.master.call("FS.LOCATE", self.path)
        return bool(complete) and int(size) == sum(self.sizes)


class WriteFile(io.BufferedWriter):
    """The buffered file of a `ChunkWriter`: `close` commits (see the module header); a
    WriteFile dropped unclosed abandons its file instead, with no network I/O."""

    def __del__(self) -> None:
        raw = self.raw
        if isinstance(raw, ChunkWriter) and not raw.closed:
            raw.abandon()  # closed now, so io's own finalizer flushes and commits nothing


class ChunkReader(io.RawIOBase):
    """Reads the file at `path` (see the module header); seekable."""

    def __init__(self, master: MasterLink, path: str, timeout_s: float,
                 version: int | None = None, short_circuit: bool = True) -> None:
        super().__init__()
        self.master = master
        self.path = path
        self.version = version  # an old version's number (FS.VERSIONS), None: the current
        self.timeout_s = timeout_s
        self.position = 0
        self._links: dict[str, SyncLink] = {}
        self._local = LocalReads(timeout_s) if short_circuit else None
        self._locate()

    def _locate(self) -> None:
        which = [] if self.version is None else ["VERSION", str(self.version)]
        size, complete, rows = self.master.call("FS.LOCATE", self.path, *which)
        if not complete:
            raise DfsError(ERR_INCOMPLETE.format(self.path))
        self.size = int(size)
        self.chunks = [[int(c), int(v), int(n), [_text(a) for a in where]]
                       for c, v, n, where in rows]
        self.starts = []
        at = 0
        for row in self.chunks:
            self.starts.append(at)
            at += row[2]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError(ERR_CLOSED)
        if self.position >= self.size:
            return 0
        index = self._chunk_at(self.position)
        offset = self.position - self.starts[index]
        want = min(len(buffer), PIECE_BYTES, self.chunks[index][2] - offset)
        count = self._fetch(index, offset, memoryview(buffer).cast("B")[:want])
        self.position += count
        return count

    def readall(self) -> bytes:
        """The rest of the file, read PIECE_BYTES at a time (io's default asks 8 KiB)."""
        parts = []
        piece = bytearray(PIECE_BYTES)
        while count := self.readinto(piece):
            parts.append(bytes(piece[:count]))
        return b"".join(parts)

    def _chunk_at(self, position: int) -> int:
        for index in range(len(self.chunks) - 1, -1, -1):
            if self.starts[index] <= position:
                return index
        return 0

    def _fetch(self, index: int, offset: int, view: memoryview) -> int:
        """Fill `view` with the chunk's bytes from `offset`, failing over (module header)."""
        errors: list[str] = []
        for round_ in range(MAX_LOCATE_ROUNDS):
            chunk, version, _size, where = self.chunks[index]
            for address in where:
                try:
                    return self._read(address, chunk, version, offset, view)
                except (OSError, ReplyError, wire.FrameError) as exc:
                    errors.append(f"{address}: {exc}")
                    self._drop(address)
                    if self._local is not None:
                        self._local.forget(address, chunk, version)
                    if "checksum" in str(exc):
                        self._report_bad(chunk, address)
            time.sleep(RETRY_PAUSE_S * (round_ + 1))
            self._locate()
        raise OSError(ERR_READ_FAILED.format(self.path, index, "; ".join(errors[-3:])))

    def _read(self, address: str, chunk: int, version: int, offset: int,
              view: memoryview) -> int:
        """One replica's bytes into `view`: from its file when it is local, else over TCP."""
        local = None if self._local is None else self._local.replica(address, chunk, version)
        if local is not None:
            count = local.read_into(offset, view)
        else:
            data = self._get(address, chunk, version, offset, len(view))
            count = len(data)
            view[:count] = data
        if count != len(view):
            raise ConnectionError(f"short read from {address}")
        return count

    def _get(self, address: str, chunk: int, version: int, offset: int, length: int) -> bytes:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = SyncLink(address, self.timeout_s)
        link.send({"op": wire.OP_GET, "chunk": chunk, "version": version, "offset": offset,
                   "length": length})
        frame = link.receive()
        check_reply(frame, address)
        assert frame is not None
        if len(frame.payload) != length:
            raise ConnectionError(f"short read from {address}")
        return frame.payload

    def _drop(self, address: str) -> None:
        link = self._links.pop(address, None)
        if link is not None:
            link.close()

    def _report_bad(self, chunk: int, address: str) -> None:
        try:
            self.master.call("FS.BADREPLICA", chunk, address)
        except DfsError:
            pass  # the scrubber and the heartbeat report it too

    def close(self) -> None:
        for address in list(self._links):
            self._drop(address)
        if self._local is not None:
            self._local.close()
        super().close()
