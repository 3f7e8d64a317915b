"""What every daemon's client command line shares: which nodes to ask, and failing fast.

Strategy: a client command (`scheduler job list`, `idgen next`, ...) takes `--server
H:P,H:P,...` (`add_server_option`). Without it the nodes come from the daemon's environment
variable (`SCHEDULER_SERVERS`, `IDGEN_SERVERS`), and without that from `make run`'s
addresses, so a new user's first command reaches the local cluster (`resolve_servers`).
Before its request the command asks the nodes, in rounds, whether any of them answers at
all (`first_answering`: a PING, where any reply counts, an error such as NOAUTH included).
When none has within PROBE_WITHIN_S (or the shorter deadline the user gave), it fails at
once, its own start-up included well within 2 s, with a message naming the nodes and where
they came from (`NoNodeAnswers`), instead of spending the client's whole retry deadline on
ports nothing listens on. Once a node has answered, the daemon's client library does the
request with its own failover and deadline.

`first_answering` takes its clock, its sleep and the question it asks as arguments, so
tests count its attempts without a socket or a timer.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from core import daemon

__all__ = [
    "PROBE_WITHIN_S",
    "NoNodeAnswers",
    "Servers",
    "add_server_option",
    "first_answering",
    "ping",
    "resolve_servers",
]

PROBE_WITHIN_S: Final = 1.0  # a command gives up this soon when no node answers
PROBE_ATTEMPT_S: Final = 0.5  # one node's connect and reply, at most
PROBE_PAUSE_S: Final = 0.1  # between rounds (a node may be starting)
PING: Final = b"PING\r\n"  # inline RESP: every RESP daemon answers it, even before AUTH
SOURCE_FLAG: Final = "--server"
SOURCE_DEFAULT: Final = "make run's nodes"

ERR_NO_NODE: Final = "{} names no node"
ERR_NONE_ANSWERS: Final = (
    "no {what} answered within {within:g} s at {nodes} (from {source}); start them "
    "(make run starts a local cluster) or name running ones with {flag} or {env}"
)

Node = tuple[str, int]


class NoNodeAnswers(Exception):
    """No node answered the probe in time; the message says which were asked and why
    those (the flag, the environment variable, or make run's default)."""


@dataclass(frozen=True)
class Servers:
    """The nodes a command asks, and where the list came from (for error messages)."""

    nodes: list[Node]
    source: str


def add_server_option(parser: argparse.ArgumentParser, env_var: str,
                      defaults: Sequence[str], what: str) -> None:
    """`--server H:P,H:P,...` on a client command, its default left to `resolve_servers`."""
    parser.add_argument(
        SOURCE_FLAG, default=None,
        help=f"H:P,H:P,... client ports of {what} (any of them; default: ${env_var}, "
             f"else make run's {','.join(defaults)})")


def resolve_servers(flag: str | None, env_var: str, defaults: Sequence[str],
                    default_port: int, environ: Mapping[str, str] = os.environ) -> Servers:
    """The nodes named by `--server`, else by `env_var`, else `defaults` (make run's).
    ConfigError when the chosen text names no node or a malformed one."""
    if flag is not None:
        text, source = flag, SOURCE_FLAG
    elif environ.get(env_var, "").strip():
        text, source = environ[env_var], f"${env_var}"
    else:
        text, source = ",".join(defaults), SOURCE_DEFAULT
    nodes = [daemon.parse_hostport(item.strip(), default_port)
             for item in text.split(",") if item.strip()]
    if not nodes:
        raise daemon.ConfigError(ERR_NO_NODE.format(source))
    return Servers(nodes, source)


def ping(node: Node, timeout_s: float) -> bool:
    """Whether `node` answers an inline PING with any bytes within `timeout_s`."""
    try:
        with socket.create_connection(node, timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(PING)
            return bool(conn.recv(1))
    except OSError:
        return False


def first_answering(
    servers: Servers, what: str, env_var: str, within_s: float = PROBE_WITHIN_S, *,
    ask: Callable[[Node, float], bool] = ping,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep, flag: str = SOURCE_FLAG,
) -> Node:
    """The first node (in order, round after round) for which `ask(node, timeout_s)` is
    true. No attempt starts after `within_s` from the call, and none is given more than
    the time left or than its share of `within_s` (so a hung node cannot keep the others
    from being asked); NoNodeAnswers (see ERR_NONE_ANSWERS, which names `flag` as the way to
    name other nodes) when no node answered by then."""
    deadline = clock() + within_s
    share = min(PROBE_ATTEMPT_S, within_s / len(servers.nodes))
    while True:
        for node in servers.nodes:
            left = deadline - clock()
            if left <= 0:
                raise NoNodeAnswers(ERR_NONE_ANSWERS.format(
                    what=what, within=within_s, source=servers.source, env=env_var, flag=flag,
                    nodes=",".join(f"{host}:{port}" for host, port in servers.nodes)))
            if ask(node, min(share, left)):
                return node
        sleep(max(0.0, min(PROBE_PAUSE_S, deadline - clock())))
