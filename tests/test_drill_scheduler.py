"""The scheduler fault drill, one short seeded round (tests/faults/scheduler_drill.py says
what it does and checks): no slot fires twice or never, within each MISFIRE policy, across
an isolated leader with clients and a worker on its side, a split, a bridge, one-way cuts,
loss, a clock jump forward and back on the leader, and a SIGKILLed leader.

The round is run once per module; the strict checks are asserted together, with the
no-overlap check of retried runs as a test of its own; the runs-ended check is a non-strict
xfail (see below). The drill's own checks are also run on hand-written files and
histories, good and bad. Skips with the harness's one reason where namespaces are
unavailable; nothing is timed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.faults import scheduler_checks as checks
from tests.faults.drill import FAULT_F, HEAL_F, NEMESIS_PROCESS
from tests.faults.history import OK, Operation, Recorder
from tests.faults.hosts import skip_unless_available
from tests.faults.scheduler_cluster import command
from tests.faults.scheduler_drill import Round, nemesis_spans, run_round

SEED = 11
DURATION_S = 0.0  # the scripted faults only: no random phase in the short round


@pytest.fixture(scope="module")
def round_(tmp_path_factory: pytest.TempPathFactory) -> Round:
    skip_unless_available()
    return run_round(SEED, DURATION_S, tmp_path_factory.mktemp("drill-scheduler"))


def test_scheduler_drill_short_round(round_: Round) -> None:
    report = round_.report
    failed = [r for r in report.results if not r.passed and r is not round_.ended]
    assert not failed, report.report()
    assert report.operations > 0 and report.faults >= 6


# Was a non-strict xfail: a retry started within the worker timeout of an attempt whose
# worker kept heartbeating. The cause: the clock fault steps the leader's wall clock 3 s
# forward, past the drill's 2 s worker timeout, and `lose` compared wall times, so the leader
# found every worker silent and retried their running attempts elsewhere. The leader now
# proposes `lose` only for a worker silent by its monotonic clock too (scheduler/fireloop.py,
# tests/test_scheduler_clock_jump.py); workers also leave a node that leaves a heartbeat or
# report unanswered for 3 s (scheduler/worker_links.py).
def test_no_retry_overlaps_a_cut_off_workers_attempt(round_: Round) -> None:
    assert round_.gap.passed, round_.gap.report()


# Runs stayed started for good after the faults healed. Causes found: a resync poll cut to
# the worker's free slots let runs it executed crowd out one it never received
# (scheduler/state_apply.py `_claim`, tests/test_scheduler_resync_limit.py); and a worker's
# fence cancelled runs received in the same loop step, before their tasks began, so they
# never reported themselves abandoned (scheduler/worker.py, tests/
# test_scheduler_held_runs_end.py). Any other run the state gives a live worker that the
# worker does not hold is now lost by its heartbeat's HOLDING list once claimed 30 s ago
# (state_apply `_beat`). Still seen after those fixes, in 2 of 7 rounds under load averages
# 15-40: after the loss fault no worker claimed the slow job's retries (left fired) nor the
# last slots of the other jobs for the 30 s after the pause. Not diagnosed: non-strict.
@pytest.mark.xfail(strict=False, reason="after the loss fault, fired runs can stay unclaimed "
                   "past the settling phase (intermittent, undiagnosed)")
def test_every_run_ends_after_the_faults_heal(round_: Round) -> None:
    assert round_.ended.passed, round_.ended.report()


# -- the drill's checks on hand-written files and histories (no processes) -------------------

def ex(slot: int, at: int, host: str = "n1", attempt: int = 1, phase: str = checks.START,
       job: str = "j") -> checks.Execution:
    return checks.Execution(job, slot, attempt, host, phase, at)


def test_the_command_line_is_what_the_reader_parses(tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    text = command(out, slow=True).replace("sleep 3", "true")
    env = {"SCHED_SCHEDULED_AT": "5000", "SCHED_ATTEMPT": "2", "DRILL_HOST": "n2",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["/bin/sh", "-c", text], env=env, check=True)
    start, end = checks.read_executions(out, "j")
    assert (start.slot, start.attempt, start.host, start.phase) == (5000, 2, "n2", checks.START)
    assert end.phase == checks.END and end.at_ms >= start.at_ms


def test_a_slot_run_twice_and_a_missing_slot_are_caught() -> None:
    base = checks.TimeBase(0, 0)
    runs = [{"slot_ms": s, "attempt": 1, "state": "succeeded", "fired_ms": s}
            for s in (1000, 2000, 3000)]
    twice = [ex(1000, 1000), ex(2000, 2000), ex(2000, 2001, "n2"), ex(3000, 3000)]
    plan = checks.JobPlan("j", 1, 3000, 3000, skips=False)
    ops = checks.fire_operations("j", twice, runs, base, False, iter(range(100)))
    result = checks.check_job(plan, ops, runs)
    assert result.valid is False and result.details["double"] == [("j", 2000)], result.report()
    ops = checks.fire_operations("j", [ex(1000, 1000), ex(3000, 3000)], runs, base, False,
                                 iter(range(100)))
    result = checks.check_job(plan, ops, runs)
    assert result.valid is False and result.details["missing"] == [("j", 2000)], result.report()


def test_a_skipping_job_may_drop_slots_in_a_window_but_not_acknowledged_ones() -> None:
    base = checks.TimeBase(0, 0)
    plan = checks.JobPlan("j", 1, 5000, 5000, skips=True, windows=[(2000, 3000)])
    fired = [{"slot_ms": s, "attempt": 1, "state": "succeeded", "fired_ms": s}
             for s in (1000, 4000, 5000)]
    ran = [ex(s, s) for s in (1000, 4000, 5000)]
    ops = checks.fire_operations("j", ran, fired, base, False, iter(range(100)))
    assert checks.check_job(plan, ops, fired).passed
    acked = [*fired, {"slot_ms": 2000, "attempt": 1, "state": "succeeded", "fired_ms": 2000}]
    result = checks.check_job(plan, ops, acked)
    assert result.valid is False and result.details["missing"] == [("j", 2000)]
    lost = [*fired, {"slot_ms": 2000, "attempt": 1, "state": "lost", "fired_ms": 2000}]
    ops = checks.fire_operations("j", ran, lost, base, False, iter(range(100)))
    assert checks.check_job(plan, ops, lost).passed  # a lost run may not have run


def test_a_retried_slot_runs_each_attempt_once() -> None:
    base = checks.TimeBase(0, 0)
    runs = [{"slot_ms": 1000, "attempt": 2, "state": "succeeded", "fired_ms": 1000}]
    plan = checks.JobPlan("j", 1, 1000, 1000, skips=False, retried=True)
    ran = [ex(1000, 1000), ex(1000, 4000, "n2", attempt=2)]
    ops = checks.fire_operations("j", ran, runs, base, True, iter(range(100)))
    assert checks.check_job(plan, ops, runs).passed
    ran.append(ex(1000, 4100, "n3", attempt=2))
    ops = checks.fire_operations("j", ran, runs, base, True, iter(range(100)))
    assert checks.check_job(plan, ops, runs).details["double"] == [("j", (1000, 2))]


def test_an_execution_the_cluster_never_fired_is_caught() -> None:
    runs = [{"slot_ms": 1000, "attempt": 1}]
    assert checks.check_committed("j", [ex(1000, 1000)], runs).passed
    result = checks.check_committed("j", [ex(1000, 1000), ex(2000, 2000)], runs)
    assert result.valid is False and result.details["strays"] == [(2000, 1)]


def test_a_dispatch_to_a_cut_off_worker_after_the_cut_is_caught() -> None:
    span = checks.Span("isolate", 10_000, 14_000, "n1")
    claimed_before = ex(10_000, 10_050)  # fired ahead, claimed before the cut
    elsewhere = ex(12_000, 12_010, "n2")
    assert checks.check_cut_off([claimed_before, elsewhere], [span], 1000).passed
    late = ex(12_000, 12_010)
    result = checks.check_cut_off([claimed_before, late], [span], 1000)
    assert result.valid is False and result.details["started"] == [
        ("isolate", "n1", "j", 12_000, 2010)]


def test_a_retry_overlapping_the_earlier_attempt_is_caught() -> None:
    apart = [ex(1000, 1000), ex(1000, 4000, phase=checks.END),
             ex(1000, 4100, "n2", 2), ex(1000, 7100, "n2", 2, checks.END)]
    assert checks.check_no_overlap("j", apart).passed
    overlapping = [ex(1000, 1000), ex(1000, 4000, phase=checks.END),
                   ex(1000, 3500, "n2", 2)]
    result = checks.check_no_overlap("j", overlapping)
    assert result.valid is False and result.details["overlaps"] == [(1000, 1, 2, 500)]


def test_fires_sit_in_the_history_at_their_wall_times() -> None:
    base = checks.TimeBase(wall_ms=1_000, mono_ns=5_000_000_000)
    [op] = checks.fire_operations("j", [ex(1000, 1_250)], [], base, False, iter([7]))
    assert op == Operation(7, "worker-n1", checks.FIRE_F, "j", 1000, None, OK,
                           5_250_000_000, 5_250_000_000)


def test_nemesis_faults_become_spans_with_their_cut_off_hosts() -> None:
    ticks = iter(range(0, 1 << 40, 1_000_000))  # each clock reading 1 ms after the last
    recorder = Recorder(clock=lambda: next(ticks))
    recorder.invoke("client", "run", "manual").ok(1)  # not the nemesis's: ignored
    for f, kind, text in [(FAULT_F, "isolate", "isolate n2"), (HEAL_F, "isolate", "isolate n2"),
                          (FAULT_F, "split", "split n1 | n2,n3"),
                          (HEAL_F, "split", "split n1 | n2,n3"),
                          (FAULT_F, "one_way", "one_way n1 -/-> n2")]:
        recorder.invoke(NEMESIS_PROCESS, f, kind, text).ok(text)
    spans = nemesis_spans(recorder.history(), checks.TimeBase(1000, 0), 99_000)
    assert spans == [checks.Span("isolate", 1002, 1004, "n2"),
                     checks.Span("split", 1006, 1008, "n1"),
                     checks.Span("one_way", 1010, 99_000, None)]


def test_a_run_that_never_ended_is_caught_and_counts_as_an_unknown_fire() -> None:
    stuck = {"run_id": "j@1000/0", "slot_ms": 1000, "attempt": 1, "state": "started",
             "worker": "w-n2", "fired_ms": 900}
    result = checks.check_ended([stuck])
    assert result.valid is False and result.details["unfinished"] == [
        ("j@1000/0", "started", "w-n2", 1)]
    assert checks.check_ended([]).passed
    [op] = checks.fire_operations("j", [], [stuck], checks.TimeBase(0, 0), False, iter([1]))
    assert (op.status, op.value, op.complete_time) == ("info", 1000, None)
    plan = checks.JobPlan("j", 1, 1000, 1000, skips=False)
    assert checks.check_job(plan, [op], [stuck]).passed  # its command may or may not run
