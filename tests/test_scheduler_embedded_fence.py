"""An embedded worker cut off from every node fences itself, as the shell worker does.

A real three-node cluster (--worker-timeout-ms 3000) and an EmbeddedWorker in a thread of
this process, told the same timeout. Its handler's first attempt starts a command with
`run_command` and waits on it. Every node is then SIGSTOPped, so the worker hears from none
(a partition, as its nodes see it, without network namespaces): while they are stopped,
so before any retry could start, the handler's task is cancelled and its command's process
is gone. Once the nodes run again the attempt ends lost, with the worker's abandoned report
either recorded as the reason or noted as late: the retry stands either way. Waits only
detect hangs (HANG_S); nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.client import EmbeddedWorker, Run
from scheduler.embedded import run_command
from scheduler.runs import EXIT_ABANDONED, RETRY_WAIT
from tests.test_scheduler_daemon import Cluster, _alive, running_cluster, wait_until

WORKER_TIMEOUT_MS = 3000  # the cluster's and the worker's
TAG = "fence"
WORKER_ID = "emb-fence"


class Seen:
    """What the handler saw, from the worker's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: list[int] = []
        self.cancelled: list[int] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("embedded-fence"), worker=False,
                         node_args=["--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]) as c:
        yield c


def start_worker(cluster: Cluster, seen: Seen, pid_file: Path) -> EmbeddedWorker:
    worker = EmbeddedWorker([(n.host, n.port) for n in cluster.nodes], tags=(TAG,),
                            worker_id=WORKER_ID, heartbeat_s=0.3,
                            worker_timeout_ms=WORKER_TIMEOUT_MS)

    @worker.handler("hold")
    async def hold(run: Run) -> None:
        with seen.lock:
            seen.attempts.append(run.attempt)
        try:  # the command's group dies when this task is cancelled
            await run_command(f"sleep 60 & echo $! > {pid_file}; wait", dict(os.environ), 0)
        except asyncio.CancelledError:
            with seen.lock:
                seen.cancelled.append(run.attempt)
            raise

    return worker


def last_run(cluster: Cluster, job: str) -> dict[str, Any]:
    return cluster.call("JOB.HISTORY", job, "1")[0]


def test_a_cut_off_embedded_worker_cancels_its_handler_before_the_retry(
        cluster: Cluster, tmp_path: Path) -> None:
    seen, pid_file = Seen(), tmp_path / "sleep.pid"
    worker = start_worker(cluster, seen, pid_file)
    stop = worker.run_in_thread()
    try:
        assert cluster.call("JOB.ADD", "held", "0 3 1 1 *", "hold", "TARGET", TAG,
                            "RETRIES", "1", "BACKOFF", "60") == "OK"
        run_id = cluster.call("JOB.RUN", "held")
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                   "the handler's command to start", cluster)
        sleeper = int(pid_file.read_text())
        for node in cluster.nodes:  # every node silent: the worker hears from none
            node.signal(signal.SIGSTOP)
        try:  # no node runs, so no retry can have started meanwhile
            wait_until(lambda: seen.cancelled == [1], "the handler's task to be cancelled")
            wait_until(lambda: not _alive(sleeper), "the handler's command to be killed")
        finally:
            for node in cluster.nodes:
                node.signal(signal.SIGCONT)
        wait_until(lambda: not worker.fenced, "the abandoned report to be taken", cluster)
        run = last_run(cluster, "held")
        assert (run["run_id"], run["state"], run["attempt"]) == (run_id, RETRY_WAIT, 2), run
        assert run["message"].startswith(f"lost: worker {WORKER_ID}"), run
        # the worker's report came first (the reason) or after the cluster's timeout (late)
        assert ("fenced itself" in run["message"]
                or f"late result of attempt 1: exit {EXIT_ABANDONED}" in run["message"]), run
        assert seen.attempts == [1]  # the retry waits its BACKOFF: nothing overlapped
    finally:
        stop()


def test_the_fence_delay_follows_the_worker_timeout() -> None:
    worker = EmbeddedWorker([("127.0.0.1", 1)], worker_id="e", heartbeat_s=0.3,
                            worker_timeout_ms=WORKER_TIMEOUT_MS)
    assert worker.fence_after_s == 2.25  # a quarter of 3 s before the cluster's timeout
    assert EmbeddedWorker([("127.0.0.1", 1)], worker_id="d").fence_after_s == 7.5
    assert EmbeddedWorker([("127.0.0.1", 1)], worker_id="n",
                          worker_timeout_ms=None).fence_after_s is None
    with pytest.raises(ValueError, match="no fence margin"):
        EmbeddedWorker([("127.0.0.1", 1)], worker_id="x", worker_timeout_ms=2000)


def test_the_readme_states_the_embedded_fence() -> None:
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert ("An embedded worker fences itself as a shell worker does, given the cluster's "
            "timeout as `worker_timeout_ms` (default 10000): it cancels its coroutine "
            "handlers, and commands they started with `run_command` die with them.") in readme
    assert ("the thread of a plain-function handler of an embedded worker (below), which "
            "runs on when fenced") in readme


def test_the_readme_states_the_exactly_once_guarantee() -> None:
    """The paragraph tests/test_scheduler_fencing.py (shell worker) and this file (embedded
    worker) show, in its words."""
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    for sentence in (
        "every run is fired exactly once, and executed once unless its worker is lost; then "
        "the earlier attempt is killed before, or fenced from, the retry.",
        "A shell run's process group dies with its worker, even a SIGKILLed one",
        "A result that arrives for an attempt already declared lost is noted as late in the "
        "run's message and changes nothing else: it never overrides the retry.",
    ):
        assert sentence in readme, sentence
