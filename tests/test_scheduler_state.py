"""scheduler.state alone: the exactly-once fire rule, misfire after a gap, claims, the
history cap and snapshots. No sockets, no clock: times are passed in."""

from __future__ import annotations

import msgpack

from scheduler import state as S
from scheduler.jobs import parse_job_add
from scheduler.planning import plan_slots
from scheduler.runs import FIRED, STARTED, SUCCEEDED
from scheduler.state import SchedulerState

T0 = 1_700_000_000_000  # a whole second


def make(*extra: str, name: str = "j") -> tuple[SchedulerState, object]:
    state = SchedulerState()
    job = parse_job_add([name, "@every 1s", "true", *extra], T0)
    assert state.apply_entry(S.encode_add(job)) is None
    return state, job


def fire_due(state: SchedulerState, name: str, now_ms: int) -> list[dict]:
    """What a leader does: plan from the replicated handled slot, commit the fire entry."""
    plan = plan_slots(state.jobs[name], state.handled[name], now_ms)
    entry = S.encode_fire(name, plan.fire, plan.handled_ms, now_ms, plan.missed)
    return state.apply_entry(entry)


def slots(runs: list[dict]) -> list[int]:
    return [run["slot_ms"] for run in runs]


def test_fire_is_idempotent() -> None:
    state, _ = make()
    entry = S.encode_fire("j", [T0 + 1000], T0 + 1000, T0 + 1000)
    assert slots(state.apply_entry(entry)) == [T0 + 1000]
    assert state.apply_entry(entry) == []  # the same entry again: no-op
    assert state.handled["j"] == T0 + 1000
    assert len(state.runs["j"]) == 1


def test_two_leaders_computing_the_same_slots_fire_once() -> None:
    state, _ = make()
    old = S.encode_fire("j", [T0 + 1000, T0 + 2000], T0 + 2000, T0 + 2000)
    new = S.encode_fire("j", [T0 + 2000, T0 + 3000], T0 + 3000, T0 + 3000)
    assert slots(state.apply_entry(old)) == [T0 + 1000, T0 + 2000]
    assert slots(state.apply_entry(new)) == [T0 + 3000]  # slot 2000 is not fired twice
    assert slots(state.apply_entry(old)) == []  # a late duplicate of an old entry
    assert sorted(r.slot_ms for r in state.runs["j"].values()) == [
        T0 + 1000, T0 + 2000, T0 + 3000]


def test_misfire_all_catches_up_within_deadline() -> None:
    state, _ = make("MISFIRE", "ALL", "DEADLINE", "60")
    assert slots(fire_due(state, "j", T0 + 1000)) == [T0 + 1000]
    # no leader for 10 s: the next leader fires every slot of the gap once
    assert slots(fire_due(state, "j", T0 + 11_000)) == [T0 + k * 1000 for k in range(2, 12)]
    assert fire_due(state, "j", T0 + 11_000) == []


def test_misfire_skip_and_once_after_a_gap() -> None:
    state, _ = make("MISFIRE", "SKIP", name="j")
    fire_due(state, "j", T0 + 1000)
    # only the on-time slots (at most ON_TIME_MS late) fire; the rest is missed
    assert slots(fire_due(state, "j", T0 + 11_000)) == [T0 + 10_000, T0 + 11_000]
    assert state.missed["j"] == 8
    state2, _ = make("MISFIRE", "ONCE", name="j")
    fire_due(state2, "j", T0 + 1000)
    assert slots(fire_due(state2, "j", T0 + 11_500)) == [T0 + 11_000]
    assert state2.handled["j"] == T0 + 11_500


def test_paused_job_fires_nothing_and_resume_skips_the_pause() -> None:
    state, _ = make("MISFIRE", "ALL")
    assert state.apply_entry(S.encode_name(S.OP_PAUSE, "j", T0)) is None
    assert fire_due(state, "j", T0 + 5000) == []
    assert state.apply_entry(S.encode_name(S.OP_RESUME, "j", T0 + 9000)) is None
    assert slots(fire_due(state, "j", T0 + 10_000)) == [T0 + 10_000]


