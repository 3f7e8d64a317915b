"""Read barriers shared by the reads that arrive in one turn of the event loop.

Strategy: a read of a shard of several replicas waits for a read barrier (Raft read
index, core's RaftService.barrier) so that it sees every write acknowledged before it
arrived. A barrier begun after a read arrived serves that read as well as one of its
own would, so the reads of one group that arrive in the same loop turn share one: the
first asks for the group's next barrier, which begins at the next turn (call_soon); the
others join it. A barrier already under way is never joined (it may have begun before
the read arrived). Every waiter gets the barrier's outcome: nothing, or the CommandError
(TRYAGAIN) the service raised. A waiter that is cancelled (its client left) does not
cancel the barrier the others wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["SharedBarriers"]

Barrier = Callable[[int], Coroutine[Any, Any, Any]]


class SharedBarriers:
    """`await wait(group)`: a read barrier of `group` begun after this call."""

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier  # RaftService.barrier
        self._next: dict[int, asyncio.Future[None]] = {}  # group -> its next barrier
        self._running: set[asyncio.Task[None]] = set()

    async def wait(self, group: int) -> None:
        """Return once a barrier of `group` begun after this call has passed; raises what
        the barrier raised."""
        future = self._next.get(group)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._next[group] = loop.create_future()
            loop.call_soon(self._begin, group, future)
        await asyncio.shield(future)

    def _begin(self, group: int, future: asyncio.Future[None]) -> None:
        if self._next.get(group) is future:
            del self._next[group]
        task = asyncio.get_running_loop().create_task(self._run(group, future))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, group: int, future: asyncio.Future[None]) -> None:
        try:
            await self._barrier(group)
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the outcome
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(None)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: no warning when every waiter has gone
