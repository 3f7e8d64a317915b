"""The scheduler drill's checks: what ran (the workers' files) against what the cluster fired.

Strategy: every job's shell command appends one line per attempt it starts,
`<slot> <attempt> <host> start <wall ms>` (and the slow job a matching `end` line when its
command finishes), to a file per job under the drill's workdir, which every host sees. Each
line becomes an ok "fire" operation (key = job, value = slot; the retried job's value is
(slot, attempt)); each run JOB.HISTORY reports lost (its worker went silent) becomes an info
fire, since its command may or may not have run. The checkers of tests/faults/checkers.py
then judge the fires against what should have fired:

- exactly-once, per job: every slot of the job's expected range fired once (the slots its
  MISFIRE policy may drop, those near a fault, in `may_skip`, unless the cluster's history
  says they fired: acknowledged fires are always required), and no slot ran twice;
- executions-committed: nothing ran that the cluster's history does not show as fired;
- cut-off-no-dispatch: a worker cut off (with the old leader, or with a minority) started
  no run whose slot came after the cut: a leader without quorum cannot commit a claim;
- no-overlap-after-loss (the known gap of issue 15: workers do not fence themselves yet):
  a retry of a lost run never starts while the earlier attempt's command still runs.

Wall times (ms) are converted to the recorder's monotonic nanoseconds by one offset taken
at the start (`TimeBase`), so synthesized fires sit among the clients' operations in reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checkers import CheckResult, check_exactly_once
from tests.faults.history import INFO, OK, Operation

FIRE_F = "fire"
START, END = "start", "end"
SLOT_MS = 1000  # every cron job of the drill fires each second
LOST = "lost"
ENDED = frozenset({"succeeded", "failed", "timed_out", "lost", "killed", "skipped",
                   "expired"})
NEVER_RAN = frozenset({"skipped", "expired"})  # (expired: no worker took it in time)
FIRST_FIRE_ID = 1 << 40  # ids of synthesized fires, far above any recorder event index
MAX_LISTED = 8

ERR_LINE = "{path}: line {number} is not `slot attempt host start|end ms`: {line!r}"


@dataclass(frozen=True)
class TimeBase:
    """One reading of the wall and monotonic clocks, to place wall times in a history."""

    wall_ms: int
    mono_ns: int

    @staticmethod
    def now() -> TimeBase:
        """The clocks as they read now."""
        return TimeBase(time.time_ns() // 1_000_000, time.monotonic_ns())

    def mono(self, wall_ms: int) -> int:
        """The monotonic nanoseconds at which the wall clock read `wall_ms`."""
        return self.mono_ns + (wall_ms - self.wall_ms) * 1_000_000


@dataclass(frozen=True)
class Execution:
    """One line of a job's file: an attempt of a slot started (or ended) on a host."""

    job: str
    slot: int
    attempt: int
    host: str
    phase: str
    at_ms: int


@dataclass(frozen=True)
class Span:
    """A fault, in wall ms. `cut_off`: the host whose worker could then reach no quorum."""

    kind: str
    start_ms: int
    end_ms: int
    cut_off: str | None = None


@dataclass
class JobPlan:
    """What one job should have fired: slots from `first_ms` to `last_ms` are expected;
    under a MISFIRE policy that drops late slots (`skips`) those inside `windows` or in
    `late` (slots the leader reached late, see `late_slots`) may be skipped; slots after
    `last_ms` up to `handled_ms` may fire or not (the final pause raced them)."""

    name: str
    first_ms: int
    last_ms: int
    handled_ms: int
    skips: bool
    retried: bool = False
    windows: list[tuple[int, int]] = field(default_factory=list)
    late: frozenset[int] = frozenset()

    def slots(self) -> range:
        """The slots the job should fire, ascending."""
        return range(_ceil_slot(self.first_ms), self.last_ms + 1, SLOT_MS)

    def tail(self) -> range:
        """The slots the final pause may have raced."""
        return range(_ceil_slot(self.last_ms + 1), self.handled_ms + 1, SLOT_MS)

    def may_drop(self, slot: int) -> bool:
        """Whether a fault window covers `slot` or the leader reached it late."""
        return slot in self.late or any(low <= slot <= high for low, high in self.windows)


