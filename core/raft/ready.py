"""What a node hands its caller: `Ready` batches of effects, soft state and read answers.

The caller carries out one Ready in this order (see core/raft/node.py for why):
1. persist `snapshot`, `entries` (dropping stored entries from `entries[0].index` on) and
   `hard_state`, durably (fsync), as one group commit;
2. send `messages`;
3. restore the state machine from `snapshot` if there is one, then apply
   `committed_entries` in order, then answer `read_states`;
4. call `Node.advance(ready)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from core.raft.messages import NONE, Entry, HardState, Message, Snapshot

__all__ = ["Ready", "ReadState", "Role", "SoftState"]


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts worth telling the application: who leads, and this node's role."""

    lead: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`.

    `ctx` is the caller's request id given to `Node.read_index`. A ReadState appears in a
    Ready only when this node will have applied `index` after that Ready's committed
    entries, so the caller can answer it right after applying them.
    """

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of effects. Fields are empty or None when there is nothing of that kind.

    soft_state: set when the leader or role changed since the last Ready (not persisted).
    hard_state: set when term, vote or commit changed; persist it.
    entries: append to stable storage; storage first drops every entry with index >=
        `entries[0].index` (the truncation point, `truncate_from`).
    snapshot: a snapshot received from the leader; persist it, replacing the whole log
        (entries after it in this Ready come after it), and restore the state machine.
    messages: send after persisting (order among them does not matter).
    committed_entries: apply in order, after persisting.
    read_states: answer after applying committed_entries.
    must_sync: False when only the commit index changed (a lost commit index is recomputed
        after a restart), so the hard state may be written without an fsync.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False

    @property
    def truncate_from(self) -> int | None:
        """Index from which stored entries must be dropped before appending, or None."""
        return self.entries[0].index if self.entries else None
