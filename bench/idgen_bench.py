"""Side-by-side benchmark of idgen: `make bench` or `.venv/bin/python -m bench.idgen_bench`.

Every figure is a ratio measured in this run on this machine, against the real peer
(redis-server's INCR) or the theoretical limit (4096 ids per ms = 4,096,000 ids/s for one
Snowflake worker). Sections:

1. In-process generator: `Sequencer.fill` and `next_one`, compiled and pure twin, vs the
   ceiling (goal: native >= 0.95).
2. redis-benchmark: `NEXT` to idgen vs `INCR bench:key` to redis-server, same command
   line, pipeline 1 and 16, interleaved rounds, medians (goals 1.0x and 0.5x).
3. `NEXT 1000` batches from one client process: a raw pipelining socket (goal 0.9 of the
   ceiling) and redis-py for reference.
4. The prefetching client `IdgenClient(servers, prefetch=P).next_id()` against 1 and 3
   servers (goal > 1,000,000 calls/s).
5. Distinct pipelined requests: one raw socket keeping cycles of `NEXT`, `NEXT 2`, `PING`,
   `NEXT 1`, `NEXT 3`, `NEXT 7` in flight (no two neighbours alike, so the server cannot
   answer a run of them in one batch) vs `INCR`/`INCRBY n`/`PING` to redis-server,
   interleaved rounds, medians (goal >= 0.5x, as pipelined NEXT). Every reply is checked,
   every id unique across the run and the runs of one server, the server's count of ids
   issued equal to what the client received.

Each section checks what it received (ids unique and increasing where they must be, counts
served equal to counts asked); a failed check fails the run, which is then reported as not
measured. The command exits 1 when a goal is missed or a figure could not be measured.

Prints a table (stdout) and progress (stderr); writes JSON with every raw number, the
machine and the commands, and a PNG plot of the ratios, to --out (default bench/results/).
`--profile` adds, after the measured runs, one py-spy profile of each loaded server (not
counted in the figures). Load generators run in fresh child processes (bench.idgen_loads).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    SERVER_LOGS,
    CpuMeter,
    Figure,
    ServerProcess,
    Skipped,
    bench_parser,
    exit_status,
    figures_text,
    idgen_server,
    machine,
    median,
    parse_bench_args,
    profile_under_load,
    progress,
    redis_server,
    write_results,
)
from bench.idgen_loads import CEILING_IDS_PER_S
from bench.idgen_mixed import section_mixed
from bench.recorder import Recorder, _child_env, _cpu_note, load_command, run_load

CLIENTS = 50
BATCH = 1000
PROFILE_SECONDS = 5
PREFETCH_GOAL_PER_S = 1_000_000


@dataclass(frozen=True)
class Plan:
    """How long and how often each section measures."""

    inproc_seconds: float
    inproc_runs: int
    rb_requests: dict[int, int]  # pipeline -> redis-benchmark -n
    rb_rounds: int
    batch_seconds: float
    batch_runs: int
    batch_depth: int
    redispy_seconds: float
    prefetch: int
    prefetch_seconds: float
    prefetch_runs: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(0.5, 1, {1: 40_000, 16: 400_000}, 1, 1.0, 1, args.depth, 1.0,
                    args.prefetch, 1.0, 1)
    return Plan(2.0, 3, {1: 200_000, 16: 2_000_000}, args.rounds, 3.0, 3, args.depth, 2.0,
                args.prefetch, 2.0, 3)


# -- 1. in-process generator -------------------------------------------------------------


def section_inproc(plan: Plan, rec: Recorder) -> None:
    section = "1 in-process"
    for impl in ("native", "pure"):
        for kind in ("fill", "next_one"):
            rates = []
            shares = []
            for run in range(plan.inproc_runs):
                label = f"1 {impl} {kind} run {run + 1}/{plan.inproc_runs}"
                result = rec.attempt(section, label, partial(
                    run_load, kind, [], impl=impl, seconds=plan.inproc_seconds))
                if result is None:
                    continue
                rates.append(result["ids_per_s"])
                shares.append(result["cpu_seconds"] / result["seconds"])
                extra = ""
                if "missing_ms" in result:
                    extra = f", {result['missing_ms']} of {result['span_ms']} ms without ids"
                progress(
                    f"{label}: {result['ids_per_s']:,.0f} ids/s, cpu {result['cpu_seconds']:.2f}"
                    f" s of {result['seconds']:.2f} s{extra}; {_cpu_note(result['cpu'])}"
                )
            goal = 0.95 if impl == "native" else None
            figure = Figure(
                section, f"{impl} {kind}", median(rates), "ids/s", "ceiling", CEILING_IDS_PER_S,
                goal, ">= 0.95" if goal else "-",
                detail={"ids_per_s": rates, "cpu_share": shares},
            ) if rates else None
            rec.add(figure, section, f"{impl} {kind}")


# -- 2. redis-benchmark ------------------------------------------------------------------


def parse_benchmark_csv(text: str) -> float:
    """requests/s from `redis-benchmark -q --csv` (a "test","rps",... header, then a row)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1 or "rps" not in rows[0]:
        raise ValueError(f"unexpected redis-benchmark output: {text!r}")
    return float(rows[0]["rps"])


