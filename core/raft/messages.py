"""Raft's data: log entries, hard state, snapshots, configuration changes and the messages.

Every type here is a small frozen dataclass. Messages travel between nodes as msgpack frames
(core/rpc, later); `Message.to_wire()` gives a dict of ints, bools, bytes and lists that
msgpack encodes as is, and `message_from_wire(d)` rebuilds the message, raising `WireError`
for anything malformed (it is remote input: every field is type-checked).

Fields added after a message type was first shipped are optional on the wire
(`OPTIONAL_FIELDS`): `to_wire()` leaves them out while they hold their default, and a
decoder reads an absent one as its default, so old and new nodes understand each other as
long as the new field is not used.

Node ids are positive ints; `NONE` (0) means "no node" (no vote, no known leader).
Terms and indexes start at 0 ("nothing"); the first real log entry has index 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from core.raft.errors import WireError

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "NONE",
    "AppendRequest",
    "AppendResponse",
    "ConfChange",
    "ConfChangeOp",
    "Entry",
    "EntryType",
    "HardState",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Message",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "Snapshot",
    "SnapshotRequest",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "message_from_wire",
]

NONE = 0
ENTRY_OVERHEAD_BYTES = 16  # what an entry costs beyond its data, for the size limits
# Fields added to a message after it first shipped: name -> default (see the module header).
OPTIONAL_FIELDS: dict[str, object] = {"quiesce": False, "wake": False}


class EntryType(IntEnum):
    NORMAL = 0  # application data
    CONF_CHANGE = 1  # data is an encoded ConfChange; takes effect when appended (thesis 4.1)
    EMPTY = 2  # appended by a new leader at the start of its term (Raft 5.4.2, 8)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. `(index, term)` identifies it (Log Matching, Raft 5.3)."""

    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes this entry counts for against the per-message and per-Ready limits."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, int(self.type), self.data]

    @classmethod
    def from_wire(cls, w: object) -> Entry:
        if not isinstance(w, list | tuple) or len(w) != 4:
            raise WireError("entry must be [index, term, type, data]")
        index, term, etype, data = w
        try:
            entry_type = EntryType(_int(etype, "entry type"))
        except ValueError:
            raise WireError(f"unknown entry type {etype!r}") from None
        return cls(_int(index, "entry index"), _int(term, "entry term"), entry_type,
                   _bytes(data, "entry data"))


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must persist before it sends anything that depends on it (Raft fig. 2).

    Invariant: `commit` never decreases while the node runs; `vote` is for `term`.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application's state after applying every entry up to `index` (Raft 7).

    `term` is the term of entry `index`; `voters` the configuration in force at `index`;
    `data` the opaque state-machine data: bytes held in memory, or a
    core.raft.snapshot_file.SnapshotFile naming it on disk (DiskStorage's snapshots, and
    streamed ones: `to_wire` then does not apply). `index == 0` means "no snapshot".
    """

    index: int = 0
    term: int = 0
    voters: tuple[int, ...] = ()
    data: Any = b""  # bytes | SnapshotFile

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, list(self.voters), self.data]

    @classmethod
    def from_wire(cls, w: object) -> Snapshot:
        if not isinstance(w, list | tuple) or len(w) != 4:
            raise WireError("snapshot must be [index, term, voters, data]")
        index, term, voters, data = w
        if not isinstance(voters, list | tuple):
            raise WireError("snapshot voters must be a list")
        return cls(_int(index, "snapshot index"), _int(term, "snapshot term"),
                   tuple(_int(v, "voter id") for v in voters), _bytes(data, "snapshot data"))


class ConfChangeOp(IntEnum):
    ADD = 0
    REMOVE = 1


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (thesis 4.1), the data of a CONF_CHANGE entry.

    `voters` is the whole configuration after the change (sorted), so a node that joins with
    an empty log learns the full membership from the entry alone.
    """

    op: ConfChangeOp
    node_id: int
    voters: tuple[int, ...]

    def encode(self) -> bytes:
        return msgpack.packb([int(self.op), self.node_id, list(self.voters)])

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Raises WireError if `data` is not an encoded ConfChange."""
        try:
            op, node_id, voters = msgpack.unpackb(data)
            return cls(ConfChangeOp(op), _int(node_id, "node id"),
                       tuple(_int(v, "voter id") for v in voters))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise WireError(f"bad conf change entry: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every message: sender `frm`, receiver `to`, and the sender's `term`."""

    TAG: ClassVar[int] = 0
    frm: int
    to: int
    term: int

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly dict: {"type": tag, field: value, ...}."""
        out: dict[str, Any] = {"type": self.TAG}
        for name in field_names(type(self)):
            value = getattr(self, name)
            if name in OPTIONAL_FIELDS and value == OPTIONAL_FIELDS[name]:
                continue
            if name == "entries":
                value = [e.to_wire() for e in value]
            elif name == "snapshot":
                value = value.to_wire()
            out[name] = value
        return out

    @staticmethod
    def from_wire(w: Mapping[str, Any]) -> Message:
        """The message `to_wire()` produced (any type); WireError if malformed."""
        return message_from_wire(w)


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(Message):
    """RequestVote (Raft 5.2). With `pre_vote` it is a pre-vote (thesis 9.6): `term` is the
    term the sender would campaign in, and no receiver changes its own term or vote.
    `transfer` marks an election forced by TimeoutNow: receivers ignore their leader lease.
    """

    TAG: ClassVar[int] = 1
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(Message):
    """A (pre-)vote answer. A granted pre-vote carries the term of the request."""

    TAG: ClassVar[int] = 2
    reject: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(Message):
    """AppendEntries (Raft 5.3): `entries` follow `(prev_index, prev_term)`; `commit` is the
    leader's commit index."""

    TAG: ClassVar[int] = 3
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...] = ()
    commit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(Message):
    """Answer to AppendRequest and SnapshotRequest.

    Accepted: `index` is the last index known to match the leader's log.
    Rejected: `index` is the rejected `prev_index`; `hint_index`/`hint_term` are the follower's
    guess at the last index that may match and its term there (fast backtracking): the
    leader skips every entry of a term the follower does not have.
    """

    TAG: ClassVar[int] = 4
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest(Message):
    """Leader liveness. `commit` is min(leader commit, the follower's match index).
    `read_seq` numbers the read-index rounds this heartbeat confirms (0: none).
    `quiesce`: the leader's last heartbeat before it stops ticking (core/raft/node.py,
    quiescence); a follower that is caught up stops ticking too and does not answer."""

    TAG: ClassVar[int] = 5
    commit: int = 0
    read_seq: int = 0
    quiesce: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(Message):
    """Echoes the heartbeat's `read_seq`. `wake`: not an answer but a follower's request
    that its quiesced leader wake up (core/raft/node.py, quiescence); a quiesced leader
    ignores plain answers, which may be late echoes of its last heartbeats."""

    TAG: ClassVar[int] = 6
    read_seq: int = 0
    wake: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest(Message):
    """InstallSnapshot (Raft 7), the snapshot in one message. Answered by AppendResponse."""

    TAG: ClassVar[int] = 7
    snapshot: Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow(Message):
    """Leadership transfer (thesis 3.10): start an election now, ignoring leases."""

    TAG: ClassVar[int] = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(Message):
    """A follower asks the leader for a read index on behalf of its client (`ctx`)."""

    TAG: ClassVar[int] = 9
    ctx: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse(Message):
    """The confirmed read index for the follower's request `ctx`."""

    TAG: ClassVar[int] = 10
    ctx: bytes
    index: int


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (VoteRequest, VoteResponse, AppendRequest, AppendResponse, HeartbeatRequest,
                HeartbeatResponse, SnapshotRequest, TimeoutNow, ReadIndexRequest,
                ReadIndexResponse)
}


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise WireError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{what} must be a bool, got {value!r}")
    return value


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise WireError(f"{what} must be bytes, got {type(value).__name__}")
    return value


