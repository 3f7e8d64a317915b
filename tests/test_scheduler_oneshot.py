"""One-shot jobs (`@at TIME`, `@in DURATION`): parsing (fuzzed), the state rules alone (fires
once, expires past its misfire deadline, retried by RETRIES, then finished), and a real
three-node cluster with its shell worker, through a leader change.

Strategy: the parser is driven by hypothesis from generated instants and durations (and
from arbitrary text, which must parse or raise ScheduleError); the state is driven as the
leader drives it (plan from the replicated handled slot, commit the fire entry), with times
passed in; the cluster part uses tests/test_scheduler_daemon.py's cluster, whose shell worker
appends to a file, and kills the leader around the one fire. Timeouts only detect hangs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import state as S
from scheduler.firing import FirePlanner
from scheduler.jobs import parse_job_add
from scheduler.planning import plan_slots
from scheduler.routing import REASON_SHELL
from scheduler.schedule_parse import (
    AT_MACRO,
    IN_MACRO,
    KNOWN_MACROS,
    MAX_EVERY_MS,
    OneShot,
    ScheduleError,
    parse_schedule,
)
from scheduler.state import SchedulerState
from scheduler.state_queries import FINISHED, RUNNING, SCHEDULED, WAITING
from tests.test_scheduler_daemon import Cluster, running_cluster, wait_until

T0 = 1_700_000_000_000  # a whole second
TIMEOUT_MS = 10_000
README = Path(__file__).resolve().parent.parent / "README.md"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- parsing ---------------------------------------------------------------------------------


def test_at_and_in_parse_to_one_fire_time() -> None:
    at = parse_schedule("@at 2030-01-31T10:00:00.250+01:00")
    assert at == OneShot("@at 2030-01-31T10:00:00.250+01:00", at_ms=1_896_080_400_250)
    assert parse_schedule("@AT 2030-01-31t09:00:00.25z").at_ms == at.at_ms  # type: ignore[union-attr]
    assert parse_schedule("@at 2030-01-31T09:00:00-00:00").fire_ms(0) == 1_896_080_400_000  # type: ignore[union-attr]
    delayed = parse_schedule("@in 1h30m")
    assert delayed == OneShot("@in 1h30m", delay_ms=5_400_000)
    assert delayed.fire_ms(T0) == T0 + 5_400_000  # type: ignore[union-attr]
    assert parse_schedule("@in 0s").fire_ms(T0) == T0  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "error"), [
    ("@at", "@at takes one RFC 3339 time, e.g. '@at 2030-01-31T09:00:00Z'"),
    ("@at 2030-01-31 09:00:00Z", "@at takes one RFC 3339 time"),
    ("@in", "@in takes one duration, e.g. '@in 30s'"),
    ("@in 1s 2s", "@in takes one duration"),
    ("@at 2030-01-31T09:00:00", "@at time '2030-01-31T09:00:00': expected RFC 3339"),
    ("@at 2030-02-30T00:00:00Z", "@at time '2030-02-30T00:00:00Z': day is out of range"),
    ("@at 2030-01-01T24:00:00Z", "@at time '2030-01-01T24:00:00Z': hour must be in 0..23"),
    ("@at 2030-01-01T00:00:60Z", "@at time '2030-01-01T00:00:60Z': leap seconds are not"),
    ("@at 2030-01-01T00:00:00.0001Z", "@at time '2030-01-01T00:00:00.0001Z': not a whole"),
    ("@at 2030-01-01T00:00:00+24:00", "@at time '2030-01-01T00:00:00+24:00': offset out of"),
    ("@at 1969-12-31T23:59:59Z", "@at time '1969-12-31T23:59:59Z': outside 1970-01-01"),
    ("@at 9000-01-01T00:00:00.001Z", "@at time '9000-01-01T00:00:00.001Z': outside"),
    ("@in 5x", "@in duration '5x': expected a number and a unit"),
    ("@in 1m1h", "@in duration '1m1h': units must appear once each, largest first"),
    ("@in 4000d", "@in duration '4000d': longer than the maximum"),
])
def test_bad_one_shot_schedules_are_refused_clearly(text: str, error: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_schedule(text)
    assert str(raised.value).startswith(error), raised.value


def test_the_unknown_macro_error_lists_at_and_in() -> None:
    assert AT_MACRO in KNOWN_MACROS and IN_MACRO in KNOWN_MACROS
    with pytest.raises(ScheduleError, match=r"known: .*@every, @at, @in, @after\)"):
        parse_schedule("@once 5s")


def rfc3339(instant: datetime, digits: int, upper: bool) -> str:
    text = instant.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{instant.microsecond // 1000:03d}".ljust(digits, "0")
    offset = instant.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    zone = "Z" if minutes == 0 else (
        f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    return text + zone if upper else (text + zone).lower()


@given(ms=st.integers(0, 7_000 * 365 * 86_400_000),
       offset_min=st.integers(-23 * 60 - 59, 23 * 60 + 59),
       digits=st.sampled_from([0, 3, 6, 9]), upper=st.booleans())
def test_any_rfc3339_instant_parses_to_its_epoch_ms(ms: int, offset_min: int, digits: int,
                                                    upper: bool) -> None:
    if digits == 0:
        ms -= ms % 1000
    instant = (EPOCH + timedelta(milliseconds=ms)).astimezone(
        timezone(timedelta(minutes=offset_min)))
    schedule = parse_schedule(f"@at {rfc3339(instant, digits, upper)}")
    assert isinstance(schedule, OneShot) and schedule.at_ms == ms


@given(parts=st.lists(st.integers(0, 99), min_size=5, max_size=5),
       used=st.lists(st.booleans(), min_size=5, max_size=5))
def test_any_duration_parses_to_its_ms(parts: list[int], used: list[bool]) -> None:
    units = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
    chosen = [(n, u) for n, u, keep in zip(parts, units, used, strict=True) if keep]
    if not chosen:
        chosen = [(parts[0], units[3])]
    text = "".join(f"{n}{unit}" for n, (unit, _) in chosen)
    total = sum(n * scale for n, (_, scale) in chosen)
    schedule = parse_schedule(f"@in {text}")
    assert isinstance(schedule, OneShot) and schedule.delay_ms == total <= MAX_EVERY_MS


@given(macro=st.sampled_from(["@at", "@in", "@AT", "@In"]),
       rest=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40))
def test_arbitrary_one_shot_text_parses_or_is_refused_with_a_schedule_error(
    macro: str, rest: str
) -> None:
    try:
        schedule = parse_schedule(f"{macro} {rest}")
    except ScheduleError:
        return
    assert isinstance(schedule, OneShot)
    # exactly one of the two, by the macro; its one fire time follows from it
    is_at = macro.lower() == "@at"
    assert (schedule.at_ms is not None, schedule.delay_ms is not None) == (is_at, not is_at)
    if is_at:
        assert schedule.fire_ms(0) == schedule.fire_ms(T0) == schedule.at_ms
    else:
        assert schedule.delay_ms is not None and schedule.delay_ms >= 0
        assert schedule.fire_ms(T0) == T0 + schedule.delay_ms


# -- the state rules, as the leader drives them ----------------------------------------------


def add(state: SchedulerState, name: str, schedule: str, *extra: str,
        created_ms: int = T0) -> None:
    job = parse_job_add([name, schedule, "true", *extra], created_ms)
    assert state.apply_entry(S.encode_add(job)) is None


def fire_due(state: SchedulerState, name: str, now_ms: int) -> list[dict]:
    """What a leader does: plan from the replicated handled slot, commit the fire entry."""
    plan = plan_slots(state.jobs[name], state.handled[name], now_ms)
    return state.apply_entry(S.encode_fire(name, plan.fire, plan.handled_ms, now_ms,
                                           plan.missed))


def claim_and_finish(state: SchedulerState, now_ms: int, exit_code: int) -> dict:
    [run] = state.apply_entry(S.encode_claim("w1", [], now_ms))
    state.apply_entry(S.encode_done(run["job"], run["run_id"], exit_code, "", now_ms + 10,
                                    run["attempt"]))
    return run


def status(state: SchedulerState, name: str, now_ms: int) -> str:
    return state.job_status(name, now_ms, TIMEOUT_MS)[0]


def test_in_fires_once_at_its_time_after_the_add_and_never_again() -> None:
    state = SchedulerState()
    add(state, "once", "@in 30s")
    assert state.jobs["once"].next_fire(state.handled["once"]) == T0 + 30_000
    state.apply_entry(S.encode_claim("w1", [], T0))  # a shell worker polls
    assert status(state, "once", T0 + 1) == SCHEDULED
    assert fire_due(state, "once", T0 + 29_999) == []
    [run] = fire_due(state, "once", T0 + 30_005)
    assert run["slot_ms"] == T0 + 30_000
    assert status(state, "once", T0 + 30_005) == RUNNING
    claim_and_finish(state, T0 + 30_010, 0)
    for later in (T0 + 31_000, T0 + 90_000, T0 + 86_400_000):  # a new leader, much later
        assert fire_due(state, "once", later) == []
        assert state.jobs["once"].next_fire(state.handled["once"]) is None
    assert [r.state for r in state.history("once", 10)] == ["succeeded"]
    assert status(state, "once", T0 + 90_000) == FINISHED


def test_two_leaders_firing_the_one_slot_fire_it_once() -> None:
    state = SchedulerState()
    add(state, "once", "@in 1s")
    plan = plan_slots(state.jobs["once"], state.handled["once"], T0 + 1500)
    entry = S.encode_fire("once", plan.fire, plan.handled_ms, T0 + 1500)
    assert len(state.apply_entry(entry)) == 1
    assert state.apply_entry(entry) == []  # the old leader's entry, committed late


def test_at_in_the_past_beyond_misfire_is_recorded_expired_and_never_runs() -> None:
    state = SchedulerState()
    add(state, "late", "@at 2023-11-14T22:00:00Z", "DEADLINE", "60")  # T0 is 22:13:20
    assert state.job_status("late", T0, TIMEOUT_MS) == (WAITING, REASON_SHELL)  # no worker
    assert fire_due(state, "late", T0 + 5) == []
    [record] = state.history("late", 10)
    assert (record.state, record.slot_ms) == ("expired", T0 - 800_000)
    assert record.message.startswith("expired: 800005 ms late, past its misfire deadline "
                                     "(MISFIRE once, DEADLINE 60 s)")
    assert status(state, "late", T0 + 5) == FINISHED
    assert state.apply_entry(S.encode_claim("w1", [], T0 + 10)) == []  # nothing to run
    assert fire_due(state, "late", T0 + 10_000) == [] and len(state.history("late", 10)) == 1


def test_a_one_shot_missed_within_its_deadline_fires_late_and_skip_expires_it() -> None:
    state = SchedulerState()
    add(state, "within", "@in 10s", "DEADLINE", "60")
    [run] = fire_due(state, "within", T0 + 50_000)  # 40 s late: no leader could fire it
    assert run["slot_ms"] == T0 + 10_000
    add(state, "skip", "@in 10s", "MISFIRE", "SKIP")
    assert fire_due(state, "skip", T0 + 12_000) == []  # 2 s late: past skip's 1 s
    assert [r.state for r in state.history("skip", 5)] == ["expired"]


def test_a_one_shot_due_while_paused_expires_on_resume() -> None:
    state = SchedulerState()
    add(state, "paused", "@in 5s")
    state.apply_entry(S.encode_name(S.OP_PAUSE, "paused", T0 + 1000))
    state.apply_entry(S.encode_name(S.OP_RESUME, "paused", T0 + 9000))
    [record] = state.history("paused", 5)
    assert record.state == "expired" and "paused at its time" in record.message


def test_a_failing_one_shot_is_retried_by_its_policy_then_finished() -> None:
    state = SchedulerState()
    add(state, "flaky", "@in 1s", "RETRIES", "2", "BACKOFF", "5")
    fire_due(state, "flaky", T0 + 1000)
    claim_and_finish(state, T0 + 1000, 3)
    [record] = state.history("flaky", 5)
    assert (record.state, record.attempt) == ("retry_wait", 2)
    assert status(state, "flaky", T0 + 2000) == RUNNING
    assert state.due_entries(T0 + 5_000) == []  # BACKOFF 5 s after it failed at +1010
    [retry] = state.due_entries(T0 + 6_010)
    [again] = state.apply_entry(retry)
    assert (again["attempt"], again["slot_ms"]) == (2, T0 + 1000)
    claim_and_finish(state, T0 + 6_020, 0)
    [record] = state.history("flaky", 5)
    assert (record.state, record.attempt) == ("succeeded", 2)
    assert status(state, "flaky", T0 + 7_000) == FINISHED
    assert fire_due(state, "flaky", T0 + 60_000) == []


def test_one_shot_state_survives_a_snapshot() -> None:
    state = SchedulerState()
    add(state, "late", "@at 2020-01-01T00:00:00Z")
    fire_due(state, "late", T0)
    add(state, "soon", "@in 1h")
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.snapshot() == state.snapshot()
    assert status(copy, "late", T0) == FINISHED and copy.history("late", 1)[0].state == "expired"
    assert copy.jobs["soon"].next_fire(copy.handled["soon"]) == T0 + 3_600_000


def test_an_in_job_added_through_a_follower_counts_from_the_leaders_stamp() -> None:
    state = SchedulerState()
    job = parse_job_add(["via", "@in 30s", "true"], T0)  # T0: the follower's clock
    assert state.apply_entry(S.encode_add(job, anchor=True)) is None
    planner = FirePlanner()
    assert planner.next_fire(state, "via", state.jobs["via"]) is None  # no slot yet
    assert state.apply_entry(S.encode_anchor("via", T0 + 700)) is None  # the leader's time
    assert state.jobs["via"].created_ms == T0 + 700 and state.unanchored == set()
    assert planner.next_fire(state, "via", state.jobs["via"]) == T0 + 30_700
    state.apply_entry(S.encode_anchor("via", T0 + 900))  # an old leader's, late: no-op
    assert state.jobs["via"].created_ms == T0 + 700
    add(state, "waits", "@in 1s")
    state.apply_entry(S.encode_add(parse_job_add(["later", "@in 5s", "true"], T0),
                                   anchor=True))
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.unanchored == {"later"} and copy.snapshot() == state.snapshot()
    state.apply_entry(S.encode_name(S.OP_DEL, "later"))
    assert state.unanchored == set()


def test_the_readme_states_the_one_shot_rules() -> None:
    text = " ".join(README.read_text().split())
    for sentence in (
        "A one-shot job (`@at`, `@in`) fires once.",
        "If its time passed while no leader could fire it, its misfire deadline decides: "
        "within `DEADLINE` (1 s under `MISFIRE skip`) it fires late; past it, its run is "
        "recorded as `expired` and never runs.",
        "A failed run is retried by its `RETRIES` and `BACKOFF`.",
        "Once its run has ended, its status is `finished`.",
        "`@at TIME`, once at an RFC 3339 time (`@at 2030-01-31T09:00:00Z`, "
        "`@at 2030-01-31T10:00:00.250+01:00`)",
        "`@in DURATION`, once, that long after the job was added, by the leader's clock "
        "(`@in 30s`: the leader stamps the time it took the `JOB.ADD` into the log, so every "
        "replica agrees)",
    ):
        assert sentence in text, sentence
    for example in ("@at 2030-01-31T09:00:00Z", "@at 2030-01-31T10:00:00.250+01:00",
                    "@in 30s"):
        assert isinstance(parse_schedule(example), OneShot)


# -- a real cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-oneshot")) as c:
        yield c


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def job_status(cluster: Cluster, name: str) -> str:
    return cluster.call("JOB.GET", name)["status"]


def listed(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.call("JOB.LIST", "WITHSTATUS"))


def test_in_fires_once_across_leader_changes(cluster: Cluster) -> None:
    out = cluster.tmp / "once.txt"
    assert cluster.call("JOB.ADD", "once", "@in 2s",
                        f'echo "$SCHED_RUN_ID" >> {out}') == "OK"
    old = cluster.leader()
    old.kill()  # before its time: the next leader fires it
    wait_until(lambda: lines(out), "the one-shot run", cluster)
    old.start()
    wait_until(lambda: job_status(cluster, "once") == FINISHED, "the job finished", cluster)
    assert listed(cluster)["once"] == FINISHED
    cluster.leader().kill()  # after it fired: the next leader must not fire it again
    wait_until(lambda: cluster.leader(), "a new leader", cluster)
    time.sleep(2)  # pacing only: the new leader's firing loop runs a few turns
    [run] = cluster.call("JOB.HISTORY", "once", "10")
    assert (run["state"], run["attempt"]) == ("succeeded", 1)
    assert lines(out) == [run["run_id"]]
    assert cluster.call("JOB.GET", "once")["next_ms"] == -1
    for node in cluster.nodes:
        if not node.alive():
            node.start()


def test_an_in_job_added_through_a_follower_runs_once(cluster: Cluster) -> None:
    out = cluster.tmp / "via.txt"
    leader = cluster.leader()
    follower = next(node for node in cluster.nodes if node is not leader and node.alive())
    sent_ms = int(time.time() * 1000)
    assert cluster.client(follower).execute_command(
        "JOB.ADD", "via", "@in 1s", f'echo "$SCHED_RUN_ID" >> {out}') == "OK"
    wait_until(lambda: job_status(cluster, "via") == FINISHED, "the run of via", cluster)
    got = cluster.call("JOB.GET", "via")
    assert got["created_ms"] >= sent_ms  # stamped by the leader once the add committed
    [run] = cluster.call("JOB.HISTORY", "via", "5")
    assert run["slot_ms"] == got["created_ms"] + 1000 and lines(out) == [run["run_id"]]


def test_at_in_the_past_beyond_misfire_is_expired_on_the_cluster(cluster: Cluster) -> None:
    out = cluster.tmp / "past.txt"
    assert cluster.call("JOB.ADD", "past", "@at 2020-01-01T00:00:00Z", f"echo ran >> {out}",
                        "MISFIRE", "ALL", "DEADLINE", "3600") == "OK"
    wait_until(lambda: job_status(cluster, "past") == FINISHED, "the expiry", cluster)
    [run] = cluster.call("JOB.HISTORY", "past", "10")
    assert run["state"] == "expired" and run["worker"] == "" and run["started_ms"] == -1
    assert "past its misfire deadline (MISFIRE all, DEADLINE 3600 s)" in run["message"]
    assert not out.exists()


def test_a_failing_one_shot_is_retried_on_the_cluster(cluster: Cluster) -> None:
    out = cluster.tmp / "flaky.txt"
    command = f'echo "$SCHED_ATTEMPT" >> {out}; [ "$SCHED_ATTEMPT" = 2 ]'
    assert cluster.call("JOB.ADD", "flaky", "@in 0s", command, "RETRIES", "2",
                        "BACKOFF", "0") == "OK"
    wait_until(lambda: job_status(cluster, "flaky") == FINISHED, "the retried run", cluster)
    [run] = cluster.call("JOB.HISTORY", "flaky", "10")
    assert (run["state"], run["attempt"]) == ("succeeded", 2)
    assert run["message"].startswith("attempt 1:") or run["message"] == ""
    assert lines(out) == ["1", "2"]
