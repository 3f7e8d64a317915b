"""kvcache beside memcached on what clients actually send:
`.venv/bin/python -m bench.kvcache_workloads`.

Every workload runs against kvcache and memcached 1.6 started in the same run with the same
flags (bench.kvcache_bench's servers: `-p PORT -l 127.0.0.1 -m MB -t 1 -U 0`, plus `-u root`
as root), in interleaved rounds (round 1 kvcache first, round 2 memcached first, ...); a
workload's ratio is the median of its per-round ratios, goal >= 0.9x. Workloads (WORKLOADS):
pipelined multi-get of 100 keys; `noreply` sets; meta commands (`mg KEY v f t c`,
`ms KEY S T0 F<flags>`); `incr`/`decr`; get/set 9:1 with values of 1 KiB, 10 KiB and 100 KiB;
a working set 4x the memory limit (cache-aside: a miss is followed by a set; hit ratio and
evictions beside memcached's); 1,000 concurrent connections. Then RSS of both servers holding
the same items (goal kvcache <= 1.1x memcached).

The load is bench.kvcache_workload_client (memcaslap cannot send meta commands, incr/decr or
noreply, nor check what it reads): forked asyncio workers on raw sockets, pipelined, that
check every reply (see that module). A round with any error is reported as failed (kept in
the JSON, its workload's goal counted as missed), never dropped. The workers' own CPU is
measured: a round whose busiest worker used over CLIENT_BOUND_CORES of a core is marked
client-bound (the figure then says more about the client than the server), and one whose
client used more CPU than the server is marked client-heavier (on a machine whose cores are
taken by others, the client's share is then the tighter limit).

Prints a table (stdout) and progress (stderr); writes kvcache_workloads.json and a PNG to
--out (bench/results/) through bench.common.write_results; exits 1 when a goal is missed,
a round failed or a figure could not be measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import kvcache_workload_client as wc
from bench.common import (
    SERVER_LOGS,
    CpuMeter,
    Figure,
    bench_parser,
    exit_status,
    figures_text,
    machine,
    median,
    progress,
    pyspy_record,
    summarise_profile,
    uptime,
    write_results,
)
from bench.kvcache_bench import (
    MB,
    AtMost,
    McServer,
    _common_flags,
    _version,
    kvcache_server,
    memcached_server,
)
from bench.recorder import Recorder

GOAL = 0.9
RSS_GOAL = 1.1
LOAD_MB = 1024  # nothing is evicted in the main pair's workloads
EVICT_MB = 32
EVICT_VALUE = 1024
CLIENT_BOUND_CORES = 0.85
NAME = "kvcache_workloads"
PROFILE_SECONDS = 5


@dataclass(frozen=True)
class Workload:
    """A workload: its client spec, its unit, and whether its keys are preloaded (with the
    key index as client flags when `flags`)."""

    name: str
    label: str
    unit: str
    spec: wc.Spec
    preload: bool = True
    flags: bool = False


def _spec(kind: str, prefix: bytes, keys: int, size: int, depth: int, conns: int,
          **extra: Any) -> wc.Spec:
    return wc.Spec(kind, prefix, keys, size, depth, conns, **extra)


WORKLOADS: tuple[Workload, ...] = (
    Workload("multiget", "get of 100 keys, 4 pipelined, 8 conns", "keys/s",
             _spec("multiget", b"mget:", 10_000, 100, 4, 8)),
    Workload("noreply", "set noreply x100 + mn, 8 conns", "sets/s",
             _spec("noreply", b"nr:", 200, 100, 100, 8), preload=False),
    Workload("meta", "mg v f t c / ms S T F 9:1, 16 pipelined", "ops/s",
             _spec("meta", b"meta:", 10_000, 100, 16, 16), flags=True),
    Workload("incr_decr", "incr/decr 1:1, 16 pipelined", "ops/s",
             _spec("counters", b"ctr:", 16, wc.MIN_VALUE_BYTES, 16, 16), preload=False),
    Workload("value_1k", "get/set 9:1, 1 KiB values", "ops/s",
             _spec("getset", b"v1k:", 10_000, 1024, 8, 16)),
    Workload("value_10k", "get/set 9:1, 10 KiB values", "ops/s",
             _spec("getset", b"v10k:", 2_000, 10 * 1024, 4, 16)),
    Workload("value_100k", "get/set 9:1, 100 KiB values", "ops/s",
             _spec("getset", b"v100k:", 400, 100 * 1024, 2, 16)),
    Workload("conns_1000", "get/set 9:1, 1,000 connections", "ops/s",
             _spec("getset", b"c1k:", 10_000, 100, 1, 1000)),
    Workload("evict_4x", f"cache-aside, working set 4x -m {EVICT_MB}", "ops/s",
             _spec("getset", b"ev:", 4 * EVICT_MB * MB // EVICT_VALUE, EVICT_VALUE, 8, 16,
                   skew=True)),
)
NAMES = tuple(w.name for w in WORKLOADS)


@dataclass(frozen=True)
class Plan:
    """How long and how often: `seconds` per run, `rounds` interleaved, `procs` client
    workers, `scale` of each keyspace (quick runs preload less)."""

    seconds: float
    rounds: int
    procs: int
    scale: float


def scaled(workload: Workload, plan: Plan) -> Workload:
    """The workload with its preloaded keyspace scaled by plan.scale (not the skewed
    eviction workload's: its keyspace is what makes it 4x the limit; its preload overfills
    the cache, so every round starts from a full one)."""
    if not workload.preload or workload.spec.skew:
        return workload
    keys = max(200, int(workload.spec.keys * plan.scale))
    return replace(workload, spec=replace(workload.spec, keys=keys))


# -- one run -----------------------------------------------------------------------------


def _counters(server: McServer) -> dict[str, int]:
    fields = server.stats()
    return {k: int(fields.get(k, 0)) for k in ("get_hits", "get_misses", "evictions",
                                               "curr_items", "cmd_get", "cmd_set")}


def run_side(server: McServer, workload: Workload, plan: Plan, seed: int) -> dict[str, Any]:
    """One window of `workload` against `server`: rates, the client's verdict, CPU."""
    meter = CpuMeter([server.pid])
    before = _counters(server)
    tallies = wc.run_workers(workload.spec, server.host, server.port, plan.seconds,
                             plan.procs, seed, meter.begin, meter.end)
    after = _counters(server)
    client_s = sum(t["cpu_s"] for t in tallies)
    meter.add_client(client_s)
    total = {k: sum(t[k] for t in tallies) for k in ("ops", "gets", "hits", "misses",
                                                     "sets", "errors")}
    wall = meter.result["wall_s"]
    server_s = meter.result["server_cores"][0] * wall
    busiest = max(t["cpu_s"] / t["wall_s"] for t in tallies if t["wall_s"])
    return {
        "command": f"{workload.name} {asdict(workload.spec)} against {shlex.join(server.argv)}",
        "server": server.name, **total,
        "ops_per_s": total["ops"] / wall if wall else 0.0,
        "ops_per_server_cpu_s": total["ops"] / server_s if server_s else 0.0,
        "hit_ratio": total["hits"] / total["gets"] if total["gets"] else None,
        "first_errors": [e for t in tallies for e in t["first_errors"]][:wc.MAX_ERRORS_KEPT],
        "failed": total["errors"] > 0,
        "server_delta": {k: after[k] - before[k] for k in after},
        "curr_items": after["curr_items"],
        "evictions": after["evictions"] - before["evictions"],
        "busiest_worker_cores": busiest,
        "client_bound": busiest >= CLIENT_BOUND_CORES,
        "client_heavier": meter.result["client_cores"] > meter.result["server_cores"][0],
        "cpu": meter.result,
    }