def read_executions(path: Path, job: str) -> list[Execution]:
    """The lines of a job's file, in file order (a missing file: none ran)."""
    if not path.exists():
        return []
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5 or parts[3] not in (START, END):
            raise ValueError(ERR_LINE.format(path=path, number=number, line=line))
        slot, attempt, host, phase, at_ms = parts
        found.append(Execution(job, int(slot), int(attempt), host, phase, int(at_ms)))
    return found


def fired_runs(runs: Iterable[Mapping[str, Any]], paused_ahead: Any) -> list[Mapping[str, Any]]:
    """The runs of a JOB.HISTORY that fired (skipped ones and those a pause killed before
    any worker took them left out)."""
    return [r for r in runs if r["state"] not in NEVER_RAN and not paused_ahead(r)]


def late_slots(runs: Iterable[Mapping[str, Any]], late_ms: int) -> frozenset[int]:
    """The slots that a MISFIRE ALL job's runs show were fired `late_ms` or more after the
    slot: the leader was behind then (a loaded machine), so a job of the same second under
    SKIP or ONCE may have found the slot too late to fire."""
    return frozenset(r["slot_ms"] for r in runs if r["fired_ms"] - r["slot_ms"] >= late_ms)


def fire_operations(job: str, executions: Iterable[Execution], runs: Iterable[Mapping[str, Any]],
                    base: TimeBase, retried: bool, ids: Iterable[int]) -> list[Operation]:
    """Ok fires for the started attempts, info fires for the runs lost or never ended (the
    cluster does not know whether their command ran; see `check_ended`)."""
    numbers = iter(ids)
    ops = []
    for ex in executions:
        if ex.phase != START:
            continue
        value = (ex.slot, ex.attempt) if retried else ex.slot
        at = base.mono(ex.at_ms)
        ops.append(Operation(next(numbers), f"worker-{ex.host}", FIRE_F, job, value, None, OK,
                             at, at))
    for run in runs:
        if run["state"] == LOST or run["state"] not in ENDED:
            value = (run["slot_ms"], run["attempt"]) if retried else run["slot_ms"]
            ops.append(Operation(next(numbers), f"{run['state']}-{job}-{value}", FIRE_F, job,
                                 value, None, INFO, base.mono(run["fired_ms"]), None,
                                 f"run {run['state']}"))
    return ops


def expectations(plan: JobPlan, runs: list[Mapping[str, Any]]
                 ) -> tuple[set[Hashable], set[Hashable]]:
    """(expected, may_skip) fires of one job for check_exactly_once (see the header)."""
    acked = {r["slot_ms"] for r in runs}
    expected: set[Hashable] = set()
    may_skip: set[Hashable] = set()
    for slot in plan.slots():
        if slot in acked or not (plan.skips and plan.may_drop(slot)):
            expected.add(slot)
        else:
            may_skip.add(slot)
    may_skip.update(slot for slot in plan.tail() if slot not in acked)
    expected.update(slot for slot in acked if slot not in may_skip)
    if not plan.retried:
        return expected, may_skip
    last_attempt = {r["slot_ms"]: r["attempt"] for r in runs}
    expected_attempts: set[Hashable] = set()
    skip_attempts: set[Hashable] = {(slot, 1) for slot in may_skip}
    for slot in expected:
        final = last_attempt.get(slot, 1)
        expected_attempts.add((slot, final))
        skip_attempts.update((slot, attempt) for attempt in range(1, final))
    return expected_attempts, skip_attempts


def check_job(plan: JobPlan, ops: list[Operation], runs: list[Mapping[str, Any]]) -> CheckResult:
    """exactly-once for one job, labelled with its name."""
    expected, may_skip = expectations(plan, runs)
    result = check_exactly_once(ops, {plan.name: expected}, {plan.name: may_skip}, f=FIRE_F)
    return _labelled(result, f"exactly-once {plan.name}")


