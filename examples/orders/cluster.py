"""The whole local cluster the order service runs on, from the daemons' `make run` declarations.

Strategy: core/launcher.py's `local_clusters(var)` gives every daemon's processes. This
module moves every declared port to a free one (so the demo and its tests run beside a
`make run` or each other; picked below the kernel's ephemeral range, see `free_port`),
drops the processes the service does not use (the shell worker: the service brings its
own embedded worker; the router: its client is cluster-aware), starts each process in its
own process group with its output in `<var>/<name>.log`, and waits for its port.
`kill(name)` SIGKILLs one process and `start_again(name)` starts it on the same data
directory and ports. A small cluster (the tests') also leaves out one cache and one chunk
server (`without` takes their addresses out of the others' lists). `stop()` SIGTERMs
everything still running and SIGKILLs what has not exited after a grace period;
a `Cluster` is a context manager, so an exception or Ctrl-C (KeyboardInterrupt) stops it too.
Each process runs in its own process group (the terminal's Ctrl-C reaches the demo alone,
which then stops them once), and a process started from the main thread gets SIGTERM if
the demo dies (PR_SET_PDEATHSIG, as core/launcher.py does). That signal follows the
starting *thread*, so a process started again from another thread (the kills during the
load) goes without it and is stopped by `stop()` only.
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from core.launch_spec import Process
from core.launcher import local_clusters
from shardstore.launch import KEYSPACES

__all__ = ["Cluster", "Endpoints", "free_port", "remap_ports", "without"]

# the shell worker (the service runs an embedded one) and the router (the service's client
# is cluster-aware)
DROPPED = ("sched-worker", "shardstore-router")
# also left out of a small cluster (the tests'): one cache of three, one chunk server of
# four, and the web console (if declared), which the service does not use
SMALL_DROPPED = ("kvcache-3", "dfs-chunk-4", "console")
START_TIMEOUT_S = 120.0  # every daemon boots at once on a shared 2-core machine
STOP_GRACE_S = 10.0
POLL_S = 0.1
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
EPHEMERAL_LOW_DEFAULT = 32768  # Linux's default
PORT_PICK_LOW = 20000  # above the ports `make run` declares
PORT_PICK_HIGH = 32768
PORT_PICK_TRIES = 1000
ERR_NO_PORT = "no free TCP port in {}..{}"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
ADDRESS = re.compile(r"(127\.0\.0\.1):(\d+)")
PORT_FLAGS = ("-p",)  # a port given as its own word after one of these flags
ERR_NOT_UP = "{} did not listen on {}:{} within {:.0f} s ({}); its log ends:\n{}"
LOG_TAIL_CHARS = 2000
ERR_UNKNOWN = "no process named {!r} in the cluster"


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' own ports."""
    try:
        return int(Path(EPHEMERAL_RANGE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW_DEFAULT


def free_port(host: str = "127.0.0.1", rng: random.Random | None = None,
              taken: set[int] | None = None) -> int:
    """A TCP port nothing listens on right now, below the kernel's ephemeral range: a port
    the OS hands out itself (bind to 0) may be taken meanwhile as the local port of one of
    the cluster's own outgoing connections, which come from that range. A small race with
    other programs remains. `taken`: ports not to return (those picked already)."""
    rng = rng or random.Random()
    high = min(_ephemeral_low(), PORT_PICK_HIGH)
    for _ in range(PORT_PICK_TRIES):
        port = rng.randrange(PORT_PICK_LOW, high)
        if taken and port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(ERR_NO_PORT.format(PORT_PICK_LOW, high))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent's thread that started it ends (so
    with the demo, when the main thread starts it; a no-op off Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _declared_ports(spec: Process) -> set[int]:
    ports = {spec.port} if spec.port else set()
    for word in spec.argv:
        ports.update(int(match.group(2)) for match in ADDRESS.finditer(word))
    return ports


def _rewrite(spec: Process, moved: dict[int, int]) -> Process:
    def sub(match: re.Match[str]) -> str:
        port = int(match.group(2))
        return f"{match.group(1)}:{moved.get(port, port)}"

    argv: list[str] = []
    for index, word in enumerate(spec.argv):
        word = ADDRESS.sub(sub, word)
        if index and spec.argv[index - 1] in PORT_FLAGS and word.isdigit():
            word = str(moved.get(int(word), int(word)))
        argv.append(word)
    return replace(spec, argv=argv, port=moved.get(spec.port, spec.port))


def remap_ports(specs: Iterable[Process], moved: dict[int, int] | None = None) -> list[Process]:
    """The same processes with every declared port (`host:port` words, `-p PORT`, the
    process's own port) moved to a free one, consistently across all of them."""
    specs = list(specs)
    moved = dict(moved or {})
    for spec in specs:
        for port in sorted(_declared_ports(spec)):
            if port not in moved:
                moved[port] = free_port(taken=set(moved.values()))
    return [_rewrite(spec, moved) for spec in specs]


def without(specs: list[Process], names: Iterable[str]) -> list[Process]:
    """The processes not named, each address of a dropped one also taken out of the
    comma-separated lists of the others' arguments (e.g. a proxy's --servers)."""
    names = set(names)
    gone = {f"{s.host}:{s.port}" for s in specs if s.name in names and s.port}

    def kept(word: str) -> str:
        if "," not in word:
            return word
        return ",".join(part for part in word.split(",") if part not in gone)

    return [replace(s, argv=[kept(w) for w in s.argv]) for s in specs if s.name not in names]


@dataclass(frozen=True)
class Endpoints:
    """Where the service finds each daemon, `host:port` strings."""

    idgen: list[str]
    kvproxy: str
    scheduler: list[str]
    shardstore: dict[str, list[str]]  # keyspace -> its nodes
    dfs: list[str]


def _address(spec: Process) -> str:
    return f"{spec.host}:{spec.port}"


def endpoints_of(specs: list[Process]) -> Endpoints:
    """The client addresses of a cluster started from the declarations."""
    by_name = {spec.name: spec for spec in specs}

    def named(prefix: str) -> list[str]:
        return [_address(s) for s in specs if re.fullmatch(rf"{prefix}-\d+", s.name)]

    spaces = {space: [_address(by_name[f"shardstore-{n}"]) for n in ids]
              for space, ids in KEYSPACES.items()}
    return Endpoints(named("idgen"), _address(by_name["kvproxy"]), named("scheduler"),
                     spaces, named("dfs-master"))


class Cluster:
    """Every declared daemon but the dropped ones (DROPPED, and SMALL_DROPPED when
    `small`), on free ports, data under `var`."""

    def __init__(self, var: Path, log: Callable[[str], None] | None = None,
                 small: bool = False, declared: list[Process] | None = None) -> None:
        self.var = var
        if declared is None:
            declared = [spec for cluster in local_clusters(var) for spec in cluster.processes]
        dropped = DROPPED + (SMALL_DROPPED if small else ())
        self.specs = remap_ports(without(declared, dropped))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log = log or (lambda _text: None)

    @property
    def endpoints(self) -> Endpoints:
        """Where the service finds each daemon (KeyError on a cluster without them all)."""
        return endpoints_of(self.specs)

    def names(self) -> list[str]:
        """The process names, in start order."""
        return [spec.name for spec in self.specs]

    def _spec(self, name: str) -> Process:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(ERR_UNKNOWN.format(name))

    def _popen(self, spec: Process) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        main = threading.current_thread() is threading.main_thread()
        with open(self.var / f"{spec.name}.log", "ab") as log:
            self.procs[spec.name] = subprocess.Popen(
                spec.argv, stdout=log, stderr=log, process_group=0,
                preexec_fn=_die_with_parent if main else None)

    def _wait_up(self, spec: Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[spec.name].poll() is not None:
                break
            try:
                socket.create_connection((spec.host, spec.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(POLL_S)
        log = self.var / f"{spec.name}.log"
        tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        state = self.procs[spec.name].poll()
        raise RuntimeError(ERR_NOT_UP.format(spec.name, spec.host, spec.port, START_TIMEOUT_S,
                                             "running" if state is None else f"exit {state}",
                                             tail))

    def start(self) -> None:
        """Start every process, then wait for each one's port (RuntimeError if one fails)."""
        for spec in self.specs:
            self._popen(spec)
        for index, spec in enumerate(self.specs, start=1):
            self._wait_up(spec)
            self._log(f"[{index}/{len(self.specs)}] {spec.name} up on {_address(spec)}")

    def kill(self, name: str) -> None:
        """SIGKILL one process and reap it."""
        proc = self.procs[self._spec(name).name]
        proc.kill()
        proc.wait()

    def start_again(self, name: str) -> None:
        """Start a killed process again, same arguments and data; wait for its port."""
        spec = self._spec(name)
        self._popen(spec)
        self._wait_up(spec)

    def stop(self) -> None:
        """SIGTERM everything still running; SIGKILL what outlives STOP_GRACE_S."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
