"""TARGET ALL through the daemon: three nodes (127.0.0.2-4) and three `scheduler worker`
processes. Each slot of a broadcast job runs once on every worker, shards 0..2 of 3
(SCHED_SHARD / SCHED_SHARDS); its AFTER child runs once per slot after all three shards
succeeded; with no live worker a broadcast fires one run, shard 0 of 1, for any worker.

Timeouts only detect hangs (HANG_S); nothing asserts how long anything took.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Daemon
from tests.test_scheduler_daemon import (
    Cluster,
    fires,
    paused_ahead,
    running_cluster,
    wait_until,
)

WORKERS = ("w1", "w2", "w3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-broadcast"), worker=False) as c:
        yield c


def start_workers(cluster: Cluster) -> list[Daemon]:
    servers = ",".join(n.address for n in cluster.nodes)
    workers = []
    for worker_id in WORKERS:
        argv = ["scheduler", "worker", "--scheduler", servers, "--id", worker_id,
                "--heartbeat-ms", "300"]
        workers.append(Daemon(argv, "127.0.0.1", 0, cluster.tmp / f"{worker_id}.log"))
        workers[-1].start(wait=False)
    return workers


def lines(path: Path) -> list[tuple[int, ...]]:
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def test_broadcast_runs_each_slot_once_on_every_worker(cluster: Cluster) -> None:
    # no worker has ever been heard: one run, shard 0 of 1, waiting for any worker
    assert cluster.call("JOB.ADD", "bc-early", "0 0 1 1 *", "true", "TARGET", "ALL") == "OK"
    early = cluster.call("JOB.RUN", "bc-early")
    [run] = cluster.call("JOB.HISTORY", "bc-early")
    assert (run["run_id"], run["state"], run["shard"], run["shards"], run["worker"]) == (
        early, "fired", 0, 1, "")

    workers = start_workers(cluster)
    try:
        wait_until(lambda: cluster.call("JOB.HISTORY", "bc-early")[0]["state"] == "succeeded",
                   "a late worker to take the early run", cluster)

        def all_live() -> bool:
            return cluster.client(cluster.leader()).info("scheduler")["live_workers"] == 3

        wait_until(all_live, "three live workers", cluster)
        check_broadcast(cluster)
    finally:
        for worker in workers:
            worker.stop()


def check_broadcast(cluster: Cluster) -> None:
    out, child_out = cluster.tmp / "shards.txt", cluster.tmp / "child.txt"
    command = f'echo "$SCHED_SCHEDULED_AT $SCHED_SHARD $SCHED_SHARDS" >> {out}'
    assert cluster.call("JOB.ADD", "bc", "@every 1s", command, "TARGET", "ALL",
                        "MISFIRE", "ALL") == "OK"
    assert cluster.call("JOB.ADD", "bc-child", "@after", f'echo "$SCHED_SCHEDULED_AT" >> '
                        f"{child_out}", "AFTER", "bc") == "OK"
    wait_until(lambda: len(lines(out)) >= 12, "four broadcast slots", cluster)
    assert cluster.call("JOB.PAUSE", "bc") == "OK"

    def settled() -> list[dict[str, object]] | None:
        runs = [r for r in cluster.call("JOB.HISTORY", "bc", "100") if not paused_ahead(r)]
        return runs if all(r["state"] == "succeeded" for r in runs) else None

    history = wait_until(settled, "the last shards", cluster)
    seen = lines(out)
    assert len(seen) == len(set(seen)), f"a shard ran twice: {sorted(seen)}"
    by_slot: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for slot, shard, count in seen:
        by_slot[slot].append((shard, count))
    for slot, got in by_slot.items():
        assert sorted(got) == [(0, 3), (1, 3), (2, 3)], (slot, got)
    workers = defaultdict(dict)
    for run in history:
        workers[run["slot_ms"]][run["shard"]] = run["worker"]
    assert set(workers) == set(by_slot)
    for slot, shard_workers in workers.items():  # shard i on the i-th worker by id
        assert shard_workers == dict(enumerate(WORKERS)), (slot, shard_workers)

    # the child: once per parent slot, after its three shards succeeded
    def children() -> list[dict[str, object]] | None:
        runs = cluster.call("JOB.HISTORY", "bc-child", "100")
        done = len(runs) == len(by_slot) and all(r["state"] == "succeeded" for r in runs)
        return runs if done else None

    wait_until(children, "the AFTER child of every slot", cluster)
    assert sorted(fires(child_out)) == sorted(by_slot)
