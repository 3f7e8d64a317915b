"""The ordered part of a range table's keys, and the points its map and range reads use;
sans I/O.

Strategy: a range table orders its rows by a *position*, an integer read from the start of
the key after the table's prefix (`<table>:`), and split points, `TABLE.RANGE` bounds and
the map are positions too, so routing is one bisect. Two kinds:

- DATE: the key's rest begins with `YYYY-MM-DD` or `YYYY-MM` (a valid calendar date,
  year 0001..9999), followed by the end of the key or a character that is not a digit (and,
  after `YYYY-MM`, not a `-` that starts a day): `orders:2026-12-07:1042`, `orders:2026-12`,
  `orders:2026-12:1042`. Its position is the number YYYYMMDD, with DD = 00 when the key
  names a month only, so a month's keys lie in [YYYYMM00, YYYYMM00 + 100). Points are
  written the same way: `2027-01` (= 20270100, the first position of January) or
  `2027-01-15`.
- SNOWFLAKE: the key's rest begins with the decimal digits of a Snowflake id (1..19 digits,
  at most 2**63-1) from idgen, followed by the end of the key or a non-digit:
  `events:130239887611904000`. Its position is the id's time in Unix milliseconds: the 41
  time bits as native/snowflake.py (the layout idgen issues and decodes with) unpacks them,
  plus the table's epoch (idgen's default epoch unless the table names another). Points
  are Unix milliseconds (`1798761600000`) or a UTC date (`2027-01`, `2027-01-15`: its
  midnight).

Because a DATE key begins with its date, key order is date order (up to the month-only
keys that sort beside their month's days), so a range read of DATE keys walks a bounded
stretch of the key index; SNOWFLAKE keys of one digit count also sort in id order. `-`
and `+` stand for the open ends in a range read.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from native.snowflake import parse_id

__all__ = [
    "KIND_DATE", "KIND_SNOWFLAKE", "KINDS", "MAX_POSITION", "MIN_POSITION",
    "SNOWFLAKE_EPOCH_MS", "KeyFormatError", "key_position", "parse_bound", "parse_point",
    "point_text", "scan_bounds",
]

KIND_DATE = "DATE"
KIND_SNOWFLAKE = "SNOWFLAKE"
KINDS = (KIND_DATE, KIND_SNOWFLAKE)
# idgen's default epoch (idgen/layout.py DEFAULT_EPOCH_MS, 2024-01-01T00:00:00Z); a test
# checks they agree, as a daemon may not import another.
SNOWFLAKE_EPOCH_MS = 1_704_067_200_000
MAX_ID = (1 << 63) - 1
MAX_ID_DIGITS = 19
MAX_POINT_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z: past every date point
MIN_POSITION = -1  # below every position: the open lower end
MAX_POSITION = 1 << 62  # above every position: the open upper end
OPEN_LOW = b"-"
OPEN_HIGH = b"+"
DATE_MONTH_CHARS = 7  # YYYY-MM
DATE_DAY_CHARS = 10  # YYYY-MM-DD
ERR_NO_DATE = ("no date after the prefix (a DATE table's keys begin "
               "<table>:YYYY-MM or <table>:YYYY-MM-DD)")
ERR_NO_ID = ("no Snowflake id after the prefix (a SNOWFLAKE table's keys begin "
             "<table>:<id>, 1..19 digits)")
ERR_BAD_DATE = "not a date: {!r} (YYYY-MM or YYYY-MM-DD)"
ERR_BAD_POINT = "not a point of a {} table: {!r} ({})"
ERR_UNKNOWN_KIND = "unknown ordered part {!r} (DATE or SNOWFLAKE)"
POINT_FORMS = {KIND_DATE: "YYYY-MM or YYYY-MM-DD",
               KIND_SNOWFLAKE: "Unix ms, YYYY-MM or YYYY-MM-DD"}


class KeyFormatError(ValueError):
    """A key or a point that does not have the form its table's kind wants."""


def _digits(data: bytes) -> bool:
    return bool(data) and all(0x30 <= b <= 0x39 for b in data)


def _date_parts(text: bytes) -> tuple[int, int, int, int] | None:
    """(year, month, day or 0, characters used) of the date `text` begins with, or None."""
    if len(text) < DATE_MONTH_CHARS or text[4:5] != b"-":
        return None
    if not (_digits(text[0:4]) and _digits(text[5:7])):
        return None
    year, month = int(text[0:4]), int(text[5:7])
    if year < 1 or not 1 <= month <= 12:
        return None
    rest = text[DATE_MONTH_CHARS:]
    if rest[:1] == b"-" and _digits(rest[1:2]):
        if not _digits(rest[1:3]) or _digits(rest[3:4]):
            return None
        day = int(rest[1:3])
        if not 1 <= day <= calendar.monthrange(year, month)[1]:
            return None
        return year, month, day, DATE_DAY_CHARS
    if _digits(rest[:1]):
        return None
    return year, month, 0, DATE_MONTH_CHARS


