"""Read-index bookkeeping of a leader (thesis 6.4, etcd-io/raft's read_only.go).

A read request gets the leader's commit index as its read index and the next round number
`seq`. Heartbeats carry the latest round number; a follower's answer to a heartbeat with
round r confirms that this node was still the leader after every request of round <= r
arrived. Once a quorum has confirmed round r, every pending request with seq <= r is
answered with its read index. Rounds are per leadership term: `reset` on any role change.

Invariants: pending requests are in increasing seq order; `seq` is the highest round given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from core.raft.progress import quorum_value

__all__ = ["PendingRead", "ReadIndexTracker"]


@dataclass(frozen=True, slots=True)
class PendingRead:
    seq: int
    index: int  # the leader's commit index when the request arrived
    ctx: bytes
    frm: int  # the node that asked (the leader itself, or a follower)


class ReadIndexTracker:
    __slots__ = ("seq", "_pending", "_acked")

    def __init__(self) -> None:
        self.seq = 0
        self._pending: deque[PendingRead] = deque()
        self._acked: dict[int, int] = {}

    def add(self, index: int, ctx: bytes, frm: int) -> int:
        """Register a request; returns its round number (to put in the next heartbeats)."""
        self.seq += 1
        self._pending.append(PendingRead(self.seq, index, ctx, frm))
        return self.seq

    def ack(self, node: int, seq: int) -> None:
        if seq > self._acked.get(node, 0):
            self._acked[node] = seq

    def confirmed(self, voters: Iterable[int], self_id: int) -> list[PendingRead]:
        """Pop and return the requests a quorum of `voters` has confirmed."""
        if not self._pending:
            return []
        acked = dict(self._acked)
        acked[self_id] = self.seq  # the leader confirms its own leadership
        round_ = quorum_value(voters, acked)
        out: list[PendingRead] = []
        while self._pending and self._pending[0].seq <= round_:
            out.append(self._pending.popleft())
        return out

    def has_pending(self) -> bool:
        return bool(self._pending)

    def reset(self) -> None:
        self.seq = 0
        self._pending.clear()
        self._acked.clear()
