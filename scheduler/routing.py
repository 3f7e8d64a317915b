"""Which worker may take which run, sans I/O: workers' adverts and the routing rule.

Every worker advertises what it can execute with each poll (its claim entry carries it, so
every replica applies the same rule): a shell worker its tags (`scheduler worker --tags
a,b`), an embedded worker (scheduler/embedded.py) the names of its handlers, and its tags.
The rule, `can_take`:

- A *handler job* is one whose command is a handler name some worker has advertised
  (`handler_names`, the union over the cluster's adverts). Only an embedded worker that
  registered that handler takes its runs, and with `TARGET name` only one that also has
  `name` among its handlers or tags. A shell worker never takes it, so it never runs a
  handler name as a shell command.
- Any other job is a *shell job*: without TARGET, only shell workers take it; with `TARGET
  name`, only shell workers started with `--tags` naming it.
- `TARGET ALL` (a broadcast) goes to each live worker that can run it: shell workers for a
  shell job, embedded workers with the handler for a handler job.

A job no live worker can take waits: `waiting_reason` says why (the firing loop holds its
slots, JOB.GET shows it), and its misfire deadline still applies (scheduler/fireloop.py).
Advertised names are checked here (`parse_names`): a comma list, each 1 to MAX_NAME_BYTES
bytes without a comma, space or NUL, at most MAX_NAMES of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.jobs import TARGET_ALL, TARGET_ANY, Job

MAX_NAMES = 1024  # tags or handlers one worker advertises
MAX_NAME_BYTES = 255  # one tag or handler name, as advertised

ERR_NAMES = (f"ERR {{}} must be a comma list of at most {MAX_NAMES} names of 1 to "
             f"{MAX_NAME_BYTES} bytes without space or NUL")
REASON_SHELL = "no shell worker (a job without TARGET runs on shell workers only)"
REASON_HANDLER = "no worker with handler '{}'"
REASON_HANDLER_TAG = "no worker with handler '{}' and tag or handler '{}'"
REASON_TARGET = "no worker with handler or tag '{}'"


class NamesError(ValueError):
    """An advertised name list is invalid; `message` is the exact RESP error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Advert:
    """What one worker can execute. `handlers` None: a shell worker (runs commands through
    the shell); a set (maybe empty): an embedded worker calling those handlers."""

    tags: frozenset[str] = frozenset()
    handlers: frozenset[str] | None = None

    @property
    def embedded(self) -> bool:
        """Whether the worker calls handlers (else it runs commands through the shell)."""
        return self.handlers is not None

    def fields(self) -> dict[str, Any]:
        """The advert's fields in a claim entry (a shell worker's has no "handlers")."""
        out: dict[str, Any] = {"tags": sorted(self.tags)}
        if self.handlers is not None:
            out["handlers"] = sorted(self.handlers)
        return out

    @classmethod
    def from_fields(cls, entry: Mapping[str, Any]) -> Advert:
        """The advert of a claim entry (an entry of a worker that sends no handlers, or
        written before adverts, is a shell worker's)."""
        handlers = entry.get("handlers")
        return cls(frozenset(entry.get("tags", ())),
                   None if handlers is None else frozenset(handlers))

    def to_wire(self) -> list[Any]:
        """A compact form for snapshots: [tags, handlers or None]."""
        return [sorted(self.tags), None if self.handlers is None else sorted(self.handlers)]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Advert:
        """The inverse of `to_wire`."""
        return cls(frozenset(raw[0]), None if raw[1] is None else frozenset(raw[1]))


def parse_names(text: str, what: str) -> frozenset[str]:
    """A comma list of advertised names ("" is none); NamesError names `what` if bad."""
    names = [name for name in text.split(",") if name]
    if len(names) > MAX_NAMES or any(not valid_name(name) for name in names):
        raise NamesError(ERR_NAMES.format(what))
    return frozenset(names)


def valid_name(name: str) -> bool:
    """Whether `name` can be advertised: 1 to MAX_NAME_BYTES bytes, no comma, space or NUL."""
    return (0 < len(name.encode("utf-8", "replace")) <= MAX_NAME_BYTES
            and not any(c in name for c in ", \t\r\n\x00"))


def handler_union(adverts: Iterable[Advert]) -> frozenset[str]:
    """Every handler name the adverts hold."""
    return frozenset(name for advert in adverts for name in advert.handlers or ())


def is_handler_job(job: Job, handler_names: frozenset[str] | set[str]) -> bool:
    """Whether `job`'s command is a handler some worker advertised (module header)."""
    return job.command in handler_names


def can_take(job: Job, advert: Advert, handler_names: frozenset[str] | set[str]) -> bool:
    """Whether a worker advertising `advert` may take a run of `job` (module header)."""
    if is_handler_job(job, handler_names):
        if advert.handlers is None or job.command not in advert.handlers:
            return False
        return job.target in (TARGET_ANY, TARGET_ALL) or (
            job.target in advert.handlers or job.target in advert.tags)
    if advert.handlers is not None:
        return False
    return job.target in (TARGET_ANY, TARGET_ALL) or job.target in advert.tags


def waiting_reason(job: Job, adverts: Iterable[Advert],
                   handler_names: frozenset[str] | set[str]) -> str | None:
    """Why no worker of `adverts` (the live ones) can take `job`'s runs; None if one can.
    A broadcast never waits: with no worker for it, its slot fires one run open to any."""
    if job.broadcast or any(can_take(job, advert, handler_names) for advert in adverts):
        return None
    if is_handler_job(job, handler_names):
        if job.target == TARGET_ANY:
            return REASON_HANDLER.format(job.command)
        return REASON_HANDLER_TAG.format(job.command, job.target)
    if job.target == TARGET_ANY:
        return REASON_SHELL
    return REASON_TARGET.format(job.target)
