"""The idgen generator rules with a manual clock: no sockets, no disk."""

from __future__ import annotations

import pytest

from core.clock import ManualClock
from idgen.generator import RESERVE, SPIN, IdGenerator, IssueRefused, Wait
from idgen.layout import IDS_PER_MS, MAX_TIME_MS, parse

EPOCH = 1_704_067_200_000
T0 = EPOCH + 1_000_000


def ready(clock: ManualClock, worker: int = 1, hwm: int | None = None, **kw: int) -> IdGenerator:
    """A generator whose first reservation has been made durable."""
    gen = IdGenerator(worker, EPOCH, clock, hwm, **kw)
    reserve(gen)
    return gen


def reserve(gen: IdGenerator) -> None:
    """Do what the server does: persist the wanted mark (here: nothing to write)."""
    target = gen.reservation()
    if target is not None:
        gen.reserved(target)


def test_needs_a_durable_mark_before_the_first_id() -> None:
    clock = ManualClock(T0)
    gen = IdGenerator(1, EPOCH, clock)
    assert gen.next_one() == RESERVE
    gen.reserved(gen.reservation())  # type: ignore[arg-type]
    first = gen.next_one()
    assert isinstance(first, int)
    assert parse(first, EPOCH).time_ms == T0
    assert gen.durable_hwm_ms >= T0


def test_sequence_counts_up_within_a_millisecond() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, worker=7)
    ids = [gen.next_one() for _ in range(5)]
    assert [parse(i, EPOCH).sequence for i in ids] == [0, 1, 2, 3, 4]  # type: ignore[arg-type]
    assert {parse(i, EPOCH).worker for i in ids} == {7}  # type: ignore[arg-type]


def test_exhausted_sequence_waits_for_the_next_millisecond() -> None:
    clock = ManualClock(T0)
    gen = ready(clock)
    out: list[int] = []
    assert gen.fill(out, IDS_PER_MS + 10) == SPIN
    assert len(out) == IDS_PER_MS
    assert gen.next_one() == SPIN
    clock.advance(1)
    assert gen.fill(out, 10) is None
    assert parse(out[-1], EPOCH).time_ms == T0 + 1
    assert out == sorted(set(out))


def test_small_backward_step_is_waited_out() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, max_backward_ms=5)
    first = gen.next_one()
    clock.step_wall(-4)
    assert gen.next_one() == Wait("sleep", 4)
    clock.advance(4)  # the clock is back at T0: the sequence continues
    second = gen.next_one()
    assert isinstance(second, int) and second > first  # type: ignore[operator]


def test_large_backward_step_is_refused_with_its_size_until_caught_up() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, max_backward_ms=5)
    first = gen.next_one()
    clock.step_wall(-200)
    with pytest.raises(IssueRefused, match="CLOCK clock moved backwards by 200 ms"):
        gen.next_one()
    clock.advance(150)
    with pytest.raises(IssueRefused, match="by 50 ms"):
        gen.fill([], 3)
    clock.advance(51)
    later = gen.next_one()
    assert isinstance(later, int) and later > first  # type: ignore[operator]


def test_ids_never_pass_the_durable_mark() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, reserve_ms=1000)
    mark = gen.durable_hwm_ms
    clock.advance(mark - T0 + 1)
    assert gen.next_one() == RESERVE
    out: list[int] = []
    assert gen.fill(out, 5) == RESERVE and out == []
    gen.reserved(gen.reservation())  # type: ignore[arg-type]
    renewed = gen.next_one()
    assert isinstance(renewed, int)
    assert parse(renewed, EPOCH).time_ms == clock.wall_ms() > mark  # issued past the old mark


def test_reservation_renews_at_half_the_reserve() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, reserve_ms=1000)
    assert gen.reservation() is None
    clock.advance(600)
    assert gen.reservation() == T0 + 600 + 1000


def test_restart_behind_the_mark_never_reissues() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, reserve_ms=1000)
    issued = [gen.next_one() for _ in range(100)]
    mark = gen.durable_hwm_ms
    # Restart on the same mark with the clock stepped back 10 s: refused, never reissued.
    clock.step_wall(-10_000)
    again = ready(clock, hwm=mark, reserve_ms=1000)
    with pytest.raises(IssueRefused, match="CLOCK"):
        again.next_one()
    clock.advance(10_000 + (mark - T0) + 1)
    assert again.next_one() == RESERVE
    reserve(again)
    new = again.next_one()
    assert isinstance(new, int) and new > max(issued)  # type: ignore[type-var]
    assert parse(new, EPOCH).time_ms > mark


def test_restart_within_the_reservation_waits_instead_of_refusing() -> None:
    clock = ManualClock(T0)
    gen = ready(clock, reserve_ms=1000, max_backward_ms=5)
    gen.next_one()
    mark = gen.durable_hwm_ms
    again = ready(clock, hwm=mark, reserve_ms=1000, max_backward_ms=5)
    wait = again.next_one()
    assert wait == Wait("sleep", mark - T0)
    clock.advance(mark - T0 + 1)
    reserve(again)
    assert parse(again.next_one(), EPOCH).time_ms == mark + 1  # type: ignore[arg-type]


def test_fault_stops_issuing() -> None:
    gen = ready(ManualClock(T0))
    gen.fault = "CONFLICT worker id 1 is also held by x"
    with pytest.raises(IssueRefused, match="CONFLICT"):
        gen.next_one()
    with pytest.raises(IssueRefused, match="CONFLICT"):
        gen.fill([], 2)
    gen.fault = None
    first, second = gen.next_one(), gen.next_one()
    assert isinstance(first, int) and isinstance(second, int)
    assert (parse(first, EPOCH).time_ms, parse(first, EPOCH).worker) == (T0, 1)
    assert second == first + 1  # the sequence goes on where it was


def test_time_bits_exhausted_is_refused() -> None:
    clock = ManualClock(EPOCH + MAX_TIME_MS - 1)
    gen = ready(clock)
    last = gen.next_one()
    assert isinstance(last, int)
    assert parse(last, EPOCH).time_ms == EPOCH + MAX_TIME_MS - 1  # the last ms still issues
    assert gen.years_left() < 0.001
    clock.advance(5)
    with pytest.raises(IssueRefused, match="OVERFLOW"):
        gen.next_one()


def test_worker_id_range() -> None:
    with pytest.raises(ValueError):
        IdGenerator(1024, EPOCH, ManualClock(T0))
