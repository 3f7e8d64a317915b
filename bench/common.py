"""What every side-by-side benchmark needs: server processes, CPU accounting, the machine's
description, and the output (a table on stdout, JSON with the raw numbers, a PNG plot).

Servers run as real processes on loopback, each with its own temporary directory (data,
log), started and stopped cleanly: SIGTERM, wait, and only then SIGKILL. A `Figure` is one
row of the result: a measured value, the peer or limit it is compared with in the same run,
their ratio, and the goal for that ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from core.resp_client import RespConnection

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
# Every server stopped in this process: name, exit code and log tail (for the JSON).
SERVER_LOGS: list[dict[str, Any]] = []


# -- progress ----------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line per step on stderr (stdout is kept for the table)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A RESP server process on `host:port` with a temporary directory it may use.

    `start()` waits until it answers PING; `stop()` sends SIGTERM, waits, and removes the
    directory. Use as a context manager so a failing benchmark still cleans up.
    """

    def __init__(self, name: str, argv: list[str], host: str, port: int, tmp: Path) -> None:
        self.name = name
        self.argv = argv
        self.host = host
        self.port = port
        self.tmp = tmp
        self.log_path = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.log_tail = ""  # the end of the log, kept when stop() removes the directory

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with RespConnection.connect(self.host, self.port, timeout=1.0) as conn:
                    if conn.call("PING") == "PONG":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not answer PING within {START_TIMEOUT_S}s")
            time.sleep(0.05)

    def call(self, *args: str | int) -> object:
        """One command on a fresh connection (for INFO/GET checks around a run)."""
        with RespConnection.connect(self.host, self.port, timeout=5.0) as conn:
            return conn.call(*args)

    def info(self) -> dict[str, str]:
        """INFO as a flat {field: value} dict."""
        text = self.call("INFO")
        if isinstance(text, bytes):
            text = text.decode()
        fields: dict[str, str] = {}
        for line in str(text).splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[key.strip()] = value.strip()
        return fields

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT_S); remove the temporary directory."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_S}s; SIGKILL")
                proc.kill()
                proc.wait()
        if proc is not None:
            self.exit_code = proc.returncode
        self.log_tail = self.log()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.exit_code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        code = self.stop()
        if code not in (0, None):
            progress(f"{self.name} exited with {code}; log tail:\n{self.log_tail}")
        SERVER_LOGS.append({"server": self.name, "exit_code": code, "log_tail": self.log_tail})


def idgen_server(worker_id: int, host: str = "127.0.0.1") -> ServerProcess:
    """An idgen daemon (not started) with a fresh data directory."""
    port = find_free_port(host)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-idgen{worker_id}-"))
    argv = [
        sys.executable, "-m", "idgen", "serve", "--listen", f"{host}:{port}",
        "--worker-id", str(worker_id), "--data-dir", str(tmp / "data"), "--log-level", "WARNING",
    ]
    return ServerProcess(f"idgen[{worker_id}]@{host}:{port}", argv, host, port, tmp)


def redis_server(host: str = "127.0.0.1") -> ServerProcess:
    """A redis-server (not started) with no persistence, as the peer for INCR."""
    port = find_free_port(host)
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    argv = [
        "redis-server", "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(tmp), "--daemonize", "no", "--loglevel", "warning",
    ]
    return ServerProcess(f"redis-server@{host}:{port}", argv, host, port, tmp)


# -- CPU accounting ----------------------------------------------------------------------


