"""One Raft group hosted by a RaftHost: its node, its storage, its waiters and its API.

A process hosts many groups (core/raft/host.py); each has its own log and snapshots in its
own directory, its own state machine (the application's `apply`, `snapshot`, `restore`
callbacks) and the API the application uses: `propose`/`execute` (optionally forwarded to
the leader), `read_barrier`, `transfer_leadership`, `add_node`/`remove_node`, `status`.
The host owns what the groups share: the data-directory lock, the node-to-node transport,
the ticker and the Ready loop, which calls into a group in the documented order (persist,
send, apply, advance: core/raft/ready.py) through `take_ready`, `outgoing` and `finish`.

The proposal side (submitting, forwarding, waiting) is core/raft/driver_propose.py and the
apply side (committed entries, the address book, snapshots) core/raft/driver_apply.py; a
group is made of both. Errors: NotLeaderError (leader id and address), ProposalDropped,
ProposalUnknown (core/raft/driver_types.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.raft.config import Config
from core.raft.disk import DiskStorage
from core.raft.driver_apply import ApplySide
from core.raft.driver_propose import ProposeSide
from core.raft.driver_types import (
    DEFAULT_TIMEOUT_S,
    Apply,
    ProposalUnknown,
    SnapshotHook,
    fail_future,
    format_address,
)
from core.raft.errors import ConfigError, NotLeader, RaftError, WireError
from core.raft.messages import NONE, Message, Snapshot, message_from_wire
from core.raft.node import Node
from core.raft.ready import Ready, Role
from core.rpc import Address, RequestRefused

if TYPE_CHECKING:
    from core.raft.host import RaftHost

__all__ = ["FSYNC_ALWAYS", "FSYNC_EVERYSEC", "GroupConfig", "RaftGroup"]

log = logging.getLogger("core.raft.group")

SERVICE = "raft"  # the core/rpc service name of Raft traffic
FSYNC_ALWAYS = "always"
FSYNC_EVERYSEC = "everysec"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_EVERYSEC)
ERR_EVERYSEC_MEMBERS = ("fsync 'everysec' is only allowed for a single-member group: Raft's "
                        "votes and log must survive a power cut")
FORWARDED_OPS = ("propose", "add", "remove")


@dataclass(frozen=True)
class GroupConfig:
    """Settings of one group. `founders` are the founding voters (the same on every
    founder; empty for a replica that joins a running group). `fsync`: "always" (every
    Ready that must sync is durable before anything is sent or applied) or "everysec" (the
    host fsyncs the group's log once a second; only for a single-member group, as Redis's
    `appendfsync everysec`). `directory`: where the group's log and snapshots live."""

    directory: Path
    founders: tuple[int, ...] = ()
    tick_s: float = 0.02
    election_tick: int = 15
    heartbeat_tick: int = 2
    snapshot_every: int = 10_000  # applied entries between snapshots; 0: never
    compaction_margin: int = 1_000  # entries kept behind a snapshot for slow followers
    fsync: str = FSYNC_ALWAYS
    seed: int | None = None  # of the election-timeout randomness; None: from the OS
    raft_options: dict[str, Any] = field(default_factory=dict)  # more core.raft.Config

    def check(self) -> None:
        """ConfigError on a bad combination."""
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {FSYNC_POLICIES}, got {self.fsync!r}")
        if self.fsync == FSYNC_EVERYSEC and len(self.founders) != 1:
            raise ConfigError(ERR_EVERYSEC_MEMBERS)


class _Wake:
    """What the proposal and apply sides call `_wake.set()` on: marks the group for the
    host's Ready loop."""

    __slots__ = ("group",)

    def __init__(self, group: RaftGroup) -> None:
        self.group = group

    def set(self) -> None:
        self.group.host.mark(self.group)


class _Link:
    """The group's view of the node transport: requests and addresses (driver_propose and
    driver_apply call `request` and `set_address`)."""

    __slots__ = ("group_id", "transport")

    def __init__(self, transport: Any, group_id: int) -> None:
        self.transport = transport
        self.group_id = group_id

    async def request(self, peer_id: int, body: Any, timeout: float) -> Any:
        return await self.transport.request(peer_id, SERVICE, self.group_id, body, timeout)

    def set_address(self, peer_id: int, address: Address) -> None:
        self.transport.set_address(peer_id, address)


