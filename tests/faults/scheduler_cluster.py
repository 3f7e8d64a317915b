"""The scheduler drill's cluster: nodes, workers, jobs and clients on the harness's hosts.

Strategy: host n<i> runs node i (`scheduler serve`, with `--peers` naming every host's
address, `--cluster-secret`, `--requirepass`, a short `--worker-timeout-ms`, and its host's
libfaketime clock when libfaketime is installed) and a shell worker polling all three nodes
(`DRILL_HOST` in its environment names its host for the job commands). The drill's own
commands go from a thread inside a host to the node there, trying the hosts in turn until
one answers (TRYAGAIN and unreachable nodes retried, up to HANG_S). Clients, one per host,
fire the `manual` job with JOB.RUN through their own host's node only and record each call.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import TryAgainError
from redis.retry import Retry

from scheduler.state import ERR_EXISTS
from tests.faults import clock as clock_faults
from tests.faults import scheduler_checks as checks
from tests.faults.history import Recorder
from tests.faults.hosts import Harness
from tests.faults.node import Host, Node

NODE_PORT = 7401
PEER_PORT = 7501
PASSWORD = "drill"
SECRET = "drill-cluster-secret"
WORKER_TIMEOUT_MS = 2000
HEARTBEAT_MS = 300
CALL_TIMEOUT_S = 2.0  # the clients' JOB.RUN
CONTROL_TIMEOUT_S = 5.0  # the drill's own commands (jobs, pauses, histories, leader)
HANG_S = 60.0  # a wait longer than this is a hang, not slowness
POLL_S = 0.1
CLIENT_PAUSE_S = (0.2, 0.6)
SLOW_RUN_S = 3  # the slow job's command, longer than the worker timeout
NEVER = "0 0 1 1 *"
EVERY_SECOND = "* * * * * *"
HISTORY_ALL = "10000"
MANUAL = "manual"
SLOW = "slow"
JOBS: dict[str, tuple[str, ...]] = {  # cron jobs: name -> JOB.ADD options
    "all": ("MISFIRE", "ALL", "DEADLINE", "300"),
    "once": ("MISFIRE", "ONCE", "DEADLINE", "300"),
    "skip": ("MISFIRE", "SKIP"),
    SLOW: ("MISFIRE", "ALL", "DEADLINE", "300", "RETRIES", "2", "BACKOFF", "0"),
}


class Cluster:
    """The nodes and workers on the harness's hosts, and control calls from inside them."""

    def __init__(self, harness: Harness, workdir: Path) -> None:
        self.harness = harness
        self.workdir = workdir
        self.faked = clock_faults.unavailable_reason() is None
        self.nodes: dict[str, Node] = {}
        self.workers: dict[str, Node] = {}
        self.pools: dict[str, ThreadPoolExecutor] = {}

    def start(self) -> None:
        peers = ",".join(f"{h.index}={h.address}:{PEER_PORT}" for h in self.harness.hosts)
        for host in self.harness.hosts:
            self.pools[host.name] = self.harness.executor(host)
            # no ready port: the three start at once (a node waits for its peers to serve)
            self.nodes[host.name] = self.harness.spawn(
                host, self._node_argv(host, peers), name=f"node-{host.name}",
                faked_clock=self.faked)
        for node in self.nodes.values():
            self.wait(lambda n=node: self._answers(n), f"node {node.host.name} to listen")
        servers = ",".join(f"{h.address}:{NODE_PORT}" for h in self.harness.hosts)
        for host in self.harness.hosts:
            argv = ["scheduler", "worker", "--scheduler", servers, "--id", f"w-{host.name}",
                    "--password", PASSWORD, "--heartbeat-ms", str(HEARTBEAT_MS),
                    "--worker-timeout-ms", str(WORKER_TIMEOUT_MS)]  # the fence (issue 15)
            self.workers[host.name] = self.harness.spawn(
                host, argv, name=f"worker-{host.name}", env={"DRILL_HOST": host.name})

    def _node_argv(self, host: Host, peers: str) -> list[str]:
        return ["scheduler", "serve", "--id", str(host.index),
                "--listen", f"{host.address}:{NODE_PORT}",
                "--peer-listen", f"{host.address}:{PEER_PORT}", "--peers", peers,
                "--data-dir", str(self.workdir / f"data-{host.name}"),
                "--requirepass", PASSWORD, "--cluster-secret", SECRET,
                "--worker-timeout-ms", str(WORKER_TIMEOUT_MS),
                "--snapshot-every", "200"]  # a restarted node restores from a snapshot too

    def connect(self, host: Host, timeout: float = CALL_TIMEOUT_S) -> redis.Redis:
        """A redis-py client of the node on `host`; use it from a thread on a host."""
        return redis.Redis(host=host.address, port=NODE_PORT, password=PASSWORD,
                           socket_timeout=timeout, socket_connect_timeout=timeout,
                           decode_responses=True, retry=Retry(NoBackoff(), 0))

    def ask(self, host: Host, *args: Any) -> Any:
        """One command to the node on `host`, sent from inside `host`; raises its errors."""

        def call() -> Any:
            with self.connect(host, CONTROL_TIMEOUT_S) as conn:
                return conn.execute_command(*args)

        return self.pools[host.name].submit(call).result()

    def call(self, *args: Any) -> Any:
        """A command answered by any node (TRYAGAIN and unreachable nodes retried)."""
        deadline = time.monotonic() + HANG_S
        errors: dict[str, str] = {}
        while time.monotonic() < deadline:
            for host in self.harness.hosts:
                try:
                    return self.ask(host, *args)
                except (redis.ConnectionError, redis.TimeoutError, TryAgainError) as exc:
                    errors[host.name] = repr(exc)
            time.sleep(POLL_S)
        raise TimeoutError(f"hang: no node answered {args!r}: {errors}")

    def _answers(self, node: Node) -> bool:
        try:
            self.ask(node.host, "PING")
        except redis.RedisError:
            return False
        return True

    def leader(self) -> Host:
        """The host of the node that says it leads in the highest term (waits for one)."""

        def find() -> Host | None:
            leaders = []
            for host in self.harness.hosts:
                try:
                    info = self.ask(host, "CLUSTER.INFO")
                except redis.RedisError:
                    continue
                if info.get("role") == "leader":
                    leaders.append((int(info.get("term", 0)), host))
            return max(leaders, key=lambda pair: pair[0])[1] if leaders else None

        return self.wait(find, "a leader")

    def history(self, job: str) -> list[dict[str, Any]]:
        """Every run of `job`, oldest first."""
        return list(reversed(self.call("JOB.HISTORY", job, HISTORY_ALL)))

    def wait(self, probe: Callable[[], Any], what: str, poll_s: float = POLL_S) -> Any:
        """Call `probe` every `poll_s` until it returns a true value (HANG_S: a hang)."""
        deadline = time.monotonic() + HANG_S
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"hang: no {what}; logs in {self.workdir}")
            time.sleep(poll_s)

    def path(self, job: str) -> Path:
        """The file a job's commands append to."""
        return self.workdir / f"runs-{job}.txt"


