"""The leader's half of the Raft state machine: replication, commit, reads, transfer, changes.

`LeaderRole` is a base class of `core.raft.node.Node`; it holds the code that only runs
while the node leads, and `Node` holds the rest (terms, elections, followers, Ready).

Replication (Raft 5.3) with flow control per follower (core/raft/progress.py): appends are
batched up to `max_entries_per_msg` / `max_size_per_msg`, pipelined up to
`max_inflight_msgs`, and a rejection carries a hint that lets the leader skip a whole term
of mismatching entries at once. A follower whose next entry is compacted gets the snapshot.
Proposals only append locally; the AppendRequests go out when the caller next asks for a
Ready, so all proposals made between two Readies travel in one message per follower.

Commit (Raft 5.4.2): the commit index is the highest index a quorum of the current voters
has, and only if that entry is of the current term (earlier entries commit with it).

Quiescence (Config.quiesce; the contract is in core/raft/node.py's header): at a heartbeat
tick, a leader with nothing left to do (`_idle`) sends one heartbeat marked `quiesce` and
stops ticking; every request below wakes it first (`_wake`, provided by Node), and so does
every message but the late answers to its last round (`_is_echo`).
"""

from __future__ import annotations

from core.raft.config import Config
from core.raft.errors import InvariantError, NotLeader, ProposalDropped
from core.raft.membership import Membership
from core.raft.messages import (
    NONE,
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryType,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    TimeoutNow,
)
from core.raft.progress import Progress, ProgressState, quorum_value
from core.raft.raftlog import RaftLog
from core.raft.readindex import ReadIndexTracker
from core.raft.ready import ReadState, Role

__all__ = ["LeaderRole"]


