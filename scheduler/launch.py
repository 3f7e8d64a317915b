"""scheduler's part of `make run`: a three-node scheduler (clients on 7401-7403, Raft
between 7501-7503, data under var/scheduler-N) and one shell worker polling all three. The
worker listens on nothing, so it counts as up while its process runs."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

NODE_IDS = [1, 2, 3]
CLIENT_PORT_BASE = 7400  # node N serves clients on 7400 + N
PEER_PORT_BASE = 7500  # and Raft on 7500 + N

TRY = [
    "  redis-cli -p 7401 JOB.ADD tick '@every 1s' 'date +%T.%N >> /tmp/ticks'",
    "  redis-cli -p 7402 JOB.HISTORY tick 3",
    "  redis-cli -p 7403 CLUSTER.INFO",
    "  .venv/bin/scheduler job list                # no --server: these three nodes",
]


def client_addresses() -> list[str]:
    """The nodes' client addresses, `host:port` each: what client commands ask by default."""
    return [f"{LOOPBACK}:{CLIENT_PORT_BASE + i}" for i in NODE_IDS]


def _node(var: Path, node_id: int) -> Process:
    peers = ",".join(f"{i}={LOOPBACK}:{PEER_PORT_BASE + i}" for i in NODE_IDS if i != node_id)
    port = CLIENT_PORT_BASE + node_id
    argv = [
        sys.executable, "-m", "scheduler", "serve", "--id", str(node_id),
        "--listen", f"{LOOPBACK}:{port}", "--peer-listen",
        f"{LOOPBACK}:{PEER_PORT_BASE + node_id}", "--peers", peers,
        "--data-dir", str(var / f"scheduler-{node_id}"),
    ]
    return Process(f"scheduler-{node_id}", argv, LOOPBACK, port)


def local_cluster(var: Path) -> LocalCluster:
    """The three nodes, then the worker (see the module header)."""
    servers = ",".join(client_addresses())
    worker = [sys.executable, "-m", "scheduler", "worker", "--scheduler", servers]
    processes = [_node(var, node_id) for node_id in NODE_IDS]
    note = "(a shell worker: no port, it polls the three nodes)"
    processes.append(Process("sched-worker", worker, LOOPBACK, 0, note))
    return LocalCluster(processes, TRY)