def benchmark_command(server: ServerProcess, requests: int, pipeline: int,
                      command: list[str]) -> list[str]:
    return [
        "redis-benchmark", "-h", server.host, "-p", str(server.port), "-c", str(CLIENTS),
        "-n", str(requests), "-P", str(pipeline), "-q", "--csv", *command,
    ]


def _served(server: ServerProcess, is_redis: bool) -> int:
    """Commands the server has answered so far: the INCR counter, or idgen's ids_issued."""
    if is_redis:
        value = server.call("GET", "bench:key")
        return int(value) if value is not None else 0  # type: ignore[call-overload]
    return int(server.info()["ids_issued"])


def run_redis_benchmark(server: ServerProcess, is_redis: bool, requests: int,
                        pipeline: int) -> dict[str, Any]:
    command = ["INCR", "bench:key"] if is_redis else ["NEXT"]
    argv = benchmark_command(server, requests, pipeline, command)
    before = _served(server, is_redis)
    with CpuMeter([server.pid]) as meter:
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {proc.stderr[-2000:]}")
    served = _served(server, is_redis) - before
    if served != requests:
        raise RuntimeError(f"{server.name} answered {served} of {requests} {command[0]}")
    cpu = meter.result
    return {
        "server": "redis" if is_redis else "idgen", "pipeline": pipeline, "requests": requests,
        "rps": parse_benchmark_csv(proc.stdout), "csv": proc.stdout.strip(),
        "server_cpu_us_per_request": cpu["server_cores"][0] * cpu["wall_s"] / requests * 1e6,
        "cpu": cpu, "command": shlex.join(argv),
    }


def section_redis_benchmark(plan: Plan, rec: Recorder, profile_dir: Path | None) -> None:
    section = "2 redis-benchmark"
    goals = {1: 1.0, 16: 0.5}
    with redis_server() as redis, idgen_server(1) as idgen:
        progress(f"2 started {idgen.name} and {redis.name}")
        for pipeline, requests in plan.rb_requests.items():
            rates: dict[str, list[float]] = {"idgen": [], "redis": []}
            cost: dict[str, list[float]] = {"idgen": [], "redis": []}
            for round_ in range(plan.rb_rounds):
                for server, is_redis in ((idgen, False), (redis, True)):
                    name = "redis" if is_redis else "idgen"
                    label = f"2 -P {pipeline} round {round_ + 1}/{plan.rb_rounds} {name}"
                    result = rec.attempt(section, label, partial(
                        run_redis_benchmark, server, is_redis, requests, pipeline))
                    if result is None:
                        continue
                    result["round"] = round_ + 1
                    rates[name].append(result["rps"])
                    cost[name].append(result["server_cpu_us_per_request"])
                    progress(f"{label}: {result['rps']:,.0f} req/s, server "
                             f"{result['server_cpu_us_per_request']:.2f} CPU us/request; "
                             f"{_cpu_note(result['cpu'])}")
            goal = goals[pipeline]
            label = f"NEXT -c {CLIENTS} -P {pipeline}"
            figure = Figure(
                section, label, median(rates["idgen"]), "req/s", "redis INCR",
                median(rates["redis"]), goal, f">= {goal}x",
                detail={
                    "idgen_rps": rates["idgen"], "redis_rps": rates["redis"],
                    "idgen_server_cpu_us_per_request": cost["idgen"],
                    "redis_server_cpu_us_per_request": cost["redis"],
                },
            ) if rates["idgen"] and rates["redis"] else None
            rec.add(figure, section, label)
            # The same comparison per CPU second of the server: steadier than req/s when
            # other work shares the machine.
            label = f"NEXT -P {pipeline} per server CPU-s"
            figure = Figure(
                section, label, 1e6 / median(cost["idgen"]), "req/CPU-s", "redis INCR",
                1e6 / median(cost["redis"]), None, "-",
                detail={"idgen_us_per_request": median(cost["idgen"]),
                        "redis_us_per_request": median(cost["redis"])},
            ) if cost["idgen"] and cost["redis"] else None
            rec.add(figure, section, label)
        if profile_dir is not None:
            for pipeline, requests in plan.rb_requests.items():
                argv = benchmark_command(idgen, requests * 4, pipeline, ["NEXT"])
                profile_server(rec, idgen, f"redis-benchmark NEXT -P {pipeline}", profile_dir,
                               argv)


