"""A test-only daemon: a replicated key-value map over core.raft.driver, for process drills.

    python -m tests.raft_kv_demo --id 1 --listen 127.0.0.2:7001 --raft 127.0.0.2:7002 \\
        --data-dir var/kv1 --peers 1=127.0.0.2:7002,2=127.0.0.3:7002,3=127.0.0.4:7002

`--peers` lists the Raft addresses known at start; without `--join` its ids are the founding
voters. The client port speaks lines (`\\r\\n`), one reply line per command, pipelining
allowed (replies come in order):

    SET key value   -> OK <index>          INCR key   -> <new value>
    GET key         -> VALUE <v> | NIL      (linearizable: read barrier, then local read)
    LGET key        -> VALUE <v> | NIL      (local, possibly stale)
    DIGEST          -> <applied> <keys> <bench entries> <xxh64 of the map>
    STATUS          -> one JSON line (RaftDriver.status())
    ADD id host:port | REMOVE id | TRANSFER  -> OK <index or new leader>
    BENCH n size concurrency  -> BENCH <n> <seconds>  (n proposals of `size` bytes from
                                 `concurrency` coroutines in this process; must lead)
Errors are `ERR <type>: <message>`. Writes issued on a follower are forwarded to the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from core.daemon import parse_hostport, run, setup_logging
from core.raft.driver import DriverConfig, RaftDriver

log = logging.getLogger("raft_kv_demo")

MAX_LINE_BYTES = 64 * 1024
MAX_PIPELINE = 1024  # commands in flight per connection
OP_SET, OP_INCR, OP_BENCH = b"S", b"I", b"B"


class KvMachine:
    """The state machine: a dict of bytes, plus a count of benchmark entries."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.bench_entries = 0
        self.applied = 0

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        out: list[Any] = []
        for index, cmd in entries:
            op = cmd[:1]
            if op == OP_BENCH:
                self.bench_entries += 1
                out.append(None)
            elif op == OP_SET:
                key, value = msgpack.unpackb(cmd[1:])
                self.data[key] = value
                out.append(None)
            elif op == OP_INCR:
                key = cmd[1:]
                value = int(self.data.get(key, b"0")) + 1
                self.data[key] = b"%d" % value
                out.append(value)
            else:
                out.append(None)
            self.applied = index
        return out

    def snapshot(self) -> bytes:
        return msgpack.packb([self.data, self.bench_entries])

    def restore(self, blob: bytes) -> None:
        data, self.bench_entries = msgpack.unpackb(blob)
        self.data = dict(data)

    def digest(self) -> str:
        h = xxhash.xxh64()
        for key in sorted(self.data):
            h.update(msgpack.packb([key, self.data[key]]))
        return h.hexdigest()


