"""What every daemon's `serve` does before and around its own work: options (also from a
TOML file), one-line logging, uvloop, the data-directory lock, the clock, safe-bind checks
and graceful shutdown on SIGTERM/SIGINT.

A daemon's `serve` builds an argparse parser with `add_common_options`, parses it with
`parse_args` (TOML config applied), then calls `run(main)`: `main(stop)` is the daemon's
coroutine, and `stop` is an asyncio.Event set by SIGTERM or SIGINT. `main` returns the exit
code after shutting down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from core.clock import SystemClock

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


ERR_METRICS_ADDRESS = "--metrics-listen {!r}: expected [HOST]:PORT, e.g. 127.0.0.1:9100"


class ConfigError(Exception):
    """Options that cannot be used; the daemon prints the message and exits 2."""


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or 'HOST' with a default port) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    host = host.strip("[]")
    if not port:
        if default_port is None:
            raise ConfigError(f"{text!r}: expected HOST:PORT")
        return host or "127.0.0.1", default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r}: bad port")
    return host or "127.0.0.1", int(port)


def add_common_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The options every daemon's `serve` takes, with safe defaults."""
    parser.add_argument(
        "--listen", default=f"127.0.0.1:{default_port}", help="HOST:PORT to serve clients on"
    )
    parser.add_argument("--data-dir", default=None, help="directory for durable state")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--config", default=None, help="TOML file with the same keys")
    parser.add_argument("--requirepass", default=None, help="password clients must AUTH with")
    parser.add_argument(
        "--protected-mode",
        default="yes",
        choices=["yes", "no"],
        help="refuse to listen beyond loopback without --requirepass (default yes)",
    )
    parser.add_argument("--maxclients", type=int, default=10_000, help="connection limit")
    add_metrics_option(parser)
    # Tests start a daemon with a shifted wall clock to drill skew and clock steps.
    parser.add_argument("--clock-offset-ms", type=int, default=0, help=argparse.SUPPRESS)


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """`--metrics-listen [HOST]:PORT`, off by default (served by core/metrics.py)."""
    parser.add_argument(
        "--metrics-listen", dest="metrics_listen", default=None, metavar="[HOST]:PORT",
        help="serve Prometheus metrics over HTTP here (off by default; no host: 127.0.0.1; "
             "beyond loopback only with --requirepass)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv; keys of the `--config` TOML file become defaults that argv overrides.

    The keys are those of the (sub)command that takes `--config`, e.g. `idgen serve`'s.
    """
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            config = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {args.config}: {exc}") from exc
        target = _parser_of_config(parser, args)
        known = {action.dest for action in target._actions}
        defaults = {}
        for key, value in config.items():
            dest = key.replace("-", "_")
            if dest not in known or dest in ("help", "config"):
                raise ConfigError(f"{args.config}: unknown key {key!r}")
            defaults[dest] = value
        target.set_defaults(**defaults)
        args = parser.parse_args(argv)
    metrics_address(args)  # an unsafe --metrics-listen is refused before anything starts
    return args


def _parser_of_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser that owns `--config`: the chosen subcommand's, or `parser` itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest))
            if chosen is not None:
                return _parser_of_config(chosen, args)
    return parser


def check_bind(host: str, password: str | None, protected_mode: str) -> None:
    """Refuse to serve beyond loopback without a password, as Redis's protected mode does."""
    if password or protected_mode == "no":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"refusing to listen on {host} without --requirepass "
            "(set a password, or --protected-mode no if the network is trusted)"
        )


def metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """Where `--metrics-listen` asks to serve ([HOST]:PORT, or a bare PORT; no host:
    127.0.0.1), or None when it is off. ConfigError for a malformed address, or a host
    beyond loopback without a password (`check_bind`; a daemon without `--requirepass`
    and `--protected-mode` counts as having no password, protected)."""
    text = getattr(args, "metrics_listen", None)
    if not text:
        return None
    if ":" not in text and not text.isdigit():
        raise ConfigError(ERR_METRICS_ADDRESS.format(text))
    host, port = parse_hostport(text if ":" in text else f":{text}")
    check_bind(host, getattr(args, "requirepass", None), getattr(args, "protected_mode", "yes"))
    return host, port


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)


def clock_from_args(args: argparse.Namespace) -> SystemClock:
    return SystemClock(offset_ms=args.clock_offset_ms)


def run(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `main(stop)` on uvloop; SIGTERM and SIGINT set `stop`. Returns main's exit code."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, signum, stop)
        return await main(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrapper())


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    log.info("received %s, shutting down", signal.Signals(signum).name)
    stop.set()
