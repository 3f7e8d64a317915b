"""A node: one daemon process on one host of the fault harness, and its process faults.

Strategy: a node wraps a `tests.procs.Daemon` (argv after `python -m`, a log file, an optional
port to wait for) and starts it from a thread that has entered the host's network namespace,
so the process and everything it forks live on that host. Process faults are signals: SIGKILL,
SIGSTOP/SIGCONT, and a restart with the same argv, hence on the same data directory.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from tests.faults import netns
from tests.procs import Daemon


@dataclass(frozen=True)
class Host:
    """One host: its short name (`n1`), 1-based index, IPv4 address and namespace."""

    name: str
    index: int
    address: str
    netns: str


HostRef = Host | str


class Node:
    """A daemon process on a host; `daemon` is the underlying `tests.procs.Daemon`."""

    def __init__(self, host: Host, daemon: Daemon, ready_port: int | None) -> None:
        self.host = host
        self.daemon = daemon
        self.ready_port = ready_port

    @property
    def pid(self) -> int:
        """The process id (of the current incarnation)."""
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def start(self) -> Node:
        """Start in the host's namespace; wait for `ready_port` to listen when one is set."""
        with netns.in_netns(self.host.netns):
            self.daemon.start(wait=self.ready_port is not None)
        return self

    def kill(self) -> None:
        """SIGKILL and reap (resumed first so a stopped process dies too)."""
        if self.alive():
            self.daemon.signal(signal.SIGCONT)
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.kill()

    def pause(self) -> None:
        """SIGSTOP: the process hangs; its sockets stay open."""
        self.daemon.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        self.daemon.signal(signal.SIGCONT)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        return self.daemon.stop()

    def restart(self) -> Node:
        """Kill if running, then start again with the same argv (the same data directory)."""
        self.kill()
        return self.start()

    def alive(self) -> bool:
        """Whether the process is running (a stopped one counts as running)."""
        return self.daemon.alive()

    def log(self) -> str:
        """Everything the process wrote to its log so far."""
        return self.daemon.log()
