"""The `dfs chunkserver` daemon: chunk replicas on disk (dfs/chunk_store.py) served on the
data path's framing (dfs/chunk_wire.py), heartbeats to the masters, a scrubber.

Strategy:
- Writes are pipelined along the chain: a PUT's frames are forwarded to the next server of
  the chain as they arrive, while this server writes them; at END it fsyncs its replica
  (in a thread), then waits for the next server's reply, and only then answers ok. So an
  ok from the first server means every replica of the chain is on disk. Any failure (a
  bad digest, a next server that cannot be reached or fails) answers an error naming the
  unreachable servers in "failed", and the part written here is dropped. The first server
  of the chain (the primary) holds the write's lease (`lease_ms` in the PUT, as the master
  granted it; renewed by the writer through a "lease_ms" in a DATA header): a frame that
  arrives after the lease ran out fails the write. Every server of the chain checks the
  lease the same way: a server forwards the PUT and each renewal with the lease's time
  left by its own clock, so a secondary refuses the frames of a primary that was paused
  past the lease (SIGSTOP, a long GC) and forwards what it held afterwards.
  A PUT that fails before its END has arrived reads and drops the rest of its frames
  first, so the writer reads the error reply rather than a reset connection.
- A client on this host may read a replica's file itself through a descriptor this server
  passes it (short-circuit local reads, dfs/chunk_local.py), checking the same checksums.
- Reads check every block's checksum (the store does); on a mismatch the replica is
  dropped here, the reader gets ERR_CHECKSUM (and fails over), and the next heartbeat
  reports it as bad so the master re-replicates it from a good copy.
- Every `heartbeat_s` the server reports its id, address, rack, free and used bytes and
  its replicas ([chunk, version, size]) to the master leader (FS.HEARTBEAT); the reply
  lists replicas to delete (orphans, stale versions, extra copies) and copies to make (to
  re-replicate): a copy is a PUT to the target, fed from this server's checked reads. A
  heartbeat that fails for any reason is logged and the next one goes as usual: a server
  whose heartbeats stopped would be declared dead for good while it still serves.
  Reports are incremental, as HDFS's block reports are: a full report (every replica) at
  start, every `full_report_s`, after a heartbeat that failed, and whenever the leader asks
  for one (a new leader knows no replica); in between, only the replicas installed and
  dropped since the last report. Each report has a sequence number; an incremental one
  names the report it follows ("base") and the leader applies it only on top of that one,
  so a lost reply or a change of leader costs one full report, never a missed change;
  numbers start over with each process ("boot", random), and a late copy of an older
  report is ignored.
- The scrubber rereads every replica at `scrub_rate` bytes per second, pausing
  `scrub_pause_s` between passes; a damaged replica is dropped and reported bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from core.stats import LatencyHistogram
from core.storage import DataDirLock, atomic_write, read_file
from dfs import chunk_wire as wire
from dfs.chunk_local import LocalReadServer
from dfs.chunk_net import ReplyError, check_reply, read_frame, write_frame
from dfs.chunk_store import ChecksumError, ChunkStore, ChunkWriter
from dfs.client_master import AsyncMasterLink, DfsError

__all__ = ["ChunkServer", "ChunkServerConfig", "COPY_PIECE_BYTES"]

log = logging.getLogger("dfs.chunkserver")

ID_FILE = "server-id"
COPY_PIECE_BYTES = 4 * 1024 * 1024  # a re-replication copy reads and sends this much at once
MAX_COPIES = 4  # copies running at once
NEXT_TIMEOUT_S = 60.0  # the next server of a chain must answer within this
SYNC_EVERY_BYTES = 8 * 1024 * 1024  # a PUT flushes behind its writes this often
STOP_RETRY_S = 0.5  # `stop` cancels its loops again if they have not ended by then
REQUEST_OPS = frozenset({wire.OP_PUT, wire.OP_GET, wire.OP_STAT})  # what a request may be
UNKNOWN_OP = "unknown"  # the figures' name for every other op
FULL_REPORT_S = 300.0  # every replica is reported at least this often (a safety net)


@dataclass
class ChunkServerConfig:
    """What a chunk server is told: where its data lives, its rack, the masters' client
    addresses, how often it reports, how fast it scrubs."""

    data_dir: Path
    rack: str
    masters: list[str]
    advertise: str = ""
    password: str | None = None
    heartbeat_s: float = 1.0
    scrub_rate: int = 8 * 1024 * 1024
    scrub_pause_s: float = 60.0
    full_report_s: float = FULL_REPORT_S


class ChunkServer:
    """One chunk server: `start(host, port)`, use, `stop()`."""

    def __init__(self, config: ChunkServerConfig) -> None:
        self.config = config
        self.lock = DataDirLock.acquire(config.data_dir)
        self.server_id = _server_id(Path(config.data_dir))
        self.store = ChunkStore(Path(config.data_dir)).open()
        self.masters = AsyncMasterLink(config.masters, password=config.password,
                                       deadline_s=max(1.0, config.heartbeat_s * 3))
        self.bad: set[int] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._copies: set[asyncio.Task[None]] = set()
        self._report_now = asyncio.Event()  # a replica arrived: report it at once
        self.requests: dict[str, LatencyHistogram] = {}  # data-path requests by op
        self._stopping = False  # the loops end on it even if a cancellation is swallowed
        self._boot = random.getrandbits(63)  # reports' sequence numbers start over with it
        self._seq = 0  # the last report's sequence number
        self._acked = False  # the leader applied the last report: the next may be a delta
        self._full_at = 0.0  # monotonic time of the last full report
        self.local: LocalReadServer | None = None  # short-circuit reads (dfs/chunk_local.py)

    async def start(self, host: str, port: int) -> None:
        """Listen, then start the heartbeat and the scrubber."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=2 * wire.MAX_PAYLOAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.config.advertise:
            self.config.advertise = f"{host}:{self.port}"
        self.local = LocalReadServer(self.store, self.config.advertise)
        self.local.start()
        self._tasks = [asyncio.create_task(self._heartbeats()),
                       asyncio.create_task(self._scrubber())]

    async def stop(self) -> None:
        """Stop listening and the loops; release the data directory."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self.local is not None:
            self.local.stop()
        pending = {*self._tasks, *self._copies}
        while pending:  # (again until they end: 3.11's wait_for, under the heartbeat's
            for task in pending:  # connect, can swallow a cancellation)
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=STOP_RETRY_S)
        await self.masters.close()
        self.lock.release()

    # -- the data path ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                if not await self._request(frame, reader, writer):
                    break
        except wire.FrameError as exc:
            with contextlib.suppress(OSError):
                await write_frame(writer, {"err": str(exc)})
        except (ConnectionError, OSError) as exc:
            log.debug("data connection dropped: %s", exc)
        finally:
            writer.close()

    async def _request(self, frame: wire.Frame, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        """Answer one request, counted and timed by its op (`requests`; a request refused
        as malformed counts as an error); False when the connection must close."""
        op = frame.op if frame.op in REQUEST_OPS else UNKNOWN_OP  # (bounded: no op of a peer's)
        figures = self.requests.get(op) or self.requests.setdefault(op, LatencyHistogram())
        figures.calls += 1
        started = time.perf_counter_ns()
        answered = await self._answer(frame, reader, writer)
        figures.record(time.perf_counter_ns() - started)
        figures.errors += not answered
        return answered

    async def _answer(self, frame: wire.Frame, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close (a request it cannot
        take: the stream may be out of step)."""
        try:
            if frame.op == wire.OP_PUT:
                await self._put(frame.header, reader, writer)
            elif frame.op == wire.OP_GET:
                await self._get(frame.header, writer)
            elif frame.op == wire.OP_STAT:
                await write_frame(writer, {"ok": True, "chunks": len(self.store.replicas),
                                           "used": self.store.used(),
                                           "free": self.store.free()})
            else:
                await write_frame(writer, {"err": wire.ERR_UNKNOWN_OP.format(frame.op)})
                return False
        except (KeyError, ValueError, TypeError) as exc:
            text = wire.ERR_BAD_FRAME.format(f"bad {frame.op!r} request: {exc!r}")
            await write_frame(writer, {"err": text})
            return False
        return True

    async def _get(self, header: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        chunk, version = int(header["chunk"]), int(header["version"])
        if int(header["offset"]) < 0 or int(header.get("length", 0)) < 0:
            raise ValueError("offset and length must be >= 0")
        replica = self.store.get(chunk)
        if replica is None or replica.version != version:
            here = self.config.advertise
            await write_frame(writer, {"err": wire.ERR_NO_CHUNK.format(chunk, version, here)})
            return
        length = min(int(header.get("length", wire.MAX_PAYLOAD_BYTES)), wire.MAX_PAYLOAD_BYTES)
        try:
            data = await asyncio.to_thread(self.store.read, chunk, int(header["offset"]), length)
        except ChecksumError as exc:
            self._damaged(chunk)
            text = wire.ERR_CHECKSUM.format(chunk, exc.block, self.config.advertise)
            await write_frame(writer, {"err": text})
            return
        except (KeyError, OSError):
            here = self.config.advertise
            await write_frame(writer, {"err": wire.ERR_NO_CHUNK.format(chunk, version, here)})
            return
        await write_frame(writer, {"ok": True}, data)

    def _damaged(self, chunk: int) -> None:
        log.error("chunk %d: checksum mismatch, replica dropped and reported", chunk)
        self.store.delete(chunk)
        self.bad.add(chunk)

    async def _put(self, header: dict[str, Any], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        """One PUT (see the module header): the reply is written here."""
        chunk, version = int(header["chunk"]), int(header["version"])
        chain = [str(a) for a in header.get("chain", [])]
        held = self.store.get(chunk)
        if held is not None and held.version > version:
            await write_frame(writer, {"err": wire.ERR_STALE.format(chunk, version,
                                                                    held.version)})
            return
        put = _Put(self, chunk, version, chain, header.get("lease_ms"))
        reply = await put.run(reader)
        await write_frame(writer, reply)

    # -- heartbeats and the master's orders -------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The next heartbeat's report, full or incremental (see the module header)."""
        now = time.monotonic()
        full = not self._acked or now - self._full_at >= self.config.full_report_s
        if full:
            self._full_at = now
        self._seq += 1
        report = {"id": self.server_id, "addr": self.config.advertise,
                  "rack": self.config.rack, "free": self.store.free(),
                  "used": self.store.used(), "bad": sorted(self.bad), "boot": self._boot,
                  "seq": self._seq,
                  **self.store.take_report(full)}
        if not full:
            report["base"] = self._seq - 1
        return report

    async def _heartbeats(self) -> None:
        while not self._stopping:
            await self._heartbeat()
            await self._pause()

    async def _heartbeat(self) -> None:
        """Send one report and obey the reply."""
        try:
            report = self.report()  # (full or not by the last report's outcome)
            self._acked = False  # until the leader says it applied this one
            reply = msgpack.unpackb(
                await self.masters.call("FS.HEARTBEAT", msgpack.packb(report)))
            self.bad.clear()
            self._obey(reply)
            self._acked = reply.get("ack") == report["seq"]
            if reply.get("full"):
                self._report_now.set()  # the leader asks for every replica: at once
        except (DfsError, ValueError, TypeError, msgpack.UnpackException) as exc:
            self._acked = False
            log.warning("heartbeat failed: %s", exc)
        except Exception:  # noqa: BLE001 - a bug must not stop the heartbeats for good
            self._acked = False  # (whatever the report took from the store: all again)
            log.exception("heartbeat failed unexpectedly")

    async def _pause(self) -> None:
        """Until the next heartbeat is due, or a change asks for a report at once."""
        # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancellation that
        # `stop` sends, and the loop then never ended)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.heartbeat_s):
                await self._report_now.wait()
        self._report_now.clear()

    def _obey(self, orders: dict[str, Any]) -> None:
        for chunk in orders.get("delete", []):
            if self.store.delete(int(chunk)):
                log.info("chunk %d deleted (the master's order)", chunk)
        for chunk, version, target in orders.get("copy", []):
            if len(self._copies) >= MAX_COPIES:
                break
            task = asyncio.create_task(self._copy(int(chunk), int(version), str(target)))
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    async def _copy(self, chunk: int, version: int, target: str) -> None:
        """Re-replicate: PUT the replica of `chunk` here to `target`."""
        replica = self.store.get(chunk)
        if replica is None or replica.version != version:
            return
        host, _, port = target.rpartition(":")
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            log.warning("copy of chunk %d to %s: %s", chunk, target, exc)
            return
        try:
            await self._send_copy(replica.chunk, replica.version, replica.size, writer)
            check_reply(await asyncio.wait_for(read_frame(reader), NEXT_TIMEOUT_S), target)
            log.info("chunk %d copied to %s", chunk, target)
        except ChecksumError:
            self._damaged(chunk)
        except (OSError, ReplyError, wire.FrameError, TimeoutError) as exc:
            log.warning("copy of chunk %d to %s failed: %s", chunk, target, exc)
        finally:
            writer.close()

    async def _send_copy(self, chunk: int, version: int, size: int,
                         writer: asyncio.StreamWriter) -> None:
        digest = xxhash.xxh3_64()
        await write_frame(writer, {"op": wire.OP_PUT, "chunk": chunk, "version": version,
                                   "chain": []})
        for offset in range(0, size, COPY_PIECE_BYTES):
            data = await asyncio.to_thread(self.store.read, chunk, offset, COPY_PIECE_BYTES)
            digest.update(data)
            await write_frame(writer, {"op": wire.OP_DATA}, data)
        await write_frame(writer, {"op": wire.OP_END, "size": size,
                                   "digest": digest.intdigest()})

    # -- the scrubber -----------------------------------------------------------------------

    async def _scrubber(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.scrub_pause_s)
            for chunk in self.store.iter_chunks():
                replica = self.store.get(chunk)
                if replica is None:
                    continue
                if not await asyncio.to_thread(self.store.verify, chunk):
                    self._damaged(chunk)
                await asyncio.sleep(replica.size / max(1, self.config.scrub_rate))


class _Put:
    """One PUT being received: the local writer, the link to the next server, the lease."""

    def __init__(self, server: ChunkServer, chunk: int, version: int, chain: list[str],
                 lease_ms: int | None) -> None:
        self.server = server
        self.chunk = chunk
        self.version = version
        self.chain = chain
        self.deadline = None if lease_ms is None else time.monotonic() + lease_ms / 1000
        self.next: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.failed: list[str] = []
        self.ended = False  # the writer's END arrived
        self.sync: asyncio.Future[None] | None = None  # a flush behind the writes
        self.synced = 0  # bytes flushed (or being flushed) so far

    async def run(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        """Receive the frames up to END; the reply header."""
        writer: ChunkWriter = self.server.store.writer(self.chunk, self.version)
        try:
            await self._open_next()
            end = await self._receive(reader, writer)
            await self._settle()
            await asyncio.to_thread(writer.finish, int(end["size"]), int(end["digest"]))
            self.server._report_now.set()
            await self._next_reply()
        except (ValueError, OSError, ReplyError, wire.FrameError, TimeoutError,
                KeyError) as exc:
            with contextlib.suppress(OSError):
                await self._settle()
            writer.abort()
            if not self.ended:
                await self._swallow(reader)
            failed = [*self.failed, *(exc.failed if isinstance(exc, ReplyError) else [])]
            return {"err": str(exc) or type(exc).__name__, "failed": failed}
        finally:
            if self.next is not None:
                self.next[1].close()
        return {"ok": True}

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        """Read and drop the rest of a failed PUT, up to its END, so the writer gets the
        error reply instead of a broken connection (the stream stays in step)."""
        try:
            while (frame := await read_frame(reader)) is not None:
                if frame.op == wire.OP_END:
                    return
        except (ConnectionError, wire.FrameError, OSError):
            return

    async def _open_next(self) -> None:
        if not self.chain:
            return
        target = self.chain[0]
        host, _, port = target.rpartition(":")
        try:
            self.next = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                               NEXT_TIMEOUT_S)
        except (OSError, TimeoutError):
            self.failed.append(target)
            raise
        header = {"op": wire.OP_PUT, "chunk": self.chunk, "version": self.version,
                  "chain": self.chain[1:]}
        await write_frame(self.next[1], self._lease_left(header))

    async def _receive(self, reader: asyncio.StreamReader, writer: ChunkWriter) -> dict[str, Any]:
        while True:
            frame = await read_frame(reader)
            if frame is None:
                self.ended = True  # (nothing more will come)
                raise ConnectionError("the writer went away before the end of the chunk")
            self._check_lease(frame.header)
            if self.next is not None:
                await self._forward(frame.header, frame.payload)
            if frame.op == wire.OP_END:
                self.ended = True
                return frame.header
            if frame.op != wire.OP_DATA:
                raise wire.FrameError(wire.ERR_UNKNOWN_OP.format(frame.op))
            writer.write(frame.payload)
            self._sync_behind(writer)

    def _sync_behind(self, writer: ChunkWriter) -> None:
        """Every SYNC_EVERY_BYTES, flush what was written so far in a thread while more
        arrives, so the fsync at END has little left to do."""
        if writer.size - self.synced < SYNC_EVERY_BYTES:
            return
        if self.sync is not None and not self.sync.done():
            return
        self.synced = writer.size
        self.sync = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, writer.fd))

    async def _settle(self) -> None:
        """Wait for the flush under way, if any (its error is the write's)."""
        if self.sync is not None:
            sync, self.sync = self.sync, None
            await sync

    def _check_lease(self, header: dict[str, Any]) -> None:
        if self.deadline is None:
            return
        if time.monotonic() > self.deadline:
            raise ValueError(wire.ERR_LEASE.format(self.chunk, self.server.config.advertise))
        if "lease_ms" in header:
            self.deadline = time.monotonic() + int(header["lease_ms"]) / 1000

    def _lease_left(self, header: dict[str, Any]) -> dict[str, Any]:
        """`header` with the lease's time left here, for the next server (none: no lease);
        a lease that ran out while this server was paused is refused before forwarding."""
        if self.deadline is None:
            return header
        left_ms = int((self.deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise ValueError(wire.ERR_LEASE.format(self.chunk, self.server.config.advertise))
        return {**header, "lease_ms": left_ms}

    async def _forward(self, header: dict[str, Any], payload: bytes) -> None:
        assert self.next is not None
        renewed = "lease_ms" in header
        header = {k: v for k, v in header.items() if k not in ("len", "lease_ms")}
        if renewed or header.get("op") == wire.OP_END:
            header = self._lease_left(header)
        try:
            await write_frame(self.next[1], header, payload)
        except OSError:
            self.failed.append(self.chain[0])
            raise

    async def _next_reply(self) -> None:
        if self.next is None:
            return
        try:
            frame = await asyncio.wait_for(read_frame(self.next[0]), NEXT_TIMEOUT_S)
        except (OSError, TimeoutError, wire.FrameError):
            self.failed.append(self.chain[0])
            raise
        if frame is None:
            self.failed.append(self.chain[0])
        check_reply(frame, self.chain[0])


def _server_id(data_dir: Path) -> str:
    """This server's id, made once and kept in the data directory."""
    path = data_dir / ID_FILE
    raw = read_file(path)
    if raw:
        return raw.decode().strip()
    server_id = uuid.uuid4().hex[:12]
    atomic_write(path, server_id.encode())
    return server_id

