"""Command line of `dfs chunkserver` and the chunk options of `dfs master`:

    dfs chunkserver --data-dir D --rack R --listen H:P --masters H:P,H:P,...
                    [--heartbeat-ms MS] [--scrub-rate BYTES_PER_S] [--scrub-pause-ms MS]
    dfs master ... [--replication N] [--chunkserver-dead-ms MS] [--min-chunkservers N]
                   [--abandoned-write-ms MS] [--lease-ms MS]

Exit status: 0 after SIGTERM or SIGINT, 1 when it could not start, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from core import daemon
from core.storage import DataDirLockedError
from dfs.chunk_placement import (
    DEFAULT_ABANDON_AFTER_S,
    DEFAULT_DEAD_AFTER_S,
    DEFAULT_LEASE_MS,
    DEFAULT_REPLICATION,
)

__all__ = ["add_chunkserver_parser", "add_master_options", "placement_options",
           "serve_chunkserver"]

log = logging.getLogger("dfs.chunkserver")

DEFAULT_CHUNK_PORT = 7490
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_SCRUB_RATE = 8 * 1024 * 1024
DEFAULT_SCRUB_PAUSE_MS = 60_000
ERR_NO_DATA_DIR = "--data-dir is required: the chunks live there"
ERR_NO_MASTERS = "--masters is required: HOST:PORT,... of the dfs masters"
ERR_POSITIVE = "{} must be >= 1"


def add_chunkserver_parser(sub: Any) -> None:
    """Add `chunkserver` to the `dfs` subcommands."""
    parser = sub.add_parser("chunkserver", help="run a chunk server (chunk replicas on disk)")
    daemon.add_common_options(parser, DEFAULT_CHUNK_PORT)
    parser.add_argument("--rack", default="default", help="the server's rack: replicas of "
                        "a chunk go to different racks while there are enough")
    parser.add_argument("--masters", default="", help="HOST:PORT,... of the dfs masters")
    parser.add_argument("--advertise", default="", help="HOST:PORT clients reach this "
                        "server at (default: --listen)")
    parser.add_argument("--heartbeat-ms", type=int, default=DEFAULT_HEARTBEAT_MS,
                        help="how often it reports its chunks to the master leader")
    parser.add_argument("--scrub-rate", type=int, default=DEFAULT_SCRUB_RATE,
                        help="bytes per second the background scrubber rereads")
    parser.add_argument("--scrub-pause-ms", type=int, default=DEFAULT_SCRUB_PAUSE_MS,
                        help="pause before each scrubbing pass over every chunk")


def add_master_options(parser: argparse.ArgumentParser) -> None:
    """The chunk options of `dfs master`."""
    parser.add_argument("--replication", type=int, default=DEFAULT_REPLICATION,
                        help=f"replicas of every chunk ({DEFAULT_REPLICATION})")
    parser.add_argument("--chunkserver-dead-ms", type=int,
                        default=int(DEFAULT_DEAD_AFTER_S * 1000),
                        help="a chunk server silent this long is dead: its chunks are "
                             "re-replicated")
    parser.add_argument("--min-chunkservers", type=int, default=1,
                        help="safe mode lasts until this many chunk servers reported")
    parser.add_argument("--abandoned-write-ms", type=int,
                        default=int(DEFAULT_ABANDON_AFTER_S * 1000),
                        help="a file being written whose writer has not called for this "
                             "long is deleted (its writer died before the close)")
    parser.add_argument("--lease-ms", type=int, default=DEFAULT_LEASE_MS,
                        help="a chunk write's lease, granted with each allocation and renewed "
                             "by its writer; every replica refuses the write once it ran out "
                             f"({DEFAULT_LEASE_MS}, GFS's)")


def placement_options(args: argparse.Namespace) -> dict[str, Any]:
    """The master's `placement` keyword arguments from its parsed options (checked)."""
    for name in ("replication", "chunkserver_dead_ms", "min_chunkservers",
                 "abandoned_write_ms", "lease_ms"):
        if getattr(args, name) < 1:
            raise daemon.ConfigError(ERR_POSITIVE.format("--" + name.replace("_", "-")))
    return {"replication": args.replication, "dead_after_s": args.chunkserver_dead_ms / 1000,
            "min_servers": args.min_chunkservers,
            "abandon_after_s": args.abandoned_write_ms / 1000, "lease_ms": args.lease_ms}


def _config(args: argparse.Namespace) -> Any:
    from dfs.chunkserver import ChunkServerConfig

    if not args.data_dir:
        raise daemon.ConfigError(ERR_NO_DATA_DIR)
    if not args.masters:
        raise daemon.ConfigError(ERR_NO_MASTERS)
    for name in ("heartbeat_ms", "scrub_rate", "scrub_pause_ms"):
        if getattr(args, name) < 1:
            raise daemon.ConfigError(ERR_POSITIVE.format("--" + name.replace("_", "-")))
    return ChunkServerConfig(
        data_dir=Path(args.data_dir), rack=args.rack,
        masters=[m.strip() for m in args.masters.split(",") if m.strip()],
        advertise=args.advertise, password=args.requirepass,
        heartbeat_s=args.heartbeat_ms / 1000, scrub_rate=args.scrub_rate,
        scrub_pause_s=args.scrub_pause_ms / 1000)


def serve_chunkserver(args: argparse.Namespace) -> int:
    """Run one chunk server until SIGTERM/SIGINT (see the module header)."""
    from core import metrics
    from dfs import metrics as dfs_metrics
    from dfs.chunkserver import ChunkServer

    host, port = daemon.parse_hostport(args.listen, DEFAULT_CHUNK_PORT)
    daemon.check_bind(host, args.requirepass, args.protected_mode)
    config = _config(args)
    daemon.setup_logging(args.log_level)

    async def run(stop: asyncio.Event) -> int:
        try:
            server = ChunkServer(config)
            await server.start(host, port)
        except (OSError, DataDirLockedError) as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("dfs chunkserver %s (rack %s) ready on %s:%d with %d chunks",
                 server.server_id, config.rack, host, server.port, len(server.store.replicas))
        endpoint = await metrics.open_endpoint(
            args, lambda: dfs_metrics.chunkserver_collectors(server))
        await stop.wait()
        await metrics.close_endpoint(endpoint)
        await server.stop()
        log.info("dfs chunkserver %s stopped", server.server_id)
        return 0

    return daemon.run(run)
