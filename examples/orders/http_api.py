"""The order service's HTTP API: JSON over the standard library's threading HTTP server.

    POST /orders                   {"user": u, "items": [{"product": p, "qty": n}, ...]}
                                   -> 201 {"id": "<order id>", ...the order}
    POST /orders/{id}/pay          -> 200 the order (paid; its invoice is in dfs)
    GET  /orders/{id}              -> 200 the order
    GET  /users/{u}/orders?month=YYYY-MM -> 200 {"orders": [...]} (that month only)

Strategy: `route` turns a method and a path into an action and its arguments with no I/O
(fuzzed by the tests); the handler reads at most MAX_BODY_BYTES of JSON, calls the service
and maps its errors: BadRequest 400, NotFound 404, Refused 409, a daemon unreachable past
its client's deadline 503. Every error body is {"error": text}. Ids travel as decimal
strings, as JSON numbers lose precision above 2**53.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from examples.orders.service import BadRequest, NotFound, OrderService, Refused

__all__ = ["MAX_BODY_BYTES", "Route", "RouteError", "route", "serve"]

MAX_BODY_BYTES = 64 * 1024
MAX_ID = (1 << 63) - 1
SHUTDOWN_POLL_S = 0.05  # how often serve_forever looks for shutdown()
ORDER_PATH = re.compile(r"/orders/(\d{1,19})")
PAY_PATH = re.compile(r"/orders/(\d{1,19})/pay")
USER_PATH = re.compile(r"/users/([A-Za-z0-9_-]{1,64})/orders")
ERR_NOT_FOUND = "no such resource: {} {}"
ERR_MONTH = "the query needs month=YYYY-MM"
ERR_BODY = f"the body must be a JSON object of at most {MAX_BODY_BYTES} bytes"
ERR_ID = "order id out of range"
ERR_UNAVAILABLE = "a daemon is unavailable: {}"


class RouteError(ValueError):
    """A request no route takes (404) or whose query is wrong (400): `status` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Route:
    """An action (`create`, `pay`, `get`, `list`) and its arguments."""

    action: str
    order_id: int = 0
    user: str = ""
    month: str = ""


def _order_id(text: str) -> int:
    value = int(text)
    if value > MAX_ID:
        raise RouteError(HTTPStatus.BAD_REQUEST, ERR_ID)
    return value


def route(method: str, target: str) -> Route:
    """The route of a request line's method and target; RouteError otherwise."""
    parts = urlsplit(target)
    path = parts.path
    if method == "POST" and path == "/orders":
        return Route("create")
    if method == "POST" and (match := PAY_PATH.fullmatch(path)):
        return Route("pay", order_id=_order_id(match.group(1)))
    if method == "GET" and (match := ORDER_PATH.fullmatch(path)):
        return Route("get", order_id=_order_id(match.group(1)))
    if method == "GET" and (match := USER_PATH.fullmatch(path)):
        months = parse_qs(parts.query).get("month", [])
        if len(months) != 1:
            raise RouteError(HTTPStatus.BAD_REQUEST, ERR_MONTH)
        return Route("list", user=match.group(1), month=months[0])
    raise RouteError(HTTPStatus.NOT_FOUND, ERR_NOT_FOUND.format(method, path))


def _act(service: OrderService, where: Route, body: dict[str, Any]) -> tuple[int, Any]:
    if where.action == "create":
        order = service.create(body.get("user"), body.get("items"))  # type: ignore[arg-type]
        return HTTPStatus.CREATED, order.as_json()
    if where.action == "pay":
        return HTTPStatus.OK, service.pay(where.order_id).as_json()
    if where.action == "get":
        return HTTPStatus.OK, service.get(where.order_id).as_json()
    orders = service.user_orders(where.user, where.month)
    return HTTPStatus.OK, {"orders": [o.as_json() for o in orders]}


def _handler(service: OrderService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # one line per request is too many
            return

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            text = self.headers.get("Content-Length") or "0"
            length = int(text) if text.isdigit() else -1
            if not 0 <= length <= MAX_BODY_BYTES:
                raise BadRequest(ERR_BODY)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise BadRequest(ERR_BODY) from None
            if not isinstance(body, dict):
                raise BadRequest(ERR_BODY)
            return body

        def _serve(self) -> None:
            try:
                where = route(self.command, self.path)
                self._reply(*_act(service, where, self._body()))
            except RouteError as exc:
                self._reply(exc.status, {"error": str(exc)})
            except BadRequest as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except NotFound as exc:
                self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            except Refused as exc:
                self._reply(HTTPStatus.CONFLICT, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - a daemon's client gave up: 503
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE,
                            {"error": ERR_UNAVAILABLE.format(exc)})

        do_GET = _serve
        do_POST = _serve

    return Handler


def serve(service: OrderService, host: str = "127.0.0.1",
          port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve the API in a daemon thread; returns the server (its `server_address` has the
    port) and the thread. `server.shutdown()` stops it."""
    server = ThreadingHTTPServer((host, port), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL_S,),
                              name="orders-http", daemon=True)
    thread.start()
    return server, thread