def _say(label: str, r: dict[str, Any]) -> None:
    hit = "" if r["hit_ratio"] is None else f", hit ratio {r['hit_ratio']:.3f}"
    bound = (", CLIENT-BOUND" if r["client_bound"] else
             ", client used more CPU than the server" if r["client_heavier"] else "")
    verdict = f"FAILED ({r['errors']} errors: {r['first_errors'][:1]})" if r["failed"] else "ok"
    progress(f"{label}: {r['ops_per_s']:,.0f}/s{hit}, server "
             f"{r['cpu']['server_cores'][0]:.2f} cores, client {r['cpu']['client_cores']:.2f} "
             f"(busiest worker {r['busiest_worker_cores']:.2f}){bound}; {verdict}")


def rounds(rec: Recorder, workload: Workload, plan: Plan, kv: McServer, mc: McServer
           ) -> dict[str, list[dict[str, Any]]]:
    """`plan.rounds` interleaved rounds; each side's results, failed ones included."""
    sides: dict[str, list[dict[str, Any]]] = {"kvcache": [], "memcached": []}
    section = rec.section(workload.name)
    for index in range(plan.rounds):
        order = [("kvcache", kv), ("memcached", mc)]
        for name, server in order if index % 2 == 0 else order[::-1]:
            label = f"{workload.name} round {index + 1}/{plan.rounds} {name}"
            try:
                result = run_side(server, workload, plan, seed=index + 1)
            except (RuntimeError, OSError) as exc:
                result = {"failed": True, "errors": 1, "first_errors": [str(exc)[-500:]],
                          "ops_per_s": 0.0, "hit_ratio": None, "command": workload.name}
                progress(f"{label}: FAILED: {exc}")
            else:
                _say(label, result)
            result.update(round=index + 1, side=name)
            section["runs"].append(result)
            section["commands"].append(result["command"])
            if result["failed"]:
                section["failures"].append({"label": label, "error": result["first_errors"]})
            sides[name].append(result)
    return sides


