"""The configuration (set of voters) a node uses: always the latest one in its log.

Single-server changes (thesis 4.1): a CONF_CHANGE entry takes effect on a server as soon
as it is in that server's log, committed or not. If the entry is later truncated away
(a new leader overwrote it), the previous configuration is back in force. So the node keeps
the base configuration (from its snapshot) and the list of configuration entries after it.

Invariants: `base_index` is the snapshot index; change indexes are strictly increasing and
all greater than `base_index`.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.raft.messages import ConfChange, Entry, EntryType

__all__ = ["Membership"]


class Membership:
    """Configuration history over the node's log (see the module header)."""

    __slots__ = ("base_index", "base_voters", "_changes")

    def __init__(self, base_index: int, base_voters: Iterable[int]) -> None:
        self.base_index = base_index
        self.base_voters = frozenset(base_voters)
        self._changes: list[tuple[int, frozenset[int]]] = []

    @property
    def voters(self) -> frozenset[int]:
        """The configuration in force: the latest in the log."""
        return self._changes[-1][1] if self._changes else self.base_voters

    @property
    def last_change_index(self) -> int:
        """Index of the latest configuration entry (the base index if none after it)."""
        return self._changes[-1][0] if self._changes else self.base_index

    def voters_at(self, index: int) -> frozenset[int]:
        """The configuration in force at log index `index` (index >= base_index)."""
        if index < self.base_index:
            raise ValueError(f"configuration at {index} is before the snapshot "
                             f"{self.base_index}")
        for change_index, voters in reversed(self._changes):
            if change_index <= index:
                return voters
        return self.base_voters

    def on_append(self, entries: Iterable[Entry]) -> bool:
        """Entries were appended at their indexes, replacing any log suffix from the first
        one. Returns True if the configuration in force changed."""
        before = self.voters
        first = True
        for entry in entries:
            if entry.index <= self.base_index:
                continue  # covered by the snapshot's configuration
            if first:
                self.truncate_from(entry.index)
                first = False
            if entry.type is EntryType.CONF_CHANGE:
                self._changes.append((entry.index, frozenset(ConfChange.decode(entry.data).voters)))
        return self.voters != before

    def truncate_from(self, index: int) -> None:
        while self._changes and self._changes[-1][0] >= index:
            self._changes.pop()

    def reset(self, base_index: int, base_voters: Iterable[int]) -> None:
        """The log was replaced by a snapshot at `base_index`."""
        self.base_index = base_index
        self.base_voters = frozenset(base_voters)
        self._changes = []

    def __repr__(self) -> str:
        return f"Membership(voters={sorted(self.voters)}, changes={len(self._changes)})"
