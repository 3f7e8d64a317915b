"""Snowflake id issuing: the pure-Python reference twin of native/_snowflake.pyx.

An id is a positive signed 64-bit integer:

    bit 63      : 0
    bits 62..22 : t, milliseconds since the epoch (TIME_BITS = 41)
    bits 21..12 : worker id (WORKER_BITS = 10)
    bits 11..0  : sequence within the millisecond (SEQUENCE_BITS = 12)

    id = (t << 22) | (worker << 12) | seq

Strategy: a `Sequencer` holds one worker's state (the last issued ms and sequence) and issues
ids from clock readings it is handed; it never reads time itself. The state only moves forward:
ids leave strictly increasing, and a restart resumes after a high-water mark by constructing
with `last_ms` (that ms counts as used up). The compiled twin keeps this module's API, rules,
error types and messages exactly; tests/test_native_snowflake.py proves it with hypothesis.

Clock reads, the contract both twins keep (tests feed them one scripted clock):
- `next_one` reads the clock exactly once (after validating its arguments).
- `fill(out, n, ...)` reads nothing when n == 0. Otherwise it reads once at the start and then
  once more each time it has issued the last sequence number (MAX_SEQUENCE) of the ms it read
  while ids are still wanted. Every read is followed by at least one id or by the return of a
  status, so a read that finds its ms used up (or behind, past the limit, overflowing) ends
  the call. Equivalently, fill == a loop of `next_one` on a clock that repeats its previous
  reading and moves to a new reading only at those points (`fill_reference` in the tests).
"""

from __future__ import annotations

import operator
from typing import Protocol

TIME_BITS = 41
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_TIME = (1 << TIME_BITS) - 1
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1

# Statuses. next_one returns -status; fill returns status.
OK = 0
EXHAUSTED = 1  # the current ms is used up: spin and call again
BEHIND = 2  # the clock reads before the last issued ms, or before the epoch
LIMIT = 3  # the clock reads past the durable high-water mark limit_ms
OVERFLOW = 4  # the clock reads past MAX_TIME: the 41 time bits are spent

_TIME_SHIFT = WORKER_BITS + SEQUENCE_BITS
_MAX_ID = (1 << (TIME_BITS + _TIME_SHIFT)) - 1
# Epochs and wall readings lie within +-_MS_BOUND, so their difference fits a C int64.
_MS_BOUND = (1 << 62) - 1


class _WallClock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


def _checked(name: str, value: object, low: int, high: int) -> int:
    """`value` as an int within low..high; TypeError if not an integer, else ValueError."""
    number = operator.index(value)  # type: ignore[arg-type]
    if not low <= number <= high:
        raise ValueError(f"{name} {number} is outside {low}..{high}")
    return number


def make_id(t: int, worker: int, seq: int) -> int:
    """The id of relative ms `t`, worker `worker`, sequence `seq`. ValueError when out of range."""
    t = _checked("t", t, 0, MAX_TIME)
    worker = _checked("worker", worker, 0, MAX_WORKER)
    seq = _checked("seq", seq, 0, MAX_SEQUENCE)
    return (t << _TIME_SHIFT) | (worker << SEQUENCE_BITS) | seq


def parse_id(id: int) -> tuple[int, int, int]:
    """(t, worker, seq) of an id in 0..2**63-1. ValueError when out of range."""
    id = _checked("id", id, 0, _MAX_ID)
    return id >> _TIME_SHIFT, (id >> SEQUENCE_BITS) & MAX_WORKER, id & MAX_SEQUENCE


