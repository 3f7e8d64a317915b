"""Schedules and their fire times, sans I/O: no clock is read; times come in as epoch ms.

Parsing is in `scheduler.schedule_parse` (grammar in its docstring), re-exported here.
Evaluation is written here rather than taken from a library: croniter 7.0 fires a fixed
time twice on a fall-back day, and cronsim 2.8 (Debian cron's rule) drops `*/20 2 * * *`
entirely on a spring-forward day and applies no DST rule at all to 6-field expressions
(`0 30 2 * * *` is skipped, `0 30 1 * * *` fires twice); both differ from the rule below.
cronsim agrees with it on 5-field schedules whose hour field starts with `*` or whose
minute and hour fields are both fixed, and the tests use it as an oracle there, minus three
cronsim quirks they name (a one-value stepped range `5-5/2` read as `5/2`, a skipped midnight
fired by hour-wildcard schedules, a start inside a repeated hour).

Fire times
----------
A cron schedule names wall-clock times in the job's IANA zone (zoneinfo). `@every` is
elapsed time: it fires at anchor + k * period (k >= 1, anchor = the job's creation time),
whatever the zone. A one-shot schedule (`@at`, `@in`) has one fire time, whatever the zone
(`@in`: its duration after the anchor). `next_after` returns the first fire time strictly
after a given instant (None when a one-shot time is not after it); every time is an integer
of epoch milliseconds.

The DST rule
------------
A cron schedule is *hour-wildcard* when its hour field starts with `*` (`*`, `*/2`;
`@hourly` too): it is defined on every wall-clock hour that exists, so

  H1. in a spring-forward gap its times do not exist and are skipped: `30 * * * *` fires at
      01:30 EST, then 03:30 EDT, one real hour apart; `*/5 * * * *` fires at 01:55 EST then
      03:00 EDT, five real minutes apart;
  H2. in a fall-back overlap the repeated hour is an hour like any other: it fires in both
      passes. `*/5 * * * *` fires every 5 real minutes all day (300 times on a 25-hour
      day, 276 on a 23-hour day); `30 * * * *` fires at 01:30 EDT and again at 01:30 EST.

Every other cron schedule is *fixed-hour* (`30 2 * * *`, `*/10 2 * * *`, `@daily`): its
hours name times of day, each of which happens once a day, so

  F1. a matching wall time inside a spring-forward gap fires once, at the first instant
      after the gap (the transition itself): `30 2 * * *` on a day the clock jumps from
      02:00 to 03:00 fires at 03:00; several matching times in one gap (`*/10 2 * * *`)
      fire once between them, at 03:00; a time that matches at 03:00 too fires once;
      `@daily` in a zone whose midnight is skipped (America/Santiago) fires at 01:00;
  F2. a matching wall time that occurs twice in a fall-back overlap fires once, at its first
      occurrence (fold=0); the second pass is silent for it: `30 1 * * *` fires at 01:30
      EDT only, `*/20 1 * * *` fires at 01:00, 01:20 and 01:40 EDT only.

Classification is by the text of the hour field alone, so `0-23` is fixed-hour. (Debian
cron and cronsim count a `*` minute with a fixed hour as wildcard too, and so run
`*/20 2 * * *` not at all on a spring-forward day; here it keeps its one F1 run.) `@every`
is elapsed time and has no DST cases. Under both classes the fire times are strictly
increasing, every time is a matching wall time in the zone or, for F1, a transition instant
whose gap holds a matching wall time, and no instant fires twice.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.schedule_parse import (
    MACROS,
    MAX_EVERY_MS,
    MAX_SCHEDULE_LEN,
    MAX_TIME_MS,
    MIN_EVERY_MS,
    Cron,
    Every,
    OneShot,
    Schedule,
    ScheduleError,
    parse_duration_ms,
    parse_schedule,
)

__all__ = [
    "MACROS",
    "MAX_EVERY_MS",
    "MAX_SCHEDULE_LEN",
    "MAX_TIME_MS",
    "MIN_EVERY_MS",
    "Cron",
    "Every",
    "OneShot",
    "Schedule",
    "ScheduleError",
    "count_slots",
    "is_transition",
    "last_slots",
    "next_after",
    "parse_duration_ms",
    "parse_schedule",
    "slots_between",
    "zone",
]

MAX_ZONE_LEN = 64
MAX_SEARCH_YEARS = 100  # a valid cron schedule matches within 40 years (Feb 29 on a weekday)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_SECOND = timedelta(seconds=1)
_ZONE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_+-")


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. "Europe/Berlin", "UTC"); ScheduleError if unknown."""
    bad = (
        not name
        or len(name) > MAX_ZONE_LEN
        or not set(name) <= _ZONE_CHARS
        or name.startswith("/")
        or ".." in name
        or name in ("localtime", "posixrules", "Factory")
        or name.startswith("right/")  # leap-second zones: POSIX epoch ms would be off by ~27 s
    )
    if not bad:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ScheduleError(f"unknown time zone {name!r}")


