"""`make drills`: long randomized rounds of every registered fault drill, and their table.

    python -m tests.faults.run_drills [--minutes M] [--only NAME ...] [--seed S]
    python -m tests.faults.run_drills --one NAME --seed S --duration D   (replay one round)

Strategy: the drills of tests/faults/drills.py take turns; each round gets a fresh seed and
a duration drawn between MIN_ROUND_S and MAX_ROUND_S (cut to what is left), and runs in a
child process of its own (this module with --one), so a round that hangs or crashes is
stopped without ending the run and leaves no threads or namespaces behind (the harness
tears down on SIGTERM). Rounds start until the time is spent. A text progress bar on stderr
shows elapsed/total, rounds and the current drill. At the end a table says per daemon:
rounds, operations, faults injected, violations (checkers that did not pass), errors
(rounds that crashed) and the seeds to replay (the failing ones, or all when none failed);
the same data, per round, goes to var/drills/<stamp>/drills.json. A passing round's workdir
is deleted; a failing one keeps its node logs, history and report. The exit status is 1 if
any round found a violation or crashed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.faults import netns
from tests.faults.drills import DRILLS

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "var" / "drills"
DEFAULT_MINUTES = 20.0
MIN_ROUND_S = 5.0
MAX_ROUND_S = 45.0
ROUND_GRACE_S = 240.0  # beyond its duration, a round may take this long to set up and check
STOP_WAIT_S = 30.0  # after SIGTERM, a round has this long to tear down before SIGKILL
POLL_S = 0.5
BAR_WIDTH = 30
MAX_SEEDS_SHOWN = 5  # the table lists this many seeds per daemon; the JSON has all
RESULT_FILE = "result.json"
ROUND_LOG = "round.log"

ERR_UNKNOWN_DRILL = "unknown drill {name!r}; drills are {names}"
ERR_UNAVAILABLE = "fault drills cannot run here: {reason}"
ERR_TIMED_OUT = "the round did not finish within {seconds:.0f}s and was stopped"
ERR_NO_RESULT = "the round exited with status {code} without a result (see {log})"


@dataclass
class Round:
    """One round's outcome as the table and the JSON file see it."""

    daemon: str
    seed: int
    duration_s: float
    operations: int = 0
    faults: int = 0
    violations: int = 0
    error: str | None = None
    results: list[dict[str, object]] = field(default_factory=list)
    workdir: str = ""
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        """A violation was found or the round crashed."""
        return self.violations > 0 or self.error is not None

    def replay(self) -> str:
        """The command that runs this round again."""
        return (f"python -m tests.faults.run_drills --one {self.daemon} --seed {self.seed} "
                f"--duration {self.duration_s:.0f}")


# -- one round, in the child ---------------------------------------------------------------------

def run_one(name: str, seed: int, duration_s: float, workdir: Path) -> int:
    """Run one round here; write its Round as JSON into the workdir; 0 if it passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = Round(name, seed, duration_s, workdir=str(workdir))
    try:
        report = DRILLS[name](seed, duration_s, workdir)
    except BaseException as exc:  # noqa: BLE001 - a crash is an outcome to report
        outcome.error = f"{type(exc).__name__}: {exc}"
        print(traceback.format_exc(), file=sys.stderr)
    else:
        outcome.operations, outcome.faults = report.operations, report.faults
        outcome.violations = report.violations
        outcome.results = [{"checker": r.checker, "valid": r.valid, "explanation": r.explanation}
                           for r in report.results]
        print(report.report(), file=sys.stderr)
    (workdir / RESULT_FILE).write_text(json.dumps(asdict(outcome), indent=1, default=str))
    return 1 if outcome.failed else 0


# -- many rounds, in the parent ------------------------------------------------------------------

class Progress:
    """A one-line text bar on stderr: elapsed/total, rounds done, the current drill."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, rounds: int, current: str) -> None:
        """Redraw the bar (a tty) or print nothing (a log file gets `note` lines only)."""
        if not self.tty:
            return
        elapsed = time.monotonic() - self.start
        done = min(1.0, elapsed / self.total_s) if self.total_s > 0 else 1.0
        filled = int(done * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"[{bar}] {_mmss(elapsed)}/{_mmss(self.total_s)} rounds {rounds} | {current}"
        sys.stderr.write("\r" + line[:120].ljust(120))
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A line that stays (the bar is redrawn below it)."""
        elapsed = time.monotonic() - self.start
        prefix = "\r" + " " * 120 + "\r" if self.tty else ""
        sys.stderr.write(f"{prefix}[{_mmss(elapsed)}/{_mmss(self.total_s)}] {text}\n")
        sys.stderr.flush()


def run_round(name: str, seed: int, duration_s: float, workdir: Path, progress: Progress,
              rounds_done: int) -> Round:
    """Run one round in a child process, showing progress meanwhile; its Round."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tests.faults.run_drills", "--one", name, "--seed", str(seed),
            "--duration", str(duration_s), "--workdir", str(workdir)]
    began = time.monotonic()
    limit = duration_s + ROUND_GRACE_S
    with open(workdir / ROUND_LOG, "wb") as log:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
        try:
            timed_out = _watch(child, began + limit, progress, rounds_done,
                               f"{name} seed={seed}", duration_s)
        except KeyboardInterrupt:
            _stop(child)
            raise
    if timed_out:
        return Round(name, seed, duration_s, error=ERR_TIMED_OUT.format(seconds=limit),
                     workdir=str(workdir), wall_s=time.monotonic() - began)
    result = workdir / RESULT_FILE
    if not result.exists():
        return Round(name, seed, duration_s, workdir=str(workdir),
                     error=ERR_NO_RESULT.format(code=child.returncode, log=workdir / ROUND_LOG),
                     wall_s=time.monotonic() - began)
    outcome = Round(**json.loads(result.read_text()))
    outcome.wall_s = time.monotonic() - began
    return outcome


