"""Schedule text -> `Cron`, `Every` or `OneShot`, sans I/O. Evaluation: `scheduler.schedule`.

Grammar (whitespace separates fields; names and macros are case-insensitive):

- 5 fields `minute hour day-of-month month day-of-week` (Vixie cron), or 6 fields with
  seconds first `second minute hour day-of-month month day-of-week` (dkron, Quartz).
- Each field is a comma list of items: `*`, `N`, `A-B`, `*/S`, `A-B/S`, `A/S` (A to the
  field's maximum, step S, as dkron and Quartz). `?` means `*` and is allowed in the two
  day fields only (Quartz). Ranges do not wrap (`FRI-MON` is an error).
- Ranges: second 0-59, minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or JAN-DEC,
  day-of-week 0-7 or SUN-SAT with 0 and 7 both Sunday (Vixie and dkron numbering; Quartz's
  1=SUN numbering is NOT used: write names to be unambiguous).
- Day rule (Vixie cron): when the day-of-month or the day-of-week field starts with `*` or
  `?` (so `*/2` too), a day must match both; when both are restricted, either matches.
- Macros: `@yearly`/`@annually` = `0 0 1 1 *`, `@monthly` = `0 0 1 * *`, `@weekly` =
  `0 0 * * 0`, `@daily`/`@midnight` = `0 0 * * *`, `@hourly` = `0 * * * *`.
- `@every DURATION`: elapsed time, e.g. `500ms`, `10s`, `5m`, `1h30m`, `1d` (24 h elapsed);
  units h, m, s, ms (and d) each at most once, largest first; a decimal number is allowed
  when the result is a whole number of ms. Between `MIN_EVERY_MS` and `MAX_EVERY_MS`.
- Not supported, with a clear error: Quartz `L`, `W`, `#`, a year field, `@reboot`, and a
  `TZ=`/`CRON_TZ=` prefix (the zone is the job's TZ option).
- `@at TIME`: once, at an RFC 3339 instant (`2030-01-31T09:00:00Z`, `2030-01-31T10:00:00.250+01:00`;
  `T`/`Z` in either case, a fraction of up to 9 digits that is a whole number of ms, no leap
  second, 1970 to 8999). `@in DURATION`: once, DURATION (as `@every` writes it, 0 allowed)
  after the job's anchor, the leader's time when it took the JOB.ADD (scheduler/jobs.py).
  Both are `OneShot`: one fire time, whatever the zone.
- `@after` is no schedule of its own: it is the schedule of a job with the AFTER option
  (scheduler/jobs.py), which never reaches this parser; here it is refused, by name. An
  unknown macro, with fields or without, is refused with the list of every known one.

Every error is a `ScheduleError` whose message names the bad field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache

MAX_SCHEDULE_LEN = 256
MIN_EVERY_MS = 100
MAX_EVERY_MS = 10 * 366 * 86_400_000  # about ten years
MIN_IN_MS = 0  # `@in 0s` fires as soon as the job is committed
MAX_TIME_MS = 221_845_392_000_000  # 9000-01-01T00:00:00Z: the latest instant handled

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
_DAYS = "SUN MON TUE WED THU FRI SAT".split()
# Days a month can have (February counts its leap day), to reject schedules that never fire.
_MONTH_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|d|h|m|s)")
_DIGITS = re.compile(r"[0-9]{1,3}")
EVERY_MACRO = "@every"
AT_MACRO = "@at"  # once, at an RFC 3339 time
IN_MACRO = "@in"  # once, a duration after the job was added
AFTER_MACRO = "@after"  # scheduler.jobs.AFTER_SCHEDULE: a job that runs after another
KNOWN_MACROS = (*MACROS, EVERY_MACRO, AT_MACRO, IN_MACRO, AFTER_MACRO)
ERR_UNKNOWN_MACRO = "unknown macro {!r} (known: {})"
ERR_MACRO_FIELDS = "macro {} takes no fields"
ERR_AFTER_MACRO = f"{AFTER_MACRO} is the schedule of a job with the AFTER option, alone"
ERR_AT_ARGS = f"{AT_MACRO} takes one RFC 3339 time, e.g. '{AT_MACRO} 2030-01-31T09:00:00Z'"
ERR_IN_ARGS = f"{IN_MACRO} takes one duration, e.g. '{IN_MACRO} 30s'"
ERR_AT_FORMAT = "@at time {!r}: expected RFC 3339, YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)"
ERR_AT_FIELD = "@at time {!r}: {}"
ERR_AT_RANGE = "@at time {!r}: outside 1970-01-01T00:00:00Z to 8999-12-31T23:59:59Z"
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QUARTZ = re.compile(r"[0-9]*L|[0-9]+W|LW|[0-9A-Z]+#[0-9]+|L-[0-9]+")  # L, 5L, 15W, FRI#3


class ScheduleError(ValueError):
    """The schedule text is invalid; the message says which field and why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    question: bool = False  # `?` allowed


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31, question=True)
_MONTH = _Field("month", 1, 12, tuple(_MONTHS))
_DOW = _Field("day-of-week", 0, 7, tuple(_DAYS), question=True)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression. Each field holds its matching values, ascending.

    Invariants: every tuple is non-empty and sorted; `dows` uses 0-6 with Sunday 0 (a 7 in
    the text is folded to 0); `seconds` is (0,) for 5-field text. `dom_star`/`dow_star`
    drive the Vixie day rule; `hour_star` (hour field starts with `*`) selects the DST class
    of the schedule (see `scheduler.schedule`). There is at least one date that matches.
    """

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: tuple[int, ...]
    months: tuple[int, ...]
    dows: tuple[int, ...]
    dom_star: bool
    dow_star: bool
    hour_star: bool

    def matches_date(self, day: date) -> bool:
        """Whether the calendar date matches month and the day fields (Vixie rule)."""
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.doms
        dow_ok = day.isoweekday() % 7 in self.dows
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def matches_wall(self, wall: datetime) -> bool:
        """Whether a wall-clock time (whole second) matches every field."""
        return (
            wall.microsecond == 0
            and wall.second in self.seconds
            and wall.minute in self.minutes
            and wall.hour in self.hours
            and self.matches_date(wall.date())
        )


@dataclass(frozen=True)
class Every:
    """`@every DURATION`: fires at anchor + k * period_ms for k >= 1 (elapsed time)."""

    text: str
    period_ms: int


@dataclass(frozen=True)
class OneShot:
    """`@at TIME` (`at_ms` set) or `@in DURATION` (`delay_ms` set): one fire time."""

    text: str
    at_ms: int | None = None
    delay_ms: int | None = None

    def fire_ms(self, anchor_ms: int) -> int:
        """The one fire time: `at_ms`, or `delay_ms` after `anchor_ms` (the job's anchor)."""
        if self.at_ms is not None:
            return self.at_ms
        return anchor_ms + (self.delay_ms or 0)


Schedule = Cron | Every | OneShot


@lru_cache(maxsize=4096)
def parse_schedule(text: str) -> Schedule:
    """Parse schedule text; raise ScheduleError naming the bad field. Results are cached
    (they are immutable)."""
    if not isinstance(text, str):
        raise ScheduleError("schedule must be text")
    if len(text) > MAX_SCHEDULE_LEN:
        raise ScheduleError(f"schedule longer than {MAX_SCHEDULE_LEN} characters")
    parts = text.split()
    if not parts:
        raise ScheduleError("schedule is empty")
    head = parts[0].lower()
    if head.startswith(("tz=", "cron_tz=")):
        raise ScheduleError("time zone prefix not supported: give the zone in the TZ option")
    if head == EVERY_MACRO:
        if len(parts) != 2:
            raise ScheduleError("@every takes one duration, e.g. '@every 1h30m'")
        return Every(text, parse_duration_ms(parts[1]))
    if head in (AT_MACRO, IN_MACRO):
        return _parse_one_shot(text, head, parts)
    if head.startswith("@"):
        return _parse_macro(text, parts)
    return _parse_cron(text, parts)


def _parse_macro(text: str, parts: list[str]) -> Cron:
    head = parts[0].lower()
    if head not in KNOWN_MACROS:
        raise ScheduleError(ERR_UNKNOWN_MACRO.format(parts[0], ", ".join(KNOWN_MACROS)))
    if head == AFTER_MACRO:
        raise ScheduleError(ERR_AFTER_MACRO)
    if len(parts) != 1:
        raise ScheduleError(ERR_MACRO_FIELDS.format(parts[0]))
    return _parse_cron(text, MACROS[head].split())


def _parse_one_shot(text: str, head: str, parts: list[str]) -> OneShot:
    if len(parts) != 2:
        raise ScheduleError(ERR_AT_ARGS if head == AT_MACRO else ERR_IN_ARGS)
    if head == AT_MACRO:
        return OneShot(text, at_ms=parse_rfc3339_ms(parts[1]))
    return OneShot(text, delay_ms=_duration_ms(parts[1], IN_MACRO, MIN_IN_MS))


def parse_rfc3339_ms(text: str) -> int:
    """An RFC 3339 date-time (`2030-01-31T09:00:00Z`, `...T10:00:00.250+01:00`) -> epoch
    ms, within 0..MAX_TIME_MS. The fraction must be a whole number of ms; a leap second
    (second 60) is refused, as is an offset of 24 hours or more."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        raise ScheduleError(ERR_AT_FORMAT.format(text))
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    frac, zulu, sign, off_h, off_m = found.group(7, 8, 9, 10, 11)
    if second == 60:
        raise ScheduleError(ERR_AT_FIELD.format(text, "leap seconds are not supported"))
    if frac and frac[3:].strip("0"):
        raise ScheduleError(ERR_AT_FIELD.format(text, "not a whole number of milliseconds"))
    offset = timedelta(0)
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ScheduleError(ERR_AT_FIELD.format(text, "offset out of range"))
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
    try:
        wall = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:  # month 13, February 30, hour 24, ...
        raise ScheduleError(ERR_AT_FIELD.format(text, exc)) from None
    ms = (wall - _EPOCH) // timedelta(milliseconds=1) + int((frac or "0")[:3].ljust(3, "0"))
    if not 0 <= ms <= MAX_TIME_MS:
        raise ScheduleError(ERR_AT_RANGE.format(text))
    return ms


def parse_duration_ms(text: str) -> int:
    """`1h30m`, `500ms`, `1.5s` -> milliseconds, within MIN_EVERY_MS..MAX_EVERY_MS."""
    return _duration_ms(text, EVERY_MACRO, MIN_EVERY_MS)


def _duration_ms(text: str, macro: str, minimum_ms: int) -> int:
    """A duration of `macro` -> ms, within minimum_ms..MAX_EVERY_MS."""
    where = f"{macro} duration {text!r}"
    pos, total, last_rank = 0, 0, -1
    order = ["d", "h", "m", "s", "ms"]
    while pos < len(text):
        found = _DURATION_PART.match(text, pos)
        if found is None:
            raise ScheduleError(f"{where}: expected a number and a unit (h, m, s, ms)")
        number, unit = found.groups()
        rank = order.index(unit)
        if rank <= last_rank:
            raise ScheduleError(f"{where}: units must appear once each, largest first")
        last_rank = rank
        whole, _, frac = number.partition(".")
        if len(whole) > 15 or len(frac) > 3:
            raise ScheduleError(f"{where}: number too long")
        scale = 10 ** len(frac)
        value = int(whole + frac) * _UNIT_MS[unit]
        if value % scale:
            raise ScheduleError(f"{where}: not a whole number of milliseconds")
        total += value // scale
        pos = found.end()
    if not text:
        raise ScheduleError(f"{macro} needs a duration")
    if total < minimum_ms:
        raise ScheduleError(f"{where}: shorter than the minimum {minimum_ms}ms")
    if total > MAX_EVERY_MS:
        raise ScheduleError(f"{where}: longer than the maximum {MAX_EVERY_MS // 86_400_000}d")
    return total


def _parse_cron(text: str, parts: list[str]) -> Cron:
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ScheduleError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 with "
            f"seconds first, got {len(parts)}"
        )
    fields = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    values = [_parse_field(spec, part) for spec, part in zip(fields, parts, strict=True)]
    dows = tuple(sorted({d % 7 for d in values[5]}))
    cron = Cron(
        text=text,
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        doms=values[3],
        months=values[4],
        dows=dows,
        dom_star=parts[3].startswith(("*", "?")),
        dow_star=parts[5].startswith(("*", "?")),
        hour_star=parts[2].startswith("*"),
    )
    # Both restricted: either matches, and some weekday always exists. Otherwise a day
    # must lie in some month: every valid (month, day) falls on every weekday in time.
    if cron.dom_star or cron.dow_star:
        if not any(d <= _MONTH_MAX_DAYS[m - 1] for m in cron.months for d in cron.doms):
            raise ScheduleError(
                f"day-of-month field {parts[3]!r}: no such day in month field {parts[4]!r}"
            )
    return cron


def _parse_field(spec: _Field, text: str) -> tuple[int, ...]:
    where = f"{spec.name} field {text!r}"
    found: set[int] = set()
    for item in text.split(","):
        found.update(_parse_item(spec, item, where))
    return tuple(sorted(found))


def _parse_item(spec: _Field, item: str, where: str) -> range:
    if not item:
        raise ScheduleError(f"{where}: empty list item")
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _DIGITS.fullmatch(step_text) or not 1 <= int(step_text) <= spec.high - spec.low + 1:
            raise ScheduleError(
                f"{where}: step {step_text!r} must be 1 to {spec.high - spec.low + 1}"
            )
        step = int(step_text)
    if span in ("*", "?"):
        if span == "?" and not spec.question:
            raise ScheduleError(f"{where}: '?' is only allowed in day-of-month and day-of-week")
        if span == "?" and slash:
            raise ScheduleError(f"{where}: '?' takes no step")
        return range(spec.low, spec.high + 1, step)
    first_text, dash, last_text = span.partition("-")
    first = _value(spec, first_text, where)
    if dash:
        last = _value(spec, last_text, where)
        if last < first:
            raise ScheduleError(f"{where}: range {span} runs backwards (ranges do not wrap)")
    else:
        last = spec.high if slash else first  # `A/S` runs from A to the field's maximum
    return range(first, last + 1, step)


def _value(spec: _Field, text: str, where: str) -> int:
    if text.upper() in spec.names:
        return spec.low + spec.names.index(text.upper())
    if not _DIGITS.fullmatch(text):
        if _QUARTZ.fullmatch(text.upper()):
            raise ScheduleError(f"{where}: Quartz L, W and # are not supported")
        raise ScheduleError(f"{where}: {text!r} is not a number{_name_hint(spec)}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise ScheduleError(f"{where}: {value} is out of range {spec.low}-{spec.high}")
    return value


def _name_hint(spec: _Field) -> str:
    return f" or a name ({spec.names[0]}-{spec.names[-1]})" if spec.names else ""
