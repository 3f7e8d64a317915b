"""Every knob and limit of a Raft node, in one validated place.

Time is logical: one `Node.tick()` is one tick; the caller decides how long a tick lasts
(the scheduler daemon uses 100 ms). Sizes are in bytes as counted by `Entry.size()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.raft.errors import ConfigError

__all__ = ["Config"]

DEFAULT_ELECTION_TICK = 10
DEFAULT_HEARTBEAT_TICK = 1
DEFAULT_MAX_SIZE_PER_MSG = 1024 * 1024
DEFAULT_MAX_ENTRIES_PER_MSG = 1024
DEFAULT_MAX_INFLIGHT_MSGS = 256
DEFAULT_MAX_COMMITTED_SIZE_PER_READY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    """Configuration of one node. Call `validate()` (the Node does) before use.

    id: this node's id, a positive int, never reused by another node.
    peers: the founding voters, this node included, given identically to every founding
        member on every start; empty for a node that joins later (it learns the
        configuration from the leader). Ignored once storage holds any state.
    election_tick: ticks without hearing from a leader before a follower campaigns; each
        node draws its timeout in [election_tick, 2 * election_tick) from its rng. With
        check_quorum it is also the leader lease: a leader steps down after this many ticks
        without hearing from a quorum, and followers that heard from a leader within it
        ignore vote requests. Must exceed heartbeat_tick (about 10x is customary).
    heartbeat_tick: ticks between leader heartbeats.
    max_size_per_msg / max_entries_per_msg: limits of one AppendRequest (a single entry
        larger than max_size_per_msg is still sent, alone).
    max_inflight_msgs: AppendRequests a leader pipelines to one follower before it waits
        for acknowledgements.
    max_committed_size_per_ready: bytes of committed entries handed out in one Ready.
    pre_vote: run a pre-vote round before incrementing the term (thesis 9.6), so a node
        rejoining from a partition does not disrupt the cluster.
    check_quorum: leader steps down without a quorum's contact; followers keep a lease.
    applied: the index the application's state machine already reflects on restart (a
        persistent state machine); 0 means "rebuild from the snapshot".
    quiesce: an idle group stops ticking and sending heartbeats (core/raft/node.py,
        "Quiescence"); the caller must then call `Node.wake()` on a quiesced follower
        whose leader's node it believes down. Off: the node ticks forever, as before.
    """

    id: int
    peers: tuple[int, ...] = ()
    election_tick: int = DEFAULT_ELECTION_TICK
    heartbeat_tick: int = DEFAULT_HEARTBEAT_TICK
    max_size_per_msg: int = DEFAULT_MAX_SIZE_PER_MSG
    max_entries_per_msg: int = DEFAULT_MAX_ENTRIES_PER_MSG
    max_inflight_msgs: int = DEFAULT_MAX_INFLIGHT_MSGS
    max_committed_size_per_ready: int = DEFAULT_MAX_COMMITTED_SIZE_PER_READY
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0
    quiesce: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        if type(self.id) is not int or self.id <= 0:
            raise ConfigError(f"id must be a positive int, got {self.id!r}")
        if any(type(p) is not int or p <= 0 for p in self.peers):
            raise ConfigError(f"peers must be positive ints, got {self.peers!r}")
        if len(set(self.peers)) != len(self.peers):
            raise ConfigError(f"peers has duplicates: {self.peers!r}")
        if self.peers and self.id not in self.peers:
            raise ConfigError(f"peers {self.peers!r} must include this node's id {self.id}")
        if self.heartbeat_tick < 1:
            raise ConfigError("heartbeat_tick must be >= 1")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        for name in ("max_size_per_msg", "max_entries_per_msg", "max_inflight_msgs",
                     "max_committed_size_per_ready"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.applied < 0:
            raise ConfigError("applied must be >= 0")
