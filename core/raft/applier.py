"""A Raft group's apply side: committed entries, the address book, snapshots.

`RaftGroup` holds one `Applier` and calls it in step 3 of the host's Ready loop (`apply`)
and step 4 (`maybe_snapshot`). Committed entries go to the application's `apply` in
batches of consecutive TAG_APP entries, so its results line up with the entries;
address-book entries and configuration changes are handled here between batches, in log
order. Applying an entry resolves whoever waits for it (core/raft/waiters.py).
Invariant: `applied` only grows, and never passes the node's commit index.

Snapshots. Taking one: on the loop, between Readies, the hook returns the blob, an encoder
of a view it captured, or a StreamedSnapshot (core/raft/snapshot_hooks.py). The blob is
written on the loop; an encoder or a stream runs in a worker thread, which writes the
snapshot file through a SnapshotWriter in bounded chunks (storage.create_snapshot_from:
the file, then the storage's in-memory handle on it); compaction rewrites the log, so it
waits for the Ready loop
(`settle_snapshot`), never racing the log appends of the host's persist step. That write may
run in the thread because nothing else touches the snapshot while it is in flight: at most
one is, compaction waits for it, and so does the install of a leader's snapshot
(`snapshot_yield`), which would otherwise have its newer file replaced by ours. The log
appends meanwhile touch another file, and in memory only entries after the applied index.

Restoring: the snapshot's data is read from its file through a SnapshotReader; a restore
hook marked `restores_from_reader` reads it in its own ranges, any other gets the
machine's part as one bytes object (the adapter for blob machines).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from core.raft.driver_types import TAG_ADDRESS, TAG_APP, Apply, SnapshotHook
from core.raft.group_view import GroupView
from core.raft.messages import NONE, ConfChange, ConfChangeOp, Entry, EntryType, Snapshot
from core.raft.ready import Ready
from core.raft.snapshot_file import SnapshotWriter, open_reader, snapshot_size
from core.raft.snapshot_hooks import (
    MachineSnapshot,
    StreamedSnapshot,
    fill_driver_data,
    open_driver_data,
    reads_snapshot_stream,
)
from core.rpc import Address

__all__ = ["Applier"]

log = logging.getLogger("core.raft.group")


class Applier:
    """The apply side of `group`, around the application's callbacks."""

    def __init__(self, group: GroupView, apply: Apply, snapshot: SnapshotHook,
                 restore: Callable[..., None]) -> None:
        self.group = group
        self._apply_fn, self._snapshot_fn, self._restore_fn = apply, snapshot, restore
        self.applied = 0  # the last index applied here (entries or a snapshot)
        self._snapshot_task: asyncio.Task[Snapshot | None] | None = None  # at most one
        self._snapshot_skip = False  # set on the loop: the thread must not write its snapshot

    def apply(self, rd: Ready) -> None:
        """Step 3 of the Ready loop: restore, apply, resolve the waiters, answer reads."""
        waiters = self.group.waiters
        if rd.snapshot is not None:
            self.restore(self._installed(rd.snapshot))
            waiters.cover_snapshot(rd.snapshot.index)
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
                self._log_conf_change(entry)
        self._apply_batch(batch, results)
        if entries:
            self.applied = entries[-1].index
            self.group.stats["applied_entries"] += len(entries)
            waiters.resolve_entries(entries, results)
        waiters.resolve_applied(self.applied)
        for read in rd.read_states:
            waiters.answer_read(read.ctx, read.index)

    def _apply_batch(self, batch: list[tuple[int, bytes]], results: dict[int, Any]) -> None:
        if not batch:
            return
        out = self._apply_fn(batch)
        waiting = self.group.waiters.entries
        if out is not None and waiting:
            for (index, _), result in zip(batch, out, strict=True):
                if index in waiting:
                    results[index] = result
        batch.clear()

    def _apply_address(self, entry: Entry) -> None:
        node_id, (host, port) = msgpack.unpackb(entry.data[1:])
        self.set_address(node_id, (host, port))

    def set_address(self, node_id: int, address: Address) -> None:
        group = self.group
        if group.addresses.get(node_id) == address:
            return
        group.addresses[node_id] = address
        log.info("raft: node %d is at %s:%d", node_id, address[0], address[1])
        if node_id != group.id:
            group.link.set_address(node_id, address)

    def _log_conf_change(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        if change.node_id == NONE:
            return  # the founding configuration
        group = self.group
        verb = "added" if change.op is ConfChangeOp.ADD else "removed"
        log.info("raft: node %d %s in group %d at index %d; voters now %s", change.node_id,
                 verb, group.group_id, entry.index, list(change.voters))
        if change.op is ConfChangeOp.REMOVE and change.node_id == group.id:
            log.warning("raft: this node (%d) was removed from group %d", group.id,
                        group.group_id)

    # -- snapshots (see the module header) ------------------------------------------------------

    def maybe_snapshot(self) -> None:
        """Step 4: take a snapshot every `snapshot_every` applied entries."""
        self.settle_snapshot()  # here too: under load the Ready loop may never go idle
        group = self.group
        every = group.config.snapshot_every
        storage, node = group.storage, group.live_node()
        assert storage is not None
        last = storage.snapshot().index
        if (not every or self._snapshot_task is not None or self.applied - last < every
                or node.applied != self.applied):
            return
        index = self.applied
        voters = node.voters_at(index)
        addresses = {k: list(v) for k, v in group.addresses.items()}
        out = self._snapshot_fn()
        fill = fill_driver_data(addresses, out)
        if not callable(out):  # written on the loop, as hooks returning bytes are
            self._compact(storage.create_snapshot_from(index, voters, fill))
            return
        self._snapshot_skip = False
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._snapshot_off_loop(index, voters, fill, out))

    def snapshot_fill(self) -> Callable[[SnapshotWriter], None]:
        """A writer of the application's snapshot now, in the driver's format (run it on
        the caller's thread, once)."""
        out = self._snapshot_fn()
        addresses = {k: list(v) for k, v in self.group.addresses.items()}
        fill = fill_driver_data(addresses, out)

        def write(writer: SnapshotWriter) -> None:
            try:
                fill(writer)
            finally:
                _release(out)

        return write

    async def _snapshot_off_loop(self, index: int, voters: tuple[int, ...],
                                 fill: Callable[[SnapshotWriter], None],
                                 out: MachineSnapshot) -> Snapshot | None:
        try:
            return await asyncio.to_thread(self._write_snapshot, index, voters, fill, out)
        finally:
            self.group.wake()  # the Ready loop settles it: compacts, or fails on its error

    def _write_snapshot(self, index: int, voters: tuple[int, ...],
                        fill: Callable[[SnapshotWriter], None],
                        out: MachineSnapshot) -> Snapshot | None:
        """In a worker thread: write the snapshot, in chunks, unless it is no longer
        wanted (a leader's snapshot is to be installed, or the group stops), which is
        checked before and after the machine writes: an unwanted file is never renamed
        into place."""
        group = self.group

        def unwanted() -> bool:
            return self._snapshot_skip or group.stopping

        def fill_unless_unwanted(writer: SnapshotWriter) -> None:
            fill(writer)
            if unwanted():
                raise _Unwanted

        try:
            if unwanted():
                return None
            assert group.storage is not None
            return group.storage.create_snapshot_from(index, voters, fill_unless_unwanted)
        except _Unwanted:
            return None
        finally:
            _release(out)

    def settle_snapshot(self) -> None:
        """On the loop, between Readies: finish the snapshot taken off the loop, if done.
        Its thread's error (a failed fsync) is raised: fatal, as on the loop."""
        task = self._snapshot_task
        if task is None or not task.done():
            return
        self._snapshot_task = None
        snapshot = task.result()
        if snapshot is not None:
            self._compact(snapshot)

    async def snapshot_yield(self) -> None:
        """Before installing a leader's snapshot: let the one in flight finish, without its
        write if that has not begun, so that its older file cannot replace the new one."""
        task = self._snapshot_task
        if task is not None:
            self._snapshot_skip = True
            await asyncio.wait([task])
            self.settle_snapshot()

    async def snapshot_drain(self) -> None:
        """At shutdown: wait for the snapshot in flight. Its thread cannot be interrupted
        and writes into the data directory, which must stay locked until it is done."""
        task, self._snapshot_task = self._snapshot_task, None
        if task is None:
            return
        self._snapshot_skip = True
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("raft: node %d failed a snapshot while stopping: %r", self.group.id,
                      task.exception())

    def _compact(self, snapshot: Snapshot) -> None:
        group = self.group
        storage = group.storage
        assert storage is not None
        compact_to = snapshot.index - group.config.compaction_margin
        if compact_to >= storage.first_index():
            storage.compact(compact_to)  # a no-op below a leader's snapshot installed since
        group.stats["snapshots"] += 1
        log.info("raft: node %d took a snapshot at %d (%d bytes), log now %d..%d", group.id,
                 snapshot.index, snapshot_size(snapshot.data), storage.first_index(),
                 storage.last_index())

    def restore(self, snap: Snapshot) -> None:
        """Load a snapshot (ours at start, or a leader's): the address book, then the
        application's state, read from the snapshot's file (see the module header)."""
        reader = open_reader(snap.data)
        try:
            addresses, rest = open_driver_data(reader)
            try:
                for node_id, (host, port) in addresses.items():
                    self.set_address(node_id, (host, port))
                if reads_snapshot_stream(self._restore_fn):
                    self._restore_fn(rest)
                else:
                    self._restore_fn(rest.read())
            finally:
                rest.close()
        finally:
            reader.close()
        self.applied = max(self.applied, snap.index)
        log.info("raft: node %d restored the snapshot at %d", self.group.id, snap.index)


    def _installed(self, snap: Snapshot) -> Snapshot:
        """The storage's copy of a leader's snapshot it just persisted (its data moved into
        the storage's file), or `snap` itself."""
        storage = self.group.storage
        stored = storage.snapshot() if storage is not None else None
        return stored if stored is not None and stored.index == snap.index else snap


class _Unwanted(Exception):
    """Raised after the machine wrote a snapshot no longer wanted: the file is dropped."""


def _release(out: MachineSnapshot) -> None:
    if isinstance(out, StreamedSnapshot):
        out.release()
