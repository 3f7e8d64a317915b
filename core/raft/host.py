"""Many Raft groups in one process: one data-directory lock, one node-to-node port, one
ticker, one Ready loop, one group commit per loop pass.

`RaftHost` owns what the groups of a process share; each `RaftGroup` (core/raft/group.py)
owns its node, storage and API. Groups are created and destroyed at run time
(`create_group`, `destroy_group`), each in its own directory under the node's
(`<data_dir>/groups/<id>/` unless the caller names one).

The Ready loop takes the Readies of every group that something touched since its last
pass (a message, a proposal, a tick: `mark`), then in the order core/raft/ready.py
documents:
1. persists them all: the log writes of every group go to a thread pool together, one
   write and at most one fsync per file touched (a group commit across groups); a group
   with fsync "everysec" skips its fsync and the host syncs it once a second;
2. sends their messages, batched per peer into one frame per pass (`[[group, message],
   ...]` on the "raft" service of core/rpc), so many groups share one connection and one
   write;
3. applies and advances each group (and takes its snapshots).

Idle groups cost nothing: with `quiesce` on, a group whose leader saw everyone caught up
stops ticking (core/raft/node.py); the host then only checks, once a tick, that the peer
nodes are alive. Every node sends each peer at least one frame per heartbeat interval (an
empty batch when it had nothing else to say), and a quiesced follower whose leader's node
has not been heard from for an election timeout is woken (`Node.wake`), so it elects a new
leader as usual. This is the node-level liveness of CockroachDB's quiescence: one message
per peer pair per heartbeat, instead of one per group.

A storage failure or a broken invariant in any group is fatal: the host stops and `wait()`
raises it; the process must exit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.raft.driver_types import Apply, SnapshotHook
from core.raft.group import FSYNC_EVERYSEC, SERVICE, GroupConfig, RaftGroup
from core.raft.group_snapshots import SNAPSHOT_SERVICE
from core.raft.ready import Ready, Role
from core.rpc import Address, RpcError, UnknownGroup
from core.rpc.router import NodeTransport
from core.storage import DataDirLock

__all__ = ["HostConfig", "RaftHost"]

log = logging.getLogger("core.raft.host")

GROUPS_DIR = "groups"
EVERYSEC_S = 1.0
FSYNC_THREADS = 8  # group logs written and fsynced at once in a pass (one fsync per file touched)
MAX_BATCH_BYTES = 4 * 1024 * 1024  # a per-peer batch is cut into frames of about this size
MESSAGE_OVERHEAD = 64  # bytes of a message's fields, as an estimate when cutting batches
ENTRY_OVERHEAD = 32  # bytes of an entry's index, term and type


@dataclass(frozen=True)
class HostConfig:
    """Settings of one process's Raft node. `peers` maps node ids to node-to-node
    addresses (this node's own entry is ignored). `tick_s` is one logical tick of every
    group; `election_tick` is also the node-liveness timeout in ticks, and `heartbeat_tick`
    the interval of the per-peer liveness frame."""

    node_id: int
    data_dir: Path
    listen: Address
    peers: Mapping[int, Address] = field(default_factory=dict)
    secret: str | bytes | None = None
    tick_s: float = 0.02
    election_tick: int = 15
    heartbeat_tick: int = 2
    fsync_in_thread: bool = True
    rpc_options: Mapping[str, Any] = field(default_factory=dict)  # more Peer options


class RaftHost:
    """See the module header. `await start()`, `create_group(...)`, use, `await stop()`."""

    def __init__(self, config: HostConfig, transport: NodeTransport | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.addresses: dict[int, Address] = {k: (v[0], v[1]) for k, v in config.peers.items()}
        self.addresses[self.node_id] = (config.listen[0], config.listen[1])
        self._own_transport = transport is None
        self.transport = transport or NodeTransport(
            config.node_id, config.listen, self.addresses, config.secret, **config.rpc_options)
        self.groups: dict[int, RaftGroup] = {}
        self._dirty: dict[int, RaftGroup] = {}  # touched since the last pass, in order
        self._awake: dict[int, RaftGroup] = {}  # maybe not quiesced: the ticker's groups
        self._streaming: dict[int, RaftGroup] = {}  # with a snapshot transfer under way
        self._wake = asyncio.Event()
        self._lock: DataDirLock | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._closed = False
        self._done: asyncio.Future[None] | None = None
        self._sent_since_beat: set[int] = set()
        self._down: frozenset[int] = frozenset()  # peer nodes not heard from lately
        self.stats = {"passes": 0, "readies": 0, "fsync_batches": 0, "frames_sent": 0,
                      "messages_sent": 0, "beats_sent": 0, "unknown_group_messages": 0,
                      "woken_groups": 0}

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the data directory, listen, start ticking. Raises DataDirLockedError,
        InsecureConfig, OSError (port in use)."""
        self._done = asyncio.get_running_loop().create_future()
        self._lock = DataDirLock.acquire(self.config.data_dir)
        try:
            self.transport.register(SERVICE, self)
            self.transport.register(SNAPSHOT_SERVICE, _SnapshotService(self))
            if self._own_transport:
                await self.transport.start()
        except BaseException:
            self._lock.release()
            raise
        self._pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="raft-fsync")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ready_loop()), loop.create_task(self._ticker()),
                       loop.create_task(self._everysec())]

    async def stop(self, transfer: bool = True) -> None:
        """Graceful: hand over the groups this node leads (if `transfer`), stop ticking,
        finish the pass in progress, close every group, the transport and the lock."""
        if self._stopping or self._done is None:
            return
        if transfer:
            await self.hand_over()
        self._stopping = True
        await self._shutdown()
        if not self._done.done():
            self._done.set_result(None)

    async def hand_over(self) -> None:
        """Hand leadership of every group this node leads to another voter."""
        await asyncio.gather(*(g.hand_over() for g in list(self.groups.values())))

    async def wait(self) -> None:
        """Until the host stops; raises the fatal error if it stopped on one."""
        assert self._done is not None, "start() first"
        await asyncio.shield(self._done)

    @property
    def failed(self) -> bool:
        return self._done is not None and self._done.done() and \
            self._done.exception() is not None

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not asyncio.current_task()),
                             return_exceptions=True)
        for group in list(self.groups.values()):
            await group.close()
        if self._own_transport:
            await self.transport.close()
        self.transport.router.unregister(SERVICE)
        self.transport.router.unregister(SNAPSHOT_SERVICE)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._lock is not None:
            self._lock.release()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("raft: node %d stops on a fatal error: %r", self.node_id, exc)
        self._stopping = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        asyncio.get_running_loop().create_task(self._shutdown())

    # -- groups --------------------------------------------------------------------------------

    def group_config(self, group_id: int, founders: tuple[int, ...] = (),
                     **options: Any) -> GroupConfig:
        """A GroupConfig in this node's directory, with the host's timing; its groups
        quiesce when idle unless `raft_options` says `quiesce=False`."""
        cfg = self.config
        options.setdefault("directory", cfg.data_dir / GROUPS_DIR / str(group_id))
        options["raft_options"] = {"quiesce": True, **options.get("raft_options", {})}
        return GroupConfig(founders=founders, tick_s=cfg.tick_s,
                           election_tick=cfg.election_tick,
                           heartbeat_tick=cfg.heartbeat_tick, **options)

    def create_group(self, group_id: int, config: GroupConfig, apply: Apply,
                     snapshot: SnapshotHook, restore: Callable[[bytes], None]) -> RaftGroup:
        """Open (or create) group `group_id` with its state machine; it starts at once.
        ValueError if it exists here; ConfigError, CorruptLogError as its storage."""
        if self._stopping:
            raise RuntimeError("the host is stopping")
        if group_id in self.groups:
            raise ValueError(f"group {group_id} already exists on node {self.node_id}")
        group = RaftGroup(self, group_id, config, apply, snapshot, restore)
        group.open()
        assert group.node is not None
        group.node.set_down_peers(self._down)
        self.groups[group_id] = group
        self.mark(group)
        return group

    async def destroy_group(self, group_id: int, remove_files: bool = True) -> None:
        """Stop group `group_id` here (a replica removed from it) and delete its files."""
        group = self.groups.pop(group_id, None)
        if group is None:
            return
        self._dirty.pop(group_id, None)
        self._awake.pop(group_id, None)
        self._streaming.pop(group_id, None)
        await group.close()
        if remove_files:
            await asyncio.to_thread(shutil.rmtree, group.config.directory, True)
        log.info("raft: node %d destroyed group %d", self.node_id, group_id)

    def group(self, group_id: int) -> RaftGroup | None:
        return self.groups.get(group_id)

    def group_ids(self) -> list[int]:
        return sorted(self.groups)

    def mark(self, group: RaftGroup) -> None:
        """Something touched `group`: look at it in the next pass of the Ready loop."""
        self._dirty[group.group_id] = group
        self._awake[group.group_id] = group
        self._wake.set()

    # -- core/rpc service "raft" ---------------------------------------------------------------

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        """A batch `[[group, message], ...]` from node `peer_id` (empty: a liveness beat)."""
        if self._stopping or not isinstance(payload, list):
            return
        groups = self.groups
        for item in payload:
            if not isinstance(item, list | tuple) or len(item) != 2:
                continue
            group = groups.get(item[0])
            if group is None:
                self.stats["unknown_group_messages"] += 1
                continue
            try:
                group.step_wire(peer_id, item[1])
            except Exception as exc:  # a broken invariant in the node
                self._fatal(exc)
                return

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        group = self.groups.get(group_id)
        if group is None:
            raise UnknownGroup(SERVICE, group_id)
        return await group.on_request(peer_id, payload)

    # -- ticking and liveness ------------------------------------------------------------------

    async def _ticker(self) -> None:
        cfg = self.config
        beat_every = max(1, cfg.heartbeat_tick)
        ticks = 0
        while not self._stopping:
            await asyncio.sleep(cfg.tick_s)
            ticks += 1
            self._tick_awake()
            self._tick_streams()
            if ticks % beat_every == 0:
                self._beat()
                self._check_liveness()

    def _tick_awake(self) -> None:
        """Tick the groups that may be awake; forget those found quiesced. A group can only
        wake through a step, a proposal or `wake()`, each of which marks it, and marking
        puts it back here (`mark`), so idle groups cost nothing per tick."""
        for gid, group in list(self._awake.items()):
            node = group.node
            if node is None or node.quiesced:
                del self._awake[gid]
                continue
            node.tick()
            self.mark(group)

    def _tick_streams(self) -> None:
        for gid, group in list(self._streaming.items()):
            transfers = group.snapshots
            if transfers is None or not transfers.active:
                del self._streaming[gid]
                continue
            transfers.tick()
            self.flush_snapshots(group)

    def _beat(self) -> None:
        """One empty frame to each peer this node said nothing to since the last beat."""
        quiet = [p for p in self.addresses if p != self.node_id
                 and p not in self._sent_since_beat]
        self._sent_since_beat.clear()
        for peer in quiet:
            self.transport.send(peer, SERVICE, 0, [])
            self.stats["beats_sent"] += 1

    def _check_liveness(self) -> None:
        """Node liveness: a peer not heard from for an election timeout is down. Wake
        quiesced followers whose leader's node is down, so they elect another leader; tell
        the groups when the set of down nodes changes. Only while some peer is down are the
        groups looked at."""
        cfg = self.config
        timeout = cfg.tick_s * cfg.election_tick
        dead = frozenset(p for p in self.addresses
                         if p != self.node_id and not self.transport.heard_within(p, timeout))
        if dead != self._down:
            self._liveness_changed(dead)
        if not dead:
            return
        for group in self.groups.values():
            node = group.node
            if node is None or not node.quiesced or node.role is Role.LEADER:
                continue
            if node.lead in dead:
                node.wake()
                self.stats["woken_groups"] += 1
                self.mark(group)

    def _liveness_changed(self, down: frozenset[int]) -> None:
        """Tell every group which peer nodes are down (their leaders may then quiesce
        without them), and wake the quiesced leaders of groups a returning node belongs to,
        so they catch it up."""
        back = self._down - down
        self._down = down
        for group in self.groups.values():
            node = group.node
            if node is None:
                continue
            node.set_down_peers(down)
            if back and node.quiesced and node.role is Role.LEADER and back & node.voters:
                node.wake()
                self.mark(group)

    async def _everysec(self) -> None:
        while not self._stopping:
            await asyncio.sleep(EVERYSEC_S)
            lazy = [g.storage for g in self.groups.values()
                    if g.config.fsync == FSYNC_EVERYSEC and g.storage is not None
                    and g.storage.unsynced]
            for storage in lazy:
                try:
                    await asyncio.to_thread(storage.sync)
                except Exception as exc:  # an fsync error is fatal, never retried
                    self._fatal(exc)
                    return

    # -- the Ready loop ------------------------------------------------------------------------

    async def _ready_loop(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while self._dirty and not self._stopping:
                    await self._pass()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # storage failure, broken invariant, failing application
            self._fatal(exc)

    async def _pass(self) -> None:
        dirty, self._dirty = self._dirty, {}
        batch: list[tuple[RaftGroup, Ready]] = []
        for group in dirty.values():
            rd = group.take_ready()
            if rd is not None:
                batch.append((group, rd))
        if not batch:
            return
        self.stats["passes"] += 1
        self.stats["readies"] += len(batch)
        await self._persist(batch)
        if self._stopping:
            return  # a fatal error meanwhile: send and apply nothing more
        self._send(batch)
        for group, rd in batch:
            group.finish(rd)
            self.mark(group)  # it may have more (a capped batch of committed entries)

    async def _persist(self, batch: list[tuple[RaftGroup, Ready]]) -> None:
        threaded: list[tuple[RaftGroup, Ready]] = []
        for group, rd in batch:
            storage = group.storage
            assert storage is not None
            if rd.snapshot is not None:
                await group.applier.snapshot_yield()
                storage.persist(rd)
            elif rd.must_sync and self.config.fsync_in_thread:
                threaded.append((group, rd))
            else:
                storage.write(rd, fsync=group.config.fsync != FSYNC_EVERYSEC)
                storage.remember(rd)
        if not threaded:
            return
        self.stats["fsync_batches"] += 1
        loop = asyncio.get_running_loop()
        writes = [loop.run_in_executor(self._pool, _write, g, rd) for g, rd in threaded]
        results = await asyncio.gather(*writes, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for group, rd in threaded:  # the in-memory copy is only updated on the loop
            assert group.storage is not None
            group.storage.remember(rd)

    def _send(self, batch: list[tuple[RaftGroup, Ready]]) -> None:
        outbox: dict[int, list[list[Any]]] = defaultdict(list)
        senders: dict[int, list[tuple[RaftGroup, Any]]] = defaultdict(list)
        for group, rd in batch:
            for msg in group.outgoing(rd):
                outbox[msg.to].append([group.group_id, msg.to_wire()])
                senders[msg.to].append((group, msg))
        for peer, items in outbox.items():
            delivered = self._send_items(peer, items)
            self._sent_since_beat.add(peer)
            if not delivered:
                for group, _ in senders[peer]:
                    assert group.node is not None
                    group.node.report_unreachable(peer)
        for group, _ in batch:
            self.flush_snapshots(group)

    def flush_snapshots(self, group: RaftGroup) -> None:
        """Send the group's snapshot payloads that are due (chunks, acks, nacks)."""
        transfers, node = group.snapshots, group.node
        if transfers is None or node is None:
            return
        if transfers.active:
            self._streaming[group.group_id] = group
        for to, payload in transfers.drain(node):
            self.transport.send(to, SNAPSHOT_SERVICE, group.group_id, payload)
            self._sent_since_beat.add(to)

    def _send_items(self, peer: int, items: list[list[Any]]) -> bool:
        delivered = True
        for chunk in _chunks(items):
            try:
                ok = self.transport.send(peer, SERVICE, 0, chunk)
            except RpcError as exc:  # too large for a frame, or the peer is closed
                log.warning("raft: cannot send %d messages to node %d: %s", len(chunk), peer,
                            exc)
                ok = False
            self.stats["frames_sent"] += 1
            self.stats["messages_sent"] += len(chunk)
            delivered = delivered and ok
        return delivered

    def status(self) -> dict[str, Any]:
        """The node's figures across groups, for INFO and benchmarks."""
        groups = list(self.groups.values())
        return {
            "node_id": self.node_id, "groups": len(groups),
            "leading": sum(1 for g in groups if g.node is not None
                           and g.node.role is Role.LEADER),
            "quiesced": sum(1 for g in groups if g.node is not None and g.node.quiesced),
            "fsyncs": sum(g.storage.fsyncs for g in groups if g.storage is not None),
            "applied_entries": sum(g.stats["applied_entries"] for g in groups),
            **self.stats,
        }


class _SnapshotService:
    """The core/rpc service "raft.snap": snapshot chunks and their replies, by group."""

    def __init__(self, host: RaftHost) -> None:
        self.host = host

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        group = self.host.groups.get(group_id)
        if group is None or group.snapshots is None or group.node is None or group.stopping:
            return
        group.snapshots.on_payload(peer_id, payload, group.node)
        self.host.flush_snapshots(group)
        self.host.mark(group)

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        raise UnknownGroup(SNAPSHOT_SERVICE, group_id)  # the service takes messages only


def _write(group: RaftGroup, rd: Ready) -> None:
    """In a pool thread: the group's log write and (policy permitting) its fsync."""
    assert group.storage is not None
    group.storage.write(rd, fsync=group.config.fsync != FSYNC_EVERYSEC)


def _chunks(items: list[list[Any]]) -> list[list[list[Any]]]:
    """Cut a per-peer batch so no frame carries much more than MAX_BATCH_BYTES."""
    out: list[list[list[Any]]] = [[]]
    size = 0
    for item in items:
        weight = _weight(item[1])
        if out[-1] and size + weight > MAX_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += weight
    return out


def _weight(wire: Any) -> int:
    """An estimate of a wire message's encoded size: entries' data dominate the rest."""
    entries = wire.get("entries") if isinstance(wire, dict) else None
    if not entries:
        return MESSAGE_OVERHEAD
    return MESSAGE_OVERHEAD + sum(ENTRY_OVERHEAD + len(e[3]) for e in entries)