def next_after(schedule: Schedule, after_ms: int, tz: ZoneInfo,
               anchor_ms: int = 0) -> int | None:
    """The first fire time strictly after `after_ms`, in epoch ms (module docstring rules);
    None only for a one-shot schedule whose time is not after `after_ms`.

    `anchor_ms` is the `@every` and `@in` anchor (the job's creation time); cron ignores it.
    Raises ValueError when a time is outside 0..MAX_TIME_MS.
    """
    if isinstance(schedule, OneShot):
        fire = schedule.fire_ms(anchor_ms)
        return fire if fire > after_ms else None
    _check_time(after_ms)
    if isinstance(schedule, Every):
        return _every_after(schedule, after_ms, anchor_ms)
    return _next_cron(schedule, after_ms, tz)


def slots_between(
    schedule: Schedule, start_ms: int, end_ms: int, tz: ZoneInfo, limit: int, anchor_ms: int = 0
) -> list[int]:
    """The fire times in (start_ms, end_ms], ascending, at most `limit` (the earliest ones).

    Equal to iterating `next_after` from `start_ms` while the time is <= end_ms.
    """
    out: list[int] = []
    if limit <= 0 or end_ms <= start_ms:
        return out
    if isinstance(schedule, OneShot):
        return _one_shot_in(schedule, start_ms, end_ms, anchor_ms)
    if isinstance(schedule, Every):
        fire = _every_after(schedule, start_ms, anchor_ms)
        last = min(end_ms, fire + (limit - 1) * schedule.period_ms)
        return list(range(fire, last + 1, schedule.period_ms))
    fire = start_ms
    while len(out) < limit:
        fire = _cron_after(schedule, fire, tz)
        if fire > end_ms:
            break
        out.append(fire)
    return out


def last_slots(
    schedule: Schedule, start_ms: int, end_ms: int, tz: ZoneInfo, keep: int, anchor_ms: int = 0
) -> tuple[tuple[int, ...], int]:
    """(the latest `keep` fire times in (start_ms, end_ms], how many that interval holds).
    `@every` is computed directly; cron evaluates every time in the interval."""
    if end_ms <= start_ms or keep <= 0:
        return (), 0
    if isinstance(schedule, OneShot):
        fires = _one_shot_in(schedule, start_ms, end_ms, anchor_ms)
        return tuple(fires), len(fires)
    if isinstance(schedule, Every):
        first = _every_after(schedule, start_ms, anchor_ms)
        if first > end_ms:
            return (), 0
        count = (end_ms - first) // schedule.period_ms + 1
        last = first + (count - 1) * schedule.period_ms
        begin = max(first, last - (keep - 1) * schedule.period_ms)
        return tuple(range(begin, last + 1, schedule.period_ms)), count
    tail: deque[int] = deque(maxlen=keep)
    fire, count = start_ms, 0
    while True:
        fire = _cron_after(schedule, fire, tz)
        if fire > end_ms:
            return tuple(tail), count
        tail.append(fire)
        count += 1


