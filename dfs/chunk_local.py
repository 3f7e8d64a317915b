"""Short-circuit local reads: a client on a chunk server's host reads the chunk file itself.

Strategy (HDFS's short-circuit local reads, with its descriptor passing): every chunk server
also listens on a Unix socket in Linux's abstract namespace, named after its data-path
address (`local_name`), so a client that knows the address finds it with no setting, and
only a client on the same host (and network namespace) can reach it. The client sends {op:
"open", chunk, version}; the server answers with the replica's size and the checksums of its
64 KiB blocks (and their name) in a frame header, and passes an open read-only descriptor of
the data file with it (SCM_RIGHTS, socket.send_fds). The client needs no permission on the
data directory, and a file the server deletes afterwards stays readable through the
descriptor: the bytes of the version it asked for, whose checksums it holds (a version's
bytes never change once installed). The client then reads with pread, straight into the
caller's buffer when the range covers whole blocks, and checks every block it returns
against its checksum, exactly as the server checks a GET: a mismatch is ERR_CHECKSUM (the
reader fails over and reports the replica). When there is no such socket (another host,
another namespace, an older server) the reader uses the TCP data path, as it does for
anything that goes wrong here before bytes are returned.

The server side runs in threads (one accepting, one per client connection), because
asyncio's streams cannot pass descriptors; it only reads the store's index.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Final

from dfs import chunk_wire as wire
from dfs.chunk_net import ReplyError, check_reply
from dfs.chunk_store import BLOCK_BYTES, BLOCK_HASHES, ChunkStore, Replica

__all__ = ["LocalReadServer", "LocalReads", "LocalReplica", "OP_OPEN", "local_name"]

log = logging.getLogger("dfs.chunkserver")

OP_OPEN: Final = "open"
NAME_FORMAT: Final = "\0dfs-chunk-local-{}"  # abstract namespace: nothing on disk
RECV_BYTES: Final = 256 * 1024
LISTEN_BACKLOG: Final = 64
ERR_LOCAL: Final = "ERR short-circuit read: {}"


def local_name(address: str) -> str:
    """The Unix socket name of the chunk server whose data path is at `address`."""
    return NAME_FORMAT.format(address)


# -- the chunk server's side ------------------------------------------------------------------

class LocalReadServer:
    """Answers OP_OPEN on the Unix socket of `address` (see the module header)."""

    def __init__(self, store: ChunkStore, address: str) -> None:
        self.store = store
        self.address = address
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Bind and start accepting; a name already taken (another server with the same
        address, in tests) leaves this server without local reads, logged."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(local_name(self.address))
        except OSError as exc:
            sock.close()
            log.warning("no short-circuit reads on %s: %s", self.address, exc)
            return
        sock.listen(LISTEN_BACKLOG)
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), name="dfs-local-accept",
                         daemon=True).start()

    def stop(self) -> None:
        """Stop accepting (connections being served end with their clients)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(conn,), name="dfs-local",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = wire.FrameReader()
            while True:
                try:
                    data = conn.recv(RECV_BYTES)
                    if not data:
                        return
                    reader.feed(data)
                    while (frame := reader.next_frame()) is not None:
                        self._answer(conn, frame.header)
                except (OSError, wire.FrameError):
                    return

    def _answer(self, conn: socket.socket, header: dict[str, Any]) -> None:
        if header.get("op") != OP_OPEN:
            self._refuse(conn, wire.ERR_UNKNOWN_OP.format(header.get("op")))
            return
        try:
            chunk, version = int(header["chunk"]), int(header["version"])
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(conn, ERR_LOCAL.format(f"bad request: {exc}"))
            return
        replica = self.store.get(chunk)
        fd = self.store.open_data(chunk, version)
        if fd is None or replica is None:
            self._refuse(conn, wire.ERR_NO_CHUNK.format(chunk, version, self.address))
            return
        try:
            reply = {"ok": True, "size": replica.size, "sums": replica.sums,
                     "hash": replica.hash}
            socket.send_fds(conn, [b"".join(wire.encode_frame(reply))], [fd])
        finally:
            os.close(fd)

    def _refuse(self, conn: socket.socket, text: str) -> None:
        conn.sendall(b"".join(wire.encode_frame({"err": text})))


# -- the client's side ------------------------------------------------------------------------

