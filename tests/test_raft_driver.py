"""core.raft.driver: an in-process cluster for the API, then real processes for the drills.

The drills run tests/raft_kv_demo.py (a replicated key-value map) as three processes on
127.0.0.2-4 and kill, terminate, stop and restart them. Timeouts only detect hangs (HANG_S);
nothing asserts on speed. The throughput figure is printed (run with -s to see it).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.raft.driver import DriverConfig, NotLeaderError, RaftDriver
from tests.conftest import find_free_port
from tests.procs import Daemon
from tests.raft_kv_demo import KvMachine

HANG_S = 30.0
SECRET = "drill secret"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = HANG_S) -> Any:
    """Poll `predicate` until it returns something truthy; fail (a hang) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what} after {timeout}s")
        time.sleep(0.05)


# -- in-process: the API -----------------------------------------------------------------------

def test_in_process_cluster_api(tmp_path: Path) -> None:
    async def main() -> None:
        hosts = HOSTS[:3]
        raft = {i + 1: (h, find_free_port(h)) for i, h in enumerate(hosts)}
        machines = {i: KvMachine() for i in raft}
        drivers = {i: RaftDriver(DriverConfig(node_id=i, data_dir=tmp_path / f"n{i}",
                                              listen=raft[i], peers=raft, founders=(1, 2, 3),
                                              secret=SECRET, tick_s=0.01),
                                 m.apply, m.snapshot, m.restore) for i, m in machines.items()}
        for d in drivers.values():
            await d.start()
        while not any(d.status()["role"] == "leader" for d in drivers.values()):
            await asyncio.sleep(0.02)
        leader = next(d for d in drivers.values() if d.status()["role"] == "leader")
        follower = next(d for d in drivers.values() if d is not leader)
        while follower.status()["leader"] != leader.id:  # its first message may be under way
            await asyncio.sleep(0.02)
        with pytest.raises(NotLeaderError) as info:
            await follower.propose(b"S" + b"\x92\xa1k\xa1v")
        assert info.value.leader == leader.id and info.value.address == raft[leader.id]
        # Group commit: 300 concurrent proposals share far fewer fsyncs than proposals.
        fsyncs = leader.status()["fsyncs"]
        indexes = await asyncio.gather(*(leader.propose(b"B" + b"x" * 99) for _ in range(300)))
        assert len(set(indexes)) == 300
        assert leader.status()["fsyncs"] - fsyncs < 300
        assert await follower.execute(b"Ictr", forward=True) == 1
        index = await follower.read_barrier()
        assert index >= max(indexes) and machines[follower.id].data[b"ctr"] == b"1"
        new = await leader.transfer_leadership(to=follower.id)
        assert new == follower.id
        status = follower.status()
        assert status["members"] == [1, 2, 3] and status["applied"] >= index
        for d in drivers.values():
            await d.stop()
        assert machines[1].bench_entries == machines[2].bench_entries == 300

    asyncio.run(asyncio.wait_for(main(), HANG_S))


# -- real processes ----------------------------------------------------------------------------

class KvNode:
    """One tests.raft_kv_demo process and a tiny blocking client for its line protocol."""

    def __init__(self, tmp: Path, node_id: int, host: str, raft_port: int, peers: str,
                 join: bool = False, extra: list[str] | None = None) -> None:
        self.id = node_id
        self.host = host
        self.raft_address = f"{host}:{raft_port}"
        port = find_free_port(host)
        argv = ["tests.raft_kv_demo", "--id", str(node_id), "--listen", f"{host}:{port}",
                "--raft", self.raft_address, "--data-dir", str(tmp / f"kv{node_id}"),
                "--peers", peers, "--cluster-secret", SECRET, *(extra or [])]
        if join:
            argv.append("--join")
        self.daemon = Daemon(argv, host, port, tmp / f"kv{node_id}.log")

    def cmd(self, *lines: str) -> list[str]:
        """Send the lines pipelined; return one reply line each."""
        with socket.create_connection((self.host, self.daemon.port), timeout=HANG_S) as sock:
            sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
            buf = b""
            while buf.count(b"\r\n") < len(lines):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"node {self.id} closed the connection")
                buf += chunk
        return buf.decode().split("\r\n")[:len(lines)]

    def status(self) -> dict[str, Any]:
        return json.loads(self.cmd("STATUS")[0])

    def digest(self) -> str:
        return self.cmd("DIGEST")[0]


