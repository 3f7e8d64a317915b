"""The dfs client library: `DfsClient` (blocking) and `AsyncDfsClient` (asyncio).

    with DfsClient(["127.0.0.1:7481", "127.0.0.1:7482", "127.0.0.1:7483"]) as fs:
        with fs.open("/data/a.bin", "wb") as f:
            f.write(b"hello")
        with fs.open("/data/a.bin", "rb") as f:
            assert f.read() == b"hello"

Metadata goes to the masters over RESP with failover (dfs/client_master.py); bulk data
straight to the chunk servers on the data path's framing, or for a replica on this host
from its file through a descriptor its chunk server passes (`short_circuit`, on by default;
dfs/client_io.py says how writes and reads go, fail over and report bad replicas). `open`
returns a standard buffered binary file (io.BufferedReader / io.BufferedWriter over the
raw chunk streams), so anything that takes a binary file takes it; a file of any size
streams through, holding at most one chunk (`chunk_size`, 64 MiB by default) in memory
while writing.

The asyncio client runs the blocking calls in a worker thread each (asyncio.to_thread):
the event loop is never blocked, and its file objects have the same methods as coroutines.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from typing import Any, BinaryIO

from dfs.client_io import ChunkReader, ChunkWriter, WriteFile
from dfs.client_lease import LeaseRenewer
from dfs.client_master import DfsError, DfsUnavailable, MasterLink, Node

__all__ = ["DEFAULT_CHUNK_SIZE", "AsyncDfsClient", "AsyncDfsFile", "DfsClient", "DfsError",
           "DfsUnavailable"]

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024  # GFS's and HDFS's (dfs.blocksize is 128 MiB now)
BUFFER_BYTES = 1024 * 1024
DATA_TIMEOUT_S = 60.0
ERR_MODE = "mode must be 'rb' or 'wb', not {!r}"
ERR_CHUNK_SIZE = "chunk_size must be >= 1"
ERR_VERSION_MODE = "a version can only be read (mode 'rb')"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    return value


def _as_map(value: Any) -> dict[str, Any]:
    """A map reply: RESP2 sends it as a flat [key, value, ...] list."""
    if isinstance(value, list):
        value = dict(zip(value[::2], value[1::2], strict=True))
    return _decode(value)  # type: ignore[no-any-return]


class DfsClient:
    """`DfsClient(masters)`: masters as "host:port,..." or a list of "host:port" or (host,
    port). Use as a context (or call `close`). Not thread-safe: one per thread."""

    def __init__(self, masters: Sequence[Node] | str, *, password: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, deadline_s: float = 30.0,
                 data_timeout_s: float = DATA_TIMEOUT_S, username: str | None = None,
                 short_circuit: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(ERR_CHUNK_SIZE)
        # With a username the masters see a dfs user (AUTH username password).
        self.master = MasterLink(masters, password=password, deadline_s=deadline_s,
                                 username=username)
        self.chunk_size = chunk_size
        self.data_timeout_s = data_timeout_s
        self.short_circuit = short_circuit  # read replicas on this host from their files
        # One write lease for every file this client writes, renewed on its own link.
        self.leases = LeaseRenewer(lambda: MasterLink(masters, password=password,
                                                      deadline_s=deadline_s,
                                                      username=username))

    def __enter__(self) -> DfsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to the masters and stop renewing the write lease."""
        self.leases.close()
        self.master.close()

    def call(self, *args: Any) -> Any:
        """One FS.* (or any) command to the masters, with failover."""
        return self.master.call(*args)

    # -- files ------------------------------------------------------------------------------

    def open(self, path: str, mode: str = "rb", version: int | None = None) -> BinaryIO:
        """A binary file: "rb" reads a complete file (or its old `version`, a number of
        FS.VERSIONS, without restoring it), "wb" writes a new one (replacing the file at
        `path`, if any, when it is closed)."""
        if version is not None and mode != "rb":
            raise ValueError(ERR_VERSION_MODE)
        if mode == "rb":
            raw = ChunkReader(self.master, path, self.data_timeout_s, version,
                              self.short_circuit)
            return io.BufferedReader(raw, BUFFER_BYTES)  # type: ignore[return-value]
        if mode == "wb":
            writer = ChunkWriter(self.master, path, self.chunk_size, self.data_timeout_s,
                                 self.leases)
            return WriteFile(writer, BUFFER_BYTES)  # type: ignore[return-value]
        raise ValueError(ERR_MODE.format(mode))

    def read_bytes(self, path: str) -> bytes:
        """The whole file."""
        with self.open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write `data` as the file at `path`."""
        with self.open(path, "wb") as f:
            f.write(data)

    # -- the namespace ----------------------------------------------------------------------

    def mkdir(self, path: str, parents: bool = False) -> None:
        """FS.MKDIR (PARENTS: also the missing ones above; an existing directory is fine)."""
        self.master.call("FS.MKDIR", path, *(["PARENTS"] if parents else []))

    def ls(self, path: str) -> list[str]:
        """FS.LS: names, directories ending in "/"."""
        return [_text(n) for n in self.master.call("FS.LS", path)]

    def stat(self, path: str) -> dict[str, Any]:
        """FS.STAT: type, size, times, ..."""
        return _as_map(self.master.call("FS.STAT", path))

    def exists(self, path: str) -> bool:
        """True when `path` names a file or directory."""
        try:
            self.stat(path)
        except DfsUnavailable:
            raise
        except DfsError:
            return False
        return True

    def rename(self, src: str, dst: str, replace: bool = False) -> None:
        """FS.RENAME (atomic)."""
        self.master.call("FS.RENAME", src, dst, *(["REPLACE"] if replace else []))

    def delete(self, path: str, recursive: bool = False) -> int:
        """FS.DELETE to the trash; the trash item's id."""
        return int(self.master.call("FS.DELETE", path, *(["RECURSIVE"] if recursive else [])))

    def locate(self, path: str) -> list[Any]:
        """FS.LOCATE: [size, complete, [[chunk, version, size, [servers]], ...]]."""
        return _decode(self.master.call("FS.LOCATE", path))

    def report(self) -> dict[str, Any]:
        """FS.REPORT: safe mode, servers, under-replicated chunks."""
        return _as_map(self.master.call("FS.REPORT"))

    def chmod(self, path: str, mode: str) -> None:
        """FS.CHMOD: `mode` in octal ("755")."""
        self.master.call("FS.CHMOD", path, mode)

    def chown(self, path: str, owner: str) -> None:
        """FS.CHOWN: `owner`, `owner:group` or `:group`."""
        self.master.call("FS.CHOWN", path, owner)

    def versions(self, path: str) -> list[list[Any]]:
        """FS.VERSIONS: [version, mtime_ms, size, inode, current] per version, newest first."""
        return _decode(self.master.call("FS.VERSIONS", path))  # type: ignore[no-any-return]

    def restore(self, path: str, version: int) -> None:
        """FS.RESTORE: make the old `version` of the file current again."""
        self.master.call("FS.RESTORE", path, str(version))

    def decommission(self, node: str, cancel: bool = False) -> int:
        """FS.DECOMMISSION: mark the chunk server `node` (id or address) decommissioning
        (`cancel`: unmark it); the number of servers marked."""
        return int(self.master.call("FS.DECOMMISSION", node, *(["CANCEL"] if cancel else [])))


