"""`make run`: a local cluster of every daemon on loopback, data under ./var/.

Strategy: the launcher knows no daemon. Every top-level package with a `launch` module
declares its part (core/launch_spec.py: the processes, and the lines to print); `discover`
finds those modules in the project root in name order, so a new daemon joins `make run` by
adding its declaration. The launcher starts every process (each its own, output to
var/<name>.log), waits for each one's address, prints the endpoints and the commands to try,
and on Ctrl-C (or SIGTERM) stops them all with SIGTERM, waiting for each to exit cleanly.

Each process runs in its own process group, so the terminal's Ctrl-C reaches the launcher
alone and every daemon gets exactly one signal, the launcher's SIGTERM (a daemon signalled
twice may take the second while it is already stopping, after its handler is gone, and die
of it). The process dies with the launcher (PR_SET_PDEATHSIG where Linux offers it), so a
killed launcher leaves no daemon behind. The status lines are aligned columns computed from
the declarations before the first process starts; a process without a port shows `-`.
"""

from __future__ import annotations

import ctypes
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
START_TIMEOUT_S = 30.0  # for the first process: every daemon boots at once on a busy machine
STOP_TIMEOUT_S = 10.0
PORTLESS_SETTLE_S = 0.5  # a process without a port is up if it still runs after this
POLL_S = 0.1
WATCH_S = 0.5
FOOTER = "Logs are in var/*.log. Ctrl-C stops everything."
ERR_NO_DECLARATION = "{} defines no {}(var) function"
NO_PORT = "-"  # the address column of a process that listens on nothing
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (a no-op off Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def address(spec: Process) -> str:
    """The address column: `host:port`, or NO_PORT for a process without a port."""
    return f"{spec.host}:{spec.port}" if spec.port else NO_PORT


def status_line(index: int, specs: list[Process], state: str) -> str:
    """`[ i/n] name  address  state  note`, every column as wide as its widest value."""
    spec = specs[index - 1]
    count = str(len(specs))
    name_width = max(len(s.name) for s in specs)
    address_width = max(len(address(s)) for s in specs)
    note = f"  {spec.note}" if spec.note else ""
    return (f"[{index:>{len(count)}}/{count}] {spec.name:<{name_width}}  "
            f"{address(spec):<{address_width}}  {state}{note}")


def start(nodes: list[Running]) -> None:
    """Start every process (each in its own process group), then report each one as up or
    failed, in order."""
    VAR.mkdir(exist_ok=True)
    for node in nodes:
        log_file = open(VAR / f"{node.spec.name}.log", "ab")  # noqa: SIM115 - lives with the child
        node.process = subprocess.Popen(node.spec.argv, stdout=log_file, stderr=log_file,
                                        process_group=0, preexec_fn=_die_with_parent)
    specs = [node.spec for node in nodes]
    for index, node in enumerate(nodes, start=1):
        log = VAR / f"{node.spec.name}.log"
        state = "up" if _is_up(node) else f"FAILED (see {log})"
        print(status_line(index, specs, state), flush=True)


def exit_text(code: int) -> str:
    """How a process ended: `exited with N`, or the signal that killed it."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


def stop(nodes: list[Running]) -> None:
    """SIGTERM, once, to everything still running, then wait for each (SIGKILL after
    STOP_TIMEOUT_S); one aligned line per process says how it ended. Ctrl-C is ignored
    meanwhile: the stop is already under way."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for node in nodes:
        if node.process and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    width = max((len(node.spec.name) for node in nodes), default=0)
    for node in nodes:
        if node.process:
            try:
                code = node.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                code = node.process.wait()
            print(f"{node.spec.name:<{width}}  {exit_text(code)}", flush=True)


def try_text(clusters: list[LocalCluster]) -> str:
    """The "Try:" block: each daemon's lines, a blank line between daemons."""
    blocks = ["\n".join(c.try_lines) for c in clusters if c.try_lines]
    return "\nTry:\n" + "\n\n".join(blocks) + f"\n\n{FOOTER}\n"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(root: Path = ROOT) -> int:
    """Run the local cluster of every declaration under `root` until Ctrl-C or SIGTERM (0)
    or until a process exits by itself (1). The signal handlers are restored on return."""
    clusters = local_clusters(VAR, root)
    nodes = [Running(spec) for cluster in clusters for spec in cluster.processes]
    print(f"starting {len(nodes)} daemons, data under {VAR.resolve()}", flush=True)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return return_code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
