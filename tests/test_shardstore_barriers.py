"""Reads that arrive in one loop turn share a read barrier (shardstore/barriers.py)."""

from __future__ import annotations

import asyncio

import pytest

from core.resp import CommandError
from shardstore.barriers import SharedBarriers


class FakeBarrier:
    """A barrier that counts its calls and passes when `gate` is set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[int] = []
        self.gate = asyncio.Event()
        self.error = error

    async def __call__(self, group: int) -> None:
        self.calls.append(group)
        await self.gate.wait()
        if self.error is not None:
            raise self.error


def test_reads_of_one_turn_share_a_barrier_and_later_ones_get_their_own() -> None:
    async def main() -> list[int]:
        barrier = FakeBarrier()
        shared = SharedBarriers(barrier)
        first = [asyncio.ensure_future(shared.wait(7)) for _ in range(5)]
        other = asyncio.ensure_future(shared.wait(8))
        await asyncio.sleep(0.01)  # the barriers began
        late = asyncio.ensure_future(shared.wait(7))  # must not join the one under way
        await asyncio.sleep(0.01)
        barrier.gate.set()
        await asyncio.gather(*first, other, late)
        return barrier.calls

    assert sorted(asyncio.run(main())) == [7, 7, 8]


def test_every_waiter_gets_the_error_and_a_cancelled_one_cancels_nothing() -> None:
    async def main() -> list[BaseException | None]:
        barrier = FakeBarrier(CommandError("TRYAGAIN no leader"))
        shared = SharedBarriers(barrier)
        waiters = [asyncio.ensure_future(shared.wait(1)) for _ in range(3)]
        await asyncio.sleep(0.01)
        waiters[0].cancel()
        barrier.gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        return list(results)

    first, *rest = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError)
    assert all(isinstance(r, CommandError) and r.message == "TRYAGAIN no leader" for r in rest)


def test_a_barrier_that_passes_lets_every_waiter_on() -> None:
    async def main() -> int:
        barrier = FakeBarrier()
        barrier.gate.set()
        shared = SharedBarriers(barrier)
        await asyncio.gather(*(shared.wait(3) for _ in range(4)))
        await shared.wait(3)
        return len(barrier.calls)

    assert asyncio.run(main()) == 2


@pytest.mark.parametrize("group", [0, 5])
def test_a_lone_read_gets_a_barrier_of_its_own(group: int) -> None:
    async def main() -> list[int]:
        barrier = FakeBarrier()
        barrier.gate.set()
        await SharedBarriers(barrier).wait(group)
        return barrier.calls

    assert asyncio.run(main()) == [group]
