"""idgen's part of `make run`: three id servers, worker ids 1-3, clients on 7101-7103, data
under var/idgen-N. Each is node N on its node port 7201-7203 (core/rpc), where the other two
check its worker id and clock (`--peers ID=HOST:PORT` of their node ports)."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

WORKER_IDS = [1, 2, 3]
CLIENT_PORT_BASE = 7100  # worker N serves clients on 7100 + N
PEER_PORT_BASE = 7200  # and is node N on 7200 + N

TRY = [
    "  redis-cli -p 7101 NEXT                      # one id",
    "  redis-cli -p 7102 NEXT 5                    # five ids",
    "  redis-cli -p 7101 PARSE <id>                # time, worker, sequence",
    "  redis-cli -p 7103 INFO idgen                # peers_reachable, peer_offsets_ms",
    "  printf 'NEXT 3\\r\\n' | nc -q1 127.0.0.1 7101",
    "  .venv/bin/idgen next -n 3 --server 127.0.0.1:7101,127.0.0.1:7102",
    '  .venv/bin/python -c "from idgen.client import IdgenClient; \\',
    "c = IdgenClient(['127.0.0.1:7101', '127.0.0.1:7102'], prefetch=10000); "
    'print(c.next_id())"',
]


def client_addresses() -> list[str]:
    """The servers' client addresses, `host:port` each: what `idgen next` asks by default."""
    return [f"{LOOPBACK}:{CLIENT_PORT_BASE + worker}" for worker in WORKER_IDS]


def _node(var: Path, worker: int) -> Process:
    port = CLIENT_PORT_BASE + worker
    peers = ",".join(f"{w}={LOOPBACK}:{PEER_PORT_BASE + w}" for w in WORKER_IDS if w != worker)
    argv = [
        sys.executable, "-m", "idgen", "serve", "--listen", f"{LOOPBACK}:{port}",
        "--worker-id", str(worker), "--data-dir", str(var / f"idgen-{worker}"),
        "--id", str(worker), "--peer-listen", f"{LOOPBACK}:{PEER_PORT_BASE + worker}",
        "--peers", peers,
    ]
    note = f"(node {worker}, peers check it on {LOOPBACK}:{PEER_PORT_BASE + worker})"
    return Process(f"idgen-{worker}", argv, LOOPBACK, port, note)


def local_cluster(var: Path) -> LocalCluster:
    """The three id servers (see the module header)."""
    return LocalCluster([_node(var, worker) for worker in WORKER_IDS], TRY)