def test_claim_starts_a_run_once_and_done_finishes_it() -> None:
    state, _ = make()
    fire_due(state, "j", T0 + 1000)
    assert state.pending()
    first = state.apply_entry(S.encode_claim("w1", [], T0 + 1100))
    assert [r["run_id"] for r in first] == [f"j@{T0 + 1000}/0"]
    assert state.apply_entry(S.encode_claim("w2", [], T0 + 1200)) == []  # not twice
    assert state.apply_entry(S.encode_claim("w1", [], T0 + 1300)) == []
    again = state.apply_entry(S.encode_claim("w1", [], T0 + 1300, resync=True))
    assert again == first  # a lost reply: delivered again on resync
    run_id = first[0]["run_id"]
    assert state.runs["j"][run_id].state == STARTED
    assert state.apply_entry(S.encode_done("j", run_id, 0, "ok", T0 + 1400)) is None
    assert state.runs["j"][run_id].state == SUCCEEDED
    assert state.apply_entry(S.encode_done("j", run_id, 1, "late", T0 + 1500)) is None
    assert state.runs["j"][run_id].state == SUCCEEDED


def test_tagged_job_goes_to_matching_workers_only() -> None:
    state, _ = make("TARGET", "gpu")
    fire_due(state, "j", T0 + 1000)
    assert not state.pending(["cpu"])
    assert state.apply_entry(S.encode_claim("w1", ["cpu"], T0 + 1100)) == []
    assert len(state.apply_entry(S.encode_claim("w2", ["gpu"], T0 + 1100))) == 1


def test_forbid_skips_a_slot_while_a_run_is_active() -> None:
    state, _ = make("CONCURRENCY", "FORBID")
    assert len(fire_due(state, "j", T0 + 1000)) == 1
    assert fire_due(state, "j", T0 + 2000) == []
    assert [r.state for r in state.history("j", 2)] == ["skipped", FIRED]


def test_history_is_capped_per_job() -> None:
    state, _ = make("HISTORY", "3")
    for k in range(1, 8):
        fire_due(state, "j", T0 + k * 1000)
    assert [r.slot_ms for r in state.history("j", 10)] == [T0 + 7000, T0 + 6000, T0 + 5000]
    assert state.handled["j"] == T0 + 7000  # the cap never forgets what was handled


def test_add_del_errors() -> None:
    state, job = make()
    assert state.apply_entry(S.encode_add(job)) == S.ERR_EXISTS.format("j")
    assert state.apply_entry(S.encode_name(S.OP_DEL, "nope")) == S.ERR_NO_JOB.format("nope")
    assert state.apply_entry(S.encode_name(S.OP_PAUSE, "nope")) == S.ERR_NO_JOB.format("nope")
    assert state.apply_entry(b"\xc1garbage").startswith("ERR bad log entry")
    assert state.apply_entry(msgpack.packb({"op": "nope"})).startswith("ERR bad log entry")
    assert state.apply_entry(S.encode_name(S.OP_DEL, "j")) is None
    assert state.jobs == {} and state.runs == {}
    assert fire_due.__name__  # deleted jobs fire nothing:
    assert state.apply_entry(S.encode_fire("j", [T0 + 1000], T0 + 1000, T0 + 1000)) == []


def test_run_now_fires_once_per_request_time() -> None:
    state, _ = make()
    assert len(state.apply_entry(S.encode_run("j", T0 + 123))) == 1
    assert state.apply_entry(S.encode_run("j", T0 + 123)) == []
    assert state.apply_entry(S.encode_run("x", T0)) == S.ERR_NO_JOB.format("x")