class LocalReplica:
    """An open replica: its descriptor and the store's `Replica` (size, block checksums).
    `read_into` checks every block it returns."""

    def __init__(self, fd: int, replica: Replica, address: str) -> None:
        self.fd = fd
        self.replica = replica
        self.chunk = replica.chunk
        self.size = replica.size
        self.address = address

    def read_into(self, offset: int, view: memoryview) -> int:
        """Fill `view` from `offset` (less at the end of the chunk); the bytes filled.
        ReplyError (ERR_CHECKSUM) on damage, OSError when the file cannot be read."""
        end = min(self.size, offset + len(view))
        if offset >= end:
            return 0
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        start = first * BLOCK_BYTES
        stop = min(self.size, (last + 1) * BLOCK_BYTES)
        count = end - offset
        if start == offset and stop == end:  # whole blocks: straight into the caller's buffer
            self._read_checked(first, view[:count], start)
            return count
        scratch = memoryview(bytearray(stop - start))
        self._read_checked(first, scratch, start)
        view[:count] = scratch[offset - start:end - start]
        return count

    def _read_checked(self, first: int, target: memoryview, at: int) -> None:
        got = os.preadv(self.fd, [target], at)
        if got != len(target):
            raise OSError(f"short read of chunk {self.chunk} on {self.address}")
        for n, block in enumerate(range(first, first + -(-len(target) // BLOCK_BYTES))):
            piece = target[n * BLOCK_BYTES:(n + 1) * BLOCK_BYTES]
            if not self.replica.check(block, piece):
                raise ReplyError(wire.ERR_CHECKSUM.format(self.chunk, block, self.address))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalReads:
    """One reader's short-circuit state: a Unix connection per chunk server address that
    has one (None: that server is not local), and the replicas opened through them."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._conns: dict[str, socket.socket | None] = {}
        self._open: dict[tuple[str, int, int], LocalReplica] = {}

    def replica(self, address: str, chunk: int, version: int) -> LocalReplica | None:
        """The replica of (chunk, version) on the server at `address` when it is local, else
        None (read over TCP). ReplyError when the server refuses (no such replica)."""
        key = (address, chunk, version)
        held = self._open.get(key)
        if held is not None:
            return held
        conn = self._connection(address)
        if conn is None:
            return None
        try:
            conn.sendall(b"".join(wire.encode_frame({"op": OP_OPEN, "chunk": chunk,
                                                     "version": version})))
            header, fds = self._receive(conn)
        except TimeoutError:
            self.drop(address)
            raise  # a server that does not answer (stopped): the next replica, not TCP
        except (OSError, wire.FrameError):
            self.drop(address)
            return None
        try:
            check_reply(wire.Frame(header), address)
        except ReplyError:
            for fd in fds:
                os.close(fd)
            raise
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        hash_name = str(header.get("hash"))
        if hash_name not in BLOCK_HASHES:
            os.close(fds[0])
            return None
        replica = LocalReplica(fds[0], Replica(chunk, version, int(header["size"]),
                                               [int(s) for s in header["sums"]], hash_name),
                               address)
        self._open[key] = replica
        return replica

    def _connection(self, address: str) -> socket.socket | None:
        if address in self._conns:
            return self._conns[address]
        conn: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        assert conn is not None
        conn.settimeout(self.timeout_s)
        try:
            conn.connect(local_name(address))
        except OSError:
            conn.close()
            conn = None  # not on this host: TCP from now on
        self._conns[address] = conn
        return conn

    def _receive(self, conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(conn, RECV_BYTES, 1)
        reader = wire.FrameReader()
        reader.feed(data)
        while (frame := reader.next_frame()) is None:
            more = conn.recv(RECV_BYTES)
            if not more:
                for fd in fds:
                    os.close(fd)
                raise ConnectionError("the chunk server closed its local socket")
            reader.feed(more)
        return frame.header, list(fds)

    def forget(self, address: str, chunk: int, version: int) -> None:
        """Close the replica opened there (after an error on it)."""
        replica = self._open.pop((address, chunk, version), None)
        if replica is not None:
            replica.close()

    def drop(self, address: str) -> None:
        """Close the connection to `address` (it is tried again on the next open)."""
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every replica and connection."""
        for replica in self._open.values():
            replica.close()
        self._open.clear()
        for address in list(self._conns):
            self.drop(address)