def _process_cpu(pid: int) -> float:
    """CPU seconds of all live threads of `pid`, in nanoseconds from /proc/PID/task/*/schedstat
    (psutil's user+system are in 10 ms ticks, too coarse for a window of a second)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        total = 0
    if total:
        return total / 1e9
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _system_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuMeter:
    """CPU seconds of the servers, of the client, and of the whole machine over one timed
    window. `others_cores` is what the rest of the machine used meanwhile, in cores: load
    the benchmark did not create.

    The client is this process plus its waited-for children (redis-benchmark), or, for a
    load child still running, the CPU seconds it reports for its own window (`end(client_s)`):
    read from outside, a child that ends threads right after its window would lose their
    time."""

    def __init__(self, server_pids: Sequence[int] = ()) -> None:
        self.server_pids = list(server_pids)

    def begin(self) -> None:
        self._wall = time.perf_counter()
        self._servers = [_process_cpu(p) for p in self.server_pids]
        self._self = time.process_time()
        self._children = _children_cpu()
        self._system = _system_busy()

    def end(self, client_s: float = 0.0) -> None:
        """Close the window; `client_s`: CPU seconds of a running client child."""
        wall = time.perf_counter() - self._wall
        servers = [
            _process_cpu(p) - b for p, b in zip(self.server_pids, self._servers, strict=True)
        ]
        system = _system_busy() - self._system
        self._servers_s = servers
        self._client_s = time.process_time() - self._self + _children_cpu() - self._children
        self._finish(wall, system, client_s)

    def add_client(self, client_s: float) -> None:
        """Account a client child's CPU seconds, known only after `end()`."""
        self._finish(self.result["wall_s"], self._system_s, client_s)

    def _finish(self, wall: float, system: float, client_s: float) -> None:
        self._system_s = system
        client = self._client_s + client_s
        self.result = {
            "wall_s": wall,
            "server_cores": [s / wall for s in self._servers_s],
            "client_cores": client / wall,
            "machine_busy_cores": system / wall,
            "others_cores": max(0.0, (system - sum(self._servers_s) - client) / wall),
        }

    def __enter__(self) -> CpuMeter:
        self.begin()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end()


# -- the machine -------------------------------------------------------------------------


def _command_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str:
    return _command_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])


