"""Durable Raft storage on core.storage: a record log plus an atomically replaced snapshot.

Files in the data directory (the caller holds its DataDirLock):
- `raft.log`: a RecordLog of msgpack records, each one of
    ["H", term, vote, commit]       the hard state from here on;
    ["E", [[index, term, type, data], ...]]   entries, dropping any stored at or after the
                                    first one's index (a truncation is just a later record).
- `raft.snapshot`: the snapshot file (core/raft/snapshot_source.py has its format): a
  header naming index, term and voters, then the data. It is written through a
  SnapshotWriter in bounded chunks and replaced atomically (core/raft/snapshot_file.py);
  the in-memory mirror holds a `SnapshotFile` naming it, never the data.

Strategy:
- `persist(ready)` is the Ready's step 1 as one group commit: the entries and the hard
  state go out in one write and, when `ready.must_sync`, one fsync. Only then may the
  caller send. (A hard state whose only change is the commit index is written unsynced:
  a lost commit index is recomputed from the leader after a restart.)
- Installing a leader's snapshot puts the snapshot file in place first (a received file is
  renamed over `raft.snapshot`; another is copied chunk by chunk), then atomically
  rewrites the log to hold only the hard state and the entries after the snapshot.
- `create_snapshot_from` writes the snapshot file from the machine's writer; `compact`
  then rewrites the log without the entries up to the compaction index. Between the two
  a crash is harmless, and a crash while the file is written leaves the previous one.
- Recovery reads the snapshot, replays the log, and keeps the logged entries after the
  snapshot only if the log holds the snapshot's own entry (same index and term); otherwise
  the log predates an install that the crash interrupted, and its tail is dropped.
- Reads are served from an in-memory MemoryStorage mirror. FatalStorageError from below
  propagates: the caller must exit (never retry an fsync).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from time import perf_counter_ns

import msgpack

from core.raft.errors import InvariantError
from core.raft.log import MemoryStorage
from core.raft.messages import Entry, HardState, Snapshot
from core.raft.ready import Ready
from core.raft.snapshot_file import (
    SnapshotFile,
    SnapshotWriter,
    open_reader,
    open_snapshot_file,
    write_snapshot_file,
)
from core.stats import LatencyHistogram
from core.storage import DEFAULT_MAX_RECORD_BYTES, FatalStorageError, RecordLog, fsync_dir
from core.storage import remove_stale_temp_files as _remove_stale_temp_files

__all__ = ["DiskStorage"]

LOG_NAME = "raft.log"
SNAPSHOT_NAME = "raft.snapshot"
MAX_ENTRIES_RECORD_BYTES = 8 * 1024 * 1024  # split larger entry batches over records
Fill = Callable[[SnapshotWriter], None]  # writes a snapshot's data (the machine's, wrapped)


class DiskStorage:
    """A durable `Storage` (see the module header). Open with `DiskStorage.open(dir)`."""

    def __init__(self, directory: Path, log: RecordLog, mem: MemoryStorage) -> None:
        self.directory = directory
        self._log = log
        self._mem = mem
        self.fsyncs = 0  # group commits issued (for tests and stats)
        # the log's synced appends and syncs, timed (write and fsync), for core/metrics
        self.fsync_latency = LatencyHistogram()
        self.unsynced = False  # records appended without their fsync (everysec groups)
        # the log appends and a snapshot may each run in a worker thread at once (see
        # core/raft/driver_apply.py): `+=` from two threads can lose a count
        self._fsyncs_lock = threading.Lock()

    @classmethod
    def open(cls, directory: str | os.PathLike[str],
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> DiskStorage:
        """Open or create the Raft state in `directory` (which must exist and be locked).

        Raises CorruptLogError for corruption in the middle of the log, InvariantError for
        records that are not Raft records, FatalStorageError for failed writes.
        """
        path = Path(directory)
        snapshot_path = path / SNAPSHOT_NAME
        _remove_stale_temp_files(snapshot_path)
        snapshot = _load_snapshot(snapshot_path)
        log, records = RecordLog.open(path / LOG_NAME, max_record_bytes)
        hard_state, entries = _replay(records, path / LOG_NAME)
        mem = MemoryStorage()
        if snapshot.index:
            mem.apply_snapshot(snapshot)
            matching = [e for e in entries if e.index == snapshot.index]
            if not matching or matching[0].term != snapshot.term:
                entries = []  # the log predates an interrupted snapshot install
            entries = [e for e in entries if e.index > snapshot.index]
        mem.append(entries)
        mem.set_hard_state(hard_state)
        return cls(path, log, mem)

    # -- Storage (reads) -----------------------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._mem.initial_state()

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self._mem.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        return self._mem.term(index)

    def first_index(self) -> int:
        return self._mem.first_index()

    def last_index(self) -> int:
        return self._mem.last_index()

    def snapshot(self) -> Snapshot:
        return self._mem.snapshot()

    # -- writes --------------------------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready loop; durable on return when `ready.must_sync`."""
        if ready.snapshot is not None:
            self._install(ready)
            return
        self.write(ready)
        self.remember(ready)

    def write(self, ready: Ready, fsync: bool = True) -> None:
        """The durable half of `persist` for a Ready without a snapshot: append its entries
        and hard state (one fsync when `ready.must_sync`, unless `fsync` is False: the
        caller then calls `sync` later, as an `everysec` group does). Touches only the
        file, so a worker thread may run it while the event loop reads the in-memory copy;
        call `remember` after it."""
        assert ready.snapshot is None, "a snapshot is installed by persist()"
        records = _entry_records(ready.entries)
        if ready.hard_state is not None:
            records.append(_hard_state_record(ready.hard_state))
        if records:
            sync = ready.must_sync and fsync
            started = perf_counter_ns() if sync else 0
            self._log.append_many(records, sync=sync)
            self._count_fsyncs(int(sync), started)
            self.unsynced = self.unsynced or not sync

    def sync(self) -> None:
        """fsync what `write(..., fsync=False)` appended (a no-op when nothing waits)."""
        if self.unsynced:
            self.unsynced = False
            started = perf_counter_ns()
            self._log.sync()
            self._count_fsyncs(1, started)

    def remember(self, ready: Ready) -> None:
        """The in-memory half of `persist`, after `write` returned."""
        self._mem.persist(ready)

    def _install(self, ready: Ready) -> None:
        snapshot = ready.snapshot
        assert snapshot is not None
        installed = dataclasses.replace(snapshot, data=self._put_in_place(snapshot))
        self._mem.persist(dataclasses.replace(ready, snapshot=installed))
        self._rewrite()

    def _put_in_place(self, snapshot: Snapshot) -> SnapshotFile:
        """The leader's snapshot as our snapshot file: a received file is renamed into
        place, other data (bytes, or another storage's file) copied in chunks."""
        target = self.directory / SNAPSHOT_NAME
        data = snapshot.data
        if isinstance(data, SnapshotFile) and data.transient:
            try:
                os.replace(data.path, target)
                fsync_dir(self.directory)
            except OSError as exc:
                raise FatalStorageError(f"installing {data.path} failed: {exc}") from exc
            return data.moved_to(target)

        def copy(writer: SnapshotWriter) -> None:
            with open_reader(data) as reader:
                for chunk in reader.chunks():
                    writer.write(chunk)

        self._count_fsyncs(1)
        return write_snapshot_file(target, snapshot.index, snapshot.term, snapshot.voters,
                                   copy)

    def create_snapshot(self, index: int, voters: tuple[int, ...], data: bytes) -> Snapshot:
        """Durably record the application's snapshot `data` at `index` (see
        MemoryStorage); `create_snapshot_from` with a writer of `data`."""
        return self.create_snapshot_from(index, voters, lambda writer: writer.write(data))

    def create_snapshot_from(self, index: int, voters: tuple[int, ...], fill: Fill) -> Snapshot:
        """Durably record the snapshot at `index` whose data `fill` writes through a
        SnapshotWriter (in bounded chunks). ValueError for an index that is not newer than
        the current snapshot or is beyond the last index; an error of `fill` propagates
        and leaves the previous snapshot."""
        current = self._mem.snapshot().index
        if not current < index <= self._mem.last_index():
            raise ValueError(f"snapshot at {index} is not in ({current}, "
                             f"{self._mem.last_index()}]")
        term = self._mem.term(index)
        written = write_snapshot_file(self.directory / SNAPSHOT_NAME, index, term,
                                      tuple(voters), fill)
        self._count_fsyncs(1)
        return self._mem.create_snapshot(index, voters, written)

    def skip_to(self, index: int, voters: tuple[int, ...], fill: Fill) -> Snapshot:
        """Start the log after `index`, beyond its last entry, with the application's
        snapshot there, written by `fill` (its term: the hard state's, no entry of the log
        is later): for a single member whose state machine kept entries its log lost."""
        hard = self._mem.initial_state()
        written = write_snapshot_file(self.directory / SNAPSHOT_NAME, index, hard.term,
                                      tuple(voters), fill)
        snapshot = Snapshot(index, hard.term, tuple(voters), written)
        self._mem.apply_snapshot(snapshot)
        self._mem.set_hard_state(HardState(hard.term, hard.vote, max(hard.commit, index)))
        self._rewrite()
        return snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (<= snapshot index) and rewrite the log without them."""
        before = self._mem.first_index()
        self._mem.compact(index)
        if self._mem.first_index() != before:
            self._rewrite()

    def _rewrite(self) -> None:
        """Atomically replace the log by the hard state and the stored entries."""
        mem = self._mem
        first, last = mem.first_index(), mem.last_index()
        kept = mem.entries(first, last + 1) if last >= first else []
        snapshot = mem.snapshot()
        if snapshot.index and snapshot.index == first - 1:
            # An anchor for the compacted snapshot entry, so that recovery can tell this
            # log continues the snapshot (see the module header).
            kept = [Entry(snapshot.index, snapshot.term), *kept]
        self._log.rewrite([_hard_state_record(mem.initial_state()), *_entry_records(kept)])
        self._count_fsyncs(1)

    def _count_fsyncs(self, count: int, started_ns: int = 0) -> None:
        """Count `count` fsyncs; one that began at `started_ns` (perf_counter_ns) is timed."""
        with self._fsyncs_lock:
            self.fsyncs += count
            if started_ns:
                self.fsync_latency.record(perf_counter_ns() - started_ns)
                self.fsync_latency.calls += 1

    def close(self) -> None:
        self._log.close()

    def __repr__(self) -> str:
        return f"DiskStorage({str(self.directory)!r}, {self._mem!r})"


def _hard_state_record(hs: HardState) -> bytes:
    return msgpack.packb(["H", hs.term, hs.vote, hs.commit])


def _entry_records(entries: Iterable[Entry]) -> list[bytes]:
    records: list[bytes] = []
    batch: list[list[object]] = []
    size = 0
    for entry in entries:
        batch.append(entry.to_wire())
        size += entry.size()
        if size >= MAX_ENTRIES_RECORD_BYTES:
            records.append(msgpack.packb(["E", batch]))
            batch, size = [], 0
    if batch:
        records.append(msgpack.packb(["E", batch]))
    return records


def _replay(records: list[bytes], path: Path) -> tuple[HardState, list[Entry]]:
    hard_state = HardState()
    entries: list[Entry] = []
    for k, record in enumerate(records):
        try:
            kind, *body = msgpack.unpackb(record)
            if kind == "H":
                term, vote, commit = body
                hard_state = HardState(term, vote, commit)
            elif kind == "E":
                batch = [Entry.from_wire(w) for w in body[0]]
                if batch:
                    first = batch[0].index
                    while entries and entries[-1].index >= first:
                        entries.pop()
                    if entries and entries[-1].index + 1 != first:
                        raise ValueError(f"gap before entry {first}")
                    entries.extend(batch)
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise InvariantError(f"{path}: record {k} is not a raft record: {exc}") from exc
    return hard_state, entries


def _load_snapshot(path: Path) -> Snapshot:
    """The snapshot stored at `path` (its data stays on disk), Snapshot() if none."""
    try:
        found = open_snapshot_file(path)
    except (ValueError, OSError) as exc:
        raise InvariantError(f"snapshot file is not a raft snapshot: {exc}") from exc
    if found is None:
        return Snapshot()
    data, voters = found
    return Snapshot(data.index, data.term, voters, data)