def test_snapshot_round_trip() -> None:
    state, _ = make("MISFIRE", "ALL", "HISTORY", "5")
    other = parse_job_add(["k", "*/2 * * * * *", "echo hi", "TZ", "Europe/Berlin"], T0)
    state.apply_entry(S.encode_add(other))
    for k in range(1, 4):
        fire_due(state, "j", T0 + k * 1000)
    state.apply_entry(S.encode_claim("w1", [], T0 + 3500))
    state.apply_entry(S.encode_name(S.OP_PAUSE, "k", T0))
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.jobs == state.jobs
    assert copy.handled == state.handled
    assert copy.missed == state.missed
    assert {n: list(r.items()) for n, r in copy.runs.items()} == {
        n: list(r.items()) for n, r in state.runs.items()}
    assert copy.snapshot() == state.snapshot()
    # the copy goes on exactly as the original would
    assert fire_due(copy, "j", T0 + 4000) == fire_due(state, "j", T0 + 4000)


def test_failed_run_retries_after_backoff_then_gives_up() -> None:
    state, _ = make("RETRIES", "1", "BACKOFF", "5")
    fire_due(state, "j", T0 + 1000)
    (run,) = state.apply_entry(S.encode_claim("w1", [], T0 + 1000))
    run_id = run["run_id"]
    state.apply_entry(S.encode_done("j", run_id, 2, "boom", T0 + 2000, attempt=1))
    record = state.runs["j"][run_id]
    assert (record.state, record.attempt, record.retry_at_ms) == ("retry_wait", 2, T0 + 7000)
    assert state.due_entries(T0 + 6999) == []
    (entry,) = state.due_entries(T0 + 7000)
    assert len(state.apply_entry(entry)) == 1
    assert state.apply_entry(entry) == []  # the same retry twice: once
    (again,) = state.apply_entry(S.encode_claim("w2", [], T0 + 7100))
    assert (again["run_id"], again["attempt"]) == (run_id, 2)
    # a late report of attempt 1 does not finish attempt 2
    state.apply_entry(S.encode_done("j", run_id, 0, "", T0 + 7200, attempt=1))
    assert state.runs["j"][run_id].state == STARTED
    state.apply_entry(S.encode_done("j", run_id, 1, "boom", T0 + 7300, attempt=2))
    assert state.runs["j"][run_id].state == "failed"  # RETRIES 1 used up
    assert state.due_entries(T0 + 100_000) == []


def test_success_with_retries_left_is_final() -> None:
    state, _ = make("RETRIES", "3")
    fire_due(state, "j", T0 + 1000)
    (run,) = state.apply_entry(S.encode_claim("w1", [], T0 + 1000))
    assert state.apply_entry(S.encode_done("j", run["run_id"], 0, "", T0 + 1500)) is None
    assert state.runs["j"][run["run_id"]].state == SUCCEEDED


def test_timeout_expires_an_attempt_once() -> None:
    state, _ = make("TIMEOUT", "10")
    fire_due(state, "j", T0 + 1000)
    state.apply_entry(S.encode_claim("w1", [], T0 + 1500))
    assert state.due_entries(T0 + 11_499) == []
    (entry,) = state.due_entries(T0 + 11_500)
    assert state.apply_entry(entry) is None
    record = state.runs["j"][f"j@{T0 + 1000}/0"]
    assert record.state == "timed_out"
    assert state.apply_entry(entry) is None and state.runs["j"][record.run_id] == record
    state.apply_entry(S.encode_done("j", record.run_id, 0, "", T0 + 12_000, attempt=1))
    assert state.runs["j"][record.run_id].state == "timed_out"  # too late to count


def test_after_job_fires_once_per_parent_success() -> None:
    state, _ = make()
    child = parse_job_add(["c", "@after", "true", "AFTER", "j"], T0)
    assert state.apply_entry(S.encode_add(child)) is None
    assert state.apply_entry(S.encode_name(S.OP_DEL, "j")).startswith("ERR job 'j' is the AFTER")
    fire_due(state, "j", T0 + 1000)
    (run,) = state.apply_entry(S.encode_claim("w1", [], T0 + 1000))
    done = S.encode_done("j", run["run_id"], 0, "", T0 + 1500, attempt=1)
    assert slots(state.apply_entry(done)) == [T0 + 1000]
    assert state.runs["c"][f"c@{T0 + 1000}/0"].state == FIRED
    assert state.apply_entry(done) is None  # a repeated report fires nothing more
    assert fire_due(state, "c", T0 + 5000) == []  # AFTER jobs have no slots of their own


