"""README.md's promises that are not examples: the `serve` lines start a daemon, the
clusters by hand work, and the idgen daemon warns once when its time bits have less than a
year left.

Strategy: each `serve` line of the README (tests/test_readme.py reads them) runs in an empty
temporary directory, must listen where it says, answer a ping and exit 0 on SIGTERM; its
peers, if it names any, are not running. The lines of node 1 of a cluster by hand ("and
nodes 2, 3") are completed to three nodes from their --peers: the idgen daemons then reach
each other over their node ports, and the scheduler's worker line runs a job. The warning
is read from a real daemon's log, started on a wall clock (libfaketime,
tests/faults/clock.py) half a year before the default epoch's time bits run out. Timeouts
only detect hangs.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from core.launch_spec import Process
from idgen.layout import DEFAULT_EPOCH_MS, MAX_TIME_MS
from scheduler.client import SchedulerClient
from tests.conftest import find_free_port
from tests.faults import clock
from tests.test_readme import (
    COMMAND_S,
    ROOT,
    SERVE_LINE,
    START_S,
    port_is_open,
    shell_lines,
    split_comment,
    start,
    stop,
    wait_until,
)

YEAR_MS = 365 * 24 * 3600 * 1000
WARNING = "years left before the 41 time bits run out"
RESERVE_ROUNDS = 3  # the daemon checks the years left after each renewal of its mark


# -- serve lines --------------------------------------------------------------------------------


def serve_lines() -> list[str]:
    return [split_comment(line)[0] for line in shell_lines()
            if SERVE_LINE.match(line) and " serve " in line]


def listen_address(argv: list[str]) -> tuple[str, int]:
    if "--listen" in argv:
        host, _, port = argv[argv.index("--listen") + 1].rpartition(":")
        return host, int(port)
    host = argv[argv.index("-l") + 1] if "-l" in argv else "127.0.0.1"
    return host, int(argv[argv.index("-p") + 1])


@pytest.mark.parametrize("line", serve_lines(),
                         ids=lambda line: " ".join(line.split()[:4]).removeprefix(".venv/bin/"))
def test_serve_lines_start_a_daemon(line: str, tmp_path: Path) -> None:
    """Each `serve` line, run in an empty directory, listens where it says, answers a ping
    and exits 0 on SIGTERM (its peers, if it names any, are not running)."""
    argv = shlex.split(line)
    daemon = Path(argv[0]).name
    argv[0] = str(ROOT / argv[0])
    host, port = listen_address(argv)
    process = start(Process(daemon, argv), tmp_path, cwd=tmp_path)
    try:
        wait_until(lambda: port_is_open(host, port), f"{line!r} to listen")
        with socket.create_connection((host, port), timeout=COMMAND_S) as conn:
            conn.sendall(b"version\r\n" if daemon == "kvcache" else b"PING\r\n")
            assert conn.recv(100).startswith((b"VERSION ", b"+PONG")), line
    finally:
        code = stop(process)
    assert code == 0, (tmp_path / f"{daemon}.log").read_text()


# -- the clusters by hand ----------------------------------------------------------------------


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(name) + 1] = value
    return out


def sibling(argv: list[str], node: int) -> list[str]:
    """Node `node` of the cluster whose node 1 `argv` starts ("and nodes 2, 3"): its node
    port and client host from node 1's --peers, every other node as its peers."""
    peers = dict(item.split("=") for item in option(argv, "--peers").split(","))
    peers["1"] = option(argv, "--peer-listen")
    host = peers[str(node)].rpartition(":")[0]
    port = option(argv, "--listen").rpartition(":")[2]
    out = with_option(argv, "--id", str(node))
    out = with_option(out, "--peer-listen", peers[str(node)])
    out = with_option(out, "--peers", ",".join(f"{i}={a}" for i, a in sorted(peers.items())
                                               if i != str(node)))
    out = with_option(out, "--listen", f"{host}:{port}")
    out = with_option(out, "--data-dir", option(argv, "--data-dir")[:-1] + str(node))
    return with_option(out, "--worker-id", str(node)) if "--worker-id" in out else out


