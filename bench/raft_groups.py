"""Benchmark of many Raft groups per process: `.venv/bin/python -m bench.raft_groups [--quick]`.

Real processes: three `tests.raft_groups_demo` nodes on 127.0.0.2-4 (a core.raft.RaftHost
each, every node a member of every group; tests/test_raft_groups_process.py's GroupsCluster)
and, for the single-group figure, three `tests.raft_kv_demo` nodes (one RaftDriver each;
tests/test_raft_driver.py's Cluster). Sections:

1. Idle groups: 1,000 data groups (plus the config group 0) on each of the 3 processes.
   Once every group has a leader all nodes agree on (and, with quiescence, every group is
   quiesced), the CPU each process uses over a window, in % of one core. Measured with
   quiescence on and off when the tree has it. Goal: < 5% per process (with quiescence).
2. Groups under write load: 100 data groups, leadership spread evenly over the 3 nodes;
   every node's BENCH command (n proposals of 100 bytes per group it leads, 10 proposers per
   group: 1,000 in all) started at once on all three. Committed entries/s in total and per
   group, and fsyncs per committed entry (the fsyncs counted by the hosts' status over the
   applied entries they counted, summed over the three processes).
3. One group: the same load (as many 100-byte entries, 1,000 proposers) on the leader of
   three raft_kv_demo nodes, the single-group figure from before (bench.scheduler_bench's
   section 3).

Prints a table (stdout) and progress (stderr); writes JSON and a PNG to --out
(bench/results/). Exits 1 when section 1 misses its goal or could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    figures_text,
    machine,
    median,
    parse_bench_args,
    progress,
    write_results,
)
from bench.idgen_bench import Recorder
from tests.raft_groups_demo import quiesce_supported
from tests.test_raft_driver import wait_until
from tests.test_raft_groups_process import GroupsCluster, GroupsNode

IDLE_GROUPS = 1000
IDLE_CPU_GOAL = 5.0  # % of one core per process
LOAD_GROUPS = 100
ENTRY_BYTES = 100
PROPOSERS = 1000  # in all by default: PROPOSERS // LOAD_GROUPS per group in section 2
START_TIMEOUT_S = 300.0  # opening 1,001 groups on a busy machine
SETTLE_TIMEOUT_S = 300.0  # until every group has an agreed leader (and is quiesced)
QUIET_S = 2.0  # after the groups settled, before the window
PROFILE_S = 5.0  # node 1's event loop profiled after the window (not metered)
PROFILE_TOP = 12
NODE_ARGS = ["--log-level", "WARNING"]
MAX_SINGLE_RETRIES = 3  # section 3's BENCH runs again when the lead moved during it


@dataclass(frozen=True)
class Plan:
    """How long and how often each section measures."""

    idle_groups: int
    idle_window_s: float
    load_groups: int
    entries: int  # per run, in all groups together (section 3: in its one group)
    runs: int
    proposers: int  # in all groups together (section 3: in its one group)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(args.idle_groups, 5.0, args.load_groups, 10_000, 1, args.proposers)
    return Plan(args.idle_groups, 15.0, args.load_groups, 30_000, 3, args.proposers)


def ceiling_figure(section: str, label: str, value: float, unit: str, limit: float,
                   goal: bool, detail: dict[str, Any]) -> Figure:
    """A lower-is-better row: ratio = value / limit; met when value < limit (if `goal`)."""
    figure = Figure(section, label, value, unit, "limit", limit, 1.0 if goal else None,
                    f"< {limit:g} {unit}" if goal else "-", detail=detail)
    figure.met = (value < limit) if goal else None
    return figure


@contextlib.contextmanager
def failures_as_runtime_errors() -> Iterator[None]:
    """Recorder.attempt records RuntimeError/OSError/ValueError as a failed run and goes
    on; a hang (AssertionError of wait_until) becomes one."""
    try:
        yield
    except AssertionError as exc:
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


def _pids(cluster: GroupsCluster) -> list[int]:
    return [n.daemon.proc.pid for n in cluster.nodes.values()  # type: ignore[union-attr]
            ]


def _sum_status(nodes: list[GroupsNode], fields: tuple[str, ...]) -> dict[str, list[int]]:
    statuses = [n.status() for n in nodes]
    return {f: [s[f] for s in statuses] for f in fields}


# -- 1. idle groups ----------------------------------------------------------------------

IDLE_FIELDS = ("frames_sent", "messages_sent", "passes", "readies", "fsyncs", "quiesced",
               "leading", "woken_groups")


def idle_run(plan: Plan, quiesce: bool | None) -> dict[str, Any]:
    """Start 3 nodes of `idle_groups` data groups, let them settle, meter a window."""
    flag = [] if quiesce is None else ["--quiesce" if quiesce else "--no-quiesce"]
    with failures_as_runtime_errors(), tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        cluster = GroupsCluster(Path(tmp), plan.idle_groups, [*flag, *NODE_ARGS])
        began = time.monotonic()
        cluster.start(START_TIMEOUT_S)
        try:
            opened = time.monotonic() - began
            cluster.agreed_leaders(timeout=SETTLE_TIMEOUT_S)
            elected = time.monotonic() - began
            nodes = list(cluster.nodes.values())
            on = nodes[0].status().get("quiesce", False)
            if on:
                total = plan.idle_groups + 1
                wait_until(lambda: all(n.status()["quiesced"] == total for n in nodes),
                           "every group to quiesce", SETTLE_TIMEOUT_S)
            settled = time.monotonic() - began
            time.sleep(QUIET_S)
            before = _sum_status(nodes, IDLE_FIELDS)
            with CpuMeter(_pids(cluster)) as meter:
                time.sleep(plan.idle_window_s)
            after = _sum_status(nodes, IDLE_FIELDS)
            profile = loop_profile(nodes[0], Path(tmp) / "idle.pstats", PROFILE_S)
        finally:
            cluster.stop()
    wall = meter.result["wall_s"]
    rates = {f"{f}_per_s": [(a - b) / wall for a, b in zip(after[f], before[f], strict=True)]
             for f in ("frames_sent", "messages_sent", "passes", "readies", "fsyncs")}
    percent = [100 * c for c in meter.result["server_cores"]]
    progress(f"1 idle, quiesce {'on' if on else 'off'}: CPU per process "
             f"{', '.join(f'{p:.2f}%' for p in percent)}; Raft frames/s (liveness beats not "
             f"counted) "
             f"{', '.join(f'{r:.0f}' for r in rates['frames_sent_per_s'])}; settled in "
             f"{settled:.0f} s; other processes {meter.result['others_cores']:.2f} cores")
    progress("1 node 1's loop, most self time: " + "; ".join(
        f"{row.get('function')} {row.get('self_s')} s" for row in profile[:4]))
    return {"quiesce": on, "cpu_percent": percent, "cpu": meter.result, "rates": rates,
            "status_after": after, "opened_s": opened, "elected_s": elected,
            "settled_s": settled, "node1_loop_profile": profile,
            "command": f"3 x tests.raft_groups_demo --groups {plan.idle_groups} "
                       f"{' '.join(flag + NODE_ARGS)}; CPU over {plan.idle_window_s:.0f} s"}


def loop_profile(node: GroupsNode, path: Path, seconds: float) -> list[dict[str, Any]]:
    """The functions that took the most time on `node`'s event-loop thread (its PROFILE
    command: cProfile, which slows what it watches) over `seconds`, after the window."""
    reply = node.cmd(f"PROFILE {seconds} {path}")[0]
    if not reply.startswith("OK"):
        return [{"error": reply}]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:PROFILE_TOP]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls": calls,
             "self_s": round(tottime, 4), "cumulative_s": round(cumtime, 4)}
            for (file, line, name), (_, calls, tottime, cumtime, _) in rows]


def section_idle(plan: Plan, rec: Recorder) -> None:
    section = "1 idle"
    modes: list[bool | None] = [True, False] if quiesce_supported() else [None]
    for quiesce in modes:
        name = {True: "quiesce on", False: "quiesce off", None: "no quiescence in tree"}
        label = f"{plan.idle_groups:,} groups x 3 processes, {name[quiesce]}: max CPU"
        result = rec.attempt(section, label, partial(idle_run, plan, quiesce))
        goal = quiesce is not False
        rec.add(ceiling_figure(section, label, max(result["cpu_percent"]), "% core",
                               IDLE_CPU_GOAL, goal, detail=result) if result else None,
                section, label)


# -- 2. many groups under load -----------------------------------------------------------

LOAD_FIELDS = ("fsyncs", "applied_entries", "passes", "frames_sent", "messages_sent")


def balance(cluster: GroupsCluster) -> dict[int, int]:
    """Hand leaderships over until each node leads at most ceil(data groups / nodes) data
    groups; return how many each leads (best effort: a refused transfer is left)."""
    nodes = cluster.nodes
    leaders = cluster.agreed_leaders()
    data = {g: lead for g, lead in leaders.items() if g != 0}
    target = math.ceil(len(data) / len(nodes))
    counts = {i: list(data.values()).count(i) for i in nodes}
    moves: dict[int, list[str]] = {i: [] for i in nodes}
    for group, lead in sorted(data.items()):
        if counts[lead] <= target:
            continue
        to = min(counts, key=lambda i: counts[i])
        counts[lead] -= 1
        counts[to] += 1
        moves[lead].append(f"TRANSFER {group} {to}")
    for lead, lines in moves.items():
        if lines:
            nodes[lead].cmd(*lines)
    final = cluster.agreed_leaders()
    return {i: sum(1 for g, lead in final.items() if g != 0 and lead == i) for i in nodes}


def bench_all(nodes: list[GroupsNode], per_group: int, per_group_proposers: int
              ) -> list[list[str]]:
    """Every node's BENCH at once; their replies."""
    line = f"BENCH {per_group} {ENTRY_BYTES} {per_group_proposers}"
    with ThreadPoolExecutor(len(nodes)) as pool:
        replies = list(pool.map(lambda n: n.cmd(line, timeout=600)[0].split(), nodes))
    for reply in replies:
        if reply[:1] != ["BENCH"]:
            raise RuntimeError(f"BENCH failed: {' '.join(reply)}")
    return replies