class Sequencer:
    """The sequence state of one worker; issues ids from the clock readings it takes.

    Invariants: -1 <= last_ms <= MAX_TIME, 0 <= sequence <= MAX_SEQUENCE, and every id issued
    so far is <= make_id(last_ms, worker_id, sequence) (when last_ms >= 0). A new id is issued
    only at a ms > last_ms, or at last_ms with sequence < MAX_SEQUENCE, so ids strictly increase.
    """

    __slots__ = ("_worker_id", "_epoch_ms", "_last_ms", "_sequence", "_now_ms", "_worker_bits")

    def __init__(self, worker_id: int, epoch_ms: int, last_ms: int = -1) -> None:
        """`epoch_ms`: absolute Unix ms of t = 0 (|epoch_ms| < 2**62). `last_ms`: relative ms
        of a high-water mark already used (-1: none); it counts as used up, so the first id
        is issued at a later ms. ValueError when an argument is out of range."""
        self._worker_id = _checked("worker_id", worker_id, 0, MAX_WORKER)
        self._epoch_ms = _checked("epoch_ms", epoch_ms, -_MS_BOUND, _MS_BOUND)
        self._last_ms = _checked("last_ms", last_ms, -1, MAX_TIME)
        self._sequence = MAX_SEQUENCE
        self._now_ms = -1
        self._worker_bits = self._worker_id << SEQUENCE_BITS

    @property
    def worker_id(self) -> int:
        return self._worker_id

    @property
    def epoch_ms(self) -> int:
        return self._epoch_ms

    @property
    def last_ms(self) -> int:
        """Relative ms of the last issued id (-1: none yet)."""
        return self._last_ms

    @last_ms.setter
    def last_ms(self, value: int) -> None:
        self._last_ms = _checked("last_ms", value, -1, MAX_TIME)

    @property
    def sequence(self) -> int:
        """Sequence number of the last issued id; MAX_SEQUENCE: last_ms is used up."""
        return self._sequence

    @sequence.setter
    def sequence(self, value: int) -> None:
        self._sequence = _checked("sequence", value, 0, MAX_SEQUENCE)

    @property
    def now_ms(self) -> int:
        """Relative ms of the most recent clock reading (-1 before any)."""
        return self._now_ms

    def __repr__(self) -> str:
        return (
            f"Sequencer(worker_id={self._worker_id}, epoch_ms={self._epoch_ms}, "
            f"last_ms={self._last_ms}, sequence={self._sequence}, now_ms={self._now_ms})"
        )

    def _read(self, clock: _WallClock) -> int:
        """Read the clock once: relative ms, also kept as now_ms."""
        wall = _checked("wall clock reading", clock.wall_ms(), -_MS_BOUND, _MS_BOUND)
        self._now_ms = wall - self._epoch_ms
        return self._now_ms

    def _admit(self, now: int, limit: int) -> int:
        """OK if an id may be issued at relative ms `now`, else the status why not."""
        if now > MAX_TIME:
            return OVERFLOW
        if now < 0 or now < self._last_ms:
            return BEHIND
        if now > limit:
            return LIMIT
        if now == self._last_ms and self._sequence == MAX_SEQUENCE:
            return EXHAUSTED
        return OK

    def next_one(self, clock: _WallClock, limit_ms: int) -> int:
        """Issue one id at the clock's ms, or return -status (OVERFLOW, BEHIND, LIMIT or
        EXHAUSTED, checked in that order). `limit_ms`: the durable high-water mark; ids with
        t <= limit_ms are allowed. Reads the clock once; on -status only now_ms changes."""
        limit = operator.index(limit_ms)
        now = self._read(clock)
        status = self._admit(now, limit)
        if status != OK:
            return -status
        if now > self._last_ms:
            self._last_ms = now
            self._sequence = 0
        else:
            self._sequence += 1
        return (now << _TIME_SHIFT) | self._worker_bits | self._sequence

    def fill(self, out: list[int], n: int, clock: _WallClock, limit_ms: int) -> int:
        """Append up to `n` ids to the list `out`; return OK once n were appended, else the
        status that stopped it (the ids appended before it stay: they are issued). Reads the
        clock at the start and again only when a ms is used up (see the module docstring);
        on EXHAUSTED the caller spins, calling again with n reduced by what was appended."""
        if type(out) is not list:
            raise TypeError("out must be a list")
        wanted = operator.index(n)
        if wanted < 0:
            raise ValueError(f"n {wanted} is negative")
        limit = operator.index(limit_ms)
        while wanted > 0:
            now = self._read(clock)
            status = self._admit(now, limit)
            if status != OK:
                return status
            first = 0 if now > self._last_ms else self._sequence + 1
            last = min(MAX_SEQUENCE, first + wanted - 1)
            base = (now << _TIME_SHIFT) | self._worker_bits
            out.extend(range(base | first, (base | last) + 1))
            self._last_ms = now
            self._sequence = last
            wanted -= last - first + 1
        return OK


__all__ = [
    "BEHIND",
    "EXHAUSTED",
    "LIMIT",
    "MAX_SEQUENCE",
    "MAX_TIME",
    "MAX_WORKER",
    "OK",
    "OVERFLOW",
    "SEQUENCE_BITS",
    "TIME_BITS",
    "WORKER_BITS",
    "Sequencer",
    "make_id",
    "parse_id",
]
