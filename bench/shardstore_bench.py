"""shardstore beside redis-server: `.venv/bin/python -m bench.shardstore_bench`.

Every figure is a ratio from this run on this machine. Sections:

1. One node, one shard of one replica (`--shards 1 --replicas 1`), for each fsync mode
   against `redis-server --appendonly yes --appendfsync MODE` (`always`, `everysec`):
   `redis-benchmark -t set,get -c 50 -P 1` and `-P 16` (its defaults otherwise: 3-byte
   values, one key), interleaved rounds, median requests/s. Goals: >= 0.9x at -P 1,
   >= 0.5x at -P 16.
2. Three replicas (`--shards 1 --replicas 3`, fsync `always`, the only mode for three) on
   three nodes, redis-benchmark pointed at the shard's leader, beside redis-server
   `appendfsync always` of section 1's load (informational: Redis does not replicate
   synchronously).
3. `redis-benchmark --cluster -t set,get` against three nodes of three shards of three
   replicas, beside a real Redis Cluster of three masters made by `redis-cli --cluster
   create` (AOF with `appendfsync always`; informational).
4. Memory: RSS holding N keys of 100-byte values (1,000,000; --quick 100,000) loaded
   with `redis-cli --pipe`, beside redis-server's RSS for the same keys (goal: ours below
   it, since values stay on disk: the figure is redis / ours, goal >= 1.0).

Sections 1 to 3 run `-t set` and `-t get` as separate redis-benchmark commands and read
the servers' CPU seconds (user + system, psutil; every shardstore node of the run, and the
redis-server or every Redis Cluster master) around each, so each throughput figure has a
row beside it: requests per server CPU-second, ours against redis's (informational; it
shows the cost per request apart from how busy the machine's other processes keep it).
The kernel counts CPU time in clock ticks (10 ms), so a side that used a few ticks in a
--quick run, as redis-server does at -P 16, has a coarse figure.

Each run checks its own result: redis-benchmark exits 0 and reports no error, the key it
wrote reads back as written, and section 4's key count and sampled values are right on both
sides. A failed run is reported (and in the JSON), never dropped; the command exits 1 when
a goal is missed or a figure could not be measured.
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
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    SERVER_LOGS,
    Figure,
    ServerProcess,
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
from core.resp_client import ReplyError, RespConnection

SECTIONS = ("1", "2", "3", "4")
HOST = "127.0.0.1"
CLIENTS = 50
BENCH_KEY = "key:__rand_int__"  # the one key redis-benchmark's SET/GET use without -r
DATA_BYTES = 3  # its default value size (-d)
GOALS = {1: 0.9, 16: 0.5}
WRITABLE_TIMEOUT_S = 60.0
VALUE_BYTES = 100
SAMPLE_EVERY = 9973  # section 4 reads back every this-many-th key


@dataclass(frozen=True)
class Plan:
    requests: dict[int, int]  # pipeline -> redis-benchmark -n
    rounds: int
    cluster_requests: int
    memory_keys: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan({1: 5_000, 16: 40_000}, 1, 20_000, 100_000)
    return Plan({1: 40_000, 16: 300_000}, args.rounds, 200_000, 1_000_000)


# -- servers -----------------------------------------------------------------------------


def shardstore_nodes(count: int, shards: int, replicas: int, fsync: str) -> list[ServerProcess]:
    """`count` shardstore nodes (not started) making one cluster, each in its own temp dir."""
    peer_ports = [find_free_port(HOST) for _ in range(count)]
    peers = ",".join(f"{i + 1}={HOST}:{p}" for i, p in enumerate(peer_ports))
    nodes = []
    for index, peer_port in enumerate(peer_ports):
        port = find_free_port(HOST)
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-shardstore{index + 1}-"))
        argv = [
            sys.executable, "-m", "shardstore", "serve", "--id", str(index + 1),
            "--listen", f"{HOST}:{port}", "--peer-listen", f"{HOST}:{peer_port}",
            "--peers", peers, "--data-dir", str(tmp / "data"), "--shards", str(shards),
            "--replicas", str(replicas), "--fsync", fsync, "--log-level", "WARNING",
        ]
        nodes.append(ServerProcess(f"shardstore[{index + 1}]@{HOST}:{port}", argv, HOST, port,
                                   tmp))
    return nodes


def redis_aof(fsync: str, *extra: str) -> ServerProcess:
    """A redis-server (not started) with the append-only file on and `appendfsync fsync`."""
    port = find_free_port(HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-aof-"))
    argv = [
        "redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly",
        "yes", "--appendfsync", fsync, "--dir", str(tmp), "--daemonize", "no", "--loglevel",
        "warning", *extra,
    ]
    return ServerProcess(f"redis-server[{fsync}]@{HOST}:{port}", argv, HOST, port, tmp)


@contextlib.contextmanager
def running(servers: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """Start every server; stop them all on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield servers


