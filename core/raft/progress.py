"""The leader's view of each follower: match/next indexes, flow control, and quorum math.

A follower's Progress is in one of three states (etcd-io/raft's tracker/progress.go):
- PROBE: the leader does not know where the logs match; it sends one AppendRequest at a
  time (`probe_sent` pauses it) and backs off on rejection, using the follower's hint.
- REPLICATE: the logs match up to `match`; the leader streams entries optimistically
  (`next` jumps past what was sent) with at most `max_inflight_msgs` unacknowledged.
- SNAPSHOT: the entries the follower needs are compacted; one snapshot is in flight.
  If no answer comes within `snapshot_timeout` ticks the leader falls back to PROBE.

Invariant: 0 <= match < next.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from enum import Enum

__all__ = ["Inflights", "Progress", "ProgressState", "VoteResult", "quorum_size", "quorum_value",
           "tally_votes"]


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indexes of AppendRequests sent but not yet acknowledged, oldest first."""

    __slots__ = ("capacity", "_items")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._items.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are acknowledged up to `index`."""
        items = self._items
        while items and items[0] <= index:
            items.popleft()

    def free_first_one(self) -> None:
        if self._items:
            self._items.popleft()

    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def reset(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class Progress:
    """Replication state of one follower as seen by the leader (see the module header)."""

    __slots__ = ("match", "next", "state", "probe_sent", "pending_snapshot", "snapshot_elapsed",
                 "recent_active", "inflights")

    def __init__(self, next_index: int, max_inflight: int, recent_active: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        # Heard from within the current check-quorum window (Config.check_quorum).
        self.recent_active = recent_active
        self.inflights = Inflights(max_inflight)

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset_state(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset_state(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_elapsed = 0

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged entries up to `index`. True if `match` advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, probe_from: int) -> bool:
        """The follower rejected `prev_index == rejected`; retry from `probe_from` at most.

        False if the rejection is stale (answers a message sent before the last change).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1  # the caller moves to PROBE
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, probe_from), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """True if the leader must not send this follower another AppendRequest now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (f"Progress({self.state.value}, match={self.match}, next={self.next}, "
                f"inflight={len(self.inflights)}, active={self.recent_active})")


def quorum_size(n_voters: int) -> int:
    """Votes needed among n voters: a strict majority."""
    return n_voters // 2 + 1


def quorum_value(voters: Iterable[int], value_of: Mapping[int, int], default: int = 0) -> int:
    """The largest v such that a quorum of `voters` has value_of[voter] >= v.

    Used for the commit index (values: match indexes) and read-index rounds (values: the
    highest acknowledged round). Voters missing from `value_of` count as `default`.
    """
    values = sorted((value_of.get(v, default) for v in voters), reverse=True)
    if not values:
        return 0
    return values[quorum_size(len(values)) - 1]


class VoteResult(Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def tally_votes(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """An election's outcome so far: WON once a quorum of `voters` granted, LOST once so
    many refused that a quorum can no longer grant; votes of non-voters do not count."""
    members = list(voters)
    yes = sum(1 for v in members if votes.get(v) is True)
    no = sum(1 for v in members if votes.get(v) is False)
    quorum = quorum_size(len(members))
    if yes >= quorum:
        return VoteResult.WON
    if no > len(members) - quorum:
        return VoteResult.LOST
    return VoteResult.PENDING
