"""The console's routes: what each request gets, apart from how bytes travel.

Strategy: `ConsoleApp.handle(request)` returns a `Response`; console/server.py reads and
writes the bytes. GET serves the one page and its script and style (files of
console/static, read once) and `/api/state`, the latest snapshot the poller took (the
`Poller` of console/server.py) with this session's CSRF token and logins. POSTs change
something and each must carry the session's CSRF token in its form (field `csrf`):
`/api/login` (daemon, password), `/api/logout`, `/api/job` (action, name). A POST whose
Origin header names another site is refused as well. After MAX_FAILED_LOGINS wrong
passwords within FAILED_LOGIN_WINDOW_S, from any session, logins are refused (429) until
the window passes. Replies to the page's scripts are JSON; a refusal is {"error": message}
with a 4xx or 5xx status. Passwords and the session token never appear in any reply body.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from console.actions import ActionError, check_password, job_action
from console.collect import RESP_DAEMONS, Targets
from console.http_parse import HttpError, Request, parse_cookies, parse_form
from console.sessions import COOKIE_NAME, Session, SessionStore, cookie_header

__all__ = ["STATIC", "ConsoleApp", "Response", "StateSource"]

STATIC: Final = Path(__file__).resolve().parent / "static"
PAGES: Final = {"/": ("index.html", "text/html; charset=utf-8"),
                "/console.js": ("console.js", "text/javascript; charset=utf-8"),
                "/console.css": ("console.css", "text/css; charset=utf-8")}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

ERR_NOT_FOUND: Final = "no such page"
ERR_CSRF: Final = "missing or stale CSRF token: reload the page"
ERR_ORIGIN: Final = "cross-site request refused"
ERR_NOT_WATCHED: Final = "the console does not watch {!r}"
ERR_NO_PASSWORD: Final = "password is empty"
ERR_LOGIN_FIRST: Final = "log in to the scheduler with its password first (read-only until then)"
ERR_NO_JOB: Final = "job name is empty"
ERR_METHOD: Final = "{} is not allowed on {}"
ERR_TOO_MANY_LOGINS: Final = "too many wrong passwords: try again in {} seconds"
MAX_FAILED_LOGINS: Final = 5  # refused logins in FAILED_LOGIN_WINDOW_S, from any session
FAILED_LOGIN_WINDOW_S: Final = 10

StateSource = Callable[[], dict[str, Any]]


@dataclass
class Response:
    """A status, headers and a body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, value: object) -> Response:
    """`value` as a JSON reply."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": "application/json"})


def error_response(status: int, message: str) -> Response:
    """A refusal as {"error": message}."""
    return json_response(status, {"error": message})


class ConsoleApp:
    """The routes over a state source (the poller's latest snapshot) and a session store."""

    def __init__(self, targets: Targets, state: StateSource, sessions: SessionStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = targets
        self.state = state
        self.sessions = sessions
        self.clock = clock
        self._failed_logins: deque[float] = deque(maxlen=MAX_FAILED_LOGINS)
        self.files = {path: ((STATIC / name).read_bytes(), kind)
                      for path, (name, kind) in PAGES.items()}
        self.posts: dict[str, Callable[[Session, dict[str, str]], Awaitable[Response]]] = {
            "/api/login": self._login, "/api/logout": self._logout, "/api/job": self._job}

    async def handle(self, request: Request) -> Response:
        """The response to `request`, with the session cookie and security headers."""
        cookie = parse_cookies(request.headers.get("cookie", "")).get(COOKIE_NAME)
        session, new = self.sessions.get_or_create(cookie)
        token = session.token
        try:
            response = await self._route(request, session)
        except HttpError as exc:
            response = error_response(exc.status, exc.message)
        except ActionError as exc:
            response = error_response(exc.status, exc.message)
        response.headers.update(SECURITY_HEADERS)
        if new or session.token != token:
            response.headers["Set-Cookie"] = cookie_header(session)
        return response

    async def _route(self, request: Request, session: Session) -> Response:
        if request.method in ("GET", "HEAD"):
            if request.path == "/api/state":
                return json_response(200, self._state(session))
            if request.path in self.files:
                body, kind = self.files[request.path]
                return Response(200, body, {"Content-Type": kind})
            if request.path in self.posts:
                return error_response(405, ERR_METHOD.format(request.method, request.path))
            return error_response(404, ERR_NOT_FOUND)
        handler = self.posts.get(request.path)
        if handler is None:
            return error_response(404 if request.path not in self.files else 405,
                                  ERR_NOT_FOUND)
        _check_origin(request)
        form = parse_form(request.body)
        if not session.csrf_ok(form.get("csrf", "")):
            return error_response(403, ERR_CSRF)
        return await handler(session, form)

    def _state(self, session: Session) -> dict[str, Any]:
        return {**self.state(), "session": {"csrf": session.csrf,
                                            "logged_in": session.logged_in()},
                "login_daemons": [d for d in RESP_DAEMONS if self.targets.of(d)]}

    async def _login(self, session: Session, form: dict[str, str]) -> Response:
        daemon, password = form.get("daemon", ""), form.get("password", "")
        if daemon not in RESP_DAEMONS or not self.targets.of(daemon):
            return error_response(400, ERR_NOT_WATCHED.format(daemon))
        if not password:
            return error_response(400, ERR_NO_PASSWORD)
        failed = self._failed_logins
        if len(failed) == MAX_FAILED_LOGINS and self.clock() - failed[0] < FAILED_LOGIN_WINDOW_S:
            return error_response(429, ERR_TOO_MANY_LOGINS.format(FAILED_LOGIN_WINDOW_S))
        try:
            await check_password(daemon, self.targets.of(daemon), password)
        except ActionError as exc:
            if exc.status == 403:
                failed.append(self.clock())
            raise
        session.passwords[daemon] = password
        self.sessions.rotate(session)
        return json_response(200, {"ok": True, "logged_in": session.logged_in(),
                                   "csrf": session.csrf})

    async def _logout(self, session: Session, form: dict[str, str]) -> Response:
        session.passwords.clear()
        self.sessions.rotate(session)
        return json_response(200, {"ok": True, "logged_in": [], "csrf": session.csrf})

    async def _job(self, session: Session, form: dict[str, str]) -> Response:
        password = session.passwords.get("scheduler")
        if password is None:
            return error_response(403, ERR_LOGIN_FIRST)
        name = form.get("name", "")
        if not name:
            return error_response(400, ERR_NO_JOB)
        run_id = await job_action(self.targets.of("scheduler"), password,
                                  form.get("action", ""), name)
        return json_response(200, {"ok": True, "run_id": run_id})


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None and origin.split("://", 1)[-1] != host:
        raise HttpError(403, ERR_ORIGIN)
