"""Side-by-side benchmark of kvcache against memcached: `.venv/bin/python -m bench.kvcache_bench`.

Every figure is a ratio measured in this run on this machine, against memcached 1.6 started
by the benchmark with the same flags as kvcache (`-p PORT -l 127.0.0.1 -m MB -t 1 -U 0`,
plus `-u root` when run as root, which memcached requires and kvcache ignores), or against
a stated limit. Sections:

1. memcaslap, 90% get / 10% set, 32 connections on one client thread, 32-byte keys,
   100-byte values: kvcache vs memcached, interleaved rounds, median ops/s (goal >= 0.9x).
2. The same with multi-get: 50 keys per `get` (`--division=50`), median keys/s (goal
   >= 0.5x).
3. The proxy (`python -m kvcache proxy`) over one kvcache backend vs that backend directly,
   the load of section 1, interleaved (no goal: the ratio is reported). Skipped with a
   message when `python -m kvcache proxy --help` does not work.
4. Memory: RSS of kvcache and memcached (`-m 1024`) holding 1,000,000 items of 100 bytes
   (goal kvcache <= 1.5x memcached); kvcache with `-m 64` filled with 3,000,000 items: peak
   RSS against baseline + 1.2 x 64 MB (goal <= 1.0), evictions from `stats`.

Prints a table (stdout) and progress (stderr); writes JSON with every raw number, the
machine and the commands, and a PNG plot of the ratios, to --out (default bench/results/).
`--profile` adds, after the measured runs, one py-spy profile of the kvcache server (and the
proxy) under each memcaslap load (not counted in the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench import kvcache_loads as loads
from bench.common import (
    ROOT,
    SERVER_LOGS,
    START_TIMEOUT_S,
    CpuMeter,
    Figure,
    ServerProcess,
    Skipped,
    bench_parser,
    exit_status,
    figures_text,
    find_free_port,
    machine,
    median,
    parse_bench_args,
    profile_under_load,
    progress,
    write_results,
)
from bench.idgen_bench import Recorder, _cpu_note

HOST = "127.0.0.1"
MB = 1024 * 1024
CONCURRENCY = 32
KEY_SIZE = 32
VALUE_SIZE = 100
MULTIGET_KEYS = 50
LOAD_MB = 1024  # -m of the throughput sections: memcaslap's windows never evict
MEMORY_MB = 1024
SMALL_MB = 64
RSS_ALLOWANCE = 0.2  # section 4b: peak RSS <= baseline + (1 + 0.2) x 64 MB
PROFILE_SECONDS = 5
# A run fails when the server's cmd_get + cmd_set differs from memcaslap's Ops by more
# (memcaslap counts a few requests still in flight when its time is up).
SERVED_TOLERANCE = 0.01
# memcaslap's -F file: key and value length ranges with their shares, then the command mix
# (0 = set, 1 = get). Without -F it reads ~/.memslap.cnf or uses 64-byte keys, 1024-byte values.
MEMCASLAP_CONFIG = f"""\
key
{KEY_SIZE} {KEY_SIZE} 1
value
{VALUE_SIZE} {VALUE_SIZE} 1
cmd
0 0.1
1 0.9
"""
_RESULT_LINE = re.compile(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)")
_COUNTER_LINE = re.compile(r"^(cmd_get|cmd_set|get_misses): (\d+)$", re.M)


# -- servers -----------------------------------------------------------------------------


class McServer(ServerProcess):
    """A memcached-protocol server process: ready when it answers `version`."""

    def start(self) -> McServer:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                loads.version(self.host, self.port)
                return self
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not answer version in {START_TIMEOUT_S}s")
            time.sleep(0.05)

    def __enter__(self) -> McServer:
        return self.start()

    def stats(self) -> dict[str, str]:
        return loads.stats(self.host, self.port)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """VmHWM: the largest RSS the process has had."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return self.rss()


