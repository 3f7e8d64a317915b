"""The shardstore consistency drill: counters and registers through slot moves, a SIGKILLed
shard leader and a partitioned node.

Strategy: a 3-node cluster (3 shards x 3 replicas, tests/faults/shardstore_cluster.py) on
the harness, clients on a fourth host routing by the slot map (`SlotClient`: MOVED and ASK
followed, nothing retried). Two workloads run at once:
- counters: each counter client INCRs its own key and now and then GETs it. An INCR that
  got a reply is ok (its result is the new value), one that got an error or no reply is
  unknown (info): it is never sent again; one that found no connection to make was never
  sent (fail). A failed GET is a fail (a read changes nothing);
- registers: register clients SET unique values to a few keys and GET them; a SET that got
  an error or no reply is unknown, one never sent failed.
The keys sit in the slots the rounds move: client i's in the top slots of shard i % 3 + 1,
depth i // 3 (the slots the round that moves them takes), with filler keys beside them so
each move copies many batches and the faults land inside it.

Each round, with the clients running: `shardstore admin reshard` moves the next top slots
of one shard to the next shard (as a process on the client host), the leader of a shard is
SIGKILLed and restarted after KILL_HOLD_S, a node is isolated from every other host (the
clients' too) for ISOLATE_HOLD_S and healed; then the round waits for the cluster to say
ok and for every move to end (a move outlives an admin process the faults cut off; the
admin process's end is noted in the report). After
the rounds every counter and register is read once more.

Checks: every read of a counter lies within its increments (checkers.check_counter), and
finally every counter lies between its acknowledged increments and those plus the unknown
ones, and at or above every value an acknowledged INCR returned (`check_final_counters`);
the register history is linearizable (checkers.check_linearizable, Register model); every
move ended and `shardstore admin check` passes (`check_moves`).

The random-nemesis round (tests/faults/shardstore_nemesis.py) shares the cluster, keys,
clients and checks: `start_workload`, `reshard`, `settle`.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from native.crc16 import key_slot
from tests.faults.checkers import Register, check_counter, check_linearizable
from tests.faults.drill import FAULT_F, HEAL_F, NEMESIS_PROCESS, DrillReport, finish
from tests.faults.history import INFO, OK, Operation, Recorder
from tests.faults.hosts import Harness
from tests.faults.node import Node
from tests.faults.report import CheckResult
from tests.faults.shardstore_cluster import (
    CLIENT_HOST,
    NODES,
    Cluster,
    NotSent,
    SlotClient,
)

__all__ = ["DAEMON", "Round", "Workload", "admin_exit", "check_final_counters", "check_moves",
           "drill", "reshard", "run_round", "settle", "start_workload"]

log = logging.getLogger("tests.faults.shardstore_drill")

DAEMON = "shardstore"
HOSTS = NODES + 1  # the nodes' hosts and the client host
COUNTER_CLIENTS = 3
REGISTER_CLIENTS = 3
REGISTER_KEYS = 3
DEPTHS = 2  # slot ranges per shard that hold keys (round r moves depth r // 3)
SLOTS_PER_ROUND = 24  # slots a round's reshard moves
BATCH_SLOTS = 12  # slots per move
FILLER_KEYS = 60  # filler keys per range, so a move copies many batches
READ_EVERY = 8  # a counter client reads its counter every this many INCRs
REGISTER_PAUSE_S = (0.005, 0.03)
WORK_S = 1.5  # clients work this long between two faults
KILL_HOLD_S = 1.5
ISOLATE_HOLD_S = 3.0
FINAL_READ_TRIES = 200
ADMIN_WAIT_S = 60.0
ERROR_PAUSE_S = 0.05  # a client that got an error waits this long (no busy loop)
FINAL = "final"
F_INCR, F_READ, F_WRITE = "incr", "read", "write"
COUNTER_PREFIX = "counter"
REGISTER_PREFIX = "register"


@dataclass
class Keys:
    """The drill's keys: counters per counter client, registers, and the filler."""

    counters: list[str] = field(default_factory=list)
    registers: list[str] = field(default_factory=list)
    filler: list[str] = field(default_factory=list)


def tagged_in(slots: range, prefix: str, count: int) -> list[str]:
    """`count` keys `<prefix>:{<tag>}` whose hash tag's slot lies in `slots`."""
    keys, i = [], 0
    while len(keys) < count:
        tag = f"t{i}"
        if key_slot(tag.encode()) in slots:
            keys.append(f"{prefix}:{{{tag}}}")
        i += 1
    return keys


