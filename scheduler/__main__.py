"""Command line: `scheduler serve` (a Raft node), `scheduler worker` (runs the jobs), and the
client commands against `--server H:P,...`:

    scheduler job add NAME SCHEDULE COMMAND [OPTION VALUE ...]
    scheduler job list | get NAME | del NAME | pause NAME | resume NAME | run NAME
    scheduler history JOB [count]
    scheduler cluster info

The client commands ask `--server`'s nodes, else those of `$SCHEDULER_SERVERS`, else
`make run`'s (core/client_cli.py); when none answers within a second (or `--deadline`, if
shorter) they fail at once with a message saying which nodes were asked.

Exit status: 0, 1 when the cluster refused the request or did not answer, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from core import client_cli, cluster_options, daemon
from core.raft.driver import RaftDriver
from scheduler.fireloop import DEFAULT_FIRE_AHEAD_MS, MAX_FIRE_AHEAD_MS
from scheduler.jobs import OPTIONS as JOB_ADD_OPTIONS
from scheduler.launch import client_addresses

log = logging.getLogger("scheduler")

DEFAULT_PORT = 7380
DEFAULT_PEER_PORT = 7381
SERVERS_ENV = "SCHEDULER_SERVERS"  # the client commands' nodes when --server is not given
WHAT = "scheduler node"
DEFAULT_DEADLINE_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scheduler", description="distributed cron on Raft")
    sub = parser.add_subparsers(dest="action", required=True)

    serve = sub.add_parser("serve", help="run a scheduler node")
    daemon.add_common_options(serve, DEFAULT_PORT)
    cluster_options.add_cluster_options(serve, DEFAULT_PEER_PORT)
    # etcd's default. A snapshot is encoded and written in a thread (the loop pauses only
    # for the capture, the GIL and compaction), but it still costs CPU and a write of the
    # whole state: every minute or so, not every few seconds (bench/micro_snapshot.py).
    serve.add_argument("--snapshot-every", type=int, default=100_000,
                       help="applied entries between snapshots (log compaction)")
    serve.add_argument("--worker-timeout-ms", type=int, default=10_000,
                       help="a run's worker silent this long: the run is lost (retried)")
    serve.add_argument("--fire-ahead-ms", type=int, default=DEFAULT_FIRE_AHEAD_MS,
                       help="commit and dispatch a CONCURRENCY allow job's run this long "
                            "before its slot; the worker starts it at the slot (0: off)")

    worker = sub.add_parser("worker", help="run jobs for a scheduler cluster")
    worker.add_argument("--scheduler", required=True, help="H:P,H:P,... RESP ports of nodes")
    worker.add_argument("--tags", default="",
                        help="a,b: the tags this worker advertises: it takes the runs of shell "
                             "jobs without TARGET and of those whose TARGET names one of them")
    worker.add_argument("--id", default=None, help="worker id (default host-pid)")
    worker.add_argument("--password", default=None,
                        help="the nodes' --requirepass (the worker AUTHs with it)")
    worker.add_argument("--slots", "--concurrency", dest="slots", type=int, default=8,
                        help="runs this worker executes at once")
    worker.add_argument("--heartbeat-ms", type=int, default=2000,
                        help="WORKER.HEARTBEAT interval (liveness: lost runs, TARGET ALL)")
    worker.add_argument("--worker-timeout-ms", type=int, default=10_000,
                        help="the cluster's --worker-timeout-ms: cut off from every node for "
                             "this less a margin, the worker kills its runs (fences itself) "
                             "and reports them abandoned on reconnection (0: never fence)")
    worker.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")

    client = argparse.ArgumentParser(add_help=False)
    client_cli.add_server_option(client, SERVERS_ENV, client_addresses(), "scheduler nodes")
    client.add_argument("--password", default=None, help="the nodes' --requirepass")
    client.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                        help="seconds to keep trying the nodes before giving up (when no "
                             f"node answers at all: {client_cli.PROBE_WITHIN_S:g} s at most)")

    job = sub.add_parser("job", help="add, list, show, delete, pause, resume or run jobs")
    ops = job.add_subparsers(dest="op", required=True)
    add = ops.add_parser("add", parents=[client], help="JOB.ADD")
    add.add_argument("name", help="the job's name (A-Z a-z 0-9 _ . -)")
    add.add_argument("schedule", help="cron (5 fields, or 6 with seconds first), a macro "
                                      "such as @hourly, '@every 10s', or once: "
                                      "'@in 30s', '@at 2030-01-31T09:00:00Z'")
    add.add_argument("command", help="the shell command (or an embedded worker's handler)")
    add.add_argument("options", nargs="*",
                     help="OPTION VALUE ... as JOB.ADD takes them (e.g. MISFIRE ALL): "
                          f"{' '.join(JOB_ADD_OPTIONS)}")
    ops.add_parser("list", parents=[client],
                   help="JOB.LIST WITHSTATUS: each job and its status (scheduled, paused, "
                        "waiting, running or finished)")
    for op in ("get", "del", "pause", "resume", "run"):
        ops.add_parser(op, parents=[client], help=f"JOB.{op.upper()}").add_argument(
            "name", help="the job's name")

    history = sub.add_parser("history", parents=[client], help="a job's latest runs")
    history.add_argument("job", help="the job's name")
    history.add_argument("count", nargs="?", type=int, default=10,
                         help="how many of the latest runs (10)")

    cluster = sub.add_parser("cluster", help="cluster status")
    cluster_ops = cluster.add_subparsers(dest="op", required=True)
    cluster_ops.add_parser("info", parents=[client], help="CLUSTER.INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "serve":
            return serve(args)
        if args.action == "worker":
            return work(args)
        return client_command(args)
    except daemon.ConfigError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    from core import metrics
    from scheduler import metrics as scheduler_metrics
    from scheduler.server import SchedulerServer

    daemon.setup_logging(args.log_level)
    settings = cluster_options.cluster_settings(args, default_port=DEFAULT_PORT,
                                                default_peer_port=DEFAULT_PEER_PORT)
    if args.worker_timeout_ms < 1:
        raise daemon.ConfigError("--worker-timeout-ms must be >= 1")
    if not 0 <= args.fire_ahead_ms <= MAX_FIRE_AHEAD_MS:
        raise daemon.ConfigError(f"--fire-ahead-ms must be 0..{MAX_FIRE_AHEAD_MS}")
    config = cluster_options.driver_config(settings, snapshot_every=args.snapshot_every)
    host, port = settings.listen
    peer_host, peer_port = settings.peer_listen
    clock = daemon.clock_from_args(args)

    async def run(stop: asyncio.Event) -> int:
        def factory(apply, snapshot, restore):  # noqa: ANN001, ANN202
            return RaftDriver(config, apply, snapshot, restore)

        server = SchedulerServer(factory, clock, password=args.requirepass,
                                 max_clients=args.maxclients,
                                 worker_timeout_ms=args.worker_timeout_ms,
                                 fire_ahead_ms=args.fire_ahead_ms)
        try:
            await server.start(host, port)
        except OSError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("scheduler node %d ready on %s:%d (raft %s:%d)", args.id, host,
                 server.resp.port, peer_host, peer_port)
        endpoint = await metrics.open_endpoint(args, lambda: scheduler_metrics.collectors(server))
        failed = asyncio.ensure_future(server.driver.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if failed.done():
            log.error("raft driver stopped: %s", failed.exception())
            return 1
        failed.cancel()
        await metrics.close_endpoint(endpoint)
        await server.stop()
        log.info("scheduler node %d stopped", args.id)
        return 0

    return daemon.run(run)


def work(args: argparse.Namespace) -> int:
    from scheduler.reaper import process_reaper
    from scheduler.routing import NamesError, parse_names
    from scheduler.worker import Worker, fence_delay_s

    daemon.setup_logging(args.log_level)
    servers = [daemon.parse_hostport(s.strip()) for s in args.scheduler.split(",") if s.strip()]
    try:
        tags = sorted(parse_names(args.tags, "--tags"))
    except NamesError as exc:
        raise daemon.ConfigError(exc.message.removeprefix("ERR ")) from None
    heartbeat_s = args.heartbeat_ms / 1000
    try:
        fence_s = (fence_delay_s(args.worker_timeout_ms, heartbeat_s)
                   if args.worker_timeout_ms else None)
    except ValueError as exc:
        raise daemon.ConfigError(str(exc)) from None
    process_reaper()  # before the first run: its groups die with this process
    worker = Worker(servers, tags, worker_id=args.id, password=args.password,
                    concurrency=args.slots, heartbeat_s=heartbeat_s, fence_after_s=fence_s)

    async def run(stop: asyncio.Event) -> int:
        await worker.run(stop)
        return 0

    return daemon.run(run)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(reply: Any) -> dict[str, Any]:
    """A map reply (RESP3) or its RESP2 form, a flat list of keys and values."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): v for k, v in items}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{_text(k)}={_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return _text(value)


