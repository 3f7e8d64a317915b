"""Command line of `shardstore router` (shardstore/router.py):

    shardstore router --listen H:P --nodes H:P[,H:P...] [--node-password ...]
        [--requirepass ...] [--timeout S] [--deadline S] [--log-level ...]

`--nodes` are seeds: any nodes of the cluster (the router learns the rest from
CLUSTER SLOTS). `--node-password` is the nodes' `--requirepass`; `--requirepass` is the
router's own, for its clients. It listens on 127.0.0.1:7690 unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from core import daemon
from shardstore.router import DEADLINE_S, TIMEOUT_S, Router, RouterOptions

__all__ = ["DEFAULT_ROUTER_PORT", "add_parser", "run"]

log = logging.getLogger("shardstore.router")

DEFAULT_ROUTER_PORT = 7690
ERR_NODES = "--nodes needs at least one HOST:PORT"
ERR_ADDRESS = "not HOST:PORT: {!r}"


def add_parser(sub: Any) -> None:
    """The `router` subcommand on `sub` (argparse subparsers)."""
    router = sub.add_parser("router", help="a RESP proxy for clients that are not "
                                           "cluster-aware")
    router.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_ROUTER_PORT}",
                        help="HOST:PORT to serve clients on")
    router.add_argument("--nodes", required=True,
                        help="comma-separated HOST:PORT of any nodes of the cluster")
    router.add_argument("--node-password", default=None, help="the nodes' --requirepass")
    router.add_argument("--requirepass", default=None, help="password clients must AUTH with")
    router.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds for one request to one node")
    router.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help="seconds a command may spend on retries before it fails")
    router.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    daemon.add_metrics_option(router)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise daemon.ConfigError(ERR_ADDRESS.format(text))
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 1 when the port cannot be bound."""
    daemon.setup_logging(args.log_level)
    seeds = [f"{h}:{p}" for h, p in (_address(n) for n in args.nodes.split(",") if n.strip())]
    if not seeds:
        raise daemon.ConfigError(ERR_NODES)
    host, port = _address(args.listen)
    options = RouterOptions(seeds, node_password=args.node_password,
                            timeout_s=args.timeout, deadline_s=args.deadline)

    async def serve(stop: asyncio.Event) -> int:
        router = Router(options, password=args.requirepass)
        try:
            await router.start(host, port)
        except OSError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("shardstore router ready on %s:%d (nodes %s)", host, router.server.port,
                 ",".join(seeds))
        from core import metrics
        from shardstore import metrics as shardstore_metrics

        endpoint = await metrics.open_endpoint(
            args, lambda: shardstore_metrics.router_collectors(router))
        await stop.wait()
        await metrics.close_endpoint(endpoint)
        await router.stop()
        log.info("shardstore router stopped")
        return 0

    return daemon.run(serve)