class LeaderRole:
    """Leader-side behaviour; the state it uses is initialised by Node.__init__."""

    id: int
    config: Config
    log: RaftLog
    membership: Membership
    term: int
    lead: int
    role: Role
    election_elapsed: int
    heartbeat_elapsed: int
    _quiesced: bool  # see Node.quiesced
    down_peers: frozenset[int]  # see Node.set_down_peers
    # Leader-only state, reset on every role change (Node._reset):
    progress: dict[int, Progress]  # every voter and this node; invariant: match < next
    lead_transferee: int  # NONE unless a leadership transfer is under way
    term_start_index: int  # index of this leader's EMPTY entry
    read_tracker: ReadIndexTracker
    reads_waiting: list[tuple[bytes, int]]  # (ctx, from) until an entry of the term commits
    read_states: list[ReadState]  # answered reads waiting for the apply index
    bcast_pending: bool  # send appends to everyone at the next Ready
    heartbeat_pending: bool  # send a heartbeat round (read index) at the next Ready

    # Provided by Node:
    def _send(self, m: Message) -> None:
        raise NotImplementedError

    def _become_follower(self, term: int, lead: int) -> None:
        raise NotImplementedError

    def _wake(self, poke_leader: bool) -> None:
        raise NotImplementedError

    # -- public requests (called through Node) -------------------------------------------------

    def propose(self, data: bytes) -> int:
        """Append `data` as a NORMAL entry; returns its index.

        It is committed when a Ready hands it out in `committed_entries` with this index and
        the term of the proposal (another leader may overwrite the index with another entry:
        compare terms). Raises NotLeader, or ProposalDropped during a leadership transfer.
        """
        self._wake(poke_leader=False)
        self._check_accepting()
        return self._append_local(EntryType.NORMAL, bytes(data))

    def propose_conf_change(self, op: ConfChangeOp, node_id: int) -> int:
        """Add or remove one voter (thesis 4.1); returns the index of the change entry.

        The new configuration is in force as soon as the entry is appended. Raises NotLeader;
        ProposalDropped while a previous change is uncommitted or before this leader has
        committed an entry of its term (the fix to the single-server change bug of Ongaro's
        2015 raft-dev post); ValueError for adding a voter, removing a non-voter or the last
        voter. A removed leader keeps leading until the change commits, then steps down.
        """
        self._wake(poke_leader=False)
        self._check_accepting()
        if node_id <= 0:
            raise ValueError("node ids are positive")
        voters = set(self.membership.voters)
        if op is ConfChangeOp.ADD:
            if node_id in voters:
                raise ValueError(f"node {node_id} is already a voter")
            voters.add(node_id)
        else:
            if node_id not in voters:
                raise ValueError(f"node {node_id} is not a voter")
            if len(voters) == 1:
                raise ValueError("cannot remove the last voter")
            voters.discard(node_id)
        if self.log.committed < self.term_start_index:
            raise ProposalDropped("no entry of this leader's term is committed yet")
        if self.membership.last_change_index > self.log.committed:
            raise ProposalDropped("a configuration change is still uncommitted")
        change = ConfChange(ConfChangeOp(op), node_id, tuple(sorted(voters)))
        return self._append_local(EntryType.CONF_CHANGE, change.encode())

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter `to` (thesis 3.10): catch it up, then send TimeoutNow.

        Proposals are refused until the transfer completes or aborts (after election_tick
        ticks). Raises NotLeader; ValueError if `to` is not a voter. A no-op for self.
        """
        self._wake(poke_leader=False)
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if to == self.id:
            return
        if to not in self.membership.voters:
            raise ValueError(f"node {to} is not a voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to `node_id`: stop pipelining to it (probe)."""
        pr = self.progress.get(node_id) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node_id: int, success: bool) -> None:
        """The transport finished sending a snapshot to `node_id` (or failed to)."""
        pr = self.progress.get(node_id) if self.role is Role.LEADER else None
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat answer before probing

    def _check_accepting(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} under way")

    # -- becoming leader and the local log -----------------------------------------------------

    def _start_leading(self) -> None:
        last = self.log.last_index()
        self.progress = {}
        for voter in self.membership.voters | {self.id}:
            self.progress[voter] = Progress(last + 1, self.config.max_inflight_msgs,
                                            recent_active=voter == self.id)
        self.progress[self.id].maybe_update(last)
        self.term_start_index = last + 1
        self._append_local(EntryType.EMPTY, b"")

    def _append_local(self, entry_type: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        entry = Entry(index, self.term, entry_type, data)
        self.log.append([entry])
        if self.membership.on_append([entry]):
            self._sync_progress()
        self.progress[self.id].maybe_update(index)
        self.bcast_pending = True
        self._maybe_commit()
        return index

    def _sync_progress(self) -> None:
        """The configuration changed: track new voters, forget removed ones."""
        voters = self.membership.voters
        for voter in voters:
            if voter not in self.progress:
                self.progress[voter] = Progress(self.log.last_index() + 1,
                                                self.config.max_inflight_msgs, recent_active=True)
        for node in list(self.progress):
            if node not in voters and node != self.id:
                del self.progress[node]
                if node == self.lead_transferee:
                    self.lead_transferee = NONE

    # -- sending -------------------------------------------------------------------------------

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send `to` the entries from its next index (or the snapshot). True if sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        entries = None
        if prev_term is not None:
            entries = self.log.entries_from(pr.next, self.config.max_size_per_msg,
                                            self.config.max_entries_per_msg)
        if prev_term is None or entries is None:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(AppendRequest(frm=self.id, to=to, term=self.term, prev_index=prev_index,
                                 prev_term=prev_term, entries=tuple(entries),
                                 commit=self.log.committed))
        if entries and pr.state is ProgressState.REPLICATE:
            pr.next = entries[-1].index + 1
            pr.inflights.add(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a node that may be down
        snapshot = self.log.snapshot()
        if snapshot.index == 0:
            raise InvariantError(f"entries for {to} are compacted but there is no snapshot")
        pr.become_snapshot(snapshot.index)
        self._send(SnapshotRequest(frm=self.id, to=to, term=self.term, snapshot=snapshot))
        return True

    def _send_timeout_now(self, to: int) -> None:
        self._send(TimeoutNow(frm=self.id, to=to, term=self.term))

    def _bcast_append(self) -> None:
        for node in self.progress:
            if node != self.id and self._send_append(node):
                while self._send_append(node, send_if_empty=False):
                    pass  # pipeline up to the inflight limit

    def _bcast_heartbeat(self, quiesce: bool = False) -> None:
        seq = self.read_tracker.seq
        for node, pr in self.progress.items():
            if node != self.id:
                self._send(HeartbeatRequest(frm=self.id, to=node, term=self.term,
                                            commit=min(pr.match, self.log.committed),
                                            read_seq=seq, quiesce=quiesce))

    def _flush_leader_sends(self) -> None:
        """Send what proposals and reads deferred (called when the caller takes a Ready)."""
        if self.bcast_pending:
            self.bcast_pending = False
            self._bcast_append()
        if self.heartbeat_pending:
            self.heartbeat_pending = False
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # -- ticks ---------------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            self.lead_transferee = NONE  # a transfer not done within a timeout is aborted
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            quiesce = self.config.quiesce and self._idle()
            self._bcast_heartbeat(quiesce=quiesce)
            self._quiesced = quiesce

    def _is_echo(self, m: Message) -> bool:
        """A quiesced leader's view of `m`: a late answer to its heartbeats or appends from
        before it quiesced, carrying nothing new. Dropped, so that it does not wake."""
        if self.role is not Role.LEADER or m.term != self.term:
            return False
        if isinstance(m, HeartbeatResponse):
            return not m.wake
        if isinstance(m, AppendResponse) and not m.reject:
            pr = self.progress.get(m.frm)
            return pr is not None and m.index <= pr.match
        return False

    def _idle(self) -> bool:
        """May this leader quiesce? Every voter holds the whole log (but those the caller
        says are down), all of it is committed and applied (so a quorum holds it), and no
        read, transfer, configuration change or send is pending."""
        log = self.log
        last = log.last_index()
        if (log.committed != last or log.applied != last or log.unstable.entries
                or self.membership.last_change_index > log.applied):
            return False
        if (self.lead_transferee != NONE or self.reads_waiting or self.read_states
                or self.read_tracker.has_pending() or self.heartbeat_pending
                or self.bcast_pending):
            return False
        progress, down = self.progress, self.down_peers
        return all(v in progress and (progress[v].match == last or v in down)
                   for v in self.membership.voters)

    def _quorum_active(self) -> bool:
        """Check quorum: did a quorum of voters talk to us since the last check? Resets."""
        active = {node: int(node == self.id or pr.recent_active)
                  for node, pr in self.progress.items()}
        for node, pr in self.progress.items():
            if node != self.id:
                pr.recent_active = False
        return quorum_value(self.membership.voters, active) == 1

    # -- responses -----------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendResponse):
            self._handle_append_response(m)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m)
        elif isinstance(m, ReadIndexRequest):
            self._leader_read(m.ctx, m.frm)

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            probe_from = m.hint_index
            if m.hint_term > 0:
                probe_from, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decrease_to(m.index, probe_from + 1):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not (pr.maybe_update(m.index)
                or (pr.match == m.index and pr.state is ProgressState.PROBE)):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            if self.role is not Role.LEADER:
                return  # a removed leader stepped down
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if (pr.state is ProgressState.SNAPSHOT
                and pr.snapshot_elapsed >= self.config.election_tick):
            pr.become_probe()  # the snapshot or its answer was lost: start over
        if pr.match < self.log.last_index() or pr.state is ProgressState.PROBE:
            self._send_append(m.frm)
        if m.read_seq:
            self.read_tracker.ack(m.frm, m.read_seq)
            self._release_reads()

    # -- commit --------------------------------------------------------------------------------

    def _maybe_commit(self) -> bool:
        matches = {node: pr.match for node, pr in self.progress.items()}
        index = quorum_value(self.membership.voters, matches)
        if not self.log.maybe_commit(index, self.term):
            return False
        self.bcast_pending = True
        if self.reads_waiting and self.log.committed >= self.term_start_index:
            waiting, self.reads_waiting = self.reads_waiting, []
            for ctx, frm in waiting:
                self._leader_read(ctx, frm)
        if (self.id not in self.membership.voters
                and self.log.committed >= self.membership.last_change_index):
            self._step_down_removed()
        return True

    def _step_down_removed(self) -> None:
        """Our removal is committed (thesis 4.2.2): tell everyone, hand over, step down."""
        self.bcast_pending = False
        self._bcast_append()
        voters = sorted(self.membership.voters)
        best = max(voters, key=lambda v: self.progress[v].match)
        if self.progress[best].match == self.log.last_index():
            self._send_timeout_now(best)
        self._become_follower(self.term, NONE)

    # -- read index ----------------------------------------------------------------------------

    def _leader_read(self, ctx: bytes, frm: int) -> None:
        if self.log.committed < self.term_start_index:
            self.reads_waiting.append((ctx, frm))  # thesis 6.4 step 1
            return
        self.read_tracker.add(self.log.committed, ctx, frm)
        self._release_reads()
        if self.read_tracker.has_pending():
            self.heartbeat_pending = True

    def _release_reads(self) -> None:
        for read in self.read_tracker.confirmed(self.membership.voters, self.id):
            if read.frm == self.id:
                self.read_states.append(ReadState(read.index, read.ctx))
            else:
                self._send(ReadIndexResponse(frm=self.id, to=read.frm, term=self.term,
                                             ctx=read.ctx, index=read.index))