def _git_uncommitted() -> list[str]:
    """Files of the tree that differ from the commit (other engineers' work in progress
    runs in the benchmark too), bench/results/ left out."""
    try:
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in status.splitlines()
            if line[3:] and not line[3:].startswith("bench/results/")]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from native import resp as native_resp
    from native import snowflake

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "redis_server": _command_version(["redis-server", "--version"]),
        "redis_benchmark": _command_version(["redis-benchmark", "--version"]),
        "redis_py": _package_version("redis"),
        "snowflake_impl": snowflake.IMPLEMENTATION,
        "resp_parser_impl": native_resp.IMPLEMENTATION,
        "git_commit": _git_commit(),
        "git_uncommitted": _git_uncommitted(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# -- figures and output ------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the result. `ratio` = value / peer_value; the goal is met when
    ratio >= goal_ratio (no goal: informational). `detail` holds the raw numbers."""

    section: str
    label: str
    value: float
    unit: str
    peer_label: str
    peer_value: float
    goal_ratio: float | None
    goal_text: str
    ratio: float = 0.0
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratio = self.value / self.peer_value if self.peer_value else 0.0
        self.met = None if self.goal_ratio is None else self.ratio >= self.goal_ratio


@dataclass
class Skipped:
    section: str
    label: str
    reason: str


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(figures: Sequence[Figure], skipped: Sequence[Skipped]) -> str:
    """The figures as a fixed-width text table."""
    header = ("section", "figure", "value", "peer / limit", "ratio", "goal", "met")
    rows = [header]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((
            f.section, f.label, f"{_num(f.value)} {f.unit}",
            f"{f.peer_label} {_num(f.peer_value)}", f"{f.ratio:.3f}", f.goal_text, met,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in (2, 4) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    for s in skipped:
        lines.append(f"not measured: {s.section} {s.label}: {s.reason}")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    def default(value: object) -> object:
        if isinstance(value, Figure | Skipped):
            return asdict(value)
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot serialise {type(value).__name__}")

    path.write_text(json.dumps(document, indent=2, default=default) + "\n")


def plot(path: Path, figures: Sequence[Figure], title: str) -> None:
    """Horizontal bars of the ratios; a black tick marks each goal (green met, red missed,
    grey without a goal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{f.section} {f.label}" for f in figures]
    ratios = [f.ratio for f in figures]
    colours = ["#9e9e9e" if f.met is None else ("#2e7d32" if f.met else "#c62828") for f in figures]
    height = 0.9 + 0.42 * len(figures)
    fig, ax = plt.subplots(figsize=(11, height))
    positions = list(range(len(figures)))[::-1]
    ax.barh(positions, ratios, color=colours, height=0.6)
    for pos, f in zip(positions, figures, strict=True):
        ax.text(f.ratio, pos, f" {f.ratio:.2f}", va="center", fontsize=8)
        if f.goal_ratio is not None:
            ax.plot([f.goal_ratio, f.goal_ratio], [pos - 0.4, pos + 0.4], color="black", lw=2)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.axvline(1.0, color="#616161", lw=0.8, ls="--")
    ax.set_xlabel("ratio to peer / limit (black tick: goal)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max([1.1, *ratios, *[f.goal_ratio or 0 for f in figures]]) * 1.12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- profiles ----------------------------------------------------------------------------


def pyspy_record(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Start `py-spy record` on `pid` (raw collapsed stacks, non-blocking sampling)."""
    exe = Path(sys.executable).with_name("py-spy")
    argv = [
        str(exe if exe.exists() else "py-spy"), "record", "-p", str(pid), "-d", str(seconds),
        "-f", "raw", "-o", str(out), "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise_profile(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares of the frames in a py-spy raw (collapsed) profile."""
    self_samples: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [(frame, round(n / total, 4)) for frame, n in ranked]

    return {"samples": [("total", float(total))], "self": shares(self_samples),
            "inclusive": shares(inclusive)}


def profile_under_load(
    profiles: dict[str, Any], name: str, load: subprocess.Popen[bytes], settle_s: float,
    targets: list[tuple[str, int]], out: Path, prefix: str, seconds: int,
) -> None:
    """With `load` started (not measured), wait `settle_s` for it to get going, record
    `targets` (see profile_processes), then let the load finish (stopped after 120 s)."""
    time.sleep(settle_s)
    profile_processes(profiles, name, targets, out, prefix, seconds)
    try:
        load.wait(timeout=120)
    except subprocess.TimeoutExpired:
        load.terminate()
        load.wait()


def profile_processes(
    profiles: dict[str, Any], name: str, targets: list[tuple[str, int]], out: Path,
    prefix: str, seconds: int,
) -> None:
    """Record each (role, pid) of `targets` with py-spy for `seconds` while a load runs,
    and file a summary of each under `profiles["<name> (<role>)"]`."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    spies = []
    for role, pid in targets:
        path = out / f"{prefix}{slug}-{role}.txt"
        spies.append((role, path, pyspy_record(pid, seconds, path)))
    for role, path, spy in spies:
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not path.exists():
            progress(f"profile {name} {role}: py-spy failed: {err.decode(errors='replace')[-300:]}")
            continue
        summary = summarise_profile(path)
        profiles[f"{name} ({role})"] = {"file": str(path), **summary}
        top = ", ".join(f"{frame} {share:.0%}" for frame, share in summary["self"][:3])
        progress(f"profile {name} {role}: {path.name}; top self: {top}")


def uptime() -> str:
    """The `uptime` line (load averages, how long up), for the JSON: the machine is shared."""
    line = _command_version(["uptime"])
    return line or f"load average {os.getloadavg()}"


def goal_outcome(figures: Sequence[Figure], skipped: Sequence[Skipped]) -> dict[str, Any]:
    """What the run concluded: the goals met and missed (by figure), the figures not
    measured, and `met` (every goal met and nothing left unmeasured)."""
    goals = [f for f in figures if f.met is not None]
    missed = [f"{f.section} {f.label}" for f in goals if not f.met]
    unmeasured = [f"{s.section} {s.label}: {s.reason}" for s in skipped]
    return {
        "met": not missed and not unmeasured,
        "goals": len(goals), "missed": missed, "not_measured": unmeasured,
    }


def settings_of(document: dict[str, Any]) -> dict[str, Any]:
    """The settings a run was made with: its `settings`, else its `plan`, else the plain
    scalar options it recorded at the top level (rounds, seconds...)."""
    if isinstance(document.get("settings"), dict):
        return dict(document["settings"])
    if isinstance(document.get("plan"), dict):
        return dict(document["plan"])
    skip = {"benchmark", "started", "finished", "table", "python", "root", "date", "uptime"}
    return {k: v for k, v in document.items()
            if k not in skip and isinstance(v, int | float | str | bool)
            and not (isinstance(v, str) and "\n" in v)}


def write_results(
    out: Path, name: str, stamp: str, document: dict[str, Any], figures: Sequence[Figure],
    title: str,
) -> None:
    """Write `<name>.json` (and `<name>.png` when there are figures) into `out`, each run
    replacing the last one's (git keeps the history; bench/tables.py turns them into
    bench/README.md's tables), then say which goals were missed. The JSON gets the fields
    every results file carries: `date` (the run's UTC stamp), `settings`, `uptime` and
    `outcome` (see goal_outcome)."""
    skipped = [s for s in document.get("skipped", []) if isinstance(s, Skipped)]
    document.setdefault("date", stamp)
    document.setdefault("settings", settings_of(document))
    document.setdefault("uptime", uptime())
    document["outcome"] = goal_outcome(figures, skipped)
    json_path = out / f"{name}.json"
    png_path = out / f"{name}.png"
    write_json(json_path, document)
    if figures:
        plot(png_path, figures, title)
    progress(f"wrote {json_path}" + (f" and {png_path}" if figures else ""))
    if out.resolve() == DEFAULT_OUT.resolve():
        _refresh_readme_table(name)
    outcome = document["outcome"]
    if outcome["missed"]:
        progress("goals missed: " + "; ".join(outcome["missed"]))
    if outcome["not_measured"]:
        progress("not measured: " + "; ".join(outcome["not_measured"]))


def _refresh_readme_table(name: str) -> None:
    """Rewrite bench/README.md's table of `name` from the JSON just written (bench.tables),
    so a run into bench/results/ never leaves its table stale."""
    from bench import tables

    text = tables.README.read_text()
    try:
        if name not in tables.marker_names(text):
            progress(f"bench/README.md has no table for {name} (bench.tables markers)")
            return
        new = tables.fill(text, tables.blocks_for([name], DEFAULT_OUT))
    except (tables.MarkerError, KeyError, ValueError) as exc:
        progress(f"bench/README.md's table of {name} not regenerated: {exc}")
        return
    if new != text:
        tables.README.write_text(new)
        progress(f"regenerated the {name} table of bench/README.md")


def exit_status(document: dict[str, Any]) -> int:
    """A benchmark's exit status from its written document: 0 when every goal was met
    and every figure measured, else 1."""
    return 0 if document["outcome"]["met"] else 1


def bench_parser(prog: str, description: str, sections: Sequence[str],
                 quick_help: str) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes: --quick, --out, --sections."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON/PNG")
    parser.add_argument("--sections", default=",".join(sections),
                        help=f"comma-separated subset of {','.join(sections)} (default all)")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None,
                     sections: Sequence[str]) -> argparse.Namespace:
    """Parse, and turn --sections into the list of sections chosen (or exit with usage)."""
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not chosen or any(s not in sections for s in chosen):
        parser.error(f"--sections takes a comma-separated subset of {','.join(sections)}")
    args.sections = chosen
    return args


def figures_text(figures: Sequence[Figure], skipped: Sequence[Skipped],
                 sections: dict[str, dict[str, Any]], info: dict[str, Any], windows: str) -> str:
    """The figures table, with how much CPU other processes took during `windows` (the
    runs' `cpu.others_cores`; also filed in `info` as others_cores_mean)."""
    others = [run["cpu"]["others_cores"]
              for sec in sections.values() for run in sec["runs"] if "cpu" in run]
    info["others_cores_mean"] = sum(others) / len(others) if others else None
    text = table(figures, skipped)
    if others:
        text += (f"\nOther processes used {info['others_cores_mean']:.2f} of "
                 f"{info['cpu_count']} cores on average during {windows}"
                 f" (max {max(others):.2f}); the per CPU-s rows are the steadier comparison "
                 "when that is high.")
    return text
