"""Who waits on a Raft group, and the rules that wake them.

Three kinds of waiters, each a future:
- a proposer waits for its entry by index, holding the term it was appended in: the entry
  applied at that index with that term resolves it with the application's result; an entry
  of another term means the proposal was dropped (another leader overwrote it);
- a caller waits until the group has applied at least some index (a forwarded proposal,
  so the caller then reads its own write locally);
- a read barrier waits for the answer to its read-index request, by context bytes.

Invariants: at most one proposer per index (a newer one fails the older: the index was
reused by another term); a waiter is resolved at most once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from core.raft.driver_types import ProposalUnknown, fail_future, resolve_future
from core.raft.errors import ProposalDropped
from core.raft.messages import Entry

__all__ = ["Waiters"]


class Waiters:
    """The futures of one group (see the module header)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, asyncio.Future[tuple[int, Any]]]] = {}
        self._applied: list[tuple[int, int, asyncio.Future[None]]] = []  # heap
        self.reads: dict[bytes, asyncio.Future[int]] = {}
        self._seq = itertools.count(1)

    def next_ctx(self) -> bytes:
        """A fresh read-index context."""
        return next(self._seq).to_bytes(8, "big")

    # -- proposers -----------------------------------------------------------------------------

    async def entry(self, index: int, term: int) -> tuple[int, Any]:
        """Wait for the entry appended at `index` in `term`: (index, result)."""
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        old = self.entries.get(index)
        if old is not None:
            fail_future(old[1], ProposalDropped(f"entry {index} was overwritten"))
        self.entries[index] = (term, future)
        try:
            return await future
        finally:
            if self.entries.get(index, (0, None))[1] is future:
                del self.entries[index]

    def resolve_entries(self, entries: Sequence[Entry], results: Mapping[int, Any]) -> None:
        """Applied `entries`: resolve their proposers (or fail them: another term)."""
        waiting = self.entries
        if not waiting:
            return
        for entry in entries:
            waiter = waiting.pop(entry.index, None)
            if waiter is None:
                continue
            term, future = waiter
            if term == entry.term:
                resolve_future(future, (entry.index, results.get(entry.index)))
            else:
                fail_future(future, ProposalDropped(f"entry {entry.index} was overwritten by "
                                                    f"the leader of term {entry.term}"))

    def cover_snapshot(self, index: int) -> None:
        """A snapshot up to `index` replaced the log: proposers there cannot learn more."""
        for waiter_index in [i for i in self.entries if i <= index]:
            _, future = self.entries.pop(waiter_index)
            fail_future(future, ProposalUnknown(f"entry {waiter_index} was covered by a "
                                                "snapshot"))

    # -- applied index -------------------------------------------------------------------------

    async def applied(self, index: int) -> None:
        """Wait until `resolve_applied` reports `index` or beyond."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied, (index, next(self._seq), future))
        await future

    def resolve_applied(self, applied: int) -> None:
        heap = self._applied
        while heap and heap[0][0] <= applied:
            resolve_future(heapq.heappop(heap)[2], None)

    # -- reads ---------------------------------------------------------------------------------

    def answer_read(self, ctx: bytes, index: int) -> None:
        future = self.reads.get(ctx)
        if future is not None:
            resolve_future(future, index)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiter (the group stops)."""
        futures: list[asyncio.Future[Any]] = [f for _, f in self.entries.values()]
        futures += [f for _, _, f in self._applied] + list(self.reads.values())
        for future in futures:
            fail_future(future, exc)
