"""What the Raft driver's modules share: its settings, its errors, and the entry format.

`core.raft.driver` re-exports the public names (DriverConfig, NotLeaderError,
ProposalUnknown); import them from there. The entry format: the data of every NORMAL
entry starts with a one-byte tag, TAG_APP for application commands (the application sees
only the bytes after it) and TAG_ADDRESS for the replicated address book (msgpack
[node id, [host, port]]). A snapshot's data is the address book and the application's
bytes (core/raft/snapshot_hooks.py has the format; format 1, msgpack [SNAPSHOT_FORMAT,
address book, application blob], is still read).

The application's snapshot hook (`SnapshotHook`) returns either the blob, encoded on the
event loop, or a zero-argument encoder, or a core.raft.snapshot_hooks.StreamedSnapshot
that writes its state in pieces: the hook then only captures a consistent view of its
state (on the loop, while no entry is being applied) and the driver runs the encoder or
the stream in a worker thread, so a large state does not stall the loop. It must read only
its captured view, never the live state, which keeps changing meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.raft.errors import NotLeader, RaftError
from core.rpc import Address

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SNAPSHOT_FORMAT",
    "TAG_ADDRESS",
    "TAG_APP",
    "Apply",
    "DriverConfig",
    "NotLeaderError",
    "ProposalUnknown",
    "SnapshotHook",
    "fail_future",
    "format_address",
    "resolve_future",
]

TAG_APP = b"\x00"
TAG_ADDRESS = b"\x01"
SNAPSHOT_FORMAT = 1
DEFAULT_TIMEOUT_S = 10.0

Apply = Callable[[Sequence[tuple[int, bytes]]], Sequence[Any] | None]
SnapshotHook = Callable[[], bytes | Callable[[], bytes]]  # the blob, or its encoder


class NotLeaderError(NotLeader):
    """This node is not the leader; `leader` is the known leader's id (0: none known) and
    `address` its RPC address (None if unknown)."""

    def __init__(self, leader: int, address: Address | None) -> None:
        super().__init__(leader)
        self.address = address
        if address is not None:
            self.args = (f"{self.args[0]} at {address[0]}:{address[1]}",)


class ProposalUnknown(RaftError):
    """The proposal may or may not have been committed (timeout, lost connection)."""


@dataclass(frozen=True)
class DriverConfig:
    """Settings of one driver. `peers` maps node ids to RPC addresses (this node's own
    entry is ignored); `founders` are the founding voters, the same on every founder, and
    empty for a node that joins a running cluster (it learns the rest from the leader)."""

    node_id: int
    data_dir: Path
    listen: Address
    peers: Mapping[int, Address] = field(default_factory=dict)
    founders: tuple[int, ...] = ()
    secret: str | bytes | None = None
    tick_s: float = 0.02
    election_tick: int = 15
    heartbeat_tick: int = 2
    snapshot_every: int = 10_000  # applied entries between snapshots; 0: never
    compaction_margin: int = 1_000  # entries kept behind a snapshot for slow followers
    fsync_in_thread: bool = True
    seed: int | None = None  # of the node's election-timeout randomness; None: from the OS
    raft_options: Mapping[str, Any] = field(default_factory=dict)  # more core.raft.Config
    rpc_options: Mapping[str, Any] = field(default_factory=dict)  # more Peer options


def resolve_future(future: asyncio.Future[Any], value: Any) -> None:
    """Set `future`'s result unless it is already done (its waiter may have given up)."""
    if not future.done():
        future.set_result(value)


def fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Set `future`'s exception unless it is already done."""
    if not future.done():
        future.set_exception(exc)


def format_address(address: Address | None) -> str | None:
    """"host:port", or None for an unknown address."""
    return f"{address[0]}:{address[1]}" if address else None
