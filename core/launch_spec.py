"""What a daemon declares for `make run`: the processes of its local cluster and what to print.

Strategy: every top-level package that wants to be part of `make run` has a module
`<package>/launch.py` with a function `local_cluster(var: Path) -> LocalCluster`. The
launcher (core/launcher.py) finds those modules, calls each with the `var/` directory, starts
the processes and prints the lines; it holds no knowledge of any daemon. This module holds
only the two value types both sides share, so a declaration imports nothing that runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["DECLARATION", "LOOPBACK", "Declare", "LocalCluster", "Process"]

DECLARATION = "local_cluster"  # the function every <package>/launch.py defines
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Process:
    """One process to start. Its output goes to `var/<name>.log`. It is "up" once
    `host:port` accepts connections; with port 0 it listens on nothing and is up while it
    keeps running a moment after its start. `note` follows its status line (e.g. other
    ports it listens on)."""

    name: str
    argv: list[str]
    host: str = LOOPBACK
    port: int = 0
    note: str = ""


@dataclass(frozen=True)
class LocalCluster:
    """A daemon's part of `make run`: its processes, started in this order, and the lines
    printed under "Try:" once everything is up (printed as they are, indentation included)."""

    processes: list[Process]
    try_lines: list[str] = field(default_factory=list)


class Declare(Protocol):
    """The signature of `<package>.launch.local_cluster`: data for the cluster goes under
    `var` (one directory per process, named after it)."""

    def __call__(self, var: Path) -> LocalCluster: ...