# -- 3. NEXT 1000 batches ----------------------------------------------------------------


def section_batches(plan: Plan, rec: Recorder, profile_dir: Path | None) -> None:
    section = "3 NEXT 1000"
    with idgen_server(1) as idgen:
        progress(f"3 started {idgen.name}")
        rates = []
        for run in range(plan.batch_runs):
            label = f"3 raw socket depth {plan.batch_depth} run {run + 1}/{plan.batch_runs}"
            result = rec.attempt(section, label, partial(
                run_load, "batch", [idgen], host=idgen.host, port=idgen.port, batch=BATCH,
                depth=plan.batch_depth, seconds=plan.batch_seconds))
            if result is not None:
                rates.append(result["ids_per_s"])
                result.update(_cpu_per_batch(result))
                progress(f"{label}: {result['ids_per_s']:,.0f} ids/s, CPU us per {BATCH} ids: "
                         f"server {result['server_cpu_us_per_batch']:.0f}, client "
                         f"{result['client_cpu_us_per_batch']:.0f}; {_cpu_note(result['cpu'])}")
        label = f"raw socket, {plan.batch_depth} in flight"
        rec.add(Figure(
            section, label, median(rates), "ids/s", "ceiling", CEILING_IDS_PER_S, 0.9, ">= 0.9",
            detail={"ids_per_s": rates},
        ) if rates else None, section, label)
        runs = [r for r in rec.section(section)["runs"] if "server_cpu_us_per_batch" in r]
        for role in ("server", "client"):
            # What one core would sustain for that side alone: the headroom over the ceiling.
            label = f"raw socket, ids per {role} CPU-s"
            costs = [r[f"{role}_cpu_us_per_batch"] for r in runs]
            rec.add(Figure(
                section, label, BATCH * 1e6 / median(costs), "ids/CPU-s", "ceiling",
                CEILING_IDS_PER_S, None, "-", detail={f"{role}_cpu_us_per_batch": costs},
            ) if costs else None, section, label)
        label = "redis-py, 1 in flight"
        result = rec.attempt(section, f"3 {label}", partial(
            run_load, "redispy", [idgen], host=idgen.host, port=idgen.port, batch=BATCH,
            seconds=plan.redispy_seconds))
        if result is not None:
            progress(f"3 {label}: {result['ids_per_s']:,.0f} ids/s; {_cpu_note(result['cpu'])}")
        rec.add(Figure(
            section, label, result["ids_per_s"], "ids/s", "ceiling", CEILING_IDS_PER_S, None,
            "-", detail={"redis_py": result["redis_py"]},
        ) if result else None, section, label)
        if profile_dir is not None:
            argv = load_command("batch", host=idgen.host, port=idgen.port, batch=BATCH,
                                depth=plan.batch_depth, seconds=PROFILE_SECONDS + 2.0)
            profile_server(rec, idgen, "NEXT 1000 raw socket", profile_dir, argv)


def _cpu_per_batch(result: dict[str, Any]) -> dict[str, float]:
    """Server and client CPU microseconds per BATCH ids over the timed window."""
    cpu = result["cpu"]
    batches = result["ids"] / BATCH
    return {
        "server_cpu_us_per_batch": cpu["server_cores"][0] * cpu["wall_s"] / batches * 1e6,
        "client_cpu_us_per_batch": result["cpu_seconds"] / batches * 1e6,
    }


# -- 4. the prefetching client -----------------------------------------------------------


def prefetch_client_missing() -> str | None:
    """Why section 4 cannot run, or None when idgen.client.IdgenClient is there."""
    try:
        from idgen import client
    except ImportError as exc:
        return f"idgen.client cannot be imported ({exc})"
    if not hasattr(client, "IdgenClient"):
        return "idgen.client has no IdgenClient"
    return None


