"""The scheduler benchmark's sections 2 (failover: the leader SIGKILLed or SIGTERMed while
four jobs fire every 25 ms) and 3 (Raft alone: committed entries/s of three
tests.raft_kv_demo nodes); see bench.scheduler_bench's header for what each measures.
"""

from __future__ import annotations

import signal
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    CpuMeter,
    Figure,
    median,
    progress,
)
from bench.idgen_bench import Recorder
from bench.scheduler_cluster import SchedulerCluster, wait_for
from bench.scheduler_loads import HANDLER, embedded_worker_class
from bench.scheduler_plan import (
    FAILOVER_JOBS,
    FAILOVER_PERIOD_MS,
    HISTORY_READ,
    KILL_GOAL_MS,
    RAFT_ENTRY_BYTES,
    RAFT_GOAL_PER_S,
    RAFT_PROPOSERS,
    RAFT_RETRIES,
    STEADY_S,
    TERM_GOAL_MS,
    Plan,
    ceiling_figure,
    cores_text,
    failures_as_runtime_errors,
    worker_for,
)
from bench.scheduler_slots import accounting, first_start_after, starts

# -- 2. failover -------------------------------------------------------------------------


def add_phased_jobs(cluster: SchedulerCluster) -> list[str]:
    """FAILOVER_JOBS jobs @every FAILOVER_PERIOD_MS, a fraction of the period apart."""
    names = [f"fo{i}" for i in range(FAILOVER_JOBS)]
    step_s = FAILOVER_PERIOD_MS / FAILOVER_JOBS / 1000
    with cluster.client() as client:
        for name in names:
            started = time.monotonic()
            client.add(name, f"@every {FAILOVER_PERIOD_MS}ms", HANDLER, misfire="ALL",
                       deadline=60, history=HISTORY_READ * 2)
            time.sleep(max(0.0, step_s - (time.monotonic() - started)))
    return names


def fires_around(cluster: SchedulerCluster, names: list[str], at_ms: float
                 ) -> tuple[float, float] | None:
    """(last fired_ms at or before `at_ms`, first after it) among the latest runs of
    `names`; None while nothing fired after `at_ms`."""
    with cluster.client() as client:
        times = [r["fired_ms"] for name in names for r in cluster.history(client, name, 40)]
    after = [t for t in times if t > at_ms]
    before = [t for t in times if t <= at_ms]
    return (max(before, default=float("nan")), min(after)) if after else None


def one_failover(cluster: SchedulerCluster, names: list[str], signum: int) -> dict[str, Any]:
    """Signal the leader, time the next fire, restart the node; the event's figures."""
    old = cluster.leader()
    time.sleep(STEADY_S)
    signalled_ms = time.time() * 1000
    cluster.kill(old, signum)
    last_fire, next_fire = wait_for(lambda: fires_around(cluster, names, signalled_ms),
                                    "a fire after the signal")
    exit_code = cluster.reap(old)
    new = cluster.leader(exclude=old)
    cluster.restart(old)
    return {"signal": signal.Signals(signum).name, "old_leader": old + 1,
            "new_leader": new + 1, "signalled_ms": signalled_ms,
            "next_fire_ms": next_fire - signalled_ms, "fire_gap_ms": next_fire - last_fire,
            "exit_code": exit_code}


def failover_run(plan: Plan) -> dict[str, Any]:
    records: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    with (failures_as_runtime_errors(), SchedulerCluster(plan.node_args) as cluster,
          worker_for(cluster, plan.slots) as worker):
        names = add_phased_jobs(cluster)
        time.sleep(2.0)
        for signum in [signal.SIGKILL, signal.SIGTERM] * plan.kills:
            event = one_failover(cluster, names, signum)
            events.append(event)
            progress(f"2 {event['signal']} of node {event['old_leader']}: next fire after "
                     f"{event['next_fire_ms']:.0f} ms, {event['fire_gap_ms']:.0f} ms after "
                     f"the last one (new leader {event['new_leader']})")
            _merge_history(cluster, names, records)
        with cluster.client() as client:
            for name in names:
                client.pause(name)
        time.sleep(2.0)  # the last fired runs reach the worker
        _merge_history(cluster, names, records)
        notes, _ = worker.finish()
    handled = starts(notes)
    for event in events:  # when the worker started the first run fired after the signal
        event["next_handler_ms"] = first_start_after(records.values(), handled,
                                                     event["signalled_ms"])
    return {"events": events,
            **accounting(list(records.values()), notes, FAILOVER_PERIOD_MS),
            "command": f"{plan.kills} x SIGKILL and SIGTERM of the leader"}


def _merge_history(cluster: SchedulerCluster, names: list[str],
                   records: dict[str, dict[str, Any]]) -> None:
    with cluster.client() as client:
        for name in names:
            for run in cluster.history(client, name, HISTORY_READ):
                records[run["run_id"]] = run


