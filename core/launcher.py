"""`make run`: a local cluster of every daemon on loopback, data under ./var/.

Strategy: the launcher knows no daemon. Every top-level package with a `launch` module
declares its part (core/launch_spec.py: the processes, and the lines to print); `discover`
finds those modules in the project root in name order, so a new daemon joins `make run` by
adding its declaration. The launcher starts every process (each its own, output to
var/<name>.log), waits for each one's address, prints the endpoints and the commands to try,
and on Ctrl-C (or SIGTERM) stops them all with SIGTERM, waiting for each to exit cleanly.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.launch_spec import DECLARATION, Declare, LocalCluster, Process

__all__ = ["ROOT", "VAR", "Running", "discover", "local_clusters", "main"]

ROOT = Path(__file__).resolve().parent.parent  # the project root: where daemons are found
VAR = Path("var")
LAUNCH_MODULE = "launch"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
PORTLESS_SETTLE_S = 0.5  # a process without a port is up if it still runs after this
POLL_S = 0.1
WATCH_S = 0.5
FOOTER = "Logs are in var/*.log. Ctrl-C stops everything."
ERR_NO_DECLARATION = "{} defines no {}(var) function"


@dataclass
class Running:
    """A declared process and, once started, its handle."""

    spec: Process
    process: subprocess.Popen[bytes] | None = None


def discover(root: Path = ROOT) -> list[tuple[str, Declare]]:
    """(package, its `local_cluster` function) for every package directly under `root`
    that has a `launch` module, in package-name order. `root` must be on sys.path."""
    found = []
    for module_file in sorted(root.glob(f"*/{LAUNCH_MODULE}.py")):
        package = module_file.parent
        if not package.name.isidentifier() or not (package / "__init__.py").exists():
            continue
        module = importlib.import_module(f"{package.name}.{LAUNCH_MODULE}")
        declare = getattr(module, DECLARATION, None)
        if not callable(declare):
            raise TypeError(ERR_NO_DECLARATION.format(module.__name__, DECLARATION))
        found.append((package.name, declare))
    return found


def local_clusters(var: Path, root: Path = ROOT) -> list[LocalCluster]:
    """Every discovered declaration, called with `var`."""
    return [declare(var) for _, declare in discover(root)]


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(POLL_S)
    return False


def _is_up(node: Running) -> bool:
    assert node.process is not None
    if node.spec.port:
        return wait_for_port(node.spec.host, node.spec.port, node.process)
    time.sleep(PORTLESS_SETTLE_S)
    return node.process.poll() is None


def start(nodes: list[Running]) -> None:
    """Start every process, then report each one as up or failed, in order."""
    VAR.mkdir(exist_ok=True)
    for node in nodes:
        log_file = open(VAR / f"{node.spec.name}.log", "ab")  # noqa: SIM115 - lives with the child
        node.process = subprocess.Popen(node.spec.argv, stdout=log_file, stderr=log_file)
    for index, node in enumerate(nodes, start=1):
        spec = node.spec
        state = "up" if _is_up(node) else f"FAILED (see {VAR / (spec.name + '.log')})"
        note = f"  {spec.note}" if spec.note else ""
        print(f"[{index}/{len(nodes)}] {spec.name:10} {spec.host}:{spec.port} {state}{note}",
              flush=True)


def stop(nodes: list[Running]) -> None:
    """SIGTERM to everything still running, then wait for each (SIGKILL after a while)."""
    for node in nodes:
        if node.process and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        if node.process:
            try:
                code = node.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                code = node.process.wait()
            print(f"{node.spec.name} exited with {code}")


def try_text(clusters: list[LocalCluster]) -> str:
    """The "Try:" block: each daemon's lines, a blank line between daemons."""
    blocks = ["\n".join(c.try_lines) for c in clusters if c.try_lines]
    return "\nTry:\n" + "\n\n".join(blocks) + f"\n\n{FOOTER}\n"


def main(root: Path = ROOT) -> int:
    """Run the local cluster of every declaration under `root` until Ctrl-C or SIGTERM (0)
    or until a process exits by itself (1)."""
    clusters = local_clusters(VAR, root)
    nodes = [Running(spec) for cluster in clusters for spec in cluster.processes]
    print(f"starting {len(nodes)} daemons, data under {VAR.resolve()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        start(nodes)
        print(try_text(clusters), flush=True)
        while all(n.process and n.process.poll() is None for n in nodes):
            time.sleep(WATCH_S)
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
