"""A real dfs cluster for tests: 3 `dfs master` processes (127.0.0.2-4) and chunk servers
(127.0.0.5 on, one rack per two servers), each its own process, with short timings.

`DfsCluster(tmp, chunkservers=4)`; `start()` waits until a leader is out of safe mode with
every chunk server reporting; `stop()` SIGKILLs whatever still runs (a graceful stop would
wait out hand-overs to dead nodes). Timeouts only detect hangs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfs.client import DfsClient, DfsError
from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon

MASTER_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HANG_S = 60.0
HEARTBEAT_MS = 200
DEAD_MS = 2000
TRASH_KEEP_MS = 1000
ABANDON_MS = 3000


def eventually(probe: Callable[[], Any], what: str, hang_s: float = HANG_S) -> Any:
    """Poll `probe` until it returns something true; AssertionError after `hang_s`."""
    deadline = time.monotonic() + hang_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        time.sleep(0.1)


class DfsCluster:
    """Masters and chunk servers as processes (see the module header)."""

    def __init__(self, tmp: Path, chunkservers: int = 4, scrub_pause_ms: int = 60_000,
                 lease_ms: int | None = None) -> None:
        self.tmp = tmp
        raft = [find_free_port(h) for h in MASTER_HOSTS]
        ports = [find_free_port(h) for h in MASTER_HOSTS]
        self.master_addresses = [f"{h}:{p}" for h, p in zip(MASTER_HOSTS, ports, strict=True)]
        peers = ",".join(f"{i + 1}={h}:{p}" for i, (h, p) in enumerate(
            zip(MASTER_HOSTS, raft, strict=True)))
        self.masters = [Daemon(["dfs", "master", "--id", str(i + 1), "--listen",
                                f"{h}:{ports[i]}", "--peer-listen", f"{h}:{raft[i]}",
                                "--peers", peers, "--data-dir", str(tmp / f"m{i + 1}"),
                                "--tick-ms", "10", "--election-tick", "100",
                                "--timeout-ms", "5000", "--chunkserver-dead-ms", str(DEAD_MS),
                                "--min-chunkservers", str(max(1, min(chunkservers, 3))),
                                "--trash-keep-ms", str(TRASH_KEEP_MS), "--purge-every-ms",
                                "200", "--abandoned-write-ms", str(ABANDON_MS),
                                *([] if lease_ms is None else ["--lease-ms", str(lease_ms)])],
                               h, ports[i], tmp / f"m{i + 1}.log")
                        for i, h in enumerate(MASTER_HOSTS)]
        self.chunkservers = [self._chunkserver(i, scrub_pause_ms) for i in range(chunkservers)]

    def _chunkserver(self, i: int, scrub_pause_ms: int) -> Daemon:
        host = f"127.0.0.{5 + i}"
        port = find_free_port(host)
        return Daemon(["dfs", "chunkserver", "--listen", f"{host}:{port}", "--data-dir",
                       str(self.tmp / f"cs{i}"), "--rack", f"rack{i // 2}", "--masters",
                       ",".join(self.master_addresses), "--heartbeat-ms", str(HEARTBEAT_MS),
                       "--scrub-pause-ms", str(scrub_pause_ms),
                       "--scrub-rate", str(256 * 1024 * 1024)],
                      host, port, self.tmp / f"cs{i}.log")

    def client(self, **options: Any) -> DfsClient:
        """A blocking client of the three masters."""
        return DfsClient(self.master_addresses, **options)

    def start(self) -> DfsCluster:
        nodes = [*self.masters, *self.chunkservers]
        for node in nodes:  # every process boots at once; then each must listen
            node.start(wait=False)
        for node in nodes:
            assert node.proc is not None
            try:
                wait_for_tcp_port(node.host, node.port, timeout=HANG_S, proc=node.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- log ---\n{node.log()}") from None
        with self.client() as fs:
            eventually(lambda: self.ready(fs), "a leader out of safe mode, servers reporting")
        return self

    def ready(self, fs: DfsClient, servers: int | None = None) -> bool:
        """True when the leader is out of safe mode and `servers` (default: every live
        chunk server) report to it."""
        want = servers if servers is not None else sum(n.alive() for n in self.chunkservers)
        try:
            report = fs.report()
        except DfsError:
            return False
        return not report["safe_mode"] and len(report["servers"]) == want

    def chunk_dir(self, i: int) -> Path:
        return self.tmp / f"cs{i}" / "chunks"

    def stop(self) -> None:
        for node in [*self.chunkservers, *self.masters]:
            if node.alive():
                node.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {n.log_path.name} ---\n{n.log()[-3000:]}"
                         for n in [*self.masters, *self.chunkservers])
