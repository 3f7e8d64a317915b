"""scheduler.jobs: JOB.ADD parsing, run states, misfire, overlap, retries, dict forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import jobs as J
from scheduler.jobs import Job, JobError, RunStateError, check_after, parse_job_add
from scheduler.planning import MisfirePlan, OverlapDecision, decide_overlap, plan_slots
from scheduler.runs import (
    ACTIVE,
    EVENTS,
    STATES,
    TRANSITIONS,
    RunRecord,
    dependents_to_fire,
    fire_run,
    retry_delay_ms,
    retry_run,
    skipped_run,
    step,
    timeout_at_ms,
)
from scheduler.schedule import parse_schedule, slots_between, zone

SECOND, MINUTE = 1000, 60_000


def at(year, month, day, hour=0, minute=0, second=0, ms=0, tz="UTC") -> int:
    wall = datetime(year, month, day, hour, minute, second, ms * 1000, tzinfo=zone(tz))
    return (wall - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def add(*args: str, created_ms: int = 0) -> Job:
    return parse_job_add([arg.encode() for arg in args], created_ms)


# -- JOB.ADD -------------------------------------------------------------------------------


def test_job_add_minimal_takes_the_defaults() -> None:
    job = add("backup", "0 3 * * *", "tar czf /tmp/x.tgz /etc", created_ms=1234)
    assert job == Job("backup", "0 3 * * *", "tar czf /tmp/x.tgz /etc", created_ms=1234)
    assert (job.tz, job.concurrency, job.misfire, job.deadline_s) == ("UTC", "allow", "once", 60)
    assert (job.timeout_s, job.retries, job.backoff_s, job.history) == (0, 0, 10, 100)
    assert (job.target, job.after, job.paused, job.broadcast) == ("", "", False, False)


def test_job_add_every_option() -> None:
    job = add(
        "a.b-c_9", "@every 1h30m", "echo hi", "tz", "Europe/Berlin", "Concurrency", "FORBID",
        "MISFIRE", "all", "DEADLINE", "300", "TIMEOUT", "120", "RETRIES", "3", "BACKOFF", "5",
        "TARGET", "all", "HISTORY", "10", created_ms=99,
    )
    assert job == Job(
        "a.b-c_9", "@every 1h30m", "echo hi", tz="Europe/Berlin", concurrency="forbid",
        misfire="all", deadline_s=300, timeout_s=120, retries=3, backoff_s=5, target="ALL",
        history=10, created_ms=99,
    )
    assert job.broadcast
    assert job.next_fire(99) == 99 + 5_400_000


def test_job_add_targets_and_after() -> None:
    assert add("j", "* * * * *", "c", "TARGET", "ANY").target == ""
    assert add("j", "* * * * *", "c", "TARGET", "gpu.eu-1").target == "gpu.eu-1"
    child = parse_job_add(["child", "@after", "report", "AFTER", "etl"], 5)
    assert (child.after, child.parsed(), child.next_fire(0)) == ("etl", None, None)


def test_job_add_accepts_max_sizes() -> None:
    job = add("n" * 128, "* * * * *", "x" * 8192, "TARGET", "t" * 64)
    assert len(job.name) == 128


# exact wire texts: the constants are the contract, and a few are pinned literally here
def test_error_texts_are_pinned() -> None:
    assert J.ERR_ARGS == "ERR wrong number of arguments for 'job.add' command"
    assert J.ERR_CONCURRENCY == "ERR CONCURRENCY must be ALLOW, FORBID or REPLACE"
    assert J.ERR_MISFIRE == "ERR MISFIRE must be SKIP, ONCE or ALL"
    assert J.ERR_DEADLINE == "ERR DEADLINE must be an integer from 1 to 86400 (seconds)"
    assert J.ERR_NAME == (
        "ERR job name must be 1 to 128 characters of A-Z a-z 0-9 _ . - (not . or ..)"
    )


OK = ["job", "* * * * *", "run"]
INVALID = [
    ([], J.ERR_ARGS),
    (["job", "* * * * *"], J.ERR_ARGS),
    (["a b", "* * * * *", "c"], J.ERR_NAME),
    (["", "* * * * *", "c"], J.ERR_NAME),
    (["x" * 129, "* * * * *", "c"], J.ERR_NAME),
    ([".", "* * * * *", "c"], J.ERR_NAME),
    (["..", "* * * * *", "c"], J.ERR_NAME),
    (["caf\u00e9", "* * * * *", "c"], J.ERR_NAME),
    (["j", "61 * * * *", "c"], "ERR invalid schedule: minute field '61': 61 is out of range 0-59"),
    (["j", "@every 5ms", "c"], "ERR invalid schedule: @every duration '5ms': shorter than the "
     "minimum 100ms"),
    (["j", "", "c"], "ERR invalid schedule: schedule is empty"),
    (["j", "* * * * *", ""], J.ERR_COMMAND),
    (["j", "* * * * *", "a\x00b"], J.ERR_COMMAND),
    (["j", "* * * * *", "x" * 8193], J.ERR_COMMAND),
    (["j", "* * * * *", "\u00e9" * 4097], J.ERR_COMMAND),  # 8194 bytes
    ([*OK, "FOO", "1"], "ERR unknown JOB.ADD option 'FOO'"),
    ([*OK, "TZ"], "ERR option TZ needs a value"),
    ([*OK, "TZ", "UTC", "tz", "UTC"], "ERR option TZ given twice"),
    ([*OK, "TZ", "Mars/Base"], "ERR unknown time zone 'Mars/Base'"),
    ([*OK, "TZ", "../../etc/passwd"], "ERR unknown time zone '../../etc/passwd'"),
    ([*OK, "CONCURRENCY", "maybe"], J.ERR_CONCURRENCY),
    ([*OK, "MISFIRE", "never"], J.ERR_MISFIRE),
    ([*OK, "DEADLINE", "0"], J.ERR_DEADLINE),
    ([*OK, "DEADLINE", "-1"], J.ERR_DEADLINE),
    ([*OK, "DEADLINE", "1.5"], J.ERR_DEADLINE),
    ([*OK, "DEADLINE", "86401"], J.ERR_DEADLINE),
    ([*OK, "DEADLINE", "99999999999"], J.ERR_DEADLINE),
    ([*OK, "DEADLINE", "\u0661"], J.ERR_DEADLINE),  # an Arabic-Indic digit
    ([*OK, "TIMEOUT", "604801"], J.ERR_TIMEOUT),
    ([*OK, "TIMEOUT", "soon"], J.ERR_TIMEOUT),
    ([*OK, "RETRIES", "26"], J.ERR_RETRIES),
    ([*OK, "BACKOFF", "3601"], J.ERR_BACKOFF),
    ([*OK, "HISTORY", "0"], J.ERR_HISTORY),
    ([*OK, "HISTORY", "10001"], J.ERR_HISTORY),
    ([*OK, "TARGET", "bad tag"], J.ERR_TARGET),
    ([*OK, "TARGET", "t" * 65], J.ERR_TARGET),
    ([*OK, "TARGET", ""], J.ERR_TARGET),
    ([*OK, "AFTER", "etl"], J.ERR_AFTER_SCHEDULE),
    (["j", "@after", "c"], J.ERR_AFTER_NEEDED),
    (["j", "@after", "c", "AFTER", "j"], J.ERR_AFTER),
    (["j", "@after", "c", "AFTER", "no such"], J.ERR_AFTER),
]


@pytest.mark.parametrize("args, message", INVALID)
def test_job_add_invalid(args: list[str], message: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job_add([arg.encode() for arg in args], 0)
    assert caught.value.message == message


def test_job_add_rejects_bad_utf8() -> None:
    with pytest.raises(JobError) as caught:
        parse_job_add([b"j", b"* * * * *", b"\xff\xfe"], 0)
    assert caught.value.message == J.ERR_UTF8


def test_job_error_is_a_command_error_and_a_value_error() -> None:
    from core.resp import CommandError

    with pytest.raises(CommandError):
        add("j", "nope", "c")
    with pytest.raises(ValueError):
        add("j", "nope", "c")


def test_after_links() -> None:
    etl = add("etl", "0 1 * * *", "etl")
    report = parse_job_add(["report", "@after", "r", "AFTER", "etl"], 0)
    mail = parse_job_add(["mail", "@after", "m", "AFTER", "report"], 0)
    jobs = {"etl": etl, "report": report}
    check_after(jobs, mail)
    check_after(jobs, etl)
    with pytest.raises(JobError) as caught:
        check_after({}, report)
    assert caught.value.message == "ERR AFTER job 'etl' does not exist"
    looped = Job("etl", "@after", "etl", after="mail")  # etl re-added under mail: a loop
    with pytest.raises(JobError) as caught:
        check_after({**jobs, "mail": mail}, looped)
    assert caught.value.message == "ERR AFTER 'mail' would make a cycle"
    paused = Job("mail2", "@after", "m", after="report", paused=True)
    run = step(step(fire_run(report, 5, 5), "start", 6), "succeed", 7)
    assert dependents_to_fire([etl, report, mail, paused], run) == [mail]
    failed = step(step(fire_run(report, 5, 5), "start", 6), "fail", 7)
    assert dependents_to_fire([mail], failed) == []


# -- run states ------------------------------------------------------------------------------


def test_every_state_event_pair() -> None:
    for state in STATES:
        record = RunRecord("j", 100, state, retry_at_ms=5 if state == "retry_wait" else None)
        for event in EVENTS:
            if (state, event) in TRANSITIONS:
                after = step(record, event, 200, retry_at_ms=300)
                assert after.state == TRANSITIONS[(state, event)]
            else:
                with pytest.raises(RunStateError) as caught:
                    step(record, event, 200, retry_at_ms=300)
                expected = f"ERR run j@100/0: event '{event}' is not allowed in state '{state}'"
                assert caught.value.message == expected


def test_terminal_states_have_no_way_out() -> None:
    for state in ("succeeded", "killed", "skipped"):
        assert not [event for (src, event) in TRANSITIONS if src == state]


def test_a_run_with_a_retry() -> None:
    job = add("j", "* * * * *", "c", "RETRIES", "2", "BACKOFF", "10", "TIMEOUT", "30")
    run = fire_run(job, 60_000, 60_005)
    assert (run.state, run.attempt, run.fired_ms, run.key) == ("fired", 1, 60_005, ("j", 60_000, 0))
    assert timeout_at_ms(job, run) == 90_005
    run = step(run, "start", 60_010, worker="w1")
    assert (run.state, run.worker, run.started_ms, timeout_at_ms(job, run)) == (
        "started", "w1", 60_010, 90_010)
    run = step(run, "fail", 61_000, exit_code=2, message="x" * 5000)
    assert (run.state, run.exit_code, len(run.message)) == ("failed", 2, J.MAX_MESSAGE_LEN)
    assert timeout_at_ms(job, run) is None
    run = retry_run(job, run)
    assert (run.state, run.attempt, run.retry_at_ms) == ("retry_wait", 2, 71_000)
    run = step(run, "fire", 71_001)
    assert (run.state, run.fired_ms, run.started_ms, run.finished_ms, run.exit_code) == (
        "fired", 71_001, None, None, None)
    run = step(step(run, "start", 71_002), "time_out", 101_002)
    run = retry_run(job, run)
    assert (run.attempt, run.retry_at_ms) == (3, 101_002 + 20_000)
    run = step(step(step(run, "fire", 121_002), "start", 121_003), "lose", 130_000)
    with pytest.raises(RunStateError) as caught:
        retry_run(job, run)
    assert caught.value.message == "ERR run j@60000/0: no retry left (attempt 3 of 3)"


def test_killing_a_waiting_retry_clears_it() -> None:
    job = add("j", "* * * * *", "c", "RETRIES", "1")
    waiting = retry_run(job, step(step(fire_run(job, 0, 0), "start", 1), "fail", 2))
    killed = step(waiting, "kill", 3, message="replaced")
    assert (killed.state, killed.retry_at_ms, killed.finished_ms) == ("killed", None, 3)
    assert RunRecord.from_dict(killed.to_dict()) == killed


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.sampled_from(EVENTS), max_size=12))
def test_any_legal_walk_keeps_the_record_invariants(events: list[str]) -> None:
    job = add("j", "* * * * *", "c", "RETRIES", "3")
    run, now = fire_run(job, 0, 0), 0
    for event in events:
        now += 1
        try:
            run = retry_run(job, run) if event == "retry" else step(run, event, now)
        except RunStateError:
            continue
        assert RunRecord.from_dict(run.to_dict()) == run
        assert 1 <= run.attempt <= job.retries + 1


def test_killed_and_succeeded_runs_are_not_retried() -> None:
    job = add("j", "* * * * *", "c", "RETRIES", "5")
    for final in ("kill", "succeed"):
        run = step(step(fire_run(job, 0, 0), "start", 1), final, 2)
        with pytest.raises(RunStateError, match=f"state '{run.state}'"):
            retry_run(job, run)


def test_retry_delay_doubles_and_is_capped() -> None:
    job = add("j", "* * * * *", "c", "RETRIES", "25", "BACKOFF", "10")
    delays = [retry_delay_ms(job, k) // 1000 for k in range(1, 11)]
    assert delays == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]
    assert retry_delay_ms(job, 25) == J.MAX_RETRY_DELAY_S * 1000
    assert retry_delay_ms(add("j", "* * * * *", "c", "BACKOFF", "0"), 7) == 0
    with pytest.raises(ValueError):
        retry_delay_ms(job, 0)


def test_broadcast_shards_and_skipped_records() -> None:
    job = add("j", "* * * * *", "c", "TARGET", "ALL")
    runs = [fire_run(job, 0, 1, shard, 3) for shard in range(3)]
    assert [run.run_id for run in runs] == ["j@0/0", "j@0/1", "j@0/2"]
    assert len({run.key for run in runs}) == 3
    with pytest.raises(ValueError):
        fire_run(job, 0, 1, 3, 3)
    skipped = skipped_run(job, 60_000, 60_001, "forbid: j@0/0 active")
    assert (skipped.state, skipped.finished_ms) == ("skipped", 60_001)


def test_timeout_none_without_timeout() -> None:
    job = add("j", "* * * * *", "c")
    assert timeout_at_ms(job, fire_run(job, 0, 0)) is None


# -- misfire -------------------------------------------------------------------------------

T10 = at(2024, 5, 1, 10)  # slots every minute; last handled slot is 10:00


def minute_job(misfire: str, deadline: int = 60, *extra: str) -> Job:
    return add("j", "* * * * *", "c", "MISFIRE", misfire, "DEADLINE", str(deadline), *extra)


@pytest.mark.parametrize(
    "misfire, deadline, late_ms, fired, missed",
    [
        # 10:10 is 0.5 s late: on time, fires under every policy
        ("skip", 60, 500, [10], 9),
        ("once", 60, 500, [10], 9),
        ("all", 60, 500, [10], 9),
        ("all", 300, 500, [6, 7, 8, 9, 10], 5),
        # 10:10 is 30 s late: a misfire
        ("skip", 60, 30_000, [], 10),
        ("once", 60, 30_000, [10], 9),
        ("once", 10, 30_000, [], 10),
        ("all", 60, 30_000, [10], 9),
        ("all", 300, 30_000, [6, 7, 8, 9, 10], 5),
        ("all", 3600, 30_000, list(range(1, 11)), 0),
    ],
)
def test_misfire_policies(misfire: str, deadline: int, late_ms: int, fired, missed) -> None:
    job = minute_job(misfire, deadline)
    now = T10 + 10 * MINUTE + late_ms
    plan = plan_slots(job, T10, now)
    assert plan == MisfirePlan(
        tuple(T10 + m * MINUTE for m in fired), missed, now, T10 + 11 * MINUTE
    )


def test_misfire_window_edges_are_inclusive() -> None:
    hour = 3_600_000
    once = add("j", "0 * * * *", "c", "MISFIRE", "ONCE", "DEADLINE", "60")
    assert plan_slots(once, T10, T10 + hour + 60_000).fire == (T10 + hour,)
    assert plan_slots(once, T10, T10 + hour + 60_001).fire == ()
    skip = add("j", "0 * * * *", "c", "MISFIRE", "SKIP")
    assert plan_slots(skip, T10, T10 + hour + J.ON_TIME_MS).fire == (T10 + hour,)
    assert plan_slots(skip, T10, T10 + hour + J.ON_TIME_MS + 1).fire == ()


def test_misfire_all_is_capped() -> None:
    job = add("j", "@every 100ms", "c", "MISFIRE", "ALL", "DEADLINE", "60", created_ms=5)
    plan = plan_slots(job, None, 5 + 60 * SECOND)
    assert len(plan.fire) == J.MAX_CATCHUP_SLOTS
    assert plan.fire[-1] == 5 + 60 * SECOND and plan.missed == 600 - J.MAX_CATCHUP_SLOTS
    assert plan.next_ms == 5 + 60 * SECOND + 100


def test_misfire_edge_cases() -> None:
    job = minute_job("once")
    assert plan_slots(job, T10, T10) == MisfirePlan((), 0, T10, T10 + MINUTE)
    assert plan_slots(job, T10, T10 + 59_999) == MisfirePlan((), 0, T10 + 59_999, T10 + MINUTE)
    paused = Job(**{**job.__dict__, "paused": True})
    assert plan_slots(paused, T10, T10 + 2 * MINUTE) == MisfirePlan(
        (), 2, T10 + 2 * MINUTE, T10 + 3 * MINUTE
    )
    child = parse_job_add(["c", "@after", "c", "AFTER", "p"], 0)
    assert plan_slots(child, None, T10) == MisfirePlan((), 0, T10, None)
    many = plan_slots(job, 0, T10)  # decades of minutes: the count stops at the cap
    assert many.missed == J.MISSED_COUNT_CAP and many.fire == (T10,)


def test_misfire_across_a_dst_gap() -> None:
    job = add("j", "30 2 * * *", "c", "TZ", "America/New_York")
    last = at(2024, 3, 9, 2, 30, tz="America/New_York")
    due = at(2024, 3, 10, 3, tz="America/New_York")  # 02:30 does not exist: fires at 03:00
    plan = plan_slots(job, last, due + 200)
    assert plan.fire == (due,) and plan.missed == 0


@settings(max_examples=200, deadline=None)
@given(
    schedule=st.sampled_from(["* * * * *", "*/5 * * * * *", "@every 700ms", "0 * * * *"]),
    misfire=st.sampled_from(["skip", "once", "all"]),
    deadline=st.integers(1, 600),
    last=st.integers(0, 10**7),
    gap=st.integers(0, 2 * 3_600_000),
)
def test_misfire_plan_properties(schedule, misfire, deadline, last, gap) -> None:
    base = at(2024, 5, 1)
    job = add("j", schedule, "c", "MISFIRE", misfire, "DEADLINE", str(deadline), created_ms=base)
    now = base + last + gap
    plan = plan_slots(job, base + last, now)
    slots = slots_between(parse_schedule(schedule), base + last, now, zone("UTC"), 100_000, base)
    assert list(plan.fire) == sorted(plan.fire) and set(plan.fire) <= set(slots)
    window = J.ON_TIME_MS if misfire == "skip" else max(deadline * 1000, J.ON_TIME_MS)
    assert all(now - slot <= window for slot in plan.fire)
    if misfire == "once":
        assert len(plan.fire) <= 1
        if plan.fire:
            assert plan.fire[0] == slots[-1]
    if misfire == "all":
        inside = [slot for slot in slots if now - slot <= window]
        assert list(plan.fire) == inside[-J.MAX_CATCHUP_SLOTS:]
    assert plan.missed == min(len(slots) - len(plan.fire), J.MISSED_COUNT_CAP)
    assert plan.handled_ms == now and plan.next_ms is not None and plan.next_ms > now


# -- overlap --------------------------------------------------------------------------------


def test_overlap_decisions() -> None:
    def job(policy: str) -> Job:
        return add("j", "* * * * *", "c", "CONCURRENCY", policy)

    base = job("allow")
    running = step(fire_run(base, 0, 0), "start", 1)
    waiting = retry_run(add("j", "* * * * *", "c", "RETRIES", "1"),
                        step(step(fire_run(base, 60_000, 0), "start", 1), "fail", 2))
    done = step(step(fire_run(base, 120_000, 0), "start", 1), "succeed", 2)
    other = fire_run(add("k", "* * * * *", "c"), 0, 0)
    for policy in ("allow", "forbid", "replace"):
        idle = decide_overlap(job(policy), [done, other])
        assert (idle.fire, idle.skip, idle.kill) == (True, False, ())
    assert decide_overlap(job("allow"), [running]) == OverlapDecision(True, False)
    assert decide_overlap(job("forbid"), [running, done]) == OverlapDecision(False, True)
    assert decide_overlap(job("forbid"), [waiting]) == OverlapDecision(False, True)
    replace = decide_overlap(job("replace"), [running, waiting, done, other])
    assert replace == OverlapDecision(True, False, (running, waiting))
    assert all(step(run, "kill", 5).state == "killed" for run in replace.kill)
    assert waiting.state in ACTIVE and done.state not in ACTIVE


# -- dict forms ------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_.-]{1,128}", fullmatch=True).filter(
    lambda n: n not in (".", "..")
)
tags = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(
    lambda t: t.upper() not in ("ANY", "ALL")
)


@st.composite
def job_values(draw) -> Job:
    name = draw(names)
    after = draw(st.one_of(st.just(""), names.filter(lambda n: n != name)))
    schedule = "@after" if after else draw(
        st.sampled_from(["* * * * *", "0 3 * * MON-FRI", "*/10 * * * * *", "@every 1h30m",
                         "@daily", "0 0 29 2 *"])
    )
    return Job(
        name=name,
        schedule=schedule,
        command=draw(st.text(st.characters(blacklist_characters="\x00",
                                           blacklist_categories=("Cs",)), min_size=1)),
        tz=draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])),
        concurrency=draw(st.sampled_from(["allow", "forbid", "replace"])),
        misfire=draw(st.sampled_from(["skip", "once", "all"])),
        deadline_s=draw(st.integers(1, J.MAX_DEADLINE_S)),
        timeout_s=draw(st.integers(0, J.MAX_TIMEOUT_S)),
        retries=draw(st.integers(0, J.MAX_RETRIES)),
        backoff_s=draw(st.integers(0, J.MAX_BACKOFF_S)),
        target=draw(st.one_of(st.sampled_from(["", "ALL"]), tags)),
        after=after,
        history=draw(st.integers(1, J.MAX_HISTORY)),
        paused=draw(st.booleans()),
        created_ms=draw(st.integers(0, 2**48)),
    )


@st.composite
def run_values(draw) -> RunRecord:
    state = draw(st.sampled_from(STATES))
    shards = draw(st.integers(1, 64))
    maybe_ms = st.one_of(st.none(), st.integers(0, 2**48))
    return RunRecord(
        job=draw(names),
        slot_ms=draw(st.integers(0, 2**48)),
        state=state,
        attempt=draw(st.integers(1, 26)),
        shard=draw(st.integers(0, shards - 1)),
        shards=shards,
        fired_ms=draw(st.integers(0, 2**48)),
        started_ms=draw(maybe_ms),
        finished_ms=draw(maybe_ms),
        retry_at_ms=draw(st.integers(0, 2**48)) if state == "retry_wait" else None,
        worker=draw(st.text(max_size=20)),
        exit_code=draw(st.one_of(st.none(), st.integers(-255, 255))),
        message=draw(st.text(max_size=50)),
    )


@settings(max_examples=300, deadline=None)
@given(job=job_values())
def test_job_round_trip(job: Job) -> None:
    J.validate(job)
    packed = msgpack.packb(job.to_dict())
    assert Job.from_dict(msgpack.unpackb(packed)) == job


@settings(max_examples=300, deadline=None)
@given(record=run_values())
def test_run_record_round_trip(record: RunRecord) -> None:
    packed = msgpack.packb(record.to_dict())
    assert RunRecord.from_dict(msgpack.unpackb(packed)) == record


def test_from_dict_rejects_bad_records() -> None:
    good = add("j", "* * * * *", "c").to_dict()
    bad = [
        ({k: v for k, v in good.items() if k != "tz"}, "ERR bad job record: keys tz"),
        ({**good, "extra": 1}, "ERR bad job record: keys extra"),
        ({**good, "retries": True}, "ERR bad job record: field retries"),
        ({**good, "retries": "1"}, "ERR bad job record: field retries"),
        ({**good, "paused": 0}, "ERR bad job record: field paused"),
        ({**good, "concurrency": "x"}, J.ERR_CONCURRENCY),
        ({**good, "created_ms": -1}, J.ERR_CREATED),
        ({**good, "schedule": "* *"}, "ERR invalid schedule: expected 5 fields (minute hour "
         "day-of-month month day-of-week) or 6 with seconds first, got 2"),
    ]
    for data, message in bad:
        with pytest.raises(JobError) as caught:
            Job.from_dict(data)
        assert caught.value.message == message
    with pytest.raises(JobError, match="not a map"):
        Job.from_dict([1, 2])  # type: ignore[arg-type]
    run = fire_run(add("j", "* * * * *", "c"), 0, 0).to_dict()
    for data, message in [
        ({**run, "state": "done"}, "ERR bad run record: state 'done'"),
        ({**run, "attempt": 0}, "ERR bad run record: attempt"),
        ({**run, "shard": 1}, "ERR bad run record: shard"),
        ({**run, "retry_at_ms": 5}, "ERR bad run record: retry_at_ms"),
        ({**run, "started_ms": 1.5}, "ERR bad run record: field started_ms"),
    ]:
        with pytest.raises(JobError) as caught:
            RunRecord.from_dict(data)
        assert caught.value.message == message
