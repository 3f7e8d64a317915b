"""Benchmark of the scheduler: `.venv/bin/python -m bench.scheduler_bench [--quick]`.

Real daemons: three `scheduler serve` nodes on 127.0.0.2-4 (bench.scheduler_cluster) and one
embedded-handler worker in a child process (bench.scheduler_loads). Sections:

1. Firing lateness at the default settings: the nodes started with no tuning option and
   the worker built as `EmbeddedWorker(nodes)` with its default slots (the output says
   which: --slots and --fire-ahead-ms change them, and the settings line says so). N jobs
   (100, 1,000) firing every second, either spread over the second (`@every 1s`, anchored
   at each job's creation, the jobs added at staggered times) or all on the second boundary
   (`* * * * * *`), through a leader failover: the leader is SIGKILLed in the middle of the
   window and restarted on its data directory once another leads (--no-failover: not).
   Every slot the jobs were scheduled for in the window counts: fired (`fired_ms`, the
   leader's clock when it planned the fire: negative for a run fired ahead), claimed
   (`started_ms`) and handler start (the worker's clock as its handler is entered) minus
   the slot; p50/p99/max. A slot that never fired, or was not claimed or handled when the
   worker stopped, counts as late until then (a lower bound, never left out). Checks: the
   cluster holds the N jobs, and fires/s reached 99% of the offered N/s. Goal: handler
   start p99 <= 20 ms at 1,000 fires/s.
2. Failover: jobs `@every 100ms` in four phases; the leader gets SIGKILL (goal: next fire
   within 3 s) or SIGTERM (leadership transfer, goal 0.5 s), alternately, restarted on its
   data directory after each; time from the signal to the first run fired after it.
   Duplicate and missed slots from JOB.HISTORY and from the worker's notes (goal: none).
3. Raft alone: committed 100-byte entries per second on three `tests.raft_kv_demo` nodes
   (fsync on), 1,000 concurrent proposers in the leader (its BENCH command, as
   tests/test_raft_driver.py's throughput figure). Goal >= 10,000/s.

Rows with a time limit are "lower is better": ratio = value / limit, met when <= 1. Prints a
table (stdout) and progress (stderr); writes scheduler.json and a PNG to --out
(bench/results/); exits 1 when a goal or a check is missed or a figure not measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    SERVER_LOGS,
    CpuMeter,
    Figure,
    bench_parser,
    exit_status,
    machine,
    parse_bench_args,
    progress,
    table,
    write_results,
)
from bench.idgen_bench import Recorder
from bench.scheduler_cluster import SchedulerCluster
from bench.scheduler_failover import section_failover, section_raft
from bench.scheduler_loads import HANDLER, embedded_worker_class
from bench.scheduler_plan import (
    ADDERS,
    DRAIN_S,
    GOAL_JOBS,
    LATENESS_GOAL_MS,
    MIN_HISTORY,
    OFFERED_GOAL,
    Plan,
    ceiling_figure,
    cores_text,
    failures_as_runtime_errors,
    fmt_stats,
    make_plan,
    worker_for,
)
from bench.scheduler_slots import lateness
from scheduler.client import SchedulerClient, SchedulerError

# -- 1. firing lateness ------------------------------------------------------------------


ERR_EXISTS = "already exists"  # JOB.ADD's answer for a name taken


def add_jobs(cluster: SchedulerCluster, count: int, spread: bool, history: int | None
             ) -> list[str]:
    """Add `count` jobs from ADDERS threads; spread: `@every 1s`, job i added about i/count
    s after the start (each anchors at its creation), else `* * * * * *`. Concurrent adds
    share the leader's fsyncs: one at a time, adding to a cluster already firing hundreds
    of jobs each second took minutes on a loaded machine."""
    names = [f"j{i:04d}" for i in range(count)]
    options = {"history": history} if history else {}
    schedule = "@every 1s" if spread else "* * * * * *"
    started = time.monotonic()
    local = threading.local()
    opened: list[SchedulerClient] = []

    def add(i: int) -> None:
        if spread:
            time.sleep(max(0.0, started + i / count - time.monotonic()))
        if not hasattr(local, "client"):
            local.client = cluster.client()
            opened.append(local.client)
        try:
            local.client.add(names[i], schedule, HANDLER, **options)
        except SchedulerError as exc:  # a retry after a timeout finds its own first attempt
            if ERR_EXISTS not in str(exc):
                raise

    try:
        with ThreadPoolExecutor(ADDERS) as pool:
            list(pool.map(add, range(count)))
    finally:
        for client in opened:
            client.close()
    progress(f"1 added {count} jobs ({schedule}) in {time.monotonic() - started:.1f} s")
    return names


def read_histories(cluster: SchedulerCluster, names: list[str], count: int
                   ) -> list[dict[str, Any]]:
    """The last `count` run records of every job, read from ADDERS threads (one at a time,
    1,000 jobs' histories took minutes on a loaded machine while the jobs kept firing)."""
    local = threading.local()
    opened: list[SchedulerClient] = []

    def read(name: str) -> list[dict[str, Any]]:
        if not hasattr(local, "client"):
            local.client = cluster.client()
            opened.append(local.client)
        return cluster.history(local.client, name, count)

    try:
        with ThreadPoolExecutor(ADDERS) as pool:
            return [r for runs in pool.map(read, names) for r in runs]
    finally:
        for client in opened:
            client.close()


def failover_in_window(cluster: SchedulerCluster, leader: int, until_s: float
                       ) -> dict[str, Any]:
    """SIGKILL node `leader`, wait for a new leader, restart the node on its data directory
    (caught up); then sleep until `until_s` (monotonic). When each step happened (wall ms)."""
    killed_ms = time.time() * 1000
    cluster.kill(leader, signal.SIGKILL)
    cluster.reap(leader)
    new = cluster.leader(exclude=leader)
    elected_ms = time.time() * 1000
    cluster.restart(leader)
    restarted_ms = time.time() * 1000
    progress(f"1 failover: node {leader + 1} SIGKILLed, node {new + 1} leads after "
             f"{elected_ms - killed_ms:.0f} ms, node {leader + 1} back after "
             f"{restarted_ms - killed_ms:.0f} ms")
    time.sleep(max(0.0, until_s - time.monotonic()))
    return {"killed_node": leader + 1, "new_leader": new + 1, "killed_ms": killed_ms,
            "elected_after_ms": elected_ms - killed_ms,
            "restarted_after_ms": restarted_ms - killed_ms}


def lateness_run(plan: Plan, count: int, spread: bool) -> dict[str, Any]:
    """One cluster, one worker, `count` jobs; the lateness of every slot scheduled in the
    window, through a SIGKILL of the leader in its middle (unless plan.failover is off)."""
    with (failures_as_runtime_errors(), SchedulerCluster(plan.node_args) as cluster,
          worker_for(cluster, plan.slots) as worker):
        names = add_jobs(cluster, count, spread, plan.history)
        time.sleep(plan.warmup_s)
        leader = cluster.leader()
        survivors = [n.pid for i, n in enumerate(cluster.nodes) if i != leader]
        meter = CpuMeter([*survivors, worker.pid])
        begin_ms = time.time() * 1000
        began = time.monotonic()
        meter.begin()
        failover = None
        if plan.failover:
            time.sleep(plan.window_s / 2)
            failover = failover_in_window(cluster, cluster.leader(), began + plan.window_s)
        else:
            time.sleep(plan.window_s)
        meter.end()
        end_ms = time.time() * 1000
        time.sleep(DRAIN_S)  # the window's last slots reach the worker
        stopped_ms = time.time() * 1000
        notes, worker_cpu = worker.finish()
        with cluster.client() as client:
            listed = len(client.list())
        records = read_histories(cluster, names, int(plan.window_s) + 100)
        info = cluster.nodes[cluster.leader()].info()
    if listed != count:
        raise RuntimeError(f"the cluster holds {listed} jobs, not the {count} the load added")
    schedule = "@every 1s" if spread else "* * * * * *"
    result = lateness(records, notes, begin_ms, end_ms, stopped_ms, 1000, names)
    if not result["fired_in_window"]:
        raise RuntimeError("no run record of the window left in JOB.HISTORY (raise --history)")
    result.update(jobs=count, schedule=schedule, window_s=(end_ms - begin_ms) / 1000,
                  cpu=meter.result, metered="the two nodes not killed, then the worker",
                  worker_cpu_s=worker_cpu, worker_slots=worker.facts.get("slots"),
                  failover=failover, leader_info=info,
                  command=f"{count} jobs '{schedule}' -> {HANDLER} (embedded worker, "
                          f"{worker.facts.get('slots')} slots)")
    return result


def section_lateness(plan: Plan, rec: Recorder) -> None:
    section = "1 lateness"
    if embedded_worker_class() is None:
        progress("1 skipped: scheduler has no EmbeddedWorker yet")
        rec.add(None, section, "handler start")
        return
    for count in plan.job_counts:
        for spread in (True, False):
            how = "spread" if spread else "aligned"
            label = f"{count} jobs/s {how}" + (", leader SIGKILLed" if plan.failover else "")
            result = rec.attempt(section, label, partial(lateness_run, plan, count, spread))
            if result is None:
                rec.add(None, section, label)
                continue
            lateness_figures(rec, section, label, count, result)


def lateness_figures(rec: Recorder, section: str, label: str, count: int,
                     result: dict[str, Any]) -> None:
    """The rows of one lateness case: fires/s against the offered rate (goal: reached),
    fired and handler-start p99 (goal <= 20 ms at 1,000 jobs)."""
    progress(f"1 {label}: {result['fires_per_s']:.0f} of {count} fires/s offered "
             f"({result['never_fired']} slots never fired); fired "
             f"{fmt_stats(result['fired_ms'])}; claimed {fmt_stats(result['claimed_ms'])}; handler "
             f"{fmt_stats(result['handler_start_ms'])}; not handled {result['not_handled']}, twice "
             f"{result['handled_twice']}; worker slots {result['worker_slots']}; cores "
             f"{cores_text(result['cpu'])}")
    keys = ("never_fired", "not_handled", "handled_twice", "offered_per_s", "worker_slots")
    rec.add(Figure(section, f"{label}: fires/s", result["fires_per_s"], "/s", "offered",
                   count, OFFERED_GOAL, f">= {OFFERED_GOAL:.0%} of offered",
                   detail={k: result[k] for k in keys}), section, label)
    goal = count >= GOAL_JOBS
    for stage, name in (("fired_ms", "fired"), ("handler_start_ms", "handler start")):
        stats = result[stage]
        rec.add(ceiling_figure(section, f"{label}: {name} p99", stats["p99"], "ms",
                               LATENESS_GOAL_MS, goal and stage != "fired_ms",
                               detail={"stats": stats}), section, label)


# -- main --------------------------------------------------------------------------------


def settings_of_run(plan: Plan, rec: Recorder) -> dict[str, Any]:
    """The plan, the worker's slots as the worker reported them, and a sentence saying
    whether this run was at the defaults."""
    runs = rec.sections.get("1 lateness", {}).get("runs", [])
    slots = next((r["worker_slots"] for r in runs if r.get("worker_slots")), None)
    at_defaults = plan.slots is None and not plan.node_args
    described = (("the defaults: " if at_defaults else "NOT the defaults: ")
                 + f"embedded worker slots {slots if slots else '?'}"
                 + (" (EmbeddedWorker's default)" if plan.slots is None else " (--slots)")
                 + ", node options " + (" ".join(plan.node_args) or "none (the daemon's)")
                 + (", section 1 through a leader SIGKILL" if plan.failover else
                    ", section 1 without failover"))
    return {**plan.__dict__, "worker_slots": slots, "at_defaults": at_defaults,
            "described": described}



SECTIONS = ("1", "2", "3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.scheduler_bench", __doc__.splitlines()[0], SECTIONS,
                          "short windows, 2 kills of each signal, one raft run")
    parser.add_argument("--kills", type=int, default=10,
                        help="leader kills of each signal in section 2 (default 10)")
    parser.add_argument("--history", type=int, default=None,
                        help=f"JOB.ADD HISTORY of section 1's jobs, at least {MIN_HISTORY} "
                             "(it must still hold the window when read; default: the "
                             "daemon's)")
    parser.add_argument("--slots", type=int, default=None,
                        help="the embedded worker's slots (default: EmbeddedWorker's default, "
                             "as a user gets it)")
    parser.add_argument("--no-failover", dest="failover", action="store_false",
                        help="section 1 without the SIGKILL of the leader mid-window")
    parser.add_argument("--fire-ahead-ms", type=int, default=None,
                        help="the nodes' --fire-ahead-ms (default: the daemon's)")
    parser.add_argument("--jobs", default="100,1000",
                        help="section 1's job counts, comma-separated (default 100,1000)")
    args = parse_bench_args(parser, argv, SECTIONS)
    try:
        args.jobs = tuple(int(n) for n in args.jobs.split(",") if n.strip())
    except ValueError:
        parser.error("--jobs takes comma-separated integers")
    if args.history is not None and args.history < MIN_HISTORY:
        parser.error(f"--history must be at least {MIN_HISTORY}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rec = Recorder()
    info = machine()
    progress(f"scheduler bench on {info['cpu_count']} cpus ({info['cpu_model']}), python "
             f"{info['python']}, load average {info['loadavg_at_start'][0]:.2f}; "
             f"results to {out}")
    steps = {"1": ("1 firing lateness", section_lateness),
             "2": ("2 failover", section_failover), "3": ("3 raft alone", section_raft)}
    for key in args.sections:
        name, run = steps[key]
        began = time.monotonic()
        progress(f"section {name} ...")
        run(plan, rec)
        progress(f"section {name} done in {time.monotonic() - began:.0f} s")
    info["loadavg_at_end"] = list(os.getloadavg())
    settings = settings_of_run(plan, rec)
    text = table(rec.figures, rec.skipped) + f"\nSettings: {settings['described']}."
    text += (f"\nLoad average {info['loadavg_at_start'][0]:.2f} at start, "
             f"{info['loadavg_at_end'][0]:.2f} at the end ({info['cpu_count']} cpus).")
    print(text, flush=True)
    document = {
        "benchmark": "scheduler", "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "quick": args.quick,
        "plan": plan.__dict__, "settings": settings, "machine": info, "figures": rec.figures,
        "skipped": rec.skipped, "sections": rec.sections, "server_logs": SERVER_LOGS,
        "table": text,
    }
    title = (f"scheduler, {started:%Y-%m-%d %H:%M} UTC, {info['cpu_count']} cpus "
             f"{info['cpu_model']}, python {info['python']}")
    write_results(out, "scheduler", started.strftime("%Y%m%d-%H%M%S"), document,
                  rec.figures, title)
    return exit_status(document)


if __name__ == "__main__":
    sys.exit(main())
