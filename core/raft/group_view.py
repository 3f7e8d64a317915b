"""What a group's parts (core/raft/proposer.py, core/raft/applier.py) see of their group.

A structural type, so the parts name what they use without importing core/raft/group.py
(which imports them): RaftGroup satisfies it.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.raft.disk import DiskStorage
from core.raft.node import Node
from core.raft.waiters import Waiters
from core.rpc import Address

__all__ = ["GroupLink", "GroupSettings", "GroupView"]


class GroupLink(Protocol):
    """The group's view of the node transport."""

    async def request(self, peer_id: int, body: Any, timeout: float) -> Any: ...

    def set_address(self, peer_id: int, address: Address) -> None: ...


class GroupSettings(Protocol):
    tick_s: float
    snapshot_every: int
    compaction_margin: int


class GroupView(Protocol):
    id: int
    group_id: int
    addresses: dict[int, Address]
    storage: DiskStorage | None
    link: GroupLink
    waiters: Waiters
    stopping: bool
    stats: dict[str, int]

    @property
    def config(self) -> GroupSettings: ...

    @property
    def applied(self) -> int: ...

    def live_node(self) -> Node: ...

    def wake(self) -> None: ...
