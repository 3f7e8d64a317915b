"""Argument checks shared by the scheduler's RESP commands (scheduler/server.py and
scheduler/worker_commands.py): each raises CommandError with the reply a client sees."""

from __future__ import annotations

from core.resp import CommandError
from core.resp_commands import parse_int

ERR_UTF8 = "ERR arguments must be UTF-8 text"


def text_arg(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(ERR_UTF8) from None


def bounded_int(raw: bytes, low: int, high: int, error: str) -> int:
    """An integer argument from `low` to `high`, or CommandError(`error`)."""
    value = parse_int(raw, error)
    if not low <= value <= high:
        raise CommandError(error)
    return value
