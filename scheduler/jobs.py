"""Jobs, sans I/O: the job model, its limits and wire errors, and JOB.ADD parsing.

- `Job`: one job as `JOB.ADD name schedule command [option value ...]` defines it
  (`parse_job_add`); its dict form (`to_dict`/`from_dict`) is a Raft log entry, and both
  paths go through one `validate`, so a log entry is held to the same rules as a request.
  `check_after` keeps AFTER links pointing at existing jobs and free of cycles.
- The limits, policy names and ERR_* texts of jobs and runs are all here, written once, as
  is the checked dict form (`register_fields`) both record types use.

Modules by role: this one holds the job; scheduler/runs.py holds `RunRecord`, its state
table (`step`), retries, timeouts and the AFTER dependents of a run; scheduler/planning.py
decides which slots fire after a gap (misfire) and what a slot does while runs are active
(overlap). Time enters only as arguments (epoch ms); nothing here reads a clock, a disk or a
socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from core.resp import CommandError
from scheduler.schedule import (
    OneShot,
    Schedule,
    ScheduleError,
    next_after,
    parse_schedule,
    zone,
)

# -- limits and defaults (seconds unless the name says ms) --------------------------------
MAX_NAME_LEN = 128
MAX_TAG_LEN = 64
MAX_COMMAND_BYTES = 8192
MAX_MESSAGE_LEN = 1024  # a run's message is cut to this many characters
MAX_DEADLINE_S = 86_400
MAX_TIMEOUT_S = 7 * 86_400
MAX_RETRIES = 25
MAX_BACKOFF_S = 3600
MAX_RETRY_DELAY_S = 3600  # cap of the exponential backoff
MAX_HISTORY = 10_000
MAX_CATCHUP_SLOTS = 100  # MISFIRE ALL (and on-time slots under SKIP) fire at most these
MISSED_COUNT_CAP = 10_000  # MisfirePlan.missed counts up to this
ON_TIME_MS = 1000  # a slot at most this late is on time under every misfire policy
DEFAULT_TZ = "UTC"
DEFAULT_DEADLINE_S = 60  # as Quartz's misfireThreshold
DEFAULT_BACKOFF_S = 10
DEFAULT_HISTORY = 100

ALLOW, FORBID, REPLACE = "allow", "forbid", "replace"
SKIP, ONCE, ALL = "skip", "once", "all"
TARGET_ANY, TARGET_ALL = "", "ALL"  # any one worker; every worker (broadcast, sharded)
AFTER_SCHEDULE = "@after"  # the schedule of a job that runs when its AFTER parent succeeds

# -- wire errors, written once --------------------------------------------------------------
ERR_ARGS = "ERR wrong number of arguments for 'job.add' command"
ERR_UTF8 = "ERR arguments must be UTF-8 text"
ERR_NAME = f"ERR job name must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . - (not . or ..)"
ERR_SCHEDULE = "ERR invalid schedule: {}"
ERR_COMMAND = f"ERR job command must be 1 to {MAX_COMMAND_BYTES} bytes of text without NUL"
ERR_OPTION = "ERR unknown JOB.ADD option '{}'"
ERR_OPTION_VALUE = "ERR option {} needs a value"
ERR_OPTION_TWICE = "ERR option {} given twice"
ERR_TZ = "ERR unknown time zone '{}'"
ERR_CONCURRENCY = "ERR CONCURRENCY must be ALLOW, FORBID or REPLACE"
ERR_MISFIRE = "ERR MISFIRE must be SKIP, ONCE or ALL"
ERR_DEADLINE = f"ERR DEADLINE must be an integer from 1 to {MAX_DEADLINE_S} (seconds)"
ERR_TIMEOUT = f"ERR TIMEOUT must be an integer from 0 (none) to {MAX_TIMEOUT_S} (seconds)"
ERR_RETRIES = f"ERR RETRIES must be an integer from 0 to {MAX_RETRIES}"
ERR_BACKOFF = f"ERR BACKOFF must be an integer from 0 to {MAX_BACKOFF_S} (seconds)"
ERR_HISTORY = f"ERR HISTORY must be an integer from 1 to {MAX_HISTORY}"
ERR_TARGET = (
    f"ERR TARGET must be ANY, ALL or a worker tag of 1 to {MAX_TAG_LEN} characters "
    "of A-Z a-z 0-9 _ . -"
)
ERR_AFTER = "ERR AFTER must name another job"
ERR_AFTER_SCHEDULE = f"ERR a job with AFTER takes the schedule {AFTER_SCHEDULE}"
ERR_AFTER_NEEDED = f"ERR the schedule {AFTER_SCHEDULE} needs the AFTER option"
ERR_AFTER_UNKNOWN = "ERR AFTER job '{}' does not exist"
ERR_AFTER_CYCLE = "ERR AFTER '{}' would make a cycle"
ERR_CREATED = "ERR created time must be a non-negative integer of ms"
ERR_RECORD = "ERR bad {} record: {}"
ERR_RUN_EVENT = "ERR run {}: event '{}' is not allowed in state '{}'"
ERR_NO_RETRY = "ERR run {}: no retry left (attempt {} of {})"

_NAME = re.compile(f"[A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}")
_TAG = re.compile(f"[A-Za-z0-9_.-]{{1,{MAX_TAG_LEN}}}")
_INT = re.compile(r"[0-9]{1,10}")


class JobError(CommandError, ValueError):
    """A job request or record is invalid; `message` is the exact RESP error text."""


class RunStateError(JobError):
    """A run event the state table does not allow (names the run, state and event)."""


# -- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One job. Invariant: `validate(job)` passes for every Job this module hands out.

    schedule: cron/macro/@every text, or AFTER_SCHEDULE when `after` names the parent.
    target: TARGET_ANY, TARGET_ALL (broadcast: each live worker runs shard i of n) or a tag.
    timeout_s 0 means no timeout. retries n: up to n more attempts (see `retry_run`).
    created_ms anchors `@every` (fires at created_ms + k * period, k >= 1) and `@in` (fires
    once, its duration after created_ms): a time in the log (the JOB.ADD entry's, or for an
    `@in` job added through a node that did not lead, the leader's "anchor" entry's), so every
    replica computes the same slots.
    """

    name: str
    schedule: str
    command: str
    tz: str = DEFAULT_TZ
    concurrency: str = ALLOW
    misfire: str = ONCE
    deadline_s: int = DEFAULT_DEADLINE_S
    timeout_s: int = 0
    retries: int = 0
    backoff_s: int = DEFAULT_BACKOFF_S
    target: str = TARGET_ANY
    after: str = ""
    history: int = DEFAULT_HISTORY
    paused: bool = False
    created_ms: int = 0

    @property
    def broadcast(self) -> bool:
        return self.target == TARGET_ALL

    def parsed(self) -> Schedule | None:
        """The parsed schedule, or None for an AFTER job (it has no times of its own)."""
        return None if self.after else parse_schedule(self.schedule)

    def one_shot_ms(self) -> int | None:
        """The one fire time of an `@at`/`@in` job; None for any other job."""
        schedule = self.parsed()
        return schedule.fire_ms(self.created_ms) if isinstance(schedule, OneShot) else None

    def counts_from_add(self) -> bool:
        """Whether the schedule is `@in`: a duration after the job's anchor (created_ms)."""
        schedule = self.parsed()
        return isinstance(schedule, OneShot) and schedule.delay_ms is not None

    def first_handled_ms(self) -> int:
        """The handled slot a new job starts from: its creation; for a one-shot job whose
        time is not after its creation (an `@at` in the past, `@in 0s`), just before that
        time, so its one slot is planned (fired, or expired past the misfire deadline)."""
        once = self.one_shot_ms()
        return self.created_ms if once is None else min(self.created_ms, once - 1)

    def next_fire(self, after_ms: int) -> int | None:
        """The first slot strictly after `after_ms` (None for an AFTER job)."""
        schedule = self.parsed()
        if schedule is None:
            return None
        return next_after(schedule, after_ms, zone(self.tz), self.created_ms)

    def to_dict(self) -> dict[str, object]:
        """Plain str/int/bool values, msgpack-friendly."""
        return shallow_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Job:
        """The inverse of `to_dict`; JobError if a key, a type or a rule is wrong."""
        job = cls(**typed_fields(cls, data, "job"))
        validate(job)
        return job


