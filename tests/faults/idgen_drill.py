"""The idgen drill: three idgen daemons under partitions, clock steps back and SIGKILLs.

Strategy: hosts n1-n3 each run one idgen daemon (worker id = node id = host index) with the
other two as `--peers` over core/rpc (`--cluster-secret`), each on its own libfaketime clock;
host n4 holds no daemon. One client thread on every host (n1-n4) loops over the three
daemons in a seeded order and asks each for `NEXT` or `NEXT n`, recording every request in a
Recorder under the process `c<client>/w<worker>` (one client's requests to one daemon), so a
client keeps reaching the daemon of its own host whatever the network does. Meanwhile the
Nemesis isolates, splits, cuts one way and drops at random (network faults only), and a
second seeded thread of this module steps one daemon's wall clock back (by less than
`--max-backward-ms`, waited out, or by more, answered `-CLOCK` until the clock catches up;
the offset is put back to zero, a jump forward, before the next step) and SIGKILLs a daemon
and restarts it on its data directory.

Outcomes: a reply of ids is ok (the ids); an error reply (-CLOCK, -SKEW, -CONFLICT) is fail:
the daemon issued nothing it delivered (a batch cut short drops its ids, a gap never a
duplicate); a timeout or lost connection is info.

Checked, after every fault is healed and every daemon answers again:
- unique: no id was returned twice across every client and daemon, and each process's ids
  (one client, one daemon) strictly increase in the order it asked;
- clock step back (a focused phase after the faults): a client on one daemon's host keeps
  asking it for ids while that daemon's clock steps back by more than `--max-backward-ms`;
  every id it got, before and after the step, is distinct and increasing, and no request
  that started after another one ended got a smaller id (real-time order on one daemon).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults.checkers import CheckResult, check_unique
from tests.faults.drill import FAULT_F, HEAL_F, NEMESIS_PROCESS, DrillReport, Nemesis, finish
from tests.faults.history import History, Operation, Recorder
from tests.faults.hosts import Harness
from tests.faults.node import Host, Node
from tests.faults.report import origin_of

WORKERS = 3
HOSTS = WORKERS + 1  # n4 runs clients only
CLIENT_PORT = 7379
NODE_PORT = 7380
PASSWORD = "drill"
SECRET = "drill-cluster-secret"
MAX_BACKWARD_MS = 5
CONNECT_TIMEOUT_S = 0.5
OP_TIMEOUT_S = 1.0
SETTLE_TIMEOUT_S = 60.0  # a daemon not answering after this long since the heal is a hang
MAX_BATCH = 5
SMALL_STEP_S = 0.003  # within MAX_BACKWARD_MS: waited out
LARGE_STEPS_S = (0.3, 0.6)  # beyond it, within the default --max-skew-ms
FOCUS_STEP_S = 0.5
FOCUS_IDS = 200  # ids the focused client collects before the step, and again after it
FAULT_PAUSE_S = (0.5, 2.0)
HOLD_S = (0.5, 2.0)
NETWORK_FAULTS = ("isolate", "split", "one_way", "loss")
PROCESS_NEMESIS = f"{NEMESIS_PROCESS}/process"  # this module's clock steps and kills
F_NEXT = "next"
CLOCK_ERROR = "CLOCK"


class Cluster:
    """The three daemons of a drill on hosts n1-n3, started together (with their peers)."""

    def __init__(self, harness: Harness, workdir: Path) -> None:
        self.harness = harness
        self.hosts: list[Host] = harness.hosts[:WORKERS]
        self.nodes: list[Node] = [
            harness.spawn(host, self.argv(host, workdir), port=CLIENT_PORT,
                          name=f"idgen-{host.index}", faked_clock=True, start=False)
            for host in self.hosts
        ]
        threads = [threading.Thread(target=node.start) for node in self.nodes]
        for thread in threads:  # together: each one's first peer check waits for the others
            thread.start()
        for thread in threads:
            thread.join()

    def argv(self, host: Host, workdir: Path) -> list[str]:
        peers = ",".join(f"{h.index}={h.address}:{NODE_PORT}" for h in self.hosts if h != host)
        return ["idgen", "serve", "--listen", f"{host.address}:{CLIENT_PORT}",
                "--worker-id", str(host.index), "--id", str(host.index),
                "--data-dir", str(workdir / f"idgen-{host.index}"),
                "--requirepass", PASSWORD, "--peer-listen", f"{host.address}:{NODE_PORT}",
                "--peers", peers, "--cluster-secret", SECRET,
                "--max-backward-ms", str(MAX_BACKWARD_MS)]  # fmt: skip


def connect(host: Host) -> redis.Redis:
    """A redis-py client of the daemon on `host`, without retries (each try is recorded)."""
    return redis.Redis(host.address, CLIENT_PORT, password=PASSWORD, protocol=2,
                       socket_timeout=OP_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
                       retry=Retry(NoBackoff(), 0))  # fmt: skip


def next_ids(recorder: Recorder, process: str, conn: redis.Redis, count: int | None) -> bool:
    """One recorded NEXT (count None) or NEXT count; True when it returned ids."""
    with recorder.op(process, F_NEXT, value=count) as op:
        try:
            if count is None:
                reply: Any = conn.execute_command("NEXT")
                op.ok([int(reply)])
            else:
                reply = conn.execute_command("NEXT", count)
                op.ok([int(i) for i in reply])
            return True
        except redis.exceptions.ResponseError as exc:
            op.fail(str(exc))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            op.info(repr(exc))
            conn.connection_pool.disconnect()
    return False


def client_loop(recorder: Recorder, client: int, targets: list[Host], rng: random.Random,
                stop: threading.Event) -> None:
    """Ask every daemon for ids in a seeded order until `stop`; runs on the client's host."""
    conns = {host.index: connect(host) for host in targets}
    try:
        while not stop.is_set():
            for host in rng.sample(targets, len(targets)):
                count = None if rng.random() < 0.5 else rng.randint(1, MAX_BATCH)
                next_ids(recorder, f"c{client}/w{host.index}", conns[host.index], count)
    finally:
        for conn in conns.values():
            conn.close()


