"""The shardstore consistency drill with the harness's random nemesis instead of a script.

Strategy: the same cluster, keys, clients and checkers as tests/faults/shardstore_drill.py
(3 nodes x 3 shards x 3 replicas; counter clients that never retry an INCR blindly,
register clients; counters between acknowledged and acknowledged-plus-unknown increments,
registers linearizable, every move done and `shardstore admin check` passing). What
differs is who breaks things: the framework's `Nemesis` (tests/faults/drill.py) runs in a
thread for the whole round and draws every fault from the round's seed: SIGKILL and
SIGSTOP (pause) of a node, an isolated node, a split, a bridge, a one-way cut, random
packet loss, and wall-clock steps of a host (libfaketime; the nodes are started on their
hosts' faked clocks; left out, and said so in the notes, where libfaketime is missing).
Up to MAX_FAULTS are held at once (one per family), each for a random NEMESIS_PAUSE_S; half
of the node faults aim at the leader of a random shard. Meanwhile the main thread keeps
slots moving: `shardstore admin reshard` after `shardstore admin reshard`, each waited for
until its moves end, so faults land inside copies, freezes and cut-overs. When the round's
time is spent the nemesis stops, heals everything, the clients stop, and the cluster is
settled and checked as in the scripted drill.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from pathlib import Path

from tests.faults import clock
from tests.faults.drill import ALL_KINDS, FAULT_F, HEAL_F, NEMESIS_PROCESS, DrillReport, Nemesis
from tests.faults.drill import finish as finish_report
from tests.faults.history import Recorder
from tests.faults.hosts import Harness
from tests.faults.node import Node
from tests.faults.shardstore_cluster import HANG_S, Cluster
from tests.faults.shardstore_drill import (
    HOSTS,
    WORK_S,
    Round,
    admin_exit,
    reshard,
    settle,
    start_workload,
)

__all__ = ["DAEMON_NAME", "MAX_FAULTS", "drill", "nemesis_kinds", "run_round"]

log = logging.getLogger("tests.faults.shardstore_nemesis")

DAEMON_NAME = "shardstore-nemesis"  # its name in tests/faults/drills.py
MAX_FAULTS = 2  # faults held at once (at most one per family: network, process, clock)
NEMESIS_PAUSE_S = (1.0, 3.0)  # seconds between two nemesis steps
MOVE = "move"
MOVES_POLL_S = 1.0
DRILL_LOG = "drill.log"  # the nemesis's and the drill's log lines, in the round's workdir


def nemesis_kinds(clock_available: bool | None = None) -> tuple[str, ...]:
    """Every fault kind of the harness; without "clock" where libfaketime is missing."""
    if clock_available is None:
        clock_available = clock.unavailable_reason() is None
    return tuple(k for k in ALL_KINDS if k != "clock" or clock_available)


class Reshards:
    """Slot moves, one `admin reshard` after another, each noted in the history."""

    def __init__(self, cluster: Cluster, recorder: Recorder) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.started: list[tuple[Node, str]] = []

    @property
    def done(self) -> int:
        """How many reshards were started."""
        return len(self.started)

    def run(self, end_at: float) -> None:
        """Start the next reshard, then wait until its admin process has exited and no move
        is under way, or until `end_at` (monotonic s): under faults a move may stall; it
        must end once they are healed, which `finish` and `settle` wait for."""
        time.sleep(WORK_S)  # the clients work between two reshards
        admin, text = reshard(self.cluster, self.done)
        self.started.append((admin, text))
        self.recorder.invoke(NEMESIS_PROCESS, FAULT_F, MOVE, text).ok(text)
        while time.monotonic() < end_at and not self._finished(admin):
            time.sleep(MOVES_POLL_S)

    def _finished(self, admin: Node) -> bool:
        if admin.alive() or not all(m[b"state"] == b"done" for m in self.cluster.moves()):
            return False
        text = self.started[-1][1]
        self.recorder.invoke(NEMESIS_PROCESS, HEAL_F, MOVE, text).ok(text)
        return True

    def finish(self) -> list[str]:
        """Wait for every admin process to end (see `admin_exit`); one line per reshard:
        what it moved and how its admin process ended."""
        return [f"reshard {i}: {text}, admin {admin_exit(admin)}"
                for i, (admin, text) in enumerate(self.started)]


def _prefer(cluster: Cluster, shards: list[int], rng: random.Random) -> Node | None:
    """The leader of a shard drawn at random (None when no node says it leads it now)."""
    return cluster.shard_leader(rng.choice(shards))


def run_round(seed: int, duration_s: float, workdir: Path) -> Round:
    """Reshards under the random nemesis for `duration_s` seconds (at least one reshard),
    then the checks. The nemesis's and the drill's log lines go to DRILL_LOG."""
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / DRILL_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    faults_log = logging.getLogger("tests.faults")
    faults_log.addHandler(handler)
    faults_log.setLevel(logging.INFO)
    try:
        return _round(seed, duration_s, workdir)
    finally:
        faults_log.removeHandler(handler)
        handler.close()


def _round(seed: int, duration_s: float, workdir: Path) -> Round:
    rng = random.Random(seed)
    recorder = Recorder()
    kinds = nemesis_kinds()
    with Harness(HOSTS, workdir, seed=seed) as harness:
        work = start_workload(harness, workdir, recorder, rng, faked_clock="clock" in kinds)
        cluster = work.cluster
        aim, shards = random.Random(rng.random()), sorted(cluster.slot_counts())
        nemesis = Nemesis(harness, random.Random(rng.random()), list(cluster.nodes.values()),
                          kinds, recorder, restart=lambda node: node.start(),
                          prefer=lambda: _prefer(cluster, shards, aim), max_faults=MAX_FAULTS)
        reshards = Reshards(cluster, recorder)
        stop = threading.Event()
        thread = threading.Thread(target=nemesis.run, args=(stop, NEMESIS_PAUSE_S),
                                  name="nemesis", daemon=True)
        work.clients.start()
        thread.start()
        end_at = time.monotonic() + duration_s
        try:
            while not reshards.done or time.monotonic() < end_at:
                reshards.run(end_at)
        finally:
            stop.set()
            thread.join(HANG_S)
            nemesis.heal_all()
            log.info("shardstore nemesis: healed; %d faults, %d reshards", nemesis.faults,
                     reshards.done)
            work.clients.finish()
        notes = [*_nemesis_notes(kinds, nemesis.events), *reshards.finish()]
        results = settle(cluster, recorder, work.keys)
    history = recorder.history()
    ops = [op for op in history.operations() if op.process != NEMESIS_PROCESS]
    report = finish_report(DAEMON_NAME, seed, history, results, nemesis.faults, workdir, notes)
    return Round(report, work.keys, ops)


def _nemesis_notes(kinds: tuple[str, ...], events: list[str]) -> list[str]:
    """The kinds the nemesis drew from, and how many faults of each it injected."""
    drawn = Counter(e.split()[1] for e in events if e.startswith(FAULT_F))
    missing = "" if "clock" in kinds else f" (no clock faults: {clock.unavailable_reason()})"
    counts = ", ".join(f"{k}={n}" for k, n in sorted(drawn.items())) or "none"
    return [f"nemesis kinds: {', '.join(kinds)}{missing}", f"faults by kind: {counts}"]


def drill(seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """The drill as tests/faults/drills.py registers it."""
    return run_round(seed, duration_s, workdir).report
