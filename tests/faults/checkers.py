"""Checkers of fault-drill histories: sets, unique ids, counter bounds, exactly-once firing.

Strategy: each checker reads the operations of a History (see tests/faults/history.py) and
returns a CheckResult (tests/faults/report.py): valid True, False or "unknown", an
explanation, and for a failure the few operations that show it. Operation outcomes are
taken at their word: ok took effect, fail did not, info may or may not have (at any time
after its invocation). So a checker demands what acknowledged operations imply, allows what
unknown ones might explain, and forbids anything no attempted operation could explain.

Linearizability of registers and counters lives in tests/faults/linearizable.py and is
re-exported here, so drills import every checker from this one module.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from itertools import accumulate
from typing import Any

from tests.faults.history import FAIL, INFO, OK, History, Operation
from tests.faults.linearizable import Counter, Register, check_linearizable
from tests.faults.report import (
    UNKNOWN,
    CheckResult,
    as_operations,
    format_table,
    origin_of,
    write_report,
)

__all__ = [
    "CheckResult",
    "Counter",
    "Register",
    "check_counter",
    "check_exactly_once",
    "check_linearizable",
    "check_set",
    "check_unique",
    "format_table",
    "write_report",
]

MAX_LISTED = 10
MAX_WINDOW_OPS = 12
NEIGHBOUR_FIRES = 2

Source = History | Iterable[Operation]


def check_set(source: Source, *, add_f: str = "add", read_f: str = "read") -> CheckResult:
    """Acknowledged adds are present in the final read of their key (set semantics).

    Per key, the final read is the ok read that completed last. Every element whose ok add
    completed before that read was invoked must be in it; an element whose add is unknown
    (info) or concurrent with the read may be; an element that no add attempted before the
    read completed, or whose every add failed, must not be. valid is "unknown" when a key
    with adds has no ok read.
    """
    ops = as_operations(source)
    origin = origin_of(ops)
    by_key: dict[Any, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.f in (add_f, read_f):
            by_key[_hashable(op.key)].append(op)
    figures: Tally[str] = Tally()
    unread = []
    for key, key_ops in by_key.items():
        reads = [op for op in key_ops if op.f == read_f and op.status == OK]
        if not reads:
            unread.append(key)
            continue
        final = max(reads, key=lambda op: (op.complete_time, op.id))
        adds = [op for op in key_ops if op.f == add_f]
        failure = _set_key(key, final, adds, figures, origin)
        if failure is not None:
            return failure
    if unread:
        text = f"no ok read of {len(unread)} keys (e.g. {unread[0]!r}) to check their adds against"
        return CheckResult("set", UNKNOWN, text, details=dict(figures))
    text = (f"{figures['acknowledged']} acknowledged adds all present; "
            f"{figures['unknown_present']} of {figures['unknown']} unknown adds present")
    return CheckResult("set", True, text, details=dict(figures))


def _set_key(key: Any, final: Operation, adds: list[Operation], figures: Tally[str],
             origin: int) -> CheckResult | None:
    present = {_hashable(value) for value in final.result or ()}
    must = {_hashable(op.value): op for op in adds
            if op.status == OK and op.complete_time < final.invoke_time}
    attempted = {_hashable(op.value) for op in adds
                 if op.status != FAIL and op.invoke_time <= final.complete_time}
    failed_only = {_hashable(op.value) for op in adds if op.status == FAIL} - attempted
    unknown = {_hashable(op.value) for op in adds if op.status == INFO}
    figures.update(acknowledged=len(must), unknown=len(unknown),
                   unknown_present=len(unknown & present))
    lost = [value for value in must if value not in present]
    extra = sorted((present - attempted), key=repr)
    if not lost and not extra:
        return None
    window = [must[value] for value in lost[:MAX_WINDOW_OPS - 1]]
    window += [op for op in adds if _hashable(op.value) in failed_only & present]
    window.append(final)
    parts = []
    if lost:
        parts.append(f"{len(lost)} acknowledged adds missing: {_listed(lost)}")
    if extra:
        parts.append(f"{len(extra)} elements never added (or only by failed adds) present: "
                     f"{_listed(extra)}")
    text = f"key {key!r}, final read {final.id}: " + "; ".join(parts)
    details = {"key": key, "lost": lost, "unexpected": extra, **figures}
    return CheckResult("set", False, text, _ordered(window[:MAX_WINDOW_OPS]), details, origin)


def check_unique(source: Source, *, f: str = "next_id",
                 per_process_increasing: bool = False) -> CheckResult:
    """No id is returned twice across all clients (ok results of `f`; a list is a batch,
    None is no id).

    With `per_process_increasing`, each process's ids also strictly increase in the order
    it invoked its operations (and within a batch).
    """
    ops = [op for op in as_operations(source) if op.f == f and op.status == OK]
    origin = origin_of(ops)
    owners: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in ops:
        for value in _ids(op):
            owners[value].append(op)
    dupes = {value: holders for value, holders in owners.items() if len(holders) > 1}
    if dupes:
        window = [op for holders in list(dupes.values())[:MAX_LISTED] for op in holders]
        text = f"{len(dupes)} ids returned more than once: {_listed(list(dupes))}"
        details = {"duplicates": {value: [op.id for op in h] for value, h in dupes.items()}}
        return CheckResult("unique", False, text, _ordered(window[:MAX_WINDOW_OPS]), details,
                           origin)
    if per_process_increasing:
        failure = _increasing(ops, origin)
        if failure is not None:
            return failure
    return CheckResult("unique", True, f"{len(owners)} ids from {len(ops)} operations, all unique")


def _increasing(ops: list[Operation], origin: int) -> CheckResult | None:
    last: dict[Hashable, tuple[Any, Operation]] = {}
    for op in ops:
        process = _hashable(op.process)
        for value in _ids(op):
            before = last.get(process)
            if before is not None and not value > before[0]:
                text = (f"process {op.process!r}: id {value!r} (operation {op.id}) does not "
                        f"exceed its earlier id {before[0]!r} (operation {before[1].id})")
                window = _ordered({before[1].id: before[1], op.id: op}.values())
                return CheckResult("unique", False, text, window, {"process": op.process}, origin)
            last[process] = (value, op)
    return None


def check_counter(source: Source, *, incr_f: str = "incr", read_f: str = "read",
                  initial: int = 0) -> CheckResult:
    """Every ok read of a counter lies within what the increments can explain.

    For a read, increments (value = delta, 1 when None) acknowledged before it was invoked
    must be counted; ok or info increments invoked before it completed may be; failed ones
    and later ones must not. So a final read lies between the acknowledged sum and that
    plus the unknown ones. Checked per key, every read, the first violation reported; a
    read result of None (a key never written) counts as `initial`.
    """
    ops = as_operations(source)
    origin = origin_of(ops)
    by_key: dict[Any, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.f in (incr_f, read_f):
            by_key[_hashable(op.key)].append(op)
    reads = 0
    for key, key_ops in by_key.items():
        incrs = [op for op in key_ops if op.f == incr_f and op.status != FAIL]
        bounds = _Bounds(incrs, initial)
        for read in (op for op in key_ops if op.f == read_f and op.status == OK):
            reads += 1
            low, high = bounds.at(read)
            if not low <= (initial if read.result is None else read.result) <= high:
                return _counter_failure(key, read, incrs, (low, high), origin)
    return CheckResult("counter", True, f"{reads} reads within their bounds")


class _Bounds:
    """Prefix sums that answer a read's [low, high] bound in logarithmic time."""

    def __init__(self, incrs: list[Operation], initial: int) -> None:
        acked = sorted((op for op in incrs if op.status == OK), key=lambda op: op.complete_time)
        self.acked_ends = [op.complete_time for op in acked]
        self.acked_up = _sums(max(_delta(op), 0) for op in acked)
        self.acked_down = _sums(min(_delta(op), 0) for op in acked)
        begun = sorted(incrs, key=lambda op: op.invoke_time)
        self.starts = [op.invoke_time for op in begun]
        self.begun_up = _sums(max(_delta(op), 0) for op in begun)
        self.begun_down = _sums(min(_delta(op), 0) for op in begun)
        self.initial = initial

    def at(self, read: Operation) -> tuple[int, int]:
        sure = bisect_left(self.acked_ends, read.invoke_time)
        maybe = bisect_right(self.starts, read.complete_time)
        up, down = self.acked_up[sure], self.acked_down[sure]
        base = self.initial + up + down
        return (base + self.begun_down[maybe] - down, base + self.begun_up[maybe] - up)


