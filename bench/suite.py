"""`make bench`: every benchmark in turn, then bench/README.md's tables from their JSON.

    .venv/bin/python -m bench.suite                  # full runs, JSON to bench/results/
    .venv/bin/python -m bench.suite --quick          # each one's --quick mode (also BENCH_QUICK=1)
    .venv/bin/python -m bench.suite --only idgen,scheduler

Strategy: SUITE is the registry, one `Entry` per benchmark (name, module, extra args); a
benchmark is added by appending an entry. Each runs as `python -m MODULE --out DIR [ARGS]`
in its own process (its progress goes straight to the terminal), writes DIR/<name>.json
(bench.common.write_results) and exits non-zero when a goal was missed or a figure could not
be measured. A failure is reported and the rest still run; the suite exits 1 at the end if
any failed. A full run then regenerates bench/README.md's tables (bench.tables). Quick runs
write to bench/results/quick/ (git-ignored) and only print the tables, so trying the
tooling never replaces the committed figures; a full run regenerates only the tables of the
benchmarks it ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUICK_RESULTS = RESULTS / "quick"
QUICK_ENV = "BENCH_QUICK"
FULL_TIMEOUT_S = 40 * 60  # longer than this is a hang, not slowness
QUICK_TIMEOUT_S = 10 * 60


@dataclass(frozen=True)
class Entry:
    """One benchmark: `python -m module --out DIR *args [--quick]`, writing DIR/<name>.json
    and exiting 0 only when every goal was met and every figure measured."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ("--quick",)


# The registry: append an Entry for a new benchmark (its README section gets the markers
# <!-- bench:NAME --> <!-- /bench:NAME --> for its table).
SUITE: list[Entry] = [
    Entry("idgen", "bench.idgen_bench"),
    Entry("kvcache", "bench.kvcache_bench"),
    Entry("kvcache_proxy", "bench.kvcache_proxy_bench"),
    Entry("kvcache_workloads", "bench.kvcache_workloads"),
    Entry("scheduler", "bench.scheduler_bench"),
    Entry("raft_groups", "bench.raft_groups"),
    Entry("shardstore", "bench.shardstore_bench"),
    Entry("dfs", "bench.dfs_bench"),
]


@dataclass
class Outcome:
    """How one benchmark's run ended."""

    entry: Entry
    exit_code: int
    seconds: float
    wrote_json: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.wrote_json


def say(message: str) -> None:
    """A progress line of the suite (stderr, as the benchmarks' own)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def command(entry: Entry, out: Path, quick: bool) -> list[str]:
    """The command line that runs `entry`."""
    return [sys.executable, "-m", entry.module, "--out", str(out), *entry.args,
            *(entry.quick_args if quick else ())]


def run_one(entry: Entry, out: Path, quick: bool, env: dict[str, str] | None = None,
            timeout_s: float | None = None) -> Outcome:
    """Run one benchmark to its end (killed after `timeout_s`); its outcome."""
    argv = command(entry, out, quick)
    json_path = out / f"{entry.name}.json"
    before = json_path.stat().st_mtime_ns if json_path.exists() else None
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    began = time.monotonic()
    try:
        code = subprocess.run(argv, cwd=ROOT, env=child_env, stdin=subprocess.DEVNULL,
                              timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        say(f"{entry.name}: still running after {timeout_s:.0f} s: killed")
        code = -9
    after = json_path.stat().st_mtime_ns if json_path.exists() else None
    return Outcome(entry, code, time.monotonic() - began, after is not None and after != before)


def run_suite(entries: Sequence[Entry], out: Path, quick: bool,
              env: dict[str, str] | None = None) -> list[Outcome]:
    """Run every entry in order, each whatever happened to the ones before."""
    out.mkdir(parents=True, exist_ok=True)
    timeout = QUICK_TIMEOUT_S if quick else FULL_TIMEOUT_S
    outcomes = []
    for index, entry in enumerate(entries, 1):
        say(f"{index}/{len(entries)} {entry.name}: {' '.join(command(entry, out, quick)[1:])}")
        outcome = run_one(entry, out, quick, env, timeout)
        outcomes.append(outcome)
        verdict = "ok" if outcome.ok else _failure(outcome)
        say(f"{index}/{len(entries)} {entry.name}: {verdict} in {outcome.seconds:.0f} s")
    return outcomes


def _failure(outcome: Outcome) -> str:
    if not outcome.wrote_json:
        return f"FAILED (exit {outcome.exit_code}, no {outcome.entry.name}.json written)"
    return f"FAILED (exit {outcome.exit_code}: a goal missed or a figure not measured)"


def report(outcomes: Sequence[Outcome]) -> int:
    """The closing lines; 1 when any benchmark failed."""
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        say(f"  {o.entry.name:<16} {'ok' if o.ok else _failure(o)}")
    if failed:
        say(f"{len(failed)} of {len(outcomes)} benchmarks failed: "
            f"{', '.join(o.entry.name for o in failed)}")
        return 1
    say(f"all {len(outcomes)} benchmarks met their goals")
    return 0


def select(names: str | None) -> list[Entry]:
    """The entries named in `names` (comma-separated), or all; ValueError for an unknown
    name."""
    if not names:
        return list(SUITE)
    known = {e.name: e for e in SUITE}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise ValueError(f"unknown benchmark {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(known)}")
    return [known[n] for n in chosen]


def tables(out: Path, quick: bool, names: Sequence[str]) -> int:
    """Regenerate the README's tables of the benchmarks that ran (full runs into
    bench/results/; the others keep theirs) or print them (quick runs)."""
    from bench import tables as tables_module

    if quick or out.resolve() != RESULTS.resolve():
        say(f"tables from {out}:")
        return tables_module.main(["--results", str(out), "--print"])
    text = tables_module.README.read_text()
    try:
        marked = [n for n in names if n in tables_module.marker_names(text)]
        new = tables_module.fill(text, tables_module.blocks_for(marked, out))
    except (tables_module.MarkerError, KeyError, ValueError) as exc:
        say(f"tables: bench/README.md not regenerated: {exc}")
        return 1
    tables_module.README.write_text(new)
    say(f"tables: {', '.join(marked)} regenerated in bench/README.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="each benchmark's quick mode, JSON to bench/results/quick/ "
                             f"(also {QUICK_ENV}=1)")
    parser.add_argument("--only", help="comma-separated names: " + ",".join(e.name for e in SUITE))
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON directory (default bench/results/, quick: bench/results/quick/)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get(QUICK_ENV, "") not in ("", "0")
    try:
        entries = select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or (QUICK_RESULTS if quick else RESULTS)
    say(f"{len(entries)} benchmarks{' (quick)' if quick else ''}, JSON to {out}")
    status = report(run_suite(entries, out, quick))
    return max(status, tables(out, quick, [e.name for e in entries]))


if __name__ == "__main__":
    sys.exit(main())