class AsyncDfsFile:
    """A file of `AsyncDfsClient.open`: read/write/seek/close as coroutines. Each call holds
    its client's lock (the file talks to the masters through the client's one link)."""

    def __init__(self, file: BinaryIO, lock: asyncio.Lock) -> None:
        self.file = file
        self._lock = lock

    async def _run(self, method: Any, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(method, *args)

    async def read(self, size: int = -1) -> bytes:
        return await self._run(self.file.read, size)  # type: ignore[no-any-return]

    async def write(self, data: bytes) -> int:
        return await self._run(self.file.write, data)  # type: ignore[no-any-return]

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._run(self.file.seek, offset, whence)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close (for a written file: returns once the master committed it)."""
        await self._run(self.file.close)

    async def __aenter__(self) -> AsyncDfsFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncDfsClient:
    """`DfsClient` for asyncio: the same arguments; every method a coroutine (see the module
    header). Calls are serialised on one blocking client."""

    def __init__(self, masters: Sequence[Node] | str, **options: Any) -> None:
        self.sync = DfsClient(masters, **options)
        self._lock = asyncio.Lock()

    async def _run(self, method: str, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(getattr(self.sync, method), *args)

    async def open(self, path: str, mode: str = "rb",
                   version: int | None = None) -> AsyncDfsFile:
        return AsyncDfsFile(await self._run("open", path, mode, version), self._lock)

    async def read_bytes(self, path: str) -> bytes:
        return await self._run("read_bytes", path)  # type: ignore[no-any-return]

    async def write_bytes(self, path: str, data: bytes) -> None:
        await self._run("write_bytes", path, data)

    async def mkdir(self, path: str, parents: bool = False) -> None:
        await self._run("mkdir", path, parents)

    async def ls(self, path: str) -> list[str]:
        return await self._run("ls", path)  # type: ignore[no-any-return]

    async def stat(self, path: str) -> dict[str, Any]:
        return await self._run("stat", path)  # type: ignore[no-any-return]

    async def rename(self, src: str, dst: str, replace: bool = False) -> None:
        await self._run("rename", src, dst, replace)

    async def delete(self, path: str, recursive: bool = False) -> int:
        return await self._run("delete", path, recursive)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncDfsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