def command(path: Path, slow: bool = False) -> str:
    """The shell command of a drill job: a `start` line, and for the slow job a sleep and
    an `end` line (tests/faults/scheduler_checks.py reads them)."""
    line = '"$SCHED_SCHEDULED_AT $SCHED_ATTEMPT $DRILL_HOST {} $(date +%s%3N)"'
    text = f"echo {line.format(checks.START)} >> {path}"
    if slow:
        text += f"; sleep {SLOW_RUN_S}; echo {line.format(checks.END)} >> {path}"
    return text


def add_jobs(cluster: Cluster) -> None:
    """Add the drill's jobs (each fires from the first slot after its creation). A JOB.ADD
    retried after a timeout may find its job added by the first attempt: that is success."""
    jobs = {name: (EVERY_SECOND, command(cluster.path(name), name == SLOW), *options)
            for name, options in JOBS.items()}
    jobs[MANUAL] = (NEVER, command(cluster.path(MANUAL)))
    for name, (schedule, text, *options) in jobs.items():
        try:
            cluster.call("JOB.ADD", name, schedule, text, "HISTORY", HISTORY_ALL, *options)
        except redis.ResponseError as exc:
            if str(exc) != ERR_EXISTS.format(name).removeprefix("ERR "):
                raise


class Clients:
    """One JOB.RUN client per host, each talking to the node of its own host."""

    def __init__(self, cluster: Cluster, recorder: Recorder, rng: random.Random) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.seeds = [rng.randrange(1 << 30) for _ in cluster.harness.hosts]
        self.stop = threading.Event()
        self.futures: list[Any] = []

    def start(self) -> None:
        for host, seed in zip(self.cluster.harness.hosts, self.seeds, strict=True):
            pool = self.cluster.harness.executor(host)
            self.futures.append(pool.submit(self._loop, host, random.Random(seed)))

    def finish(self) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=HANG_S)

    def _loop(self, host: Host, rng: random.Random) -> None:
        conn = self.cluster.connect(host)
        try:
            while not self.stop.wait(rng.uniform(*CLIENT_PAUSE_S)):
                handle = self.recorder.invoke(f"client-{host.name}", "run", MANUAL)
                try:
                    run_id = conn.execute_command("JOB.RUN", MANUAL)
                except redis.RedisError as exc:
                    handle.info(repr(exc))
                    continue
                if run_id is None:  # a run of this job at that ms exists: nothing new fired
                    handle.fail("nil: the job's run of that millisecond fired already")
                    continue
                handle.ok(int(str(run_id).split("@")[1].split("/")[0]))
        finally:
            conn.close()


def wall_ms() -> int:
    """The wall clock in ms (this process's: it is never faked)."""
    return time.time_ns() // 1_000_000
