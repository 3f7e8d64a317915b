"""Keeping a client's pipeline order when a read may ask a second replica (`--replicas` > 1).

A replicated read is sent to the key's first healthy copy at once; only when that copy
misses (or fails) is the next copy asked, a backend round trip later. By then the client's
later requests have been sent too, so the second request would reach the next copy after
them and could see a write the client issued after the read. Strategy: each client
connection keeps a `ReadFence`, the keys of its replicated reads still unanswered. A later
request that touches one of those keys (a write, a touch, any meta command, flush_all) is
held, and the client's requests after it with it, until every such read has its reply;
requests for other keys, and plain get/gets of the same key (they change nothing), go on at
once. A read whose first copy answers a hit resolves in one round trip, so the hold is short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from kvcache.proxy_plan import Broadcast, Forward, Local, Plan, Retrieve


class ReadFence:
    """The replicated reads of one client connection still waiting for their reply.
    `hold(plan)` names a read `plan` must wait for (None: it may run now); `add` records a
    read that may still ask another replica. Entries leave when their read is answered.
    `reads` (key -> the replies of its pending reads) is empty when nothing can be held: the
    connection tests it before asking `hold`, a cheap check on every request."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        self.reads: dict[bytes, list[asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self.reads)

    def add(self, keys: Iterable[bytes], fut: asyncio.Future[Any]) -> None:
        """`fut` is the reply of a read of `keys` that may ask their next replica after the
        client's later requests were sent."""
        keys = tuple(dict.fromkeys(keys))
        for key in keys:
            self.reads.setdefault(key, []).append(fut)
        fut.add_done_callback(lambda done: self._drop(keys, done))

    def hold(self, plan: Plan) -> asyncio.Future[Any] | None:
        """A pending read that must be answered before `plan` runs, or None."""
        if not self.reads:
            return None
        kind = type(plan)
        if kind is Retrieve:
            if plan.exptime is None:  # type: ignore[union-attr]
                return None  # get/gets change nothing that a read could see
            return self._pending(plan.keys)  # type: ignore[union-attr]
        if kind is Forward:
            return self._pending((plan.key,))  # type: ignore[union-attr]
        if kind is Local:
            also = plan.also  # type: ignore[union-attr]
            return None if also is None else self._pending((also.key,))
        if kind is Broadcast:  # flush_all empties every key
            return self._pending(list(self.reads))
        return None

    def _pending(self, keys: Iterable[bytes]) -> asyncio.Future[Any] | None:
        reads = self.reads
        for key in keys:
            for fut in reads.get(key, ()):
                if not fut.done():
                    return fut
        return None

    def _drop(self, keys: tuple[bytes, ...], fut: asyncio.Future[Any]) -> None:
        reads = self.reads
        for key in keys:
            futs = reads.get(key)
            if futs is None:
                continue
            left = [f for f in futs if f is not fut]
            if left:
                reads[key] = left
            else:
                del reads[key]
