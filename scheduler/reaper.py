"""The reaper: a run's command dies with its worker, even a SIGKILLed one.

A shell run executes in its own process group (its own session), so nothing the kernel does
when the worker dies reaches it. Each worker process therefore starts one small reaper
process (`python -m scheduler.reaper`) whose stdin is a pipe from the worker. The worker
writes `+PGID` when a run's group starts and `-PGID` when it has ended. When the worker dies,
however it dies, the kernel closes its end of the pipe: the reaper reads end of file,
SIGKILLs every group still listed, and exits. (End of file rather than PR_SET_PDEATHSIG:
that signal follows the parent *thread*, so a worker whose loop started the reaper from a
thread that later ends would have its runs killed while it lives.) The pipe's write end is
close-on-exec, so no run holds it open. The reaper takes SIGTERM as end of file and ignores
SIGINT: a Ctrl-C sent to the worker's process group must not take the reaper away before
the worker's groups are gone.

Limits: a group started in the instant between the fork of its shell and the worker's
`+PGID` line is not covered if the worker is killed in that instant.

`Reaper.start()` starts the process; `watch(pgid)` / `unwatch(pgid)` report groups;
`process_reaper()` is the one reaper of this process, started on first use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Final

WATCH: Final = "+"  # line prefixes on the reaper's stdin
UNWATCH: Final = "-"


class Reaper:
    """A reaper process for this worker's run groups. `watch`/`unwatch` never raise: if
    the reaper is gone, runs still execute, without the guarantee."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the reaper process (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "scheduler.reaper"],
                                      stdin=subprocess.PIPE, close_fds=True,
                                      env={**os.environ, "PYTHONPATH": path})

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def watch(self, pgid: int) -> None:
        """Kill group `pgid` if this process dies before `unwatch(pgid)`."""
        self._send(f"{WATCH}{pgid}\n")

    def unwatch(self, pgid: int) -> None:
        """Group `pgid` has ended: forget it (its id may be reused)."""
        self._send(f"{UNWATCH}{pgid}\n")

    def stop(self) -> None:
        """Close the pipe: the reaper kills what is still listed and exits."""
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
            self._proc.wait()

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the reaper is gone (the worker is stopping): nothing left to tell it


_PROCESS_REAPER: Reaper | None = None


def process_reaper() -> Reaper:
    """The reaper of this process, started on first use (restarted if it died)."""
    global _PROCESS_REAPER
    if _PROCESS_REAPER is None:
        _PROCESS_REAPER = Reaper()
    _PROCESS_REAPER.start()
    return _PROCESS_REAPER


# -- the reaper process itself ------------------------------------------------------------

def kill_groups(groups: set[int]) -> None:
    """SIGKILL every group in `groups` (a group already gone is skipped)."""
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def apply_line(groups: set[int], line: bytes) -> None:
    """One `+PGID` or `-PGID` line (anything else is ignored)."""
    text = line.decode("ascii", "replace").strip()
    if len(text) < 2 or not text[1:].isdigit():
        return
    pgid = int(text[1:])
    if pgid <= 1:
        return  # never the whole session or init: not a run's group
    if text[0] == WATCH:
        groups.add(pgid)
    elif text[0] == UNWATCH:
        groups.discard(pgid)


def main() -> None:
    """Read `+PGID`/`-PGID` lines until end of file, then kill the groups still listed."""
    groups: set[int] = set()

    def on_term(_signum: int, _frame: object) -> None:
        kill_groups(groups)
        os._exit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    for line in sys.stdin.buffer:
        apply_line(groups, line)
    kill_groups(groups)


if __name__ == "__main__":
    main()
