"""A chunk server alone, in-process on its own event loop (no master: its heartbeats fail
and it goes on), driven over real sockets with the blocking data-path link: a chain of
three servers writes a chunk to all three disks before the first answers; a damaged
digest is refused everywhere; a read of a flipped byte is an error naming the block and
the replica is dropped; bad requests get a clear error and the connection is closed; a
lease that ran out fails the write, and the chain carries the lease's time left to every
secondary (which checks it the same way); an unexpected error in a heartbeat is logged
and the heartbeats go on; a client on the same host reads a replica's file through the
descriptor the server passes (short-circuit), every block checked, and falls back to TCP
where there is no local server. And the heartbeat report's parser (hypothesis): any
msgpack value is taken or refused with ValueError/KeyError/TypeError, nothing else.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs import chunk_wire as wire
from dfs.chunk_local import OP_OPEN, LocalReads, LocalReadServer
from dfs.chunk_net import ReplyError, SyncLink, check_reply
from dfs.chunk_placement import Placement
from dfs.chunks import ChunkTable
from dfs.chunkserver import ChunkServer, ChunkServerConfig
from dfs.namespace import Namespace

HANG_S = 120.0  # (only detects a hang: a loaded machine is slow)


class Running:
    """Chunk servers on one background event loop."""

    def __init__(self, tmp: Path, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[ChunkServer] = []
        for i in range(count):
            config = ChunkServerConfig(tmp / f"cs{i}", "r", ["127.0.0.1:1"],
                                       heartbeat_s=1.0, scrub_pause_s=3600)
            server = self.run(self._start(config))
            self.servers.append(server)

    async def _start(self, config: ChunkServerConfig) -> ChunkServer:
        server = ChunkServer(config)
        await server.start("127.0.0.1", 0)
        return server

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(HANG_S)

    def address(self, i: int) -> str:
        return self.servers[i].config.advertise

    def stop(self) -> None:
        for server in self.servers:
            self.run(server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, 3)
    try:
        yield running
    finally:
        running.stop()


def put(address: str, chunk: int, version: int, chain: list[str], data: bytes,
        digest: int | None = None, lease_ms: int | None = None, pause_s: float = 0) -> None:
    link = SyncLink(address, 10)
    try:
        header: dict[str, Any] = {"op": wire.OP_PUT, "chunk": chunk, "version": version,
                                  "chain": chain}
        if lease_ms is not None:
            header["lease_ms"] = lease_ms
        link.send(header)
        for i in range(0, len(data), 100_000):
            time.sleep(pause_s)
            link.send({"op": wire.OP_DATA}, data[i:i + 100_000])
        link.send({"op": wire.OP_END, "size": len(data),
                   "digest": xxhash.xxh3_64_intdigest(data) if digest is None else digest})
        check_reply(link.receive(), address)
    finally:
        link.close()


def get(address: str, chunk: int, version: int, offset: int, length: int) -> bytes:
    link = SyncLink(address, 10)
    try:
        return link.call({"op": wire.OP_GET, "chunk": chunk, "version": version,
                          "offset": offset, "length": length}).payload
    finally:
        link.close()


def test_a_chain_writes_every_replica_before_the_ok(servers: Running) -> None:
    data = os.urandom(700_000)
    a, b, c = (servers.address(i) for i in range(3))
    put(a, 5, 1, [b, c], data)
    for i in range(3):  # the ok came after all three had it on disk
        assert servers.servers[i].store.report() == [[5, 1, len(data)]]
        assert get(servers.address(i), 5, 1, 1000, 5000) == data[1000:6000]
    with pytest.raises(ReplyError, match="no chunk 5 version 2"):
        get(a, 5, 2, 0, 10)  # a version it does not hold is never served
    with pytest.raises(ReplyError, match="older than the version 1"):
        put(b, 5, 0, [], b"x")
    with pytest.raises(ReplyError, match="arrived damaged"):
        put(a, 6, 1, [b, c], data, digest=1)
    assert all(6 not in s.store.replicas for s in servers.servers)


def test_an_unreachable_next_server_is_named(servers: Running) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    with pytest.raises(ReplyError) as info:
        put(servers.address(0), 7, 1, [dead], b"data")
    assert info.value.failed == [dead]
    assert 7 not in servers.servers[0].store.replicas


def test_a_flipped_byte_is_an_error_and_the_replica_is_dropped(servers: Running) -> None:
    data = os.urandom(200_000)
    put(servers.address(0), 9, 1, [], data)
    path = servers.servers[0].store.dir / "9_1.data"
    raw = bytearray(path.read_bytes())
    raw[150_000] ^= 1
    path.write_bytes(bytes(raw))
    assert get(servers.address(0), 9, 1, 0, 1000) == data[:1000]  # block 0 is fine
    with pytest.raises(ReplyError, match="checksum mismatch in chunk 9 block 2"):
        get(servers.address(0), 9, 1, 140_000, 20_000)
    assert servers.servers[0].store.get(9) is None and servers.servers[0].bad == {9}


def test_a_lease_that_ran_out_fails_the_write(servers: Running) -> None:
    with pytest.raises(ReplyError, match="lease of chunk 11 has expired"):
        put(servers.address(0), 11, 1, [], os.urandom(300_000), lease_ms=50, pause_s=0.06)
    put(servers.address(0), 11, 1, [], b"quick", lease_ms=60_000)


class FakeNext:
    """A next server of a chain that records the frames it is sent and answers ok."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.headers: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            reader = wire.FrameReader()
            while not self.headers or self.headers[-1].get("op") != wire.OP_END:
                data = conn.recv(1 << 16)
                if not data:
                    return
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    self.headers.append(frame.header)
            conn.sendall(b"".join(wire.encode_frame({"ok": True})))


