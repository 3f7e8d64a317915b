"""dfs online membership: the balancer and decommissioning.

- sans I/O (dfs/chunk_placement.py, dfs/balancer.py): a new empty server gets copies from
  the fullest, a few at a time, and the trim drops the extra replica from the fullest; a
  decommissioning server gets no new chunk, its chunks are copied elsewhere, its replicas
  dropped once the target is met elsewhere, and it then reports 0 chunks left; the mark
  survives a snapshot of the chunk table;
- real processes (tests/dfs_cluster.py): a chunk server added under a write/read load gets
  chunks and no read or write fails; another decommissioned under load (`dfs admin
  decommission`) drains with reads and writes going on, every chunk keeps 3 replicas, and
  once it is stopped every file reads back. Timeouts only detect hangs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs import balancer
from dfs import chunks as ct
from dfs.admin import drain_line, report_lines
from dfs.chunk_placement import Placement
from dfs.client import DfsClient, DfsError
from dfs.namespace import Namespace
from tests.dfs_cluster import DfsCluster, eventually

CHUNK = 64 * 1024
GIB = 1 << 30


# -- sans I/O ---------------------------------------------------------------------------------

def _table(files: int) -> ct.ChunkTable:
    namespace = Namespace()
    table = ct.ChunkTable(namespace)
    machine = ct.MasterMachine(namespace, table)
    from dfs import namespace as ns

    for i in range(files):
        entries = [ns.encode_create(1, f"/f{i}", False), ct.encode_alloc(1, f"/f{i}", 0),
                   ct.encode_complete(1, f"/f{i}", [10])]
        machine.apply([(0, e) for e in entries])
    return table


def _report(sid: str, held: dict[int, int], rack: str = "r") -> dict[str, Any]:
    return {"id": sid, "addr": f"{sid}:1", "rack": rack, "free": GIB, "used": 0,
            "chunks": [[c, v, 10] for c, v in held.items()]}


def _tick(placement: Placement, held: dict[str, dict[int, int]], now: float) -> None:
    """One round: every server reports, obeys its reply (copies land at once), then plan."""
    for sid in list(held):
        reply = placement.heartbeat(now, _report(sid, held[sid]))
        for chunk in reply["delete"]:
            held[sid].pop(chunk, None)
        for chunk, version, target in reply["copy"]:
            held[target.split(":")[0]][chunk] = version
    placement.plan(now)


def _counts(held: dict[str, dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for chunks in held.values():
        for c in chunks:
            out[c] = out.get(c, 0) + 1
    return out


def test_a_new_server_gets_chunks_and_replication_stays_at_3() -> None:
    table = _table(40)
    placement = Placement(table, random.Random(1), min_servers=1)
    held = {s: {c: 1 for c in table.chunks} for s in ("a", "b", "c")}
    held["d"] = {}
    for round_ in range(60):
        _tick(placement, held, float(round_))
        assert min(_counts(held).values()) >= 3
        assert sum(len(t) for t in placement.copying.values()) <= balancer.MAX_MOVES
    assert len(held["d"]) >= 25
    assert set(_counts(held).values()) == {3}


def test_a_decommissioned_server_drains_and_its_replicas_go() -> None:
    table = _table(20)
    placement = Placement(table, random.Random(2), min_servers=1)
    held = {s: {} for s in "abcd"}
    for chunk in table.chunks:
        for sid in random.Random(chunk).sample("abcd", 3):
            held[sid][chunk] = 1
    _tick(placement, held, 0.0)
    table.apply_one(ct.encode_decommission(1, "a:1", True))
    assert "a" not in [s.server_id for s in placement.choose(4)]
    for round_ in range(1, 30):
        _tick(placement, held, float(round_))
        assert min(_counts(held).values()) >= 3
    assert held["a"] == {}
    assert placement.drains() == [["a:1", "a", 0]]
    assert drain_line(placement.drains()[0]) == "a:1 is drained: it may be stopped"
    restored = ct.ChunkTable(table.namespace)
    restored.restore(table.snapshot())
    assert restored.decommissioning == {"a:1"}
    table.apply_one(ct.encode_decommission(2, "a:1", False))
    assert table.decommissioning == set()


def test_report_lines_show_a_drain() -> None:
    report = {"safe_mode": 0, "replication": 3, "chunks": 9, "under_replicated": [],
              "servers": [], "decommissioning": [["x:1", "x", 4], ["y:1", "", 0]]}
    lines = report_lines(report)
    assert "x:1 is decommissioning: 4 chunk(s) left" in lines
    assert any(line.startswith("y:1 is marked decommissioning but does not report")
               for line in lines)


# -- real processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DfsCluster]:
    c = DfsCluster(tmp_path_factory.mktemp("dfsm"), chunkservers=3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Load:
    """Writes new files and reads the written ones back in a thread; every failure kept."""

    def __init__(self, cluster: DfsCluster, prefix: str) -> None:
        self.cluster, self.prefix = cluster, prefix
        self.written: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(self.prefix)
        with self.cluster.client(chunk_size=CHUNK) as fs:
            fs.mkdir(self.prefix, parents=True)
            while not self.stop.is_set():
                path = f"{self.prefix}/w{len(self.written)}"
                data = os.urandom(rng.randrange(1, 3 * CHUNK))
                try:
                    fs.write_bytes(path, data)
                    self.written[path] = data
                    probe = rng.choice(list(self.written))
                    if fs.read_bytes(probe) != self.written[probe]:
                        self.failures.append(f"{probe}: wrong bytes")
                except DfsError as exc:
                    self.failures.append(f"{path}: {exc}")

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        eventually(lambda: len(self.written) >= 2 or self.failures, "the load's writes")
        self.stop.set()
        self.thread.join(60)


def _moved_to(fs: DfsClient, address: str, paths: list[str]) -> int:
    """How many chunks of `paths` have a replica at `address`."""
    return sum(address in row[3] for p in paths for row in fs.locate(p)[2])


def _replicated(fs: DfsClient, paths: list[str]) -> bool:
    if fs.report()["under_replicated"]:
        return False
    return all(len(row[3]) == 3 for p in paths for row in fs.locate(p)[2])


def test_add_then_decommission_under_load(cluster: DfsCluster) -> None:
    with cluster.client(chunk_size=CHUNK) as fs:
        fs.mkdir("/m", parents=True)
        base = {f"/m/f{i}": os.urandom(2 * CHUNK + i) for i in range(8)}
        for path, data in base.items():
            fs.write_bytes(path, data)
        new = cluster._chunkserver(3, 60_000)
        cluster.chunkservers.append(new)
        with Load(cluster, "/m/load1") as load:
            new.start()
            eventually(lambda: _moved_to(fs, new.address, list(base)) >= 4,
                       "chunks of the old files moved to the new server")
        assert load.failures == []
        leaving = cluster.chunkservers[0]
        with Load(cluster, "/m/load2") as load2:
            done = subprocess.run(
                [sys.executable, "-m", "dfs", "admin", "decommission", leaving.address,
                 "--masters", ",".join(cluster.master_addresses)],
                capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, done.stderr
        assert f"{leaving.address} is drained: it may be stopped" in done.stdout
        assert "chunks left" in done.stderr  # the progress bar
        assert load2.failures == []
        paths = [*base, *load.written, *load2.written]
        eventually(lambda: _replicated(fs, paths), "every chunk at 3 replicas")
        leaving.kill()
        for path in base:
            assert fs.read_bytes(path) == base[path]
        for path, data in {**load.written, **load2.written}.items():
            assert fs.read_bytes(path) == data


# -- the README's promises ----------------------------------------------------------------------

PROMISES = {  # README.md's sentence -> the tests that check it
    "A chunk server that joins gets chunks: when nothing is under-replicated, the leader's "
    "balancer copies a few chunks at a time from the fullest server to the emptiest, then "
    "drops the extra replica from the fullest, so a chunk never has fewer replicas than the "
    "target.": (test_a_new_server_gets_chunks_and_replication_stays_at_3,
                test_add_then_decommission_under_load),
    "`dfs admin decommission NODE` (NODE is a chunk server's id or address) marks the "
    "server in the Raft log: no new chunk goes to it, everything on it is copied elsewhere "
    "(fewest replicas first) and its replicas are dropped once copied; the command shows the "
    "chunks left as a progress bar and ends with `NODE is drained: it may be stopped`":
        (test_a_decommissioned_server_drains_and_its_replicas_go,
         test_add_then_decommission_under_load),
}


def test_the_readme_says_what_these_tests_check() -> None:
    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for sentence, tests in PROMISES.items():
        assert sentence in text, (sentence, [t.__name__ for t in tests])
