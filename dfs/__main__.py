"""Command line: `dfs master ...`, one master of the namespace's Raft group, with the shared
cluster options (core/cluster_options.py) and its own:

    dfs master --id N --listen H:P --peer-listen H:P --peers ID=H:P,... --data-dir D
               [--trash-keep-ms MS] [--purge-every-ms MS] [--snapshot-every N]
               [--superuser-password P]

Exit status: 0 after SIGTERM or SIGINT, 1 when it could not start or its Raft driver
failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from core import cluster_options, daemon
from core.raft.driver import RaftDriver
from dfs import chunkserver_cli, cli
from dfs.master import DEFAULT_PURGE_EVERY_S, DEFAULT_TRASH_KEEP_MS

log = logging.getLogger("dfs")

DEFAULT_PORT = 7480
DEFAULT_PEER_PORT = 7481
DEFAULT_SNAPSHOT_EVERY = 100_000  # as the scheduler: etcd's default
DEFAULT_TIMEOUT_MS = 10_000
SUPERUSER_ENV = "DFS_SUPERUSER_PASSWORD"
ERR_TRASH_KEEP = "--trash-keep-ms must be >= 0"
ERR_PURGE_EVERY = "--purge-every-ms must be >= 1"
ERR_SNAPSHOT_EVERY = "--snapshot-every must be >= 1"
ERR_TIMEOUT = "--timeout-ms must be >= 1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfs", description="a replicated chunk file system")
    sub = parser.add_subparsers(dest="action", required=True)
    master = sub.add_parser("master", help="run a master (the namespace, on Raft)")
    daemon.add_common_options(master, DEFAULT_PORT)
    cluster_options.add_cluster_options(master, DEFAULT_PEER_PORT)
    master.add_argument("--trash-keep-ms", type=int, default=DEFAULT_TRASH_KEEP_MS,
                        help="how long a deleted path stays in the trash before the leader "
                             f"purges it ({DEFAULT_TRASH_KEEP_MS})")
    master.add_argument("--purge-every-ms", type=int,
                        default=int(DEFAULT_PURGE_EVERY_S * 1000),
                        help="how often the leader looks for expired trash items")
    master.add_argument("--snapshot-every", type=int, default=DEFAULT_SNAPSHOT_EVERY,
                        help="applied entries between snapshots (log compaction)")
    master.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS,
                        help="how long a request waits for the cluster before TRYAGAIN")
    master.add_argument("--superuser-password", default=os.environ.get(SUPERUSER_ENV),
                        help="the password of the superuser 'root' (AUTH root PASSWORD); "
                             "with it, a connection that does not AUTH is the unprivileged "
                             f"'nobody', without it the superuser (default: ${SUPERUSER_ENV})")
    chunkserver_cli.add_master_options(master)
    chunkserver_cli.add_chunkserver_parser(sub)
    cli.add_client_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action in cli.ACTIONS:
            return cli.run(args)
        if args.action == "chunkserver":
            return chunkserver_cli.serve_chunkserver(args)
        return serve_master(args)
    except daemon.ConfigError as exc:
        print(f"dfs: {exc}", file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> None:
    if args.trash_keep_ms < 0:
        raise daemon.ConfigError(ERR_TRASH_KEEP)
    if args.purge_every_ms < 1:
        raise daemon.ConfigError(ERR_PURGE_EVERY)
    if args.snapshot_every < 1:
        raise daemon.ConfigError(ERR_SNAPSHOT_EVERY)
    if args.timeout_ms < 1:
        raise daemon.ConfigError(ERR_TIMEOUT)


def serve_master(args: argparse.Namespace) -> int:
    """Run one master until SIGTERM/SIGINT (see the module header for the exit status)."""
    from core import metrics
    from dfs import metrics as dfs_metrics
    from dfs.master import Master

    settings = cluster_options.cluster_settings(args, default_port=DEFAULT_PORT,
                                                default_peer_port=DEFAULT_PEER_PORT)
    _check(args)
    placement = chunkserver_cli.placement_options(args)
    daemon.setup_logging(args.log_level)
    config = cluster_options.driver_config(settings, snapshot_every=args.snapshot_every)
    host, port = settings.listen

    async def run(stop: asyncio.Event) -> int:
        def factory(apply, snapshot, restore):  # noqa: ANN001, ANN202
            return RaftDriver(config, apply, snapshot, restore)

        master = Master(factory, daemon.clock_from_args(args), password=args.requirepass,
                        max_clients=args.maxclients, trash_keep_ms=args.trash_keep_ms,
                        purge_every_s=args.purge_every_ms / 1000,
                        timeout_s=args.timeout_ms / 1000, placement=placement,
                        superuser_password=args.superuser_password)
        try:
            await master.start(host, port)
        except OSError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("dfs master %d ready on %s:%d", args.id, host, master.port)
        endpoint = await metrics.open_endpoint(args, lambda: dfs_metrics.master_collectors(master))
        failed = asyncio.ensure_future(master.driver.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if failed.done():
            log.error("raft driver stopped: %s", failed.exception())
            return 1
        failed.cancel()
        await metrics.close_endpoint(endpoint)
        await master.stop()
        log.info("dfs master %d stopped", args.id)
        return 0

    return daemon.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
