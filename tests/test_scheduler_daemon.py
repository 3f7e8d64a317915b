"""scheduler serve: a real three-node cluster (127.0.0.2-4) and one worker process.

The drill: a job fires every second and its command appends $SCHED_SCHEDULED_AT to a file;
the leader is SIGKILLed and restarted on its data directory three times; then a leader is
SIGSTOPped until a new one is elected and resumed (a stale leader); then the leader and a
follower are killed together (no quorum for a few seconds). Every scheduled second between the
first and the last fire must appear exactly once (MISFIRE ALL with a DEADLINE far above the
failover time: nothing missing, and never a duplicate). Timeouts below only detect hangs;
nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.state_apply import MSG_PAUSED_AHEAD
from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon, stop_together

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HANG_S = 40.0  # a wait longer than this is a hang, not slowness


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        raft_ports = [find_free_port(h) for h in HOSTS]
        pairs = enumerate(zip(HOSTS, raft_ports, strict=True))
        peers = ",".join(f"{i + 1}={host}:{port}" for i, (host, port) in pairs)
        self.nodes: list[Daemon] = []
        for i, host in enumerate(HOSTS):
            port = find_free_port(host)
            argv = [
                "scheduler", "serve", "--id", str(i + 1), "--listen", f"{host}:{port}",
                "--peer-listen", f"{host}:{raft_ports[i]}", "--peers", peers,
                "--data-dir", str(tmp / f"node{i + 1}"),
                "--snapshot-every", "50",  # restarts then also restore from snapshots
            ]
            self.nodes.append(Daemon(argv, host, port, tmp / f"node{i + 1}.log"))
        servers = ",".join(n.address for n in self.nodes)
        self.worker = Daemon(["scheduler", "worker", "--scheduler", servers, "--id", "w1"],
                             "127.0.0.1", 0, tmp / "worker.log")

    def start_nodes(self) -> None:
        """Start (or restart, on their data directories) the three nodes, all together."""
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            wait_for_tcp_port(node.host, node.port, timeout=20, proc=node.proc)

    def stop_all(self) -> None:
        """The worker first (its last reports reach live nodes), then the nodes together."""
        if self.worker.proc is not None:
            self.worker.stop()
        stop_together(self.nodes)

    def client(self, node: Daemon, timeout: float = 15) -> redis.Redis:
        # no client-side retries: Cluster.call does its own, across nodes
        return redis.Redis(host=node.host, port=node.port, socket_timeout=timeout,
                           decode_responses=True, retry=Retry(NoBackoff(), 0))

    def call(self, *args: Any) -> Any:
        """Run a command on the first live node that can answer (retries TRYAGAIN and dead
        nodes until HANG_S)."""
        deadline = time.monotonic() + HANG_S
        while True:
            for node in self.nodes:
                if not node.alive():
                    continue
                try:
                    return self.client(node).execute_command(*args)
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
                except redis.ResponseError as exc:
                    if not str(exc).startswith("TRYAGAIN"):
                        raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"no node answered {args!r}\n{self.logs()}")
            time.sleep(0.2)

    def leader(self) -> Daemon:
        def find() -> Daemon | None:
            for node in self.nodes:
                if not node.alive():
                    continue
                try:
                    info = self.client(node, 2).execute_command("CLUSTER.INFO")
                except redis.RedisError:
                    continue
                if info["role"] == "leader":
                    return node
            return None

        return wait_until(find, "a leader", self)

    def logs(self) -> str:
        return "\n".join(f"--- {d.log_path.name}\n{d.log()[-3000:]}"
                         for d in (*self.nodes, self.worker))


def paused_ahead(run: dict[str, Any]) -> bool:
    """A run fired ahead of its slot (--fire-ahead-ms) and killed by a pause of its job
    before any worker took it: it never ran (scheduler/fireloop.py)."""
    return run["state"] == "killed" and run["message"] == MSG_PAUSED_AHEAD


def wait_until(probe: Callable[[], Any], what: str, cluster: Cluster | None = None) -> Any:
    deadline = time.monotonic() + HANG_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"hang: no {what}\n{cluster.logs() if cluster else ''}")
        time.sleep(0.1)


@contextmanager
def running_cluster(tmp: Path, *, node_args: Sequence[str] = (), worker: bool = True,
                    worker_args: Sequence[str] = ()) -> Iterator[Cluster]:
    """A fresh cluster (and its worker process unless `worker` is false), every process
    stopped on the way out."""
    cluster = Cluster(tmp)
    for node in cluster.nodes:
        node.argv += node_args
    cluster.worker.argv += worker_args
    try:
        cluster.start_nodes()
        if worker:
            cluster.worker.start(wait=False)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler")) as c:
        yield c


def stop_and_check_each_second_fired_once(
    cluster: Cluster, job: str, out: Path, history: int
) -> list[int]:
    """Pause an every-second `job`, wait for its runs to finish, and check that the slots
    written to `out` are each there once and none is missing. Returns them sorted."""
    assert cluster.call("JOB.PAUSE", job) == "OK"

    def settled() -> bool:
        runs = cluster.call("JOB.HISTORY", job, str(history))
        return all(run["state"] in ("succeeded", "failed") or paused_ahead(run) for run in runs)

    wait_until(settled, "the last runs to finish", cluster)
    seen = fires(out)
    assert len(seen) == len(set(seen)), f"a slot fired twice: {sorted(seen)}"
    seen.sort()
    expected = list(range(seen[0], seen[-1] + 1, 1000))
    assert seen == expected, f"missing: {sorted(set(expected) - set(seen))}"
    return seen


def fires(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def test_every_second_fires_exactly_once_through_leader_kills(cluster: Cluster) -> None:
    out = cluster.tmp / "fires.txt"
    command = f'echo "$SCHED_SCHEDULED_AT" >> {out}'
    assert cluster.call("JOB.ADD", "tick", "@every 1s", command,
                        "MISFIRE", "ALL", "DEADLINE", "60") == "OK"
    wait_until(lambda: len(fires(out)) >= 3, "first fires", cluster)
    for _ in range(3):
        leader = cluster.leader()
        before = len(fires(out))
        leader.kill()
        wait_until(lambda b=before: len(fires(out)) >= b + 3, "fires after a kill", cluster)
        leader.start()
        wait_until(lambda b=before: len(fires(out)) >= b + 5, "fires after restart", cluster)
    # a stale leader: SIGSTOP it until the others elect a new one, then SIGCONT; when it
    # wakes up it still believes it leads, and must not fire or dispatch anything twice
    leader = cluster.leader()
    leader.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: cluster.leader() is not leader, "a new leader", cluster)
        before = len(fires(out))
        wait_until(lambda: len(fires(out)) >= before + 2, "fires under the new leader", cluster)
    finally:
        leader.signal(signal.SIGCONT)
    before = len(fires(out))
    wait_until(lambda: len(fires(out)) >= before + 3, "fires after SIGCONT", cluster)

    # quorum lost: leader and one follower down for ~3 s, so slots fall due while no
    # leader can fire; the next leader catches them up (MISFIRE ALL within DEADLINE)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    leader.kill()
    follower.kill()
    time.sleep(3)  # pacing only: let slots fall due without a leader
    before = len(fires(out))
    follower.start()
    leader.start()
    wait_until(lambda: len(fires(out)) >= before + 5, "fires after quorum came back", cluster)
    seen = stop_and_check_each_second_fired_once(cluster, "tick", out, history=100)
    assert len(seen) >= 20
    history = cluster.call("JOB.HISTORY", "tick", "100")
    late = [run for run in history if run["fired_ms"] - run["slot_ms"] > 1000]
    assert late, "the quorum loss should have left slots to catch up"
    print(f"{len(seen)} slots fired once each through 5 failovers, {len(late)} caught up late")
    assert all(run["worker"] == "w1" for run in history)


def test_job_commands_and_errors(cluster: Cluster) -> None:
    call = cluster.call
    assert call("JOB.ADD", "nightly", "0 3 * * *", "true", "TZ", "Europe/Berlin") == "OK"
    assert "nightly" in call("JOB.LIST")
    job = call("JOB.GET", "nightly")
    assert job["tz"] == "Europe/Berlin" and job["paused"] == 0 and job["next_ms"] > 0
    for node in cluster.nodes:  # every node answers reads, after the barrier
        assert "nightly" in cluster.client(node).execute_command("JOB.LIST")
    assert call("JOB.PAUSE", "nightly") == "OK"
    assert call("JOB.GET", "nightly")["paused"] == 1
    assert call("JOB.RESUME", "nightly") == "OK"
    assert call("JOB.GET", "nightly")["paused"] == 0
    run_id = call("JOB.RUN", "nightly")
    assert run_id.startswith("nightly@")
    wait_until(lambda: call("JOB.HISTORY", "nightly", "1")[0]["state"] == "succeeded",
               "the manual run", cluster)
    info = call("CLUSTER.INFO")
    assert info["members"] == [1, 2, 3] and info["leader"] in (1, 2, 3)
    section = cluster.client(cluster.leader()).info("scheduler")
    assert section["role"] == "leader" and section["jobs"] >= 1

    errors = [
        (("JOB.ADD", "nightly", "0 3 * * *", "true"), "ERR job 'nightly' already exists"),
        (("JOB.ADD", "bad", "61 * * * *", "true"), "ERR invalid schedule"),
        (("JOB.ADD", "bad name", "@hourly", "true"), "ERR job name must be"),
        (("JOB.ADD", "bad", "@hourly", "true", "MISFIRE", "SOMETIMES"), "ERR MISFIRE must"),
        (("JOB.ADD", "bad", "@hourly", "true", "BOGUS", "1"), "ERR unknown JOB.ADD option"),
        (("JOB.ADD", "bad", "@hourly"), "ERR wrong number of arguments"),
        (("JOB.GET", "nope"), "ERR no such job 'nope'"),
        (("JOB.DEL", "nope"), "ERR no such job 'nope'"),
        (("JOB.PAUSE", "nope"), "ERR no such job 'nope'"),
        (("JOB.RUN", "nope"), "ERR no such job 'nope'"),
        (("JOB.HISTORY", "nightly", "zero"), "ERR count must be"),
        (("JOB.GET",), "ERR wrong number of arguments"),
        (("WORKER.DONE", "norunid", "0"), "ERR bad run id"),
    ]
    for args, text in errors:
        with pytest.raises(redis.ResponseError) as caught:
            call(*args)
        # redis-py drops the "ERR " prefix of error replies
        assert str(caught.value).startswith(text.removeprefix("ERR ")), (args, caught.value)
    from scheduler.client import SchedulerClient, SchedulerError

    with SchedulerClient([(n.host, n.port) for n in cluster.nodes]) as client:
        client.add("hourly", "@hourly", "true", misfire="SKIP")
        assert "hourly" in client.list()
        assert client.get("hourly")  # a reply in RESP2: a flat list of fields and values
        with pytest.raises(SchedulerError, match="no such job"):
            client.pause("nope")
        client.delete("hourly")
    assert call("JOB.DEL", "nightly") == "OK"
    assert "nightly" not in call("JOB.LIST")
    assert all(cluster.nodes[i].alive() for i in range(3))


def test_worker_executes_a_run_id_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.worker import Run, Worker

    executed: list[str] = []

    async def record(self: Worker, run: Run, gate: object, key: str) -> None:
        executed.append(run.run_id)

    monkeypatch.setattr(Worker, "_execute", record)

    async def deliver() -> None:
        worker = Worker([("127.0.0.1", 1)], worker_id="w")
        run = ["j@1000/0", "j", "true", 1000, 1, 0]
        for _ in range(3):  # delivered three times (lost replies, resync)
            worker._start(run)
        await asyncio.gather(*worker.tasks)

    asyncio.run(deliver())
    assert executed == ["j@1000/0"]


def test_worker_skips_a_poll_item_it_cannot_read() -> None:
    from scheduler.worker import Worker

    async def deliver() -> None:
        worker = Worker([("127.0.0.1", 1)], worker_id="w")
        for bad in (["j@1/0", "j", "true", "soon", 1, 0], ["j@1/0", "j"], [None] * 6):
            worker._start(bad)  # logged and skipped: the poll loop goes on
        assert not worker.tasks and worker._held == 0

    asyncio.run(deliver())


def test_run_command_environment_and_group_kill(tmp_path: Path) -> None:
    from scheduler.worker import EXIT_TIMED_OUT, run_command

    env = {**os.environ, "SCHED_JOB": "j", "SCHED_SCHEDULED_AT": "1234"}
    code, output = asyncio.run(run_command('echo "$SCHED_JOB $SCHED_SCHEDULED_AT"; exit 3', env, 0))
    assert (code, output) == (3, b"j 1234\n")
    pid_file = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {pid_file}; wait"
    code, _ = asyncio.run(run_command(command, env, 1))
    assert code == EXIT_TIMED_OUT
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), "the killed group's child to go")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for init counts as gone
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
