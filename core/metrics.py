"""Prometheus metrics for every daemon: the `--metrics-listen H:P` endpoint (the option
itself and its safe-bind check are core/daemon.py's, so every parser gets them at once).

Strategy: nothing is counted twice. The registry holds `prometheus_client` custom
collectors (core/metrics_collectors.py, and each daemon's `<pkg>/metrics.py`) whose
`collect()` reads, at scrape time, the figures the daemon already keeps for INFO/`stats`
(core/stats.py's LatencyHistogram per command, the connection counters, the Raft groups'
status); the request paths are not touched. The few figures no daemon had (a Raft log's
fsync durations, a group's leader changes, idgen's waits) are counted where they happen,
off the request path.

The endpoint is a small HTTP/1.1 responder on the daemon's own asyncio loop
(`asyncio.start_server`), not prometheus_client's threaded server: the collectors read
dicts and lists the loop mutates, and reading them on the loop needs no locks and never
sees a figure half-updated (a scrape costs the loop the time to render the text). One
request per connection: `GET /metrics` (or `/`, or HEAD) answers
`generate_latest(registry)`, another path 404, another method 405, a head that does not
parse 400 (431 when over MAX_HEAD_BYTES); the connection is then closed. At most
MAX_CONNECTIONS are served at once (more get 503). A daemon started with a password
(`--requirepass`) asks for it as HTTP Basic credentials (any user name), which
Prometheus' `basic_auth` sends.

Safe default (DESIGN.md): `--metrics-listen :P` (no host) listens on 127.0.0.1; a host
beyond loopback is refused without `--requirepass`, unless `--protected-mode no`, with the
same rule and message as the daemon's own `--listen` (core.daemon.check_bind), before
anything starts. Daemons without a password option (kvcache, its proxy) therefore serve
metrics on loopback only. A port that cannot be bound stops the daemon as a bad option does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from core import daemon

__all__ = [
    "MetricsEndpoint", "Request", "RequestError", "add_option", "close_endpoint",
    "endpoint_address", "open_endpoint", "parse_request_head", "password_matches",
]

log = logging.getLogger("core.metrics")

MAX_HEAD_BYTES = 8 * 1024  # a scrape's request line and headers are far shorter
READ_TIMEOUT_S = 10.0  # a client that sends no complete head in this time is dropped
MAX_CONNECTIONS = 32  # scrapers served at once; more are answered 503 and closed
METRICS_PATHS = frozenset({"/metrics", "/"})
REALM = "metrics"

ERR_BIND = "cannot listen for metrics on {}:{}: {}"
ERR_BAD_REQUEST_LINE = "bad request line"
ERR_BAD_HEADER = "bad header line"
ERR_HEAD_TOO_LARGE = "request head larger than {} bytes"
ERR_NOT_FOUND = "not found: try /metrics"
ERR_METHOD = "only GET and HEAD are served"
ERR_AUTH = "the daemon's password is needed (HTTP Basic, any user name)"
ERR_BUSY = "too many connections to the metrics endpoint ({} at most)"

STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
               405: "Method Not Allowed", 431: "Request Header Fields Too Large",
               503: "Service Unavailable"}


# -- the option --------------------------------------------------------------------------------
add_option = daemon.add_metrics_option  # also part of daemon.add_common_options


endpoint_address = daemon.metrics_address  # the checked address, or None when off


# -- the HTTP head -----------------------------------------------------------------------------
class RequestError(Exception):
    """A request the endpoint refuses: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A parsed request head: method, path (the query dropped), headers by lower-case name."""

    method: str
    path: str
    headers: dict[str, str]


def parse_request_head(head: bytes) -> Request:
    """Parse an HTTP/1.x request head (request line and headers, without the blank line).
    RequestError(400) for anything that is not one, (431) when longer than MAX_HEAD_BYTES."""
    if len(head) > MAX_HEAD_BYTES:
        raise RequestError(431, ERR_HEAD_TOO_LARGE.format(MAX_HEAD_BYTES))
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(400, ERR_BAD_REQUEST_LINE) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if (len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/")
            or not parts[2].startswith("HTTP/1.")):
        raise RequestError(400, ERR_BAD_REQUEST_LINE)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not name.isprintable():
            raise RequestError(400, ERR_BAD_HEADER)
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1].partition("?")[0], headers)


def password_matches(header: str | None, password: str) -> bool:
    """Whether an Authorization header carries `password` as HTTP Basic credentials."""
    if not header:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given = decoded.partition(":")[2]
    return hmac.compare_digest(given.encode(), password.encode())


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             extra: str = "", head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    lines = (f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\n"
             f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
             f"Connection: close\r\n{extra}\r\n")
    return lines.encode() + (b"" if head_only else body)


# -- the endpoint ------------------------------------------------------------------------------
class MetricsEndpoint:
    """The HTTP listener of one daemon's metrics: `await start(host, port)`, `port`,
    `await close()`. `password`: asked for as HTTP Basic credentials when not None."""

    def __init__(self, registry: CollectorRegistry, password: str | None = None) -> None:
        self.registry = registry
        self.password = password
        self.port = 0
        self.scrapes = 0
        self.open = 0  # connections being served
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0: any free port). OSError if it cannot."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def close(self) -> None:
        """Stop listening; a scrape in progress finishes on its own."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, request: Request) -> bytes:
        """The response to one parsed request."""
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return response(405, ERR_METHOD.encode(), extra="Allow: GET, HEAD\r\n")
        if self.password is not None and not password_matches(
                request.headers.get("authorization"), self.password):
            return response(401, ERR_AUTH.encode(),
                            extra=f'WWW-Authenticate: Basic realm="{REALM}"\r\n')
        if request.path not in METRICS_PATHS:
            return response(404, ERR_NOT_FOUND.encode(), head_only=head_only)
        self.scrapes += 1
        return response(200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4,
                        head_only=head_only)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            if self.open > MAX_CONNECTIONS:
                writer.write(response(503, ERR_BUSY.format(MAX_CONNECTIONS).encode()))
                await writer.drain()
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                reply = self.answer(parse_request_head(head[:-4]))
            except asyncio.LimitOverrunError:
                reply = response(431, ERR_HEAD_TOO_LARGE.format(MAX_HEAD_BYTES).encode())
            except RequestError as exc:
                reply = response(exc.status, str(exc).encode())
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass  # the scraper went away or never sent a whole head
        finally:
            self.open -= 1
            writer.close()


async def open_endpoint(args: argparse.Namespace,
                        collectors: Callable[[], Iterable[Collector]]) -> MetricsEndpoint | None:
    """Start the endpoint `--metrics-listen` asks for, with a fresh registry holding
    `collectors()`; None when the option is off. ConfigError (see `endpoint_address`),
    also when the address cannot be bound: the daemon then exits as for a bad option."""
    address = endpoint_address(args)
    if address is None:
        return None
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors():
        registry.register(collector)
    endpoint = MetricsEndpoint(registry, getattr(args, "requirepass", None))
    try:
        await endpoint.start(*address)
    except OSError as exc:
        raise daemon.ConfigError(ERR_BIND.format(*address, exc)) from None
    return endpoint


async def close_endpoint(endpoint: MetricsEndpoint | None) -> None:
    """Close `endpoint` if there is one (the shutdown half of `open_endpoint`)."""
    if endpoint is not None:
        await endpoint.close()

