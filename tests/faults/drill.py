"""The drill framework: a nemesis that injects seeded faults, and the report every drill returns.

Strategy, after Jepsen's nemesis: one `Nemesis` per drill holds at most `max_faults` faults
at a time (one by default), at most one of each family (network, process, clock: one
network heal lifts every cut). Each `step()` either injects the next fault or ends the
oldest held one (always when the limit is reached or no family is free, else with
HEAL_PROBABILITY), so the time between two steps is how long faults are held and how long
the system runs healed. What to break is drawn from a seeded `random.Random`, so a seed
names the same sequence of faults (their timing, and hence the interleaving with clients,
stays the machine's); `prefer()` (the current leader, say) makes half of the faults aim at
one node. Every fault and every heal is logged and, with a recorder, written into the
history under process `NEMESIS_PROCESS` (f `FAULT_F` or `HEAL_F`, key the kind, value a
description), so a report shows them in time order between the clients' operations;
checkers that take every operation of a history (check_linearizable) must be given the
clients' fs.

A drill is a function `drill(seed, duration_s, workdir) -> DrillReport` registered in
tests/faults/drills.py: it starts its daemon's nodes in harness hosts, runs clients that
record every operation, runs `Nemesis.run` in a thread meanwhile, heals with `heal_all()`,
lets the system settle, checks the history and returns a `DrillReport`; on failure
`finish()` leaves the history and a readable report in the workdir.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.history import COMPLETIONS, History, Operation, Recorder
from tests.faults.hosts import Harness
from tests.faults.node import Host, Node
from tests.faults.report import CheckResult, write_report

__all__ = [
    "ALL_KINDS", "FAULT_F", "HEAL_F", "HISTORY_FILE", "NEMESIS_PROCESS", "NETWORK_KINDS",
    "PROCESS_KINDS", "REPORT_FILE", "DrillReport", "Nemesis", "finish", "outcome_counts",
]

log = logging.getLogger("tests.faults.drill")

NETWORK_KINDS = ("isolate", "split", "bridge", "one_way", "loss")
PROCESS_KINDS = ("kill", "pause")
ALL_KINDS = (*NETWORK_KINDS, *PROCESS_KINDS, "clock")
NEMESIS_PROCESS = "nemesis"
FAULT_F = "fault"
HEAL_F = "heal"
LOSS_RANGE = (0.2, 0.6)  # the probability of a random-loss fault is drawn from this range
CLOCK_JUMP_RANGE_S = (5.0, 300.0)  # a clock fault steps the wall clock by this much, +/-
HEAL_PROBABILITY = 0.5  # with faults held but room for more, a step heals this often
PREFER_PROBABILITY = 0.5  # how often a fault aims at the preferred node, when there is one
DEFAULT_PAUSE_S = (1.0, 3.0)  # seconds between two nemesis steps, drawn uniformly
HISTORY_FILE = "history.jsonl"
REPORT_FILE = "report.txt"

ERR_NO_NODES = "a nemesis needs at least one node"
ERR_NO_KINDS = "a nemesis needs at least one kind of fault"
ERR_UNKNOWN_KIND = "unknown fault kind {kind!r}; kinds are {kinds}"


@dataclass
class DrillReport:
    """What one drill round found.

    `operations` counts client operations (nemesis entries excluded), `faults` the faults
    injected; `results` holds one CheckResult per checker; `log_dir` is where the nodes'
    logs (and, on failure, the history and report) are. A result that is not a definite
    pass (False or "unknown") counts as a violation.
    """

    daemon: str
    seed: int
    operations: int
    faults: int
    results: list[CheckResult]
    log_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        """How many checkers did not pass."""
        return sum(1 for result in self.results if not result.passed)

    @property
    def passed(self) -> bool:
        """True when every checker passed."""
        return self.violations == 0

    def report(self) -> str:
        """A readable account: the round, then each checker's report (failures first)."""
        head = (f"drill {self.daemon} seed={self.seed}: {self.operations} operations, "
                f"{self.faults} faults, {self.violations} violations; logs in {self.log_dir}")
        ordered = sorted(self.results, key=lambda result: result.passed)
        return "\n\n".join([head, *self.notes, *(result.report() for result in ordered)])


