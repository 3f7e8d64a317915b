"""The one error hierarchy of core.raft: local misuse versus remote misbehaviour.

- `ConfigError`: the caller built a bad `Config` (raised by `Config.validate`).
- `ProposalDropped` / `NotLeader`: a request this node cannot take now (not the leader, a
  leadership transfer or a configuration change is under way). Retry elsewhere or later.
- `CompactedError` / `UnavailableError`: raised by a `Storage` for an index it no longer has
  (compacted into a snapshot) or does not have yet; the node handles both.
- `WireError`: a message from the network that does not decode. Drop it (and the peer).
- `InvariantError`: Raft's own guarantees were broken (a bug, or storage lost acknowledged
  data). The node must not continue; the caller should crash the process.
"""

from __future__ import annotations

__all__ = [
    "CompactedError",
    "ConfigError",
    "InvariantError",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "UnavailableError",
    "WireError",
]


class RaftError(Exception):
    """Base class of every error core.raft raises on purpose."""


class ConfigError(RaftError, ValueError):
    """A `Config` field is out of range; the message names the field."""


class ProposalDropped(RaftError):
    """The node cannot accept this request now; nothing was appended or sent."""


class NotLeader(ProposalDropped):
    """Only the leader takes this request. `leader` is the known leader's id, or 0."""

    def __init__(self, leader: int) -> None:
        self.leader = leader
        hint = f"leader is {leader}" if leader else "no leader known"
        super().__init__(f"not the leader ({hint})")


class CompactedError(RaftError):
    """The requested index was compacted away (it lies at or before the snapshot)."""


class UnavailableError(RaftError):
    """The requested index is beyond the last index in storage."""


class WireError(RaftError, ValueError):
    """A wire dict that is not a valid message."""


class InvariantError(RaftError):
    """A Raft safety invariant was violated; the node's state can no longer be trusted."""
