"""A node's view of its log: the stable part in `Storage` plus an unstable tail.

Entries the node appends (as leader, or from an AppendRequest) go to `Unstable` first; the
caller persists them from a Ready and `advance` marks them stable (`stable_to`). Reads look
at the unstable tail first, then at storage. A snapshot received from the leader sits in
`Unstable.snapshot` until persisted.

Invariants (checked by `check_invariants`, which the simulation calls):
- applied <= committed <= last_index();
- snapshot index (first_index() - 1) <= committed: compacted entries are committed;
- the unstable entries are consecutive and start at `unstable.offset`, with
  storage.last_index() + 1 >= offset (the tail may overwrite a stale stored suffix)
  unless an unstable snapshot is pending (it will replace the stored log).
"""

from __future__ import annotations

from core.raft.errors import CompactedError, InvariantError, UnavailableError
from core.raft.log import Storage, limit_size
from core.raft.messages import Entry, Snapshot

__all__ = ["RaftLog", "Unstable"]


class Unstable:
    """Entries and a snapshot not yet persisted. `offset` is the index of entries[0] (or of
    the next entry when empty); with a snapshot, offset == snapshot.index + 1."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        k = index - self.offset
        return self.entries[k].term if k < len(self.entries) else None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` were persisted, if the entry there still has `term`."""
        if self.maybe_term(index) != term or index < self.offset:
            return
        del self.entries[:index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces the whole tail; the caller's storage drops its entries >= after.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset:]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    """Stable + unstable log with the commit and apply marks (see the module header)."""

    __slots__ = ("storage", "unstable", "committed", "applied", "max_committed_size")

    def __init__(self, storage: Storage, max_committed_size: int) -> None:
        self.storage = storage
        self.unstable = Unstable(storage.last_index() + 1)
        first = storage.first_index()
        # Everything up to the snapshot is committed and (in the snapshot) applied.
        self.committed = first - 1
        self.applied = first - 1
        self.max_committed_size = max_committed_size

    # -- indexes and terms ---------------------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """Term of entry `index`, or None if it is compacted away or beyond the last index."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        if term is None:
            raise InvariantError(f"no term for the last index {self.last_index()}")
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and that term (0 if unknown).

        Used for fast backtracking: no entry of a term above `term` can match there.
        """
        while index > 0:
            my_term = self.term(index)
            if my_term is None:
                return index, 0
            if my_term <= term:
                return index, my_term
            index -= 1
        return 0, 0

    # -- reading entries -----------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry] | None:
        """Entries [lo, hi) limited to max_size bytes (at least one), None if compacted."""
        if lo < self.first_index():
            return None
        if hi > self.last_index() + 1:
            raise InvariantError(f"slice [{lo}, {hi}) beyond last index {self.last_index()}")
        if lo >= hi:
            return []
        out: list[Entry] = []
        offset = self.unstable.offset
        if lo < offset:
            try:
                out = self.storage.entries(lo, min(hi, offset), max_size)
            except CompactedError:
                return None
            if len(out) < min(hi, offset) - lo:
                return out  # the size limit cut it short
        if hi > offset:
            out = out + self.unstable.slice(max(lo, offset), hi)
        return limit_size(out, max_size)

    def entries_from(self, lo: int, max_size: int, max_count: int) -> list[Entry] | None:
        """Up to max_count entries from lo within max_size bytes; None if lo is compacted."""
        hi = min(self.last_index() + 1, lo + max_count)
        return self.slice(lo, hi, max_size)

    def next_committed_entries(self, after: int) -> list[Entry]:
        """Committed entries after index `after` (>= applied), within the per-Ready limit."""
        lo = max(after + 1, self.first_index())
        if lo > self.committed:
            return []
        ents = self.slice(lo, self.committed + 1, self.max_committed_size)
        if ents is None:
            raise InvariantError(f"committed entry {lo} compacted before it was applied")
        return ents

    def has_next_committed_entries(self, after: int) -> bool:
        return max(after + 1, self.first_index()) <= self.committed

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- changing the log ----------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Append (truncating any conflicting suffix); returns the new last index.

        Raises InvariantError if that would truncate a committed entry or leave a gap.
        """
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise InvariantError(f"append after {after} would overwrite committed "
                                 f"entries up to {self.committed}")
        if after > self.last_index():
            raise InvariantError(f"append after {after} leaves a gap after {self.last_index()}")
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or conflicts with ours (0: all present)."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def maybe_append(self, prev_index: int, prev_term: int, commit: int,
                     entries: tuple[Entry, ...]) -> tuple[int, list[Entry]] | None:
        """The AppendEntries consistency check and append (Raft 5.3).

        None if the log has no entry (prev_index, prev_term). Otherwise appends the entries
        that are new or conflicting (truncating from the first conflict), advances the commit
        index to min(commit, last new index), and returns (last new index, entries appended).
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        appended: list[Entry] = []
        if conflict:
            if conflict <= self.committed:
                raise InvariantError(f"entry {conflict} conflicts with a committed entry "
                                     f"(committed {self.committed})")
            appended = list(entries[conflict - prev_index - 1:])
            self.append(appended)
        self.commit_to(min(commit, last_new))
        return last_new, appended

    def commit_to(self, index: int) -> None:
        """Raise the commit index (never lowers it). InvariantError beyond the last index."""
        if index > self.committed:
            if index > self.last_index():
                raise InvariantError(f"commit {index} beyond the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to `index` if entry `index` has `term` (Raft 5.4.2: a leader commits by
        counting replicas only entries of its own term)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > self.committed:
            raise InvariantError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by the leader's snapshot (Raft 7); it is committed by definition."""
        self.committed = snapshot.index
        self.unstable.restore(snapshot)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def check_invariants(self) -> None:
        """Raise InvariantError if an invariant of the module header does not hold."""
        if not self.applied <= self.committed <= self.last_index():
            raise InvariantError(f"applied {self.applied} <= committed {self.committed} <= "
                                 f"last {self.last_index()} violated")
        if self.first_index() - 1 > self.committed:
            raise InvariantError(f"snapshot {self.first_index() - 1} beyond committed "
                                 f"{self.committed}")
        if (self.unstable.snapshot is None
                and self.storage.last_index() + 1 < self.unstable.offset):
            raise InvariantError("gap between stable and unstable entries")
