"""Routing runs to workers that can execute them: the rule alone (scheduler/routing.py), the
state's claims and waiting rule, the advert parser (fuzzed), and a real cluster with a shell
worker (tag t1) and embedded workers (handlers h1, later h2).

Strategy: the rule is a table of (job, advert) cases; the state is driven with claim entries
carrying adverts, times passed in; the cluster test starts tests/test_scheduler_daemon.py's
three nodes and shell worker process, and embedded workers in threads, then checks on which
worker each run landed (JOB.HISTORY's worker field), and that a job for a handler nobody has
waits with its reason until a worker with that handler joins. Timeouts only detect hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.resp_client import ReplyError
from scheduler import state as S
from scheduler.embedded import EmbeddedWorker, Run
from scheduler.firing import FirePlanner
from scheduler.jobs import parse_job_add
from scheduler.routing import (
    ERR_NAMES,
    MAX_NAME_BYTES,
    MAX_NAMES,
    REASON_HANDLER,
    REASON_HANDLER_TAG,
    REASON_SHELL,
    REASON_TARGET,
    Advert,
    NamesError,
    can_take,
    parse_names,
    waiting_reason,
)
from scheduler.state import SchedulerState
from scheduler.worker import ERR_OLD_POLL
from scheduler.worker_commands import ERR_AHEAD, ERR_NO_ADVERT, ERR_POLL_OPTION
from tests.test_scheduler_daemon import Cluster, running_cluster, wait_until

T0 = 1_700_000_000_000
TIMEOUT_MS = 10_000
README = Path(__file__).resolve().parent.parent / "README.md"
SHELL = Advert(frozenset({"t1"}))
BARE_SHELL = Advert()
EMBEDDED = Advert(frozenset({"py"}), frozenset({"h1"}))
HANDLERS = frozenset({"h1"})


def job(command: str, *options: str) -> Any:
    return parse_job_add(["j", "@every 1s", command, *options], T0)


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "options", "takers"), [
    ("echo hi", (), {"shell", "bare"}),  # a shell job without TARGET: shell workers only
    ("echo hi", ("TARGET", "t1"), {"shell"}),
    ("echo hi", ("TARGET", "py"), set()),  # an embedded worker never runs a shell command
    ("h1", (), {"embedded"}),  # a handler job: only the worker with the handler
    ("h1", ("TARGET", "h1"), {"embedded"}),
    ("h1", ("TARGET", "py"), {"embedded"}),
    ("h1", ("TARGET", "t1"), set()),  # a shell worker never runs a handler name
    ("h1", ("TARGET", "other"), set()),
    ("echo hi", ("TARGET", "ALL"), {"shell", "bare"}),
    ("h1", ("TARGET", "ALL"), {"embedded"}),
])
def test_each_run_goes_only_to_workers_that_can_execute_it(
    command: str, options: tuple[str, ...], takers: set[str]
) -> None:
    adverts = {"shell": SHELL, "bare": BARE_SHELL, "embedded": EMBEDDED}
    got = {name for name, advert in adverts.items() if can_take(job(command, *options),
                                                                 advert, HANDLERS)}
    assert got == takers


def test_a_job_no_worker_can_take_waits_and_says_why() -> None:
    live = [SHELL, EMBEDDED]
    assert waiting_reason(job("echo hi"), live, HANDLERS) is None
    assert waiting_reason(job("echo hi"), [EMBEDDED], HANDLERS) == REASON_SHELL
    assert waiting_reason(job("h2", "TARGET", "h2"), live, HANDLERS) == (
        "no worker with handler or tag 'h2'") == REASON_TARGET.format("h2")
    assert waiting_reason(job("h1"), [SHELL], HANDLERS) == REASON_HANDLER.format("h1")
    assert waiting_reason(job("h1", "TARGET", "gpu"), live, HANDLERS) == (
        REASON_HANDLER_TAG.format("h1", "gpu"))
    assert waiting_reason(job("echo hi", "TARGET", "ALL"), [], HANDLERS) is None  # broadcast


@given(st.text(max_size=80))
def test_advertised_names_parse_or_are_refused_clearly(text: str) -> None:
    try:
        names = parse_names(text, "tags")
    except NamesError as exc:
        assert exc.message == ERR_NAMES.format("tags")
        return
    assert names == {n for n in text.split(",") if n}
    assert all(0 < len(n.encode()) <= MAX_NAME_BYTES and " " not in n for n in names)


@given(st.lists(st.from_regex(r"[A-Za-z0-9_.:/-]{1,20}", fullmatch=True), max_size=20))
def test_a_list_of_good_names_round_trips(names: list[str]) -> None:
    assert parse_names(",".join(names), "handlers") == set(names)


def test_name_limits() -> None:
    assert parse_names(",".join(f"n{i}" for i in range(MAX_NAMES)), "tags")
    for bad in (",".join(f"n{i}" for i in range(MAX_NAMES + 1)), "a b", "x" * 256, "a\x00"):
        with pytest.raises(NamesError):
            parse_names(bad, "tags")


# -- the state -----------------------------------------------------------------------------------


def state_with(*jobs: tuple[str, str, tuple[str, ...]]) -> SchedulerState:
    state = SchedulerState()
    for name, command, options in jobs:
        added = parse_job_add([name, "0 0 1 1 *", command, *options], T0)
        assert state.apply_entry(S.encode_add(added)) is None
        state.apply_entry(S.encode_run(name, T0))
    return state


def claim(state: SchedulerState, worker: str, advert: Advert, now_ms: int = T0 + 10) -> set[str]:
    entry = S.encode_claim(worker, sorted(advert.tags), now_ms, 16,
                           handlers=None if advert.handlers is None else sorted(advert.handlers))
    return {run["job"] for run in state.apply_entry(entry)}


def test_claims_hand_each_worker_only_the_runs_its_advert_can_take() -> None:
    state = state_with(("shell", "echo hi", ()), ("tagged", "echo hi", ("TARGET", "t1")),
                       ("handler", "h1", ("TARGET", "h1")), ("plain-h1", "h1", ()),
                       ("nobody", "h2", ("TARGET", "h2")))
    # the embedded worker's first claim records its handlers: h1 jobs become handler jobs
    assert claim(state, "emb", EMBEDDED) == {"handler", "plain-h1"}
    assert state.handler_names == {"h1"} and state.adverts["emb"] == EMBEDDED
    assert claim(state, "sh", SHELL) == {"shell", "tagged"}
    assert claim(state, "sh", SHELL) == claim(state, "emb", EMBEDDED) == set()
    assert state.pending(["h2"]) and not state.pending(["t1"], "sh")
    live = state.live_adverts(T0 + 100, TIMEOUT_MS)
    assert state.waiting(state.jobs["nobody"], live) == REASON_TARGET.format("h2")
    assert state.job_status("nobody", T0 + 100, TIMEOUT_MS) == ("waiting", REASON_TARGET.format(
        "h2"))
    assert state.job_status("shell", T0 + 100, TIMEOUT_MS) == ("scheduled", "")
    # silent for the worker timeout: not live, so its jobs wait again
    assert state.job_status("shell", T0 + 10 + TIMEOUT_MS, TIMEOUT_MS)[0] == "waiting"
    assert claim(state, "emb2", Advert(handlers=frozenset({"h2"}))) == {"nobody"}


def test_a_claim_without_handlers_is_a_shell_workers_as_before() -> None:
    state = state_with(("shell", "echo hi", ()))
    assert state.apply_entry(S.encode_claim("old", [], T0 + 10))[0]["job"] == "shell"
    assert state.adverts["old"] == Advert()


def test_adverts_survive_a_snapshot_and_an_old_snapshot_restores_without_them() -> None:
    state = state_with(("handler", "h1", ()))
    claim(state, "emb", EMBEDDED)
    claim(state, "sh", SHELL)
    copy = SchedulerState()
    copy.restore(state.snapshot())
    assert copy.adverts == state.adverts and copy.handler_names == {"h1"}
    assert copy.snapshot() == state.snapshot()
    old = msgpack.unpackb(state.snapshot())
    del old["adverts"]
    copy.restore(msgpack.packb(old))
    assert copy.adverts == {} and copy.handler_names == frozenset()


def test_a_broadcast_goes_to_the_live_workers_that_can_run_it() -> None:
    state = state_with(("bc", "h1", ("TARGET", "ALL")))
    claim(state, "emb", EMBEDDED)
    claim(state, "sh", SHELL)
    assert state.live_workers(T0 + 100, TIMEOUT_MS) == ["emb", "sh"]
    assert state.live_workers(T0 + 100, TIMEOUT_MS, state.jobs["bc"]) == ["emb"]


def test_a_broadcast_after_child_binds_only_workers_that_can_run_it() -> None:
    state = state_with(("parent", "echo parent", ()))
    child = parse_job_add(["child", "@after", "echo child", "AFTER", "parent", "TARGET", "ALL"],
                          T0)
    assert state.apply_entry(S.encode_add(child)) is None
    claim(state, "emb", EMBEDDED)
    [run] = state.apply_entry(S.encode_claim("sh", ["t1"], T0 + 20))
    fired = state.apply_entry(S.encode_done("parent", run["run_id"], 0, "", T0 + 30,
                                            run["attempt"], ["emb", "sh"]))
    assert [(r["job"], r["worker"], r["shards"]) for r in fired] == [("child", "sh", 1)]


def test_a_held_job_is_due_again_at_the_recheck_with_its_slot_unhandled() -> None:
    state = state_with(("held", "h9", ("TARGET", "h9")))
    planner = FirePlanner()
    planner.refresh(state)
    now = T0 + 366 * 86_400_000  # its yearly slot is due
    assert [name for name, _ in planner.take_due(state, now)] == ["held"]
    planner.hold(["held"], now + 100)
    assert "held" not in planner.in_flight and planner.soonest() == now + 100
    assert planner.take_due(state, now + 99) == []
    assert [name for name, _ in planner.take_due(state, now + 100)] == ["held"]
    assert state.handled["held"] == T0


# -- a real cluster --------------------------------------------------------------------------------


class Landed:
    """The runs each embedded worker's handlers got."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, str]] = []  # (worker id, job)

    def note(self, worker: str) -> Callable[[Run], None]:
        def handle(run: Run) -> None:
            with self.lock:
                self.runs.append((worker, run.job))

        return handle

    def jobs_of(self, worker: str) -> set[str]:
        with self.lock:
            return {job for who, job in self.runs if who == worker}