def section_prefetch(plan: Plan, rec: Recorder, profile_dir: Path | None) -> None:
    missing = prefetch_client_missing()
    if missing is not None:
        for count in (1, 3):
            rec.skipped.append(Skipped("4 prefetch client", f"{count} server(s)", missing))
        progress(f"4 skipped: {missing}")
        return
    section = "4 prefetch client"
    for count in (1, 3):
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(idgen_server(worker, host=f"127.0.0.{worker}"))
                for worker in range(1, count + 1)
            ]
            addresses = [s.address for s in servers]
            progress(f"4 started {', '.join(s.name for s in servers)}")
            rates = []
            for run in range(plan.prefetch_runs):
                label = (f"4 {count} server(s) prefetch={plan.prefetch} run {run + 1}/"
                         f"{plan.prefetch_runs}")
                issued_before = sum(int(s.info()["ids_issued"]) for s in servers)
                result = rec.attempt(section, label, partial(
                    run_load, "prefetch", servers, servers=addresses, prefetch=plan.prefetch,
                    seconds=plan.prefetch_seconds))
                if result is None:
                    continue
                issued = sum(int(s.info()["ids_issued"]) for s in servers) - issued_before
                result["ids_issued_by_servers"] = issued
                rates.append(result["calls_per_s"])
                progress(f"{label}: {result['calls_per_s']:,.0f} next_id/s; "
                         f"{_cpu_note(result['cpu'])}")
            limit = CEILING_IDS_PER_S * count
            label = f"next_id(), {count} server(s), prefetch={plan.prefetch}"
            rec.add(Figure(
                section, label, median(rates), "calls/s",
                f"ceiling x{count}" if count > 1 else "ceiling", limit,
                PREFETCH_GOAL_PER_S / limit, f"> {PREFETCH_GOAL_PER_S:,}/s",
                detail={"calls_per_s": rates},
            ) if rates else None, section, label)
            if profile_dir is not None and count == 1:
                argv = load_command("prefetch", servers=addresses, prefetch=plan.prefetch,
                                    seconds=PROFILE_SECONDS + 2.0)
                profile_server(rec, servers[0], "prefetch client, 1 server", profile_dir,
                               argv, profile_client=True)


# -- profiles ----------------------------------------------------------------------------


def profile_server(rec: Recorder, server: ServerProcess, name: str, out: Path,
                   load_argv: list[str], profile_client: bool = False) -> None:
    """Run `load_argv` against the server (not measured) and record the server (and the
    load's process, with `profile_client`) with py-spy for PROFILE_SECONDS."""
    load = subprocess.Popen(load_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=_child_env())
    targets = [("server", server.pid)] + ([("client", load.pid)] if profile_client else [])
    # 1 s: past start-up and connection set-up
    profile_under_load(rec.profiles, name, load, 1.0, targets, out, "profile-", PROFILE_SECONDS)


# -- main --------------------------------------------------------------------------------


SECTIONS = ("1", "2", "3", "4", "5")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.idgen_bench", __doc__.splitlines()[0], SECTIONS,
                          "short runs, one round each")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved redis-benchmark rounds (default 3; --quick: 1)")
    parser.add_argument("--depth", type=int, default=4,
                        help="NEXT 1000 requests in flight for the raw socket client")
    parser.add_argument("--prefetch", type=int, default=10_000, help="IdgenClient prefetch")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, py-spy profile each loaded server into --out")
    args = parse_bench_args(parser, argv, SECTIONS)
    return args


@contextlib.contextmanager
def _timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    progress(f"section {name} ...")
    yield
    progress(f"section {name} done in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    rec = Recorder()
    info = machine()
    progress(f"idgen bench on {info['cpu_count']} cpus ({info['cpu_model']}), python "
             f"{info['python']}, {info['redis_server'].split(' sha=')[0]}, load average "
             f"{info['loadavg_at_start'][0]:.2f}; results to {out}")
    profile_dir = out if args.profile else None
    if "1" in args.sections:
        with _timed("1 in-process generator"):
            section_inproc(plan, rec)
    if "2" in args.sections:
        with _timed("2 redis-benchmark NEXT vs INCR"):
            section_redis_benchmark(plan, rec, profile_dir)
    if "3" in args.sections:
        with _timed("3 NEXT 1000 batches"):
            section_batches(plan, rec, profile_dir)
    if "4" in args.sections:
        with _timed("4 prefetching client"):
            section_prefetch(plan, rec, profile_dir)
    if "5" in args.sections:
        with _timed("5 distinct pipelined requests"):
            section_mixed(plan.rb_rounds, plan.batch_seconds, rec)
    finished = datetime.now(UTC)
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the timed windows")
    print(text, flush=True)
    document = {
        "benchmark": "idgen",
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": info,
        "ceiling_ids_per_s": CEILING_IDS_PER_S,
        "figures": rec.figures,
        "skipped": rec.skipped,
        "sections": rec.sections,
        "profiles": rec.profiles,
        "server_logs": SERVER_LOGS,
        "table": text,
    }
    title = (f"idgen, {started:%Y-%m-%d %H:%M} UTC, {info['cpu_count']} cpus "
                 f"{info['cpu_model']}, python {info['python']}")
    write_results(out, "idgen", stamp, document, rec.figures, title)
    return exit_status(document)


if __name__ == "__main__":
    sys.exit(main())
