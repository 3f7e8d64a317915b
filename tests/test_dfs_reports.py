"""Incremental chunk reports: a chunk server reports every replica at start, then only what
changed; the master leader applies a change report only on top of the report it follows.

Without processes: a real ChunkServer (its store on disk) whose link to the masters is
replaced by a function handing the report to a real Placement, so a heartbeat's request or
reply can be lost and the leader can change between any two steps. The property: after
every heartbeat the leader acknowledged, its view of the server's replicas is exactly what
the server holds; the chunks a file delete or a new version made obsolete are deleted from
the server although no report lists them again.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs import chunks as ct
from dfs import namespace as ns
from dfs.chunk_placement import Placement
from dfs.chunk_store import ChunkStore
from dfs.chunks import ChunkTable, MasterMachine
from dfs.chunkserver import ChunkServer, ChunkServerConfig
from dfs.client_master import DfsError
from dfs.namespace import Namespace

FILE_CHUNKS = 4  # /f has chunks 1..4
README = ("After a full report at start, a chunk server's heartbeats carry only the replicas "
          "installed and dropped since its last report (as HDFS's incremental block reports "
          "do); a lost reply or a new master leader costs one full report, never a missed "
          "change.")


def test_the_readme_says_what_these_tests_check() -> None:
    text = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert README in text


def _write(store: ChunkStore, chunk: int, version: int, data: bytes = b"abc") -> None:
    writer = store.writer(chunk, version)
    writer.write(data)
    writer.finish(len(data), xxhash.xxh3_64_intdigest(data))


class Master:
    """A master leader's table and live view; `call` is FS.HEARTBEAT, with the faults the
    test asks for."""

    def __init__(self) -> None:
        namespace = Namespace()
        self.machine = MasterMachine(namespace, ChunkTable(namespace))
        self.apply(ns.encode_create(1, "/f"))
        for index in range(FILE_CHUNKS):
            self.apply(ct.encode_alloc(1, "/f", index))
        self.placement = Placement(self.machine.table, random.Random(1))
        self.fault = "none"
        self.reports: list[dict[str, Any]] = []

    def apply(self, entry: bytes) -> Any:
        return self.machine.apply([(1, entry)])[0]

    async def call(self, command: str, payload: bytes) -> bytes:
        assert command == "FS.HEARTBEAT"
        if self.fault == "request lost":
            raise DfsError("connection reset")
        report = msgpack.unpackb(payload)
        self.reports.append(report)
        reply = self.placement.heartbeat(0.0, report)
        if self.fault == "an old report again" and len(self.reports) > 1:
            self.placement.heartbeat(0.0, self.reports[-2])  # a retransmission, late
        if self.fault == "reply lost":
            raise DfsError("connection reset")
        return msgpack.packb(reply)


@contextmanager
def chunk_server(master: Master) -> Iterator[ChunkServer]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ChunkServer(ChunkServerConfig(Path(tmp), "r1", ["127.0.0.1:1"],
                                               advertise="127.0.0.1:2"))
        server.masters.call = master.call  # type: ignore[method-assign]
        try:
            yield server
        finally:
            server.lock.release()


def _held(server: ChunkServer) -> dict[int, int]:
    return {r.chunk: r.version for r in server.store.replicas.values()}


def _view(master: Master, server: ChunkServer) -> dict[int, int]:
    return dict(master.placement.servers[server.server_id].chunks)


def test_a_change_report_follows_a_full_one_and_carries_only_the_changes() -> None:
    master = Master()
    with chunk_server(master) as server:
        _write(server.store, 1, 1)
        asyncio.run(server._heartbeat())
        _write(server.store, 2, 1)
        asyncio.run(server._heartbeat())
        server.store.delete(1)
        asyncio.run(server._heartbeat())
        first, second, third = master.reports
        assert first["chunks"] == [[1, 1, 3]] and "base" not in first
        assert (second["added"], second["removed"], second["base"]) == ([[2, 1, 3]], [], 1)
        assert (third["added"], third["removed"], third["base"]) == ([], [1], 2)
        assert "chunks" not in second and "chunks" not in third
        assert _view(master, server) == {2: 1} == _held(server)


def test_a_change_report_on_another_base_or_a_late_old_report_is_not_applied() -> None:
    placement = Master().placement
    full = {"id": "s", "addr": "a:1", "rack": "r", "free": 1, "used": 0, "boot": 7,
            "seq": 2, "chunks": [[1, 1, 3]]}
    assert placement.heartbeat(0.0, full)["ack"] == 2
    change = {**full, "seq": 4, "base": 3, "added": [[2, 1, 3]], "removed": [1]}
    del change["chunks"]
    assert placement.heartbeat(0.0, change) == {"delete": [], "copy": [], "full": True}
    late = {**full, "seq": 1, "chunks": []}
    assert placement.heartbeat(0.0, late) == {"delete": [], "copy": []}
    assert placement.servers["s"].chunks == {1: 1}
    restarted = {**late, "boot": 8}  # a new process: its numbers start over
    assert placement.heartbeat(0.0, restarted)["ack"] == 1
    assert placement.servers["s"].chunks == {}


def test_a_new_version_written_where_the_old_one_was_is_kept() -> None:
    master = Master()
    with chunk_server(master) as server:
        _write(server.store, 1, 1)
        asyncio.run(server._heartbeat())
        master.apply(ct.encode_alloc(1, "/f", 0))  # chunk 1 gets version 2
        master.placement.recheck()  # (another server's heartbeat)
        _write(server.store, 1, 2)  # the new chain wrote it here too
        asyncio.run(server._heartbeat())
        assert master.reports[-1]["added"] == [[1, 2, 3]]
        assert _held(server) == {1: 2} == _view(master, server)


def test_a_new_leader_asks_for_a_full_report_at_once() -> None:
    master = Master()
    with chunk_server(master) as server:
        _write(server.store, 1, 1)
        asyncio.run(server._heartbeat())
        master.placement.reset()  # a new term: the leader knows no replica
        _write(server.store, 2, 1)
        asyncio.run(server._heartbeat())
        assert master.placement.servers == {}  # a change report on nothing is not applied
        assert server._report_now.is_set()  # the full report goes now, not a beat later
        asyncio.run(server._heartbeat())
        assert "chunks" in master.reports[-1]
        assert _view(master, server) == {1: 1, 2: 1}


def test_replicas_of_deleted_files_and_old_versions_are_deleted_without_a_report() -> None:
    master = Master()
    with chunk_server(master) as server:
        for chunk in (1, 2):
            _write(server.store, chunk, 1)
        asyncio.run(server._heartbeat())
        master.apply(ct.encode_alloc(1, "/f", 0))  # chunk 1 gets version 2 (a new lease)
        asyncio.run(server._heartbeat())
        assert master.reports[-1]["added"] == [] and _held(server) == {2: 1}
        inodes = list(master.machine.table.files)  # /f, as if purged from the trash
        assert master.apply(ct.encode_forget(3, inodes)) == FILE_CHUNKS
        asyncio.run(server._heartbeat())
        assert _held(server) == {} == _view(master, server)


STEPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(1, FILE_CHUNKS + 2), st.integers(1, 3)),
    st.tuples(st.just("drop"), st.integers(1, FILE_CHUNKS + 2)),
    st.tuples(st.just("new version"), st.integers(0, FILE_CHUNKS - 1)),
    st.tuples(st.just("heartbeat"),
              st.sampled_from(["none", "request lost", "reply lost", "new leader",
                               "an old report again"])),
), max_size=30)


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_the_leaders_view_equals_the_replicas_after_every_acknowledged_report(
        steps: list[tuple[Any, ...]]) -> None:
    master = Master()
    with chunk_server(master) as server:
        for step in [*steps, ("heartbeat", "none"), ("heartbeat", "none")]:
            if step[0] == "write":
                held = server.store.get(step[1])
                if held is None or held.version < step[2]:
                    _write(server.store, step[1], step[2])
            elif step[0] == "drop":
                server.store.delete(step[1])
            elif step[0] == "new version":
                master.apply(ct.encode_alloc(1, "/f", step[1]))
            else:
                master.fault = "none" if step[1] == "new leader" else step[1]
                if step[1] == "new leader":
                    master.placement.reset()
                asyncio.run(server._heartbeat())
                if server._acked:
                    assert _view(master, server) == _held(server)
        assert server._acked
