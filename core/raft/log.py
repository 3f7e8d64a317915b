"""The storage interface a Raft node reads its stable state through, and an in-memory one.

`Storage` is what the caller implements (modelled on etcd-io/raft's storage.go): the node
only reads from it; the caller writes to it while carrying out a Ready (`persist`) and when
it takes a snapshot (`create_snapshot`, `compact`). `MemoryStorage` is the reference
implementation, used by the tests and the simulation, and is the read cache of the durable
`core.raft.disk.DiskStorage`.

Layout of MemoryStorage: `_ents[0]` is a dummy entry holding the index and term of the
snapshot (index 0, term 0 for none); `_ents[k]` has index `_ents[0].index + k`.
Invariants: snapshot index == `_ents[0].index` == first_index() - 1 <= last_index();
indexes in `_ents` are consecutive.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from core.raft.errors import CompactedError, InvariantError, UnavailableError
from core.raft.messages import Entry, HardState, Snapshot
from core.raft.ready import Ready

__all__ = ["MemoryStorage", "Storage", "limit_size"]


@runtime_checkable
class Storage(Protocol):
    """Stable Raft state as the node reads it. Every method is synchronous and must not fail
    except with CompactedError / UnavailableError where stated."""

    def initial_state(self) -> HardState:
        """The last persisted hard state (HardState() when nothing was ever persisted)."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, then stopping before max_size bytes.

        CompactedError if lo <= snapshot index; UnavailableError if hi > last_index() + 1.
        """
        ...

    def term(self, index: int) -> int:
        """Term of entry `index`; the snapshot's term for index == first_index() - 1.

        CompactedError below that; UnavailableError beyond last_index().
        """
        ...

    def first_index(self) -> int:
        """Index of the first entry available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index when the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (Snapshot() if none)."""
        ...


def limit_size(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of `entries` within max_size bytes, but at least one entry."""
    if max_size is None or not entries:
        return entries
    total = 0
    for k, entry in enumerate(entries):
        total += entry.size()
        if total > max_size and k > 0:
            return entries[:k]
    return entries


class MemoryStorage:
    """Storage kept in memory: the reference implementation (not durable on its own)."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- Storage (read side) -------------------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._hard_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"entry {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last is "
                                   f"{self.last_index()}")
        return limit_size(self._ents[lo - offset:hi - offset], max_size)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of {index} requested, last is {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- write side (the caller's) -------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Store `entries`, first dropping every stored entry at or after entries[0].index.

        Entries at or before the snapshot index are skipped (already covered by it).
        Raises InvariantError if the batch would leave a gap.
        """
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        start = entries[0].index
        if start > self.last_index() + 1:
            raise InvariantError(f"append at {start} leaves a gap after {self.last_index()}")
        del self._ents[start - self._ents[0].index:]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by `snapshot` (a follower installing the leader's).

        A snapshot older than the current one is ignored.
        """
        if snapshot.index <= self._snapshot.index:
            return
        self._snapshot = snapshot
        self._ents = [Entry(snapshot.index, snapshot.term)]

    def create_snapshot(self, index: int, voters: tuple[int, ...], data: bytes) -> Snapshot:
        """Record the application's snapshot `data` of the state after applying `index`.

        `voters` is the configuration at `index` (`Node.voters_at(index)`). Does not drop
        entries (see `compact`). Raises ValueError for an index that is not newer than the
        current snapshot or is beyond the last index.
        """
        if index <= self._snapshot.index:
            raise ValueError(f"snapshot at {index} is not newer than {self._snapshot.index}")
        if index > self.last_index():
            raise ValueError(f"snapshot at {index} is beyond the last index "
                             f"{self.last_index()}")
        self._snapshot = Snapshot(index, self.term(index), tuple(voters), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop the entries up to and including `index`, which must be covered by the
        snapshot (index <= snapshot index). Compacting to an older index is a no-op."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self._snapshot.index:
            raise ValueError(f"compact({index}) beyond the snapshot at {self._snapshot.index}")
        term = self.term(index)
        self._ents = [Entry(index, term)] + self._ents[index - offset + 1:]

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready loop: snapshot, then entries, then hard state."""
        if ready.snapshot is not None:
            self.apply_snapshot(ready.snapshot)
        self.append(ready.entries)
        if ready.hard_state is not None:
            self.set_hard_state(ready.hard_state)

    def __repr__(self) -> str:
        return (f"MemoryStorage(snapshot={self._snapshot.index}, first={self.first_index()}, "
                f"last={self.last_index()}, {self._hard_state})")
