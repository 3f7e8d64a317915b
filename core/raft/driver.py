"""The thin asyncio driver around core.raft.Node: timer, disk, network, and an API.

One `RaftDriver` owns a Node, its DiskStorage (fsync on, data directory flock'ed), an
RpcServer for incoming Raft traffic and an RpcClient with one Peer per other node. Three
tasks feed the node: the ticker (`tick_s`), the RpcServer (messages -> `node.step`), and
the application (`propose`, `read_barrier`, ...). One task runs the Ready loop in the order
core/raft/ready.py documents:
1. persist entries + hard state with one fsync per Ready (a group commit: every proposal
   made since the previous Ready shares it). With `fsync_in_thread` the write and fsync run
   in a worker thread while the loop keeps stepping messages and taking proposals;
2. send the messages (a Peer that is down makes the leader probe: report_unreachable);
3. restore a received snapshot, apply committed entries through `apply`, answer reads;
4. advance; then take a snapshot every `snapshot_every` applied entries and compact (an
   encoder the application returns runs in a thread: core/raft/driver_apply.py).

The application gives three callbacks: `apply(entries)` gets [(index, data), ...] in log
order and returns one result per entry (or None); `snapshot()`, which returns the blob or,
to have it encoded and written in a worker thread, an encoder of a view it captured
(driver_types.SnapshotHook); and `restore(bytes)`. Its API: `propose`/`execute`
(optionally forwarded to the leader), `read_barrier`, `transfer_leadership`,
`add_node`/`remove_node`, `status`, `stop`:

    driver = RaftDriver(DriverConfig(node_id=1, data_dir=..., listen=("127.0.0.2", 7002),
                                     peers={...}, founders=(1, 2, 3), secret=...),
                        machine.apply, machine.snapshot, machine.restore)
    await driver.start()
    index = await driver.propose(b"command")      # applied here when it returns
Entry data carries a one-byte tag: TAG_APP for application commands (the application sees
only the bytes after it) and TAG_ADDRESS for the replicated address book (node id ->
host:port), so a node added at run time becomes reachable from every member. Snapshots
wrap the application's blob with the address book (core/raft/driver_types.py).

Errors: NotLeaderError (leader id and address) when this node cannot take a request,
ProposalDropped when an entry was overwritten by another leader, ProposalUnknown when the
outcome cannot be known (timeout, connection lost to the leader). A storage failure or a
broken invariant is fatal: the driver stops and `wait()` raises it; the process must exit.

Modules by role: this one holds life, the API, the network handler and the Ready loop;
core/raft/driver_propose.py submits, forwards and waits for proposals;
core/raft/driver_apply.py applies committed entries, the address book, configuration
changes and snapshots; core/raft/driver_types.py holds the settings, errors and formats.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

from core.raft.config import Config
from core.raft.disk import DiskStorage
from core.raft.driver_apply import ApplySide
from core.raft.driver_propose import ProposeSide
from core.raft.driver_types import (
    DEFAULT_TIMEOUT_S,
    Apply,
    DriverConfig,
    NotLeaderError,
    ProposalUnknown,
    SnapshotHook,
    fail_future,
    format_address,
)
from core.raft.errors import NotLeader, RaftError, WireError
from core.raft.messages import NONE, Snapshot, SnapshotRequest, message_from_wire
from core.raft.node import Node
from core.raft.ready import Ready, Role
from core.rpc import Address, RequestRefused, RpcClient, RpcError, RpcServer
from core.storage import DataDirLock

__all__ = [
    "DriverConfig",
    "NotLeaderError",
    "ProposalUnknown",
    "RaftDriver",
]

log = logging.getLogger("core.raft.driver")


class RaftDriver(ProposeSide, ApplySide):
    """See the module header. Create, `await start()`, use, `await stop()`."""

    def __init__(self, config: DriverConfig, apply: Apply, snapshot: SnapshotHook,
                 restore: Callable[[bytes], None]) -> None:
        self.config = config
        self.id = config.node_id
        self._apply_fn, self._snapshot_fn, self._restore_fn = apply, snapshot, restore
        self.addresses: dict[int, Address] = {k: (v[0], v[1]) for k, v in config.peers.items()}
        self.addresses[self.id] = (config.listen[0], config.listen[1])
        self._lock: DataDirLock | None = None
        self.storage: DiskStorage | None = None
        self.node: Node | None = None
        self.server: RpcServer | None = None
        self.rpc: RpcClient | None = None
        self.applied = 0
        self._waiters: dict[int, tuple[int, asyncio.Future[tuple[int, Any]]]] = {}
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # heap
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_task: asyncio.Task[Snapshot | None] | None = None
        self._snapshot_skip = False
        self._stopping = False
        self._closed = False
        self._failure: BaseException | None = None
        self._done: asyncio.Future[None] | None = None
        self.stats = {"readies": 0, "proposals": 0, "applied_entries": 0, "snapshots": 0}

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock and open the data directory, restore, listen, and start ticking.

        Raises DataDirLockedError, CorruptLogError, InsecureConfig, OSError (port in use).
        """
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._lock = DataDirLock.acquire(cfg.data_dir)
        try:
            self.storage = DiskStorage.open(cfg.data_dir)
            snap = self.storage.snapshot()
            if snap.index:
                self._restore(snap)
            raft_config = Config(id=self.id, peers=tuple(sorted(cfg.founders)),
                                 election_tick=cfg.election_tick,
                                 heartbeat_tick=cfg.heartbeat_tick, **cfg.raft_options)
            self.node = Node(raft_config, self.storage, random.Random(cfg.seed))
            self.applied = self.node.applied
            self.rpc = RpcClient(self.id, cfg.secret, {k: v for k, v in self.addresses.items()
                                                       if k != self.id}, **cfg.rpc_options)
            self.server = RpcServer(self.id, cfg.listen[0], cfg.listen[1], cfg.secret, self)
            await self.server.start()
        except BaseException:
            if self.storage is not None:
                self.storage.close()
            self._lock.release()
            raise
        self._tasks = [loop.create_task(self._ready_loop()), loop.create_task(self._ticker())]
        log.info("raft: node %d started at applied %d (log %d..%d, snapshot %d, term %d)",
                 self.id, self.applied, self.storage.first_index(), self.storage.last_index(),
                 snap.index, self.node.term)
        self._wake.set()

    async def stop(self, transfer: bool = True) -> None:
        """Graceful shutdown: hand leadership over (if `transfer` and we lead), stop ticking,
        finish the Ready in progress, close the network, fail what still waits, close the
        storage and release the data directory. Idempotent."""
        if self._stopping or self.node is None:
            return
        if transfer:
            await self.hand_over()
        self._stopping = True
        await self._shutdown()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def hand_over(self) -> None:
        """If this node leads a cluster of several, hand leadership to another voter (a
        failure is logged: the cluster then elects after the election timeout). An
        application stopping calls this first, before draining its clients' requests, so
        the cluster is not without a leader while they finish."""
        node = self.node
        if node is None or node.role is not Role.LEADER or len(node.voters) < 2:
            return
        try:
            new = await self.transfer_leadership()
            log.info("raft: node %d handed leadership to node %d", self.id, new)
        except (RaftError, TimeoutError) as exc:
            log.warning("raft: node %d could not hand over leadership: %r", self.id, exc)

    async def wait(self) -> None:
        """Until the driver stops; raises the fatal error if it stopped on one."""
        assert self._done is not None, "start() first"
        await asyncio.shield(self._done)

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()  # the Ready loop finishes the Ready in progress, then returns
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not asyncio.current_task()),
                             return_exceptions=True)
        await self._snapshot_drain()
        if self.server is not None:
            await self.server.close()
        if self.rpc is not None:
            await self.rpc.close()
        stopped = ProposalUnknown("the driver stopped")
        futures: list[asyncio.Future[Any]] = [f for _, f in self._waiters.values()]
        futures += [f for _, _, f in self._apply_waiters] + list(self._reads.values())
        for future in futures:
            fail_future(future, stopped)
        if self.storage is not None:
            self.storage.close()
        if self._lock is not None:
            self._lock.release()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("raft: node %d stops on a fatal error: %r", self.id, exc)
        self._stopping = True
        self._failure = exc
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        asyncio.get_running_loop().create_task(self._shutdown())

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
        """A snapshot of this node's view, for INFO/STATUS commands and tests."""
        node = self._node()
        storage = self.storage
        assert storage is not None and self.rpc is not None
        return {
            "id": self.id, "role": node.role.value, "term": node.term, "leader": node.lead,
            "leader_address": format_address(self.addresses.get(node.lead)),
            "commit": node.committed,
            "applied": self.applied, "last_index": node.log.last_index(),
            "snapshot_index": storage.snapshot().index, "first_index": storage.first_index(),
            "members": sorted(node.voters),
            "addresses": {k: format_address(v) for k, v in sorted(self.addresses.items())},
            "fsyncs": storage.fsyncs, "pending_proposals": len(self._waiters),
            "connected_peers": sorted(k for k, p in self.rpc.peers.items() if p.connected),
            **self.stats,
        }

    # -- RpcHandler ----------------------------------------------------------------------------

    def on_message(self, peer_id: int, body: Any) -> None:
        node = self.node
        if node is None or self._stopping:
            return
        try:
            msg = message_from_wire(body)
        except WireError as exc:
            log.warning("raft: dropping a bad message from node %d: %s", peer_id, exc)
            return
        if msg.frm != peer_id or msg.to != self.id:
            log.warning("raft: dropping a message %d->%d that came from node %d", msg.frm,
                        msg.to, peer_id)
            return
        try:
            node.step(msg)
        except RaftError as exc:
            self._fatal(exc)
            return
        self._wake.set()

    async def on_request(self, peer_id: int, body: Any) -> Any:
        """A follower forwards a command: run it if we lead, else say who does."""
        if not isinstance(body, dict) or body.get("op") not in ("propose", "add", "remove"):
            raise RequestRefused("unknown request")
        if self._stopping or self.node is None or self.node.role is not Role.LEADER:
            return {"not_leader": self.node.lead if self.node else NONE}
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                index, result = await self._run_here(body)
        except NotLeader as exc:
            return {"not_leader": exc.leader}
        return {"index": index, "result": result}

    # -- the Ready loop ------------------------------------------------------------------------

    async def _ticker(self) -> None:
        node = self._node()
        while not self._stopping:
            await asyncio.sleep(self.config.tick_s)
            node.tick()
            self._wake.set()

    async def _ready_loop(self) -> None:
        node = self._node()
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                self._settle_snapshot()
                while node.has_ready() and not self._stopping:
                    rd = node.ready()
                    self._observe(rd)
                    await self._persist(rd)
                    if self._failure is not None:
                        return  # a fatal error meanwhile: send and apply nothing more
                    self._send(rd)
                    self._apply(rd)
                    node.advance(rd)
                    self.stats["readies"] += 1
                    self._maybe_snapshot()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # storage failure, broken invariant, failing application
            self._fatal(exc)

    def _observe(self, rd: Ready) -> None:
        soft = rd.soft_state
        if soft is not None:
            node = self._node()
            log.info("raft: node %d is %s in term %d, leader %s", self.id, soft.role.value,
                     node.term, soft.lead or "unknown")

    async def _persist(self, rd: Ready) -> None:
        storage = self.storage
        assert storage is not None
        if rd.snapshot is not None:
            await self._snapshot_yield()
        if rd.snapshot is not None or not rd.must_sync or not self.config.fsync_in_thread:
            storage.persist(rd)
            return
        # The file write and fsync run in a thread; the in-memory copy, which the node
        # reads, is only updated here on the loop.
        await asyncio.to_thread(storage.write, rd)
        storage.remember(rd)

    def _send(self, rd: Ready) -> None:
        node, rpc = self._node(), self.rpc
        assert rpc is not None
        for msg in rd.messages:
            try:
                delivered = rpc.send(msg.to, msg.to_wire())
            except RpcError as exc:  # too large for a frame, or the peer is closed
                log.warning("raft: cannot send %s to node %d: %s", type(msg).__name__, msg.to,
                            exc)
                delivered = False
            if not delivered:
                node.report_unreachable(msg.to)
            if isinstance(msg, SnapshotRequest):
                node.report_snapshot(msg.to, delivered)