def _counter_failure(key: Any, read: Operation, incrs: list[Operation],
                     bound: tuple[int, int], origin: int) -> CheckResult:
    acked = [op for op in incrs if op.status == OK and op.complete_time < read.invoke_time]
    maybe = [op for op in incrs if op not in acked and op.invoke_time <= read.complete_time]
    window = acked[-NEIGHBOUR_FIRES:] + maybe[:MAX_WINDOW_OPS - NEIGHBOUR_FIRES - 1] + [read]
    text = (f"key {key!r}: read {read.id} returned {read.result!r}, outside [{bound[0]}, "
            f"{bound[1]}]: {len(acked)} increments acknowledged before it, {len(maybe)} "
            "more possibly applied")
    details = {"key": key, "read": read.id, "low": bound[0], "high": bound[1]}
    return CheckResult("counter", False, text, _ordered(window), details, origin)


def check_exactly_once(
    source: Source,
    expected: Mapping[Hashable, Iterable[Hashable]],
    may_skip: Mapping[Hashable, Iterable[Hashable]] | None = None,
    *,
    f: str = "fire",
) -> CheckResult:
    """Each expected slot fired once: no slot twice, none missing, nothing unexpected.

    Fires are operations `f` with key = job and value = slot: ok ones certainly happened,
    info ones may have. `expected` maps a job to the slots that should fire; `may_skip`
    maps a job to slots its misfire policy allows to be skipped (they may fire once, or
    not at all). A slot fired twice (ok fires), an expected slot neither skippable nor
    fired (ok or info), or a fire of a slot neither expected nor skippable is a violation.
    """
    ops = [op for op in as_operations(source) if op.f == f and op.status != FAIL]
    origin = origin_of(ops)
    fires: dict[tuple[Hashable, Hashable], list[Operation]] = defaultdict(list)
    for op in ops:
        fires[(_hashable(op.key), _hashable(op.value))].append(op)
    allowed = _slots(may_skip or {})
    required = _slots(expected) - allowed
    double = {js: fs for js, fs in fires.items() if sum(op.status == OK for op in fs) > 1}
    missing = sorted(required - set(fires), key=repr)
    unexpected = sorted(set(fires) - required - allowed, key=repr)
    uncertain = sum(1 for js in required
                    if js in fires and all(op.status == INFO for op in fires[js]))
    if not (double or missing or unexpected):
        text = (f"{len(required)} required slots fired once ({uncertain} only by fires of "
                f"unknown outcome), {len(set(fires) & allowed)} skippable slots fired")
        return CheckResult("exactly-once", True, text, details={"uncertain": uncertain})
    window: list[Operation] = [op for fs in double.values() for op in fs]
    window += [op for js in unexpected for op in fires[js]]
    for job, slot in missing[:MAX_LISTED]:
        window += _neighbours(job, slot, fires)
    parts = []
    for label, items in (("fired twice", list(double)), ("missing", missing),
                         ("never expected", unexpected)):
        if items:
            parts.append(f"{len(items)} slots {label}: {_listed(items)}")
    details = {"double": list(double), "missing": missing, "unexpected": unexpected}
    window_ops = _ordered({op.id: op for op in window}.values())[:MAX_WINDOW_OPS]
    return CheckResult("exactly-once", False, "; ".join(parts), window_ops, details, origin)