class RaftGroup(ProposeSide, ApplySide):
    """A group of a RaftHost: made by `RaftHost.create_group`, gone with `destroy_group`."""

    def __init__(self, host: RaftHost, group_id: int, config: GroupConfig, apply: Apply,
                 snapshot: SnapshotHook, restore: Callable[[bytes], None]) -> None:
        config.check()
        self.host = host
        self.group_id = group_id
        self.config = config
        self.id = host.node_id
        self._apply_fn, self._snapshot_fn, self._restore_fn = apply, snapshot, restore
        self.addresses: dict[int, Address] = dict(host.addresses)
        self.storage: DiskStorage | None = None
        self.node: Node | None = None
        self.rpc = _Link(host.transport, group_id)
        self.applied = 0
        self._waiters: dict[int, tuple[int, asyncio.Future[tuple[int, Any]]]] = {}
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # heap
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._seq = itertools.count(1)
        self._wake = _Wake(self)
        self._snapshot_task: asyncio.Task[Snapshot | None] | None = None
        self._snapshot_skip = False
        self._stopping = False
        self.stats = {"readies": 0, "proposals": 0, "applied_entries": 0, "snapshots": 0}

    # -- life (called by the host) -------------------------------------------------------------

    def open(self) -> None:
        """Open the storage, restore the snapshot and build the node."""
        cfg = self.config
        cfg.directory.mkdir(parents=True, exist_ok=True)
        self.storage = DiskStorage.open(cfg.directory)
        snap = self.storage.snapshot()
        if snap.index:
            self._restore(snap)
        options = dict(cfg.raft_options)
        raft_config = Config(id=self.id, peers=tuple(sorted(cfg.founders)),
                             election_tick=cfg.election_tick,
                             heartbeat_tick=cfg.heartbeat_tick, **options)
        seed = None if cfg.seed is None else cfg.seed * 1_000_003 + self.group_id
        self.node = Node(raft_config, self.storage, random.Random(seed))
        self.applied = self.node.applied
        log.info("raft: node %d group %d opened at applied %d (log %d..%d, snapshot %d, term "
                 "%d)", self.id, self.group_id, self.applied, self.storage.first_index(),
                 self.storage.last_index(), snap.index, self.node.term)

    async def close(self) -> None:
        """Stop taking requests, wait for a snapshot in flight, fail what waits, close the
        storage. The host calls it after its Ready loop stopped or for a destroyed group."""
        self._stopping = True
        await self._snapshot_drain()
        stopped = ProposalUnknown("the group stopped")
        futures: list[asyncio.Future[Any]] = [f for _, f in self._waiters.values()]
        futures += [f for _, _, f in self._apply_waiters] + list(self._reads.values())
        for future in futures:
            fail_future(future, stopped)
        if self.storage is not None:
            self.storage.close()

    async def hand_over(self) -> None:
        """If this node leads a group of several, hand leadership to another voter (a
        failure is logged: the group then elects after the election timeout)."""
        node = self.node
        if node is None or node.role is not Role.LEADER or len(node.voters) < 2:
            return
        try:
            new = await self.transfer_leadership()
            log.info("raft: node %d handed leadership to node %d (group %d)", self.id, new,
                     self.group_id)
        except (RaftError, TimeoutError) as exc:
            log.warning("raft: node %d could not hand over group %d: %r", self.id,
                        self.group_id, exc)

    # -- the host's Ready loop -----------------------------------------------------------------

    def take_ready(self) -> Ready | None:
        """Settle a finished off-loop snapshot, then the node's Ready if it has one."""
        node = self._node()
        self._settle_snapshot()
        if self._stopping or not node.has_ready():
            return None
        rd = node.ready()
        soft = rd.soft_state
        if soft is not None:
            log.info("raft: node %d group %d is %s in term %d, leader %s", self.id,
                     self.group_id, soft.role.value, node.term, soft.lead or "unknown")
        return rd

    def outgoing(self, rd: Ready) -> list[Message]:
        """The messages to send for `rd` (the host batches them per peer)."""
        return list(rd.messages)

    def finish(self, rd: Ready) -> None:
        """Steps 3 and 4 after the host persisted and sent `rd`: apply, advance, snapshot."""
        node = self._node()
        self._apply(rd)
        node.advance(rd)
        self.stats["readies"] += 1
        self._maybe_snapshot()

    def step_wire(self, peer_id: int, wire: Any) -> None:
        """A Raft message for this group from node `peer_id`; bad ones are dropped."""
        node = self.node
        if node is None or self._stopping:
            return
        try:
            msg = message_from_wire(wire)
        except WireError as exc:
            log.warning("raft: group %d drops a bad message from node %d: %s", self.group_id,
                        peer_id, exc)
            return
        if msg.frm != peer_id or msg.to != self.id:
            log.warning("raft: group %d drops a message %d->%d that came from node %d",
                        self.group_id, msg.frm, msg.to, peer_id)
            return
        node.step(msg)  # a RaftError here is fatal: the host stops
        self._wake.set()

    async def on_request(self, peer_id: int, body: Any) -> Any:
        """A follower forwards a command: run it if we lead, else say who does."""
        if not isinstance(body, dict) or body.get("op") not in FORWARDED_OPS:
            raise RequestRefused("unknown request")
        if self._stopping or self.node is None or self.node.role is not Role.LEADER:
            return {"not_leader": self.node.lead if self.node else NONE}
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                index, result = await self._run_here(body)
        except NotLeader as exc:
            return {"not_leader": exc.leader}
        return {"index": index, "result": result}

    # -- application API -----------------------------------------------------------------------

    async def propose(self, data: bytes, *, forward: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Replicate `data`; return its index once applied on this node.

        Raises NotLeaderError (unless `forward`: then a follower hands the command to the
        leader and waits until it has applied the entry itself), ProposalDropped (the entry
        was overwritten by another leader: not committed), ProposalUnknown (timeout, lost
        connection to the leader, shutdown: it may or may not be committed). During a
        leadership transfer proposals wait for the new leader.
        """
        index, _ = await self._submit({"op": "propose", "data": bytes(data)}, forward, timeout)
        return index

    async def execute(self, data: bytes, *, forward: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """Like `propose`, but return what `apply` returned for this entry (on the leader;
        it must be msgpack-encodable when forwarded)."""
        _, result = await self._submit({"op": "propose", "data": bytes(data)}, forward, timeout)
        return result

    async def read_barrier(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait until reads of the local state machine are linearizable (Raft read index,
        confirmed by a quorum of heartbeats); return that index. Works on followers too.
        Raises TimeoutError (no leader, or no quorum), ProposalUnknown (stopped)."""
        node = self._node()
        async with asyncio.timeout(timeout):
            while True:
                if self._stopping:
                    raise ProposalUnknown("the group is stopping")
                ctx = next(self._seq).to_bytes(8, "big")
                future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self._reads[ctx] = future
                try:
                    try:
                        node.read_index(ctx)
                    except NotLeader:
                        await asyncio.sleep(self.config.tick_s)
                        continue
                    self._wake.set()
                    attempt = self.config.tick_s * self.config.election_tick * 2
                    try:
                        async with asyncio.timeout(attempt):
                            return await future
                    except TimeoutError:
                        continue  # leadership changed and the request was lost: ask again
                finally:
                    self._reads.pop(ctx, None)

    async def transfer_leadership(self, to: int | None = None,
                                  timeout: float | None = None) -> int:
        """Hand leadership to voter `to` (default: the most up-to-date other voter); return
        the new leader's id once this node knows it. Raises NotLeaderError, TimeoutError."""
        node = self._node()
        if node.role is not Role.LEADER:
            raise self._not_leader()
        others = sorted(node.voters - {self.id})
        if not others:
            return self.id
        if to is None:
            to = max(others, key=lambda v: (node.progress[v].match, -v))
        node.transfer_leadership(to)
        self._wake.set()
        limit = timeout or self.config.tick_s * self.config.election_tick * 3
        async with asyncio.timeout(limit):
            while node.lead in (self.id, NONE):
                await asyncio.sleep(self.config.tick_s)
        return node.lead

    async def add_node(self, node_id: int, address: Address, *, forward: bool = False,
                       timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Make `node_id` (reachable at `address`) a voter; return the change's index once
        applied here. Publish the address first so every member can reach it."""
        body = {"op": "add", "id": node_id, "addr": [address[0], address[1]]}
        index, _ = await self._submit(body, forward, timeout)
        return index

    async def remove_node(self, node_id: int, *, forward: bool = False,
                          timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Remove voter `node_id`; return the change's index once applied here."""
        index, _ = await self._submit({"op": "remove", "id": node_id}, forward, timeout)
        return index

    def status(self) -> dict[str, Any]:
        """A snapshot of this node's view of the group, for INFO/STATUS commands and tests."""
        node = self._node()
        storage = self.storage
        assert storage is not None
        return {
            "id": self.id, "group": self.group_id, "role": node.role.value, "term": node.term,
            "leader": node.lead,
            "leader_address": format_address(self.addresses.get(node.lead)),
            "commit": node.committed,
            "applied": self.applied, "last_index": node.log.last_index(),
            "snapshot_index": storage.snapshot().index, "first_index": storage.first_index(),
            "members": sorted(node.voters),
            "addresses": {k: format_address(v) for k, v in sorted(self.addresses.items())},
            "fsyncs": storage.fsyncs, "pending_proposals": len(self._waiters),
            "connected_peers": sorted(k for k in node.voters
                                      if k != self.id and self.host.transport.connected(k)),
            "quiesced": node.quiesced,
            **self.stats,
        }