def test_a_silent_workers_run_is_lost_then_retried() -> None:
    state, _ = make("RETRIES", "1", "BACKOFF", "0")
    [run] = fire_due(state, "j", T0 + 1000)
    rid = f"j@{run['slot_ms']}/0"
    [claimed] = state.apply_entry(S.encode_claim("w1", [], T0 + 1000))
    assert claimed["run_id"] == rid
    assert state.due_entries(T0 + 3999, worker_timeout_ms=3000) == []
    # a heartbeat moves the deadline; nothing is due until 3 s after it
    assert state.apply_entry(S.encode_beat("w1", T0 + 3000)) is None
    assert state.due_entries(T0 + 5999, worker_timeout_ms=3000) == []
    [entry] = state.due_entries(T0 + 6000, worker_timeout_ms=3000)
    assert msgpack.unpackb(entry)["op"] == S.OP_LOSE
    stale = S.encode_lose(state.runs["j"][rid], T0 + 6000, 3000)
    state.apply_entry(S.encode_beat("w1", T0 + 5000))  # heard again: the entry is a no-op
    assert state.apply_entry(stale) is None
    assert state.runs["j"][rid].state == STARTED
    assert state.apply_entry(S.encode_lose(state.runs["j"][rid], T0 + 8000,
                                           3000)) is None
    record = state.runs["j"][rid]
    assert record.state == "retry_wait" and record.attempt == 2
    assert record.message.startswith("lost: worker w1 silent for 3000 ms")
    [retry] = state.due_entries(T0 + 8000, worker_timeout_ms=3000)
    [fired] = state.apply_entry(retry)
    assert fired["attempt"] == 2 and fired["state"] == FIRED
    assert fired["message"].startswith("attempt 1: lost: worker w1")
    # the late report of attempt 1 is ignored; attempt 2 on another worker counts
    state.apply_entry(S.encode_claim("w2", [], T0 + 8100))
    done = S.encode_done("j", rid, 0, "", T0 + 8200, attempt=1)
    assert state.apply_entry(done) is None
    assert state.runs["j"][rid].state == STARTED
    state.apply_entry(S.encode_done("j", rid, 0, "", T0 + 8300, attempt=2))
    assert state.runs["j"][rid].state == SUCCEEDED
    # the heard-of times survive a snapshot, and so do the member addresses of old "member"
    # entries (pending moves to the service's address book: test_old_member_entries_...)
    state.apply_entry(S.encode_member(4, "127.0.0.5:7380"))
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.workers == state.workers and copy.clients == {4: "127.0.0.5:7380"}
    copy.apply_entry(S.encode_member(4, ""))
    assert copy.clients == {4: ""}


def test_old_member_entries_and_snapshots_fill_the_service_address_book() -> None:
    """The client address book moved from the scheduler's state into core.raft_service:
    a log or snapshot written before still fills it (scheduler.server._adopt_legacy_clients),
    and a snapshot written now carries it beside the scheduler's blob."""
    from core.clock import ManualClock
    from core.service_machine import encode_client
    from scheduler.server import SchedulerServer

    def server() -> SchedulerServer:
        return SchedulerServer(lambda apply, snapshot, restore: object(), ManualClock(T0))

    old = SchedulerState()
    old.apply_entry(S.encode_member(4, "127.0.0.5:7380"))
    old.apply_entry(S.encode_member(5, "127.0.0.6:7380"))
    node = server()
    node.service.machine.restore(old.snapshot())  # a snapshot from before the move
    assert node.service.book.clients == {4: "127.0.0.5:7380", 5: "127.0.0.6:7380"}
    results = node.service.machine.apply([(1, S.encode_member(4, "")),
                                          (2, encode_client(6, "127.0.0.7:7380")),
                                          (3, S.encode_add(parse_job_add(["j", "@hourly",
                                                                          "true"], T0)))])
    assert results == [None, None, None] and "j" in node.state.jobs
    assert node.service.book.clients == {5: "127.0.0.6:7380", 6: "127.0.0.7:7380"}
    assert node.state.clients == {}
    blob = node.service.machine.snapshot()
    copy = server()
    copy.service.machine.restore(blob() if callable(blob) else blob)
    assert copy.service.book.clients == node.service.book.clients and "j" in copy.state.jobs


