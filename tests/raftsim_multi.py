"""Deterministic simulation of several Raft groups hosted by the same simulated nodes.

What a process hosting many groups (core/raft/host.py) adds to tests/raftsim.py: HOSTS
simulated hosts carry 3 to 8 groups, each with its own voters drawn from the hosts, its own
configuration knobs (tests.raftsim.Params of its own seed) and quiescence on or off
(Config.quiesce). They share one fake network and one clock:
- a host crash takes every replica it carries down at once (each may lose a hard state
  written without fsync), a restart brings them all back; a replica added to a group while
  its host is down stays down until the host restarts;
- a partition (two sides) or a cut (one pair of hosts) blocks every group's messages
  between those hosts at once;
- node liveness, as the host does it: on every tick, a quiesced follower whose leader's
  host is down or cut off from it (or whose leader's replica is gone) is woken
  (`Node.wake`), so it campaigns after its election timeout.
Each group is a tests.raftsim.Cluster in group mode (GroupSetup): its own SafetyChecker
checks every Raft safety property after every input of every replica, and its random
events (proposals, reads, snapshots, conf changes, transfers) are its own. The end: heal
everything, and every group must commit and apply a fresh entry on all its voters (its
liveness check); then, once replicas outside their group's configuration are destroyed
(replica GC), every group with quiescence on must quiesce and stay silent.

One `random.Random` per seed drives it all: `RAFT_SEED=<seed> pytest
tests/test_raft_multigroup_sim.py` replays a failure (RAFT_TRACE=1 prints the trace).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, replace

from core.raft import NONE, Message, Role
from tests.raftsim import (
    TRACE_LINES,
    Cluster,
    GroupSetup,
    Params,
    SafetyFail,
    SafetyViolation,
)

__all__ = ["MultiCluster", "MultiParams", "run_multi_schedule"]

HOSTS = 5
TEST_FILE = "tests/test_raft_multigroup_sim.py"
GROUP_SIZES = (1, 3, 3, 3, 5)
QUIET_TICKS = 6  # ticks a quiesced group must stay silent at the end


@dataclass(frozen=True)
class MultiParams:
    """One multi-group schedule, entirely derived from its seed (see `from_seed`)."""

    seed: int
    groups: int
    loss: float
    duplicate: float
    max_delay: int
    ticks: int
    p_crash: float
    p_restart: float
    p_partition: float
    p_cut: float
    p_heal: float
    p_busy: float  # chance per tick that a group runs its random events at all
    quiesce_share: float = 0.6  # chance that a group has Config.quiesce on

    @classmethod
    def from_seed(cls, seed: int, groups: int | None = None,
                  ticks: int | None = None) -> MultiParams:
        rng = random.Random(f"multi-{seed}")
        return cls(
            seed=seed,
            groups=groups if groups is not None else rng.randint(3, 8),
            loss=rng.choice((0.0, 0.02, 0.1)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((0, 1, 2)),
            ticks=ticks if ticks is not None else rng.randint(60, 140),
            p_crash=rng.choice((0.0, 0.01, 0.03)),
            p_restart=rng.choice((0.05, 0.2)),
            p_partition=rng.choice((0.0, 0.01, 0.03)),
            p_cut=rng.choice((0.0, 0.02, 0.05)),
            p_heal=rng.choice((0.05, 0.15)),
            p_busy=rng.choice((0.05, 0.2, 0.5)),
        )


class SharedNetwork:
    """Every group's messages in flight between hosts, with loss, duplicates, delays, a
    two-sided partition and cut host pairs; a message is (group index, Message)."""

    def __init__(self, rng: random.Random, params: MultiParams) -> None:
        self.rng = rng
        self.loss = params.loss
        self.duplicate = params.duplicate
        self.max_delay = params.max_delay
        self._queue: list[tuple[int, int, int, Message]] = []
        self._seq = 0
        self.side: dict[int, int] = {}  # host -> partition side; absent: side 0
        self.cut: set[frozenset[int]] = set()
        self.sent: list[int] = []  # messages sent per group

    def reachable(self, a: int, b: int) -> bool:
        return self.side.get(a, 0) == self.side.get(b, 0) and frozenset((a, b)) not in self.cut

    def send(self, group: int, m: Message, now: int) -> None:
        self.sent[group] += 1
        rng = self.rng
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.loss and rng.random() < self.loss:
                continue
            delay = rng.randint(0, self.max_delay) if self.max_delay else 0
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, group, m))

    def pop_due(self, now: int) -> tuple[int, Message] | None:
        while self._queue and self._queue[0][0] <= now:
            _due, _seq, group, m = heapq.heappop(self._queue)
            if self.reachable(m.frm, m.to):
                return group, m
        return None

    def heal(self) -> None:
        self.side = {}
        self.cut = set()


@dataclass(frozen=True)
class GroupLink:
    """One group's sending end of the shared network (a tests.raftsim.Link)."""

    net: SharedNetwork
    group: int

    def send(self, m: Message, now: int) -> None:
        self.net.send(self.group, m, now)


