"""Deterministic simulation of a Raft cluster built from core.raft nodes, checking safety.

Everything is driven by one `random.Random(seed)` and manual ticks, so a seed replays the
exact same run: `RAFT_SEED=<seed> pytest tests/test_raft_sim.py` (add RAFT_TRACE=1 to print
the event trace). The fake network drops, delays (0..max_delay ticks, which also reorders),
duplicates and partitions messages; nodes crash (volatile state lost, MemoryStorage kept:
it stands for the disk; a hard state written without fsync may be lost) and restart, with
volatile or persistent state machines (Config.applied). Meanwhile the schedule proposes,
reads (read index, on leaders and followers), snapshots and compacts, adds and removes
voters (a removed node is shut down once its removal is applied) and transfers leadership.
Each node's Ready is carried out in the documented order: persist, send, apply, advance.

Checked after every input (step or tick) of every node (core.raft.testing.SafetyChecker
holds the global bookkeeping):
- Election Safety: at most one leader per term.
- Log Matching: an (index, term) pair always names the same entry, with the same term
  before it (so equal pairs imply equal prefixes, by induction), checked on every
  persisted entry.
- Leader Completeness: a new leader's log holds every entry known committed before.
- State Machine Safety: no two nodes apply different entries at one index; a snapshot's
  state equals the state the entries up to its index produce; applying is gap-free and
  never goes backwards in a node's life (applied entries are never un-applied).
- Durability: a persisted vote never changes within a term; terms never decrease; a
  committed entry is never overwritten in storage.
- Linearizable reads: a read index is at least the highest commit index observed when
  the read was issued, and the state machine has reached it when the read is answered.
- Node invariants: applied <= committed <= last index (RaftLog.check_invariants).
Liveness: after the random phase everything is healed (crashed members restarted, no
partition, no loss, delays well under the election timeout); within `heal_ticks` plus a
few ticks per entry of backlog, a leader must commit a fresh proposal and every voter must
apply it.

The world the cluster lives in (Params, the state machine, SimNode, Network, SafetyFail) is
in tests/raftsim_world.py; `Cluster` with a `GroupSetup` is one group of the multi-group
simulation (tests/raftsim_multi.py).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

from core.raft import (
    ConfChange,
    ConfChangeOp,
    Config,
    Entry,
    EntryType,
    Node,
    ProposalDropped,
    Ready,
    Role,
    TimeoutNow,
)
from core.raft.testing import SafetyChecker
from tests.raftsim_world import (
    GroupSetup,
    Link,
    Network,
    Params,
    SafetyFail,
    SafetyViolation,
    SimNode,
    StateMachine,
    chain_step,
)

__all__ = ["TRACE_LINES", "Cluster", "GroupSetup", "Params", "SafetyFail", "SafetyViolation",
           "run_schedule"]

TRACE_LINES = 400
BACKLOG_TICKS_PER_ENTRY = 4


class Cluster:
    """The simulated cluster of one schedule; `run()` executes it and raises on failure."""

    def __init__(self, params: Params, setup: GroupSetup | None = None) -> None:
        """A whole single-group cluster, or (with `setup`) one group of a multi-group
        simulation, whose driver then owns the network, the clock and the hosts."""
        self.params = params
        self.setup = setup
        self.rng = random.Random(params.seed)
        self.now = 0
        if setup is None:
            self.trace: deque[tuple[object, ...]] = deque(maxlen=TRACE_LINES)
            self.fail = SafetyFail(params.seed, self.trace)
            self.net = Network(self.rng, params)
            self.link: Link = self.net
            founders = tuple(range(1, params.nodes + 1))
        else:
            self.trace, self.fail, self.link = setup.trace, setup.fail, setup.link
            founders = setup.founders
        self.check = SafetyChecker(self.fail)
        self.sims: dict[int, SimNode] = {}
        for node_id in founders:
            self._add_sim(node_id, founders)
        self.next_id = max(founders) + 1
        self.reads: dict[bytes, int] = {}  # ctx -> highest commit observed when issued
        self.read_seq = 0
        self.proposal_seq = 0
        self.stats = {"proposed": 0, "reads": 0, "elections": 0, "snapshots": 0,
                      "crashes": 0, "conf_changes": 0, "transfers": 0, "delivered": 0,
                      "restores": 0, "reads_answered": 0, "timeout_now": 0}

    def _add_sim(self, node_id: int, peers: tuple[int, ...]) -> SimNode:
        p = self.params
        config = Config(id=node_id, peers=peers, election_tick=p.election_tick,
                        heartbeat_tick=p.heartbeat_tick, pre_vote=p.pre_vote,
                        check_quorum=p.check_quorum, max_entries_per_msg=p.max_entries_per_msg,
                        max_size_per_msg=p.max_size_per_msg, max_inflight_msgs=p.max_inflight,
                        max_committed_size_per_ready=p.max_committed,
                        quiesce=self.setup is not None and self.setup.quiesce)
        sim = SimNode(node_id, config)
        self.sims[node_id] = sim
        sim.start(self.rng.getrandbits(32))
        return sim

    # -- driving -------------------------------------------------------------------------------

    def live(self) -> Iterator[tuple[SimNode, Node]]:
        for sim in list(self.sims.values()):
            if sim.node is not None:
                yield sim, sim.node

    def after_input(self, sim: SimNode) -> None:
        """Checks and the Ready loop after any input to `sim`'s node."""
        node = sim.node
        assert node is not None
        if node.role is Role.LEADER and self.check.leaders.get(node.term) != node.id:
            self.event("leader", node.id, "term", node.term)
            self.stats["elections"] += 1
            self.check.on_leader(node)
        while node.has_ready():
            self.carry_out(sim, node, node.ready())
        node.log.check_invariants()

    def carry_out(self, sim: SimNode, node: Node, rd: Ready) -> None:
        check = self.check
        # 1. persist
        if rd.hard_state is not None:
            check.on_hard_state(sim.id, rd.hard_state.term, rd.hard_state.vote)
        stored_commit = sim.storage.initial_state().commit
        if rd.entries and rd.entries[0].index <= stored_commit:
            for entry in rd.entries:
                if entry.index <= stored_commit and entry.index >= sim.storage.first_index():
                    if sim.storage.term(entry.index) != entry.term:
                        self.fail(f"durability: node {sim.id} overwrites committed entry "
                                  f"{entry.index}")
        sim.storage.persist(rd)
        if rd.must_sync:
            sim.synced_hard_state = sim.storage.initial_state()
        check.on_entries(node, rd.entries)
        sim.recorded_commit = check.on_commit(node, sim.recorded_commit)
        # 2. send
        for m in rd.messages:
            if isinstance(m, TimeoutNow):
                self.stats["timeout_now"] += 1
            self.link.send(m, self.now)
        # 3. apply
        if rd.snapshot is not None:
            self.event("restore", sim.id, rd.snapshot.index)
            self.stats["restores"] += 1
            restored = StateMachine.load(rd.snapshot.data)
            if restored.index != rd.snapshot.index:
                self.fail(f"snapshot: data of node {sim.id} is at {restored.index}, meta "
                          f"{rd.snapshot.index}")
            check.on_restore(sim.id, rd.snapshot.index, restored.chain, sim.sm.index)
            sim.sm = restored
        for entry in rd.committed_entries:
            check.on_apply(sim.id, entry, sim.sm.index, chain_step(sim.sm.chain, entry))
            sim.sm.apply(entry)
            if entry.type is EntryType.CONF_CHANGE and entry.index > 1:
                self.on_conf_applied(entry)
        for rs in rd.read_states:
            self.stats["reads_answered"] += 1
            issued_at = self.reads.pop(rs.ctx, None)
            if issued_at is not None and rs.index < issued_at:
                self.fail(f"read index: node {sim.id} answered read {rs.ctx!r} at {rs.index}, "
                          f"but {issued_at} was committed before it was issued")
            if sim.sm.index < rs.index:
                self.fail(f"read index: node {sim.id} serves read at {rs.index} having "
                          f"applied only {sim.sm.index}")
        # 4. advance
        node.advance(rd)

    def on_conf_applied(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        if change.op is ConfChangeOp.REMOVE:
            sim = self.sims.get(change.node_id)
            if sim is not None and not sim.decommissioned:
                self.event("decommission", sim.id)
                sim.decommissioned = True
                sim.crash()

    def deliver_due(self) -> None:
        while (m := self.net.pop_due(self.now)) is not None:
            sim = self.sims.get(m.to)
            if sim is None or sim.node is None:
                continue
            self.stats["delivered"] += 1
            sim.node.step(m)
            self.after_input(sim)

    def tick(self, chaos: bool) -> None:
        self.now += 1
        if chaos:
            self.random_events()
        self.deliver_due()
        for sim, node in self.live():
            node.tick()
            self.after_input(sim)
        self.deliver_due()

    def leader(self) -> Node | None:
        best: Node | None = None
        for _sim, node in self.live():
            if node.role is Role.LEADER and (best is None or node.term > best.term):
                best = node
        return best

    # -- chaos ---------------------------------------------------------------------------------

    def random_events(self) -> None:
        p, rng = self.params, self.rng
        if rng.random() < p.p_propose:
            self.propose_some()
        if p.p_read and rng.random() < p.p_read:
            self.issue_read()
        if p.p_crash and rng.random() < p.p_crash:
            self.crash_one()
        if rng.random() < p.p_restart:
            self.restart_one()
        if p.p_partition and rng.random() < p.p_partition:
            self.partition()
        if self.net.group and rng.random() < p.p_heal:
            self.event("heal")
            self.net.heal()
        if p.p_snapshot and rng.random() < p.p_snapshot:
            self.snapshot_one()
        if p.p_conf and rng.random() < p.p_conf:
            self.change_membership()
        if p.p_transfer and rng.random() < p.p_transfer:
            self.transfer()

    def group_events(self) -> None:
        """The random events that concern this group alone (a multi-group driver's part)."""
        p, rng = self.params, self.rng
        if rng.random() < p.p_propose:
            self.propose_some()
        if p.p_read and rng.random() < p.p_read:
            self.issue_read()
        if p.p_snapshot and rng.random() < p.p_snapshot:
            self.snapshot_one()
        if p.p_conf and rng.random() < p.p_conf:
            self.change_membership()
        if p.p_transfer and rng.random() < p.p_transfer:
            self.transfer()

    def event(self, *what: object) -> None:
        """Append one line to the trace (tagged with the group in a multi-group run)."""
        if self.setup is None:
            self.trace.append((self.now, *what))
        else:
            self.trace.append((self.now, self.setup.tag, *what))

    def propose_some(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        for _ in range(self.rng.randint(1, 3)):
            self.proposal_seq += 1
            data = b"p%d" % self.proposal_seq * self.rng.choice((1, 1, 8))
            try:
                index = leader.propose(data)
            except ProposalDropped:
                return
            self.stats["proposed"] += 1
            self.event("propose", leader.id, index)
        self.after_input(self.sims[leader.id])

    def issue_read(self) -> None:
        candidates = [sim for sim, _ in self.live()]
        if not candidates:
            return
        sim = self.rng.choice(candidates)
        assert sim.node is not None
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        try:
            sim.node.read_index(ctx)
        except ProposalDropped:
            return
        self.reads[ctx] = self.check.max_commit
        self.stats["reads"] += 1
        self.event("read", sim.id, ctx, self.check.max_commit)
        self.after_input(sim)

    def crash_one(self) -> None:
        candidates = [sim for sim, _ in self.live()]
        leader = self.leader()
        if leader is not None and self.rng.random() < 0.5:
            candidates = [self.sims[leader.id]]  # leader changes with entries half replicated
        if candidates:
            sim = self.rng.choice(candidates)
            self.event("crash", sim.id)
            self.stats["crashes"] += 1
            sim.crash(lose_unsynced=self.rng.random() < 0.5)

    def restart_one(self) -> None:
        down = [s for s in self.sims.values() if s.node is None and not s.decommissioned]
        if down:
            sim = self.rng.choice(down)
            self.restart(sim)

    def restart(self, sim: SimNode) -> None:
        self.event("restart", sim.id)
        sim.start(self.rng.getrandbits(32), self.params.persistent_sm)
        self.after_input(sim)

    def partition(self) -> None:
        ids = sorted(self.sims)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        leader = self.leader()
        if leader is not None and self.rng.random() < 0.5:
            ids.remove(leader.id)  # isolate the leader, alone or with a minority
            ids.insert(0, leader.id)
            cut = self.rng.randint(1, max(1, len(ids) // 2 - 1))
        self.net.group = {node_id: 1 for node_id in ids[:cut]}
        self.event("partition", sorted(ids[:cut]), sorted(ids[cut:]))

    def snapshot_one(self) -> None:
        candidates = [(s, n) for s, n in self.live() if n.applied > s.storage.snapshot().index]
        if not candidates:
            return
        sim, node = self.rng.choice(candidates)
        index = node.applied
        if sim.sm.index != index:
            self.fail(f"state machine of node {sim.id} at {sim.sm.index}, node applied {index}")
        sim.storage.create_snapshot(index, node.voters_at(index), sim.sm.dump())
        keep = self.rng.choice((0, 2, 10))
        sim.storage.compact(max(index - keep, sim.storage.first_index() - 1))
        self.stats["snapshots"] += 1
        self.event("snapshot", sim.id, index)

    def change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        voters = leader.voters
        spare = [s.id for s in self.sims.values()
                 if s.id not in voters and not s.decommissioned]
        if len(voters) > 2 and (len(voters) >= self.params.max_voters or self.rng.random() < 0.5):
            op, node_id = ConfChangeOp.REMOVE, self.rng.choice(sorted(voters))
        elif len(voters) < self.params.max_voters:
            op = ConfChangeOp.ADD
            fresh = self._fresh_id()
            node_id = self.rng.choice(spare) if spare else fresh
            if node_id is None:
                return
        else:
            return
        try:
            leader.propose_conf_change(op, node_id)
        except ProposalDropped:
            return
        self.stats["conf_changes"] += 1
        self.event("conf", leader.id, op.name, node_id)
        if node_id not in self.sims:
            self.next_id = max(self.next_id, node_id + 1)
            self._add_sim(node_id, ())
        self.after_input(self.sims[leader.id])

    def _fresh_id(self) -> int | None:
        """An id for a brand-new member: the next unused one, or in a group an unused host."""
        if self.setup is None:
            return self.next_id
        unused = [h for h in self.setup.hosts if h not in self.sims]
        return unused[0] if unused else None

    def transfer(self) -> None:
        leader = self.leader()
        if leader is None or len(leader.voters) < 2:
            return
        to = self.rng.choice(sorted(leader.voters - {leader.id}))
        self.event("transfer", leader.id, to)
        self.stats["transfers"] += 1
        leader.transfer_leadership(to)
        self.after_input(self.sims[leader.id])

    # -- the schedule --------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        """Run the schedule; returns event counts. Raises SafetyViolation (seed, trace)."""
        try:
            for _ in range(self.params.ticks):
                self.tick(chaos=True)
            self.heal_and_check_liveness()
        except SafetyViolation:
            raise
        except Exception as exc:  # an InvariantError inside a node, or a harness bug
            self.fail(f"{type(exc).__name__}: {exc}")
        return self.stats

    def format_trace(self) -> str:
        return "\n".join(" ".join(str(x) for x in event) for event in self.trace)

    def heal_and_check_liveness(self) -> None:
        self.event("heal all")
        self.net.heal()
        self.net.loss = 0.0
        self.net.duplicate = 0.0
        # Raft needs broadcast time << election timeout; the chaos phase may break that.
        self.net.max_delay = min(self.net.max_delay, self.params.election_tick // 4)
        for sim in self.sims.values():
            if sim.node is None and not sim.decommissioned:
                self.restart(sim)
        target: tuple[int, int] | None = None  # (index, term) of the liveness proposal
        start = self.now
        bound = self.liveness_bound()
        while self.now - start < bound:
            self.tick(chaos=False)
            target, done = self.liveness_probe(target)
            if done:
                return
        self.liveness_failed(bound, target)

    def liveness_bound(self) -> int:
        """Ticks allowed after healing. Lagging followers first have to catch up: allow
        time for the backlog (at worst one entry per round trip with tiny messages and one
        inflight)."""
        lasts = [node.log.last_index() for _sim, node in self.live()]
        backlog = max(lasts) - min(lasts) if lasts else 0
        return self.params.heal_ticks + BACKLOG_TICKS_PER_ENTRY * backlog

    def liveness_probe(self, target: tuple[int, int] | None
                       ) -> tuple[tuple[int, int] | None, bool]:
        """One look after a healed tick: propose the liveness entry (again, if its term's
        leader lost it), and say whether the leader's voters have all applied it."""
        leader = self.leader()
        if leader is None:
            return target, False
        if target is None or (target[1] != leader.term
                              and self.check.committed.get(target[0]) != target[1]):
            try:
                target = (leader.propose(b"liveness"), leader.term)
            except ProposalDropped:
                return target, False
            self.after_input(self.sims[leader.id])
            return target, False
        if self.check.committed.get(target[0]) != target[1]:
            return target, False
        return target, all(self.sims[v].sm.index >= target[0] for v in leader.voters)

    def liveness_failed(self, bound: int, target: tuple[int, int] | None) -> None:
        state = {s.id: repr(s.node) for s in self.sims.values()}
        self.fail(f"liveness: nothing committed and applied everywhere within "
                  f"{bound} ticks of healing; target {target}; nodes {state}")

def run_schedule(seed: int, nodes: int | None = None, ticks: int | None = None) -> dict[str, int]:
    """Run one schedule; returns its event counts or raises SafetyViolation (with the seed)."""
    return Cluster(Params.from_seed(seed, nodes=nodes, ticks=ticks)).run()