# -- TARGET ALL: one run per live worker, shard i of n ----------------------------------------

WORKERS = ["w1", "w2", "w3"]


def broadcast(*extra: str) -> SchedulerState:
    """A broadcast job "b" and three workers heard at T0 + 500."""
    state, _ = make("TARGET", "ALL", *extra, name="b")
    for worker in WORKERS:
        state.apply_entry(S.encode_beat(worker, T0 + 500))
    return state


def fire_broadcast(state: SchedulerState, now_ms: int, timeout_ms: int = 3000) -> list[dict]:
    """The leader's side: the live workers go into the fire entry."""
    plan = plan_slots(state.jobs["b"], state.handled["b"], now_ms)
    workers = state.live_workers(now_ms, timeout_ms)
    entry = S.encode_fire("b", plan.fire, plan.handled_ms, now_ms, plan.missed, workers)
    return state.apply_entry(entry)


def shards(runs: list[dict]) -> list[tuple[int, int, str]]:
    return [(run["shard"], run["shards"], run["worker"]) for run in runs]


def test_live_workers_are_those_heard_within_the_timeout() -> None:
    state = broadcast()
    state.apply_entry(S.encode_beat("w4", T0 + 100))
    assert state.live_workers(T0 + 3099, 3000) == ["w1", "w2", "w3", "w4"]
    assert state.live_workers(T0 + 3100, 3000) == WORKERS  # w4 silent for 3000 ms
    assert state.live_workers(T0 + 3500, 3000) == []


def test_broadcast_fires_one_bound_shard_per_live_worker_once() -> None:
    state = broadcast()
    runs = fire_broadcast(state, T0 + 1000)
    assert shards(runs) == [(0, 3, "w1"), (1, 3, "w2"), (2, 3, "w3")]
    assert {run["slot_ms"] for run in runs} == {T0 + 1000}
    assert sorted(state.runs["b"]) == [f"b@{T0 + 1000}/{i}" for i in range(3)]
    again = S.encode_fire("b", [T0 + 1000], T0 + 1000, T0 + 1000, 0, ["x", "y"])
    assert state.apply_entry(again) == []  # the slot fired already: no shard twice
    assert len(state.runs["b"]) == 3


def test_a_shard_is_claimed_by_its_own_worker_only() -> None:
    state = broadcast()
    fire_broadcast(state, T0 + 1000)
    assert not state.pending([], "w9") and state.pending([], "w2") and state.pending([])
    assert state.apply_entry(S.encode_claim("w9", [], T0 + 1100)) == []
    [mine] = state.apply_entry(S.encode_claim("w2", ["any", "tags"], T0 + 1100))
    assert (mine["shard"], mine["shards"], mine["run_id"]) == (1, 3, f"b@{T0 + 1000}/1")
    assert state.apply_entry(S.encode_claim("w2", [], T0 + 1200)) == []
    assert not state.pending([], "w2")
    for worker, shard in (("w3", 2), ("w1", 0)):
        [run] = state.apply_entry(S.encode_claim(worker, [], T0 + 1300))
        assert run["shard"] == shard
    assert {r.worker for r in state.runs["b"].values()} == set(WORKERS)
    assert all(r.state == STARTED for r in state.runs["b"].values())