class Cluster:
    def __init__(self, tmp: Path, size: int = 3, extra: list[str] | None = None) -> None:
        self.tmp = tmp
        self.extra = extra or []
        self.raft_ports = {i + 1: find_free_port(h) for i, h in enumerate(HOSTS)}
        founders = range(1, size + 1)
        self.peers = ",".join(f"{i}={HOSTS[i - 1]}:{self.raft_ports[i]}" for i in founders)
        self.nodes = {i: KvNode(tmp, i, HOSTS[i - 1], self.raft_ports[i], self.peers,
                                extra=self.extra) for i in founders}

    def start(self) -> Cluster:
        for node in self.nodes.values():
            node.daemon.start()
        return self

    def live(self) -> list[KvNode]:
        return [n for n in self.nodes.values() if n.daemon.alive()]

    def leader(self, among: list[KvNode] | None = None, exclude: int = 0) -> KvNode:
        """Wait until one node leads, and every node asked agrees on it."""
        def agreed() -> KvNode | None:
            nodes = among or self.live()
            views = [(n.status()["term"], n.status()["leader"]) for n in nodes]
            term, lead = max(views)
            if lead == 0 or lead == exclude or any(v != (term, lead) for v in views):
                return None
            return self.nodes[lead]

        return wait_until(agreed, "an agreed leader")

    def converged(self, nodes: list[KvNode] | None = None) -> str:
        """Wait until the nodes have applied the same entries; return the common digest."""
        def same() -> str | None:
            digests = {n.digest() for n in nodes or self.live()}
            return digests.pop() if len(digests) == 1 else None

        return wait_until(same, "replicas to converge")

    def stop(self) -> None:
        live = self.live()
        for node in live:
            node.daemon.signal(signal.SIGCONT)
            node.daemon.signal(signal.SIGTERM)
        for node in live:
            try:
                node.daemon.stop()
            except Exception:
                node.daemon.kill()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        made.append(Cluster(tmp_path, **kwargs))
        return made[-1].start()

    yield make
    for cluster in made:
        cluster.stop()


class Writer(threading.Thread):
    """Keeps writing SET w<n> <n> through `node`; records what was acknowledged."""

    def __init__(self, node_fn: Callable[[], KvNode], prefix: str) -> None:
        super().__init__(daemon=True)
        self.node_fn = node_fn
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            key = f"{self.prefix}{n}"
            try:
                reply = self.node_fn().cmd(f"SET {key} {n}")[0]
            except OSError:
                reply = "ERR connection"
            if reply.startswith("OK"):
                self.acked[key] = str(n)
            else:
                self.errors += 1
                time.sleep(0.02)

    def finish(self) -> dict[str, str]:
        self.halt.set()
        self.join(HANG_S)
        return self.acked


def check_all_present(node: KvNode, acked: dict[str, str]) -> None:
    keys = sorted(acked)
    replies = node.cmd(*(f"LGET {k}" for k in keys))
    missing = [k for k, r in zip(keys, replies, strict=True) if r != f"VALUE {acked[k]}"]
    assert not missing, f"acknowledged writes lost on node {node.id}: {missing[:10]}"


