"""A sans-I/O Raft node: messages, ticks and requests in; a Ready of effects out.

Modelled on etcd-io/raft (raft.go + rawnode.go) and on the Raft paper (Ongaro & Ousterhout)
and Ongaro's thesis. The node never touches sockets, clocks, files or the `random` module:
time is `tick()`, randomness a seeded `random.Random` given to the constructor, and storage
a `Storage` the node only reads (core/raft/log.py).

The Ready loop. Whenever `has_ready()` is true the caller takes `rd = node.ready()` and, in
this order:
1. persists `rd.snapshot`, `rd.entries` and `rd.hard_state` (fsync when `rd.must_sync`);
2. sends `rd.messages`;
3. restores its state machine from `rd.snapshot` if any, applies `rd.committed_entries`,
   then answers `rd.read_states`;
4. calls `node.advance(rd)`.
Persist before send: a vote or an AppendResponse promises the state behind it is durable,
and the leader counts its own entries toward commit as soon as it appends them. Example:

    node = Node(Config(id=1, peers=(1, 2, 3)), storage, random.Random(seed))
    while running:                       # on every message, tick or request:
        node.step(msg) / node.tick() / node.propose(b"...")
        while node.has_ready():
            rd = node.ready()
            storage.persist(rd)          # one group commit
            transport.send(rd.messages)
            state_machine.apply(rd.snapshot, rd.committed_entries)
            answer_reads(rd.read_states)
            node.advance(rd)

Roles: FOLLOWER -> (election timeout) PRE_CANDIDATE -> (pre-vote quorum) CANDIDATE ->
(vote quorum) LEADER; any role -> FOLLOWER on a higher term. The leader's half lives in
core/raft/leader.py. Invariants: a node votes at most once per term (vote is persisted
with term); at most one leader per term; applied <= committed <= last index.

Quiescence (Config.quiesce, off by default; CockroachDB's idea), so that a process can host
many idle groups: a quiesced node (`quiesced`) ignores `tick()` entirely (no election
timer, no heartbeats, no check-quorum counting), so the caller may stop ticking it.
- A leader quiesces at a heartbeat tick when every voter's match is its last index, that
  index is committed and applied, and no read index, leadership transfer, unapplied
  configuration change or proposal is pending; its last heartbeats say `quiesce=True`.
- A follower quiesces on such a heartbeat from its leader of the current term if its own
  last index equals its commit index equals the heartbeat's commit (applied may lag), and
  then does not answer it. Otherwise it answers as to any heartbeat, which wakes the
  leader; the leader tries again at its next heartbeat tick.
- Everything else wakes a node: propose, propose_conf_change, read_index, campaign,
  transfer_leadership, and every stepped message but a quiesce heartbeat, except that a
  quiesced leader drops the late answers to its last heartbeats and appends (a plain
  HeartbeatResponse, an AppendResponse acknowledging no more than the known match): over
  a network slower than a heartbeat interval they would otherwise wake it forever. A
  woken leader sends heartbeats at once (waking its followers); a woken follower restarts
  its election timer from 0, and if the message came from another node than its leader
  (a stray vote request, say) it pokes the leader awake (HeartbeatResponse, `wake`).
- `wake()`: the caller's node-level liveness says a quiesced follower's leader is down;
  the follower ticks again and campaigns after its election timeout, pre-vote and check
  quorum as usual. It also pokes the leader, so a mistaken wake costs one heartbeat round.
Leases while quiesced: `_in_lease` is "heard from the leader less than election_tick ticks
ago"; a quiesced node's ticks are frozen at 0 (the quiesce heartbeat just reset them), so it
stays in lease and rejects disruptive (pre-)votes as long as the caller has not called
`wake()`, that is as long as the leader's node is believed alive. Safety never depends on
quiescence: the lease only decides whether a vote request is considered, never whether a
node votes twice or for a shorter log; reads still need a quorum's heartbeat answers; a
quiesced leader cut off from the others keeps its role but can commit nothing and confirm
no read, and steps down on the first message of a higher term. Only liveness depends on the
caller calling `wake()` when a leader's node dies.
"""

from __future__ import annotations

import random

