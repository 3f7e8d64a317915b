"""Real daemon processes for tests: start, signal, restart on the same data dir, stop.

Every daemon under test runs as its own process (`python -m <daemon> serve ...`) bound to its
own loopback address, as the design's one-machine cluster rule asks. Output goes to a log
file next to the data directory so a failing test can show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import find_free_port, wait_for_tcp_port

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """One daemon process. `argv` is everything after `python -m`."""

    def __init__(
        self,
        argv: list[str],
        host: str,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.host = host
        self.port = port
        self.log_path = log_path
        self.env = env or {}  # added to (and overriding) the test's environment
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.argv], stdout=log, stderr=log, cwd=self.cwd, env=env
        )
        log.close()
        if wait:
            try:
                wait_for_tcp_port(self.host, self.port, timeout=20, proc=self.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- log ---\n{self.log()}") from None
        return self

    def run_to_exit(self, timeout: float = 20) -> int:
        """Start and wait for the process to exit by itself (a refused start)."""
        self.start(wait=False)
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap: nothing is flushed, nothing is closed."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (0 for a clean shutdown)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self, timeout: float = 15) -> int:
        """Wait for the exit code of a process already signalled (SIGKILL and raise after
        `timeout`); it is not signalled again."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_together(daemons: Iterable[Daemon], timeout: float = 15) -> list[int]:
    """SIGTERM every running daemon at once, then reap each: the nodes of a cluster shut down
    side by side instead of the last ones waiting on hand-overs to peers already gone. Each
    is signalled once (a second SIGTERM during its shutdown would kill it uncleanly). The
    exit codes, in order (0 for a clean shutdown)."""
    daemons = list(daemons)
    for daemon in daemons:
        if daemon.alive():
            daemon.signal(signal.SIGCONT)  # in case a test left it stopped
            daemon.signal(signal.SIGTERM)
    return [daemon.reap(timeout) if daemon.proc is not None else 0 for daemon in daemons]


def idgen_daemon(
    tmp: Path,
    worker_id: int,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra: list[str] | None = None,
) -> Daemon:
    """An idgen daemon (not started) with its data dir under `tmp`."""
    port = port or find_free_port(host)
    data_dir = tmp / f"idgen-{worker_id}-{host}-{port}"
    argv = [
        "idgen", "serve", "--listen", f"{host}:{port}", "--worker-id", str(worker_id),
        "--data-dir", str(data_dir), *(extra or []),
    ]
    return Daemon(argv, host, port, tmp / f"idgen-{worker_id}-{host}-{port}.log")


def kvcache_daemon(
    tmp: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra: list[str] | None = None,
) -> Daemon:
    """A kvcache daemon (not started) taking memcached's flags; `extra` adds more."""
    port = port or find_free_port(host)
    argv = ["kvcache", "serve", "-l", host, "-p", str(port), *(extra or [])]
    return Daemon(argv, host, port, tmp / f"kvcache-{host}-{port}.log")