def test_writes_through_any_node_apply_on_all(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    cluster.leader()
    acked = {}
    for node in cluster.nodes.values():
        replies = node.cmd(*(f"SET n{node.id}k{i} v{i}" for i in range(20)), "INCR ctr")
        assert all(r.startswith("OK ") for r in replies[:-1]), replies
        acked.update({f"n{node.id}k{i}": f"v{i}" for i in range(20)})
    assert [n.cmd("GET ctr")[0] for n in cluster.nodes.values()] == ["VALUE 3"] * 3
    cluster.converged()
    for node in cluster.nodes.values():
        check_all_present(node, acked)


def test_sigkill_of_the_leader_loses_nothing_and_the_node_catches_up_after_restart(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(extra=["--snapshot-every", "200", "--compaction-margin", "50"])
    old = cluster.leader()
    survivor = next(n for n in cluster.nodes.values() if n is not old)
    writer = Writer(lambda: survivor, "a")
    writer.start()
    wait_until(lambda: len(writer.acked) >= 50, "writes before the kill")
    last_before = old.status()["last_index"]
    old.daemon.kill()
    new = cluster.leader(exclude=old.id)
    wait_until(lambda: len(writer.acked) >= 50 + 400, "writes after the kill")
    acked = writer.finish()
    check_all_present(new, acked)
    assert new.status()["first_index"] > last_before + 1  # compacted past what it had
    old.daemon.start()
    digest = cluster.converged()
    check_all_present(old, acked)
    assert old.digest() == digest
    assert "restored the snapshot" in old.daemon.log()  # caught up by InstallSnapshot


def test_sigterm_of_the_leader_hands_leadership_over(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    old = cluster.leader()
    assert old.cmd("SET before term")[0].startswith("OK")
    old.daemon.signal(signal.SIGTERM)
    assert old.daemon.proc is not None and old.daemon.proc.wait(HANG_S) == 0
    rest = cluster.live()
    new = cluster.leader(among=rest)
    assert new is not old
    assert f"handed leadership to node {new.id}" in old.daemon.log()
    assert new.cmd("GET before")[0] == "VALUE term"


def test_sigstop_of_the_leader_then_sigcont_steps_it_down(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    old = cluster.leader()
    term = old.status()["term"]
    old.daemon.signal(signal.SIGSTOP)
    rest = [n for n in cluster.nodes.values() if n is not old]
    new = cluster.leader(among=rest, exclude=old.id)
    assert new.cmd("SET during stop")[0].startswith("OK")
    old.daemon.signal(signal.SIGCONT)
    wait_until(lambda: old.status()["leader"] == new.id and old.status()["role"] == "follower",
               "the old leader to follow the new one")
    assert old.status()["term"] > term
    cluster.converged()
    assert old.cmd("LGET during")[0] == "VALUE stop"


def test_add_and_remove_a_node_while_proposals_run(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    leader = cluster.leader()
    followers = [n for n in cluster.nodes.values() if n is not leader]
    writers = [Writer(lambda n=n: n, f"w{n.id}-") for n in followers]  # type: ignore[misc]
    for w in writers:
        w.start()
    port4 = cluster.raft_ports[4]
    fourth = KvNode(cluster.tmp, 4, HOSTS[3], port4, cluster.peers, join=True)
    cluster.nodes[4] = fourth
    fourth.daemon.start()
    assert followers[0].cmd(f"ADD 4 {HOSTS[3]}:{port4}")[0].startswith("OK")
    wait_until(lambda: fourth.status()["members"] == [1, 2, 3, 4], "node 4 to join")
    # adding a member again is refused before its address is republished (that would cut
    # node 4 off; the writes below go on reaching it)
    again = followers[0].cmd(f"ADD 4 {HOSTS[3]}:1")[0]
    assert again.startswith("ERR") and "already a voter" in again, again
    assert leader.cmd(f"REMOVE {leader.id}")[0].startswith("OK")  # even the leader
    rest = [*followers, fourth]
    new = cluster.leader(among=rest, exclude=leader.id)
    assert new.status()["members"] == sorted(n.id for n in rest)
    leader.daemon.stop()
    progress = [len(w.acked) for w in writers]
    wait_until(lambda: all(len(w.acked) > p + 20 for w, p in zip(writers, progress,
                                                                 strict=True)),
               "writes after the changes")
    acked = {k: v for w in writers for k, v in w.finish().items()}
    cluster.converged(rest)
    check_all_present(fourth, acked)


def bench_entries(digest: str) -> int:
    """The benchmark entries a node applied, from its DIGEST line."""
    return int(digest.split()[2])


def test_throughput_figure(cluster_factory: Callable[..., Cluster]) -> None:
    """1000 concurrent proposers in the leader's process, 100-byte entries, 3 nodes, fsync
    on: every entry the benchmark saw committed is applied on every node, exactly once when
    the first attempt kept its leader. The rate is printed, not asserted (timed assertions
    do not belong here)."""
    cluster = cluster_factory()
    count = 30_000
    attempts = 0
    while attempts < 3:  # on a busy machine a burst can stall the leader
        attempts += 1
        leader = cluster.leader()
        leader.cmd("BENCH 2000 100 1000")  # warm up
        before = bench_entries(cluster.converged())
        reply = leader.cmd(f"BENCH {count} 100 1000")[0].split()
        if reply[1].isdigit():
            break
        print(f"\nthe benchmark lost its leader ({' '.join(reply)}); again")
    assert reply[0] == "BENCH" and int(reply[1]) == count, reply
    seconds = float(reply[2])
    after = bench_entries(cluster.converged())  # every node: the same applied entries
    if attempts == 1:
        assert after - before == count, (before, after)
    else:  # entries of the lost attempt may still have been committed meanwhile
        assert after - before >= count, (before, after)
    fsyncs = leader.status()["fsyncs"]
    assert fsyncs > 0
    print(f"\nraft driver throughput: {count / seconds:,.0f} committed entries/s "
          f"({count} x 100 B, 1000 proposers, 3 nodes, fsync on; leader fsyncs so far {fsyncs})")
