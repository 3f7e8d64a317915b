"""The groups a node hosts, as the RESP-on-Raft service sees them: the handle of one Raft
group and the directory of a node's groups.

Strategy: the service codes against these protocols only. Today's `RaftDriver` is one
group and answers `GroupHandle` itself (it has no `group_id` yet: `group_id_of` calls it
group 0), wrapped by `SingleGroup` as a one-group directory; a host of many groups (one RPC
listener, many groups) answers `GroupDirectory` and hands out one handle per group.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["MAIN_GROUP", "GroupDirectory", "GroupHandle", "SingleGroup", "group_id_of"]

MAIN_GROUP = 0


class GroupHandle(Protocol):
    """One Raft group as this node hosts it (today's RaftDriver API). `status()` keys:
    id, role, term, leader, leader_address, commit, applied, members, addresses, ...;
    `transfer_leadership` raises NotLeaderError on a follower."""

    group_id: int

    async def execute(self, data: bytes, *, forward: bool = False,
                      timeout: float = ...) -> Any: ...

    async def read_barrier(self, timeout: float = ...) -> int: ...

    def reads_ready(self) -> bool: ...

    async def add_node(self, node_id: int, address: tuple[str, int], *,
                       forward: bool = False) -> int: ...

    async def remove_node(self, node_id: int, *, forward: bool = False) -> int: ...

    async def transfer_leadership(self, to: int | None = None,
                                  timeout: float | None = None) -> int: ...

    async def hand_over(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class GroupDirectory(Protocol):
    """The groups this node hosts."""

    def group(self, gid: int) -> GroupHandle | None: ...

    def group_ids(self) -> list[int]: ...


def group_id_of(handle: Any) -> int:
    """A handle's group id; a RaftDriver (which has none) is group 0."""
    return int(getattr(handle, "group_id", MAIN_GROUP))


class SingleGroup:
    """The directory of a driver that is one group."""

    def __init__(self, handle: GroupHandle) -> None:
        self.handle = handle

    def group(self, gid: int) -> GroupHandle | None:
        """The handle if `gid` is its group, else None."""
        return self.handle if gid == group_id_of(self.handle) else None

    def group_ids(self) -> list[int]:
        """The one group id."""
        return [group_id_of(self.handle)]