def wait_writable(server: ServerProcess, key: str = "bench:probe") -> None:
    """Until a SET through `server` succeeds (the cluster made its slot map and elected)."""
    deadline = time.monotonic() + WRITABLE_TIMEOUT_S
    while True:
        try:
            with RespConnection.connect(server.host, server.port, timeout=5.0) as conn:
                if conn.call("SET", key, "1") == "OK":
                    return
        except (ReplyError, OSError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} took no write in {WRITABLE_TIMEOUT_S}s: {exc}"
                                   ) from exc
        time.sleep(0.2)


def shard_leader(nodes: list[ServerProcess]) -> ServerProcess:
    """The node whose INFO says it leads a shard (`shards_leading`; one-shard clusters)."""
    deadline = time.monotonic() + WRITABLE_TIMEOUT_S
    while time.monotonic() < deadline:
        for node in nodes:
            if node.info().get("shards_leading"):
                return node
        time.sleep(0.2)
    raise RuntimeError("no node reports leading the shard (INFO shards_leading)")


# -- redis-benchmark ---------------------------------------------------------------------


def parse_rates(text: str) -> dict[str, float]:
    """{test: requests/s} from `redis-benchmark --csv` output (with --cluster, the CSV
    follows a description of the masters)."""
    start = text.find('"test"')
    rows = csv.DictReader(io.StringIO(text[start:])) if start >= 0 else []
    rates = {row["test"]: float(row["rps"]) for row in rows}
    if not rates:
        raise ValueError(f"unexpected redis-benchmark output: {text!r}")
    return rates


def cpu_seconds(servers: list[ServerProcess]) -> float:
    """User + system CPU seconds the servers' processes have used so far (every thread)."""
    total = 0.0
    for server in servers:
        times = psutil.Process(server.pid).cpu_times()
        total += times.user + times.system
    return total


def run_benchmark(server: ServerProcess, requests: int, pipeline: int,
                  extra: tuple[str, ...] = (), cpu_of: list[ServerProcess] | None = None
                  ) -> dict[str, Any]:
    """redis-benchmark -t set, then -t get, against `server`, with the CPU seconds of
    `cpu_of` (default: `server`) used by each; checks each exit, its errors and that the
    key it wrote reads back as written."""
    with contextlib.suppress(ReplyError, OSError):
        server.call("DEL", BENCH_KEY)
    rates: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    commands = []
    for test in ("set", "get"):
        argv = [
            "redis-benchmark", "-h", server.host, "-p", str(server.port), "-c", str(CLIENTS),
            "-n", str(requests), "-P", str(pipeline), "-t", test, "-q", "--csv", *extra,
        ]
        before = cpu_seconds(cpu_of or [server])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        used = cpu_seconds(cpu_of or [server]) - before
        if proc.returncode != 0 or "error" in proc.stderr.lower():
            raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                               f"{proc.stderr[-2000:]}")
        for name, rate in parse_rates(proc.stdout).items():
            rates[name] = rate
            per_cpu[name] = requests / used if used > 0 else 0.0
        commands.append(shlex.join(argv))
    if "--cluster" not in extra:
        value = server.call("GET", BENCH_KEY)
        if not isinstance(value, bytes) or len(value) != DATA_BYTES:
            raise RuntimeError(f"{server.name}: GET {BENCH_KEY} read {value!r} after the SETs")
    return {"server": server.name, "pipeline": pipeline, "requests": requests, "rps": rates,
            "per_cpu_second": per_cpu, "command": "; ".join(commands)}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the server redis-benchmark talks to, and every server
    process whose CPU seconds count for it."""

    server: ServerProcess
    processes: list[ServerProcess]


def compare(rec: Recorder, section: str, plan: Plan, ours: Side, peer: Side,
            label: str, peer_label: str, goals: dict[int, float | None],
            extra: tuple[str, ...] = ()) -> None:
    """Interleaved rounds of both sides at each pipeline depth; per test one figure of
    requests/s and one of requests per server CPU-second."""
    for pipeline, requests in plan.requests.items():
        if "--cluster" in extra:
            requests = plan.cluster_requests
        rates: dict[str, dict[str, list[float]]] = {"ours": {}, "peer": {}}
        per_cpu: dict[str, dict[str, list[float]]] = {"ours": {}, "peer": {}}
        for round_ in range(plan.rounds):
            for side, which in (("ours", ours), ("peer", peer)):
                name = f"{section} {label} -P {pipeline} round {round_ + 1} {side}"
                result = rec.attempt(section, name,
                                     partial(run_benchmark, which.server, requests, pipeline,
                                             extra, which.processes))
                if result is None:
                    continue
                progress(f"{name}: " + ", ".join(
                    f"{t} {r:,.0f}/s ({result['per_cpu_second'][t]:,.0f} per CPU-s)"
                    for t, r in result["rps"].items()))
                for test, rate in result["rps"].items():
                    rates[side].setdefault(test, []).append(rate)
                    per_cpu[side].setdefault(test, []).append(result["per_cpu_second"][test])
        for test in ("SET", "GET"):
            goal = goals.get(pipeline)
            row = f"{label} {test} -c {CLIENTS} -P {pipeline}"
            rec.add(_figure(section, row, rates, test, "req/s", peer_label, goal), section, row)
            row_cpu = f"{row} per CPU-second"
            rec.add(_figure(section, row_cpu, per_cpu, test, "req/CPU-s", peer_label, None),
                    section, row_cpu)


def _figure(section: str, row: str, values: dict[str, dict[str, list[float]]], test: str,
            unit: str, peer_label: str, goal: float | None) -> Figure | None:
    """The median of each side's rounds for `test` as a Figure; None when a side has none."""
    ours, peer = values["ours"].get(test, []), values["peer"].get(test, [])
    if not ours or not peer:
        return None
    return Figure(section, row, median(ours), unit, peer_label, median(peer), goal,
                  "-" if goal is None else f">= {goal}x", detail={"ours": ours, "peer": peer})