def test_a_secondary_learns_the_lease_and_its_renewals(servers: Running) -> None:
    fake = FakeNext()
    data = os.urandom(250_000)
    link = SyncLink(servers.address(0), HANG_S)
    try:
        link.send({"op": wire.OP_PUT, "chunk": 13, "version": 1, "chain": [fake.address],
                   "lease_ms": 60_000})
        link.send({"op": wire.OP_DATA}, data[:100_000])
        link.send({"op": wire.OP_DATA, "lease_ms": 30_000}, data[100_000:])  # a renewal
        link.send({"op": wire.OP_END, "size": len(data),
                   "digest": xxhash.xxh3_64_intdigest(data)})
        check_reply(link.receive(), servers.address(0))
    finally:
        link.close()
        fake.thread.join(HANG_S)
        fake.listener.close()
    put_, first, renewal, end = fake.headers
    assert 0 < put_["lease_ms"] <= 60_000 and "lease_ms" not in first
    assert 0 < renewal["lease_ms"] <= 30_000 and 0 < end["lease_ms"] <= 30_000
    # A secondary checks what it was told as the primary does: a forwarded write whose
    # lease ran out (its primary was paused past it) is refused.
    with pytest.raises(ReplyError, match="lease of chunk 14 has expired on"):
        put(servers.address(1), 14, 1, [], os.urandom(300_000), lease_ms=50, pause_s=0.06)
    assert 14 not in servers.servers[1].store.replicas


def test_the_heartbeats_go_on_after_an_unexpected_error(tmp_path: Path) -> None:
    """A heartbeat loop that died on one unforeseen exception left a live server declared
    dead for good (the drill's "cluster not whole again")."""
    calls: list[int] = []

    async def run() -> None:
        server = ChunkServer(ChunkServerConfig(tmp_path / "cs", "r", ["127.0.0.1:1"],
                                               heartbeat_s=0.05, scrub_pause_s=3600))
        real = server.report

        def report() -> dict[str, Any]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return real()

        server.report = report  # type: ignore[method-assign]
        await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(HANG_S):
                while len(calls) < 2:
                    await asyncio.sleep(0.01)
        finally:
            await server.stop()

    asyncio.run(run())
    assert len(calls) >= 2