def _date_position(rest: bytes) -> int:
    parts = _date_parts(rest)
    if parts is None:
        raise KeyFormatError(ERR_NO_DATE)
    year, month, day, _ = parts
    return year * 10000 + month * 100 + day


def _snowflake_position(rest: bytes, epoch_ms: int) -> int:
    end = 0
    while end < len(rest) and 0x30 <= rest[end] <= 0x39:
        end += 1
    if not 1 <= end <= MAX_ID_DIGITS or int(rest[:end]) > MAX_ID:
        raise KeyFormatError(ERR_NO_ID)
    relative_ms, _, _ = parse_id(int(rest[:end]))
    return int(epoch_ms + relative_ms)


def key_position(kind: str, rest: bytes, epoch_ms: int = SNOWFLAKE_EPOCH_MS) -> int:
    """The position of a range table's key whose part after `<table>:` is `rest`.
    KeyFormatError when `rest` does not begin as the kind wants (see the module header)."""
    if kind == KIND_DATE:
        return _date_position(rest)
    if kind == KIND_SNOWFLAKE:
        return _snowflake_position(rest, epoch_ms)
    raise KeyFormatError(ERR_UNKNOWN_KIND.format(kind))


def _whole_date(text: bytes) -> tuple[int, int, int]:
    parts = _date_parts(text)
    if parts is None or parts[3] != len(text):
        raise KeyFormatError(ERR_BAD_DATE.format(text.decode("utf-8", "replace")))
    return parts[0], parts[1], parts[2]


def parse_point(kind: str, text: bytes) -> int:
    """The position a split point or range bound names (see the module header).
    KeyFormatError when `text` is not one."""
    shown = text.decode("utf-8", "replace")
    try:
        if kind == KIND_DATE:
            year, month, day = _whole_date(text)
            return year * 10000 + month * 100 + day
        if kind == KIND_SNOWFLAKE:
            if _digits(text) and len(text) <= len(str(MAX_POINT_MS)):
                return int(text)
            year, month, day = _whole_date(text)
            stamp = datetime(year, month, day or 1, tzinfo=UTC)
            return int(stamp.timestamp()) * 1000
    except (KeyFormatError, ValueError, OverflowError):
        raise KeyFormatError(ERR_BAD_POINT.format(kind, shown, POINT_FORMS[kind])) from None
    raise KeyFormatError(ERR_UNKNOWN_KIND.format(kind))


def parse_bound(kind: str, text: bytes, low: bool) -> int:
    """A range read's bound: `-` (low) / `+` (high) for the open ends, else a point."""
    if text == (OPEN_LOW if low else OPEN_HIGH):
        return MIN_POSITION if low else MAX_POSITION
    return parse_point(kind, text)


def point_text(kind: str, position: int) -> str:
    """How `TABLE.INFO` writes a position; parse_point reads it back. The open ends are
    `-` and `+`."""
    if position <= MIN_POSITION:
        return OPEN_LOW.decode()
    if position >= MAX_POSITION:
        return OPEN_HIGH.decode()
    if kind == KIND_DATE:
        year, month, day = position // 10000, position // 100 % 100, position % 100
        return f"{year:04d}-{month:02d}" + (f"-{day:02d}" if day else "")
    return str(position)


def scan_bounds(kind: str, prefix: bytes, low: int, high: int) -> tuple[bytes, bytes]:
    """Key bounds [first, end) that hold every key of the table with a position in
    [low, high): for DATE the months around them, else the whole prefix. Keys inside the
    bounds must still be checked by position."""
    end = prefix[:-1] + bytes([prefix[-1] + 1]) if prefix else b"\xff"
    if kind != KIND_DATE:
        return prefix, end
    first = prefix
    if MIN_POSITION < low < MAX_POSITION:
        first = prefix + point_text(kind, low // 100 * 100).encode()
    if MIN_POSITION < high < MAX_POSITION:
        year, month = high // 10000, high // 100 % 100 + 1
        if month > 12:
            year, month = year + 1, 1
        if year <= 9999:
            end = prefix + f"{year:04d}-{month:02d}".encode()
    return first, end
