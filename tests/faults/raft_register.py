"""The core/raft drill: registers on the RESP-on-Raft toy daemon under partitions and kills.

Strategy: three toy nodes (tests/raft_service_toy.py, real processes with the shared cluster
options) run on hosts n1..n3; a fourth host n4 runs clients only and is never faulted, so it
keeps talking to a leader that the nemesis has cut off from its peers. One client per host
(each a thread in that host's namespace, on core/resp_client's blocking connection) loops
over read (GET, through the read barrier), write (PUT, forwarded to the leader) and
compare-and-set (CAS) on a few keys against a node drawn at random, every written value
unique. The nemesis isolates, splits, bridges, cuts one way, drops at random, kills and
pauses nodes meanwhile (a partition and a process fault may overlap), half of the time
aiming at the node that leads. Then everything is healed, the cluster settles, every key
is read once more, and each key's history must be linearizable against a register.

What an outcome means for the history:
- a connection refused or not made: nothing was sent, so the operation failed;
- a read that errs or times out: fail (a read changes nothing, whatever happened);
- a write or cas that errs (TRYAGAIN included: the entry may already be proposed or
  forwarded), times out or loses its connection: info, it may take effect at any time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.resp_client import ReplyError, RespConnection, RespConnectionError
from tests.faults.drill import NETWORK_KINDS, PROCESS_KINDS, DrillReport, Nemesis, finish
from tests.faults.history import Invocation, Recorder
from tests.faults.hosts import Harness
from tests.faults.linearizable import Register, check_linearizable
from tests.faults.node import Node

log = logging.getLogger("tests.faults.raft_register")

DAEMON = "raft"
TOY_MODULE = "tests.raft_service_toy"
NODES = 3
CLIENT_HOST = "n4"
RESP_PORT = 7000
RAFT_PORT = 7001
KEYS = ("a", "b", "c", "d", "e")
OP_WEIGHTS = {"read": 5, "write": 3, "cas": 2}
FS = tuple(OP_WEIGHTS)
TICK_MS = 20
ELECTION_TICK = 15
SERVICE_TIMEOUT_MS = 1000  # a node answers TRYAGAIN after this long without a quorum
OP_TIMEOUT_S = 2.0  # a client gives up (info) after this long
LEADER_QUERY_TIMEOUT_S = 0.5  # the nemesis asks each node this long who leads
THINK_S = (0.0, 0.02)  # a client waits this long between operations
NEMESIS_PAUSE_S = (1.0, 3.0)
MAX_FAULTS = 2  # a partition and a kill or pause may overlap
SETTLE_TIMEOUT_S = 60.0  # after healing, how long the cluster has to serve again
CHECK_TIME_LIMIT_S = 20.0  # the linearizability search gives "unknown" after this long
CLUSTER_SECRET = "drill-secret"  # node-to-node traffic beyond loopback needs one
WARMUP_KEY = "warmup"  # read (not recorded) until the cluster serves: no register uses it

ERR_NOT_SETTLED = "the cluster did not serve a read within {}s of healing"


class _Cluster:
    """The toy nodes, and a thread on the client host to ask them who leads."""

    def __init__(self, harness: Harness, nodes: list[Node]) -> None:
        self.harness = harness
        self.nodes = nodes
        self._asker = harness.executor(CLIENT_HOST)

    def address(self, index: int) -> tuple[str, int]:
        return self.nodes[index].host.address, RESP_PORT

    def leader(self) -> Node | None:
        """The node some node names as leader (CLUSTER.LEADER), None if none answers."""
        return self._asker.submit(self._ask_leader).result()

    def _ask_leader(self) -> Node | None:
        for index in range(len(self.nodes)):
            try:
                with RespConnection.connect(*self.address(index),
                                            timeout=LEADER_QUERY_TIMEOUT_S) as conn:
                    reply = conn.call("CLUSTER.LEADER")
            except (ReplyError, RespConnectionError):
                continue
            leader = int(reply[0]) if isinstance(reply, list) and reply else 0
            if 1 <= leader <= len(self.nodes):
                return self.nodes[leader - 1]
        return None


def drill(seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """One seeded round of `duration_s` seconds of workload under faults; see the header."""
    rng = random.Random(seed)
    recorder = Recorder()
    with Harness(NODES + 1, workdir, seed=seed) as harness:
        cluster = _Cluster(harness, [_spawn(harness, workdir, i) for i in range(1, NODES + 1)])
        _settle(cluster)
        nemesis = Nemesis(harness, random.Random(rng.random()), cluster.nodes,
                          kinds=(*NETWORK_KINDS, *PROCESS_KINDS), recorder=recorder,
                          prefer=cluster.leader, max_faults=MAX_FAULTS)
        clients = [_Client(cluster, recorder, process, random.Random(rng.random()))
                   for process in range(len(harness.hosts))]
        _under_faults(harness, clients, nemesis, duration_s)
        nemesis.heal_all()
        _settle(cluster)
        harness.executor(CLIENT_HOST).submit(clients[-1].final_reads).result()
    history = recorder.history()
    result = check_linearizable(history, Register(), fs=FS, time_limit=CHECK_TIME_LIMIT_S)
    return finish(DAEMON, seed, history, [result], nemesis.faults, workdir,
                  notes=[f"nemesis: {'; '.join(nemesis.events)}"])


def _under_faults(harness: Harness, clients: list[_Client], nemesis: Nemesis,
                  duration_s: float) -> None:
    """Client i runs on host i while the nemesis runs, for `duration_s` seconds."""
    stop = threading.Event()
    fault_thread = threading.Thread(target=nemesis.run, args=(stop, NEMESIS_PAUSE_S),
                                    name="nemesis", daemon=True)
    try:
        futures = [harness.executor(host).submit(client.run, stop)
                   for client, host in zip(clients, harness.hosts, strict=True)]
        fault_thread.start()
        stop.wait(duration_s)
    finally:
        stop.set()
        if fault_thread.is_alive():
            fault_thread.join()
    for future in futures:
        future.result()


def _spawn(harness: Harness, workdir: Path, node_id: int) -> Node:
    host = harness.host(f"n{node_id}")
    peers = ",".join(f"{i}={harness.host(f'n{i}').address}:{RAFT_PORT}"
                     for i in range(1, NODES + 1))
    argv = [TOY_MODULE, "--id", str(node_id),
            "--listen", f"{host.address}:{RESP_PORT}",
            "--peer-listen", f"{host.address}:{RAFT_PORT}", "--peers", peers,
            "--data-dir", str(workdir / f"data-n{node_id}"), "--protected-mode", "no",
            "--cluster-secret", CLUSTER_SECRET,
            "--tick-ms", str(TICK_MS), "--election-tick", str(ELECTION_TICK),
            "--timeout-ms", str(SERVICE_TIMEOUT_MS)]  # fmt: skip
    return harness.spawn(host, argv, port=RESP_PORT, name=f"toy-n{node_id}")


def _settle(cluster: _Cluster) -> None:
    """Wait (from the client host) until some node serves a linearizable read."""
    def probe() -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            for index in range(len(cluster.nodes)):
                try:
                    with RespConnection.connect(*cluster.address(index),
                                                timeout=OP_TIMEOUT_S) as conn:
                        conn.call("GET", WARMUP_KEY)
                        return
                except (ReplyError, RespConnectionError):
                    time.sleep(0.1)
        raise TimeoutError(ERR_NOT_SETTLED.format(SETTLE_TIMEOUT_S))

    cluster.harness.executor(CLIENT_HOST).submit(probe).result()


class _Client:
    """One client process: random operations on random nodes, each recorded."""

    def __init__(self, cluster: _Cluster, recorder: Recorder, process: int,
                 rng: random.Random) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.process = process
        self.rng = rng
        self.conns: dict[int, RespConnection] = {}
        self.seen: dict[str, str | None] = dict.fromkeys(KEYS)
        self.written = 0

    def run(self, stop: threading.Event) -> None:
        """The workload loop until `stop` is set (runs in a thread of the client's host)."""
        try:
            while not stop.is_set():
                self.one()
                stop.wait(self.rng.uniform(*THINK_S))
        finally:
            self.close()

    def final_reads(self) -> None:
        """Read every key once it can be read (after healing and settling)."""
        try:
            for key in KEYS:
                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                while not self.op("read", key, self.rng.randrange(len(self.cluster.nodes))):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        finally:
            self.close()

    def one(self) -> None:
        f = self.rng.choices(FS, weights=list(OP_WEIGHTS.values()))[0]
        key = self.rng.choice(KEYS)
        if f == "cas" and self.seen[key] is None:
            f = "write"
        self.op(f, key, self.rng.randrange(len(self.cluster.nodes)))

    def op(self, f: str, key: str, node: int) -> bool:
        """Run and record one operation on `node`; whether it completed ok."""
        value, args = self._command(f, key)
        handle = self.recorder.invoke(self.process, f, key, value)
        try:
            conn = self.connect(node)
        except (ReplyError, RespConnectionError) as exc:
            handle.fail(f"not connected: {exc}")
            return False
        try:
            reply = conn.call(*args)
        except (ReplyError, RespConnectionError) as exc:
            if conn.closed:
                self.conns.pop(node, None)
            _uncertain(handle, f)(str(exc))
            return False
        result = _decode(f, reply)
        handle.ok(result)
        self._saw(f, key, value, result)
        return True

    def _command(self, f: str, key: str) -> tuple[object, tuple[str, ...]]:
        """The recorded argument and the command of operation `f` on `key`."""
        if f == "read":
            return None, ("GET", key)
        self.written += 1
        new = f"{self.process}.{self.written}"
        if f == "write":
            return new, ("PUT", key, new)
        expected = self.seen[key]
        assert expected is not None
        return (expected, new), ("CAS", key, expected, new)

    def _saw(self, f: str, key: str, value: object, result: object) -> None:
        if f == "read":
            self.seen[key] = result  # type: ignore[assignment]
        elif f == "write":
            self.seen[key] = value  # type: ignore[assignment]
        elif result:
            self.seen[key] = value[1]  # type: ignore[index]

    def connect(self, node: int) -> RespConnection:
        conn = self.conns.get(node)
        if conn is None or conn.closed:
            conn = RespConnection.connect(*self.cluster.address(node), timeout=OP_TIMEOUT_S)
            self.conns[node] = conn
        return conn

    def drop(self, node: int) -> None:
        conn = self.conns.pop(node, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for node in list(self.conns):
            self.drop(node)


def _uncertain(handle: Invocation, f: str) -> Callable[[str | None], None]:
    """fail for a read (it changed nothing), info for a write or cas (it may have)."""
    return handle.fail if f == "read" else handle.info


def _decode(f: str, reply: object) -> object:
    if f == "read":
        return reply.decode() if isinstance(reply, bytes) else reply
    if f == "cas":
        return reply == 1
    return None
