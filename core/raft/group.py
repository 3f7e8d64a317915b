"""One Raft group hosted by a RaftHost: its node, its storage, its waiters and its API.

A process hosts many groups (core/raft/host.py); each has its own log and snapshots in its
own directory, its own state machine (the application's `apply`, `snapshot`, `restore`
callbacks) and the API the application uses: `propose`/`execute` (optionally forwarded to
the leader), `read_barrier`, `transfer_leadership`, `add_node`/`remove_node`, `status`.
The host owns what the groups share: the data-directory lock, the node-to-node transport,
the ticker and the Ready loop, which calls into a group in the documented order (persist,
send, apply, advance: core/raft/ready.py) through `take_ready`, `outgoing` and `finish`.

A group is made of parts it holds and calls by name: `waiters` (who waits for an entry,
an applied index or a read: core/raft/waiters.py), `proposer` (submitting, forwarding to
the leader: core/raft/proposer.py) and `applier` (committed entries, the address book,
snapshots: core/raft/applier.py). Errors: NotLeaderError (leader id and address),
ProposalDropped, ProposalUnknown (core/raft/driver_types.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.raft.applier import Applier
from core.raft.config import Config
from core.raft.disk import DiskStorage
from core.raft.driver_types import (
    DEFAULT_TIMEOUT_S,
    Apply,
    ProposalUnknown,
    SnapshotHook,
    format_address,
)
from core.raft.errors import ConfigError, NotLeader, ProposalDropped, RaftError, WireError
from core.raft.group_snapshots import SnapshotTransfers
from core.raft.messages import NONE, Message, SnapshotRequest, message_from_wire
from core.raft.node import Node
from core.raft.proposer import Proposer
from core.raft.ready import Ready, Role
from core.raft.waiters import Waiters
from core.rpc import Address, RequestRefused

__all__ = ["FSYNC_ALWAYS", "FSYNC_EVERYSEC", "GroupConfig", "RaftGroup"]

log = logging.getLogger("core.raft.group")

SERVICE = "raft"  # the core/rpc service name of Raft traffic
FSYNC_ALWAYS = "always"
FSYNC_EVERYSEC = "everysec"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_EVERYSEC)
ERR_EVERYSEC_MEMBERS = ("fsync 'everysec' is only allowed for a single-member group: Raft's "
                        "votes and log must survive a power cut")
FORWARDED_OPS = ("propose", "add", "remove")
ERR_MACHINE_AHEAD = ("group {}: the state machine applied up to {} but the log ends at {}; "
                     "only a single-member group may restart its log after its machine")


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
    # The index the application's state machine has durably applied, if it keeps one (0:
    # it does not say). A single member's machine may be ahead of its log after a power
    # cut with fsync "everysec" (its own writes reached the disk, the log's did not): the
    # log then starts after it, so no new entry takes an index the machine has applied.
    machine_applied: int = 0

    def check(self) -> None:
        """ConfigError on a bad combination."""
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {FSYNC_POLICIES}, got {self.fsync!r}")
        if self.fsync == FSYNC_EVERYSEC and len(self.founders) != 1:
            raise ConfigError(ERR_EVERYSEC_MEMBERS)


class GroupHost(Protocol):
    """What a group needs of the host that holds it (core/raft/host.py's RaftHost)."""

    node_id: int
    addresses: dict[int, Address]
    transport: Any  # a core.rpc.NodeTransport

    def mark(self, group: RaftGroup) -> None: ...


class _Link:
    """The group's view of the node transport: forwarded requests and peer addresses."""

    __slots__ = ("group_id", "transport")

    def __init__(self, transport: Any, group_id: int) -> None:
        self.transport = transport
        self.group_id = group_id

    async def request(self, peer_id: int, body: Any, timeout: float) -> Any:
        return await self.transport.request(peer_id, SERVICE, self.group_id, body, timeout)

    def set_address(self, peer_id: int, address: Address) -> None:
        self.transport.set_address(peer_id, address)


class RaftGroup:
    """A group of a RaftHost: made by `RaftHost.create_group`, gone with `destroy_group`."""

    def __init__(self, host: GroupHost, group_id: int, config: GroupConfig, apply: Apply,
                 snapshot: SnapshotHook, restore: Callable[[bytes], None]) -> None:
        config.check()
        self.host = host
        self.group_id = group_id
        self.config = config
        self.id = host.node_id
        self.addresses: dict[int, Address] = dict(host.addresses)  # the replicated book
        self.storage: DiskStorage | None = None
        self.node: Node | None = None
        self.link = _Link(host.transport, group_id)
        self.waiters = Waiters()
        self.proposer = Proposer(self)
        self.applier = Applier(self, apply, snapshot, restore)
        self.snapshots: SnapshotTransfers | None = None  # made by open()
        self.stopping = False
        self.stats = {"readies": 0, "proposals": 0, "applied_entries": 0, "snapshots": 0,
                      "leader_changes": 0}  # a new known leader, as this node learns it
        self._known_leader = NONE

    @property
    def applied(self) -> int:
        """The last index applied here (entries or a snapshot)."""
        return self.applier.applied

    def live_node(self) -> Node:
        if self.node is None:
            raise RuntimeError("the group is not open")
        return self.node

    def wake(self) -> None:
        """Something changed: look at this group in the host's next Ready pass."""
        self.host.mark(self)

    # -- life (called by the host) -------------------------------------------------------------

    def open(self) -> None:
        """Open the storage, restore the snapshot and build the node."""
        cfg = self.config
        cfg.directory.mkdir(parents=True, exist_ok=True)
        self.storage = DiskStorage.open(cfg.directory)
        self.snapshots = SnapshotTransfers(cfg.directory, self.id)
        if cfg.machine_applied > self.storage.last_index():
            self._skip_lost_tail(cfg.machine_applied)
        snap = self.storage.snapshot()
        if snap.index:
            self.applier.restore(snap)
        options = dict(cfg.raft_options)
        raft_config = Config(id=self.id, peers=tuple(sorted(cfg.founders)),
                             election_tick=cfg.election_tick,
                             heartbeat_tick=cfg.heartbeat_tick, **options)
        seed = None if cfg.seed is None else cfg.seed * 1_000_003 + self.group_id
        self.node = Node(raft_config, self.storage, random.Random(seed))
        self.applier.applied = self.node.applied
        log.info("raft: node %d group %d opened at applied %d (log %d..%d, snapshot %d, term "
                 "%d)", self.id, self.group_id, self.applied, self.storage.first_index(),
                 self.storage.last_index(), snap.index, self.node.term)

    def _skip_lost_tail(self, index: int) -> None:
        """The machine applied entries up to `index`, past the log's end: the log lost
        them (see GroupConfig.machine_applied). Only a single member can be in that state
        safely (no other node holds those indexes); the log restarts after `index` with a
        snapshot of the machine there."""
        assert self.storage is not None
        if tuple(self.config.founders) != (self.id,) or self.storage.snapshot().voters not in (
                (), (self.id,)):
            raise ConfigError(ERR_MACHINE_AHEAD.format(self.group_id, index,
                                                       self.storage.last_index()))
        log.warning("raft: node %d group %d: the state machine applied up to %d, the log "
                    "ends at %d (lost in a power cut); the log starts after %d", self.id,
                    self.group_id, index, self.storage.last_index(), index)
        self.storage.skip_to(index, (self.id,), self.applier.snapshot_fill())

    async def close(self) -> None:
        """Stop taking requests, wait for a snapshot in flight, fail what waits, close the
        storage. The host calls it after its Ready loop stopped or for a destroyed group."""
        self.stopping = True
        await self.applier.snapshot_drain()
        self.waiters.fail_all(ProposalUnknown("the group stopped"))
        if self.snapshots is not None:
            self.snapshots.close()
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
        node = self.live_node()
        self.applier.settle_snapshot()
        if self.stopping or not node.has_ready():
            return None
        rd = node.ready()
        soft = rd.soft_state
        if soft is not None:
            log.info("raft: node %d group %d is %s in term %d, leader %s", self.id,
                     self.group_id, soft.role.value, node.term, soft.lead or "unknown")
            if soft.role is not Role.LEADER and self.snapshots is not None:
                self.snapshots.leadership_lost()
            if soft.lead not in (NONE, self._known_leader):
                self._known_leader = soft.lead
                self.stats["leader_changes"] += 1
        return rd

    def outgoing(self, rd: Ready) -> list[Message]:
        """The messages to send for `rd` (the host batches them per peer); a snapshot is
        not sent as a message but streamed (core/raft/group_snapshots.py)."""
        out = []
        for msg in rd.messages:
            if isinstance(msg, SnapshotRequest) and self.snapshots is not None:
                self.snapshots.start(msg)
            else:
                out.append(msg)
        return out

    def finish(self, rd: Ready) -> None:
        """Steps 3 and 4 after the host persisted and sent `rd`: apply, advance, snapshot."""
        node = self.live_node()
        self.applier.apply(rd)
        node.advance(rd)
        self.stats["readies"] += 1
        self.applier.maybe_snapshot()

    def step_wire(self, peer_id: int, wire: Any) -> None:
        """A Raft message for this group from node `peer_id`; bad ones are dropped."""
        node = self.node
        if node is None or self.stopping:
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
        self.wake()

    async def on_request(self, peer_id: int, body: Any) -> Any:
        """A follower forwards a command: run it if we lead, else say who does."""
        if not isinstance(body, dict) or body.get("op") not in FORWARDED_OPS:
            raise RequestRefused("unknown request")
        if self.stopping or self.node is None or self.node.role is not Role.LEADER:
            return {"not_leader": self.node.lead if self.node else NONE}
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                index, result = await self.proposer.run_here(body)
        except NotLeader as exc:
            return {"not_leader": exc.leader}
        except ProposalDropped as exc:  # definitely not committed: the follower may retry
            return {"dropped": str(exc)}
        except (ProposalUnknown, TimeoutError) as exc:  # may or may not be committed
            return {"unknown": str(exc) or "no outcome in time"}
        except ValueError as exc:  # refused by the rules (a voter added twice)
            return {"refused": str(exc)}
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
        body = {"op": "propose", "data": bytes(data)}
        index, _ = await self.proposer.submit(body, forward, timeout)
        return index

    async def execute(self, data: bytes, *, forward: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """Like `propose`, but return what `apply` returned for this entry (on the leader;
        it must be msgpack-encodable when forwarded)."""
        body = {"op": "propose", "data": bytes(data)}
        _, result = await self.proposer.submit(body, forward, timeout)
        return result

    async def read_barrier(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait until reads of the local state machine are linearizable (Raft read index,
        confirmed by a quorum of heartbeats); return that index. Works on followers too.
        Raises TimeoutError (no leader, or no quorum), ProposalUnknown (stopped)."""
        node = self.live_node()
        reads = self.waiters.reads
        async with asyncio.timeout(timeout):
            while True:
                if self.stopping:
                    raise ProposalUnknown("the group is stopping")
                ctx = self.waiters.next_ctx()
                future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                reads[ctx] = future
                try:
                    try:
                        node.read_index(ctx)
                    except NotLeader:
                        await asyncio.sleep(self.config.tick_s)
                        continue
                    self.wake()
                    attempt = self.config.tick_s * self.config.election_tick * 2
                    try:
                        async with asyncio.timeout(attempt):
                            return await future
                    except TimeoutError:
                        continue  # leadership changed and the request was lost: ask again
                finally:
                    reads.pop(ctx, None)

    def reads_ready(self) -> bool:
        """True when a read of the local state machine is linearizable right now, with no
        round trip: this node leads a group whose only voter it is (no other leader can
        exist), its term's first entry is committed, and everything committed is applied.
        A caller that gets False uses `read_barrier`."""
        node = self.node
        if node is None or node.role is not Role.LEADER or node.voters != {self.id}:
            return False
        committed = node.log.committed
        return committed >= node.term_start_index and self.applied >= committed

    async def transfer_leadership(self, to: int | None = None,
                                  timeout: float | None = None) -> int:
        """Hand leadership to voter `to` (default: the most up-to-date other voter); return
        the new leader's id once this node knows it. Raises NotLeaderError, TimeoutError."""
        node = self.live_node()
        if node.role is not Role.LEADER:
            raise self.proposer.not_leader()
        others = sorted(node.voters - {self.id})
        if not others:
            return self.id
        if to is None:
            to = max(others, key=lambda v: (node.progress[v].match, -v))
        node.transfer_leadership(to)
        self.wake()
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
        index, _ = await self.proposer.submit(body, forward, timeout)
        return index

    async def remove_node(self, node_id: int, *, forward: bool = False,
                          timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Remove voter `node_id`; return the change's index once applied here."""
        index, _ = await self.proposer.submit({"op": "remove", "id": node_id}, forward, timeout)
        return index

    def status(self) -> dict[str, Any]:
        """A snapshot of this node's view of the group, for INFO/STATUS commands and tests."""
        node = self.live_node()
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
            "fsyncs": storage.fsyncs, "pending_proposals": len(self.waiters.entries),
            "connected_peers": sorted(k for k in node.voters
                                      if k != self.id and self.host.transport.connected(k)),
            "quiesced": node.quiesced,
            **self.stats,
            **(self.snapshots.stats if self.snapshots is not None else {}),
        }
