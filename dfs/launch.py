"""dfs's part of `make run`: three masters (clients on 7881-7883, Raft on 7981-7983, data
under var/dfs-master-N) and four chunk servers (7891-7894, data under var/dfs-chunk-N, two
racks), so a lost chunk server's chunks can be re-replicated to three."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

MASTER_IDS = [1, 2, 3]
CHUNKSERVER_IDS = [1, 2, 3, 4]
CLIENT_PORT_BASE = 7880  # master N serves clients on 7880 + N
PEER_PORT_BASE = 7980  # and Raft on 7980 + N
CHUNK_PORT_BASE = 7890  # chunk server N serves data on 7890 + N

TRY = [
    "  .venv/bin/dfs put README.md /docs/README.md    # progress bar, 3 replicas",
    "  .venv/bin/dfs ls /docs && .venv/bin/dfs cat /docs/README.md | head -3",
    "  .venv/bin/dfs admin report                     # servers, racks, space",
    "  redis-cli -p 7881 FS.STAT /docs/README.md",
    "  redis-cli -p 7882 FS.LS /docs                  # any master answers",
]


def master_addresses() -> list[str]:
    """The masters' client addresses, `host:port` each: what `dfs` commands ask by default."""
    return [f"{LOOPBACK}:{CLIENT_PORT_BASE + i}" for i in MASTER_IDS]


def _master(var: Path, node_id: int) -> Process:
    peers = ",".join(f"{i}={LOOPBACK}:{PEER_PORT_BASE + i}" for i in MASTER_IDS)
    port = CLIENT_PORT_BASE + node_id
    argv = [sys.executable, "-m", "dfs", "master", "--id", str(node_id),
            "--listen", f"{LOOPBACK}:{port}",
            "--peer-listen", f"{LOOPBACK}:{PEER_PORT_BASE + node_id}", "--peers", peers,
            "--data-dir", str(var / f"dfs-master-{node_id}")]
    note = f"(master {node_id}, Raft on {LOOPBACK}:{PEER_PORT_BASE + node_id})"
    return Process(f"dfs-master-{node_id}", argv, LOOPBACK, port, note)


def _chunkserver(var: Path, number: int) -> Process:
    port = CHUNK_PORT_BASE + number
    rack = f"rack{(number + 1) // 2}"
    argv = [sys.executable, "-m", "dfs", "chunkserver", "--listen", f"{LOOPBACK}:{port}",
            "--data-dir", str(var / f"dfs-chunk-{number}"), "--rack", rack,
            "--masters", ",".join(master_addresses())]
    return Process(f"dfs-chunk-{number}", argv, LOOPBACK, port, f"({rack})")


def local_cluster(var: Path) -> LocalCluster:
    """The three masters, then the four chunk servers (see the module header)."""
    processes = [_master(var, i) for i in MASTER_IDS]
    processes += [_chunkserver(var, n) for n in CHUNKSERVER_IDS]
    return LocalCluster(processes, TRY)