def test_broadcast_without_live_workers_fires_one_open_run() -> None:
    state = broadcast()
    [run] = fire_broadcast(state, T0 + 10_000)  # everyone silent for 9.5 s
    assert shards([run]) == [(0, 1, "")]
    # not held: it waits (within its misfire deadline, tests/test_scheduler_waiting_runs.py)
    assert state.due_entries(T0 + 70_000, worker_timeout_ms=3000) == []
    [claimed] = state.apply_entry(S.encode_claim("late", [], T0 + 70_000))
    assert claimed["run_id"] == f"b@{T0 + 10_000}/0"


def test_job_run_of_a_broadcast_job_fires_every_shard() -> None:
    state = broadcast()
    runs = state.apply_entry(S.encode_run("b", T0 + 1234, WORKERS[:2]))
    assert shards(runs) == [(0, 2, "w1"), (1, 2, "w2")]
    assert state.apply_entry(S.encode_run("b", T0 + 1234, WORKERS[:2])) == []
    # workers in a non-broadcast job's entry change nothing
    state2, _ = make()
    assert shards(state2.apply_entry(S.encode_run("j", T0 + 1, WORKERS))) == [(0, 1, "")]


def test_a_shard_of_a_silent_worker_is_lost_and_its_retry_open_to_any() -> None:
    state = broadcast("RETRIES", "1", "BACKOFF", "0")
    fire_broadcast(state, T0 + 1000)
    for worker in ("w1", "w3"):
        state.apply_entry(S.encode_claim(worker, [], T0 + 1100))
        state.apply_entry(S.encode_beat(worker, T0 + 4000))
    # w2 never claimed its shard and went silent: the FIRED shard it holds is lost
    [entry] = state.due_entries(T0 + 4000, worker_timeout_ms=3000)
    assert msgpack.unpackb(entry)["run_id"] == f"b@{T0 + 1000}/1"
    state.apply_entry(entry)
    [retry] = state.due_entries(T0 + 4000, worker_timeout_ms=3000)
    [fired] = state.apply_entry(retry)
    assert (fired["shard"], fired["shards"], fired["attempt"], fired["worker"]) == (1, 3, 2, "")
    assert fired["message"].startswith("attempt 1: lost: worker w2 silent")
    [taken] = state.apply_entry(S.encode_claim("w1", [], T0 + 4100))
    assert (taken["run_id"], taken["attempt"]) == (f"b@{T0 + 1000}/1", 2)


def test_after_a_broadcast_parent_the_child_fires_when_every_shard_succeeded() -> None:
    state = broadcast()
    child = parse_job_add(["c", "@after", "true", "AFTER", "b", "TARGET", "ALL"], T0)
    assert state.apply_entry(S.encode_add(child)) is None
    assert state.has_broadcast_dependent("b") and not state.has_broadcast_dependent("c")
    fire_broadcast(state, T0 + 1000)
    for worker in WORKERS:
        state.apply_entry(S.encode_claim(worker, [], T0 + 1100))
    ids = [f"b@{T0 + 1000}/{i}" for i in range(3)]
    for run_id in ids[:2]:
        done = S.encode_done("b", run_id, 0, "", T0 + 1200, 1, WORKERS)
        assert state.apply_entry(done) is None  # shards left: no child yet
    last = S.encode_done("b", ids[2], 0, "", T0 + 1300, 1, WORKERS[:2])
    children = state.apply_entry(last)
    assert shards(children) == [(0, 2, "w1"), (1, 2, "w2")]  # the child broadcasts too
    assert {run["slot_ms"] for run in children} == {T0 + 1000}
    assert state.apply_entry(last) is None  # a repeated report fires nothing more


def test_a_failed_shard_holds_the_child_back() -> None:
    state = broadcast()
    child = parse_job_add(["c", "@after", "true", "AFTER", "b"], T0)
    state.apply_entry(S.encode_add(child))
    fire_broadcast(state, T0 + 1000)
    for worker in WORKERS:
        state.apply_entry(S.encode_claim(worker, [], T0 + 1100))
    codes = {0: 0, 1: 3, 2: 0}
    for shard, code in codes.items():
        done = S.encode_done("b", f"b@{T0 + 1000}/{shard}", code, "", T0 + 1200, 1)
        assert state.apply_entry(done) is None
    assert state.runs["c"] == {}


