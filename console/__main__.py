"""`python -m console`: the web console of the five daemons (see console/server.py).

    python -m console --listen 127.0.0.1:8080 --scheduler H:P,H:P,H:P --kvcache H:P \
        [--idgen H:P,..] [--shardstore H:P,..] [--dfs H:P,..]

Every target is optional; a daemon not named is not shown. The console reads a RESP daemon
that has a password with the password in the environment variable CONSOLE_<DAEMON>_PASSWORD
(e.g. CONSOLE_SCHEDULER_PASSWORD), never from the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from console.collect import DAEMONS, RESP_DAEMONS, Targets
from console.probes import split_address
from console.server import POLL_INTERVAL_S, ConsoleServer
from core.daemon import ConfigError, check_bind

__all__ = ["PASSWORD_ENV", "build_parser", "main", "parse_args", "targets_from"]

PASSWORD_ENV: Final = "CONSOLE_{}_PASSWORD"
MIN_INTERVAL_S: Final = 0.05
MAX_INTERVAL_S: Final = 3600.0
ERR_PUBLIC: Final = ("refusing to serve the console on {} (it shows the daemons' state to "
                     "whoever reaches it): use a loopback address, or --protected-mode no if "
                     "the network is trusted")
ERR_INTERVAL: Final = "interval must be seconds between 0.05 and 3600, got {!r}"
HELP: Final = {
    "idgen": "idgen nodes' RESP ports",
    "kvcache": "kvcache servers' and the proxy's memcached ports",
    "scheduler": "scheduler nodes' RESP ports",
    "shardstore": "shardstore nodes' RESP ports",
    "dfs": "dfs masters' RESP ports",
}


def _listen(text: str) -> str:
    try:
        split_address(text, any_port=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        raise argparse.ArgumentTypeError(ERR_INTERVAL.format(text))
    return value


def _addresses(text: str) -> list[str]:
    out = [word.strip() for word in text.split(",") if word.strip()]
    for address in out:
        try:
            split_address(address)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(
        prog="python -m console",
        description="web console: cluster members and leaders, scheduler jobs, shardstore "
                    "slots, dfs servers, kvcache pools, live charts")
    parser.add_argument("--listen", type=_listen, default="127.0.0.1:8080",
                        help="HOST:PORT to serve HTTP on (default 127.0.0.1:8080)")
    for daemon in DAEMONS:
        parser.add_argument(f"--{daemon}", type=_addresses, default=[], metavar="H:P[,H:P]",
                            help=HELP[daemon])
    parser.add_argument("--interval", type=_seconds, default=POLL_INTERVAL_S,
                        help="seconds between polls of the daemons (default 1)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--protected-mode", choices=("yes", "no"), default="yes",
                        help="yes (default): serve on loopback addresses only")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; exits with a usage error on a bad address, or on one beyond
    loopback under protected mode: the page shows, to anyone who reaches it, what the
    daemons answer the console with their passwords (as the daemons' own --listen rule)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    host = split_address(args.listen, any_port=True)[0]
    try:
        check_bind(host, None, args.protected_mode)
    except ConfigError:
        parser.error(ERR_PUBLIC.format(host))
    return args


def targets_from(args: argparse.Namespace, environ: dict[str, str]) -> Targets:
    """The targets of the command line, with the read passwords of the environment."""
    return Targets(
        addresses={d: getattr(args, d) for d in DAEMONS if getattr(args, d)},
        passwords={d: environ.get(PASSWORD_ENV.format(d.upper())) for d in RESP_DAEMONS})


async def _serve(args: argparse.Namespace) -> None:
    server = ConsoleServer(targets_from(args, dict(os.environ)), interval_s=args.interval)
    host, port = split_address(args.listen, any_port=True)
    bound = await server.start(host, port)
    print(f"console: http://{host}:{bound}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s console %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