def section_failover(plan: Plan, rec: Recorder) -> None:
    section = "2 failover"
    if embedded_worker_class() is None:
        progress("2 skipped: scheduler has no EmbeddedWorker yet")
        rec.add(None, section, "next fire")
        return
    result = rec.attempt(section, "failover", partial(failover_run, plan))
    if result is None:
        rec.add(None, section, "next fire")
        return
    progress(f"2 slots {result['slots']}: history duplicates {result['history_duplicates']}, "
             f"missed {result['history_missed']}, skipped {result['skipped']}; worker: "
             f"handled twice {result['handled_twice']}, never {result['never_handled']}")
    for name, limit in (("SIGKILL", KILL_GOAL_MS), ("SIGTERM", TERM_GOAL_MS)):
        events = [e for e in result["events"] if e["signal"] == name]
        if not events:
            continue
        times = [e["next_fire_ms"] for e in events]
        handler = [e["next_handler_ms"] for e in events]
        progress(f"2 {name}: next fire median {median(times):.0f} ms, max {max(times):.0f}; "
                 f"next handler start median {median(handler):.0f} ms, max {max(handler):.0f}")
        rec.add(ceiling_figure(section, f"{name} -> next fire, max of {len(times)}",
                               max(times), "ms", limit, True,
                               detail={"ms": times, "median": median(times),
                                       "handler_ms": handler,
                                       "gap_ms": [e["fire_gap_ms"] for e in events]}),
                section, name)
    bad = (result["history_duplicates"] + result["history_missed"] + result["skipped"]
           + result["handled_twice"] + result["never_handled"])
    rec.add(ceiling_figure(section, "duplicate + missed slots", bad, "slots", 0, True,
                           detail={k: v for k, v in result.items() if k != "events"}),
            section, "slots")


# -- 3. raft alone -----------------------------------------------------------------------


def raft_run(plan: Plan) -> dict[str, Any]:
    """tests.test_raft_driver's three-node cluster of tests.raft_kv_demo processes; its
    leader's BENCH command proposes `raft_entries` entries from RAFT_PROPOSERS coroutines."""
    from tests.test_raft_driver import Cluster

    with failures_as_runtime_errors(), tempfile.TemporaryDirectory(prefix="bench-raft-") as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            leader = cluster.leader()
            leader.cmd(f"BENCH 2000 {RAFT_ENTRY_BYTES} {RAFT_PROPOSERS}")  # warm-up
            pids = [n.daemon.proc.pid for n in cluster.nodes.values()  # type: ignore[union-attr]
                    ]
            runs = []
            failures: list[str] = []
            while len(runs) < plan.raft_runs:
                fsyncs = leader.status()["fsyncs"]
                meter = CpuMeter(pids)
                meter.begin()
                reply = leader.cmd(f"BENCH {plan.raft_entries} {RAFT_ENTRY_BYTES} "
                                   f"{RAFT_PROPOSERS}")[0].split()
                meter.end()
                if reply[0] != "BENCH":  # the lead moved during the run (a stalled leader)
                    failures.append(" ".join(reply))
                    if len(failures) > RAFT_RETRIES:
                        raise RuntimeError(f"BENCH failed: {failures}")
                    progress(f"3 {failures[-1]}; again on the new leader")
                    leader = cluster.leader()
                    continue
                entries, seconds = int(reply[1]), float(reply[2])
                runs.append({"entries_per_s": entries / seconds, "seconds": seconds,
                             "failures_before": list(failures),
                             "leader_fsyncs": leader.status()["fsyncs"] - fsyncs,
                             "cpu": meter.result})
                progress(f"3 {entries / seconds:,.0f} entries/s, "
                         f"{runs[-1]['leader_fsyncs']} leader fsyncs; {cores_text(meter.result)}")
            cluster.converged()
        finally:
            cluster.stop()
    return {"runs": runs, "command": f"BENCH {plan.raft_entries} {RAFT_ENTRY_BYTES} "
                                     f"{RAFT_PROPOSERS} on the leader of 3 raft_kv_demo nodes"}


def section_raft(plan: Plan, rec: Recorder) -> None:
    section = "3 raft"
    label = f"{RAFT_ENTRY_BYTES} B entries, {RAFT_PROPOSERS} proposers, fsync"
    result = rec.attempt(section, label, partial(raft_run, plan))
    rates = [r["entries_per_s"] for r in result["runs"]] if result else []
    rec.add(Figure(section, label, median(rates), "entries/s", "goal", RAFT_GOAL_PER_S, 1.0,
                   f">= {RAFT_GOAL_PER_S:,}/s", detail={"entries_per_s": rates})
            if rates else None, section, label)