def embedded(cluster: Cluster, worker_id: str, handler: str,
             landed: Landed) -> Callable[[], None]:
    worker = EmbeddedWorker([(n.host, n.port) for n in cluster.nodes], worker_id=worker_id,
                            heartbeat_s=0.5)
    worker.handler(handler)(landed.note(worker_id))
    return worker.run_in_thread()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-routing"),
                         worker_args=["--tags", "t1", "--heartbeat-ms", "500"]) as c:
        yield c


def workers_of(cluster: Cluster, name: str) -> set[str]:
    runs = cluster.call("JOB.HISTORY", name, "50")
    assert all(run["state"] in ("succeeded", "started", "fired") for run in runs), runs
    return {run["worker"] for run in runs if run["state"] == "succeeded"}


def succeeded(cluster: Cluster, name: str, count: int) -> Callable[[], bool]:
    def probe() -> bool:
        runs = cluster.call("JOB.HISTORY", name, "50")
        return sum(run["state"] == "succeeded" for run in runs) >= count

    return probe


def test_runs_land_only_on_workers_that_can_execute_them(cluster: Cluster) -> None:
    landed = Landed()
    stops = [embedded(cluster, "emb-h1", "h1", landed)]
    out = cluster.tmp / "shell.txt"
    try:
        jobs = {
            "r-shell": (f'echo "$SCHED_JOB" >> {out}',),
            "r-tagged": (f'echo "$SCHED_JOB" >> {out}', "TARGET", "t1"),
            "r-handler": ("h1", "TARGET", "h1"),
            "r-nobody": ("h2", "TARGET", "h2"),
        }
        for name, (command, *options) in jobs.items():
            assert cluster.call("JOB.ADD", name, "@every 1s", command, *options) == "OK"
        for name in ("r-shell", "r-tagged", "r-handler"):
            wait_until(succeeded(cluster, name, 3), f"runs of {name}", cluster)
        assert workers_of(cluster, "r-shell") == workers_of(cluster, "r-tagged") == {"w1"}
        assert workers_of(cluster, "r-handler") == {"emb-h1"}
        assert landed.jobs_of("emb-h1") == {"r-handler"}
        assert set(out.read_text().split()) == {"r-shell", "r-tagged"}
        # a handler nobody has: the job waits, says why, and no worker ran it
        got = cluster.call("JOB.GET", "r-nobody")
        assert (got["status"], got["waiting"]) == ("waiting", REASON_TARGET.format("h2"))
        assert cluster.call("JOB.HISTORY", "r-nobody", "5") == []
        assert dict(cluster.call("JOB.LIST", "WITHSTATUS"))["r-nobody"] == "waiting"
        # ... until a worker with that handler joins: then it runs there, and only there
        joined_ms = time.time() * 1000
        stops.append(embedded(cluster, "emb-h2", "h2", landed))
        wait_until(succeeded(cluster, "r-nobody", 2), "runs of r-nobody", cluster)
        assert workers_of(cluster, "r-nobody") == {"emb-h2"}
        # the slots it waited through followed MISFIRE once: only the latest one fired
        first = cluster.call("JOB.HISTORY", "r-nobody", "50")[-1]
        assert first["slot_ms"] >= joined_ms - 1000 and first["fired_ms"] >= joined_ms
        assert cluster.call("JOB.GET", "r-nobody")["waiting"] == ""
        assert landed.jobs_of("emb-h2") == {"r-nobody"}
        assert landed.jobs_of("emb-h1") == {"r-handler"}
    finally:
        for name in ("r-shell", "r-tagged", "r-handler", "r-nobody"):
            cluster.call("JOB.PAUSE", name)
        for stop in stops:
            stop()
    assert "h1" not in out.read_text().split() and "h2" not in out.read_text().split()