def load_run(plan: Plan) -> dict[str, Any]:
    """3 nodes of `load_groups` data groups, balanced; `runs` timed BENCH rounds."""
    groups = plan.load_groups
    per_group, proposers = plan.entries // groups, max(1, plan.proposers // groups)
    with failures_as_runtime_errors(), tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        cluster = GroupsCluster(Path(tmp), groups, NODE_ARGS).start(START_TIMEOUT_S)
        try:
            led = balance(cluster)
            nodes = list(cluster.nodes.values())
            bench_all(nodes, max(1, per_group // 10), proposers)  # warm-up
            runs = [_load_round(cluster, nodes, per_group, proposers) for _ in range(plan.runs)]
        finally:
            cluster.stop()
    return {"runs": runs, "led": led,
            "command": f"BENCH {per_group} {ENTRY_BYTES} {proposers} on each of 3 "
                       f"tests.raft_groups_demo --groups {groups} nodes at once"}


def _load_round(cluster: GroupsCluster, nodes: list[GroupsNode], per_group: int,
                proposers: int) -> dict[str, Any]:
    before = _sum_status(nodes, LOAD_FIELDS)
    with CpuMeter(_pids(cluster)) as meter:
        started = time.perf_counter()
        replies = bench_all(nodes, per_group, proposers)
        wall = time.perf_counter() - started
    after = _sum_status(nodes, LOAD_FIELDS)
    delta = {f: [a - b for a, b in zip(after[f], before[f], strict=True)] for f in LOAD_FIELDS}
    entries = sum(int(r[2]) for r in replies)
    groups = sum(int(r[1]) for r in replies)
    result = {"entries": entries, "failed": sum(int(r[4]) for r in replies),
              "groups_led": [int(r[1]) for r in replies],
              "node_seconds": [float(r[3]) for r in replies], "wall_s": wall,
              "entries_per_s": entries / wall, "per_group_per_s": entries / wall / groups,
              "entries_per_cpu_s": per_cpu_s(entries, meter.result),
              "fsyncs_per_entry": sum(delta["fsyncs"]) / max(1, sum(delta["applied_entries"])),
              "delta": delta, "cpu": meter.result}
    progress(f"2 {groups} groups: {result['entries_per_s']:,.0f} entries/s "
             f"({result['per_group_per_s']:,.0f} per group), "
             f"{result['fsyncs_per_entry']:.3f} fsyncs per applied entry, "
             f"{result['failed']} proposals failed (a lead moved); CPU "
             f"{', '.join(f'{c:.2f}' for c in meter.result['server_cores'])} cores")
    return result


def per_cpu_s(entries: int, cpu: dict[str, Any]) -> float:
    """Entries per CPU-second of the three server processes together (steadier than
    entries/s when other processes take CPU)."""
    used = sum(cpu["server_cores"]) * cpu["wall_s"]
    return entries / used if used else 0.0


# -- 3. one group ------------------------------------------------------------------------


def single_run(plan: Plan) -> dict[str, Any]:
    """The same load on one group: three raft_kv_demo nodes, its leader's BENCH."""
    from tests.test_raft_driver import Cluster

    with failures_as_runtime_errors(), tempfile.TemporaryDirectory(prefix="bench-raft-") as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            leader = cluster.leader()
            nodes = list(cluster.nodes.values())
            leader.cmd(f"BENCH {max(1, plan.entries // 10)} {ENTRY_BYTES} {plan.proposers}")
            pids = [n.daemon.proc.pid for n in nodes]  # type: ignore[union-attr]
            runs = []
            failures: list[str] = []
            while len(runs) < plan.runs:
                before = [n.status() for n in nodes]
                with CpuMeter(pids) as meter:
                    reply = leader.cmd(f"BENCH {plan.entries} {ENTRY_BYTES} {plan.proposers}")[0]
                if not reply.startswith("BENCH"):  # the lead moved during the run
                    failures.append(reply)
                    if len(failures) > MAX_SINGLE_RETRIES:
                        raise RuntimeError(f"BENCH failed: {failures}")
                    progress(f"3 one group: {reply}; again on the new leader")
                    leader = cluster.leader()
                    continue
                cluster.converged()
                after = [n.status() for n in nodes]
                fsyncs = sum(a["fsyncs"] - b["fsyncs"] for a, b in zip(after, before,
                                                                       strict=True))
                applied = sum(a["applied_entries"] - b["applied_entries"]
                              for a, b in zip(after, before, strict=True))
                entries, seconds = int(reply.split()[1]), float(reply.split()[2])
                runs.append({"entries": entries, "seconds": seconds, "failures": failures,
                             "entries_per_s": entries / seconds,
                             "entries_per_cpu_s": per_cpu_s(entries, meter.result),
                             "fsyncs_per_entry": fsyncs / max(1, applied), "cpu": meter.result})
                progress(f"3 one group: {entries / seconds:,.0f} entries/s, "
                         f"{runs[-1]['fsyncs_per_entry']:.3f} fsyncs per applied entry")
        finally:
            cluster.stop()
    return {"runs": runs, "command": f"BENCH {plan.entries} {ENTRY_BYTES} {plan.proposers} on the "
                                     "leader of 3 tests.raft_kv_demo nodes"}


# -- figures -----------------------------------------------------------------------------


def load_figures(plan: Plan, rec: Recorder, many: dict[str, Any] | None,
                 one: dict[str, Any] | None) -> None:
    """Section 2's rows beside section 3's (the ratio is many groups / one group)."""
    def med(result: dict[str, Any] | None, key: str) -> float:
        return median([r[key] for r in result["runs"]]) if result else 0.0

    one_rate, one_fsyncs = med(one, "entries_per_s"), med(one, "fsyncs_per_entry")
    one_cpu = med(one, "entries_per_cpu_s")
    if one:
        rec.add(Figure("3 one group", f"{ENTRY_BYTES} B entries, {plan.proposers} proposers",
                       one_rate, "entries/s", "-", one_rate, None, "-", detail=one),
                "3 one group", "entries/s")
        rec.add(Figure("3 one group", "entries per server CPU-s", one_cpu, "entries", "-",
                       one_cpu, None, "-"), "3 one group", "per CPU-s")
        rec.add(Figure("3 one group", "fsyncs per applied entry", one_fsyncs, "", "-",
                       one_fsyncs, None, "-"), "3 one group", "fsyncs")
    if not many:
        return
    section, n = "2 load", plan.load_groups
    rate, per_group = med(many, "entries_per_s"), med(many, "per_group_per_s")
    fsyncs = med(many, "fsyncs_per_entry")
    peer = "1 group" if one else "-"
    rows = [(f"{n} groups: committed entries/s in all", rate, "entries/s", one_rate or rate,
             many),
            (f"{n} groups: committed entries/s per group", per_group, "entries/s",
             one_rate or per_group, {}),
            (f"{n} groups: entries per server CPU-s", med(many, "entries_per_cpu_s"),
             "entries", one_cpu or med(many, "entries_per_cpu_s"), {}),
            (f"{n} groups: fsyncs per applied entry", fsyncs, "", one_fsyncs or fsyncs, {})]
    for label, value, unit, peer_value, detail in rows:
        rec.add(Figure(section, label, value, unit, peer, peer_value, None, "-",
                       detail=detail), section, label)


SECTIONS = ("1", "2", "3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.raft_groups", __doc__.splitlines()[0], SECTIONS,
                          "5 s idle windows, one load run of 10,000 entries")
    parser.add_argument("--idle-groups", type=int, default=IDLE_GROUPS,
                        help=f"data groups per process in section 1 (default {IDLE_GROUPS})")
    parser.add_argument("--load-groups", type=int, default=LOAD_GROUPS,
                        help=f"data groups in section 2 (default {LOAD_GROUPS})")
    parser.add_argument("--proposers", type=int, default=PROPOSERS,
                        help=f"concurrent proposers in sections 2 (spread over the groups) "
                             f"and 3 (default {PROPOSERS})")
    return parse_bench_args(parser, argv, SECTIONS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rec = Recorder()
    info = machine()
    progress(f"raft groups bench on {info['cpu_count']} cpus ({info['cpu_model']}), python "
             f"{info['python']}, load average {info['loadavg_at_start'][0]:.2f}; "
             f"quiescence in tree: {quiesce_supported()}; results to {out}")
    many = one = None
    if "1" in args.sections:
        section_idle(plan, rec)
    if "2" in args.sections:
        many = rec.attempt("2 load", "many groups", partial(load_run, plan))
    if "3" in args.sections:
        one = rec.attempt("3 one group", "one group", partial(single_run, plan))
    load_figures(plan, rec, many, one)
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the timed windows")
    text += (f"\nLoad average {info['loadavg_at_start'][0]:.2f} at start, "
             f"{info['loadavg_at_end'][0]:.2f} at the end ({info['cpu_count']} cpus).")
    print(text, flush=True)
    document = {
        "benchmark": "raft_groups", "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "quick": args.quick,
        "plan": plan.__dict__, "machine": info, "figures": rec.figures,
        "skipped": rec.skipped, "sections": rec.sections, "server_logs": SERVER_LOGS,
        "table": text,
    }
    title = (f"raft groups, {started:%Y-%m-%d %H:%M} UTC, {info['cpu_count']} cpus "
             f"{info['cpu_model']}, python {info['python']}")
    write_results(out, "raft_groups", started.strftime("%Y%m%d-%H%M%S"), document,
                  rec.figures, title)
    return exit_status(document)


if __name__ == "__main__":
    sys.exit(main())
