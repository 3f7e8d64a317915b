"""A three-node scheduler cluster of real processes on 127.0.0.2-4, for the benchmark.

Each node is a `bench.common.ServerProcess` (`python -m scheduler serve`) with its own data
directory, which outlives a SIGKILL or SIGTERM: `restart(i)` starts the node again on it, as
an operator would. Clients go through `scheduler.client.SchedulerClient` (failover across
the nodes); `node_call` asks one node only (CLUSTER.INFO is that node's own view).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, SERVER_LOGS, ServerProcess, find_free_port
from bench.scheduler_loads import READY_LINE, Note
from core.resp_client import ReplyError, RespConnectionError
from scheduler.client import SchedulerClient

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
WAIT_S = 60.0  # longer than this is a hang, not slowness
POLL_S = 0.02


def wait_for(probe: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `probe` until it returns something truthy; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (OSError, RespConnectionError, ReplyError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        time.sleep(POLL_S)


def text(value: Any) -> Any:
    """bytes -> str, recursively through lists and dicts (RESP2 replies are bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [text(v) for v in value]
    if isinstance(value, dict):
        return {text(k): text(v) for k, v in value.items()}
    return value


def as_dict(reply: Any) -> dict[str, Any]:
    """A map reply (RESP3 dict, or RESP2 flat [key, value, ...]) as a dict of str keys."""
    reply = text(reply)
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


class SchedulerCluster:
    """`with SchedulerCluster(extra=[...]) as c:` three started nodes; stopped (SIGTERM) and
    their directories removed on exit."""

    def __init__(self, extra: Sequence[str] = (), log_level: str = "WARNING") -> None:
        raft_ports = [find_free_port(h) for h in HOSTS]
        peers = ",".join(f"{i + 1}={h}:{p}" for i, (h, p) in enumerate(zip(HOSTS, raft_ports,
                                                                          strict=True)))
        self.nodes: list[ServerProcess] = []
        for i, host in enumerate(HOSTS):
            port = find_free_port(host)
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-sched{i + 1}-"))
            argv = [
                sys.executable, "-m", "scheduler", "serve", "--id", str(i + 1),
                "--listen", f"{host}:{port}", "--peer-listen", f"{host}:{raft_ports[i]}",
                "--peers", peers, "--data-dir", str(tmp / "data"), "--log-level", log_level,
                *extra,
            ]
            self.nodes.append(ServerProcess(f"scheduler[{i + 1}]@{host}:{port}", argv, host,
                                            port, tmp))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def start(self) -> SchedulerCluster:
        for node in self.nodes:
            node.start()
        self.leader()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
        for node in self.nodes:
            code = node.stop()
            SERVER_LOGS.append({"server": node.name, "exit_code": code,
                                "log_tail": node.log_tail})

    def __enter__(self) -> SchedulerCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, deadline_s: float = WAIT_S) -> SchedulerClient:
        return SchedulerClient(self.addresses, deadline_s=deadline_s)

    def alive(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def node_info(self, i: int) -> dict[str, Any]:
        """CLUSTER.INFO as node `i` sees it."""
        return as_dict(self.nodes[i].call("CLUSTER.INFO"))

    def leader(self, exclude: int | None = None) -> int:
        """The index of the node that leads (waits until one does and a live node agrees)."""
        def find() -> int | None:
            for i in range(len(self.nodes)):
                if i == exclude or not self.alive(i):
                    continue
                info = self.node_info(i)
                if info["role"] == "leader":
                    return i + 1  # truthy even for node 0
            return None

        return int(wait_for(find, "leader")) - 1

    def kill(self, i: int, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to node `i` (no wait)."""
        proc = self.nodes[i].proc
        assert proc is not None
        proc.send_signal(signum)

    def reap(self, i: int) -> int:
        """Wait for node `i` to exit; its exit code."""
        proc = self.nodes[i].proc
        assert proc is not None
        return proc.wait(timeout=WAIT_S)

    def restart(self, i: int) -> None:
        """Start node `i` again on its data directory; wait until it has caught up with the
        leader's commit index as of now."""
        leader = self.leader(exclude=i)
        commit = int(self.node_info(leader)["commit_index"])
        self.nodes[i].start()

        def caught_up() -> bool:
            info = self.node_info(i)
            return int(info["applied_index"]) >= commit and int(info["leader"]) > 0

        wait_for(caught_up, f"node {i + 1} to catch up")

    def history(self, client: SchedulerClient, job: str, count: int) -> list[dict[str, Any]]:
        """JOB.HISTORY as dicts with int fields (-1 where unset), newest first."""
        runs = [as_dict(r) for r in client.history(job, count)]
        for run in runs:
            for key, value in run.items():
                if isinstance(value, str) and value.lstrip("-").isdigit():
                    run[key] = int(value)
        return runs


class WorkerChild:
    """The embedded-handler worker child (bench.scheduler_loads) of a cluster: `start()`,
    then `finish()` -> its notes (bench.scheduler_loads.Note) and CPU seconds; `facts` then
    holds what else it reported (its slots). `slots` None: the worker's default."""

    def __init__(self, cluster: SchedulerCluster, slots: int | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-sched-worker-"))
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.addresses)
        self.argv = [sys.executable, "-m", "bench.scheduler_loads", "--nodes", nodes,
                     "--out", str(self.tmp / "notes.json"),
                     *(("--slots", str(slots)) if slots is not None else ())]
        self.proc: subprocess.Popen[str] | None = None
        self.facts: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerChild:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.tmp / "worker.log", "w") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != READY_LINE:
            self.proc.wait(timeout=WAIT_S)
            raise RuntimeError(f"worker did not start: {line!r}\n{self.log()}")
        return self

    def finish(self) -> tuple[list[Note], float]:
        """SIGTERM, wait, and read what the worker noted."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT_S)
        try:
            result = json.loads((self.tmp / "notes.json").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"worker exited with {code}, no notes:\n{self.log()}") from None
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.facts = {k: v for k, v in result.items() if k not in ("notes", "cpu_s")}
        return [tuple(n) for n in result["notes"]], float(result["cpu_s"])  # type: ignore[misc]

    def kill(self) -> None:
        """For the error path: stop it without waiting for notes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.tmp / "worker.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""