def finish(daemon: str, seed: int, history: History, results: list[CheckResult],
           faults: int, workdir: Path, notes: Sequence[str] = ()) -> DrillReport:
    """The round's DrillReport; on failure the history (HISTORY_FILE) and a readable report
    (REPORT_FILE, the failing checkers' windows first) are written into `workdir`."""
    ops = [op for op in history.operations() if op.process != NEMESIS_PROCESS]
    notes = [*notes, outcome_counts(ops)]
    report = DrillReport(daemon, seed, len(ops), faults, results, workdir, notes)
    if not report.passed:
        workdir.mkdir(parents=True, exist_ok=True)
        history.write_jsonl(workdir / HISTORY_FILE)
        write_report(workdir / REPORT_FILE, results, history)
    return report


def outcome_counts(ops: Sequence[Operation]) -> str:
    """One line counting the operations by f and status: `read ok=9 fail=2; write ok=4 ...`."""
    counts: dict[str, Counter[str]] = {}
    for op in ops:
        counts.setdefault(op.f, Counter())[op.status] += 1
    parts = [f + " " + " ".join(f"{status}={tally[status]}" for status in COMPLETIONS)
             for f, tally in sorted(counts.items())]
    return "outcomes: " + ("; ".join(parts) or "no operations")


@dataclass
class _Fault:
    kind: str
    description: str
    undo: Callable[[], None]


