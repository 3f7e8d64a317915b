"""A shard leader's side of a change of its replicas (shardstore/replicas.py says the life).

Strategy: every node runs `ReplicaDriver.run_once` in its reconcile loop. For each shard
it hosts and leads whose configuration records a change (`joining`, `leaving`), it takes
the next step the group's own membership calls for, one per round:

1. the joining node is not a voter yet: add it (core/raft's single-server change; its
   address is published in the group first). It then receives the leader's log, or its
   snapshot streamed from disk when the log was compacted;
2. it trails the commit index by more than CAUGHT_UP_LAG entries: wait;
3. the leaving node is still a voter: if it is this node, hand leadership to the most
   up-to-date other voter (that node's driver goes on); else remove it;
4. the group's membership change is committed: propose OP_REPLICA_DONE in the
   configuration group, after which the leaving node closes the shard.

Nothing is kept between rounds: a new leader of the shard, or a node restarted after a
SIGKILL, picks the change up from the configuration and the group's membership. A step
that fails (a lost leadership, a timeout) is logged and tried again next round.

A node that was down when it left a shard never opened it again, so nothing closed it:
once after each start, after a read barrier on the configuration group (so its copy is
as new as every committed change, its own removal included), the driver deletes the
files of the shards the configuration knows and this node is no member of
(`stale_shards`), unless the shard is open here.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from core.raft.host import GROUPS_DIR
from core.raft.ready import Role
from shardstore.cluster import CONFIG_GROUP, ClusterConfig, Shard
from shardstore.replicas import CAUGHT_UP_LAG, encode_done

__all__ = ["ReplicaDriver", "caught_up", "stale_shards"]

log = logging.getLogger(__name__)

STEP_TIMEOUT_S = 5.0  # one step's Raft change or hand-over; the reconcile loop waits on it
SHARDS_DIR = "shards"  # shardstore/server.py's: each shard's engine, by shard id


class DriverNode(Protocol):
    """What the driver needs of shardstore.server.ShardNode."""

    me: int
    host: Any  # core.raft.host.RaftHost
    settings: Any  # core.cluster_options.ClusterSettings (its `peers`)
    machines: dict[int, Any]
    service: Any  # core.raft_service.RaftService (its `barrier`)
    data_dir: Path

    @property
    def full_config(self) -> ClusterConfig: ...

    async def config_write(self, entry: bytes) -> Any: ...


def caught_up(raft: Any, node_id: int) -> bool:
    """Whether voter `node_id`'s log, as the leader `raft` (a core.raft Node) knows it,
    is within CAUGHT_UP_LAG entries of the commit index."""
    progress = raft.progress.get(node_id)
    return progress is not None and progress.match + CAUGHT_UP_LAG >= raft.committed


def stale_shards(config: ClusterConfig, me: int, present: Iterable[int],
                 open_here: Iterable[int]) -> list[int]:
    """Of the shard ids whose files are `present`, those the configuration knows and `me`
    is no member of, and not open here: what a node that left them while down keeps. (A
    shard's Raft group id is its shard id, so one id names both directories.)"""
    opened = set(open_here)
    return sorted(sid for sid in set(present) if sid in config.shards
                  and me not in config.shards[sid].members and sid not in opened)


class ReplicaDriver:
    """The shard-leader steps of replica changes for one node (see the module header)."""

    def __init__(self, node: DriverNode) -> None:
        self.node = node
        self.steps = 0  # steps taken, for INFO and tests
        self.swept = False  # the files of shards left while down: deleted once a start

    async def run_once(self) -> None:
        """One step for every changing shard this node leads; never raises but
        cancellation."""
        if not self.swept:
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no configuration leader yet: the next round
                log.debug("sweep of left shards: %r", exc)
        shards = self.node.full_config.shards
        for sid in list(self.node.machines):
            shard = shards.get(sid)
            if shard is None or not (shard.joining or shard.leaving):
                continue
            group = self.node.host.group(shard.group)
            if group is None or group.node is None or group.node.role is not Role.LEADER:
                continue
            try:
                await self._step(shard, group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost leadership, a timeout: the next round
                log.info("shard %d: replica change step: %r", sid, exc)

    async def _sweep(self) -> None:
        await self.node.service.barrier(CONFIG_GROUP)
        config = self.node.full_config
        if not config.initialised:
            return
        roots = [self.node.data_dir / SHARDS_DIR, self.node.data_dir / GROUPS_DIR]
        present = [int(p.name) for root in roots if root.is_dir() for p in root.iterdir()
                   if p.name.isdigit() and int(p.name) != CONFIG_GROUP]
        opened = [*self.node.machines, *(g for g in self.node.host.group_ids())]
        for sid in stale_shards(config, self.node.me, present, opened):
            log.info("node %d: deleting the files of shard %d, left while down",
                     self.node.me, sid)
            for root in roots:
                await asyncio.to_thread(shutil.rmtree, root / str(sid), True)
        self.swept = True

    async def _step(self, shard: Shard, group: Any) -> None:
        raft = group.node
        add, remove = shard.joining, shard.leaving
        if add and add not in raft.voters:
            log.info("shard %d: adding node %d as a replica", shard.shard_id, add)
            await group.add_node(add, tuple(self.node.settings.peers[add]),
                                 timeout=STEP_TIMEOUT_S)
        elif add and not caught_up(raft, add):
            return
        elif remove and remove in raft.voters:
            await self._remove(shard, group, remove)
        elif raft.membership.last_change_index <= raft.committed:
            log.info("shard %d: replicas changed (+%d -%d)", shard.shard_id, add, remove)
            await self.node.config_write(encode_done(shard.shard_id, add, remove))
        else:
            return
        self.steps += 1

    async def _remove(self, shard: Shard, group: Any, remove: int) -> None:
        raft = group.node
        if remove != self.node.me:
            log.info("shard %d: removing the replica on node %d", shard.shard_id, remove)
            await group.remove_node(remove, timeout=STEP_TIMEOUT_S)
            return
        others = [v for v in raft.voters if v != remove and caught_up(raft, v)]
        if others:  # the leaving leader hands over first; the new leader removes it
            heir = max(others, key=lambda v: (raft.progress[v].match, -v))
            log.info("shard %d: leaving leader hands over to node %d", shard.shard_id, heir)
            await group.transfer_leadership(heir, timeout=STEP_TIMEOUT_S)