def test_a_local_client_reads_the_replica_file_and_checks_every_block(
        servers: Running) -> None:
    data = os.urandom(3 * 65536 + 100)
    address = servers.address(0)
    put(address, 21, 1, [], data)
    local = LocalReads(HANG_S)
    try:
        replica = local.replica(address, 21, 1)
        assert replica is not None and replica.size == len(data)
        whole = bytearray(len(data))
        assert replica.read_into(0, memoryview(whole)) == len(data) and whole == data
        part = bytearray(1000)  # not on block boundaries: through a scratch buffer
        assert replica.read_into(65_000, memoryview(part)) == 1000
        assert part == data[65_000:66_000]
        with pytest.raises(ReplyError, match="no chunk 21 version 2"):
            local.replica(address, 21, 2)
        assert local.replica("127.0.0.1:1", 21, 1) is None  # no local server: TCP
        put(address, 22, 1, [], data)
        kept = local.replica(address, 22, 1)
        servers.servers[0].store.delete(22)  # a descriptor outlives the file's name
        assert kept is not None and kept.read_into(0, memoryview(whole)) == len(data)
        assert whole == data
        path = servers.servers[0].store.dir / "21_1.data"
        raw = bytearray(path.read_bytes())
        raw[65_536 + 7] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(ReplyError, match="checksum mismatch in chunk 21 block 1"):
            replica.read_into(0, memoryview(whole))
    finally:
        local.close()


@given(st.dictionaries(st.sampled_from(["op", "chunk", "version", "x"]),
                       st.one_of(st.integers(-2, 2**70), st.text(max_size=6),
                                 st.sampled_from([OP_OPEN, "get"]), st.none(),
                                 st.lists(st.integers(), max_size=2)), max_size=4))
@settings(max_examples=100, deadline=None)
def test_any_local_request_is_answered_or_refused(header: dict[str, Any]) -> None:
    class Store:
        def get(self, chunk: int) -> None:
            return None

        def open_data(self, chunk: int, version: int) -> None:
            return None

    server = LocalReadServer(Store(), "127.0.0.1:9")  # type: ignore[arg-type]
    a, b = socket.socketpair()
    with a, b:
        server._answer(a, header)
        reader = wire.FrameReader()
        reader.feed(b.recv(1 << 16))
        frame = reader.next_frame()
    assert frame is not None and "err" in frame.header


@pytest.mark.parametrize(("header", "error"), [
    ({"op": "nope"}, "unknown data-path request 'nope'"),
    ({"op": wire.OP_GET, "chunk": 1}, "bad 'get' request"),
    ({"op": wire.OP_GET, "chunk": "x", "version": 1, "offset": 0}, "bad 'get' request"),
    ({"op": wire.OP_GET, "chunk": 1, "version": 1, "offset": -1}, "must be >= 0"),
])
def test_bad_requests_get_an_error_and_the_connection_closes(
        servers: Running, header: dict[str, Any], error: str) -> None:
    link = SyncLink(servers.address(0), 10)
    try:
        link.send(header)
        with pytest.raises(ReplyError, match=error):
            check_reply(link.receive(), "server")
        assert link.receive() is None  # closed
    finally:
        link.close()


def test_a_broken_frame_gets_an_error(servers: Running) -> None:
    host, _, port = servers.address(0).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\x00\x00\x00\x02\x91\x01")  # a msgpack array, not a map
        reply = sock.recv(4096)
    assert b"not a map" in reply


# -- the heartbeat report parser ----------------------------------------------------------------

scalars = st.one_of(st.none(), st.integers(-5, 2**40), st.text(max_size=5),
                    st.binary(max_size=5))
values = st.one_of(scalars, st.lists(scalars, max_size=4),
                   st.lists(st.lists(scalars, max_size=4), max_size=4),
                   st.dictionaries(st.text(max_size=5), scalars, max_size=4))
reports = st.one_of(values, st.fixed_dictionaries(
    {"id": values, "addr": values, "rack": values, "free": values, "used": values,
     "chunks": values}))


@settings(max_examples=300, deadline=None)
@given(reports)
def test_any_report_is_taken_or_refused_cleanly(report: Any) -> None:
    namespace = Namespace()
    placement = Placement(ChunkTable(namespace), random.Random(0))
    try:
        reply = placement.heartbeat(0.0, report)
    except (ValueError, KeyError, TypeError):
        return
    assert set(reply) == {"delete", "copy"}


README = ("A client on a chunk server's host reads that server's replicas from their files, "
          "through a descriptor the server passes it over a Unix socket (short-circuit reads, "
          "as in HDFS), and checks every block itself.")


def test_the_readme_says_what_the_short_circuit_test_checks() -> None:
    text = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert README in text  # test_a_local_client_reads_the_replica_file_and_checks_every_block