def section_one_replica(plan: Plan, rec: Recorder) -> None:
    for fsync in ("always", "everysec"):
        ours = shardstore_nodes(1, 1, 1, fsync)
        with running([*ours, redis_aof(fsync)]) as (node, redis):
            wait_writable(node)
            compare(rec, "1", plan, Side(node, [node]), Side(redis, [redis]),
                    f"1 replica {fsync}", f"redis aof {fsync}", dict(GOALS))


def section_three_replicas(plan: Plan, rec: Recorder) -> None:
    with running([*shardstore_nodes(3, 1, 3, "always"), redis_aof("always")]) as servers:
        wait_writable(servers[0])
        leader = shard_leader(servers[:3])
        compare(rec, "2", plan, Side(leader, servers[:3]), Side(servers[3], [servers[3]]),
                "3 replicas always", "redis aof always", {1: None, 16: None})


@contextlib.contextmanager
def redis_cluster(masters: int) -> Iterator[list[ServerProcess]]:
    """A real Redis Cluster of `masters` masters (AOF, appendfsync always) on loopback."""
    servers = []
    for _ in range(masters):
        server = redis_aof("always", "--cluster-enabled", "yes", "--cluster-port",
                           str(find_free_port(HOST)))
        server.argv += ["--cluster-config-file", str(server.tmp / "nodes.conf")]
        servers.append(server)
    with running(servers):
        argv = ["redis-cli", "--cluster", "create", *(s.address for s in servers),
                "--cluster-yes"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed: {proc.stdout[-1000:]}")
        deadline = time.monotonic() + WRITABLE_TIMEOUT_S
        while "cluster_state:ok" not in str(servers[0].call("CLUSTER", "INFO")):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)
        yield servers


def section_cluster(plan: Plan, rec: Recorder) -> None:
    with running(shardstore_nodes(3, 3, 3, "always")) as ours, redis_cluster(3) as theirs:
        wait_writable(ours[0], "{bench}probe")
        compare(rec, "3", plan, Side(ours[0], ours), Side(theirs[0], theirs),
                "--cluster 3 shards", "redis cluster", {1: None, 16: None}, ("--cluster",))


# -- memory ------------------------------------------------------------------------------


