"""A process with exactly one Raft group: a RaftHost holding group 0 in the data directory.

This is the shape the scheduler and the small tools use: one state machine, one data
directory (the group's log and snapshot live at its top, as before groups existed), one
node-to-node port. Everything is delegated to core/raft/host.py (the lock, the transport,
the ticker, the Ready loop) and core/raft/group.py (the node, storage and API):

    driver = RaftDriver(DriverConfig(node_id=1, data_dir=..., listen=("127.0.0.2", 7002),
                                     peers={...}, founders=(1, 2, 3), secret=...),
                        machine.apply, machine.snapshot, machine.restore)
    await driver.start()
    index = await driver.propose(b"command")      # applied here when it returns

The application's callbacks: `apply(entries)` gets [(index, data), ...] in log order and
returns one result per entry (or None); `snapshot()` returns the blob or an encoder of a
view it captured (driver_types.SnapshotHook); `restore(bytes)`. Errors: NotLeaderError,
ProposalDropped, ProposalUnknown; a storage failure is fatal (`wait()` raises it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.raft.driver_types import (
    DEFAULT_TIMEOUT_S,
    Apply,
    DriverConfig,
    NotLeaderError,
    ProposalUnknown,
    SnapshotHook,
)
from core.raft.group import GroupConfig, RaftGroup
from core.raft.host import HostConfig, RaftHost
from core.raft.node import Node
from core.rpc import Address

__all__ = [
    "DriverConfig",
    "NotLeaderError",
    "ProposalUnknown",
    "RaftDriver",
]

MAIN_GROUP = 0


def host_config(config: DriverConfig) -> HostConfig:
    """The host settings of a one-group driver."""
    return HostConfig(node_id=config.node_id, data_dir=config.data_dir, listen=config.listen,
                      peers=config.peers, secret=config.secret, tick_s=config.tick_s,
                      election_tick=config.election_tick,
                      heartbeat_tick=config.heartbeat_tick,
                      fsync_in_thread=config.fsync_in_thread, rpc_options=config.rpc_options)


def group_config(config: DriverConfig) -> GroupConfig:
    """The settings of the driver's one group, stored at the top of the data directory."""
    return GroupConfig(directory=config.data_dir, founders=tuple(config.founders),
                       tick_s=config.tick_s, election_tick=config.election_tick,
                       heartbeat_tick=config.heartbeat_tick,
                       snapshot_every=config.snapshot_every,
                       compaction_margin=config.compaction_margin, seed=config.seed,
                       raft_options=dict(config.raft_options))


class RaftDriver:
    """See the module header. Create, `await start()`, use, `await stop()`."""

    group_id = MAIN_GROUP

    def __init__(self, config: DriverConfig, apply: Apply, snapshot: SnapshotHook,
                 restore: Callable[[bytes], None]) -> None:
        self.config = config
        self.id = config.node_id
        self.host = RaftHost(host_config(config))
        self._machine = (apply, snapshot, restore)
        self.group: RaftGroup | None = None

    async def start(self) -> None:
        """Lock the data directory, listen, open the group and start ticking.
        Raises DataDirLockedError, CorruptLogError, InsecureConfig, OSError (port in use)."""
        await self.host.start()
        try:
            self.group = self.host.create_group(MAIN_GROUP, group_config(self.config),
                                                *self._machine)
        except BaseException:
            await self.host.stop(transfer=False)
            raise

    async def stop(self, transfer: bool = True) -> None:
        """Graceful shutdown (hand leadership over first if `transfer`). Idempotent."""
        await self.host.stop(transfer)

    async def hand_over(self) -> None:
        await self._group().hand_over()

    async def wait(self) -> None:
        """Until the driver stops; raises the fatal error if it stopped on one."""
        await self.host.wait()

    def _group(self) -> RaftGroup:
        if self.group is None:
            raise RuntimeError("the driver is not started")
        return self.group

    # -- the group's state, for status commands and tests ---------------------------------------

    @property
    def node(self) -> Node | None:
        return self.group.node if self.group is not None else None

    @property
    def applied(self) -> int:
        return self.group.applied if self.group is not None else 0

    @property
    def addresses(self) -> dict[int, Address]:
        return self._group().addresses

    @property
    def stats(self) -> dict[str, int]:
        return self._group().stats

    @property
    def storage(self) -> Any:
        return self._group().storage

    def status(self) -> dict[str, Any]:
        return self._group().status()

    def on_message(self, peer_id: int, wire: Any) -> None:
        """Step a Raft message of the group as if it came from node `peer_id` (tests)."""
        self.host.on_message(peer_id, MAIN_GROUP, [[MAIN_GROUP, wire]])

    # -- the group's API -----------------------------------------------------------------------

    async def propose(self, data: bytes, *, forward: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S) -> int:
        return await self._group().propose(data, forward=forward, timeout=timeout)

    async def execute(self, data: bytes, *, forward: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        return await self._group().execute(data, forward=forward, timeout=timeout)

    async def read_barrier(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        return await self._group().read_barrier(timeout)

    def reads_ready(self) -> bool:
        return self._group().reads_ready()

    async def transfer_leadership(self, to: int | None = None,
                                  timeout: float | None = None) -> int:
        return await self._group().transfer_leadership(to, timeout)

    async def add_node(self, node_id: int, address: Address, *, forward: bool = False,
                       timeout: float = DEFAULT_TIMEOUT_S) -> int:
        return await self._group().add_node(node_id, address, forward=forward,
                                            timeout=timeout)

    async def remove_node(self, node_id: int, *, forward: bool = False,
                          timeout: float = DEFAULT_TIMEOUT_S) -> int:
        return await self._group().remove_node(node_id, forward=forward, timeout=timeout)