class MultiCluster:
    """The hosts, groups, network and clock of one schedule; `run()` raises on failure."""

    def __init__(self, params: MultiParams) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.now = 0
        self.trace: deque[tuple[object, ...]] = deque(maxlen=TRACE_LINES)
        self.fail = SafetyFail(params.seed, self.trace, TEST_FILE)
        self.net = SharedNetwork(self.rng, params)
        self.hosts = tuple(range(1, HOSTS + 1))
        self.down: set[int] = set()
        self.groups: list[Cluster] = []
        self.stats = {"host_crashes": 0, "partitions": 0, "cuts": 0, "wakes": 0,
                      "quiesced_ticks": 0}
        for index in range(params.groups):
            self.groups.append(self._make_group(index))

    def _make_group(self, index: int) -> Cluster:
        rng = self.rng
        size = rng.choice(GROUP_SIZES)
        founders = tuple(sorted(rng.sample(self.hosts, size)))
        base = Params.from_seed(self.params.seed * 100 + index, nodes=size)
        params = replace(base, p_crash=0.0, p_restart=0.0, p_partition=0.0,
                         p_propose=rng.choice((0.3, 1.0)), max_voters=min(size + 2, HOSTS))
        self.net.sent.append(0)
        setup = GroupSetup(founders=founders, link=GroupLink(self.net, index),
                           trace=self.trace, fail=self.fail, hosts=self.hosts,
                           quiesce=rng.random() < self.params.quiesce_share,
                           tag=f"g{index}")
        self.trace.append((0, f"g{index}", "voters", founders, "quiesce", setup.quiesce))
        return Cluster(params, setup)

    # -- driving -------------------------------------------------------------------------------

    def set_clock(self, now: int) -> None:
        self.now = now
        for group in self.groups:
            group.now = now

    def deliver_due(self) -> None:
        while (due := self.net.pop_due(self.now)) is not None:
            index, m = due
            group = self.groups[index]
            sim = group.sims.get(m.to)
            if sim is None or sim.node is None:
                continue
            group.stats["delivered"] += 1
            sim.node.step(m)
            group.after_input(sim)

    def tick(self, chaos: bool) -> None:
        self.set_clock(self.now + 1)
        if chaos:
            self.random_events()
        self.deliver_due()
        for group in self.groups:
            for sim, node in group.live():
                node.tick()
                group.after_input(sim)
            leader = group.leader()
            if leader is not None and leader.quiesced:
                self.stats["quiesced_ticks"] += 1
        self.wake_orphans()
        self.deliver_due()

    def wake_orphans(self) -> None:
        """Node liveness: wake a quiesced follower whose leader's host is down or cut off
        from it, or whose leader's replica is gone (the host's rule)."""
        for group in self.groups:
            for sim, node in group.live():
                if not node.quiesced or node.role is Role.LEADER or node.lead == NONE:
                    continue
                lead = group.sims.get(node.lead)
                if (node.lead in self.down or not self.net.reachable(sim.id, node.lead)
                        or lead is None or lead.node is None):
                    self.stats["wakes"] += 1
                    group.event("wake", sim.id, "leader", node.lead)
                    node.wake()
                    group.after_input(sim)

    # -- chaos ---------------------------------------------------------------------------------

    def random_events(self) -> None:
        p, rng = self.params, self.rng
        for group in self.groups:
            if rng.random() < p.p_busy:
                group.group_events()
        self.keep_down_hosts_down()
        if p.p_crash and rng.random() < p.p_crash:
            self.crash_some_host()
        if self.down and rng.random() < p.p_restart:
            self.restart_host(rng.choice(sorted(self.down)))
        if p.p_partition and rng.random() < p.p_partition:
            self.partition()
        if p.p_cut and rng.random() < p.p_cut:
            a, b = rng.sample(self.hosts, 2)
            self.net.cut.add(frozenset((a, b)))
            self.stats["cuts"] += 1
            self.trace.append((self.now, "cut", a, b))
        if (self.net.side or self.net.cut) and rng.random() < p.p_heal:
            self.trace.append((self.now, "heal"))
            self.net.heal()

    def keep_down_hosts_down(self) -> None:
        """A conf change may have created a replica on a host that is down: stop it."""
        for group in self.groups:
            for host in self.down:
                sim = group.sims.get(host)
                if sim is not None and sim.node is not None:
                    sim.crash()

    def crash_some_host(self) -> None:
        """Crash a host, half the time one that leads a group."""
        up = [h for h in self.hosts if h not in self.down]
        leaders = [n.id for g in self.groups if (n := g.leader()) is not None and n.id in up]
        pool = leaders if leaders and self.rng.random() < 0.5 else up
        if pool:
            self.crash_host(self.rng.choice(pool))

    def crash_host(self, host: int) -> None:
        """Every replica on `host` goes down at once (each may lose an unsynced hard
        state)."""
        self.down.add(host)
        self.stats["host_crashes"] += 1
        self.trace.append((self.now, "crash host", host))
        for group in self.groups:
            sim = group.sims.get(host)
            if sim is not None and sim.node is not None:
                group.stats["crashes"] += 1
                sim.crash(lose_unsynced=self.rng.random() < 0.5)

    def restart_host(self, host: int) -> None:
        self.down.discard(host)
        self.trace.append((self.now, "restart host", host))
        for group in self.groups:
            sim = group.sims.get(host)
            if sim is not None and sim.node is None and not sim.decommissioned:
                group.restart(sim)

    def partition(self) -> None:
        ids = list(self.hosts)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) // 2)
        self.net.side = {host: 1 for host in ids[:cut]}
        self.stats["partitions"] += 1
        self.trace.append((self.now, "partition", sorted(ids[:cut]), sorted(ids[cut:])))

    # -- the schedule --------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        """Run the schedule; returns event counts summed over the groups and the hosts'
        own. Raises SafetyViolation (with the seed and the trace)."""
        try:
            for _ in range(self.params.ticks):
                self.tick(chaos=True)
            self.heal_and_check_liveness()
            self.check_quiescence()
        except SafetyViolation:
            raise
        except Exception as exc:  # an InvariantError inside a node, or a harness bug
            self.fail(f"{type(exc).__name__}: {exc}")
        totals = dict(self.stats)
        for group in self.groups:
            for key, value in group.stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def heal_and_check_liveness(self) -> None:
        """Heal everything; every group must then commit and apply a fresh entry on all its
        voters within its own bound (tests.raftsim.Cluster.liveness_bound)."""
        self.trace.append((self.now, "heal all"))
        self.net.heal()
        self.net.loss = 0.0
        self.net.duplicate = 0.0
        shortest = min(g.params.election_tick for g in self.groups)
        self.net.max_delay = min(self.net.max_delay, shortest // 4)
        for host in sorted(self.down):
            self.restart_host(host)
        bounds = [g.liveness_bound() for g in self.groups]
        targets: list[tuple[int, int] | None] = [None] * len(self.groups)
        waiting = set(range(len(self.groups)))
        start = self.now
        while waiting and self.now - start < max(bounds):
            self.tick(chaos=False)
            for index in sorted(waiting):
                targets[index], done = self.groups[index].liveness_probe(targets[index])
                if done:
                    waiting.discard(index)
                elif self.now - start >= bounds[index]:
                    self.groups[index].liveness_failed(bounds[index], targets[index])
        for index in sorted(waiting):
            self.groups[index].liveness_failed(bounds[index], targets[index])

    def check_quiescence(self) -> None:
        """Idle at last: every group with quiescence on must quiesce (its leader and every
        voter) and then send nothing at all for QUIET_TICKS ticks. From here on links
        deliver in order, as one TCP connection between two hosts does: a heartbeat
        overtaken by the quiesce heartbeat sent after it would wake its follower again."""
        in_flight = self.net.max_delay
        self.net.max_delay = 0
        for _ in range(in_flight):
            self.tick(chaos=False)
        self.collect_orphans()
        quiet = [g for g in self.groups if g.setup is not None and g.setup.quiesce]
        bound = 4 * max((g.params.election_tick for g in quiet), default=0) + 20
        for _ in range(bound):
            if all(self.group_quiesced(g) for g in quiet):
                break
            self.tick(chaos=False)
        for group in quiet:
            if not self.group_quiesced(group):
                state = {s.id: (repr(s.node), s.node and s.node.quiesced)
                         for s in group.sims.values()}
                self.fail(f"quiescence: idle group {group.setup and group.setup.tag} did not "
                          f"quiesce within {bound} ticks; replicas {state}")
        before = list(self.net.sent)
        for _ in range(QUIET_TICKS):
            self.tick(chaos=False)
        for index, group in enumerate(self.groups):
            if group in quiet and self.net.sent[index] != before[index]:
                self.fail(f"quiescence: quiesced group g{index} sent "
                          f"{self.net.sent[index] - before[index]} messages while idle")

    def collect_orphans(self) -> None:
        """Replica GC, as a host does it: a running replica that its group's configuration
        (the leader's, committed once liveness is shown) does not hold is destroyed. Such a
        replica (added by a leader whose entry was then overwritten) campaigns forever, and
        each campaign would wake its group."""
        for group in self.groups:
            leader = group.leader()
            if leader is None:
                continue
            for sim, _node in group.live():
                if sim.id not in leader.voters:
                    group.event("replica gc", sim.id)
                    sim.decommissioned = True
                    sim.crash()

    @staticmethod
    def group_quiesced(group: Cluster) -> bool:
        leader = group.leader()
        if leader is None or not leader.quiesced:
            return False
        return all((sim := group.sims.get(v)) is not None and sim.node is not None
                   and sim.node.quiesced for v in leader.voters)


def run_multi_schedule(seed: int, groups: int | None = None,
                       ticks: int | None = None) -> dict[str, int]:
    """Run one multi-group schedule; returns its event counts or raises SafetyViolation."""
    return MultiCluster(MultiParams.from_seed(seed, groups=groups, ticks=ticks)).run()