def _value(index: int) -> bytes:
    return (b"%010d" % index) * (VALUE_BYTES // 10)


def load_keys(server: ServerProcess, count: int) -> dict[str, Any]:
    """SET key:0..count-1 (100-byte values) through `redis-cli --pipe`; then check DBSIZE and
    a sample of values, and read the server's RSS."""
    def protocol() -> Iterator[bytes]:
        for index in range(count):
            key = b"key:%d" % index
            value = _value(index)
            yield b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value),
                                                                       value)

    argv = ["redis-cli", "-h", server.host, "-p", str(server.port), "--pipe"]
    started = time.monotonic()
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for index, chunk in enumerate(protocol()):
            proc.stdin.write(chunk)
            if index and index % 200_000 == 0:
                progress(f"4 {server.name}: {index:,} of {count:,} keys sent")
        proc.stdin.close()
        output = proc.stdout.read().decode(errors="replace")
    if proc.returncode != 0 or "errors: 0" not in output:
        raise RuntimeError(f"redis-cli --pipe into {server.name} failed: {output[-1000:]}")
    wait_keys(server, count)
    for index in range(0, count, SAMPLE_EVERY):
        value = server.call("GET", f"key:{index}")
        if value != _value(index):
            raise RuntimeError(f"{server.name}: key:{index} read {value!r}")
    rss = psutil.Process(server.pid).memory_info().rss
    return {"server": server.name, "keys": count, "rss_bytes": rss,
            "load_s": time.monotonic() - started, "command": shlex.join(argv)}


def wait_keys(server: ServerProcess, count: int) -> None:
    """DBSIZE reaches `count` (shardstore applies on the leader before it replies, but a
    single-node check costs nothing and catches a lost write)."""
    size = server.call("DBSIZE")
    if size != count:
        raise RuntimeError(f"{server.name}: DBSIZE {size} after loading {count} keys")


def section_memory(plan: Plan, rec: Recorder) -> None:
    section = "4"
    results: dict[str, dict[str, Any] | None] = {}
    ours = shardstore_nodes(1, 1, 1, "everysec")
    with running([*ours, redis_aof("everysec")]) as (node, redis):
        wait_writable(node)
        node.call("DEL", "bench:probe")
        for side, server in (("ours", node), ("redis", redis)):
            results[side] = rec.attempt(section, f"4 load {side}",
                                        partial(load_keys, server, plan.memory_keys))
            if results[side] is not None:
                progress(f"4 {side}: RSS {results[side]['rss_bytes'] / 2**20:,.0f} MiB")
    row = f"RSS {plan.memory_keys:,} keys x {VALUE_BYTES} B (redis / ours)"
    ours_r, redis_r = results["ours"], results["redis"]
    figure = Figure(
        section, row, redis_r["rss_bytes"] / 2**20, "MiB redis", "ours",
        ours_r["rss_bytes"] / 2**20, 1.0, ">= 1.0x (ours below)",
        detail={"ours": ours_r, "redis": redis_r},
    ) if ours_r and redis_r else None
    rec.add(figure, section, row)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.shardstore_bench", __doc__.splitlines()[0], SECTIONS,
                          "short runs, one round each, 100,000 keys for memory")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    return parse_bench_args(parser, argv, SECTIONS)


RUNNERS: dict[str, tuple[str, Callable[[Plan, Recorder], None]]] = {
    "1": ("one replica against redis AOF", section_one_replica),
    "2": ("three replicas", section_three_replicas),
    "3": ("redis-benchmark --cluster", section_cluster),
    "4": ("memory for N keys", section_memory),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rec = Recorder()
    info = machine()
    progress(f"shardstore bench on {info['cpu_count']} cpus, load average "
             f"{info['loadavg_at_start'][0]:.2f}; results to {out}")
    for name in args.sections:
        title, runner = RUNNERS[name]
        progress(f"section {name} {title} ...")
        try:
            runner(plan, rec)
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
            rec.section(name)["failures"].append({"label": title, "error": str(exc)[-4000:]})
            progress(f"section {name} FAILED: {str(exc).strip()[-300:]}")
    info["loadavg_at_end"] = list(os.getloadavg())
    text = figures_text(rec.figures, rec.skipped, rec.sections, info, "the runs")
    print(text, flush=True)
    failures = [f for sec in rec.sections.values() for f in sec["failures"]]
    document = {
        "benchmark": "shardstore", "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "quick": args.quick,
        "plan": plan.__dict__, "machine": info, "figures": rec.figures,
        "skipped": rec.skipped, "sections": rec.sections, "server_logs": SERVER_LOGS,
        "table": text,
    }
    write_results(out, "shardstore", started.strftime("%Y%m%d-%H%M%S"), document, rec.figures,
                  f"shardstore, {started:%Y-%m-%d %H:%M} UTC, {info['cpu_count']} cpus")
    missed = [f for f in rec.figures if f.met is False]
    return 1 if missed or failures or rec.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