def test_a_waiting_one_shot_runs_when_its_worker_joins_and_expires_past_its_deadline(
    cluster: Cluster,
) -> None:
    landed = Landed()
    assert cluster.call("JOB.ADD", "r-once", "@in 0s", "h3", "TARGET", "h3") == "OK"
    assert cluster.call("JOB.ADD", "r-gone", "@in 0s", "h4", "TARGET", "h4",
                        "MISFIRE", "SKIP") == "OK"
    wait_until(lambda: cluster.call("JOB.GET", "r-gone")["status"] == "finished",
               "the expiry of r-gone", cluster)
    [gone] = cluster.call("JOB.HISTORY", "r-gone", "5")
    assert gone["state"] == "expired"
    assert cluster.call("JOB.GET", "r-once")["status"] == "waiting"
    time.sleep(1.5)  # pacing only: r-once is more than 1 s late, still within DEADLINE
    stop = embedded(cluster, "emb-h3", "h3", landed)
    try:
        wait_until(lambda: cluster.call("JOB.GET", "r-once")["status"] == "finished",
                   "the run of r-once", cluster)
        [run] = cluster.call("JOB.HISTORY", "r-once", "5")
        assert (run["state"], run["worker"]) == ("succeeded", "emb-h3")
        assert landed.jobs_of("emb-h3") == {"r-once"}
    finally:
        stop()