def _entries(value: object, what: str) -> tuple[Entry, ...]:
    if not isinstance(value, list | tuple):
        raise WireError(f"{what} must be a list")
    return tuple(Entry.from_wire(e) for e in value)


_FIELD_DECODERS: dict[str, Callable[[object, str], object]] = {
    "pre_vote": _bool,
    "transfer": _bool,
    "reject": _bool,
    "quiesce": _bool,
    "wake": _bool,
    "ctx": _bytes,
    "entries": _entries,
    "snapshot": lambda v, _what: Snapshot.from_wire(v),
}


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of a message class, in order (computed once per class: this is
    on the path of every message in and out)."""
    return tuple(f.name for f in fields(cls))


def message_from_wire(w: Mapping[str, Any]) -> Message:
    """Rebuild a message from `Message.to_wire()` output; WireError if anything is off."""
    if not isinstance(w, Mapping):
        raise WireError("message must be a map")
    tag = w.get("type")
    cls = MESSAGE_TYPES.get(tag) if type(tag) is int else None
    if cls is None:
        raise WireError(f"unknown message type {tag!r}")
    kwargs: dict[str, object] = {}
    present = 0
    for name in field_names(cls):
        if name not in w:
            if name in OPTIONAL_FIELDS:
                kwargs[name] = OPTIONAL_FIELDS[name]
                continue
            raise WireError(f"{cls.__name__} lacks field {name!r}")
        decode = _FIELD_DECODERS.get(name, _int)
        kwargs[name] = decode(w[name], name)
        present += 1
    if len(w) != present + 1:
        extra = sorted(set(w) - set(kwargs) - {"type"})
        raise WireError(f"{cls.__name__} has unknown fields {extra}")
    return cls(**kwargs)  # type: ignore[arg-type]