def process_faults(cluster: Cluster, rng: random.Random, stop: threading.Event,
                   recorder: Recorder) -> None:
    """Clock steps back and SIGKILL-restarts, one at a time, until `stop`; each is written
    into the history under PROCESS_NEMESIS (the Nemesis has its own process name)."""
    while not stop.wait(rng.uniform(*FAULT_PAUSE_S)):
        node = rng.choice(cluster.nodes)
        if rng.random() < 0.5:
            step = rng.choice((SMALL_STEP_S, *LARGE_STEPS_S))
            clock = cluster.harness.clock(node.host)
            note(recorder, FAULT_F, "clock", f"clock {node.host.name} -{step:.3f}s")
            clock.set(-step)
            stop.wait(rng.uniform(*HOLD_S))
            clock.set(0.0)
            note(recorder, HEAL_F, "clock", f"clock {node.host.name} back to +0s")
        else:
            note(recorder, FAULT_F, "kill", f"kill {node.host.name}")
            node.kill()
            stop.wait(rng.uniform(*HOLD_S))
            node.start()
            note(recorder, HEAL_F, "kill", f"restart {node.host.name}")


def note(recorder: Recorder, f: str, kind: str, description: str) -> None:
    """A fault or heal of this module's own fault thread, as an instant history entry."""
    recorder.invoke(PROCESS_NEMESIS, f, kind, description).ok(description)