def test_poll_advert_errors(cluster: Cluster) -> None:
    for args, error in (
        (("w9", "", "0", "0", "1", "HANDLER", "h1"), ERR_POLL_OPTION),
        (("w9", "", "0", "0", "1", "HANDLERS"), ERR_POLL_OPTION),
        (("w9", "a b", "0", "0", "1"), ERR_NAMES.format("tags")),
        (("w9", "", "0", "0", "1", "HANDLERS", "x" * 300), ERR_NAMES.format("handlers")),
        (("w9", "", "0", "0", "1"), ERR_NO_ADVERT),
        (("w9", "", "0", "0", "1", "SHELL", "AHEAD", "-1"), ERR_AHEAD),
    ):
        with pytest.raises(Exception) as raised:
            cluster.call("WORKER.POLL", *args)
        assert str(raised.value) == error.removeprefix("ERR "), raised.value
    with pytest.raises(Exception, match="JOB.LIST takes no argument but WITHSTATUS"):
        cluster.call("JOB.LIST", "SOMETHING")


def test_a_handler_name_must_be_advertisable() -> None:
    worker = EmbeddedWorker([("127.0.0.1", 1)], worker_id="x")
    for bad in ("", "a,b", "a b", "x" * 256):
        with pytest.raises(ValueError, match="handler name"):
            worker.handler(bad)