def test_bound_shards_survive_a_snapshot() -> None:
    state = broadcast()
    fire_broadcast(state, T0 + 1000)
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.runs == state.runs
    assert copy.apply_entry(S.encode_claim("w9", [], T0 + 1100)) == []
    assert len(copy.apply_entry(S.encode_claim("w3", [], T0 + 1100))) == 1


# -- batched results, claim sizes and the active-run index ------------------------------------


def test_many_results_in_one_entry_finish_each_run_once() -> None:
    state, _ = make("RETRIES", "1", "BACKOFF", "0")
    for k in (1, 2, 3):
        fire_due(state, "j", T0 + k * 1000)
    claimed = state.apply_entry(S.encode_claim("w1", [], T0 + 3100, limit=3))
    ids = [run["run_id"] for run in claimed]
    assert len(ids) == 3
    results = [("j", ids[0], 0, "", 1), ("j", ids[1], 2, "boom", 1), ("j", "j@1/0", 0, "", 1)]
    entry = S.encode_done_many(results, T0 + 3200)
    assert state.apply_entry(entry) is None  # an unknown run id is a no-op, as in "done"
    assert [state.runs["j"][i].state for i in ids] == [SUCCEEDED, "retry_wait", STARTED]
    assert state.apply_entry(entry) is None  # the same batch again changes nothing
    assert [state.runs["j"][i].state for i in ids] == [SUCCEEDED, "retry_wait", STARTED]


def test_a_claim_takes_what_the_worker_asks_for_up_to_max_claim() -> None:
    state, _ = make("MISFIRE", "ALL")
    fire_due(state, "j", T0 + 1000)
    assert len(fire_due(state, "j", T0 + 40_000)) == 39
    assert len(state.apply_entry(S.encode_claim("w1", [], T0 + 40_000))) == S.DEFAULT_CLAIM
    assert len(state.apply_entry(S.encode_claim("w1", [], T0 + 40_000, limit=5))) == 5
    rest = state.apply_entry(S.encode_claim("w1", [], T0 + 40_000, limit=10_000))
    assert len(rest) == 40 - S.DEFAULT_CLAIM - 5
    assert not state.pending() and state.active_runs() == 40


def test_claims_hand_out_the_same_runs_on_a_restored_replica() -> None:
    """The active-run index is rebuilt on restore in another order; claims must not
    depend on it (oldest fire first, then run id), or replicas would diverge."""
    state, _ = make("MISFIRE", "ALL")
    other = parse_job_add(["k", "@every 1s", "true", "MISFIRE", "ALL"], T0)
    state.apply_entry(S.encode_add(other))
    for k in range(1, 6):
        fire_due(state, "k", T0 + k * 1000)
        fire_due(state, "j", T0 + k * 1000)
    state.apply_entry(S.encode_claim("w1", [], T0 + 5000, limit=3))
    copy = SchedulerState()
    copy.restore(state.snapshot())
    for limit in (4, 1, 16):
        entry = S.encode_claim("w2", [], T0 + 6000, limit=limit)
        assert copy.apply_entry(entry) == state.apply_entry(entry)
    resync = S.encode_claim("w1", [], T0 + 7000, resync=True)
    assert copy.apply_entry(resync) == state.apply_entry(resync)
    assert copy.snapshot() == state.snapshot()
    got = [(r["slot_ms"], r["job"]) for r in state.apply_entry(resync)]
    assert got == sorted(got)  # the oldest first


def test_a_snapshot_of_run_maps_from_before_rows_still_restores() -> None:
    state = broadcast()
    fire_broadcast(state, T0 + 1000)
    data = msgpack.unpackb(state.snapshot())
    names, rows = data.pop("run_fields"), data.pop("run_rows")
    data["runs"] = {n: [dict(zip(names, row, strict=True)) for row in rs] for n, rs in rows.items()}
    copy = SchedulerState()
    copy.restore(msgpack.packb(data))
    assert copy.runs == state.runs and copy.snapshot() == state.snapshot()
