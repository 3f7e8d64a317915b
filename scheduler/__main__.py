"""Command line: `scheduler serve` (a Raft node) and `scheduler worker` (runs the jobs)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

from core import daemon
from core.raft.driver import DriverConfig, RaftDriver

log = logging.getLogger("scheduler")

DEFAULT_PORT = 7380
DEFAULT_PEER_PORT = 7381


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """`ID=HOST:PORT,...` (Raft addresses) -> {id: (host, port)}."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep or not node_id.isdigit():
            raise daemon.ConfigError(f"--peers item {item!r}: expected ID=HOST:PORT")
        peers[int(node_id)] = daemon.parse_hostport(address)
    return peers


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scheduler", description="distributed cron on Raft")
    sub = parser.add_subparsers(dest="action", required=True)

    serve = sub.add_parser("serve", help="run a scheduler node")
    daemon.add_common_options(serve, DEFAULT_PORT)
    serve.add_argument("--id", type=int, required=True, help="this node's Raft id (>= 1)")
    serve.add_argument("--peer-listen", default=f"127.0.0.1:{DEFAULT_PEER_PORT}",
                       help="HOST:PORT for Raft traffic")
    serve.add_argument("--peers", default="", help="ID=HOST:PORT,... Raft addresses of all")
    serve.add_argument("--join", action="store_true", help="join a running cluster")
    serve.add_argument("--cluster-secret", default=None)
    serve.add_argument("--tick-ms", type=int, default=20)
    serve.add_argument("--election-tick", type=int, default=15)
    serve.add_argument("--snapshot-every", type=int, default=10_000)

    worker = sub.add_parser("worker", help="run jobs for a scheduler cluster")
    worker.add_argument("--scheduler", required=True, help="H:P,H:P,... RESP ports of nodes")
    worker.add_argument("--tags", default="", help="a,b: tags this worker serves")
    worker.add_argument("--id", default=None, help="worker id (default host-pid)")
    worker.add_argument("--password", default=None)
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "serve":
            return serve(args)
        return work(args)
    except daemon.ConfigError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    from scheduler.server import SchedulerServer

    daemon.setup_logging(args.log_level)
    host, port = daemon.parse_hostport(args.listen, DEFAULT_PORT)
    daemon.check_bind(host, args.requirepass, args.protected_mode)
    peer_host, peer_port = daemon.parse_hostport(args.peer_listen, DEFAULT_PEER_PORT)
    if not args.data_dir:
        raise daemon.ConfigError("--data-dir is required: the Raft log lives there")
    if not args.cluster_secret and args.protected_mode == "yes" and not _loopback(peer_host):
        raise daemon.ConfigError(
            f"refusing Raft traffic on {peer_host} without --cluster-secret "
            "(or --protected-mode no if the network is trusted)")
    if args.id < 1:
        raise daemon.ConfigError("--id must be >= 1")
    peers = parse_peers(args.peers)
    peers.setdefault(args.id, (peer_host, peer_port))
    config = DriverConfig(
        node_id=args.id, data_dir=Path(args.data_dir), listen=(peer_host, peer_port),
        peers=peers, founders=() if args.join else tuple(sorted(peers)),
        secret=args.cluster_secret, tick_s=args.tick_ms / 1000,
        election_tick=args.election_tick, snapshot_every=args.snapshot_every,
    )
    clock = daemon.clock_from_args(args)

    async def run(stop: asyncio.Event) -> int:
        def factory(apply, snapshot, restore):  # noqa: ANN001, ANN202
            return RaftDriver(config, apply, snapshot, restore)

        server = SchedulerServer(factory, clock, password=args.requirepass,
                                 max_clients=args.maxclients)
        try:
            await server.start(host, port)
        except OSError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("scheduler node %d ready on %s:%d (raft %s:%d)", args.id, host,
                 server.resp.port, peer_host, peer_port)
        failed = asyncio.ensure_future(server.driver.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if failed.done():
            log.error("raft driver stopped: %s", failed.exception())
            return 1
        failed.cancel()
        await server.stop()
        log.info("scheduler node %d stopped", args.id)
        return 0

    return daemon.run(run)


def work(args: argparse.Namespace) -> int:
    from scheduler.worker import Worker

    daemon.setup_logging(args.log_level)
    servers = [daemon.parse_hostport(s.strip()) for s in args.scheduler.split(",") if s.strip()]
    tags = [t for t in args.tags.split(",") if t]
    worker = Worker(servers, tags, worker_id=args.id, password=args.password,
                    concurrency=args.concurrency)

    async def run(stop: asyncio.Event) -> int:
        await worker.run(stop)
        return 0

    return daemon.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