def _slots(by_job: Mapping[Hashable, Iterable[Hashable]]) -> set[tuple[Hashable, Hashable]]:
    return {(_hashable(job), _hashable(slot)) for job, slots in by_job.items() for slot in slots}


def _neighbours(job: Hashable, slot: Hashable,
                fires: Mapping[tuple[Hashable, Hashable], list[Operation]]) -> list[Operation]:
    """The fires of `job` just before and after a missing slot (context for a reader)."""
    slots = sorted((s for j, s in fires if j == job), key=_sort_key)
    cut = bisect_left([_sort_key(s) for s in slots], _sort_key(slot))
    near = slots[max(cut - NEIGHBOUR_FIRES // 2, 0): cut + NEIGHBOUR_FIRES // 2]
    return [op for s in near for op in fires[(job, s)]]


def _sort_key(value: Hashable) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, repr(value))


def _ids(op: Operation) -> list[Hashable]:
    values = op.result if isinstance(op.result, list | tuple) else [op.result]
    return [_hashable(value) for value in values if value is not None]


def _delta(op: Operation) -> int:
    return 1 if op.value is None else int(op.value)


def _sums(values: Iterable[int]) -> list[int]:
    return [0, *accumulate(values)]


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    return value


def _ordered(ops: Iterable[Operation]) -> tuple[Operation, ...]:
    return tuple(sorted(ops, key=lambda op: (op.invoke_time, op.id)))


def _listed(items: list[Any]) -> str:
    shown = ", ".join(repr(item) for item in items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
