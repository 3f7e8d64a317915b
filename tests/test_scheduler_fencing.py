"""A run's command dies with its worker; a cut-off worker fences itself; late results.

With processes: a three-node cluster (tests/test_scheduler_daemon.py's) and worker processes.
A worker SIGKILLed mid-run takes its run's process group with it (scheduler/reaper.py), and
the result sent afterwards for that lost attempt is noted as late and changes nothing. A
worker whose nodes are all SIGSTOPped (it hears from none, as in a partition) kills its run
before the cluster can declare it lost, and reports it abandoned once the nodes answer.
Without processes: the reaper's line parser (hypothesis), its kill on end of file, the fence
delay, and the late-result rules of scheduler/runs.py. Waits only detect hangs.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import state as S
from scheduler.jobs import MAX_MESSAGE_LEN
from scheduler.reaper import Reaper, apply_line
from scheduler.runs import (
    EXIT_ABANDONED,
    LOST,
    RETRY_WAIT,
    SUCCEEDED,
    RunRecord,
    note_late,
    was_lost,
)
from scheduler.worker import ABANDONED_MESSAGE, fence_delay_s
from tests.procs import Daemon
from tests.test_scheduler_daemon import HANG_S, Cluster, _alive, running_cluster, wait_until
from tests.test_scheduler_state import T0, fire_due, make

WORKER_TIMEOUT_MS = 3000  # the cluster's and the workers' --worker-timeout-ms
SCHEDULE = "0 3 1 1 *"  # never due during the test: runs are started by JOB.RUN


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    node_args = ["--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]
    with running_cluster(tmp_path_factory.mktemp("fencing"), node_args=node_args,
                         worker=False) as c:
        yield c


def start_worker(cluster: Cluster, worker_id: str) -> Daemon:
    servers = ",".join(n.address for n in cluster.nodes)
    argv = ["scheduler", "worker", "--scheduler", servers, "--id", worker_id,
            "--heartbeat-ms", "300", "--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]
    worker = Daemon(argv, "127.0.0.1", 0, cluster.tmp / f"{worker_id}.log")
    return worker.start(wait=False)


def start_slow_run(cluster: Cluster, job: str) -> tuple[str, int]:
    """A manual run of `job` whose command backgrounds `sleep 60` in its group; (run id,
    the sleep's pid) once it runs."""
    pid_file = cluster.tmp / f"{job}.1.pid"
    command = f"sleep 60 & echo $! > {cluster.tmp}/$SCHED_JOB.$SCHED_ATTEMPT.pid; wait"
    assert cluster.call("JOB.ADD", job, SCHEDULE, command, "RETRIES", "1",
                        "BACKOFF", "60") == "OK"
    run_id = cluster.call("JOB.RUN", job)
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
               f"{job}'s first attempt to start", cluster)
    return run_id, int(pid_file.read_text())


def last_run(cluster: Cluster, job: str) -> dict[str, Any]:
    return cluster.call("JOB.HISTORY", job, "1")[0]


def test_a_killed_workers_run_dies_and_its_late_result_is_ignored(cluster: Cluster) -> None:
    worker = start_worker(cluster, "w-killed")
    try:
        run_id, sleeper = start_slow_run(cluster, "killed")
        worker.kill()  # SIGKILL: the worker runs no code of its own on the way out
        wait_until(lambda: not _alive(sleeper), "the first attempt's process to go", cluster)
        wait_until(lambda: last_run(cluster, "killed")["state"] == RETRY_WAIT,
                   "the cluster to declare the attempt lost", cluster)
        assert cluster.call("WORKER.RESULTS", run_id, "0", "done late", "1") == "OK"
        run = last_run(cluster, "killed")
        assert (run["state"], run["attempt"]) == (RETRY_WAIT, 2), run
        assert run["message"].startswith("lost: worker w-killed"), run
        assert "late result of attempt 1: exit 0" in run["message"], run
    finally:
        worker.stop()


def test_a_worker_cut_off_from_every_node_kills_its_run(cluster: Cluster) -> None:
    worker = start_worker(cluster, "w-cut")
    try:
        _, sleeper = start_slow_run(cluster, "cut")
        for node in cluster.nodes:  # every node silent: the worker hears from none
            node.signal(signal.SIGSTOP)
        try:
            wait_until(lambda: not _alive(sleeper), "the fenced run's process to go")
        finally:
            for node in cluster.nodes:
                node.signal(signal.SIGCONT)
        assert "fenced" in worker.log()
        run = wait_until(lambda: (r := last_run(cluster, "cut"))["state"] == RETRY_WAIT and r,
                         "the abandoned or lost attempt to end", cluster)
        # abandoned (the worker's report came first) or lost (the cluster's timeout did)
        assert run["attempt"] == 2 and run["message"].startswith("lost: worker w-cut"), run
    finally:
        worker.stop()


# -- without processes ----------------------------------------------------------------------

@given(st.lists(st.binary(max_size=12)))
def test_reaper_lines_only_ever_list_real_groups(lines: list[bytes]) -> None:
    groups: set[int] = set()
    for line in lines:
        apply_line(groups, line)
    assert all(pgid > 1 for pgid in groups)