def _common_flags(port: int, megabytes: int) -> list[str]:
    flags = ["-p", str(port), "-l", HOST, "-m", str(megabytes), "-t", "1", "-U", "0"]
    if os.geteuid() == 0:
        flags += ["-u", "root"]  # memcached refuses to run as root without it
    return flags


def kvcache_server(megabytes: int) -> McServer:
    port = find_free_port(HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kvcache-"))
    argv = [sys.executable, "-m", "kvcache", "serve", *_common_flags(port, megabytes)]
    return McServer(f"kvcache -m {megabytes}@{HOST}:{port}", argv, HOST, port, tmp)


def memcached_server(megabytes: int) -> McServer:
    port = find_free_port(HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memcached-"))
    argv = ["memcached", *_common_flags(port, megabytes)]
    return McServer(f"memcached -m {megabytes}@{HOST}:{port}", argv, HOST, port, tmp)


PROXY_ARGV = [sys.executable, "-m", "kvcache", "proxy"]


def proxy_missing() -> str | None:
    """Why section 3 cannot run, or None when `python -m kvcache proxy --help` works."""
    try:
        done = subprocess.run([*PROXY_ARGV, "--help"], capture_output=True, text=True,
                              timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`python -m kvcache proxy --help` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return f"`python -m kvcache proxy --help` exits {done.returncode}: {last[0][:120]}"
    return None


def proxy_server(backends: list[McServer]) -> McServer:
    port = find_free_port(HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kvproxy-"))
    argv = [*PROXY_ARGV, "-p", str(port), "-l", HOST,
            "--servers", ",".join(b.address for b in backends)]
    return McServer(f"kvcache proxy@{HOST}:{port}", argv, HOST, port, tmp)


# -- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How long and how often each section measures."""

    seconds: int  # memcaslap -t
    rounds: int  # interleaved rounds per section
    fill_items: int  # section 4a
    overfill_items: int  # section 4b
    batch: int  # sets per send in a fill


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(2, 1, 200_000, 600_000, 20_000)
    return Plan(args.seconds, args.rounds, 1_000_000, 3_000_000, 20_000)


# -- memcaslap ---------------------------------------------------------------------------


def memcaslap_command(target: McServer, config: Path, seconds: int, division: int
                      ) -> list[str]:
    argv = ["memcaslap", "-s", target.address, "-T", "1", "-c", str(CONCURRENCY),
            "-F", str(config), "-t", f"{seconds}s"]
    if division > 1:
        argv.append(f"--division={division}")
    return argv


def _served(server: McServer) -> dict[str, int]:
    fields = server.stats()
    return {name: int(fields.get(name, 0)) for name in ("cmd_get", "cmd_set", "get_hits")}


def run_memcaslap(target: McServer, counted: McServer, metered: list[McServer],
                  config: Path, seconds: int, division: int) -> dict[str, Any]:
    """One memcaslap run against `target`; ops/s as memcaslap reports them, the gets and
    sets `counted` (the server holding the data) served meanwhile, and the CPU of the
    `metered` processes, of memcaslap and of the rest of the machine."""
    argv = memcaslap_command(target, config, seconds, division)
    before = _served(counted)
    meter = CpuMeter([m.pid for m in metered])
    with meter:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{shlex.join(argv)} did not finish in {seconds + 60} s") from exc
    after = _served(counted)
    found = _RESULT_LINE.findall(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}:\n"
                           f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    run_s, ops, tps = found[-1]
    counters = {k: int(v) for k, v in _COUNTER_LINE.findall(done.stdout)}
    served = {k: after[k] - before[k] for k in after}
    server_ops = served["cmd_get"] + served["cmd_set"]
    if not int(ops) or abs(server_ops / int(ops) - 1) > SERVED_TOLERANCE:
        raise ValueError(f"{shlex.join(argv)}: memcaslap reports {ops} ops, the server "
                         f"counted {server_ops} gets and sets")
    if counters.get("get_misses", 0):
        raise ValueError(f"{shlex.join(argv)}: {counters['get_misses']} gets missed (each "
                         "connection gets only keys it set, and nothing is evicted)")
    cpu = meter.result
    server_cpu_s = [c * cpu["wall_s"] for c in cpu["server_cores"]]
    return {
        "command": shlex.join(argv),
        "target": target.name,
        "ops_per_s": float(tps),
        "ops": int(ops),
        "run_s": float(run_s),
        "memcaslap_counters": counters,
        "served": served,
        "server_ops": server_ops,
        "served_vs_reported": server_ops / int(ops),
        "server_cpu_us_per_op": [s / server_ops * 1e6 if server_ops else 0.0
                                 for s in server_cpu_s],
        # memcaslap spends ~1 s building its random table before it connects: the cores
        # each server used while the load ran (its -t), not over the whole window.
        "server_cores_during_load": [s / float(run_s) for s in server_cpu_s],
        "cpu": cpu,
        "stdout_tail": done.stdout[-600:],
    }


def interleaved(rec: Recorder, section: str, plan: Plan, config: Path, division: int,
                sides: list[tuple[str, McServer, McServer, list[McServer]]],
                ) -> dict[str, dict[str, list[float]]]:
    """`plan.rounds` rounds of one memcaslap run per side, in order; per side the ops/s and
    the CPU microseconds per op of its metered processes (summed)."""
    out: dict[str, dict[str, list[float]]] = {
        name: {"ops_per_s": [], "cpu_us_per_op": []} for name, *_ in sides}
    for round_ in range(plan.rounds):
        for name, target, counted, metered in sides:
            label = f"{section} round {round_ + 1}/{plan.rounds} {name}"
            result = rec.attempt(section, label, partial(
                run_memcaslap, target, counted, metered, config, plan.seconds, division))
            if result is None:
                continue
            result["round"] = round_ + 1
            result["side"] = name
            cost = sum(result["server_cpu_us_per_op"])
            out[name]["ops_per_s"].append(result["ops_per_s"])
            out[name]["cpu_us_per_op"].append(cost)
            misses = result["memcaslap_counters"].get("get_misses", 0)
            progress(f"{label}: {result['ops_per_s']:,.0f} ops/s, served "
                     f"{result['served_vs_reported']:.3f} of reported ops, {misses} misses, "
                     f"server {cost:.2f} CPU us/op, "
                     f"{'+'.join(f'{c:.2f}' for c in result['server_cores_during_load'])} cores "
                     f"while loaded; {_cpu_note(result['cpu'])}")
    return out


def _pair_figures(rec: Recorder, section: str, label: str, unit: str, ours: str, peer: str,
                  peer_label: str, rates: dict[str, dict[str, list[float]]],
                  goal: float | None) -> None:
    a, b = rates[ours], rates[peer]
    rec.add(Figure(
        section, label, median(a["ops_per_s"]), unit, peer_label, median(b["ops_per_s"]),
        goal, f">= {goal}x" if goal is not None else "-",
        detail={f"{ours}_ops_per_s": a["ops_per_s"], f"{peer}_ops_per_s": b["ops_per_s"]},
    ) if a["ops_per_s"] and b["ops_per_s"] else None, section, label)
    cost_label = f"{label}, per server CPU-s"
    rec.add(Figure(
        section, cost_label, 1e6 / median(a["cpu_us_per_op"]), f"{unit[:-2]}/CPU-s",
        peer_label, 1e6 / median(b["cpu_us_per_op"]), None, "-",
        detail={f"{ours}_cpu_us_per_op": a["cpu_us_per_op"],
                f"{peer}_cpu_us_per_op": b["cpu_us_per_op"]},
    ) if a["cpu_us_per_op"] and b["cpu_us_per_op"] else None, section, cost_label)


# -- 1 and 2: memcaslap kvcache vs memcached ---------------------------------------------


def section_memcaslap(plan: Plan, rec: Recorder, config: Path, division: int,
                      profile_dir: Path | None) -> None:
    multi = division > 1
    section = "2 multi-get" if multi else "1 memcaslap"
    with kvcache_server(LOAD_MB) as kv, memcached_server(LOAD_MB) as mc:
        progress(f"{section[0]} started {kv.name} and {mc.name}")
        rec.section(section)["servers"] = [shlex.join(kv.argv), shlex.join(mc.argv)]
        rates = interleaved(rec, section, plan, config, division,
                            [("kvcache", kv, kv, [kv]), ("memcached", mc, mc, [mc])])
        if multi:
            label, unit, goal = f"get of {division} keys, 9:1", "keys/s", 0.5
        else:
            label, unit, goal = f"get/set 9:1, -c {CONCURRENCY}", "ops/s", 0.9
        _pair_figures(rec, section, label, unit, "kvcache", "memcached", "memcached", rates,
                      goal)
        if profile_dir is not None:
            argv = memcaslap_command(kv, config, PROFILE_SECONDS + 3, division)
            profile(rec, [("server", kv)], f"memcaslap d{division}", profile_dir, argv)


# -- 3: the proxy ------------------------------------------------------------------------


def section_proxy(plan: Plan, rec: Recorder, config: Path, profile_dir: Path | None) -> None:
    section = "3 proxy"
    missing = proxy_missing()
    if missing is not None:
        rec.skipped.append(Skipped(section, "proxy over 1 kvcache vs direct", missing))
        progress(f"3 skipped: {missing}")
        return
    with kvcache_server(LOAD_MB) as kv, proxy_server([kv]) as proxy:
        progress(f"3 started {kv.name} and {proxy.name}: {shlex.join(proxy.argv)}")
        rec.section(section)["servers"] = [shlex.join(kv.argv), shlex.join(proxy.argv)]
        rates = interleaved(rec, section, plan, config, 1,
                            [("proxy", proxy, kv, [proxy, kv]), ("direct", kv, kv, [kv])])
        _pair_figures(rec, section, f"get/set 9:1 via proxy, -c {CONCURRENCY}", "ops/s",
                      "proxy", "direct", "direct to kvcache", rates, None)
        if profile_dir is not None:
            argv = memcaslap_command(proxy, config, PROFILE_SECONDS + 3, 1)
            profile(rec, [("proxy", proxy), ("backend", kv)], "memcaslap via proxy",
                    profile_dir, argv)


# -- 4: memory ---------------------------------------------------------------------------


class AtMost(Figure):
    """A figure whose goal is a ceiling: met when ratio <= goal_ratio."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.met = None if self.goal_ratio is None else self.ratio <= self.goal_ratio


def _fill(server: McServer, count: int, batch: int) -> dict[str, Any]:
    """Baseline RSS, the fill, then RSS, peak RSS and the server's counters."""
    baseline = server.rss()
    peak_seen = [baseline]

    def sample(_sent: int) -> None:
        peak_seen.append(server.rss())

    result = loads.fill(server.host, server.port, count, VALUE_SIZE, batch, on_batch=sample)
    time.sleep(0.2)  # let the server finish whatever it does after the sync
    fields = server.stats()
    result.update({
        "command": f"fill {count} x `set {loads.KEY_FORMAT.decode()} 0 0 {VALUE_SIZE} "
                   f"noreply` in batches of {batch}, then version; server: "
                   f"{shlex.join(server.argv)}",
        "server": server.name,
        "baseline_rss": baseline,
        "rss": server.rss(),
        "vm_hwm": server.peak_rss(),
        "max_sampled_rss": max(peak_seen),
        "stats": {k: fields.get(k) for k in (
            "curr_items", "total_items", "bytes", "evictions", "limit_maxbytes", "cmd_set",
            "hash_bytes", "version")},
    })
    # VmHWM and the RSS sampled after each batch: the kernel's counters lag a little.
    result["peak_rss"] = max(result["vm_hwm"], result["max_sampled_rss"], result["rss"])
    stored = int(fields.get("curr_items", 0))
    result["bytes_per_item_over_baseline"] = (
        (result["rss"] - baseline) / stored if stored else 0.0)
    if result["unexpected_reply_bytes"]:
        progress(f"4 {server.name} wrote {result['unexpected_reply_bytes']} unexpected bytes: "
                 f"{result['unexpected_reply_start'][:120]!r}")
    progress(f"4 {server.name}: {count:,} sets in {result['seconds']:.1f} s "
             f"({result['sets_per_s']:,.0f}/s); RSS {baseline / MB:.1f} -> "
             f"{result['rss'] / MB:.1f} MB (peak {result['peak_rss'] / MB:.1f}), "
             f"{stored:,} items, evictions {fields.get('evictions')}")
    return result


def _fill_verified(server: McServer, count: int, batch: int) -> dict[str, Any]:
    """_fill, then a sample of the keys read back: all there, all intact (nothing is
    evicted at -m 1024), else the run fails."""
    result = _fill(server, count, batch)
    check = loads.verify(server.host, server.port, 0, count, VALUE_SIZE)
    result["verified"] = check
    if check["missing"] or check["wrong"]:
        raise ValueError(f"{server.name}: of {check['sampled']} keys read back after the "
                         f"fill, {check['missing']} missing, {check['wrong']} changed")
    return result


def section_memory(plan: Plan, rec: Recorder) -> None:
    section = "4 memory"
    full: dict[str, dict[str, Any]] = {}
    for name, factory in (("kvcache", kvcache_server), ("memcached", memcached_server)):
        with factory(MEMORY_MB) as server:
            result = rec.attempt(section, f"4 fill {name}", partial(
                _fill_verified, server, plan.fill_items, plan.batch))
            if result is not None:
                result["side"] = name
                full[name] = result
    label = f"RSS, {plan.fill_items:,} x {VALUE_SIZE} B, -m {MEMORY_MB}"
    kv, mc = full.get("kvcache"), full.get("memcached")
    rec.add(AtMost(
        section, label, kv["rss"] / MB, "MB", "memcached", mc["rss"] / MB, 1.5, "<= 1.5x",
        detail={"kvcache": kv, "memcached": mc},
    ) if kv and mc else None, section, label)
    label = "RSS over baseline per item"
    rec.add(AtMost(
        section, label, kv["bytes_per_item_over_baseline"], "B/item", "memcached",
        mc["bytes_per_item_over_baseline"], None, "-",
    ) if kv and mc else None, section, label)

    over: dict[str, dict[str, Any]] = {}
    for name, factory in (("kvcache", kvcache_server), ("memcached", memcached_server)):
        with factory(SMALL_MB) as server:
            result = rec.attempt(section, f"4 overfill {name}", partial(
                _fill, server, plan.overfill_items, plan.batch))
            if result is not None:
                result["side"] = name
                over[name] = result
    kv, mc = over.get("kvcache"), over.get("memcached")
    label = f"peak RSS, -m {SMALL_MB}, {plan.overfill_items:,} sets"
    if kv:
        limit = kv["baseline_rss"] + (1 + RSS_ALLOWANCE) * SMALL_MB * MB
        kv["rss_limit"] = limit
        rec.add(AtMost(
            section, label, kv["peak_rss"] / MB, "MB",
            f"baseline {kv['baseline_rss'] / MB:.0f} + 1.2x{SMALL_MB}", limit / MB, 1.0,
            "<= 1.0", detail={"kvcache": kv, "memcached": mc,
                              "limit_formula": "baseline_rss + 1.2 * 64 MiB"},
        ), section, label)
    else:
        rec.add(None, section, label)
    label = f"items kept, -m {SMALL_MB}"
    rec.add(Figure(
        section, label, int(kv["stats"]["curr_items"] or 0), "items", "memcached",
        int(mc["stats"]["curr_items"] or 0), None, "-",
        detail={"kvcache_evictions": kv["stats"]["evictions"],
                "memcached_evictions": mc["stats"]["evictions"],
                "memcached_peak_rss": mc["peak_rss"], "memcached_baseline_rss":
                mc["baseline_rss"]},
    ) if kv and mc else None, section, label)


# -- profiles ----------------------------------------------------------------------------


def profile(rec: Recorder, targets: list[tuple[str, McServer]], name: str, out: Path,
            load_argv: list[str]) -> None:
    """Run `load_argv` (not measured) and record each target with py-spy for
    PROFILE_SECONDS."""
    load = subprocess.Popen(load_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = [(role, server.pid) for role, server in targets]
    # 1.5 s: memcaslap builds its random table and connects
    profile_under_load(rec.profiles, name, load, 1.5, pids, out, "kvcache-profile-",
                       PROFILE_SECONDS)


# -- main --------------------------------------------------------------------------------


SECTIONS = ("1", "2", "3", "4")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.kvcache_bench", __doc__.splitlines()[0], SECTIONS,
                          "short runs, one round, smaller fills (~1 min)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved memcaslap rounds per section (default 3)")
    parser.add_argument("--seconds", type=int, default=7,
                        help="memcaslap -t of each run, seconds (default 7)")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, py-spy profile kvcache under each load")
    args = parse_bench_args(parser, argv, SECTIONS)
    return args


@contextlib.contextmanager
def _timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    progress(f"section {name} ...")
    yield
    progress(f"section {name} done in {time.monotonic() - started:.0f} s")


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (
        done.stdout or done.stderr).strip() else "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    rec = Recorder()
    info = machine()
    info["memcached"] = _version(["memcached", "-V"])
    info["memcaslap"] = _version(["memcaslap", "--version"])
    info["kvcache"] = _version([sys.executable, "-m", "kvcache", "serve", "-V"])
    progress(f"kvcache bench on {info['cpu_count']} cpus ({info['cpu_model']}), python "
             f"{info['python']}, {info['memcached']}, load average "
             f"{info['loadavg_at_start'][0]:.2f}; results to {out}")
    profile_dir = out if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-memcaslap-") as tmp:
        config = Path(tmp) / "memcaslap.cnf"
        config.write_text(MEMCASLAP_CONFIG)
        if "1" in args.sections:
            with _timed("1 memcaslap get/set 9:1"):
                section_memcaslap(plan, rec, config, 1, profile_dir)
        if "2" in args.sections:
            with _timed(f"2 memcaslap multi-get of {MULTIGET_KEYS}"):
                section_memcaslap(plan, rec, config, MULTIGET_KEYS, profile_dir)
        if "3" in args.sections:
            with _timed("3 proxy over one kvcache"):
                section_proxy(plan, rec, config, profile_dir)
    if "4" in args.sections:
        with _timed("4 memory"):
            section_memory(plan, rec)
    finished = datetime.now(UTC)
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the memcaslap runs")
    print(text, flush=True)
    document = {
        "benchmark": "kvcache",
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": info,
        "memcaslap_config": MEMCASLAP_CONFIG,
        "server_flags": _common_flags(0, 0),
        "figures": rec.figures,
        "skipped": rec.skipped,
        "sections": rec.sections,
        "profiles": rec.profiles,
        "server_logs": SERVER_LOGS,
        "table": text,
    }
    title = (f"kvcache vs memcached, {started:%Y-%m-%d %H:%M} UTC, {info['cpu_count']} "
                 f"cpus {info['cpu_model']}, python {info['python']}")
    write_results(out, "kvcache", stamp, document, rec.figures, title)
    return exit_status(document)


if __name__ == "__main__":
    sys.exit(main())