def validate(job: Job) -> None:
    """Raise JobError (wire text) unless every field of `job` keeps the rules."""
    if not _is_name(job.name):
        raise JobError(ERR_NAME)
    if job.schedule == AFTER_SCHEDULE:
        if not job.after:
            raise JobError(ERR_AFTER_NEEDED)
    elif job.after:
        raise JobError(ERR_AFTER_SCHEDULE)
    else:
        try:
            parse_schedule(job.schedule)
        except ScheduleError as error:
            raise JobError(ERR_SCHEDULE.format(error)) from None
    if job.after and (not _is_name(job.after) or job.after == job.name):
        raise JobError(ERR_AFTER)
    try:
        size = len(job.command.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text msgpack or a worker can carry
        size = 0
    if not 1 <= size <= MAX_COMMAND_BYTES or "\x00" in job.command:
        raise JobError(ERR_COMMAND)
    try:
        zone(job.tz)
    except ScheduleError:
        raise JobError(ERR_TZ.format(job.tz)) from None
    if job.concurrency not in (ALLOW, FORBID, REPLACE):
        raise JobError(ERR_CONCURRENCY)
    if job.misfire not in (SKIP, ONCE, ALL):
        raise JobError(ERR_MISFIRE)
    for value, low, high, error in (
        (job.deadline_s, 1, MAX_DEADLINE_S, ERR_DEADLINE),
        (job.timeout_s, 0, MAX_TIMEOUT_S, ERR_TIMEOUT),
        (job.retries, 0, MAX_RETRIES, ERR_RETRIES),
        (job.backoff_s, 0, MAX_BACKOFF_S, ERR_BACKOFF),
        (job.history, 1, MAX_HISTORY, ERR_HISTORY),
    ):
        if not low <= value <= high:
            raise JobError(error)
    if job.target not in (TARGET_ANY, TARGET_ALL) and not _is_tag(job.target):
        raise JobError(ERR_TARGET)
    if job.created_ms < 0:
        raise JobError(ERR_CREATED)


def _is_name(text: str) -> bool:
    return bool(_NAME.fullmatch(text)) and text not in (".", "..")


def _is_tag(text: str) -> bool:
    return bool(_TAG.fullmatch(text)) and text.upper() not in ("ANY", "ALL")


# -- JOB.ADD --------------------------------------------------------------------------------


def _target(raw: str) -> str:
    if not raw:
        raise JobError(ERR_TARGET)
    return {"ANY": TARGET_ANY, "ALL": TARGET_ALL}.get(raw.upper(), raw)


def _seconds(error: str):
    def convert(raw: str) -> int:
        if not _INT.fullmatch(raw):
            raise JobError(error)
        return int(raw)

    return convert


# option -> (Job field, converter); range and combination checks are in `validate`.
OPTIONS = {
    "TZ": ("tz", str),
    "CONCURRENCY": ("concurrency", str.lower),
    "MISFIRE": ("misfire", str.lower),
    "DEADLINE": ("deadline_s", _seconds(ERR_DEADLINE)),
    "TIMEOUT": ("timeout_s", _seconds(ERR_TIMEOUT)),
    "RETRIES": ("retries", _seconds(ERR_RETRIES)),
    "BACKOFF": ("backoff_s", _seconds(ERR_BACKOFF)),
    "TARGET": ("target", _target),
    "AFTER": ("after", str),
    "HISTORY": ("history", _seconds(ERR_HISTORY)),
}


def parse_job_add(args: Sequence[bytes | str], created_ms: int) -> Job:
    """`JOB.ADD name schedule command [option value ...]`, the arguments after the command
    name, -> a valid Job created at `created_ms`. Options are case-insensitive, each at
    most once. Raises JobError with one of the ERR_* texts."""
    if len(args) < 3:
        raise JobError(ERR_ARGS)
    text = [_decode(arg) for arg in args]
    values: dict[str, object] = dict(
        name=text[0], schedule=text[1], command=text[2], created_ms=created_ms
    )
    seen: set[str] = set()
    for index in range(3, len(text), 2):
        option = text[index].upper()
        if option not in OPTIONS:
            raise JobError(ERR_OPTION.format(text[index]))
        if option in seen:
            raise JobError(ERR_OPTION_TWICE.format(option))
        if index + 1 >= len(text):
            raise JobError(ERR_OPTION_VALUE.format(option))
        seen.add(option)
        field, convert = OPTIONS[option]
        values[field] = convert(text[index + 1])
    job = Job(**values)  # type: ignore[arg-type]
    validate(job)
    return job


def _decode(arg: bytes | str) -> str:
    if isinstance(arg, str):
        return arg
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        raise JobError(ERR_UTF8) from None


def check_after(jobs: Mapping[str, Job], job: Job) -> None:
    """Before adding `job` to `jobs` (by name): its AFTER parent must exist and following
    AFTER links from it must never come back to `job`."""
    if not job.after:
        return
    if job.after not in jobs:
        raise JobError(ERR_AFTER_UNKNOWN.format(job.after))
    parent, seen = job.after, {job.name}
    while parent:
        if parent in seen:
            raise JobError(ERR_AFTER_CYCLE.format(job.after))
        seen.add(parent)
        parent = jobs[parent].after if parent in jobs else ""


# -- dict forms -------------------------------------------------------------------------------


def shallow_dict(obj: object) -> dict[str, object]:
    """The fields of a record registered with `register_fields`, as a plain dict."""
    # every field is a scalar, so dataclasses.asdict's deep copy is only cost (snapshots
    # and fire results turn thousands of records into dicts)
    return {name: getattr(obj, name) for name in _FIELD_NAMES[type(obj)]}


def typed_fields(cls: type, data: Mapping[str, object], what: str) -> dict[str, object]:
    """`data` checked against the dataclass fields: the same keys, each of its type."""
    if not isinstance(data, Mapping):
        raise JobError(ERR_RECORD.format(what, "not a map"))
    names = _FIELD_NAMES[cls]
    if data.keys() != set(names):
        wrong = sorted(set(map(str, data)) ^ set(names))
        raise JobError(ERR_RECORD.format(what, f"keys {', '.join(wrong)}"))
    for name, ok in _FIELD_CHECKS[cls]:  # (a snapshot restore checks every record)
        if not ok(data[name]):
            raise JobError(ERR_RECORD.format(what, f"field {name}"))
    return dict(data)


_KIND_CHECKS: dict[str, Callable[[object], bool]] = {  # annotation -> its value's test
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: type(v) is int,  # not a bool
    "int | None": lambda v: v is None or type(v) is int,
}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FIELD_CHECKS: dict[type, tuple[tuple[str, Callable[[object], bool]], ...]] = {}


def register_fields(cls: type) -> tuple[str, ...]:
    """Give a frozen dataclass of scalar fields a dict form: `shallow_dict` and
    `typed_fields` work on it from then on (Job here, RunRecord in scheduler.runs).
    Returns its field names, in order."""
    _FIELD_NAMES[cls] = tuple(field.name for field in fields(cls))
    _FIELD_CHECKS[cls] = tuple(
        (field.name, _KIND_CHECKS[str(field.type)]) for field in fields(cls)
    )
    return _FIELD_NAMES[cls]


register_fields(Job)