def count_slots(
    schedule: Schedule, start_ms: int, end_ms: int, tz: ZoneInfo, cap: int, anchor_ms: int = 0
) -> int:
    """How many fire times (start_ms, end_ms] holds, counting no further than `cap`."""
    if end_ms <= start_ms:
        return 0
    if isinstance(schedule, OneShot):
        return min(cap, len(_one_shot_in(schedule, start_ms, end_ms, anchor_ms)))
    if isinstance(schedule, Every):
        first = _every_after(schedule, start_ms, anchor_ms)
        return 0 if first > end_ms else min(cap, (end_ms - first) // schedule.period_ms + 1)
    return len(slots_between(schedule, start_ms, end_ms, tz, cap))


def _one_shot_in(schedule: OneShot, start_ms: int, end_ms: int, anchor_ms: int) -> list[int]:
    """The one-shot time, if it lies in (start_ms, end_ms]."""
    fire = schedule.fire_ms(anchor_ms)
    return [fire] if start_ms < fire <= end_ms else []


def _every_after(schedule: Every, after_ms: int, anchor_ms: int) -> int:
    """`next_after` of an `@every` schedule (never None)."""
    _check_time(after_ms)
    _check_time(anchor_ms)
    if after_ms < anchor_ms:
        return anchor_ms + schedule.period_ms
    return anchor_ms + ((after_ms - anchor_ms) // schedule.period_ms + 1) * schedule.period_ms


def _cron_after(schedule: Cron, after_ms: int, tz: ZoneInfo) -> int:
    """`next_after` of a cron schedule (never None)."""
    _check_time(after_ms)
    return _next_cron(schedule, after_ms, tz)


def is_transition(ms: int, tz: ZoneInfo) -> bool:
    """Whether the zone's UTC offset changes at instant `ms` (offset at ms-1 differs)."""
    return _offset(ms - 1, tz) != _offset(ms, tz)


# -- cron evaluation ---------------------------------------------------------------------
#
# `first(w)` is the instant a matching wall time w fires at first: its only or first
# occurrence, or (F1) the end of the gap it falls in, or none (H1). first() is
# non-decreasing in w, so the next such instant after `a` is first(w) of the earliest
# matching w past a's wall time. The second occurrences of H2 are ordered differently:
# they matter only while `a` lies in one of the two passes of an overlap, and are then
# searched for separately.


def _next_cron(cron: Cron, a: int, tz: ZoneInfo) -> int:
    here = _aware(a, tz)
    wall = here.replace(tzinfo=None)
    start = _ceil_second(wall + _MS)  # walls strictly after a's wall
    second_pass: int | None = None
    first_offset = wall.replace(tzinfo=tz, fold=0).utcoffset()
    later_offset = wall.replace(tzinfo=tz, fold=1).utcoffset()
    if first_offset != later_offset:  # a lies in one of the two passes of an overlap
        assert first_offset is not None and later_offset is not None
        overlap_ms = (first_offset - later_offset) // _MS
        if here.fold == 0:
            cut = _transition(a, a + overlap_ms, tz)
        else:
            cut = _transition(a - overlap_ms, a, tz)
        repeat_start = _aware(cut, tz).replace(tzinfo=None)  # wall just after the cut
        repeat_end = repeat_start + (first_offset - later_offset)
        if here.fold == 1:  # walls before repeat_end were seen in the first pass already
            start = max(start, _ceil_second(repeat_end))
        if cron.hour_star:
            low = _ceil_second(repeat_start) if here.fold == 0 else _ceil_second(wall + _MS)
            repeat = _next_wall(cron, low)
            if repeat < repeat_end:
                second_pass = _to_ms(repeat, tz, fold=1)
    candidate = _next_wall(cron, start)
    while True:
        fire = _first_instant(cron, candidate, tz)
        if fire is not None and fire > a:
            break
        candidate = _next_wall(cron, candidate + _SECOND)
    return fire if second_pass is None else min(fire, second_pass)


def _first_instant(cron: Cron, wall: datetime, tz: ZoneInfo) -> int | None:
    """Where matching wall time `wall` fires first: F1/F2/H1/H2 of the module docstring."""
    ms = _to_ms(wall, tz, fold=0)
    if _aware(ms, tz).replace(tzinfo=None) == wall:
        return ms  # exists; fold=0 is its first occurrence
    if cron.hour_star:
        return None  # H1: skipped
    # F1: inside a gap. With fold=1 the wall reads with the later offset (an instant before
    # the gap), with fold=0 with the earlier one (after it); the transition lies between.
    return _transition(_to_ms(wall, tz, fold=1), ms, tz)


def _next_wall(cron: Cron, start: datetime) -> datetime:
    """The first naive wall time >= start (a whole second) that matches every field."""
    t = start
    limit = start.year + MAX_SEARCH_YEARS
    while True:
        if t.year > limit:
            raise ScheduleError(f"schedule {cron.text!r} does not fire within {MAX_SEARCH_YEARS}y")
        if t.month not in cron.months:
            month = _next_in(cron.months, t.month)
            year = t.year if month is not None else t.year + 1
            t = datetime(year, month or cron.months[0], 1)
            continue
        if not cron.matches_date(t.date()):
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        hour = _next_in(cron.hours, t.hour)
        if hour is None:
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        if hour != t.hour:
            t = t.replace(hour=hour, minute=0, second=0)
        minute = _next_in(cron.minutes, t.minute)
        if minute is None:
            t = t.replace(minute=0, second=0) + timedelta(hours=1)
            continue
        if minute != t.minute:
            t = t.replace(minute=minute, second=0)
        second = _next_in(cron.seconds, t.second)
        if second is None:
            t = t.replace(second=0) + timedelta(minutes=1)
            continue
        return t.replace(second=second)


def _next_in(values: tuple[int, ...], value: int) -> int | None:
    for candidate in values:
        if candidate >= value:
            return candidate
    return None


# -- instants, walls and offsets ---------------------------------------------------------


def _check_time(ms: int) -> None:
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"time {ms} ms is outside 0..{MAX_TIME_MS}")


def _aware(ms: int, tz: ZoneInfo) -> datetime:
    """The instant as an aware wall time in tz, fold set for a second occurrence."""
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def _to_ms(wall: datetime, tz: ZoneInfo, fold: int) -> int:
    return (wall.replace(tzinfo=tz, fold=fold) - _EPOCH) // _MS


def _offset(ms: int, tz: ZoneInfo) -> timedelta | None:
    return _aware(ms, tz).utcoffset()


def _transition(before_ms: int, after_ms: int, tz: ZoneInfo) -> int:
    """The first instant in (before_ms, after_ms] with the offset in force at after_ms,
    given that the offset at before_ms differs (bisection, to the millisecond)."""
    target = _offset(after_ms, tz)
    low, high = before_ms, after_ms
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, tz) == target:
            high = middle
        else:
            low = middle
    return high


def _ceil_second(wall: datetime) -> datetime:
    if wall.microsecond:
        return wall.replace(microsecond=0) + _SECOND
    return wall
