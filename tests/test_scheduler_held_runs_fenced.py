"""Runs a worker holds for their slots (fired ahead) all end after it fences itself.

A real three-node cluster (--worker-timeout-ms 3000, --fire-ahead-ms 5000: the worker holds
runs whose slots lie past its fence) and an EmbeddedWorker in a thread of this process, told
the same timeout. Once it holds runs waiting for their slots, every node is SIGSTOPped, so it
hears from none: it fences them (cancels and reports them abandoned once a node answers).
The nodes run again, the job is paused, and every run of the job must end: none stays
started (or fired, or waiting to retry). Waits only detect hangs (HANG_S); nothing asserts
how long anything took.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.client import EmbeddedWorker, Run
from scheduler.runs import ACTIVE
from tests.test_scheduler_daemon import Cluster, running_cluster, wait_until

WORKER_TIMEOUT_MS = 3000  # the cluster's and the worker's: the fence falls at 2.25 s
FIRE_AHEAD_MS = 5000  # longer than the fence: runs still wait for their slots when it falls
TAG = "ahead"
HISTORY = 200
GATED = 4  # runs the worker holds for their slots when the nodes stop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    args = ["--worker-timeout-ms", str(WORKER_TIMEOUT_MS), "--fire-ahead-ms",
            str(FIRE_AHEAD_MS)]
    with running_cluster(tmp_path_factory.mktemp("held-fenced"), worker=False,
                         node_args=args) as c:
        yield c


def history(cluster: Cluster) -> list[dict[str, Any]]:
    return list(cluster.call("JOB.HISTORY", "tick", str(HISTORY)))


def test_runs_fenced_while_waiting_for_their_slots_all_end(cluster: Cluster) -> None:
    worker = EmbeddedWorker([(n.host, n.port) for n in cluster.nodes], tags=(TAG,),
                            worker_id="held-fenced", heartbeat_s=0.3,
                            worker_timeout_ms=WORKER_TIMEOUT_MS)

    @worker.handler("tick")
    async def tick(run: Run) -> None:
        return None

    stop = worker.run_in_thread()
    try:
        assert cluster.call("JOB.ADD", "tick", "@every 1s", "tick", "TARGET", TAG,
                            "HISTORY", str(HISTORY)) == "OK"
        # four slots a second apart: the last is past the fence, which falls 2.25 s after
        # the last answer the worker got, so at least one run is fenced while it waits
        wait_until(lambda: worker._gated >= GATED, "the worker to hold runs fired ahead")
        for node in cluster.nodes:  # every node silent: the worker hears from none
            node.signal(signal.SIGSTOP)
        try:
            wait_until(lambda: worker.fenced and not worker._gated,
                       "the worker to fence the runs waiting for their slots")
        finally:
            for node in cluster.nodes:
                node.signal(signal.SIGCONT)
        assert cluster.call("JOB.PAUSE", "tick") == "OK"
        wait_until(lambda: not worker.holding and not worker.fenced,
                   "the worker's reports to be taken", cluster)
        wait_until(lambda: not [r for r in history(cluster) if r["state"] in ACTIVE],
                   "every run of the job to end", cluster)
        runs = history(cluster)
        lost = [r for r in runs if r["state"] == "lost"]
        assert lost, runs  # the fenced ones (RETRIES 0: lost is where they end)
        assert all(r["message"].startswith("lost: worker held-fenced") for r in lost), lost
    finally:
        stop()