class Service:
    """The client port: parse a line, run the command, reply one line."""

    def __init__(self, driver: RaftDriver, machine: KvMachine) -> None:
        self.driver = driver
        self.machine = machine
        self.connections: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        """Drop every client connection (their in-flight commands are cancelled)."""
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self.connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies: deque[asyncio.Task[bytes]] = deque()
        slots = asyncio.Semaphore(MAX_PIPELINE)
        done = asyncio.Event()
        writer_task = asyncio.create_task(self._write(writer, replies, done))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                await slots.acquire()
                task = asyncio.create_task(self._reply(line))
                task.add_done_callback(lambda _: slots.release())
                replies.append(task)
                done.set()
        except (ValueError, ConnectionError):
            pass  # line too long or the client went away
        except asyncio.CancelledError:
            writer_task.cancel()  # shutting down: drop what is in flight
            raise
        replies.append(asyncio.create_task(asyncio.sleep(0, b"")))  # end marker
        done.set()
        await writer_task  # answer what was asked before the end of input

    async def _write(self, writer: asyncio.StreamWriter, replies: deque[asyncio.Task[bytes]],
                     more: asyncio.Event) -> None:
        try:
            while True:
                while not replies:
                    more.clear()
                    await more.wait()
                reply = await replies.popleft()
                if not reply:
                    break
                writer.write(reply)
                if not replies:
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            for task in replies:
                task.cancel()
            writer.close()

    async def _reply(self, line: bytes) -> bytes:
        words = line.split()
        try:
            out = await self.command(words) if words else "ERR empty command"
        except Exception as exc:  # every failure is a reply, never a crash
            out = f"ERR {type(exc).__name__}: {exc}"
        return out.encode() + b"\r\n"

    async def command(self, words: list[bytes]) -> str:
        name, args = words[0].upper(), words[1:]
        driver, machine = self.driver, self.machine
        if name == b"SET" and len(args) == 2:
            index = await driver.propose(OP_SET + msgpack.packb(args), forward=True)
            return f"OK {index}"
        if name == b"INCR" and len(args) == 1:
            return str(await driver.execute(OP_INCR + args[0], forward=True))
        if name in (b"GET", b"LGET") and len(args) == 1:
            if name == b"GET":
                await driver.read_barrier()
            value = machine.data.get(args[0])
            return "NIL" if value is None else f"VALUE {value.decode(errors='replace')}"
        if name == b"DIGEST":
            return (f"{machine.applied} {len(machine.data)} {machine.bench_entries} "
                    f"{machine.digest()}")
        if name == b"STATUS":
            return json.dumps(driver.status())
        if name == b"ADD" and len(args) == 2:
            host, port = parse_hostport(args[1].decode())
            return f"OK {await driver.add_node(int(args[0]), (host, port), forward=True)}"
        if name == b"REMOVE" and len(args) == 1:
            return f"OK {await driver.remove_node(int(args[0]), forward=True)}"
        if name == b"TRANSFER":
            return f"OK {await driver.transfer_leadership()}"
        if name == b"BENCH" and len(args) == 3:
            n, size, concurrency = (int(a) for a in args)
            return f"BENCH {n} {await self.bench(n, size, concurrency):.3f}"
        return f"ERR unknown command or wrong arguments: {words[0].decode(errors='replace')}"

    async def bench(self, n: int, size: int, concurrency: int) -> float:
        payload = OP_BENCH + b"x" * (size - 1)
        left = [n]

        async def proposer() -> None:
            while left[0] > 0:
                left[0] -= 1
                await self.driver.propose(payload)

        started = time.perf_counter()
        await asyncio.gather(*(proposer() for _ in range(concurrency)))
        return time.perf_counter() - started


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    peers = {}
    for item in filter(None, text.split(",")):
        node_id, _, address = item.partition("=")
        peers[int(node_id)] = parse_hostport(address)
    return peers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raft_kv_demo", description=__doc__.split("\n")[0])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--listen", required=True, help="client HOST:PORT")
    p.add_argument("--raft", required=True, help="node-to-node HOST:PORT")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--peers", default="", help="ID=HOST:PORT,... (Raft addresses)")
    p.add_argument("--join", action="store_true", help="join a running cluster")
    p.add_argument("--cluster-secret", default=None)
    p.add_argument("--tick-ms", type=int, default=20)
    p.add_argument("--election-tick", type=int, default=15)
    p.add_argument("--snapshot-every", type=int, default=10_000)
    p.add_argument("--compaction-margin", type=int, default=1_000)
    p.add_argument("--fsync-inline", action="store_true", help="fsync on the event loop")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    peers = parse_peers(args.peers)
    config = DriverConfig(
        node_id=args.id, data_dir=Path(args.data_dir), listen=parse_hostport(args.raft),
        peers=peers, founders=() if args.join else tuple(sorted(peers)),
        secret=args.cluster_secret, tick_s=args.tick_ms / 1000,
        election_tick=args.election_tick, snapshot_every=args.snapshot_every,
        compaction_margin=args.compaction_margin, fsync_in_thread=not args.fsync_inline)
    host, port = parse_hostport(args.listen)

    async def serve(stop: asyncio.Event) -> int:
        machine = KvMachine()
        driver = RaftDriver(config, machine.apply, machine.snapshot, machine.restore)
        await driver.start()
        service = Service(driver, machine)
        server = await asyncio.start_server(service.handle, host, port, limit=MAX_LINE_BYTES)
        log.info("raft_kv_demo: node %d serving clients on %s:%d", args.id, host, port)
        failed = asyncio.ensure_future(driver.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.close()
        await service.close()
        if failed.done():
            return 1 if failed.exception() else 0
        failed.cancel()
        await driver.stop(transfer=True)
        log.info("raft_kv_demo: node %d stopped", args.id)
        return 0

    return run(serve)


if __name__ == "__main__":
    raise SystemExit(main())