def plan_keys(top: dict[int, int]) -> Keys:
    """Keys in the moving ranges: `top` is each shard's highest slot at the start."""
    shards = sorted(top)

    def depth_range(shard: int, depth: int) -> range:
        high = top[shard] - depth * SLOTS_PER_ROUND
        return range(high - SLOTS_PER_ROUND + 1, high + 1)

    keys = Keys()
    for i in range(COUNTER_CLIENTS):
        where = depth_range(shards[i % len(shards)], (i // len(shards)) % DEPTHS)
        keys.counters.append(tagged_in(where, f"{COUNTER_PREFIX}{i}", 1)[0])
    for i in range(REGISTER_KEYS):
        where = depth_range(shards[i % len(shards)], 0)
        keys.registers.append(tagged_in(where, f"{REGISTER_PREFIX}{i}", 1)[0])
    for shard in shards:
        for depth in range(DEPTHS):
            keys.filler += tagged_in(depth_range(shard, depth), f"fill{shard}.{depth}",
                                     FILLER_KEYS)
    return keys


# -- the clients -------------------------------------------------------------------------------


class Clients:
    """The counter and register clients, each a thread on the client host."""

    def __init__(self, cluster: Cluster, recorder: Recorder, keys: Keys,
                 rng: random.Random) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.keys = keys
        self.seeds = [rng.randrange(1 << 30) for _ in range(REGISTER_CLIENTS)]
        self.stop = threading.Event()
        self.futures: list[Future[None]] = []

    def start(self) -> None:
        pool = self.cluster.harness.executor(CLIENT_HOST,
                                             workers=COUNTER_CLIENTS + REGISTER_CLIENTS)
        for i, key in enumerate(self.keys.counters):
            self.futures.append(pool.submit(self._counter, f"c{i}", key))
        for i, seed in enumerate(self.seeds):
            self.futures.append(pool.submit(self._register, f"r{i}", random.Random(seed)))

    def finish(self) -> None:
        self.stop.set()
        for future in self.futures:
            future.result()

    def _client(self) -> SlotClient:
        return SlotClient(self.cluster.addresses)

    def _counter(self, process: str, key: str) -> None:
        client = self._client()
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                if n % READ_EVERY == 0:
                    read(self.recorder, client, process, key, as_int=True)
                else:
                    incr(self.recorder, client, process, key)
        finally:
            client.close()

    def _register(self, process: str, rng: random.Random) -> None:
        client = self._client()
        try:
            n = 0
            while not self.stop.wait(rng.uniform(*REGISTER_PAUSE_S)):
                key = rng.choice(self.keys.registers)
                if rng.random() < 0.5:
                    n += 1
                    write(self.recorder, client, process, key, f"{process}-{n}")
                else:
                    read(self.recorder, client, process, key, as_int=False)
        finally:
            client.close()


def incr(recorder: Recorder, client: SlotClient, process: str, key: str) -> None:
    """One INCR: ok with the new value, or info (an error or no reply: unknown)."""
    handle = recorder.invoke(process, F_INCR, key, 1)
    try:
        result = client.call(key, "INCR", key)
    except NotSent as exc:
        handle.fail(repr(exc))
        time.sleep(ERROR_PAUSE_S)
        return
    except redis.RedisError as exc:
        handle.info(repr(exc))
        time.sleep(ERROR_PAUSE_S)
        return
    handle.ok(int(result))


def write(recorder: Recorder, client: SlotClient, process: str, key: str, value: str) -> None:
    """One SET: ok, or info (an error or no reply: unknown)."""
    handle = recorder.invoke(process, F_WRITE, key, value)
    try:
        client.call(key, "SET", key, value)
    except NotSent as exc:
        handle.fail(repr(exc))
        time.sleep(ERROR_PAUSE_S)
        return
    except redis.RedisError as exc:
        handle.info(repr(exc))
        time.sleep(ERROR_PAUSE_S)
        return
    handle.ok(value)


def read(recorder: Recorder, client: SlotClient, process: str, key: str, *,
         as_int: bool) -> bool:
    """One GET: ok with the value (an int for a counter), or fail; whether it was ok."""
    handle = recorder.invoke(process, F_READ, key)
    try:
        value = client.call(key, "GET", key)
    except redis.RedisError as exc:
        handle.fail(repr(exc))
        time.sleep(ERROR_PAUSE_S)
        return False
    if value is not None:
        value = int(value) if as_int else value.decode()
    handle.ok(value)
    return True


# -- the rounds --------------------------------------------------------------------------------


class Rounds:
    """The faults, one round at a time (module header); each noted in the history."""

    def __init__(self, cluster: Cluster, recorder: Recorder, rng: random.Random) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.rng = rng
        self.faults = 0
        self.notes: list[str] = []
        self.done = 0

    def note(self, f: str, kind: str, text: str) -> None:
        log.info("shardstore drill: %s %s", f, text)
        self.recorder.invoke(NEMESIS_PROCESS, f, kind, text).ok(text)
        self.faults += f == FAULT_F

    def run(self) -> None:
        admin, text = reshard(self.cluster, self.done)
        self.note(FAULT_F, "move", text)
        time.sleep(WORK_S / 3)
        self.kill_a_leader()
        time.sleep(WORK_S)
        self.isolate_a_node()
        time.sleep(WORK_S)
        self.cluster.until_ok()
        self.cluster.until_moves_done()
        self.notes.append(f"round {self.done}: admin reshard {admin_exit(admin)}")
        self.note(HEAL_F, "move", f"round {self.done}: every move done")
        self.done += 1

    def kill_a_leader(self) -> None:
        shard = self.rng.choice(sorted(self.cluster.slot_counts()))
        victim = self.cluster.shard_leader(shard)
        if victim is None:  # no leader right now: any node
            victim = self.rng.choice(list(self.cluster.nodes.values()))
        victim.kill()
        self.note(FAULT_F, "kill", f"kill the leader of shard {shard} ({victim.host.name})")
        time.sleep(KILL_HOLD_S)
        victim.start()
        self.note(HEAL_F, "kill", f"restart {victim.host.name}")

    def isolate_a_node(self) -> None:
        host = self.rng.choice(self.cluster.hosts)
        self.cluster.harness.isolate(host)
        self.note(FAULT_F, "isolate", f"isolate {host.name}")
        time.sleep(ISOLATE_HOLD_S)
        self.cluster.harness.heal()
        self.note(HEAL_F, "isolate", f"heal {host.name}")


def reshard(cluster: Cluster, index: int) -> tuple[Node, str]:
    """Start round `index`'s `shardstore admin reshard` (SLOTS_PER_ROUND top slots of one
    shard to the next, the shards taken in turn); the admin process and what it does."""
    shards = sorted(cluster.slot_counts())
    source = shards[index % len(shards)]
    target = shards[(index + 1) % len(shards)]
    admin = cluster.admin("reshard", "--from", str(source), "--to", str(target),
                          "--slots", str(SLOTS_PER_ROUND), "--batch", str(BATCH_SLOTS),
                          name=f"reshard-{index}")
    return admin, f"reshard {SLOTS_PER_ROUND} slots {source} -> {target}"


def admin_exit(admin: Node) -> str:
    """How an admin process ended: its exit status, or killed when it was still waiting
    ADMIN_WAIT_S after the moves ended (a reply the faults cut off, retried by its client)."""
    assert admin.daemon.proc is not None
    try:
        return f"exited {admin.daemon.proc.wait(timeout=ADMIN_WAIT_S)}"
    except subprocess.TimeoutExpired:
        admin.kill()
        return f"still waiting {ADMIN_WAIT_S:.0f} s after its moves ended: killed"


def preload(cluster: Cluster, keys: Keys) -> None:
    """Write the filler keys (retried: their outcomes are not checked)."""
    def load() -> None:
        client = SlotClient(cluster.addresses)
        try:
            for key in keys.filler:
                cluster.wait(lambda key=key: _set_quietly(client, key), f"SET {key}")
        finally:
            client.close()

    cluster.pool.submit(load).result()


def _set_quietly(client: SlotClient, key: str) -> bool:
    try:
        return bool(client.call(key, "SET", key, "x" * 64))
    except redis.RedisError:
        return False


def final_reads(cluster: Cluster, recorder: Recorder, keys: Keys) -> None:
    """Read every counter and register until one read of each is ok (reads are safe to
    repeat); each attempt is in the history as process FINAL."""
    def read_all() -> None:
        client = SlotClient(cluster.addresses)
        try:
            for key, as_int in [*((k, True) for k in keys.counters),
                                *((k, False) for k in keys.registers)]:
                for _ in range(FINAL_READ_TRIES):
                    if read(recorder, client, FINAL, key, as_int=as_int):
                        break
                    time.sleep(0.1)
        finally:
            client.close()

    cluster.pool.submit(read_all).result()


# -- the checks --------------------------------------------------------------------------------


def check_final_counters(ops: Iterable[Operation], counters: Iterable[str],
                         final: str = FINAL) -> CheckResult:
    """Per counter, the last ok read by process `final` lies in [acknowledged INCRs,
    acknowledged + unknown INCRs] and is at least every value an ok INCR returned;
    valid is "unknown" for a counter with no final read."""
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    lines = []
    for key in counters:
        key_ops = by_key.get(key, [])
        acked = [op for op in key_ops if op.f == F_INCR and op.status == OK]
        unknown = sum(1 for op in key_ops if op.f == F_INCR and op.status == INFO)
        reads = [op for op in key_ops if op.f == F_READ and op.process == final and op.ok]
        if not reads:
            return CheckResult("final counters", "unknown", f"no final read of {key!r}")
        value = reads[-1].result or 0
        highest = max((op.result for op in acked), default=0)
        if not len(acked) <= value <= len(acked) + unknown or value < highest:
            text = (f"counter {key!r} ends at {value}: {len(acked)} INCRs acknowledged "
                    f"(the highest returned {highest}), {unknown} unknown")
            return CheckResult("final counters", False, text, (*acked[-3:], reads[-1]))
        lines.append(f"{key}={value} in [{len(acked)}, {len(acked) + unknown}]")
    return CheckResult("final counters", True, "; ".join(lines))


def check_moves(moves: list[dict[bytes, Any]], check_code: int, check_out: str) -> CheckResult:
    """Every move done and `shardstore admin check` passed (exit status 0)."""
    stuck = [m for m in moves if m.get(b"state") != b"done"]
    if stuck or check_code != 0:
        text = f"moves not done: {stuck}; admin check exited {check_code}:\n{check_out}"
        return CheckResult("moves", False, text)
    return CheckResult("moves", True, f"{len(moves)} moves done; admin check passed")


def verdicts(ops: list[Operation], keys: Keys, moves: list[dict[bytes, Any]],
             check: tuple[int, str]) -> list[CheckResult]:
    counter_ops = [op for op in ops if op.key in keys.counters]
    register_ops = [op for op in ops if op.key in keys.registers]
    return [check_counter(counter_ops, incr_f=F_INCR, read_f=F_READ),
            check_final_counters(counter_ops, keys.counters),
            check_linearizable(register_ops, Register(), fs=(F_WRITE, F_READ)),
            check_moves(moves, *check)]


def admin_check(cluster: Cluster) -> tuple[int, str]:
    """`shardstore admin check` until it passes or HANG_S has gone: its last status and
    output (replicas may take a moment to catch up after the faults)."""
    result = cluster.check()
    deadline = time.monotonic() + 60.0
    while result[0] != 0 and time.monotonic() < deadline:
        time.sleep(1.0)
        result = cluster.check()
    return result


@dataclass
class Round:
    """What `run_round` returns beside the report: the keys and the history's operations."""

    report: DrillReport
    keys: Keys
    ops: list[Operation]


@dataclass
class Workload:
    """A started cluster with its keys planned and preloaded, and its clients (not yet
    started)."""

    cluster: Cluster
    keys: Keys
    clients: Clients


def start_workload(harness: Harness, workdir: Path, recorder: Recorder, rng: random.Random,
                   faked_clock: bool = False) -> Workload:
    """Start the cluster, plan the keys in the slots the rounds move, preload the filler
    and make the clients (one draw from `rng` seeds them)."""
    cluster = Cluster(harness, workdir, faked_clock)
    cluster.start()
    top: dict[int, int] = {}
    for _first, last, shard in cluster.call("SHARDSTORE.SLOTS"):
        top[int(shard)] = max(top.get(int(shard), -1), int(last))
    keys = plan_keys(top)
    preload(cluster, keys)
    return Workload(cluster, keys, Clients(cluster, recorder, keys, random.Random(rng.random())))


def settle(cluster: Cluster, recorder: Recorder, keys: Keys) -> list[CheckResult]:
    """After the faults are healed and the clients stopped: restart any node that is down,
    wait for the cluster and its moves, read every key once more, run `admin check`; the
    checkers' verdicts on the history so far."""
    for node in cluster.nodes.values():
        if not node.alive():
            node.start()
    cluster.until_ok()
    moves = cluster.until_moves_done()
    final_reads(cluster, recorder, keys)
    check = admin_check(cluster)
    ops = [op for op in recorder.history().operations() if op.process != NEMESIS_PROCESS]
    return verdicts(ops, keys, moves, check)


def run_round(seed: int, duration_s: float, workdir: Path) -> Round:
    """Rounds of faults for `duration_s` seconds (at least one), then the checks."""
    rng = random.Random(seed)
    recorder = Recorder()
    with Harness(HOSTS, workdir, seed=seed) as harness:
        work = start_workload(harness, workdir, recorder, rng)
        cluster, keys, clients = work.cluster, work.keys, work.clients
        rounds = Rounds(cluster, recorder, random.Random(rng.random()))
        clients.start()
        end_at = time.monotonic() + duration_s
        try:
            while not rounds.done or time.monotonic() < end_at:
                rounds.run()
            time.sleep(WORK_S)
        finally:
            harness.heal()
            clients.finish()
        results = settle(cluster, recorder, keys)
    history = recorder.history()
    ops = [op for op in history.operations() if op.process != NEMESIS_PROCESS]
    report = finish(DAEMON, seed, history, results, rounds.faults, workdir, rounds.notes)
    return Round(report, keys, ops)


def drill(seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """The drill as tests/faults/drills.py registers it."""
    return run_round(seed, duration_s, workdir).report