from core.raft.config import Config
from core.raft.errors import ConfigError, InvariantError, NotLeader, RaftError
from core.raft.follower import answer_append, answer_snapshot
from core.raft.leader import LeaderRole
from core.raft.log import Storage
from core.raft.membership import Membership
from core.raft.messages import (
    NONE,
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryType,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from core.raft.progress import VoteResult, tally_votes
from core.raft.raftlog import RaftLog
from core.raft.readindex import ReadIndexTracker
from core.raft.ready import ReadState, Ready, Role, SoftState

__all__ = ["Node"]

_LEADER_MESSAGES = (AppendRequest, HeartbeatRequest, SnapshotRequest)


class Node(LeaderRole):
    """One Raft participant. Not thread-safe; drive it from one task or thread."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        """Restore from `storage` (or bootstrap from `config.peers` if storage is empty).

        Raises ConfigError for a bad config, InvariantError if storage is inconsistent
        (a persisted commit index beyond the persisted log).
        """
        config.validate()
        self.config = config
        self.id = config.id
        self._rng = rng
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        hard_state = storage.initial_state()
        snapshot = storage.snapshot()
        self.membership = Membership(snapshot.index, snapshot.voters)
        self.term = hard_state.term
        self.vote = hard_state.vote
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            self.membership.on_append(storage.entries(first, last + 1))
        # The snapshot may be newer than the compaction point: it is committed and the state
        # machine restored from it reflects it. An applied entry (config.applied) was
        # committed, and persisted before it was applied; the persisted commit index may lag
        # (it is written without fsync when it alone changes).
        if config.applied > self.log.last_index():
            raise ConfigError(f"applied {config.applied} beyond the last index "
                              f"{self.log.last_index()} in storage")
        self.log.commit_to(max(hard_state.commit, snapshot.index, config.applied))
        self.log.applied = max(self.log.applied, snapshot.index, config.applied)
        # What the caller has persisted / been told; a Ready reports differences.
        self.prev_hard_state = HardState(self.term, self.vote, self.log.committed)
        self.prev_soft_state = SoftState()
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_tracker = ReadIndexTracker()
        self.votes: dict[int, bool] = {}
        self.role = Role.FOLLOWER
        self.randomized_election_timeout = config.election_tick
        self._outstanding: Ready | None = None
        self._quiesced = False
        self.down_peers: frozenset[int] = frozenset()  # the caller's node liveness
        self._reset(self.term)
        if last == 0 and snapshot.index == 0 and hard_state == HardState() and config.peers:
            self._bootstrap(config.peers)

    def _bootstrap(self, peers: tuple[int, ...]) -> None:
        """A founding member's first start: the same committed CONF_CHANGE entry at index 1
        on every founder, so a node joining later learns the founding voters from the log."""
        change = ConfChange(ConfChangeOp.ADD, NONE, tuple(sorted(peers)))
        entry = Entry(1, 1, EntryType.CONF_CHANGE, change.encode())
        self.term = 1
        self.log.append([entry])
        self.membership.on_append([entry])
        self.log.commit_to(1)

    # -- introspection -------------------------------------------------------------------------

    @property
    def voters(self) -> frozenset[int]:
        """The configuration in force (the latest in the log, committed or not)."""
        return self.membership.voters

    def voters_at(self, index: int) -> tuple[int, ...]:
        """The configuration at log index `index` (>= the snapshot index), for snapshots."""
        return tuple(sorted(self.membership.voters_at(index)))

    @property
    def committed(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        """The last index handed out in a Ready and acknowledged by `advance`."""
        return self.log.applied

    @property
    def quiesced(self) -> bool:
        """True while this node is quiesced (see the module header): `tick()` does nothing."""
        return self._quiesced

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def __repr__(self) -> str:
        return (f"Node({self.id}, {self.role.value}, term={self.term}, lead={self.lead}, "
                f"commit={self.log.committed}, last={self.log.last_index()})")

    # -- inputs --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick; nothing at all while quiesced."""
        if self._quiesced:
            return
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self._promotable():
            self.election_elapsed = 0
            self._campaign(transfer=False)

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled), as if the timeout fired."""
        self._wake(poke_leader=False)
        if self.role is not Role.LEADER and self._promotable():
            self._campaign(transfer=False)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read (thesis 6.4); `ctx` identifies the request.

        The answer comes back as a ReadState with this ctx in a later Ready; a follower asks
        the leader. No answer comes if leadership changes meanwhile: the caller retries after
        a timeout. Raises NotLeader if no leader is known.
        """
        self._wake(poke_leader=False)
        if self.role is Role.LEADER:
            self._leader_read(bytes(ctx), self.id)
        elif self.lead != NONE:
            self._send(ReadIndexRequest(frm=self.id, to=self.lead, term=self.term,
                                        ctx=bytes(ctx)))
        else:
            raise NotLeader(NONE)

    def step(self, m: Message) -> None:
        """Feed one message from the network. Duplicated, stale and reordered messages are
        fine. Raises ValueError for a message addressed to another node."""
        if m.to != self.id:
            raise ValueError(f"message for node {m.to} stepped into node {self.id}")
        if self._quiesced:
            if self._is_echo(m):
                return
            if not (isinstance(m, HeartbeatRequest) and m.quiesce):
                self._wake(poke_leader=m.frm != self.lead)
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self.term:
            self._answer_lower_term(m)
            return
        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def set_down_peers(self, peers: frozenset[int]) -> None:
        """The caller's node liveness: the nodes it believes down. A leader may quiesce
        without waiting for them to catch up (as long as a quorum holds the whole log), so
        a group with a dead member still goes idle; the caller wakes the leader when one of
        them comes back (`wake`), and the leader then catches it up. Liveness only: safety
        never depends on it."""
        self.down_peers = frozenset(peers)

    def wake(self) -> None:
        """Leave quiescence (a no-op if not quiesced). The caller calls it on a quiesced
        follower when it believes the leader's node down: the follower ticks again and
        campaigns after its election timeout (it pokes the leader too, in case it is alive).
        On a leader: heartbeats resume at once."""
        self._wake(poke_leader=True)

    def _wake(self, poke_leader: bool) -> None:
        if not self._quiesced:
            return
        self._quiesced = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        if self.role is Role.LEADER:
            self.heartbeat_pending = True
        elif poke_leader and self.lead != NONE:
            self._send(HeartbeatResponse(frm=self.id, to=self.lead, term=self.term, wake=True))

    # -- the Ready cycle -----------------------------------------------------------------------

    def has_ready(self) -> bool:
        """True if `ready()` would hand out anything. On a leader this first turns the
        proposals and reads made since the last Ready into messages (batching them)."""
        if self.role is Role.LEADER:
            self._flush_leader_sends()
        log = self.log
        if self.msgs or log.unstable.entries or log.unstable.snapshot is not None:
            return True
        hard, soft = self.prev_hard_state, self.prev_soft_state
        if (self.term != hard.term or self.vote != hard.vote or log.committed != hard.commit
                or self.lead != soft.lead or self.role is not soft.role):
            return True
        if log.committed > log.applied and log.has_next_committed_entries(log.applied):
            return True
        return any(r.index <= log.applied for r in self.read_states)

    def ready(self) -> Ready:
        """The effects accumulated since the last Ready; see the module header for the order.

        Raises RaftError if the previous Ready was not passed to `advance` yet.
        """
        if self._outstanding is not None:
            raise RaftError("advance() the previous Ready before taking another")
        if self.role is Role.LEADER:
            self._flush_leader_sends()
        log = self.log
        soft, hard = self.soft_state(), self.hard_state()
        snapshot = log.unstable.snapshot
        after = max(log.applied, snapshot.index if snapshot is not None else 0)
        committed = log.next_committed_entries(after)
        apply_upto = committed[-1].index if committed else after
        reads = [r for r in self.read_states if r.index <= apply_upto]
        if reads:
            self.read_states = [r for r in self.read_states if r.index > apply_upto]
        prev = self.prev_hard_state
        rd = Ready(
            soft_state=soft if soft != self.prev_soft_state else None,
            hard_state=hard if hard != prev else None,
            entries=tuple(log.unstable.entries),
            snapshot=snapshot,
            messages=tuple(self.msgs),
            committed_entries=tuple(committed),
            read_states=tuple(reads),
            must_sync=bool(log.unstable.entries) or snapshot is not None
            or hard.term != prev.term or hard.vote != prev.vote,
        )
        self.msgs = []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller has persisted, sent and applied `rd` (the last Ready handed out)."""
        if rd is not self._outstanding:
            raise RaftError("advance() takes the Ready last returned by ready()")
        self._outstanding = None
        if rd.soft_state is not None:
            self.prev_soft_state = rd.soft_state
        if rd.hard_state is not None:
            self.prev_hard_state = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
            if rd.snapshot.index > self.log.applied:
                self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    # -- terms ---------------------------------------------------------------------------------

    def _in_lease(self) -> bool:
        """Check quorum's follower lease: heard from a leader within election_tick ticks.
        Quiesced: ticks are frozen, so in lease until woken (see the module header)."""
        return (self.config.check_quorum and self.lead != NONE
                and self.election_elapsed < self.config.election_tick)

    def _accept_higher_term(self, m: Message) -> bool:
        """A message from a higher term. Returns False if it must be ignored."""
        if isinstance(m, VoteRequest):
            if not m.transfer and self._in_lease():
                return False  # thesis 4.2.3: do not let a disruptive server depose the leader
            if m.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(m, VoteResponse) and m.pre_vote and not m.reject:
            return True  # the term we would campaign in; counted by _step_candidate
        self._become_follower(m.term, m.frm if isinstance(m, _LEADER_MESSAGES) else NONE)
        return True

    def _answer_lower_term(self, m: Message) -> None:
        if isinstance(m, AppendRequest | HeartbeatRequest) and (
                self.config.check_quorum or self.config.pre_vote):
            # A stale leader cut off from us: tell it our term so it steps down (without
            # this, a node whose term rose while partitioned could never rejoin).
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, index=0))
        elif isinstance(m, VoteRequest):
            # Raft fig. 2: reject with our term so the candidate catches up. (etcd ignores a
            # stale vote request; then a candidate whose voters never write to it can stay a
            # term behind a rival candidate forever.)
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, reject=True,
                                    pre_vote=m.pre_vote))

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (self.vote == m.frm
                    or (self.vote == NONE and self.lead == NONE)
                    or (m.pre_vote and m.term > self.term))
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(frm=self.id, to=m.frm, term=m.term, reject=False,
                                    pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.vote = m.frm
                self.election_elapsed = 0
        else:
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, reject=True,
                                    pre_vote=m.pre_vote))

    # -- roles ---------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._quiesced = False
        self.randomized_election_timeout = self._rng.randrange(self.config.election_tick,
                                                               2 * self.config.election_tick)
        self.votes = {}
        self.progress = {}
        self.lead_transferee = NONE
        self.term_start_index = 0
        self.read_tracker.reset()
        self.reads_waiting = []
        self.bcast_pending = False
        self.heartbeat_pending = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # No term change and no vote: a pre-vote round only asks "would you vote for me?".
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise InvariantError(f"{self.role.value} cannot become leader")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._start_leading()

    def _promotable(self) -> bool:
        return self.id in self.membership.voters and self.log.unstable.snapshot is None

    # -- elections (Raft 5.2, thesis 9.6 pre-vote, 3.10 transfer) --------------------------------

    def _campaign(self, transfer: bool) -> None:
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, pre_vote: bool, transfer: bool) -> None:
        if self._poll(self.id, True) is VoteResult.WON:
            self._won(transfer)
            return
        vote_term = self.term + 1 if pre_vote else self.term
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in sorted(self.membership.voters):
            if voter != self.id:
                self._send(VoteRequest(frm=self.id, to=voter, term=vote_term,
                                       last_index=last_index, last_term=last_term,
                                       pre_vote=pre_vote, transfer=transfer))

    def _won(self, transfer: bool) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)
        else:
            self._become_leader()

    def _poll(self, voter: int, granted: bool) -> VoteResult:
        self.votes.setdefault(voter, granted)  # the first answer of each voter counts
        return tally_votes(self.membership.voters, self.votes)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, _LEADER_MESSAGES):
            # A leader exists in our term (for a pre-candidate: in its current term).
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
        elif isinstance(m, VoteResponse) and m.pre_vote == (self.role is Role.PRE_CANDIDATE):
            result = self._poll(m.frm, not m.reject)
            if result is VoteResult.WON:
                self._won(transfer=False)
            elif result is VoteResult.LOST:
                self._become_follower(self.term, NONE)

    # -- follower ------------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, _LEADER_MESSAGES):
            self.election_elapsed = 0
            self.lead = m.frm
            if isinstance(m, AppendRequest):
                self._send(answer_append(self.log, self.membership, self.id, self.term, m))
            elif isinstance(m, HeartbeatRequest):
                self._handle_heartbeat(m)
            else:
                self._send(answer_snapshot(self.log, self.membership, self.id, self.term, m))
        elif isinstance(m, TimeoutNow):
            if self._promotable():
                self._campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.read_states.append(ReadState(m.index, m.ctx))

    def _handle_heartbeat(self, m: HeartbeatRequest) -> None:
        log = self.log
        log.commit_to(m.commit)
        if (m.quiesce and self.config.quiesce
                and log.last_index() == log.committed == m.commit):
            self._quiesced = True  # caught up with our leader: stop ticking, do not answer
            return
        self._wake(poke_leader=False)
        self._send(HeartbeatResponse(frm=self.id, to=m.frm, term=self.term,
                                     read_seq=m.read_seq))

    def _send(self, m: Message) -> None:
        self.msgs.append(m)
