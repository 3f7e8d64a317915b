"""Command line: `idgen serve`, `idgen next`, `idgen parse`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime

from core import daemon
from core.storage import StorageError
from idgen.layout import DEFAULT_EPOCH_MS, MAX_WORKER_ID, parse

log = logging.getLogger("idgen")

DEFAULT_PORT = 7379


def epoch_arg(text: str) -> int:
    """An epoch as Unix milliseconds or an ISO 8601 date/time (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        from datetime import UTC

        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idgen", description="Snowflake-style id server")
    sub = parser.add_subparsers(dest="action", required=True)

    serve = sub.add_parser("serve", help="run an id server")
    daemon.add_common_options(serve, DEFAULT_PORT)
    serve.add_argument("--worker-id", type=int, default=None, help=f"0..{MAX_WORKER_ID}")
    serve.add_argument(
        "--epoch", type=epoch_arg, default=None,
        help="epoch as ms or ISO date (default 2024-01-01T00:00:00Z; fixed per data dir)",
    )
    serve.add_argument("--peers", default="", help="other idgen servers, H:P,H:P")
    serve.add_argument("--max-backward-ms", type=int, default=5,
                       help="clock steps back up to this are waited out; larger ones refused")
    serve.add_argument("--max-skew-ms", type=int, default=1000,
                       help="refuse when the clock is this far from the peers' median")
    serve.add_argument("--reserve-ms", type=int, default=1000,
                       help="how far ahead of the clock the durable high-water mark runs")
    serve.add_argument("--peer-check-interval-ms", type=int, default=5000)

    nxt = sub.add_parser("next", help="fetch ids from servers")
    nxt.add_argument("-n", type=int, default=1, help="how many ids")
    nxt.add_argument("--server", default=f"127.0.0.1:{DEFAULT_PORT}", help="H:P[,H:P...]")
    nxt.add_argument("--password", default=None)

    prs = sub.add_parser("parse", help="decode an id offline")
    prs.add_argument("id", type=int)
    prs.add_argument("--epoch", type=epoch_arg, default=DEFAULT_EPOCH_MS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "serve":
            return serve(args)
    except daemon.ConfigError as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 2
    if args.action == "next":
        return cli_next(args)
    return cli_parse(args)


def serve(args: argparse.Namespace) -> int:
    from idgen.server import IdgenServer
    from idgen.store import IdentityMismatch, IdgenStore

    daemon.setup_logging(args.log_level)
    host, port = daemon.parse_hostport(args.listen, DEFAULT_PORT)
    daemon.check_bind(host, args.requirepass, args.protected_mode)
    if args.worker_id is not None and not 0 <= args.worker_id <= MAX_WORKER_ID:
        raise daemon.ConfigError(f"--worker-id must be within 0..{MAX_WORKER_ID}")
    if not args.data_dir:
        raise daemon.ConfigError("--data-dir is required: the high-water mark lives there")
    clock = daemon.clock_from_args(args)
    try:
        store = IdgenStore(args.data_dir, args.worker_id, args.epoch, DEFAULT_EPOCH_MS)
    except (IdentityMismatch, StorageError) as exc:
        log.error("refusing to start: %s", exc)
        return 1
    peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]

    async def run(stop: asyncio.Event) -> int:
        server = IdgenServer(
            store,
            clock,
            password=args.requirepass,
            max_backward_ms=args.max_backward_ms,
            reserve_ms=args.reserve_ms,
            peer_addresses=peer_list,
            max_skew_ms=args.max_skew_ms,
            peer_check_interval_s=args.peer_check_interval_ms / 1000,
            max_clients=args.maxclients,
        )
        fault = await server.check_peers()
        if fault is not None:
            log.error("refusing to start: %s", fault)
            store.close()
            return 1
        try:
            await server.start(host, port)
        except OSError as exc:
            log.error("refusing to start: cannot listen on %s:%d: %s", host, port, exc)
            await server.close()
            return 1
        log.info("worker %d ready on %s:%d", store.worker_id, host, server.resp.port)
        stop_wait = asyncio.create_task(stop.wait())
        fatal_wait = asyncio.create_task(server.fatal.wait())
        await asyncio.wait([stop_wait, fatal_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        fatal_wait.cancel()
        await server.close()
        log.info("stopped")
        return 1 if server.fatal.is_set() else 0

    return daemon.run(run)


def cli_next(args: argparse.Namespace) -> int:
    from idgen.client import IdgenClient, IdgenError

    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    try:
        with IdgenClient(servers, password=args.password) as client:
            remaining = args.n
            while remaining > 0:
                batch = client.next_ids(min(remaining, 100_000))
                sys.stdout.write("".join(f"{i}\n" for i in batch))
                remaining -= len(batch)
                if args.n > 100_000:
                    print(f"{args.n - remaining}/{args.n} ids", file=sys.stderr)
    except IdgenError as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 1
    return 0


def cli_parse(args: argparse.Namespace) -> int:
    try:
        parsed = parse(args.id, args.epoch)
    except ValueError as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 2
    print(f"id        {parsed.id}")
    print(f"time_ms   {parsed.time_ms}")
    print(f"time      {parsed.time_iso}")
    print(f"worker    {parsed.worker}")
    print(f"sequence  {parsed.sequence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
