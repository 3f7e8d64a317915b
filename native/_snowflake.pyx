# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Snowflake id issuing, compiled: the hot path of native/snowflake_pure.py (the reference).

Same API, rules, clock-read pattern, error types and messages as the pure twin; read its
docstrings for the contract. What differs is only how:
- state lives in C integers of a cdef class; `fill` issues each ms's run of ids in a C loop
  (one int object and one list append per id, no Python calls);
- a clock whose own class (not a base class) sets `READS_CLOCK_REALTIME = True`, as
  core.clock.SystemClock does, is read with clock_gettime(CLOCK_REALTIME) in C plus its
  `offset_ms`, which is what such a clock's `wall_ms()` promises to compute
  (time.time_ns() // 1_000_000 + offset_ms). Any other clock, a subclass included, or an
  offset that is not a plain int within +-(2**62 - 1), goes through `clock.wall_ms()`.
  (A marker rather than the type itself, so native/ imports nothing outside itself.)
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.number cimport PyNumber_Index
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec


TIME_BITS = 41
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_TIME = (1 << TIME_BITS) - 1
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1

OK = 0
EXHAUSTED = 1
BEHIND = 2
LIMIT = 3
OVERFLOW = 4

_MAX_ID = (1 << 63) - 1
_MS_BOUND = (1 << 62) - 1

# The same numbers as C constants for the hot paths.
cdef enum:
    C_TIME_SHIFT = 22
    C_SEQUENCE_BITS = 12
    C_MAX_WORKER = 1023
    C_MAX_SEQUENCE = 4095
    C_OK = 0
    C_EXHAUSTED = 1
    C_BEHIND = 2
    C_LIMIT = 3
    C_OVERFLOW = 4

cdef long long C_MAX_TIME = (1LL << 41) - 1
cdef long long C_MS_BOUND = (1LL << 62) - 1
cdef long long C_LLONG_MAX = 0x7FFFFFFFFFFFFFFF

cdef object _REALTIME_TYPE = None  # the last clock class seen to carry the marker


cdef inline bint _reads_realtime(object clock):
    """Whether `clock`'s own class promises wall_ms() == CLOCK_REALTIME ms + offset_ms."""
    global _REALTIME_TYPE
    cdef object cls = type(clock)
    if cls is _REALTIME_TYPE:
        return True
    if cls.__dict__.get("READS_CLOCK_REALTIME") is True:
        _REALTIME_TYPE = cls
        return True
    return False


cdef long long _checked(str name, object value, long long low, long long high) except? -1:
    """`value` as a C integer within low..high; TypeError if not an integer, else ValueError
    (the message of the pure twin's _checked)."""
    cdef int overflow = 0
    number = PyNumber_Index(value)
    cdef long long result = PyLong_AsLongLongAndOverflow(number, &overflow)
    if overflow != 0 or result < low or result > high:
        raise ValueError(f"{name} {number} is outside {low}..{high}")
    return result


cdef long long _as_limit(object limit_ms) except? -2:
    """limit_ms clamped to -1..MAX_TIME: the same answers for every relative now the checks
    that run before it let through (0..MAX_TIME)."""
    cdef int overflow = 0
    cdef long long limit = PyLong_AsLongLongAndOverflow(PyNumber_Index(limit_ms), &overflow)
    if overflow > 0 or limit > C_MAX_TIME:
        return C_MAX_TIME
    if overflow < 0 or limit < -1:
        return -1
    return limit


def make_id(t, worker, seq):
    """The id of relative ms `t`, worker `worker`, sequence `seq`. ValueError when out of range."""
    cdef long long ct = _checked("t", t, 0, C_MAX_TIME)
    cdef long long cw = _checked("worker", worker, 0, C_MAX_WORKER)
    cdef long long cs = _checked("seq", seq, 0, C_MAX_SEQUENCE)
    return PyLong_FromLongLong((ct << C_TIME_SHIFT) | (cw << C_SEQUENCE_BITS) | cs)


def parse_id(id):
    """(t, worker, seq) of an id in 0..2**63-1. ValueError when out of range."""
    cdef long long cid = _checked("id", id, 0, C_LLONG_MAX)
    return (
        PyLong_FromLongLong(cid >> C_TIME_SHIFT),
        PyLong_FromLongLong((cid >> C_SEQUENCE_BITS) & C_MAX_WORKER),
        PyLong_FromLongLong(cid & C_MAX_SEQUENCE),
    )


cdef class Sequencer:
    """The sequence state of one worker; issues ids from the clock readings it takes.

    Invariants: -1 <= last_ms <= MAX_TIME, 0 <= sequence <= MAX_SEQUENCE, and every id issued
    so far is <= make_id(last_ms, worker_id, sequence) (when last_ms >= 0). A new id is issued
    only at a ms > last_ms, or at last_ms with sequence < MAX_SEQUENCE, so ids strictly increase.
    """

    cdef long long _worker_id
    cdef long long _epoch_ms
    cdef long long _last_ms
    cdef long long _sequence
    cdef long long _now_ms
    cdef long long _worker_bits

    def __init__(self, worker_id, epoch_ms, last_ms=-1):
        """`epoch_ms`: absolute Unix ms of t = 0 (|epoch_ms| < 2**62). `last_ms`: relative ms
        of a high-water mark already used (-1: none); it counts as used up, so the first id
        is issued at a later ms. ValueError when an argument is out of range."""
        self._worker_id = _checked("worker_id", worker_id, 0, C_MAX_WORKER)
        self._epoch_ms = _checked("epoch_ms", epoch_ms, -C_MS_BOUND, C_MS_BOUND)
        self._last_ms = _checked("last_ms", last_ms, -1, C_MAX_TIME)
        self._sequence = C_MAX_SEQUENCE
        self._now_ms = -1
        self._worker_bits = self._worker_id << C_SEQUENCE_BITS

    @property
    def worker_id(self):
        return self._worker_id

    @property
    def epoch_ms(self):
        return self._epoch_ms

    @property
    def last_ms(self):
        """Relative ms of the last issued id (-1: none yet)."""
        return self._last_ms

    @last_ms.setter
    def last_ms(self, value):
        self._last_ms = _checked("last_ms", value, -1, C_MAX_TIME)

    @property
    def sequence(self):
        """Sequence number of the last issued id; MAX_SEQUENCE: last_ms is used up."""
        return self._sequence

    @sequence.setter
    def sequence(self, value):
        self._sequence = _checked("sequence", value, 0, C_MAX_SEQUENCE)

    @property
    def now_ms(self):
        """Relative ms of the most recent clock reading (-1 before any)."""
        return self._now_ms

    def __repr__(self):
        return (
            f"Sequencer(worker_id={self._worker_id}, epoch_ms={self._epoch_ms}, "
            f"last_ms={self._last_ms}, sequence={self._sequence}, now_ms={self._now_ms})"
        )

    cdef long long _read(self, object clock) except? -1:
        """Read the clock once: relative ms, also kept as now_ms."""
        cdef long long wall
        cdef long long offset
        cdef int overflow = 0
        cdef timespec ts
        if _reads_realtime(clock):
            offset_ms = clock.offset_ms
            if type(offset_ms) is int:
                offset = PyLong_AsLongLongAndOverflow(offset_ms, &overflow)
                if overflow == 0 and -C_MS_BOUND <= offset <= C_MS_BOUND:
                    clock_gettime(CLOCK_REALTIME, &ts)
                    # tv_nsec is in 0..999999999, so this is floor(ns / 1e6) as in wall_ms().
                    wall = <long long>ts.tv_sec * 1000 + ts.tv_nsec // 1000000 + offset
                    if not -C_MS_BOUND <= wall <= C_MS_BOUND:
                        raise ValueError(
                            f"wall clock reading {wall} is outside {-C_MS_BOUND}..{C_MS_BOUND}"
                        )
                    self._now_ms = wall - self._epoch_ms
                    return self._now_ms
        wall = _checked("wall clock reading", clock.wall_ms(), -C_MS_BOUND, C_MS_BOUND)
        self._now_ms = wall - self._epoch_ms
        return self._now_ms

    cdef inline int _admit(self, long long now, long long limit) noexcept:
        """C_OK if an id may be issued at relative ms `now`, else the status why not."""
        if now > C_MAX_TIME:
            return C_OVERFLOW
        if now < 0 or now < self._last_ms:
            return C_BEHIND
        if now > limit:
            return C_LIMIT
        if now == self._last_ms and self._sequence == C_MAX_SEQUENCE:
            return C_EXHAUSTED
        return C_OK

    def next_one(self, clock, limit_ms):
        """Issue one id at the clock's ms, or return -status (OVERFLOW, BEHIND, LIMIT or
        EXHAUSTED, checked in that order). `limit_ms`: the durable high-water mark; ids with
        t <= limit_ms are allowed. Reads the clock once; on -status only now_ms changes."""
        cdef long long limit = _as_limit(limit_ms)
        cdef long long now = self._read(clock)
        cdef int status = self._admit(now, limit)
        if status != C_OK:
            return -status
        if now > self._last_ms:
            self._last_ms = now
            self._sequence = 0
        else:
            self._sequence += 1
        return PyLong_FromLongLong((now << C_TIME_SHIFT) | self._worker_bits | self._sequence)

    def fill(self, out, n, clock, limit_ms):
        """Append up to `n` ids to the list `out`; return OK once n were appended, else the
        status that stopped it (the ids appended before it stay: they are issued). Reads the
        clock at the start and again only when a ms is used up (see the pure twin's module
        docstring); on EXHAUSTED the caller spins, calling again with n reduced."""
        cdef int overflow = 0
        cdef long long wanted
        cdef long long limit
        cdef long long now
        cdef long long base
        cdef long long first
        cdef long long last
        cdef long long seq
        cdef int status
        cdef list ids
        if type(out) is not list:
            raise TypeError("out must be a list")
        count = PyNumber_Index(n)
        wanted = PyLong_AsLongLongAndOverflow(count, &overflow)
        if overflow > 0:
            wanted = C_LLONG_MAX  # more than 2**53 ids can never be issued anyway
        elif overflow < 0 or wanted < 0:
            raise ValueError(f"n {count} is negative")
        limit = _as_limit(limit_ms)
        ids = <list>out
        while wanted > 0:
            now = self._read(clock)
            status = self._admit(now, limit)
            if status != C_OK:
                return status
            first = 0 if now > self._last_ms else self._sequence + 1
            last = C_MAX_SEQUENCE if wanted > C_MAX_SEQUENCE - first else first + wanted - 1
            base = (now << C_TIME_SHIFT) | self._worker_bits
            for seq in range(first, last + 1):
                ids.append(PyLong_FromLongLong(base | seq))
                # Per id, so the state covers exactly what `out` holds if an append fails.
                self._last_ms = now
                self._sequence = seq
            wanted -= last - first + 1
        return C_OK
