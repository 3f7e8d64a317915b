"""The Raft driver's apply side: committed entries, address book, conf changes, snapshots.

`ApplySide` is a base class of `core.raft.driver.RaftDriver` (as `LeaderRole` is of
`Node`); it holds step 3 of the Ready loop and the snapshots of step 4 (taken on the loop or
encoded and written in a worker thread: see "snapshots" below), and the driver
holds the rest (life, API, proposals, network). Committed entries go to the application's
`apply` in batches of consecutive TAG_APP entries, so its results line up with the entries;
address-book entries and configuration changes are handled here between batches, in log
order. Applying an entry resolves whoever waits for it: the proposer (by index, failing it
if another leader's entry took the index), `_wait_applied` callers, and read barriers.
Invariant: `applied` only grows, and never passes the node's commit index.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from core.raft.disk import DiskStorage
from core.raft.driver_types import (
    SNAPSHOT_FORMAT,
    TAG_ADDRESS,
    TAG_APP,
    Apply,
    DriverConfig,
    ProposalUnknown,
    SnapshotHook,
    fail_future,
    resolve_future,
)
from core.raft.errors import ProposalDropped, RaftError
from core.raft.messages import NONE, ConfChange, ConfChangeOp, Entry, EntryType, Snapshot
from core.raft.node import Node
from core.raft.ready import Ready
from core.rpc import Address, RpcClient

__all__ = ["ApplySide"]

log = logging.getLogger("core.raft.driver")


class ApplySide:
    """Apply-side behaviour; the state it uses is initialised by RaftDriver.__init__."""

    id: int
    config: DriverConfig
    node: Node | None
    storage: DiskStorage | None
    rpc: RpcClient | None
    addresses: dict[int, Address]  # the replicated address book, this node included
    applied: int  # the last index applied here (entries or a snapshot)
    stats: dict[str, int]
    _apply_fn: Apply
    _snapshot_fn: SnapshotHook
    _snapshot_task: asyncio.Task[Snapshot | None] | None  # the one off the loop (at most one)
    _snapshot_skip: bool  # set on the loop: the thread must not write the snapshot it encodes
    _stopping: bool
    _wake: asyncio.Event
    _restore_fn: Callable[[bytes], None]
    _waiters: dict[int, tuple[int, asyncio.Future[tuple[int, Any]]]]  # index -> term, proposer
    _apply_waiters: list[tuple[int, int, asyncio.Future[None]]]  # heap of (index, seq, future)
    _reads: dict[bytes, asyncio.Future[int]]  # read-index context -> barrier

    def _apply(self, rd: Ready) -> None:
        """Step 3 of the Ready loop: restore, apply, resolve the waiters, answer reads."""
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
            self._resolve_snapshot(rd.snapshot.index)
        entries = rd.committed_entries
        results: dict[int, Any] = {}
        batch: list[tuple[int, bytes]] = []
        for entry in entries:
            if entry.type is EntryType.NORMAL:
                tag = entry.data[:1]
                if tag == TAG_APP:
                    batch.append((entry.index, entry.data[1:]))
                    continue
                self._apply_batch(batch, results)
                if tag == TAG_ADDRESS:
                    self._apply_address(entry)
            elif entry.type is EntryType.CONF_CHANGE:
                self._apply_batch(batch, results)
                self._apply_conf_change(entry)
        self._apply_batch(batch, results)
        if entries:
            self.applied = entries[-1].index
            self.stats["applied_entries"] += len(entries)
            if self._waiters:
                self._resolve_entries(entries, results)
        self._resolve_applied()
        for read in rd.read_states:
            future = self._reads.get(read.ctx)
            if future is not None and not future.done():
                future.set_result(read.index)

    def _apply_batch(self, batch: list[tuple[int, bytes]], results: dict[int, Any]) -> None:
        if not batch:
            return
        out = self._apply_fn(batch)
        if out is not None and self._waiters:
            waiters = self._waiters
            for (index, _), result in zip(batch, out, strict=True):
                if index in waiters:
                    results[index] = result
        batch.clear()

    def _resolve_entries(self, entries: Sequence[Entry], results: dict[int, Any]) -> None:
        waiters = self._waiters
        for entry in entries:
            waiter = waiters.pop(entry.index, None)
            if waiter is None:
                continue
            term, future = waiter
            if term == entry.term:
                resolve_future(future, (entry.index, results.get(entry.index)))
            else:
                fail_future(future, ProposalDropped(f"entry {entry.index} was overwritten by the "
                                              f"leader of term {entry.term}"))

    def _resolve_applied(self) -> None:
        heap = self._apply_waiters
        while heap and heap[0][0] <= self.applied:
            resolve_future(heapq.heappop(heap)[2], None)

    def _resolve_snapshot(self, index: int) -> None:
        self.applied = max(self.applied, index)
        for waiter_index in [i for i in self._waiters if i <= index]:
            _, future = self._waiters.pop(waiter_index)
            fail_future(future, ProposalUnknown(f"entry {waiter_index} was covered by a snapshot"))

    def _apply_address(self, entry: Entry) -> None:
        node_id, (host, port) = msgpack.unpackb(entry.data[1:])
        self._set_address(node_id, (host, port))

    def _set_address(self, node_id: int, address: Address) -> None:
        if self.addresses.get(node_id) == address:
            return
        self.addresses[node_id] = address
        log.info("raft: node %d is at %s:%d", node_id, address[0], address[1])
        if node_id != self.id and self.rpc is not None:
            self.rpc.set_address(node_id, address)

    def _apply_conf_change(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        if change.node_id == NONE:
            return  # the founding configuration
        verb = "added" if change.op is ConfChangeOp.ADD else "removed"
        log.info("raft: node %d %s at index %d; voters now %s", change.node_id, verb,
                 entry.index, list(change.voters))
        if change.op is ConfChangeOp.REMOVE and change.node_id == self.id:
            log.warning("raft: this node (%d) was removed from the cluster", self.id)

    # -- snapshots -----------------------------------------------------------------------------
    # Taking one: on the loop, between Readies, the hook returns the blob or an encoder of a
    # view it captured (driver_types.SnapshotHook). An encoder runs in a worker thread, which
    # also writes the snapshot (storage.create_snapshot: the snapshot file, then the storage's
    # in-memory snapshot); compaction rewrites the log, so it waits for the Ready loop
    # (`_settle_snapshot`), never racing the log appends of `_persist`. That write may run in
    # the thread because nothing else touches the snapshot while it is in flight: at most one
    # is (`_snapshot_task`), compaction waits for it, and so does the install of a leader's
    # snapshot (`_snapshot_yield`), which would otherwise have its newer file replaced by
    # ours. The log appends meanwhile touch another file, and in memory only entries after
    # the applied index, not the term of the entry the snapshot covers.

    def _maybe_snapshot(self) -> None:
        self._settle_snapshot()  # here too: under load the Ready loop may never go idle
        every = self.config.snapshot_every
        storage, node = self.storage, self.node
        assert storage is not None and node is not None
        last = storage.snapshot().index
        if (not every or self._snapshot_task is not None or self.applied - last < every
                or node.applied != self.applied):
            return
        index = self.applied
        voters = node.voters_at(index)
        addresses = {k: list(v) for k, v in self.addresses.items()}
        out = self._snapshot_fn()
        if not callable(out):  # encoded on the loop, as hooks returning bytes do
            self._compact(storage.create_snapshot(index, voters, _wrap(addresses, out)))
            return
        self._snapshot_skip = False
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._snapshot_off_loop(index, voters, addresses, out))

    async def _snapshot_off_loop(self, index: int, voters: tuple[int, ...],
                                 addresses: dict[int, list[Any]],
                                 encode: Callable[[], bytes]) -> Snapshot | None:
        try:
            return await asyncio.to_thread(self._encode_snapshot, index, voters, addresses,
                                           encode)
        finally:
            self._wake.set()  # the Ready loop settles it: compacts, or fails on its error

    def _encode_snapshot(self, index: int, voters: tuple[int, ...],
                         addresses: dict[int, list[Any]],
                         encode: Callable[[], bytes]) -> Snapshot | None:
        """In a worker thread: encode, then write the snapshot unless it is no longer
        wanted (a leader's snapshot is to be installed, or the driver stops)."""
        blob = _wrap(addresses, encode())
        if self._snapshot_skip or self._stopping:
            return None
        assert self.storage is not None
        return self.storage.create_snapshot(index, voters, blob)

    def _settle_snapshot(self) -> None:
        """On the loop, between Readies: finish the snapshot taken off the loop, if done.
        Its thread's error (a failed fsync) is raised: fatal, as on the loop."""
        task = self._snapshot_task
        if task is None or not task.done():
            return
        self._snapshot_task = None
        snapshot = task.result()
        if snapshot is not None:
            self._compact(snapshot)

    async def _snapshot_yield(self) -> None:
        """Before installing a leader's snapshot: let the one in flight finish, without its
        write if that has not begun, so that its older file cannot replace the new one."""
        task = self._snapshot_task
        if task is not None:
            self._snapshot_skip = True
            await asyncio.wait([task])
            self._settle_snapshot()

    async def _snapshot_drain(self) -> None:
        """At shutdown: wait for the snapshot in flight. Its thread cannot be interrupted
        and writes into the data directory, which must stay locked until it is done."""
        task, self._snapshot_task = self._snapshot_task, None
        if task is None:
            return
        self._snapshot_skip = True
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("raft: node %d failed a snapshot while stopping: %r", self.id,
                      task.exception())

    def _compact(self, snapshot: Snapshot) -> None:
        storage = self.storage
        assert storage is not None
        compact_to = snapshot.index - self.config.compaction_margin
        if compact_to >= storage.first_index():
            storage.compact(compact_to)  # a no-op below a leader's snapshot installed since
        self.stats["snapshots"] += 1
        log.info("raft: node %d took a snapshot at %d (%d bytes), log now %d..%d", self.id,
                 snapshot.index, len(snapshot.data), storage.first_index(),
                 storage.last_index())

    def _restore(self, snap: Snapshot) -> None:
        fmt, addresses, blob = msgpack.unpackb(snap.data, strict_map_key=False)
        if fmt != SNAPSHOT_FORMAT:
            raise RaftError(f"unknown snapshot format {fmt!r}")
        for node_id, (host, port) in addresses.items():
            self._set_address(node_id, (host, port))
        self._restore_fn(blob)
        self.applied = max(self.applied, snap.index)
        log.info("raft: node %d restored the snapshot at %d", self.id, snap.index)


def _wrap(addresses: dict[int, list[Any]], blob: bytes) -> bytes:
    """The driver's snapshot format (driver_types): the address book around the blob."""
    return msgpack.packb([SNAPSHOT_FORMAT, addresses, blob])