def check_committed(job: str, executions: list[Execution],
                    runs: list[Mapping[str, Any]]) -> CheckResult:
    """Every attempt that ran belongs to a run the cluster's history shows as fired."""
    fired = {r["slot_ms"]: r["attempt"] for r in runs}
    strays = sorted({(ex.slot, ex.attempt) for ex in executions
                     if ex.slot not in fired or ex.attempt > fired[ex.slot]})
    name = f"executions-committed {job}"
    if strays:
        return CheckResult(name, False, f"{len(strays)} attempts ran that the cluster never "
                           f"fired (slot, attempt): {_listed(strays)}", details={"strays": strays})
    return CheckResult(name, True, f"{len(executions)} lines, each of a fired run")


def check_cut_off(executions: Iterable[Execution], spans: Iterable[Span],
                  grace_ms: int) -> CheckResult:
    """No worker cut off from the quorum started an attempt of a slot after its cut.

    A run claimed before the cut may start up to `grace_ms` after it (a fire-ahead run is
    held until its slot); any later slot started on the cut-off host while the cut lasted
    was dispatched by a node without quorum.
    """
    cuts = [span for span in spans if span.cut_off is not None]
    starts = [ex for ex in executions if ex.phase == START]
    bad = []
    for span in cuts:
        bad += [(span.kind, ex.host, ex.job, ex.slot, ex.at_ms - span.start_ms) for ex in starts
                if ex.host == span.cut_off and span.start_ms < ex.at_ms < span.end_ms
                and ex.slot > span.start_ms + grace_ms]
    if bad:
        text = (f"{len(bad)} attempts started on a cut-off host for slots after the cut "
                f"(fault, host, job, slot, ms after the cut): {_listed(bad)}")
        return CheckResult("cut-off-no-dispatch", False, text, details={"started": bad})
    return CheckResult("cut-off-no-dispatch", True,
                       f"{len(cuts)} cuts, no dispatch to a cut-off worker after any")


def check_ended(unfinished: list[Mapping[str, Any]]) -> CheckResult:
    """Every run fired before the final pause reached a final state while the drill waited
    (all workers alive, every fault healed)."""
    if unfinished:
        shown = [(r["run_id"], r["state"], r.get("worker"), r["attempt"]) for r in unfinished]
        return CheckResult("runs-ended", False, f"{len(unfinished)} runs never ended (run, "
                           f"state, worker, attempt): {_listed(shown)}",
                           details={"unfinished": shown})
    return CheckResult("runs-ended", True, "every run reached a final state")


def check_no_overlap(job: str, executions: Iterable[Execution]) -> CheckResult:
    """No attempt of a slot started while an earlier attempt's command still ran (an
    attempt without an `end` line was killed: its end is unknown and not judged)."""
    by_slot: dict[int, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for ex in executions:
        by_slot[ex.slot][ex.attempt][ex.phase] = ex.at_ms
    overlaps = []
    retried = 0
    for slot, attempts in by_slot.items():
        retried += len(attempts) > 1
        for attempt, times in attempts.items():
            for earlier in range(1, attempt):
                end = attempts.get(earlier, {}).get(END)
                if START in times and end is not None and times[START] < end:
                    overlaps.append((slot, earlier, attempt, end - times[START]))
    name = f"no-overlap-after-loss {job}"
    if overlaps:
        text = (f"{len(overlaps)} retries started while the earlier attempt still ran "
                f"(slot, earlier, later, ms of overlap): {_listed(sorted(overlaps))}")
        return CheckResult(name, False, text, details={"overlaps": overlaps})
    return CheckResult(name, True, f"{retried} slots ran more than one attempt, none overlapping")


def _labelled(result: CheckResult, name: str) -> CheckResult:
    return CheckResult(name, result.valid, result.explanation, result.window, result.details,
                       result.origin)


def _ceil_slot(ms: int) -> int:
    return -(-ms // SLOT_MS) * SLOT_MS


def _listed(items: list[Any]) -> str:
    shown = ", ".join(repr(item) for item in items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