def wait_answering(harness: Harness, hosts: list[Host]) -> None:
    """Poll until every daemon issues an id again from its own host (raises on a hang)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for host in hosts:
        thread = harness.executor(host)
        conn = thread.submit(connect, host).result()
        while True:
            try:
                if thread.submit(conn.execute_command, "NEXT").result():
                    break
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    text = f"idgen on {host.name} does not answer after the heal"
                    raise TimeoutError(text) from None
                time.sleep(0.1)
        conn.close()


def focused_clock_step(cluster: Cluster, recorder: Recorder, rng: random.Random) -> str:
    """Step one daemon's clock back by more than the max while its own host's client asks
    it for ids; returns the process name of those operations."""
    node = rng.choice(cluster.nodes)
    process = f"focus/w{node.host.index}"
    clock = cluster.harness.clock(node.host)

    def collect(wanted: int, conn: redis.Redis) -> None:
        got = 0
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while got < wanted and time.monotonic() < deadline:
            count = None if rng.random() < 0.5 else rng.randint(1, MAX_BATCH)
            got += next_ids(recorder, process, conn, count)

    def body() -> None:
        conn = connect(node.host)
        try:
            collect(FOCUS_IDS, conn)
            clock.jump(-FOCUS_STEP_S)
            collect(FOCUS_IDS, conn)
        finally:
            conn.close()
            clock.set(0.0)

    cluster.harness.executor(node.host).submit(body).result()
    return process


def check_real_time_order(ops: list[Operation], name: str) -> CheckResult:
    """Ids of one daemon never go back in real time: an ok request invoked after another
    ok request completed got only larger ids."""
    done = sorted((op for op in ops if op.ok), key=lambda op: op.complete_time or 0)
    started = sorted((op for op in ops if op.ok), key=lambda op: op.invoke_time)
    best: Operation | None = None
    i = 0
    for op in started:
        while i < len(done) and (done[i].complete_time or 0) < op.invoke_time:
            if best is None or max(done[i].result) > max(best.result):
                best = done[i]
            i += 1
        if best is not None and min(op.result) <= max(best.result):
            text = (f"operation {op.id} got id {min(op.result)} after operation {best.id} "
                    f"had completed with {max(best.result)}")
            return CheckResult(name, False, text, (best, op), origin=origin_of(ops))
    refused = sum(1 for op in ops if op.error and CLOCK_ERROR in op.error)
    text = (f"{len(started)} ok requests in real-time order; "
            f"{refused} answered -CLOCK while the clock was behind")
    return CheckResult(name, True, text, details={"clock_refusals": refused})


def check_focus(history: History, process: str) -> list[CheckResult]:
    """The clock-step sub-check: unique and increasing ids from the stepped daemon."""
    ops = [op for op in history.operations() if op.process == process]
    unique = check_unique(ops, f=F_NEXT, per_process_increasing=True)
    unique = CheckResult("clock-step unique", unique.valid, unique.explanation, unique.window,
                         unique.details, unique.origin)
    return [unique, check_real_time_order(ops, "clock-step order")]


def drill(seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """One seeded round of `duration_s` seconds of faults, then the checks (module header)."""
    rng = random.Random(seed)
    recorder = Recorder()
    with Harness(HOSTS, workdir, seed=seed) as harness:
        cluster = Cluster(harness, workdir)
        stop = threading.Event()
        futures = [
            harness.executor(host).submit(client_loop, recorder, host.index, cluster.hosts,
                                          random.Random(rng.random()), stop)
            for host in harness.hosts
        ]
        nemesis = Nemesis(harness, random.Random(rng.random()), cluster.nodes,
                          kinds=NETWORK_FAULTS, recorder=recorder)
        faulters = [threading.Thread(target=nemesis.run, args=(stop, FAULT_PAUSE_S)),
                    threading.Thread(target=process_faults,
                                     args=(cluster, random.Random(rng.random()), stop,
                                           recorder))]
        for thread in faulters:
            thread.start()
        stop.wait(duration_s)
        stop.set()
        for thread in faulters:
            thread.join()
        nemesis.heal_all()
        for node in cluster.nodes:
            if not node.alive():
                node.start()
        for future in futures:
            future.result()
        wait_answering(harness, cluster.hosts)
        focus = focused_clock_step(cluster, recorder, rng)
    history = recorder.history()
    main_ops = [op for op in history.operations() if op.process != focus]
    results = [check_unique(main_ops, f=F_NEXT, per_process_increasing=True),
               *check_focus(history, focus)]
    faults = nemesis.faults + sum(1 for op in main_ops if op.process == PROCESS_NEMESIS
                                  and op.f == FAULT_F) + 1
    return finish("idgen", seed, history, results, faults, workdir, [tally(main_ops)])


def tally(ops: list[Operation]) -> str:
    """A line of figures: outcomes of the NEXT requests, refusals by error code, faults."""
    nexts = [op for op in ops if op.f == F_NEXT]
    status = Counter(op.status for op in nexts)
    codes = Counter((op.error or "?").split()[0] for op in nexts if op.status == "fail")
    faults = Counter(op.key for op in ops if op.f == FAULT_F)
    return (f"NEXT: {status['ok']} ok, {status['fail']} refused {dict(codes)}, "
            f"{status['info']} unknown; faults {dict(faults)}")


__all__ = ["check_real_time_order", "drill"]
