"""Browser sessions of the console, sans I/O: who logged in to which daemon.

Strategy: every browser gets a session on its first page load, keyed by a random token
(`secrets.token_urlsafe`, the token source is injected for tests) carried only in an
HttpOnly, SameSite=Strict cookie. The session holds a CSRF token, which the page sends back
with every POST, and the passwords its user logged in with, one per daemon. Passwords stay
in this process's memory: they never go into a page, a JSON reply or a log line. A login
replaces the session's token (no fixation); a session idle longer than SESSION_IDLE_S is
forgotten; at most MAX_SESSIONS are kept (the least recently used goes first).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["COOKIE_NAME", "MAX_SESSIONS", "SESSION_IDLE_S", "Session", "SessionStore",
           "cookie_header"]

COOKIE_NAME: Final = "console_session"
SESSION_IDLE_S: Final = 3600.0
MAX_SESSIONS: Final = 1024
TOKEN_BYTES: Final = 32


@dataclass
class Session:
    """One browser's session: its token (the cookie), CSRF token and logins."""

    token: str
    csrf: str
    last_used: float
    passwords: dict[str, str] = field(default_factory=dict)  # daemon -> password

    def csrf_ok(self, sent: str) -> bool:
        """Whether `sent` is this session's CSRF token (compared in constant time)."""
        return hmac.compare_digest(sent.encode(), self.csrf.encode())

    def logged_in(self) -> list[str]:
        """The daemons this session logged in to, sorted."""
        return sorted(self.passwords)


class SessionStore:
    """Sessions by token (see the module header)."""

    def __init__(self, clock: Callable[[], float],
                 token: Callable[[], str] = lambda: secrets.token_urlsafe(TOKEN_BYTES)) -> None:
        self._clock = clock
        self._token = token
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get_or_create(self, token: str | None) -> tuple[Session, bool]:
        """The live session of `token`, or a new one; the flag says it is new (so the
        caller sets its cookie)."""
        now = self._clock()
        session = self._sessions.get(token) if token else None
        if session is not None and now - session.last_used <= SESSION_IDLE_S:
            session.last_used = now
            self._sessions.move_to_end(session.token)
            return session, False
        if session is not None:
            del self._sessions[session.token]
        return self._add(Session(self._token(), self._token(), now)), True

    def rotate(self, session: Session) -> Session:
        """A login: the same session under a new token and CSRF token."""
        self._sessions.pop(session.token, None)
        session.token, session.csrf = self._token(), self._token()
        session.last_used = self._clock()
        return self._add(session)

    def _add(self, session: Session) -> Session:
        self._sessions[session.token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session


def cookie_header(session: Session) -> str:
    """The Set-Cookie value for `session`: HttpOnly, SameSite=Strict, whole site."""
    return f"{COOKIE_NAME}={session.token}; Path=/; HttpOnly; SameSite=Strict"