HISTORY_COLUMNS = ("run_id", "state", "attempt", "worker", "slot_ms", "fired_ms", "exit_code",
                   "message")


def client_command(args: argparse.Namespace) -> int:
    """`scheduler job|history|cluster ...`: one request, printed; 1 on a refusal."""
    from scheduler.client import SchedulerClient, SchedulerError

    if args.deadline <= 0:
        raise daemon.ConfigError("--deadline must be > 0")
    if args.action == "history" and args.count < 1:
        raise daemon.ConfigError("count must be a positive integer")
    servers = client_cli.resolve_servers(args.server, SERVERS_ENV, client_addresses(),
                                         DEFAULT_PORT)
    out: list[str] = []
    try:
        first = client_cli.first_answering(servers, WHAT, SERVERS_ENV,
                                           min(client_cli.PROBE_WITHIN_S, args.deadline))
        nodes = [first] + [node for node in servers.nodes if node != first]
        with SchedulerClient(nodes, password=args.password,
                             deadline_s=args.deadline) as client:
            out = _client_request(client, args)
    except (SchedulerError, client_cli.NoNodeAnswers) as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 1
    for line in out:
        print(line)
    return 0


def _client_request(client: Any, args: argparse.Namespace) -> list[str]:
    if args.action == "history":
        lines = ["\t".join(HISTORY_COLUMNS)]
        for run in client.history(args.job, args.count):
            fields = _fields(run)
            lines.append("\t".join(_show(fields.get(c, "")) for c in HISTORY_COLUMNS))
        return lines
    if args.action == "cluster":
        return [f"{k}: {_show(v)}" for k, v in _fields(client.cluster_info()).items()]
    if args.op == "add":
        options = args.options[1:] if args.options[:1] == ["--"] else args.options
        client.call("JOB.ADD", args.name, args.schedule, args.command, *options)
        return ["OK"]
    if args.op == "list":
        pairs = client.call("JOB.LIST", "WITHSTATUS")
        return [f"{_text(name)}\t{_text(status)}" for name, status in pairs]
    if args.op == "get":
        return [f"{k}: {_show(v)}" for k, v in _fields(client.get(args.name)).items()]
    if args.op == "run":
        run_id = client.run(args.name)
        return [run_id if run_id is not None else "(not fired: a run of this slot exists)"]
    {"del": client.delete, "pause": client.pause, "resume": client.resume}[args.op](args.name)
    return ["OK"]


if __name__ == "__main__":
    raise SystemExit(main())