class Nemesis:
    """Injects seeded faults on `nodes` through `harness`, a few at a time (module header).

    `kinds`: the faults to draw from (ALL_KINDS by default); `recorder`: where faults and
    heals are written as process NEMESIS_PROCESS; `restart(node)`: how a killed node comes
    back (node.restart() by default); `max_faults`: how many may be held at once (see the
    module header); `prefer()`: a node to aim at (the current leader, say; None when
    unknown), made a fault's first target with probability PREFER_PROBABILITY. `faults`
    counts the faults injected so far; `events` lists every injection and heal as text, in
    order.
    """

    def __init__(self, harness: Harness, rng: random.Random, nodes: list[Node],
                 kinds: Sequence[str] = ALL_KINDS, recorder: Recorder | None = None,
                 restart: Callable[[Node], object] | None = None,
                 prefer: Callable[[], Node | None] | None = None, max_faults: int = 1) -> None:
        if not nodes or not kinds:
            raise ValueError(ERR_NO_NODES if not nodes else ERR_NO_KINDS)
        for kind in kinds:
            if kind not in ALL_KINDS:
                raise ValueError(ERR_UNKNOWN_KIND.format(kind=kind, kinds=ALL_KINDS))
        self.harness = harness
        self.rng = rng
        self.nodes = list(nodes)
        self.hosts = list({node.host.name: node.host for node in nodes}.values())
        self.kinds = tuple(kinds)
        self.recorder = recorder
        self.restart = restart
        self.prefer = prefer
        self.max_faults = max_faults
        self.faults = 0
        self.events: list[str] = []
        self._held: list[_Fault] = []  # oldest first
        self._aimed: str | None = None  # the preferred host the fault being made aims at
        self._lock = threading.Lock()

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> str:
        """Inject the next fault or heal the oldest held one; what was done (module header)."""
        with self._lock:
            kinds = self._free_kinds()
            if self._held and (len(self._held) >= self.max_faults or not kinds
                               or self.rng.random() < HEAL_PROBABILITY):
                return self._heal_oldest()
            self._aimed = None
            fault = self._inject(self.rng.choice(kinds))
            if self._aimed is not None:
                fault.description += f" (aimed at {self._aimed})"
            self._held.append(fault)
            self.faults += 1
            self._note(FAULT_F, fault.kind, fault.description)
            return f"{FAULT_F} {fault.description}"

    def run(self, stop: threading.Event, pause_s: tuple[float, float] = DEFAULT_PAUSE_S) -> None:
        """Thread body: step, wait a random time in `pause_s`, until `stop` is set.

        A step that raises is logged and the loop goes on (the fault stays held, so the
        next step retries its heal); the caller ends with `heal_all()`.
        """
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a failed fault must not end the drill
                log.exception("nemesis step failed")
            if stop.wait(self.rng.uniform(*pause_s)):
                break

    def heal_all(self) -> None:
        """End every fault: the held one, the network, paused, killed and clock-shifted nodes."""
        with self._lock:
            while self._held:
                try:
                    self._heal_oldest()
                except Exception:  # noqa: BLE001 - the sweep below still runs
                    log.exception("healing %s failed", self._held.pop(0).description)
            self.harness.heal()
            for node in self.nodes:
                if not node.alive():
                    self._revive(node)
                else:
                    node.resume()
            if "clock" in self.kinds:
                for host in self.hosts:
                    self.harness.clock(host).set(0.0)

    def _free_kinds(self) -> tuple[str, ...]:
        """The kinds that may be injected now: none of a family already held."""
        held = {fault.kind for fault in self._held}
        busy = {family for family in (NETWORK_KINDS, PROCESS_KINDS, ("clock",))
                if held & set(family)}
        return tuple(k for k in self.kinds if not any(k in family for family in busy))

    def _heal_oldest(self) -> str:
        fault = self._held[0]
        fault.undo()
        self._held.pop(0)
        self._note(HEAL_F, fault.kind, fault.description)
        return f"{HEAL_F} {fault.description}"

    def _note(self, f: str, kind: str, description: str) -> None:
        text = f"{f} {description}"
        self.events.append(text)
        log.info("nemesis: %s", text)
        if self.recorder is not None:
            self.recorder.invoke(NEMESIS_PROCESS, f, kind, description).ok(description)

    # -- the faults ----------------------------------------------------------------------------

    def _inject(self, kind: str) -> _Fault:
        inject = {
            "isolate": self._isolate, "split": self._split, "bridge": self._bridge,
            "one_way": self._one_way, "loss": self._loss, "kill": self._kill,
            "pause": self._pause, "clock": self._clock,
        }[kind]
        return inject()

    def _network(self, kind: str, description: str) -> _Fault:
        return _Fault(kind, description, self.harness.heal)

    def _isolate(self) -> _Fault:
        host = self._hosts()[0]
        self.harness.isolate(host)
        return self._network("isolate", f"isolate {host.name}")

    def _split(self) -> _Fault:
        if len(self.hosts) < 2:
            return self._isolate()
        hosts = self._hosts()
        size = self.rng.randint(1, max(1, (len(hosts) - 1) // 2))
        minority, majority = hosts[:size], hosts[size:]
        self.harness.split(minority, majority)
        return self._network("split", f"split {_names(minority)} | {_names(majority)}")

    def _bridge(self) -> _Fault:
        if len(self.hosts) < 3:
            return self._isolate()
        hub, *rest = self._hosts()
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        self.harness.bridge(hub, left, right)
        return self._network("bridge", f"bridge {_names(left)} <- {hub.name} -> {_names(right)}")

    def _one_way(self) -> _Fault:
        if len(self.hosts) < 2:
            return self._isolate()
        src, dst = self._hosts()[:2]
        self.harness.one_way(src, dst)
        return self._network("one_way", f"one_way {src.name} -/-> {dst.name}")

    def _loss(self) -> _Fault:
        host = self._hosts()[0]
        probability = round(self.rng.uniform(*LOSS_RANGE), 2)
        self.harness.random_loss(host, probability)
        return self._network("loss", f"loss {probability:.2f} at {host.name}")

    def _kill(self) -> _Fault:
        node = self._node()
        name = _node_name(node)
        node.kill()
        return _Fault("kill", f"kill {name}", lambda: self._revive(node))

    def _pause(self) -> _Fault:
        node = self._node()
        node.pause()
        return _Fault("pause", f"pause {_node_name(node)}", node.resume)

    def _clock(self) -> _Fault:
        host = self._hosts()[0]
        delta = round(self.rng.choice((-1, 1)) * self.rng.uniform(*CLOCK_JUMP_RANGE_S), 3)
        clock = self.harness.clock(host)
        clock.jump(delta)
        return _Fault("clock", f"clock {host.name} {delta:+.3f}s", lambda: clock.set(0.0))

    def _node(self) -> Node:
        """A node to fault: the preferred one (sometimes), else one drawn at random."""
        preferred = self._preferred()
        return preferred if preferred is not None else self.rng.choice(self.nodes)

    def _hosts(self) -> list[Host]:
        """Every host in a random order, the preferred node's first (sometimes)."""
        hosts = self.rng.sample(self.hosts, len(self.hosts))
        preferred = self._preferred()
        if preferred is not None and preferred.host in hosts:
            hosts.remove(preferred.host)
            hosts.insert(0, preferred.host)
        return hosts

    def _preferred(self) -> Node | None:
        if self.prefer is None or self.rng.random() >= PREFER_PROBABILITY:
            return None
        try:
            preferred = self.prefer()
        except Exception:  # noqa: BLE001 - no preference is a fine answer
            log.exception("the nemesis's prefer() failed")
            return None
        if preferred is not None:
            self._aimed = preferred.host.name
        return preferred

    def _revive(self, node: Node) -> None:
        if self.restart is not None:
            self.restart(node)
        else:
            node.restart()


def _names(hosts: Sequence[Host]) -> str:
    return ",".join(host.name for host in hosts)


def _node_name(node: Node) -> str:
    return f"{node.host.name}/pid{node.pid}"