# -- figures -----------------------------------------------------------------------------


def _marked(sides: dict[str, list[dict[str, Any]]], flag: str) -> list[str]:
    return [f"{r['side']} {r['round']}" for runs in sides.values() for r in runs if r.get(flag)]


def _ratio_figure(section: str, label: str, unit: str, sides: dict[str, list[dict[str, Any]]],
                  key: str, goal: float | None) -> Figure | None:
    """Medians of `key` per side; the ratio is the median of the per-round ratios of rounds
    where both sides succeeded; any failed round makes the goal missed."""
    pairs = [(a, b) for a, b in zip(sides["kvcache"], sides["memcached"], strict=True)
             if not a["failed"] and not b["failed"] and a.get(key) and b.get(key)]
    if not pairs:
        return None
    figure = Figure(section, label, median([a[key] for a, _ in pairs]), unit, "memcached",
                    median([b[key] for _, b in pairs]), goal,
                    f">= {goal}x" if goal is not None else "-", detail={
                        "per_round_ratio": [a[key] / b[key] for a, b in pairs],
                        "kvcache": [a[key] for a, _ in pairs],
                        "memcached": [b[key] for _, b in pairs],
                        "failed_rounds": [r["round"] for s in sides.values() for r in s
                                          if r["failed"]],
                        "client_bound_rounds": _marked(sides, "client_bound"),
                        "client_heavier_rounds": _marked(sides, "client_heavier")})
    figure.ratio = median(figure.detail["per_round_ratio"])
    if goal is not None:
        figure.met = figure.ratio >= goal and not figure.detail["failed_rounds"]
    return figure


def add_figures(rec: Recorder, workload: Workload, sides: dict[str, list[dict[str, Any]]]
                ) -> None:
    rec.add(_ratio_figure(workload.name, workload.label, workload.unit, sides, "ops_per_s",
                          GOAL), workload.name, workload.label)
    label = f"{workload.label}, per server CPU-s"
    rec.add(_ratio_figure(workload.name, label, f"{workload.unit[:-2]}/CPU-s", sides,
                          "ops_per_server_cpu_s", None), workload.name, label)
    if workload.spec.skew:
        label = "hit ratio (informational)"
        rec.add(_ratio_figure(workload.name, label, "hits/gets", sides, "hit_ratio", None),
                workload.name, label)
        label = "evictions per run (informational)"
        rec.add(_ratio_figure(workload.name, label, "items", sides, "evictions", None),
                workload.name, label)


def rss_figure(rec: Recorder, kv: McServer, mc: McServer, names: list[str],
               baseline: dict[str, int]) -> None:
    """RSS of both servers, which now hold the same items (same keys, same sizes); and,
    informational, the growth over each one's RSS right after its start."""
    kv_stats, mc_stats = _counters(kv), _counters(mc)
    label = "RSS holding the same items"
    rec.section("rss")["runs"].append({"kvcache_rss": kv.rss(), "memcached_rss": mc.rss(),
                                       "kvcache_items": kv_stats["curr_items"],
                                       "memcached_items": mc_stats["curr_items"],
                                       "workloads": names})
    progress(f"rss: kvcache {kv.rss() / MB:.1f} MB ({kv_stats['curr_items']:,} items), "
             f"memcached {mc.rss() / MB:.1f} MB ({mc_stats['curr_items']:,} items)")
    rec.add(AtMost("rss", label, kv.rss() / MB, "MB", "memcached", mc.rss() / MB, RSS_GOAL,
                   f"<= {RSS_GOAL}x", detail={"items": [kv_stats["curr_items"],
                                                        mc_stats["curr_items"]]}),
            "rss", label)
    label = "RSS over the RSS at start (informational)"
    rec.add(AtMost("rss", label, (kv.rss() - baseline["kvcache"]) / MB, "MB", "memcached",
                   (mc.rss() - baseline["memcached"]) / MB, None, "-",
                   detail={"baseline_rss": baseline}), "rss", label)


# -- profiles ----------------------------------------------------------------------------


