"""HTTP/1.1 requests for the console, sans I/O: bytes in, `Request` values out.

Strategy: `RequestReader.feed(bytes)` buffers; `next_request()` returns one `Request`, or
`NEED_DATA` until the head (up to the blank line) and then the body announced by
Content-Length have arrived. Anything malformed or over a limit raises `HttpError` with the
status to answer (400, 413 or 431) and a message; the caller answers it and closes, since
the stream can no longer be trusted. Only what the console needs is understood: GET, HEAD
and POST, bodies sized by Content-Length (chunked uploads are refused), URL-encoded forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "MAX_BODY_BYTES", "MAX_HEAD_BYTES", "MAX_HEADERS", "METHODS", "NEED_DATA",
    "HttpError", "Request", "RequestReader", "parse_cookies", "parse_form",
]

MAX_HEAD_BYTES: Final = 16 * 1024  # request line plus headers
MAX_HEADERS: Final = 64
MAX_BODY_BYTES: Final = 16 * 1024  # a login or an action form
MAX_FORM_FIELDS: Final = 16
METHODS: Final = frozenset({"GET", "HEAD", "POST"})
VERSIONS: Final = frozenset({"HTTP/1.0", "HTTP/1.1"})

ERR_HEAD_TOO_LONG: Final = "request head longer than {} bytes"
ERR_REQUEST_LINE: Final = "malformed request line"
ERR_METHOD: Final = "method not supported (GET, HEAD and POST are)"
ERR_VERSION: Final = "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"
ERR_TARGET: Final = "request target must be an absolute path"
ERR_HEADER: Final = "malformed header line"
ERR_TOO_MANY_HEADERS: Final = "more than {} headers"
ERR_LENGTH: Final = "malformed Content-Length"
ERR_BODY_TOO_LONG: Final = "body longer than {} bytes"
ERR_CHUNKED: Final = "Transfer-Encoding is not supported; send Content-Length"
ERR_ENCODING: Final = "request head is not ASCII"
ERR_FORM: Final = "malformed form body"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEAD_END = b"\r\n\r\n"


class HttpError(ValueError):
    """A request the console refuses: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass
class Request:
    """One parsed request. Header names are lower case; a repeated header keeps its last
    value. `path` is percent-decoded; `query` maps each name to its last value."""

    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the response (HTTP/1.1's default)."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


class RequestReader:
    """Feed bytes, take requests (see the module header). After an HttpError the reader is
    spent: the caller answers and closes the connection."""

    def __init__(self, max_head: int = MAX_HEAD_BYTES, max_body: int = MAX_BODY_BYTES) -> None:
        self._buffer = bytearray()
        self._head: Request | None = None
        self._length = 0
        self.max_head = max_head
        self.max_body = max_body

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    def next_request(self) -> Request | _NeedData:
        """The next complete request, or NEED_DATA; raises HttpError on a bad request."""
        if self._head is None:
            while self._buffer.startswith(b"\r\n"):  # empty lines before a request are ignored
                del self._buffer[:2]
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                if len(self._buffer) > self.max_head:
                    raise HttpError(431, ERR_HEAD_TOO_LONG.format(self.max_head))
                return NEED_DATA
            if end > self.max_head:
                raise HttpError(431, ERR_HEAD_TOO_LONG.format(self.max_head))
            self._head = parse_head(bytes(self._buffer[:end]))
            self._length = _body_length(self._head.headers, self.max_body)
            del self._buffer[:end + len(_HEAD_END)]
        if len(self._buffer) < self._length:
            return NEED_DATA
        request, self._head = self._head, None
        request.body = bytes(self._buffer[:self._length])
        del self._buffer[:self._length]
        return request


def parse_head(head: bytes) -> Request:
    """The request line and headers (without the blank line); raises HttpError."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, ERR_ENCODING) from None
    lines = text.split("\r\n")
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, ERR_TOO_MANY_HEADERS.format(MAX_HEADERS))
    headers = dict(_header(line) for line in lines[1:])
    try:
        parts = urlsplit(target)
        pairs = parse_qs(parts.query, max_num_fields=MAX_FORM_FIELDS, keep_blank_values=True)
    except ValueError:
        raise HttpError(400, ERR_TARGET) from None
    query = {k: v[-1] for k, v in pairs.items()}
    return Request(method, unquote(parts.path), version, headers, query)


def _request_line(line: str) -> tuple[str, str, str]:
    words = line.split(" ")
    if len(words) != 3 or not all(words):
        raise HttpError(400, ERR_REQUEST_LINE)
    method, target, version = words
    if not _TOKEN.match(method):
        raise HttpError(400, ERR_REQUEST_LINE)
    if method not in METHODS:
        raise HttpError(400, ERR_METHOD)
    if version not in VERSIONS:
        raise HttpError(400, ERR_VERSION)
    if not target.startswith("/") or target.startswith("//") or any(
            c <= " " or c == "\x7f" for c in target):
        raise HttpError(400, ERR_TARGET)
    return method, target, version


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.match(name):
        raise HttpError(400, ERR_HEADER)
    value = value.strip(" \t")
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise HttpError(400, ERR_HEADER)
    return name.lower(), value


def _body_length(headers: dict[str, str], max_body: int) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(400, ERR_CHUNKED)
    raw = headers.get("content-length", "0")
    if not raw.isdigit() or len(raw) > 12:
        raise HttpError(400, ERR_LENGTH)
    length = int(raw)
    if length > max_body:
        raise HttpError(413, ERR_BODY_TOO_LONG.format(max_body))
    return length


def parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body: name -> last value; raises HttpError."""
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, ERR_FORM) from None
    return {k: v[-1] for k, v in fields.items()}


def parse_cookies(header: str) -> dict[str, str]:
    """A Cookie header: name -> value (malformed pairs are skipped, as browsers do)."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, eq, value = pair.strip().partition("=")
        if eq and _TOKEN.match(name):
            cookies[name] = value.strip('"')
    return cookies
