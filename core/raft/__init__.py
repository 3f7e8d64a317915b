"""core.raft: a sans-I/O Raft state machine shared by the clustered daemons.

Start with `Node` (core/raft/node.py, whose header documents the Ready loop), `Config`, and
a `Storage` (`MemoryStorage` here, `core.raft.disk.DiskStorage` on disk). Messages are
dataclasses with `to_wire()` / `message_from_wire()` for the msgpack transport.
"""

from core.raft.config import Config
from core.raft.errors import (
    CompactedError,
    ConfigError,
    InvariantError,
    NotLeader,
    ProposalDropped,
    RaftError,
    UnavailableError,
    WireError,
)
from core.raft.log import MemoryStorage, Storage
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
    Snapshot,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    message_from_wire,
)
from core.raft.node import Node
from core.raft.ready import ReadState, Ready, Role, SoftState

__all__ = [
    "NONE",
    "AppendRequest",
    "AppendResponse",
    "CompactedError",
    "ConfChange",
    "ConfChangeOp",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "InvariantError",
    "MemoryStorage",
    "Message",
    "Node",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotRequest",
    "SoftState",
    "Storage",
    "TimeoutNow",
    "UnavailableError",
    "VoteRequest",
    "VoteResponse",
    "WireError",
    "message_from_wire",
]
