"""scheduler drills on real processes (issue #4, section 4): a whole-cluster outage and the
MISFIRE policies, overlap policies, retries, timeouts and AFTER chains, DST through the
daemon, and bad input on every command.

Each drill runs three `scheduler serve` nodes on 127.0.0.2-4 and a `scheduler worker`
process whose shell commands append `$SCHED_SCHEDULED_AT` to files. Nothing asserts how long
anything took: waits are on conditions, with HANG_S only to detect a hang. The outage and
DST drills start their own clusters with a shifted wall clock (`--clock-offset-ms`); the
others share one cluster.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scheduler.jobs import MAX_CATCHUP_SLOTS
from tests.scheduler_drill import (
    FINAL,
    WORKER_TIMEOUT_MS,
    append_slot,
    cron_at,
    fired_slots,
    gated,
    group_alive,
    history,
    job_definition,
    kill_groups,
    running_cluster,
    settled,
    start_nodes,
    stop_nodes,
    wait_slot_reached,
    wall_ms,
)
from tests.test_scheduler_daemon import Cluster, fires, paused_ahead, wait_until

# The whole-cluster outage: every node SIGKILLed, two minutes with no node up (the worker
# keeps running, its reports and heartbeats failing), then all restarted on their data
# directories. The nodes are really down for REAL_OUTAGE_S; the rest of the two minutes is a
# jump of their wall clocks (the scheduler reads time only through its injected clock and
# Raft's timers are monotonic, so the nodes cannot tell the difference), as in the
# clean-restart drill below. Two minutes, because MISFIRE ALL must miss more than
# MAX_CATCHUP_SLOTS (100) slots of a once-a-second job for its cap to show.
OUTAGE_MS = 120_000
REAL_OUTAGE_S = 5.0
FIXED_LEAD_MS = 45_000  # the once-a-year slot lies this far after the jobs are added
NEVER = "0 0 1 1 *"  # once a year: these jobs run by JOB.RUN only


def _add(cluster: Cluster, name: str, schedule: str, command: str, *options: str) -> None:
    assert cluster.call("JOB.ADD", name, schedule, command, "HISTORY", "1000", *options) == "OK"


def _first_fire_after(cluster: Cluster, job: str, after_ms: int) -> list[int]:
    """The slots of the first fire entry committed at or after `after_ms` (its runs share
    one fired_ms), ascending."""
    runs = [r for r in history(cluster, job) if r["fired_ms"] >= after_ms
            and r["state"] != "skipped"]
    first = min(r["fired_ms"] for r in runs)
    return sorted(r["slot_ms"] for r in runs if r["fired_ms"] == first)


MISFIRE_JOBS = {  # name -> (schedule, options); FIXED is the once-a-year slot
    "skip-1s": ("* * * * * *", "MISFIRE", "SKIP"),
    "once-1s": ("* * * * * *", "MISFIRE", "ONCE", "DEADLINE", "300"),
    "all-1s": ("* * * * * *", "MISFIRE", "ALL", "DEADLINE", "300"),
    "all-5s": ("*/5 * * * * *", "MISFIRE", "ALL", "DEADLINE", "300"),
    "skip-fixed": ("FIXED", "MISFIRE", "SKIP"),
    "once-fixed": ("FIXED", "MISFIRE", "ONCE", "DEADLINE", "300"),
    "once-short": ("FIXED", "MISFIRE", "ONCE", "DEADLINE", "30"),
    "all-short": ("FIXED", "MISFIRE", "ALL", "DEADLINE", "30"),
}


# The worker hears from no node during an outage and the restart; with its default fence it
# would kill its run in flight (tests/test_scheduler_fencing.py tests that). In the outage
# drills it must outlast them, however slowly a busy machine restarts the nodes.
OUTAGE_FENCE_MS = 600_000


def test_whole_cluster_outage_keeps_jobs_and_follows_misfire(tmp_path: Path) -> None:
    with running_cluster(tmp_path, worker_fence_ms=OUTAGE_FENCE_MS) as cluster:
        fixed = (wall_ms() // 1000 + FIXED_LEAD_MS // 1000) * 1000
        for name, (schedule, *options) in MISFIRE_JOBS.items():
            schedule = cron_at(fixed) if schedule == "FIXED" else schedule
            _add(cluster, name, schedule, append_slot(tmp_path / f"{name}.txt"), *options)
        # a run in flight across the outage: its command waits for a gate opened after it
        gate = tmp_path / "inflight.gate"
        _add(cluster, "inflight", NEVER, gated(tmp_path / "inflight.txt", gate))
        inflight = cluster.call("JOB.RUN", "inflight")
        wait_until(lambda: len(fires(tmp_path / "all-1s.txt")) >= 3
                   and fires(tmp_path / "all-5s.txt")
                   and history(cluster, "inflight")[0]["state"] == "started",
                   "fires before the outage", cluster)
        names = sorted([*MISFIRE_JOBS, "inflight"])
        definitions = {name: job_definition(cluster, name) for name in names}
        done_before = {name: [r for r in history(cluster, name) if r["state"] in FINAL]
                       for name in names}

        stop_ms = wall_ms()
        assert stop_ms < fixed - 5000, "too slow to stop the cluster before the fixed slot"
        for node in cluster.nodes:
            node.kill()
        time.sleep(REAL_OUTAGE_S)  # the outage itself; the nodes' clocks jump the rest
        offset_ms = stop_ms + OUTAGE_MS - wall_ms()
        restart_ms = wall_ms() + offset_ms  # as the restarted nodes read it
        start_nodes(cluster, offset_ms)

        assert cluster.call("JOB.LIST") == names
        for name in names:
            assert job_definition(cluster, name) == definitions[name], name
            now = {run["run_id"]: run for run in history(cluster, name)}
            for run in done_before[name]:
                assert now[run["run_id"]] == run, f"{name}: a finished run changed"
        gate.touch()
        for name in ("skip-1s", "once-1s", "all-1s", "all-5s"):
            wait_slot_reached(cluster, name, restart_ms + 5000, f"{name} after the restart")
        for name in names:
            assert cluster.call("JOB.PAUSE", name) == "OK"
        wait_until(lambda: settled(cluster, *names), "the last runs to finish", cluster)
        for name in MISFIRE_JOBS:  # every fired run executed once
            assert sorted(fires(tmp_path / f"{name}.txt")) == fired_slots(cluster, name), name
        _check_misfire(cluster, range(stop_ms + 2000, restart_ms - 1000), fixed)
        # the run in flight finished once, and its worker was not declared lost
        [run] = history(cluster, "inflight")
        assert (run["run_id"], run["state"], run["attempt"]) == (inflight, "succeeded", 1)
        assert fires(tmp_path / "inflight.txt") == [run["slot_ms"]]


def _check_misfire(cluster: Cluster, outage: range, fixed: int) -> None:
    """The MISFIRE_JOBS after an outage in which no leader could fire (`outage`, ms)."""
    restart_ms = outage.stop + 1000
    # skip: no slot of the outage fired, and nothing fired late
    assert not [s for s in fired_slots(cluster, "skip-1s") if s in outage]
    assert all(r["fired_ms"] - r["slot_ms"] <= 1000 for r in history(cluster, "skip-1s"))
    # once: the first fire after the restart fired one slot for the whole gap
    assert len(_first_fire_after(cluster, "once-1s", restart_ms)) == 1
    assert not [s for s in fired_slots(cluster, "once-1s") if s in outage]
    # all: the latest MAX_CATCHUP_SLOTS missed slots fire at once; the older are dropped
    caught = _first_fire_after(cluster, "all-1s", restart_ms)
    assert caught == list(range(caught[0], caught[0] + 1000 * MAX_CATCHUP_SLOTS, 1000))
    assert caught[0] in outage
    assert not [s for s in fired_slots(cluster, "all-1s") if outage.start < s < caught[0]]
    # all, under the cap: every missed slot fired, once
    slots = fired_slots(cluster, "all-5s")
    assert slots == list(range(slots[0], slots[-1] + 5000, 5000))
    assert [s for s in slots if s in outage]
    # a slot missed by more than DEADLINE, or under SKIP, never fires; within: once, late
    [run] = history(cluster, "once-fixed")
    assert run["slot_ms"] == fixed and run["fired_ms"] >= restart_ms
    for name in ("skip-fixed", "once-short", "all-short"):
        assert history(cluster, name) == [], name
        assert cluster.call("JOB.GET", name)["handled_ms"] >= fixed


def test_a_run_in_flight_survives_a_clean_whole_cluster_restart(tmp_path: Path) -> None:
    """SIGTERM every node while a run executes, restart them 120 s later (clock offset): the
    worker, alive all along, keeps its run; it is neither lost nor retried."""
    with running_cluster(tmp_path, worker_fence_ms=OUTAGE_FENCE_MS) as cluster:
        out, gate = tmp_path / "inflight.txt", tmp_path / "inflight.gate"
        _add(cluster, "inflight", NEVER, gated(out, gate), "RETRIES", "1",
             "BACKOFF", "0")
        run_id = cluster.call("JOB.RUN", "inflight")
        wait_until(lambda: history(cluster, "inflight")[0]["state"] == "started",
                   "the run to start", cluster)
        stop_nodes(cluster)
        start_nodes(cluster, OUTAGE_MS)
        assert cluster.call("JOB.GET", "inflight")["name"] == "inflight"
        # pacing only: give the new leader time to judge the worker before the run ends
        time.sleep(2 * WORKER_TIMEOUT_MS / 1000)
        gate.touch()
        wait_until(lambda: settled(cluster, "inflight"), "the run to finish", cluster)
        [run] = history(cluster, "inflight")
        assert (run["run_id"], run["state"], run["attempt"]) == (run_id, "succeeded", 1), run
        assert fires(out) == [run["slot_ms"]]


# America/New_York, 2027: the spring-forward gap (02:00 EST -> 03:00 EDT) begins at
# 07:00:00 UTC on March 14; on November 7, 01:00-02:00 is lived twice, first in EDT from
# 05:00 UTC, then in EST from 06:00 UTC.
NEW_YORK = "America/New_York"
SPRING_GAP_MS = 1_805_007_600_000  # 2027-03-14T07:00:00Z = 03:00 EDT, just after the gap
SPRING_0230_NEXT_MS = 1_805_092_200_000  # 2027-03-15T06:30:00Z = 02:30 EDT the next day
FALL_FIRST_MS = 1_825_563_605_000  # 2027-11-07T05:00:05Z = 01:00:05 EDT
FALL_SECOND_MS = 1_825_567_205_000  # 2027-11-07T06:00:05Z = 01:00:05 EST
FALL_FIXED_NEXT_MS = 1_825_653_605_000  # 2027-11-08T06:00:05Z = 01:00:05 EST the next day
DST_LEAD_MS = 4000  # the nodes restart this long (their clock) before the instant drilled


def _clock_at(target_ms: int) -> int:
    """The --clock-offset-ms that makes a node started now read `target_ms`."""
    return target_ms - wall_ms()


def _restart_at(cluster: Cluster, target_ms: int) -> None:
    for node in cluster.nodes:
        node.kill()
    start_nodes(cluster, _clock_at(target_ms))


def _since_restart(slots: list[int], drilled_ms: int) -> list[int]:
    """The slots the restart before `drilled_ms` could fire (20 s being the jobs' DEADLINE)."""
    return [s for s in slots if s >= drilled_ms - DST_LEAD_MS - 20_000]


def _every_2s(slots: list[int]) -> bool:
    return slots == list(range(slots[0], slots[-1] + 2000, 2000))


def test_dst_rules_through_the_daemon(tmp_path: Path) -> None:
    """Jobs are added an hour (of the nodes' clock) ahead, then the nodes restart a few
    seconds before the instant drilled, so no job can be added late on a slow machine."""
    frequent = ("*/2 * * * * *", "TZ", NEW_YORK, "MISFIRE", "ALL", "DEADLINE", "20")
    with running_cluster(tmp_path, _clock_at(SPRING_GAP_MS - 3_600_000)) as cluster:
        # spring forward: 02:30 does not exist that day; it runs once, at 03:00 EDT
        _add(cluster, "gap-0230", "0 30 2 * * *", append_slot(tmp_path / "gap-0230.txt"),
             "TZ", NEW_YORK)
        _add(cluster, "spring-2s", frequent[0], "true", *frequent[1:])
        assert cluster.call("JOB.GET", "gap-0230")["next_ms"] == SPRING_GAP_MS
        _restart_at(cluster, SPRING_GAP_MS - DST_LEAD_MS)
        wait_slot_reached(cluster, "spring-2s", SPRING_GAP_MS + 4000, "fires after the gap")
        wait_until(lambda: settled(cluster, "gap-0230"), "the 02:30 run to finish", cluster)
        [run] = history(cluster, "gap-0230")
        assert (run["slot_ms"], run["state"]) == (SPRING_GAP_MS, "succeeded")
        assert fires(tmp_path / "gap-0230.txt") == [SPRING_GAP_MS]  # its $SCHED_SCHEDULED_AT
        assert cluster.call("JOB.GET", "gap-0230")["next_ms"] == SPRING_0230_NEXT_MS
        # 01:59:58 EST, then 03:00:00 EDT; a slow machine may also have fired a slot an hour
        # earlier, seconds after the job was added, before the restart moved the clock on
        slots = _since_restart(fired_slots(cluster, "spring-2s"), SPRING_GAP_MS)
        assert _every_2s(slots) and slots[0] < SPRING_GAP_MS < slots[-1], slots
        for name in ("gap-0230", "spring-2s"):
            assert cluster.call("JOB.DEL", name) == "OK"

        # fall back: 01:00:05 happens twice. The fixed-hour job runs at the first only;
        # the hour-wildcard one (every hour at :00:05) and the every-2 s one in both passes
        _add(cluster, "fixed-010005", "5 0 1 * * *",
             append_slot(tmp_path / "fixed-010005.txt"), "TZ", NEW_YORK)
        _add(cluster, "hourly-0005", "5 0 * * * *", "true", "TZ", NEW_YORK)
        _add(cluster, "fall-2s", frequent[0], "true", *frequent[1:])
        for at_ms in (FALL_FIRST_MS, FALL_SECOND_MS):
            _restart_at(cluster, at_ms - DST_LEAD_MS)
            wait_slot_reached(cluster, "fall-2s", at_ms + 3000, "fires in the repeated hour")
            wait_until(lambda: settled(cluster, "fixed-010005", "hourly-0005", "fall-2s"),
                       "the runs to finish", cluster)
            since_restart = _since_restart(fired_slots(cluster, "fall-2s"), at_ms)
            assert _every_2s(since_restart), since_restart
        assert [s for s in fired_slots(cluster, "fall-2s")
                if s in range(FALL_SECOND_MS - 6000, FALL_SECOND_MS)], "no fire at 01:59 EDT"
        assert fired_slots(cluster, "fixed-010005") == [FALL_FIRST_MS]
        assert fires(tmp_path / "fixed-010005.txt") == [FALL_FIRST_MS]
        assert cluster.call("JOB.GET", "fixed-010005")["next_ms"] == FALL_FIXED_NEXT_MS
        # (its first slot, seconds after it was added on the spring clock, may have fired
        # ahead before the restart moved the clock to the fall: only the fall's count here)
        hourly = [s for s in fired_slots(cluster, "hourly-0005")
                  if s >= FALL_FIRST_MS - DST_LEAD_MS]
        assert hourly == [FALL_FIRST_MS, FALL_SECOND_MS]


# -- the drills below share one cluster ---------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-drills")) as started:
        yield started


def test_overlap_allow_runs_side_by_side(cluster: Cluster) -> None:
    starts, gate = cluster.tmp / "allow.txt", cluster.tmp / "allow.gate"
    _add(cluster, "ov-allow", "@every 1s", gated(starts, gate), "CONCURRENCY", "ALLOW",
         "MISFIRE", "SKIP")
    wait_until(lambda: len(fires(starts)) >= 3, "three runs at once", cluster)
    assert cluster.call("JOB.PAUSE", "ov-allow") == "OK"
    running = [r for r in history(cluster, "ov-allow") if r["state"] == "started"]
    assert len(running) >= 3  # the gate is closed: none of them could have finished
    gate.touch()
    wait_until(lambda: settled(cluster, "ov-allow"), "the runs to finish", cluster)
    ran = [r for r in history(cluster, "ov-allow") if not paused_ahead(r)]
    assert {r["state"] for r in ran} == {"succeeded"}
    assert sorted(fires(starts)) == fired_slots(cluster, "ov-allow")


def test_overlap_forbid_skips_while_a_run_is_active(cluster: Cluster) -> None:
    starts, gate = cluster.tmp / "forbid.txt", cluster.tmp / "forbid.gate"
    _add(cluster, "ov-forbid", "@every 1s", gated(starts, gate), "CONCURRENCY", "FORBID",
         "MISFIRE", "SKIP")

    def skipped() -> list[dict[str, object]]:
        return [r for r in history(cluster, "ov-forbid") if r["state"] == "skipped"]

    wait_until(lambda: len(skipped()) >= 2, "slots skipped behind the first run", cluster)
    assert len(fires(starts)) == 1
    assert all(r["message"] == "an earlier run is active" for r in skipped())
    first = fires(starts)[0]
    gate.touch()  # the first run ends; the next due slot fires again
    wait_until(lambda: len(fires(starts)) >= 2, "a run after the first finished", cluster)
    assert cluster.call("JOB.PAUSE", "ov-forbid") == "OK"
    wait_until(lambda: settled(cluster, "ov-forbid"), "the runs to finish", cluster)
    runs = history(cluster, "ov-forbid")
    assert sorted(fires(starts)) == fired_slots(cluster, "ov-forbid")
    assert all(r["slot_ms"] > first for r in runs if r["state"] == "skipped")
    assert {r["state"] for r in runs} == {"succeeded", "skipped"}


def test_overlap_replace_kills_the_older_runs_group(cluster: Cluster) -> None:
    pids = cluster.tmp / "replace.pids"
    # `$$` is the shell's pid, which leads the run's own process group; `sleep & wait`
    # leaves a child in that group that only a kill of the whole group ends
    command = f"echo $$ >> {pids}; sleep 60 & wait"
    _add(cluster, "ov-replace", "@every 2s", command, "CONCURRENCY", "REPLACE",
         "MISFIRE", "SKIP")
    try:
        wait_until(lambda: len(fires(pids)) >= 2, "a second run replacing the first", cluster)
        first = history(cluster, "ov-replace")[0]
        assert (first["state"], first["message"]) == ("killed", "replaced")
        wait_until(lambda: not group_alive(fires(pids)[0]), "the replaced group to end",
                   cluster)
        assert cluster.call("JOB.PAUSE", "ov-replace") == "OK"
    finally:
        kill_groups(fires(pids))



def _latest(cluster: Cluster, job: str) -> dict[str, object]:
    return cluster.call("JOB.HISTORY", job, "1")[0]


def test_retries_back_off_then_give_up(cluster: Cluster) -> None:
    out = cluster.tmp / "flaky.txt"
    command = f'echo "$SCHED_ATTEMPT $(date +%s%3N)" >> {out}; exit 3'
    _add(cluster, "flaky", NEVER, command, "RETRIES", "2", "BACKOFF", "1")
    run_id = cluster.call("JOB.RUN", "flaky")
    wait_until(lambda: _latest(cluster, "flaky")["state"] == "failed"
               and _latest(cluster, "flaky")["attempt"] == 3, "the last attempt", cluster)
    run = _latest(cluster, "flaky")
    assert (run["run_id"], run["exit_code"]) == (run_id, 3)
    assert len(history(cluster, "flaky")) == 1  # one run, three attempts
    attempts = [line.split() for line in out.read_text().splitlines()]
    assert [a for a, _ in attempts] == ["1", "2", "3"]
    started = [int(t) for _, t in attempts]
    # BACKOFF 1: retry k waits at least 1 s * 2^(k-1) after attempt k ended (a lower bound
    # that load can only lengthen; both stamps come from this machine's clock)
    assert started[1] - started[0] >= 1000 and started[2] - started[1] >= 2000, started


def test_timeout_kills_the_sleeping_commands_group(cluster: Cluster) -> None:
    pids = cluster.tmp / "sleeper.pids"
    _add(cluster, "sleeper", NEVER, f"echo $$ >> {pids}; sleep 60 & wait", "TIMEOUT", "1")
    try:
        cluster.call("JOB.RUN", "sleeper")
        wait_until(lambda: settled(cluster, "sleeper"), "the run to time out", cluster)
        run = _latest(cluster, "sleeper")
        # the same record whether the worker's report (exit 124) or the cluster's expiry
        # committed first
        assert (run["state"], run["exit_code"], run["message"]) == (
            "timed_out", -1, "timed out"), run
        [pgid] = fires(pids)
        wait_until(lambda: not group_alive(pgid), "the timed-out group to end", cluster)
    finally:
        kill_groups(fires(pids))


def test_after_chain_runs_once_per_successful_parent_run(cluster: Cluster) -> None:
    files = {name: cluster.tmp / f"{name}.txt" for name in ("parent", "child", "grandchild")}
    # the parent fails its first attempt and succeeds on the retry: the chain runs once
    parent = f'{append_slot(files["parent"])}; [ "$SCHED_ATTEMPT" -ge 2 ]'
    _add(cluster, "parent", NEVER, parent, "RETRIES", "1", "BACKOFF", "0")
    _add(cluster, "child", "@after", append_slot(files["child"]), "AFTER", "parent")
    _add(cluster, "grandchild", "@after", append_slot(files["grandchild"]), "AFTER", "child")
    slots = []
    for _ in range(2):
        run_id = cluster.call("JOB.RUN", "parent")
        slots.append(int(run_id.split("@")[1].split("/")[0]))
        wait_until(lambda: len(fires(files["grandchild"])) == len(slots), "the chain", cluster)
    wait_until(lambda: settled(cluster, "parent", "child", "grandchild"), "the chain", cluster)
    assert fires(files["parent"]) == [slots[0], slots[0], slots[1], slots[1]]
    for name in ("child", "grandchild"):  # each parent slot, once, with the parent's slot
        assert fires(files[name]) == slots, name
        assert {r["state"] for r in history(cluster, name)} == {"succeeded"}
    with pytest.raises(redis.ResponseError, match="is the AFTER parent of 'child'"):
        cluster.call("JOB.DEL", "parent")

    # a parent that fails for good never starts its child (both change in one entry)
    _add(cluster, "doomed", NEVER, "exit 1", "RETRIES", "1", "BACKOFF", "0")
    _add(cluster, "orphan", "@after", append_slot(cluster.tmp / "orphan.txt"), "AFTER", "doomed")
    cluster.call("JOB.RUN", "doomed")
    wait_until(lambda: settled(cluster, "doomed"), "the parent to fail", cluster)
    assert (_latest(cluster, "doomed")["state"], _latest(cluster, "doomed")["attempt"]) == (
        "failed", 2)
    assert history(cluster, "orphan") == []
    assert not (cluster.tmp / "orphan.txt").exists()


def _bad_input() -> list[tuple[tuple[object, ...], str]]:
    """(command, the error reply it gets) for each command's kinds of bad input."""
    from scheduler import arguments, jobs, server, state, worker_commands

    add = ("JOB.ADD", "bad", "@every 1s", "true")
    return [
        (add[:3], jobs.ERR_ARGS),
        (("JOB.ADD", b"\xff", "@every 1s", "true"), jobs.ERR_UTF8),
        (("JOB.ADD", "x" * 200, "@every 1s", "true"), jobs.ERR_NAME),
        (("JOB.ADD", "bad", "* * * *", "true"), "ERR invalid schedule: expected 5 fields"),
        (("JOB.ADD", "bad", "@every 1ms", "true"), "ERR invalid schedule: @every duration"),
        (("JOB.ADD", "bad", "@every 1s", ""), jobs.ERR_COMMAND),
        (("JOB.ADD", "bad", "@every 1s", "a\x00b"), jobs.ERR_COMMAND),
        (("JOB.ADD", "bad", "@every 1s", "x" * 9000), jobs.ERR_COMMAND),
        (("JOB.ADD", "bad", "@after", "true"), jobs.ERR_AFTER_NEEDED),
        ((*add, "AFTER", "keep"), jobs.ERR_AFTER_SCHEDULE),
        (("JOB.ADD", "bad", "@after", "true", "AFTER", "nope"),
         jobs.ERR_AFTER_UNKNOWN.format("nope")),
        (("JOB.ADD", "keep", "@every 1s", "true"), state.ERR_EXISTS.format("keep")),
        ((*add, "TZ"), jobs.ERR_OPTION_VALUE.format("TZ")),
        ((*add, "TZ", "UTC", "tz", "UTC"), jobs.ERR_OPTION_TWICE.format("TZ")),
        ((*add, "TZ", "Mars/Base"), jobs.ERR_TZ.format("Mars/Base")),
        ((*add, "CONCURRENCY", "maybe"), jobs.ERR_CONCURRENCY),
        ((*add, "MISFIRE", "later"), jobs.ERR_MISFIRE),
        ((*add, "DEADLINE", "0"), jobs.ERR_DEADLINE),
        ((*add, "TIMEOUT", "-1"), jobs.ERR_TIMEOUT),
        ((*add, "RETRIES", "99"), jobs.ERR_RETRIES),
        ((*add, "BACKOFF", "1e3"), jobs.ERR_BACKOFF),
        ((*add, "HISTORY", "0"), jobs.ERR_HISTORY),
        ((*add, "TARGET", ""), jobs.ERR_TARGET),
        ((*add, "BOGUS", "1"), jobs.ERR_OPTION.format("BOGUS")),
        (("JOB.GET", b"\xff"), arguments.ERR_UTF8),
        (("JOB.GET", "nope"), server.ERR_NO_JOB.format("nope")),
        (("JOB.GET", "keep", "more"), "ERR wrong number of arguments for 'job.get' command"),
        (("JOB.LIST", "more"), server.ERR_LIST_OPTION),
        (("JOB.LIST", "WITHSTATUS", "more"),
         "ERR wrong number of arguments for 'job.list' command"),
        (("JOB.DEL", "nope"), state.ERR_NO_JOB.format("nope")),
        (("JOB.DEL", b"\xff"), arguments.ERR_UTF8),
        (("JOB.PAUSE", "nope"), state.ERR_NO_JOB.format("nope")),
        (("JOB.RESUME", "nope"), state.ERR_NO_JOB.format("nope")),
        (("JOB.RESUME",), "ERR wrong number of arguments for 'job.resume' command"),
        (("JOB.RUN", "nope"), state.ERR_NO_JOB.format("nope")),
        (("JOB.RUN", b"\xff"), arguments.ERR_UTF8),
        (("JOB.HISTORY",), "ERR wrong number of arguments for 'job.history' command"),
        (("JOB.HISTORY", "nope"), server.ERR_NO_JOB.format("nope")),
        (("JOB.HISTORY", "keep", "0"), server.ERR_COUNT),
        (("JOB.HISTORY", "keep", "-1"), server.ERR_COUNT),
        (("JOB.HISTORY", "keep", "9" * 30), server.ERR_COUNT),
        (("JOB.HISTORY", "keep", "1", "2"), "ERR wrong number of arguments for 'job.history'"),
        (("CLUSTER.INFO", "more"), "ERR wrong number of arguments for 'cluster.info' command"),
        (("CLUSTER.ADD", "1", "127.0.0.9:1"), server.ERR_MEMBER.format(1)),
        (("CLUSTER.ADD", "0", "127.0.0.9:1"), server.ERR_NODE_ID),
        (("CLUSTER.ADD", "9", "127.0.0.9:99999"), server.ERR_ADDRESS.format("127.0.0.9:99999")),
        (("CLUSTER.ADD", "9", "127.0.0.9:1", "a:1", "more"), "ERR wrong number of arguments"),
        (("CLUSTER.REMOVE", "9"), server.ERR_NOT_MEMBER.format(9)),
        (("CLUSTER.REMOVE", "-2"), server.ERR_NODE_ID),
        (("CLUSTER.REMOVE",), "ERR wrong number of arguments for 'cluster.remove' command"),
        (("WORKER.HEARTBEAT",), "ERR wrong number of arguments for 'worker.heartbeat'"),
        (("WORKER.HEARTBEAT", b"\xff"), arguments.ERR_UTF8),
        (("WORKER.POLL",), "ERR wrong number of arguments for 'worker.poll' command"),
        (("WORKER.POLL", b"\xff"), arguments.ERR_UTF8),
        (("WORKER.HEARTBEAT", ""), worker_commands.ERR_WORKER_ID),
        (("WORKER.HEARTBEAT", "w" * 256), worker_commands.ERR_WORKER_ID),
        (("WORKER.POLL", "w" * 256), worker_commands.ERR_WORKER_ID),
        (("WORKER.POLL", "w", "", "soon"), worker_commands.ERR_TIMEOUT_MS),
        (("WORKER.POLL", "w", "", "-1"), worker_commands.ERR_TIMEOUT_MS),
        (("WORKER.POLL", "w", "", "99999999"), worker_commands.ERR_TIMEOUT_MS),
        (("WORKER.POLL", "w", "", "0", "0", "0"), worker_commands.ERR_MAX_RUNS),
        (("WORKER.POLL", "w", "", "0", "0", "1", "more"), worker_commands.ERR_POLL_OPTION),
        (("WORKER.POLL", "w", "", "0", "0", "1", "HANDLERS", "h", "more"),
         worker_commands.ERR_POLL_OPTION),
        (("WORKER.POLL", "w", "", "0", "0", "1", "HANDLERS", "h", "AHEAD", "1", "more"),
         "ERR wrong number of arguments"),
        (("WORKER.POLL", "w", "", "0", "0", "1"), worker_commands.ERR_NO_ADVERT),
        (("WORKER.DONE", "keep@1/0"), "ERR wrong number of arguments for 'worker.done'"),
        (("WORKER.DONE", "norunid", "0"), worker_commands.ERR_RUN_ID.format("norunid")),
        (("WORKER.DONE", "@", "0"), worker_commands.ERR_RUN_ID.format("@")),
        (("WORKER.DONE", b"\xff@1", "0"), arguments.ERR_UTF8),
        (("WORKER.DONE", "keep@1/0", "x"), worker_commands.ERR_EXIT_CODE),
        (("WORKER.DONE", "keep@1/0", "-" + "9" * 19), worker_commands.ERR_EXIT_CODE),
        (("WORKER.DONE", "keep@1/0", str(2**31)), worker_commands.ERR_EXIT_CODE),
        (("WORKER.DONE", "keep@1/0", "0", "", "0"), worker_commands.ERR_ATTEMPT),
        (("WORKER.DONE", "keep@1/0", "0", "", "9" * 19), worker_commands.ERR_ATTEMPT),
        (("WORKER.DONE", "keep@1/0", "0", "", "1", "more"), "ERR wrong number of arguments"),
        (("WORKER.RESULTS", "keep@1/0", "0", ""), "ERR wrong number of arguments"),
        (("WORKER.RESULTS", "keep@1/0", "0", "", "1", "keep@2/0", "0", "", "1", "more"),
         "ERR wrong number of arguments"),
        (("WORKER.RESULTS", "keep@1/0", "0", "", "1", "keep@2/0", "1e3", "", "1"),
         worker_commands.ERR_EXIT_CODE),
        (("WORKER.RESULTS", "keep@1/0", "0", "", "1", "nope", "0", "", "1"),
         worker_commands.ERR_RUN_ID.format("nope")),
        (("WORKER.RESULTS", "keep@1/0", "0", "", "x"), worker_commands.ERR_ATTEMPT),
        (("JOB.NOPE",), "ERR unknown command 'JOB.NOPE'"),
    ]


def test_bad_input_on_every_command(cluster: Cluster) -> None:
    """Each bad command, on each node in turn, gets its error; meanwhile a job fires every
    second, and afterwards every node serves, nothing is lost and no slot fired twice."""
    from tests.test_scheduler_daemon import stop_and_check_each_second_fired_once

    out = cluster.tmp / "steady.txt"
    _add(cluster, "keep", NEVER, "true", "TZ", "Europe/Berlin")
    _add(cluster, "steady", "@every 1s", append_slot(out), "MISFIRE", "ALL")
    wait_until(lambda: len(fires(out)) >= 2, "the steady job to fire", cluster)
    jobs = cluster.call("JOB.LIST")
    keep = job_definition(cluster, "keep")
    for number, (args, error) in enumerate(_bad_input()):
        node = cluster.nodes[number % len(cluster.nodes)]
        with pytest.raises(redis.ResponseError) as caught:
            cluster.client(node).execute_command(*args)
        # redis-py drops the "ERR " of an error reply
        assert str(caught.value).startswith(error.removeprefix("ERR ")), (args, caught.value)
    for node in cluster.nodes:
        assert node.alive() and cluster.client(node).ping()
        _raw_exchange(node.host, node.port)
        assert cluster.client(node).execute_command("JOB.LIST") == jobs
    assert job_definition(cluster, "keep") == keep
    before = len(fires(out))
    wait_until(lambda: len(fires(out)) >= before + 2, "fires after the bad input", cluster)
    stop_and_check_each_second_fired_once(cluster, "steady", out, history=100)


def _raw_exchange(host: str, port: int) -> None:
    """By hand, as netcat would: a bad inline command between two good ones on one
    connection; the good ones are answered in order, the bad one gets an error."""
    with socket.create_connection((host, port), timeout=15) as conn:
        conn.sendall(b"JOB.GET keep\r\nJOB.GET \xff\r\nJOB.HISTORY keep zero\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"+PONG\r\n"):
            chunk = conn.recv(65536)
            assert chunk, reply
            reply += chunk
    assert b"Europe/Berlin" in reply
    assert b"-ERR arguments must be UTF-8 text\r\n-ERR count must be" in reply