def test_reaper_lines_watch_and_unwatch() -> None:
    groups: set[int] = set()
    for line in (b"+100\n", b"+200\n", b"-100\n", b"+1\n", b"+0\n", b"x5\n", b"+\n", b"-7\n"):
        apply_line(groups, line)
    assert groups == {200}


def test_the_reaper_kills_watched_groups_when_its_pipe_closes() -> None:
    reaper = Reaper()
    reaper.start()
    watched = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ended = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        reaper.watch(watched.pid)
        reaper.watch(ended.pid)
        reaper.unwatch(ended.pid)
        reaper.stop()  # end of file, as when the worker dies
        assert watched.wait(timeout=20) == -signal.SIGKILL
        assert ended.poll() is None  # unwatched: left alone
    finally:
        for proc in (watched, ended):
            proc.kill()
            proc.wait()


def test_fence_delay_leaves_a_margin_below_the_worker_timeout() -> None:
    assert fence_delay_s(10_000, 2.0) == 7.5
    assert fence_delay_s(1_500, 0.3) == 1.0  # at least FENCE_MARGIN_MIN_S before it
    with pytest.raises(ValueError, match="no fence margin"):
        fence_delay_s(2_000, 2.0)


def test_only_a_result_for_a_lost_attempt_counts_as_late() -> None:
    lost = RunRecord("j", 1000, LOST, attempt=1, message="lost: worker w silent for 9 ms")
    assert was_lost(lost, 1) and not was_lost(lost, 2)
    waiting = RunRecord("j", 1000, RETRY_WAIT, attempt=2, retry_at_ms=5000,
                        message=lost.message)
    assert was_lost(waiting, 1)
    retried = RunRecord("j", 1000, "started", attempt=2, message=f"attempt 1: {lost.message}")
    assert was_lost(retried, 1) and not was_lost(retried, 2)
    timed_out = RunRecord("j", 1000, "started", attempt=2, message="attempt 1: timed out")
    assert not was_lost(timed_out, 1)
    done = RunRecord("j", 1000, SUCCEEDED, attempt=2, exit_code=0)
    assert not was_lost(done, 1)


def test_a_late_note_changes_only_the_message_once() -> None:
    waiting = RunRecord("j", 1000, RETRY_WAIT, attempt=2, retry_at_ms=5000, message="lost: x")
    noted = note_late(waiting, 1, 0)
    assert (noted.state, noted.attempt, noted.retry_at_ms) == (RETRY_WAIT, 2, 5000)
    assert noted.message.startswith("lost: x; late result of attempt 1: exit 0")
    assert note_late(noted, 1, 0) == noted  # the same report again
    full = RunRecord("j", 1000, LOST, message="m" * MAX_MESSAGE_LEN)
    assert len(note_late(full, 1, 3).message) == MAX_MESSAGE_LEN


def test_an_abandoned_attempt_is_recorded_lost_and_retried() -> None:
    state, _ = make("RETRIES", "1", "BACKOFF", "0")
    [run] = fire_due(state, "j", T0 + 1000)
    [claimed] = state.apply_entry(S.encode_claim("w1", [], T0 + 1000))
    rid = claimed["run_id"]
    state.apply_entry(S.encode_done("j", rid, EXIT_ABANDONED, "abandoned", T0 + 1500,
                                    attempt=1))
    record = state.runs["j"][rid]
    assert (record.state, record.attempt) == (RETRY_WAIT, 2)
    assert record.message.startswith("lost: worker w1 fenced itself"), record
    # a result of attempt 1 after that is late: noted, and the retry goes on
    state.apply_entry(S.encode_done("j", rid, 0, "", T0 + 1600, attempt=1))
    again = state.runs["j"][rid]
    assert (again.state, again.attempt, again.retry_at_ms) == (RETRY_WAIT, 2,
                                                               record.retry_at_ms)
    assert "late result of attempt 1: exit 0" in again.message


def test_empty_poll_replies_do_not_keep_the_fence_away() -> None:
    """A stale leader answers polls with no runs and commits nothing: the worker, whose
    heartbeats fail, fences its run and reports it abandoned once a report goes through."""
    from scheduler.worker import Run, Worker

    reported: list[tuple[object, ...]] = []
    item = [b"j@1000/0", b"j", b"h", 1000, 1, 0]

    async def main() -> None:
        never = asyncio.Event()

        async def executor(run: Run) -> tuple[int, bytes]:
            await never.wait()  # runs until cancelled
            return 0, b""

        worker = Worker([("127.0.0.1", 1)], worker_id="w", heartbeat_s=0.05,
                        executor=executor, fence_after_s=0.3)
        polls = iter([[item]])

        async def call(*args: object, channel: int = 0) -> object:
            if args[0] == "WORKER.POLL":
                await asyncio.sleep(0.01)
                return next(polls, [])  # the stale leader: no runs, nothing committed
            if args[0] == "WORKER.RESULTS":
                reported.append(args[1:])
                return b"OK"
            raise OSError("no quorum")  # heartbeats fail

        worker.call = call  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(HANG_S):
            while not reported:
                await asyncio.sleep(0.05)
        stop.set()
        await running

    asyncio.run(main())
    assert reported == [("j@1000/0", EXIT_ABANDONED, ABANDONED_MESSAGE, 1)]
