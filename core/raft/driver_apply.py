"""The Raft driver's apply side: committed entries, address book, conf changes, snapshots.

`ApplySide` is a base class of `core.raft.driver.RaftDriver` (as `LeaderRole` is of
`Node`); it holds step 3 of the Ready loop and the snapshots of step 4, and the driver
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
    _snapshot_fn: Callable[[], bytes]
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

    def _maybe_snapshot(self) -> None:
        every = self.config.snapshot_every
        storage, node = self.storage, self.node
        assert storage is not None and node is not None
        last = storage.snapshot().index
        if not every or self.applied - last < every or node.applied != self.applied:
            return
        index = self.applied
        addresses = {k: list(v) for k, v in self.addresses.items()}
        blob = msgpack.packb([SNAPSHOT_FORMAT, addresses, self._snapshot_fn()])
        storage.create_snapshot(index, node.voters_at(index), blob)
        compact_to = index - self.config.compaction_margin
        if compact_to >= storage.first_index():
            storage.compact(compact_to)
        self.stats["snapshots"] += 1
        log.info("raft: node %d took a snapshot at %d (%d bytes), log now %d..%d", self.id,
                 index, len(blob), storage.first_index(), storage.last_index())

    def _restore(self, snap: Snapshot) -> None:
        fmt, addresses, blob = msgpack.unpackb(snap.data, strict_map_key=False)
        if fmt != SNAPSHOT_FORMAT:
            raise RaftError(f"unknown snapshot format {fmt!r}")
        for node_id, (host, port) in addresses.items():
            self._set_address(node_id, (host, port))
        self._restore_fn(blob)
        self.applied = max(self.applied, snap.index)
        log.info("raft: node %d restored the snapshot at %d", self.id, snap.index)

