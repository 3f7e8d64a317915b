"""The proxy beside twemproxy: `.venv/bin/python -m bench.kvcache_proxy_bench`.

Two kvcache servers (`-m 1024 -t 1 -U 0`, 127.0.0.1) are the backends of both proxies: ours
(`python -m kvcache proxy`, its defaults) and nutcracker (twemproxy 0.5.0, Debian's package,
one pool with `hash: md5`, `distribution: ketama`, its defaults otherwise). memcaslap drives
each side with the load of bench/kvcache_bench.py section 1 (90% get / 10% set, 32
connections on one client thread, 32-byte keys, 100-byte values), in interleaved rounds:
direct to one backend, through nutcracker, through ours. Each round checks its own run: the
gets and sets the backends served must match what memcaslap reports (a failed run is
reported, never dropped).

Figures (ratios are the median of the per-round ratios, each round's sides measured back to
back on the same machine state):
- ours / nutcracker, goal >= 1.0x: the command exits 1 when it is missed (or when either
  side has no successful round);
- ours / direct (the moonshot is 0.8x; informational), nutcracker / direct (informational);
- the same per CPU-second of the proxy process (ops per CPU-s of the proxy alone).

nutcracker missing: the bench says so loudly (stderr and the table) and measures ours and
direct only (the goal is then not checked: exit 0 when that figure was measured). `apt-get
install nutcracker` provides it. `--profile` adds one py-spy profile of our proxy under the load
after the measured rounds (not counted). Prints the table, writes JSON (every run, the
commands, the nutcracker configuration, the machine) and a PNG to --out (bench/results/).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    SERVER_LOGS,
    START_TIMEOUT_S,
    Figure,
    Skipped,
    bench_parser,
    figures_text,
    find_free_port,
    machine,
    median,
    parse_bench_args,
    progress,
    write_results,
)
from bench.idgen_bench import Recorder
from bench.kvcache_bench import (
    CONCURRENCY,
    HOST,
    LOAD_MB,
    MEMCASLAP_CONFIG,
    PROFILE_SECONDS,
    McServer,
    kvcache_server,
    memcaslap_command,
    profile,
    proxy_server,
    run_memcaslap,
)

SECTION = "proxy"
GOAL_VS_NUTCRACKER = 1.0
MOONSHOT_VS_DIRECT = 0.8
NUTCRACKER = "nutcracker"
NUTCRACKER_TIMEOUT_MS = 1000  # its per-request backend timeout, as our proxy's --timeout 1.0
NUTCRACKER_MISSING = ("nutcracker (twemproxy) is not installed: `apt-get install nutcracker`;"
                      " measuring our proxy against direct only")
SIDES = ("direct", "nutcracker", "ours")


class PoolCounts:
    """The backends' gets and sets summed, to check a run through a proxy (memcaslap's
    reported ops against what the backends served)."""

    def __init__(self, backends: list[McServer]) -> None:
        self.backends = backends

    def stats(self) -> dict[str, str]:
        total: dict[str, int] = {}
        for backend in self.backends:
            for name, value in backend.stats().items():
                if value.isdigit():
                    total[name] = total.get(name, 0) + int(value)
        return {name: str(value) for name, value in total.items()}


def nutcracker_config(listen_port: int, backends: list[McServer]) -> str:
    """One twemproxy pool over `backends`: ketama over md5, memcached protocol."""
    servers = "\n".join(f"   - {b.address}:1" for b in backends)
    return (f"kvbench:\n  listen: {HOST}:{listen_port}\n  hash: md5\n"
            f"  distribution: ketama\n  timeout: {NUTCRACKER_TIMEOUT_MS}\n"
            f"  auto_eject_hosts: false\n  servers:\n{servers}\n")


class Nutcracker(McServer):
    """nutcracker dies of SIGTERM (exit status -15): that is its clean stop."""

    def stop(self) -> int | None:
        code = super().stop()
        return 0 if code == -signal.SIGTERM else code


def nutcracker_server(backends: list[McServer]) -> McServer:
    """nutcracker (not started) over `backends`, its stats port a free one too."""
    port = find_free_port(HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-nutcracker-"))
    conf = tmp / "nutcracker.yml"
    conf.write_text(nutcracker_config(port, backends))
    argv = [NUTCRACKER, "-c", str(conf), "-s", str(find_free_port(HOST)), "-a", HOST,
            "-o", str(tmp / "nutcracker.log")]
    return Nutcracker(f"nutcracker@{HOST}:{port}", argv, HOST, port, tmp)


def _round_ratios(rates: dict[str, list[tuple[int, float]]], ours: str, peer: str
                  ) -> list[float]:
    """Per round in which both sides ran: ours / peer."""
    peer_by_round = dict(rates[peer])
    return [value / peer_by_round[round_] for round_, value in rates[ours]
            if peer_by_round.get(round_)]


def _figure(label: str, unit: str, rates: dict[str, list[tuple[int, float]]], ours: str,
            peer: str, goal: float | None, goal_text: str) -> Figure | None:
    ratios = _round_ratios(rates, ours, peer)
    if not ratios:
        return None
    fig = Figure(SECTION, label, median([v for _, v in rates[ours]]), unit, peer,
                 median([v for _, v in rates[peer]]), goal, goal_text,
                 detail={"per_round_ratio": ratios, f"{ours}": rates[ours],
                         f"{peer}": rates[peer]})
    fig.ratio = median(ratios)  # the median of the per-round ratios, not of the medians
    fig.met = None if goal is None else fig.ratio >= goal
    return fig


def measure(rec: Recorder, args: argparse.Namespace, config: Path,
            sides: dict[str, tuple[McServer, Any, list[McServer]]]
            ) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """Interleaved rounds over `sides` (name -> target, what counts its ops, the processes
    whose CPU is metered); per side [(round, ops/s)] and [(round, proxy ops per CPU-s)]."""
    rates: dict[str, list[tuple[int, float]]] = {name: [] for name in sides}
    per_cpu: dict[str, list[tuple[int, float]]] = {name: [] for name in sides}
    for round_ in range(1, args.rounds + 1):
        for name, (target, counted, metered) in sides.items():
            label = f"round {round_}/{args.rounds} {name}"
            result = rec.attempt(SECTION, label, partial(
                run_memcaslap, target, counted, metered, config, args.seconds, 1))
            if result is None:
                continue
            result["round"], result["side"] = round_, name
            rates[name].append((round_, result["ops_per_s"]))
            cost_us = result["server_cpu_us_per_op"][0]
            if cost_us:
                per_cpu[name].append((round_, 1e6 / cost_us))
            progress(f"{label}: {result['ops_per_s']:,.0f} ops/s, served "
                     f"{result['served_vs_reported']:.3f} of reported ops, "
                     f"{cost_us:.2f} CPU us/op in {metered[0].name}")
    return rates, per_cpu


def add_figures(rec: Recorder, rates: dict[str, list[tuple[int, float]]],
                per_cpu: dict[str, list[tuple[int, float]]], with_nutcracker: bool) -> None:
    load = f"get/set 9:1, -c {CONCURRENCY}"
    rows = [(f"ours vs direct, {load}", "ops/s", rates, "ours", "direct", None,
             f"moonshot {MOONSHOT_VS_DIRECT}x")]
    if with_nutcracker:
        rows.insert(0, (f"ours vs nutcracker, {load}", "ops/s", rates, "ours", "nutcracker",
                        GOAL_VS_NUTCRACKER, f">= {GOAL_VS_NUTCRACKER}x"))
        rows.append((f"nutcracker vs direct, {load}", "ops/s", rates, "nutcracker", "direct",
                     None, "-"))
        rows.append(("ours vs nutcracker, per proxy CPU-s", "ops/CPU-s", per_cpu, "ours",
                     "nutcracker", None, "-"))
    for label, unit, source, ours, peer, goal, goal_text in rows:
        rec.add(_figure(label, unit, source, ours, peer, goal, goal_text), SECTION, label)


def run(rec: Recorder, args: argparse.Namespace, config: Path) -> bool:
    """Start the processes, measure, add the figures; whether nutcracker took part."""
    have_nutcracker = shutil.which(NUTCRACKER) is not None
    if not have_nutcracker:
        progress("!" * 78 + f"\n!!! {NUTCRACKER_MISSING}\n" + "!" * 78)
        rec.skipped.append(Skipped(SECTION, "ours vs nutcracker", NUTCRACKER_MISSING))
    with kvcache_server(LOAD_MB) as one, kvcache_server(LOAD_MB) as two:
        backends = [one, two]
        started: list[McServer] = []
        try:
            ours = proxy_server(backends).start()
            started.append(ours)
            sides: dict[str, tuple[McServer, Any, list[McServer]]] = {
                "direct": (one, one, [one])}
            info = rec.section(SECTION)
            info["servers"] = [shlex.join(b.argv) for b in backends] + [shlex.join(ours.argv)]
            if have_nutcracker:
                twem = nutcracker_server(backends).start()
                started.append(twem)
                sides["nutcracker"] = (twem, PoolCounts(backends), [twem])
                info["servers"].append(shlex.join(twem.argv))
                info["nutcracker_config"] = (twem.tmp / "nutcracker.yml").read_text()
            sides["ours"] = (ours, PoolCounts(backends), [ours])
            progress("started " + ", ".join(s.name for s in [*backends, *started]))
            rates, per_cpu = measure(rec, args, config, sides)
            add_figures(rec, rates, per_cpu, have_nutcracker)
            if args.profile:
                argv = memcaslap_command(ours, config, PROFILE_SECONDS + 3, 1)
                profile(rec, [("proxy", ours)], "memcaslap via our proxy", args.out, argv)
        finally:
            for server in reversed(started):
                server.__exit__(None, None, None)
    return have_nutcracker


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.kvcache_proxy_bench", __doc__.splitlines()[0],
                          (SECTION,), "short runs, two rounds (~1 min)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds, each side once per round (default 5)")
    parser.add_argument("--seconds", type=int, default=7,
                        help="memcaslap -t of each run, seconds (default 7)")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, py-spy profile our proxy under the load")
    args = parse_bench_args(parser, argv, (SECTION,))
    if args.quick:
        args.rounds, args.seconds = 2, 3
    return args


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when ours >= 1.0x nutcracker, 1 when missed or not measured (without
    nutcracker: 0 when ours vs direct was measured)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rec = Recorder()
    info = machine()
    info["nutcracker"] = _version([NUTCRACKER, "--version"])
    info["memcaslap"] = _version(["memcaslap", "--version"])
    progress(f"proxy bench on {info['cpu_count']} cpus ({info['cpu_model']}), python "
             f"{info['python']}, {info['nutcracker']}, load average "
             f"{info['loadavg_at_start'][0]:.2f}; results to {args.out}")
    with tempfile.TemporaryDirectory(prefix="bench-memcaslap-") as tmp:
        config = Path(tmp) / "memcaslap.cnf"
        config.write_text(MEMCASLAP_CONFIG)
        begun = time.monotonic()
        have_nutcracker = run(rec, args, config)
        progress(f"measured in {time.monotonic() - begun:.0f} s")
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the memcaslap runs")
    print(text, flush=True)
    document = {
        "benchmark": "kvcache_proxy", "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "quick": args.quick,
        "rounds": args.rounds, "seconds": args.seconds, "machine": info,
        "memcaslap_config": MEMCASLAP_CONFIG, "figures": rec.figures, "skipped": rec.skipped,
        "sections": rec.sections, "profiles": rec.profiles, "server_logs": SERVER_LOGS,
        "table": text, "python": sys.executable, "root": str(ROOT),
        "start_timeout_s": START_TIMEOUT_S,
    }
    title = (f"kvcache proxy vs nutcracker and direct, {started:%Y-%m-%d %H:%M} UTC, "
             f"{info['cpu_count']} cpus {info['cpu_model']}")
    write_results(args.out, "kvcache_proxy", started.strftime("%Y%m%d-%H%M%S"), document,
                  rec.figures, title)
    if not have_nutcracker:
        progress(f"!!! {NUTCRACKER_MISSING}")
        return 0 if rec.figures else 1
    goal = [f for f in rec.figures if f.goal_ratio is not None]
    return 0 if goal and all(f.met for f in goal) else 1


if __name__ == "__main__":
    sys.exit(main())
