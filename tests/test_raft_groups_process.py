"""Many Raft groups per process, with real processes: three tests.raft_groups_demo nodes on
127.0.0.2-4, each hosting the config group 0 and 50 data groups (every node a member of
every group). Writers keep writing to every group through every node; the node leading the
most groups is SIGKILLed mid-writes, the writing goes on, the node restarts on its data
directory; at the end every acknowledged write is read back from every group on every node
after a read barrier.

Timeouts only detect hangs (HANG_S); nothing asserts on speed. `GroupsCluster` is also what
bench/raft_groups.py starts.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon
from tests.test_raft_driver import HOSTS, SECRET, wait_until

HANG_S = 60.0
DATA_GROUPS = 50
WRITERS = 4
BATCH = 17  # SET lines pipelined per round trip (the groups are taken in turn)
WRITES_PER_PHASE = 600  # acknowledged writes before the kill, while down, after the restart


class GroupsNode:
    """One tests.raft_groups_demo process and a blocking client for its line protocol."""

    def __init__(self, tmp: Path, node_id: int, host: str, raft_port: int, peers: str,
                 groups: int, extra: list[str]) -> None:
        self.id = node_id
        self.host = host
        port = find_free_port(host)
        argv = ["tests.raft_groups_demo", "--id", str(node_id), "--listen", f"{host}:{port}",
                "--raft", f"{host}:{raft_port}", "--data-dir", str(tmp / f"groups{node_id}"),
                "--peers", peers, "--groups", str(groups), "--cluster-secret", SECRET, *extra]
        self.daemon = Daemon(argv, host, port, tmp / f"groups{node_id}.log")

    def cmd(self, *lines: str, timeout: float = HANG_S) -> list[str]:
        """Send the lines pipelined; return one reply line each (fewer if the node closes
        the connection: the replies received until then)."""
        with socket.create_connection((self.host, self.daemon.port), timeout=timeout) as sock:
            sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
            buf = b""
            while buf.count(b"\r\n") < len(lines):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return buf.decode().split("\r\n")[:buf.count(b"\r\n")]

    def json(self, line: str) -> Any:
        reply = self.cmd(line)[0]
        if reply.startswith("ERR"):
            raise AssertionError(f"node {self.id}: {line}: {reply}")
        return json.loads(reply)

    def status(self) -> dict[str, Any]:
        return self.json("STATUS")  # type: ignore[no-any-return]

    def leaders(self) -> dict[int, int]:
        return {int(g): lead for g, lead in self.json("LEADERS").items()}


class GroupsCluster:
    """Three GroupsNodes founding every group together (HOSTS[0:3])."""

    def __init__(self, tmp: Path, groups: int = DATA_GROUPS, extra: list[str] | None = None,
                 size: int = 3) -> None:
        self.tmp = tmp
        self.groups = groups
        raft_ports = {i + 1: find_free_port(HOSTS[i]) for i in range(size)}
        peers = ",".join(f"{i}={HOSTS[i - 1]}:{p}" for i, p in raft_ports.items())
        self.nodes = {i: GroupsNode(tmp, i, HOSTS[i - 1], p, peers, groups, extra or [])
                      for i, p in raft_ports.items()}

    def start(self, timeout: float = HANG_S) -> GroupsCluster:
        """Start every node at once; return when each listens for clients (its groups are
        open then)."""
        for node in self.nodes.values():
            node.daemon.start(wait=False)
        for node in self.nodes.values():
            assert node.daemon.proc is not None
            try:
                wait_for_tcp_port(node.host, node.daemon.port, timeout, node.daemon.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"node {node.id}: {exc}\n--- log ---\n"
                                   f"{node.daemon.log()[-4000:]}") from None
        return self

    def live(self) -> list[GroupsNode]:
        return [n for n in self.nodes.values() if n.daemon.alive()]

    def agreed_leaders(self, among: list[GroupsNode] | None = None,
                       timeout: float = HANG_S) -> dict[int, int]:
        """Wait until every group has a leader among `among` (default: the live nodes) and
        those nodes agree on it; return {group: leader}."""
        def agreed() -> dict[int, int] | None:
            nodes = among or self.live()
            ids = {n.id for n in nodes}
            views = [n.leaders() for n in nodes]
            first = views[0]
            if len(first) != self.groups + 1 or any(v != first for v in views[1:]):
                return None
            return first if all(lead in ids for lead in first.values()) else None

        return wait_until(agreed, "every group to have an agreed leader", timeout)  # type: ignore[no-any-return]

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


class Writers:
    """WRITERS threads writing `SET g key value` to every group in turn, BATCH lines per
    round trip, each thread through the live nodes in turn. A write counts as acknowledged
    only on its `OK` reply; `phase` (set by the test) is noted with each write as it is
    sent."""

    def __init__(self, cluster: GroupsCluster) -> None:
        self.cluster = cluster
        self.phase = "before"
        self.acked: list[tuple[int, str, str, str]] = []  # (group, key, value, phase)
        self.failed = 0
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                        for w in range(WRITERS)]

    def start(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def count(self, phase: str) -> int:
        with self._lock:
            return sum(1 for a in self.acked if a[3] == phase)

    def _run(self, writer: int) -> None:
        n = 0
        turn = writer
        groups = self.cluster.groups + 1
        while not self.halt.is_set():
            live = self.cluster.live()
            node = live[turn % len(live)]
            turn += 1
            phase = self.phase
            batch = []
            for _ in range(BATCH):
                n += 1
                batch.append(((writer * 7 + n) % groups, f"w{writer}-{n}", f"v{n}"))
            try:
                replies = node.cmd(*(f"SET {g} {k} {v}" for g, k, v in batch), timeout=30)
            except OSError:
                replies = []
            ok = [(g, k, v, phase) for (g, k, v), r in zip(batch, replies, strict=False)
                  if r.startswith("OK ")]
            with self._lock:
                self.acked += ok
                self.failed += len(batch) - len(ok)
            if len(ok) < len(batch):
                time.sleep(0.05)

    def finish(self) -> list[tuple[int, str, str, str]]:
        self.halt.set()
        for thread in self.threads:
            thread.join(HANG_S)
        return list(self.acked)


def missing_writes(node: GroupsNode, groups: int,
                   acked: list[tuple[int, str, str, str]]) -> list[str] | None:
    """What of `acked` node's groups lack after a read barrier each; None if a barrier
    failed (no leader yet)."""
    replies = node.cmd(*(f"DUMP {g}" for g in range(groups + 1)))
    if len(replies) != groups + 1 or any(r.startswith("ERR") for r in replies):
        return None
    data = [json.loads(r)["data"] for r in replies]
    return [f"group {g} {k}={v}" for g, k, v, _ in acked if data[g].get(k) != v]


@pytest.fixture
def groups_cluster(tmp_path: Path) -> Iterator[Callable[..., GroupsCluster]]:
    made: list[GroupsCluster] = []

    def make(**kwargs: Any) -> GroupsCluster:
        made.append(GroupsCluster(tmp_path, **kwargs))
        return made[-1].start()

    yield make
    for cluster in made:
        cluster.stop()


def test_sigkill_of_a_node_with_51_groups_loses_no_acknowledged_write(
        groups_cluster: Callable[..., GroupsCluster]) -> None:
    cluster = groups_cluster(extra=["--quiesce"])
    leaders = cluster.agreed_leaders()
    writers = Writers(cluster).start()
    try:
        wait_until(lambda: writers.count("before") >= WRITES_PER_PHASE, "writes before the kill")
        victim = cluster.nodes[max(cluster.nodes, key=list(leaders.values()).count)]
        led = sorted(g for g, lead in cluster.agreed_leaders().items() if lead == victim.id)
        victim.daemon.kill()
        writers.phase = "down"
        rest = cluster.live()
        moved = cluster.agreed_leaders(among=rest)
        assert all(moved[g] != victim.id for g in led)
        wait_until(lambda: writers.count("down") >= WRITES_PER_PHASE, "writes while down")
        victim.daemon.start()
        writers.phase = "after"
        wait_until(lambda: writers.count("after") >= WRITES_PER_PHASE, "writes after restart")
    finally:
        acked = writers.finish()
    down_groups = {g for g, _, _, phase in acked if phase == "down"}
    print(f"node {victim.id} led {len(led)} groups when killed; {len(acked)} writes "
          f"acknowledged, {writers.failed} not")
    assert set(led) <= down_groups, "a group the killed node led took no write while it was down"
    for node in cluster.nodes.values():
        missing = missing_after_barriers(node, cluster.groups, acked)
        assert not missing, f"acknowledged writes lost on node {node.id}: {missing[:10]}"
    wait_until(lambda: len({json.dumps(n.json("DIGESTS")) for n in cluster.nodes.values()}) == 1,
               "the nodes' state machines to converge")


def missing_after_barriers(node: GroupsNode, groups: int,
                           acked: list[tuple[int, str, str, str]]) -> list[str]:
    """missing_writes, once every group's read barrier on `node` passes."""
    result: list[list[str]] = []

    def barriers_passed() -> bool:
        missing = missing_writes(node, groups, acked)
        if missing is None:
            return False
        result.append(missing)
        return True

    wait_until(barriers_passed, f"read barriers on node {node.id}", HANG_S)
    return result[-1]
