"""The dfs drill's partition round: the master leader cut off by the network during a
create/rename storm (tests/faults/dfs_drill.py runs it after its own phases, where the
harness can run).

Strategy: a fault harness (tests/faults/hosts.py) of six hosts: `dfs master` on n1-n3,
`dfs chunkserver` on n4-n6 (one rack each, so three replicas fit), fixed ports since each
host is its own network. Storm writers (dfs_storm.storm_writer) run in threads living on
n4's namespace. Every CUT_EVERY_S the leader of the moment is isolated for ISOLATE_S (above
the masters' election timeout, so the other two elect a new leader while the old one
still believes it leads), then healed. Afterwards the namespace is read back and checked
like the kill round's (dfs_checks.check_namespace): every acknowledged create and rename
present, each one of unknown outcome wholly applied or not at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dfs.client import DfsClient
from tests.dfs_cluster import ABANDON_MS, DEAD_MS, HEARTBEAT_MS, TRASH_KEEP_MS, eventually
from tests.faults import dfs_checks as checks
from tests.faults.checkers import CheckResult
from tests.faults.dfs_storm import digest, storm_ops, storm_writer
from tests.faults.hosts import Harness
from tests.faults.node import Host

MASTER_PORT = 7810
RAFT_PORT = 7910
CHUNK_PORT = 8010
MASTERS = 3
CHUNKSERVERS = 3
CLIENT_HOST = "n4"
ISOLATE_S = 3.0
CUT_EVERY_S = 6.0
PROCESS_PREFIX = "pw"
SECRET = "dfs-drill-secret"  # the masters' Raft traffic leaves loopback here
TRUSTED = ("--protected-mode", "no")  # the harness's network is the drill's own


class PartitionCluster:
    """Masters and chunk servers in harness hosts; `client()` for a thread on CLIENT_HOST."""

    def __init__(self, harness: Harness, workdir: Path) -> None:
        self.harness = harness
        self.workdir = workdir
        self.masters = harness.hosts[:MASTERS]
        self.addresses = ",".join(f"{h.address}:{MASTER_PORT}" for h in self.masters)
        self.pool = harness.executor(CLIENT_HOST)

    def start(self) -> None:
        peers = ",".join(f"{h.index}={h.address}:{RAFT_PORT}" for h in self.masters)
        for h in self.masters:
            self.harness.spawn(h, [
                "dfs", "master", "--id", str(h.index), "--listen", f"{h.address}:{MASTER_PORT}",
                "--peer-listen", f"{h.address}:{RAFT_PORT}", "--peers", peers,
                "--data-dir", str(self.workdir / f"m{h.index}"), "--tick-ms", "10",
                "--election-tick", "100", "--timeout-ms", "5000",
                "--chunkserver-dead-ms", str(DEAD_MS), "--min-chunkservers", str(CHUNKSERVERS),
                "--trash-keep-ms", str(TRASH_KEEP_MS), "--purge-every-ms", "200",
                "--abandoned-write-ms", str(ABANDON_MS), "--cluster-secret", SECRET, *TRUSTED],
                MASTER_PORT,
                f"master-{h.name}")
        for h in self.harness.hosts[MASTERS:MASTERS + CHUNKSERVERS]:
            self.harness.spawn(h, [
                "dfs", "chunkserver", "--listen", f"{h.address}:{CHUNK_PORT}", "--data-dir",
                str(self.workdir / f"cs-{h.name}"), "--rack", f"rack-{h.name}", "--masters",
                self.addresses, "--heartbeat-ms", str(HEARTBEAT_MS), *TRUSTED], CHUNK_PORT,
                f"chunkserver-{h.name}")

    def client(self, **options: Any) -> DfsClient:
        return DfsClient(self.addresses, **options)

    def run(self, call: Any, *args: Any) -> Any:
        """`call(*args)` in a thread on CLIENT_HOST; its result."""
        return self.pool.submit(call, *args).result()

    def ready(self) -> bool:
        with self.client() as fs:
            try:
                report = fs.report()
            except Exception:  # noqa: BLE001 - not ready yet
                return False
        return not report["safe_mode"] and len(report["servers"]) == CHUNKSERVERS

    def leader(self) -> Host:
        def ask() -> int | None:
            with self.client() as fs:
                try:
                    return int(fs.call("CLUSTER.LEADER")[0])
                except Exception:  # noqa: BLE001 - between leaders
                    return None

        index = eventually(lambda: self.run(ask), "a dfs master leader")
        return self.harness.host(f"n{index}")


@contextmanager
def partition_cluster(workdir: Path, seed: int) -> Iterator[PartitionCluster]:
    """A started PartitionCluster in a fresh harness, closed on exit."""
    with Harness(MASTERS + CHUNKSERVERS, workdir, seed=seed) as harness:
        cluster = PartitionCluster(harness, workdir)
        cluster.start()
        eventually(lambda: cluster.run(cluster.ready), "the partition cluster ready")
        yield cluster


def partition_round(r: Any, storm_s: float, writers: int) -> CheckResult:
    """The round (see the module header); `r` is the drill's Round, whose recorder, lock
    and faults it shares; its client is pointed at this cluster meanwhile."""
    with partition_cluster(r.workdir / "partition", r.seed) as cluster:
        original = r.client
        r.client = lambda: cluster.client(chunk_size=64 * 1024, deadline_s=10.0)
        try:
            cluster.run(lambda: r.client().mkdir("/ns", parents=True))
            stop = threading.Event()
            pool = cluster.harness.executor(CLIENT_HOST, workers=writers)
            futures = [pool.submit(storm_writer, r, f"{PROCESS_PREFIX}{n}", stop)
                       for n in range(writers)]
            end = time.monotonic() + storm_s
            while time.monotonic() < end:
                _cut_leader(r, cluster)
            stop.set()
            for future in futures:
                future.result(timeout=120)
            eventually(lambda: cluster.run(cluster.ready), "the cluster healed")
            found = cluster.run(_namespace, cluster)
        finally:
            r.client = original
    return checks.check_namespace(storm_ops(r.recorder, PROCESS_PREFIX), found,
                                  name="namespace-partition")


def _cut_leader(r: Any, cluster: PartitionCluster) -> None:
    time.sleep(CUT_EVERY_S - ISOLATE_S)
    leader = cluster.leader()
    r.fault("isolate", f"isolate master leader {leader.name}")
    cluster.harness.isolate(leader)
    time.sleep(ISOLATE_S)
    cluster.harness.heal()
    r.fault("isolate", f"heal {leader.name}", heal=True)


def _namespace(cluster: PartitionCluster) -> dict[str, str]:
    with cluster.client() as fs:
        return {f"/ns/{name}": digest(fs.read_bytes(f"/ns/{name}"))
                for name in fs.ls("/ns") if not name.endswith(checks.TEMP_SUFFIX)}