def profile_workload(rec: Recorder, kv: McServer, workload: Workload, plan: Plan,
                     out: Path) -> None:
    """py-spy on kvcache for PROFILE_SECONDS under `workload` (not measured); the raw
    profile goes to `out`, its summary to rec.profiles[workload.name]."""
    path = out / f"kvcache-workloads-profile-{workload.name}.txt"
    spies: list[subprocess.Popen[bytes]] = []
    wc.run_workers(workload.spec, kv.host, kv.port, PROFILE_SECONDS + 1.0, plan.procs, 99,
                   lambda: spies.append(pyspy_record(kv.pid, PROFILE_SECONDS, path)),
                   lambda: None)
    _, err = spies[0].communicate(timeout=PROFILE_SECONDS + 60)
    if spies[0].returncode != 0 or not path.exists():
        progress(f"profile {workload.name}: py-spy failed: {err.decode(errors='replace')[-300:]}")
        return
    summary = summarise_profile(path)
    rec.profiles[workload.name] = {"file": str(path), **summary}
    top = ", ".join(f"{frame} {share:.0%}" for frame, share in summary["self"][:3])
    progress(f"profile {workload.name}: {path.name}; top self: {top}")


# -- sections ----------------------------------------------------------------------------


def run_pair(rec: Recorder, plan: Plan, chosen: list[Workload], megabytes: int,
             with_rss: bool, profile_dir: Path | None) -> None:
    """Start kvcache and memcached at -m `megabytes`, preload, run `chosen` in turn (each
    then profiled when `profile_dir` is given)."""
    with kvcache_server(megabytes) as kv, memcached_server(megabytes) as mc:
        progress(f"started {kv.name} and {mc.name}")
        baseline = {"kvcache": kv.rss(), "memcached": mc.rss()}
        for workload in chosen:
            if workload.preload:
                for server in (kv, mc):
                    wc.preload(server.host, server.port, workload.spec, flags_of_index=
                               workload.flags)
                progress(f"{workload.name}: preloaded {workload.spec.keys:,} keys of "
                         f"{workload.spec.value_size:,} B on both")
            add_figures(rec, workload, rounds(rec, workload, plan, kv, mc))
            if profile_dir is not None:
                profile_workload(rec, kv, workload, plan, profile_dir)
        if with_rss:
            rss_figure(rec, kv, mc, [w.name for w in chosen], baseline)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.kvcache_workloads", __doc__.splitlines()[0], NAMES,
                          "one 2 s round, smaller keyspaces (~1 min)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds of each run (default 5)")
    parser.add_argument("--procs", type=int, default=2,
                        help="client worker processes (default 2)")
    parser.add_argument("--profile", action="store_true",
                        help="after each workload's rounds, py-spy kvcache under it")
    parser.add_argument("--workloads", dest="sections_alias", default=None,
                        help="the same as --sections")
    args = parser.parse_args(argv)
    if args.sections_alias:
        args.sections = args.sections_alias
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not chosen or any(s not in NAMES for s in chosen):
        parser.error(f"--sections takes a comma-separated subset of {','.join(NAMES)}")
    if args.rounds < 1 or args.seconds <= 0 or args.procs < 1:
        parser.error("--rounds and --procs take at least 1, --seconds more than 0")
    args.sections = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = (Plan(2.0, 1, args.procs, 0.1) if args.quick
            else Plan(args.seconds, args.rounds, args.procs, 1.0))
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rec = Recorder()
    info = machine()
    info["memcached"] = _version(["memcached", "-V"])
    info["uptime_at_start"] = uptime()
    progress(f"kvcache workloads on {info['cpu_count']} cpus, {info['memcached']}, "
             f"{info['uptime_at_start']}")
    profile_dir = args.out if args.profile else None
    chosen = [scaled(w, plan) for w in WORKLOADS if w.name in args.sections]
    main_pair = [w for w in chosen if w.name != "evict_4x"]
    if main_pair:
        run_pair(rec, plan, main_pair, LOAD_MB, True, profile_dir)
    if len(main_pair) < len(chosen):
        run_pair(rec, plan, [w for w in chosen if w.name == "evict_4x"], EVICT_MB, False,
                 profile_dir)
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the rounds")
    print(text, flush=True)
    document = {
        "benchmark": NAME, "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "quick": args.quick,
        "plan": {**asdict(plan), "workloads": args.sections},
        "workloads": {w.name: {"label": w.label, **asdict(w.spec),
                               "prefix": w.spec.prefix.decode()} for w in chosen},
        "machine": info, "server_flags": _common_flags(0, 0), "figures": rec.figures,
        "skipped": rec.skipped, "sections": rec.sections, "profiles": rec.profiles,
        "server_logs": SERVER_LOGS,
        "table": text,
    }
    title = f"kvcache vs memcached by workload, {started:%Y-%m-%d %H:%M} UTC"
    write_results(args.out, NAME, started.strftime("%Y%m%d-%H%M%S"), document, rec.figures,
                  title)
    return exit_status(document)


if __name__ == "__main__":
    sys.exit(main())
