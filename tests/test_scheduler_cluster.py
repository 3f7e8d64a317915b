"""scheduler serve: membership changes (CLUSTER.ADD/REMOVE) and lost workers, on a real
three-node cluster (127.0.0.2-4) plus a joining fourth node (127.0.0.5).

Timeouts only detect hangs (HANG_S in tests.test_scheduler_daemon); nothing asserts how long
anything took.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.conftest import find_free_port
from tests.procs import Daemon
from tests.test_scheduler_daemon import (
    Cluster,
    fires,
    running_cluster,
    stop_and_check_each_second_fired_once,
    wait_until,
)

WORKER_TIMEOUT_MS = 3000
FOURTH = "127.0.0.5"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-cluster"),
                         node_args=["--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]) as c:
        yield c


def _peers(cluster: Cluster) -> str:
    return next(cluster.nodes[0].argv[i + 1] for i, word in enumerate(cluster.nodes[0].argv)
                if word == "--peers")


def test_add_and_remove_a_node_while_a_job_fires(cluster: Cluster) -> None:
    out = cluster.tmp / "member-fires.txt"
    command = f'echo "$SCHED_SCHEDULED_AT" >> {out}'
    assert cluster.call("JOB.ADD", "member-tick", "@every 1s", command,
                        "MISFIRE", "ALL", "DEADLINE", "60") == "OK"
    wait_until(lambda: len(fires(out)) >= 2, "first fires", cluster)

    raft_port, port = find_free_port(FOURTH), find_free_port(FOURTH)
    argv = ["scheduler", "serve", "--id", "4", "--listen", f"{FOURTH}:{port}",
            "--peer-listen", f"{FOURTH}:{raft_port}",
            "--peers", f"{_peers(cluster)},4={FOURTH}:{raft_port}", "--join",
            "--data-dir", str(cluster.tmp / "node4"),
            "--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]
    fourth = Daemon(argv, FOURTH, port, cluster.tmp / "node4.log")
    fourth.start()
    try:
        follower = next(n for n in cluster.nodes if n is not cluster.leader())
        index = cluster.client(follower).execute_command(  # forwarded to the leader
            "CLUSTER.ADD", "4", f"{FOURTH}:{raft_port}", f"{FOURTH}:{port}")
        assert index > 0

        def fourth_caught_up() -> bool:
            info = cluster.client(fourth, 2).execute_command("CLUSTER.INFO")
            return info["members"] == [1, 2, 3, 4] and info["leader"] in (1, 2, 3, 4)

        wait_until(fourth_caught_up, "node 4 to join", cluster)
        assert "member-tick" in cluster.client(fourth).execute_command("JOB.LIST")
        info = cluster.call("CLUSTER.INFO")
        assert info["members"] == [1, 2, 3, 4]
        # every node publishes its own client address; node 4's came with CLUSTER.ADD
        assert info["clients"]["4"] == f"{FOURTH}:{port}"
        before = len(fires(out))
        wait_until(lambda: len(fires(out)) >= before + 3, "fires with four members", cluster)

        assert cluster.call("CLUSTER.REMOVE", "4") > 0
        info = cluster.call("CLUSTER.INFO")
        assert info["members"] == [1, 2, 3] and "4" not in info["clients"]
    finally:
        fourth.stop()
    before = len(fires(out))
    wait_until(lambda: len(fires(out)) >= before + 3, "fires after the removal", cluster)
    stop_and_check_each_second_fired_once(cluster, "member-tick", out, history=1000)
    assert cluster.call("CLUSTER.INFO")["members"] == [1, 2, 3]


def test_membership_command_errors(cluster: Cluster) -> None:
    import redis

    for args, text in [
        (("CLUSTER.ADD", "0", "127.0.0.9:1"), "node id must be"),
        (("CLUSTER.ADD", "9", "nohostport"), "bad address"),
        (("CLUSTER.ADD", "9", "127.0.0.9:1", "127.0.0.9:x"), "bad address"),
        (("CLUSTER.REMOVE", "x"), "node id must be"),
        (("CLUSTER.ADD", "9"), "wrong number of arguments"),
    ]:
        with pytest.raises(redis.ResponseError, match=text):
            cluster.call(*args)


def test_command_line_client(cluster: Cluster) -> None:
    import subprocess
    import sys

    from tests.procs import ROOT

    servers = ",".join(n.address for n in cluster.nodes)

    def cli(*words: str, status: int = 0) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "scheduler", *words, "--server", servers],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == status, (words, proc.stdout, proc.stderr)
        return (proc.stdout if status == 0 else proc.stderr).splitlines()

    assert cli("job", "add", "cli-job", "0 3 * * *", "true", "TZ", "Europe/Berlin") == ["OK"]
    assert "cli-job\tscheduled" in cli("job", "list")  # name and status
    fields = dict(line.split(": ", 1) for line in cli("job", "get", "cli-job"))
    assert fields["tz"] == "Europe/Berlin" and fields["paused"] == "0"
    assert cli("job", "pause", "cli-job") == ["OK"]
    assert dict(line.split(": ", 1) for line in cli("job", "get", "cli-job"))["paused"] == "1"
    assert cli("job", "resume", "cli-job") == ["OK"]
    [run_id] = cli("job", "run", "cli-job")
    assert run_id.startswith("cli-job@")

    def succeeded() -> bool:
        lines = cli("history", "cli-job", "5")
        return len(lines) == 2 and lines[1].split("\t")[:2] == [run_id, "succeeded"]

    wait_until(succeeded, "the run via the command line", cluster)
    assert cli("history", "cli-job")[0].startswith("run_id\tstate\tattempt")
    info = dict(line.split(": ", 1) for line in cli("cluster", "info"))
    assert info["members"] == "1,2,3" and info["leader"] in ("1", "2", "3")
    assert cli("job", "del", "cli-job") == ["OK"]
    [error] = cli("job", "get", "cli-job", status=1)
    assert "no such job 'cli-job'" in error
    assert not any(line.startswith("cli-job\t") for line in cli("job", "list"))


def test_a_killed_workers_run_is_lost_and_retried_elsewhere(cluster: Cluster) -> None:
    pids = cluster.tmp / "slow.pids"
    command = f"echo $$ >> {pids}; exec sleep 30"
    assert cluster.call("JOB.ADD", "slow", "0 0 1 1 *", command, "TARGET", "slow",
                        "RETRIES", "1", "BACKOFF", "0") == "OK"
    servers = ",".join(n.address for n in cluster.nodes)

    def worker(worker_id: str) -> Daemon:
        argv = ["scheduler", "worker", "--scheduler", servers, "--id", worker_id,
                "--tags", "slow", "--heartbeat-ms", "300"]
        return Daemon(argv, "127.0.0.1", 0, cluster.tmp / f"{worker_id}.log")

    first, second = worker("wa"), worker("wb")
    try:
        first.start(wait=False)
        run_id = cluster.call("JOB.RUN", "slow")

        def latest() -> dict[str, object]:
            return cluster.call("JOB.HISTORY", "slow", "1")[0]

        wait_until(lambda: latest()["state"] == "started" and pids.exists(),
                   "the first attempt to start", cluster)
        assert latest()["worker"] == "wa" and latest()["attempt"] == 1
        first.kill()  # SIGKILL mid-run: no report will ever come
        second.start(wait=False)
        wait_until(lambda: latest()["attempt"] == 2 and latest()["state"] == "started",
                   "the retry to start", cluster)
        run = latest()
        assert run["run_id"] == run_id and run["worker"] == "wb"
        assert str(run["message"]).startswith("attempt 1: lost: worker wa silent")
        history = cluster.call("JOB.HISTORY", "slow", "10")
        assert len(history) == 1  # one run, its second attempt
    finally:
        for daemon in (first, second):
            if daemon.alive():
                daemon.kill()
        for pid in fires(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert cluster.call("JOB.DEL", "slow") == "OK"
    # last in this module: a killed worker's WORKER.POLL still pending on a node may claim
    # a run fired right after the kill (that run is then lost after the worker timeout)