def _watch(child: subprocess.Popen[bytes], deadline: float, progress: Progress,
           rounds_done: int, label: str, duration_s: float) -> bool:
    """Redraw the bar until the child exits (False) or the deadline passes (True: stopped)."""
    began = time.monotonic()
    while child.poll() is None:
        progress.show(rounds_done, f"{label} {time.monotonic() - began:.0f}/{duration_s:.0f}s")
        if time.monotonic() > deadline:
            _stop(child)
            return True
        time.sleep(POLL_S)
    return False


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_all(names: list[str], minutes: float, seed: int, out: Path) -> list[Round]:
    """Rounds of `names` in turn until `minutes` are spent; every Round, in order."""
    rng = random.Random(seed)
    progress = Progress(minutes * 60)
    deadline = time.monotonic() + minutes * 60
    rounds: list[Round] = []
    while time.monotonic() < deadline:
        name = names[len(rounds) % len(names)]
        left = deadline - time.monotonic()
        duration = round(max(MIN_ROUND_S, min(rng.uniform(MIN_ROUND_S, MAX_ROUND_S), left)))
        round_seed = rng.randrange(1 << 31)
        workdir = out / f"{name}-{round_seed}"
        try:
            outcome = run_round(name, round_seed, duration, workdir, progress, len(rounds))
        except KeyboardInterrupt:
            progress.note(f"interrupted during {name} seed={round_seed}; that round is left out")
            break
        rounds.append(outcome)
        verdict = "FAILED" if outcome.failed else "passed"
        progress.note(f"{name} seed={round_seed} {duration:.0f}s: {verdict}, "
                      f"{outcome.operations} ops, {outcome.faults} faults"
                      + (f" ({outcome.error})" if outcome.error else ""))
        if not outcome.failed:
            shutil.rmtree(workdir, ignore_errors=True)
    progress.note(f"done: {len(rounds)} rounds")
    return rounds


def table(rounds: list[Round], names: list[str]) -> str:
    """The summary table: one row per daemon, then a replay line per failing round."""
    head = ("daemon", "rounds", "operations", "faults", "violations", "errors", "seeds")
    rows = [head]
    for name in names:
        mine = [r for r in rounds if r.daemon == name]
        failing = [r.seed for r in mine if r.failed]
        seeds = failing or [r.seed for r in mine]
        shown = ",".join(map(str, seeds[:MAX_SEEDS_SHOWN]))
        if len(seeds) > MAX_SEEDS_SHOWN:
            shown += f",... ({len(seeds)})"
        label = ("failing: " if failing else "all: ") + shown if seeds else "-"
        rows.append((name, str(len(mine)), str(sum(r.operations for r in mine)),
                     str(sum(r.faults for r in mine)), str(sum(r.violations for r in mine)),
                     str(sum(r.error is not None for r in mine)), label))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"replay: {r.replay()}  # {r.error or 'violation'}; {r.workdir}"
              for r in rounds if r.failed]
    return "\n".join(lines)


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run_drills",
                                     description="randomized rounds of the fault drills")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these drills")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (with --one: the round's seed)")
    parser.add_argument("--one", metavar="NAME", help="run one round of NAME here and exit")
    parser.add_argument("--duration", type=float, default=30.0, help="--one: seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="--one: where logs go")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module header); the exit status."""
    args = _parser().parse_args(argv)
    names = [args.one] if args.one else (args.only or list(DRILLS))
    for name in names:
        if name not in DRILLS:
            print(ERR_UNKNOWN_DRILL.format(name=name, names=sorted(DRILLS)), file=sys.stderr)
            return 2
    reason = netns.unavailable_reason()
    if reason is not None:
        print(ERR_UNAVAILABLE.format(reason=reason), file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if args.one:
        seed = args.seed if args.seed is not None else random.randrange(1 << 31)
        workdir = args.workdir or OUT_DIR / stamp / f"{args.one}-{seed}"
        return run_one(args.one, seed, args.duration, workdir)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out = OUT_DIR / stamp
    rounds = run_all(names, args.minutes, seed, out)
    text = table(rounds, names)
    print(f"fault drills: {args.minutes:g} minutes, run seed {seed}\n{text}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"seed": seed, "minutes": args.minutes, "drills": names,
               "rounds": [asdict(r) for r in rounds]}
    (out / "drills.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"(rounds in {out / 'drills.json'})")
    return 1 if any(r.failed for r in rounds) else 0


if __name__ == "__main__":
    raise SystemExit(main())
