"""A follower's answers to a leader's AppendRequest and SnapshotRequest (Raft 5.3, 7).

Pure functions over the follower's log and membership: each applies what the request
carries and returns the AppendResponse to send; `core.raft.node.Node` calls them and
sends the answer. Fast backtracking: a rejection hints at the last index that may match
and the follower's term there, so the leader can skip a whole term at once.
"""

from __future__ import annotations

from core.raft.membership import Membership
from core.raft.messages import AppendRequest, AppendResponse, SnapshotRequest
from core.raft.raftlog import RaftLog

__all__ = ["answer_append", "answer_snapshot"]


def answer_append(log: RaftLog, membership: Membership, self_id: int, term: int,
                  m: AppendRequest) -> AppendResponse:
    """Append `m`'s entries if the log matches at `m.prev_index` (learning the new
    configuration they carry); the answer accepts with the last matching index or rejects
    with a hint."""
    if m.prev_index < log.committed:
        return AppendResponse(frm=self_id, to=m.frm, term=term, index=log.committed)
    result = log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
    if result is not None:
        last_new, appended = result
        if appended:
            membership.on_append(appended)
        return AppendResponse(frm=self_id, to=m.frm, term=term, index=last_new)
    hint_index, hint_term = log.find_conflict_by_term(min(m.prev_index, log.last_index()),
                                                      m.prev_term)
    return AppendResponse(frm=self_id, to=m.frm, term=term, index=m.prev_index,
                          reject=True, hint_index=hint_index, hint_term=hint_term)


def answer_snapshot(log: RaftLog, membership: Membership, self_id: int, term: int,
                    m: SnapshotRequest) -> AppendResponse:
    """Install `m`'s snapshot unless the log already covers it; the answer carries the
    index the follower now matches."""
    snapshot = m.snapshot
    if snapshot.index <= log.committed:
        index = log.committed
    elif log.match_term(snapshot.index, snapshot.term):
        log.commit_to(snapshot.index)  # we have the entries: just learn they are committed
        index = log.committed
    else:
        log.restore(snapshot)
        membership.reset(snapshot.index, snapshot.voters)
        index = log.last_index()
    return AppendResponse(frm=self_id, to=m.frm, term=term, index=index)