def test_an_embedded_worker_polls_an_older_cluster_without_its_handlers() -> None:
    """A cluster older than handler adverts refuses the HANDLERS argument (arity): the
    worker polls on without AHEAD, then without it (routed by tags alone, as that cluster
    does)."""
    worker = EmbeddedWorker([("127.0.0.1", 1)], worker_id="e")
    worker.handler("h1")(lambda run: None)
    polls: list[tuple[object, ...]] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def old_cluster(*args: object, channel: int = 0) -> Any:
            polls.append(args)
            if len(args) > 6:
                raise ReplyError(ERR_OLD_POLL)
            stop.set()
            return []

        worker.call = old_cluster  # type: ignore[method-assign]
        await worker._run(stop)

    asyncio.run(scenario())
    assert [len(args) for args in polls] == [10, 8, 6]
    assert polls[0][6:8] == ("HANDLERS", "h1") and polls[0][8] == "AHEAD"
    assert polls[1][6:] == ("HANDLERS", "h1")


def test_the_readme_states_the_routing_rules() -> None:
    text = " ".join(README.read_text().split())
    for sentence in (
        "Workers receive only the runs they can execute.",
        "A shell worker advertises its `--tags`; an embedded worker (below) advertises the "
        "names of its handlers, and its tags.",
        "A job whose command is a handler name some worker advertises runs only on embedded "
        "workers that registered that handler (with `TARGET name`, only on those that also "
        "have `name` among their handlers or tags); a shell worker never runs a handler name "
        "as a shell command.",
        "Any other job runs only on shell workers: without `TARGET` on any of them, with "
        "`TARGET name` on those whose `--tags` include `name`.",
        "A job no live worker can take waits: `JOB.GET` shows `status` `waiting` and, in "
        "`waiting`, why (`no worker with handler or tag 'h2'`); it fires as soon as a worker "
        "that can take it polls, and its misfire deadline still applies.",
        "`JOB.LIST WITHSTATUS` (and `scheduler job list`) gives each job's status: "
        "`scheduled`, `paused`, `waiting`, `running` (a one-shot job's run is not over) or "
        "`finished`.",
        "| `TARGET` | `ANY`, `ALL`, a tag or a handler (`ANY`) |",
    ):
        assert sentence in text, sentence
    assert REASON_TARGET.format("h2") in text