def cluster_line(daemon: str) -> list[str]:
    """The README's serve line of node 1 of a `daemon` cluster (the one with --peers)."""
    [line] = [line for line in serve_lines() if line.startswith(f".venv/bin/{daemon} ")
              and "--peers" in line]
    argv = shlex.split(line)
    return [str(ROOT / argv[0]), *argv[1:]]


def start_cluster(daemon: str, tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    node_1 = cluster_line(daemon)
    nodes = [node_1, sibling(node_1, 2), sibling(node_1, 3)]
    return [start(Process(f"{daemon}-{i}", argv), tmp_path, cwd=tmp_path)
            for i, argv in enumerate(nodes, start=1)]


def stop_all(processes: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    codes = [stop(process) for process in processes]
    logs = {f.name: f.read_text()[-2000:] for f in tmp_path.glob("*.log")}
    assert codes == [0] * len(codes), logs


def test_the_idgen_cluster_by_hand_checks_itself_over_the_node_ports(tmp_path: Path) -> None:
    processes = start_cluster("idgen", tmp_path)
    try:
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            client = redis.Redis(host, 7379, socket_timeout=COMMAND_S)
            wait_until(lambda c=client: c.info("idgen")["peers_reachable"] == 2,
                       f"{host} to reach its two peers")
    finally:
        stop_all(processes, tmp_path)


def test_the_scheduler_cluster_by_hand_runs_a_job_on_its_worker(tmp_path: Path) -> None:
    [worker_line] = [split_comment(line)[0] for line in shell_lines()
                     if line.startswith(".venv/bin/scheduler worker ")]
    worker = shlex.split(worker_line)
    processes = start_cluster("scheduler", tmp_path)
    processes.append(start(Process("worker", [str(ROOT / worker[0]), *worker[1:]]),
                           tmp_path, cwd=tmp_path))
    out = tmp_path / "ran"
    try:
        with SchedulerClient(option(worker, "--scheduler").split(","),
                             deadline_s=START_S) as client:
            client.add("hand", "@every 1h", f"echo $SCHED_JOB >> {out}")
            client.run("hand")
        wait_until(lambda: out.exists() and out.read_text() == "hand\n", "the run")
    finally:
        stop_all(processes, tmp_path)


@pytest.mark.skipif(clock.unavailable_reason() is not None,
                    reason=str(clock.unavailable_reason()))
def test_idgen_warns_once_when_less_than_a_year_is_left(tmp_path: Path) -> None:
    """INFO idgen shows the years left; under one year a warning is logged, once."""
    end_ms = DEFAULT_EPOCH_MS + MAX_TIME_MS  # the default epoch's last millisecond
    offset_s = (end_ms - YEAR_MS // 2) / 1000 - time.time()
    faked = clock.ClockFile(tmp_path / "clock", offset_s)
    port = find_free_port()
    argv = [str(ROOT / ".venv/bin/idgen"), "serve", "--listen", f"127.0.0.1:{port}",
            "--worker-id", "1", "--data-dir", "data", "--reserve-ms", "100"]
    with open(tmp_path / "idgen.log", "ab") as log:
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=log,
                                   env={**os.environ, **faked.env()})
    try:
        wait_until(lambda: port_is_open("127.0.0.1", port), "idgen to listen")
        client = redis.Redis(port=port, socket_timeout=COMMAND_S)
        info = client.info("idgen")
        assert 0 < float(info["years_left"]) < 1, info
        marks: set[int] = set()

        def renewed() -> bool:
            marks.add(client.info("idgen")["durable_hwm_ms"])
            return len(marks) > RESERVE_ROUNDS

        wait_until(renewed, "the mark to be renewed a few times")
    finally:
        assert stop(process) == 0
    log = (tmp_path / "idgen.log").read_text()
    assert len(re.findall(WARNING, log)) == 1, log
