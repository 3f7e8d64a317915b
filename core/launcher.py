"""`make run`: a local cluster of every daemon on loopback, data under ./var/.

Starts each daemon as its own process, prints the endpoints and commands to try, and on
Ctrl-C (or SIGTERM) stops them all with SIGTERM, waiting for each to exit cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VAR = Path("var")
START_TIMEOUT_S = 15.0


@dataclass
class Node:
    name: str
    argv: list[str]
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None


def idgen_nodes() -> list[Node]:
    ports = [7101, 7102, 7103]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    nodes = []
    for worker, port in enumerate(ports, start=1):
        peers = ",".join(a for a in addresses if not a.endswith(f":{port}"))
        argv = [
            sys.executable, "-m", "idgen", "serve", "--listen", f"127.0.0.1:{port}",
            "--worker-id", str(worker), "--data-dir", str(VAR / f"idgen-{worker}"),
            "--peers", peers,
        ]
        nodes.append(Node(f"idgen-{worker}", argv, "127.0.0.1", port))
    return nodes


def kvcache_nodes() -> list[Node]:
    """Three memcached-compatible caches (clients hash keys across them with ketama) and a
    routing proxy in front of them, for clients that know one address only."""
    nodes = []
    for index, port in enumerate([11311, 11312, 11313], start=1):
        argv = [
            sys.executable, "-m", "kvcache", "serve", "-l", "127.0.0.1", "-p", str(port),
            "-m", "64",
        ]
        nodes.append(Node(f"kvcache-{index}", argv, "127.0.0.1", port))
    servers = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    proxy = [sys.executable, "-m", "kvcache", "proxy", "-p", "11310", "--servers", servers]
    nodes.append(Node("kvproxy", proxy, "127.0.0.1", 11310))
    return nodes


def scheduler_nodes() -> list[Node]:
    """A three-node scheduler (Raft between 7501-7503, clients on 7401-7403) and a worker.
    The worker listens on nothing: port 0 means "up while the process runs"."""
    ids = [1, 2, 3]
    nodes = []
    for node_id in ids:
        peers = ",".join(f"{i}=127.0.0.1:{7500 + i}" for i in ids if i != node_id)
        argv = [
            sys.executable, "-m", "scheduler", "serve", "--id", str(node_id),
            "--listen", f"127.0.0.1:{7400 + node_id}", "--peer-listen",
            f"127.0.0.1:{7500 + node_id}", "--peers", peers,
            "--data-dir", str(VAR / f"scheduler-{node_id}"),
        ]
        nodes.append(Node(f"scheduler-{node_id}", argv, "127.0.0.1", 7400 + node_id))
    servers = ",".join(f"127.0.0.1:{7400 + i}" for i in ids)
    worker = [sys.executable, "-m", "scheduler", "worker", "--scheduler", servers]
    nodes.append(Node("sched-worker", worker, "127.0.0.1", 0))
    return nodes


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start(nodes: list[Node]) -> None:
    VAR.mkdir(exist_ok=True)
    for node in nodes:
        log_file = open(VAR / f"{node.name}.log", "ab")  # noqa: SIM115 - lives with the child
        node.process = subprocess.Popen(node.argv, stdout=log_file, stderr=log_file)
    for index, node in enumerate(nodes, start=1):
        assert node.process is not None
        if node.port:
            ok = wait_for_port(node.host, node.port, node.process)
        else:
            time.sleep(0.5)
            ok = node.process.poll() is None
        state = "up" if ok else f"FAILED (see {VAR / (node.name + '.log')})"
        print(f"[{index}/{len(nodes)}] {node.name:10} {node.host}:{node.port} {state}", flush=True)


def stop(nodes: list[Node]) -> None:
    for node in nodes:
        if node.process and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        if node.process:
            try:
                code = node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                code = node.process.wait()
            print(f"{node.name} exited with {code}")


TRY = """
Try:
  redis-cli -p 7101 NEXT                      # one id
  redis-cli -p 7102 NEXT 5                    # five ids
  redis-cli -p 7101 PARSE <id>                # time, worker, sequence
  redis-cli -p 7103 INFO idgen
  printf 'NEXT 3\\r\\n' | nc -q1 127.0.0.1 7101
  .venv/bin/idgen next -n 3 --server 127.0.0.1:7101,127.0.0.1:7102
  .venv/bin/python -c "from idgen.client import IdgenClient; \\
c = IdgenClient(['127.0.0.1:7101', '127.0.0.1:7102'], prefetch=10000); print(c.next_id())"

  printf 'set greeting 0 0 5\\r\\nhello\\r\\nget greeting\\r\\n' | nc -q1 127.0.0.1 11311
  printf 'mg greeting v t\\r\\nstats settings\\r\\n' | nc -q1 127.0.0.1 11311
  printf 'set a 0 0 1\\r\\n1\\r\\nget a greeting\\r\\nstats\\r\\n' | nc -q1 127.0.0.1 11310  # proxy
  .venv/bin/python -c "from kvcache.client import Client; \\
c = Client(['127.0.0.1:11311', '127.0.0.1:11312', '127.0.0.1:11313']); \\
c.set('k', b'v'); print(c.get('k'))"

  redis-cli -p 7401 JOB.ADD tick '@every 1s' 'date +%T.%N >> /tmp/ticks'
  redis-cli -p 7402 JOB.HISTORY tick 3
  redis-cli -p 7403 CLUSTER.INFO

Logs are in var/*.log. Ctrl-C stops everything.
"""


def main() -> int:
    nodes = idgen_nodes() + kvcache_nodes() + scheduler_nodes()
    print(f"starting {len(nodes)} daemons, data under {VAR.resolve()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        start(nodes)
        print(TRY, flush=True)
        while all(n.process and n.process.poll() is None for n in nodes):
            time.sleep(0.5)
        print("a daemon exited; stopping the rest", flush=True)
        return_code = 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return_code = 0
    finally:
        stop(nodes)
    return return_code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
