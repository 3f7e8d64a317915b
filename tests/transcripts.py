"""Raw RESP conversations for black-box tests: a strict reply reader and golden transcripts.

Nothing here imports the code under test; the reader is written from the RESP2/RESP3 spec so
that it judges the server's bytes independently.

Reply reader: `parse_reply(buf, pos)` returns one reply and the offset after it, raises
`Incomplete` when `buf` ends inside a reply and `MalformedReply` on bytes no RESP server may
send. `RawClient` is a blocking socket with a hang detector (its timeout), as netcat would be.

Golden transcripts (`tests/testdata/*.txt`) follow etcd-io/raft's datadriven files:

    # a comment, before a case
    PING
    ECHO "a b"
    ----
    +PONG
    $3
    a b

Every line above `----` is sent followed by CRLF (so a multibulk request is written one
header per line), all the lines of one case in one write. Below it is the reply text: the
received bytes split at CRLF, with any other control byte escaped (`\\n`, `\\r`, `\\xHH`,
`\\\\`). A case ends at a blank line; if its reply has blank lines, it is closed by a doubled
`----` line pair instead. `<closed>` as the last line means the server closed the
connection; the next case then runs on a new one. `<INT>` in an expected line matches any
integer (ids, client ids, ports). `UPDATE_GOLDEN=1` rewrites the files from what the server
answers, keeping each masked line that still matches.

The end of a case's replies is found by sending an unknown command after it (its error is
the same with or without AUTH, in RESP2 and RESP3) and reading up to that error, so no case
needs to say how many replies it expects.
"""

from __future__ import annotations

import os
import re
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "testdata"
UPDATE_ENV = "UPDATE_GOLDEN"
SEPARATOR = "----"
CLOSED = "<closed>"
INT_MASK = "<INT>"
# Hang detector for every socket read in these tests; never a timing assertion.
HANG_TIMEOUT_S = 5.0

_END_NAME = b"__GOLDEN_END__"
_END_REQUEST = _END_NAME + b"\r\n"
_END_REPLY = b"-ERR unknown command '__GOLDEN_END__', with args beginning with: \r\n"


# -- a strict reply reader -------------------------------------------------------------


class Incomplete(Exception):
    """The buffer ends inside a reply."""


class MalformedReply(Exception):
    """Bytes that are not a RESP2/RESP3 reply."""


class Status(str):
    """A `+simple` reply."""


class Err(str):
    """A `-error` reply (the text after the dash)."""


class Verbatim(bytes):
    """A RESP3 `=` verbatim string; `fmt` is its three-letter format (`txt`)."""

    fmt: str = ""


_INT_RE = re.compile(rb"-?[0-9]+\Z")


def _line(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if b"\n" in buf[pos:] or b"\r" in buf[pos:-1]:
            raise MalformedReply(f"bare CR or LF in a header line at {pos}")
        raise Incomplete
    line = buf[pos:end]
    if b"\n" in line or b"\r" in line:
        raise MalformedReply(f"bare CR or LF in a header line at {pos}: {line!r}")
    return line, end + 2


def _count(raw: bytes) -> int:
    if not _INT_RE.match(raw):
        raise MalformedReply(f"bad length {raw!r}")
    return int(raw)


def _blob(buf: bytes, pos: int, size: int) -> tuple[bytes, int]:
    if size < 0:
        raise MalformedReply(f"negative blob length {size}")
    if len(buf) < pos + size + 2:
        raise Incomplete
    if buf[pos + size : pos + size + 2] != b"\r\n":
        raise MalformedReply(f"blob of {size} bytes not followed by CRLF at {pos}")
    return buf[pos : pos + size], pos + size + 2


def parse_reply(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """One reply from buf[pos:] and the offset after it (see the module docstring)."""
    if pos >= len(buf):
        raise Incomplete
    kind = buf[pos : pos + 1]
    line, pos = _line(buf, pos + 1)
    if kind == b"+":
        return Status(line.decode("utf-8", "replace")), pos
    if kind == b"-":
        return Err(line.decode("utf-8", "replace")), pos
    if kind == b":":
        return _count(line), pos
    if kind == b"_":
        if line:
            raise MalformedReply(f"null with payload {line!r}")
        return None, pos
    if kind == b"#":
        if line not in (b"t", b"f"):
            raise MalformedReply(f"bad boolean {line!r}")
        return line == b"t", pos
    if kind == b",":
        try:
            return float(line), pos
        except ValueError:
            raise MalformedReply(f"bad double {line!r}") from None
    if kind in (b"$", b"="):
        size = _count(line)
        if kind == b"$" and size == -1:
            return None, pos
        data, pos = _blob(buf, pos, size)
        if kind == b"$":
            return data, pos
        if len(data) < 4 or data[3:4] != b":":
            raise MalformedReply(f"verbatim string without a format: {data[:8]!r}")
        value = Verbatim(data[4:])
        value.fmt = data[:3].decode("ascii", "replace")
        return value, pos
    if kind in (b"*", b"%", b"~"):  # ~ a RESP3 set, read as a list
        count = _count(line)
        if kind == b"*" and count == -1:
            return None, pos
        if count < 0:
            raise MalformedReply(f"negative aggregate length {count}")
        items: list[Any] = []
        for _ in range(count * (2 if kind == b"%" else 1)):
            item, pos = parse_reply(buf, pos)
            items.append(item)
        if kind != b"%":
            return items, pos
        return dict(zip(items[::2], items[1::2], strict=True)), pos
    raise MalformedReply(f"unknown reply type {kind!r} at {pos}")


def parse_replies(buf: bytes) -> list[Any]:
    """Every reply in `buf`, which must hold whole replies only."""
    out: list[Any] = []
    pos = 0
    while pos < len(buf):
        try:
            value, pos = parse_reply(buf, pos)
        except Incomplete:
            raise MalformedReply(f"reply cut short at byte {pos} of {len(buf)}") from None
        out.append(value)
    return out


def command(*args: bytes | str | int) -> bytes:
    """A multibulk request, as clients send it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class ConnectionClosed(Exception):
    """The server closed (or reset) the connection before a whole reply arrived."""


class RawClient:
    """A blocking TCP client speaking raw bytes; every read gives up after `timeout` s."""

    def __init__(self, host: str, port: int, timeout: float = HANG_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.closed = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        """One blocking read and whatever else is ready; b"" once the server has closed."""
        chunks: list[bytes] = []
        try:
            chunks.append(self.sock.recv(1 << 20))
            while chunks[-1] and select.select([self.sock], [], [], 0)[0]:
                chunks.append(self.sock.recv(1 << 20))
        except ConnectionResetError:
            chunks.append(b"")
        if not chunks or not chunks[-1]:
            self.closed = True
        return b"".join(chunks)

    def read_replies(self, count: int) -> list[Any]:
        """The next `count` whole replies; ConnectionClosed if the server closes first."""
        out: list[Any] = []
        pos = 0
        while len(out) < count:
            try:
                value, pos = parse_reply(self.buf, pos)
            except Incomplete:
                if self.closed:
                    raise ConnectionClosed(f"closed with {self.buf[pos:][:200]!r} unread") from None
                self.buf += self._recv()
                continue
            out.append(value)
        self.buf = self.buf[pos:]
        return out

    def read_reply(self) -> Any:
        """The next whole reply; ConnectionClosed if the server closes first."""
        return self.read_replies(1)[0]

    def call(self, *args: bytes | str | int) -> Any:
        """Send one multibulk command and return its reply."""
        self.send(command(*args))
        return self.read_reply()

    def read_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        while not self.closed:
            self.buf += self._recv()
        data, self.buf = self.buf, b""
        return data

    def read_exactly(self, size: int) -> bytes:
        """Exactly `size` bytes; ConnectionClosed if the server closes first."""
        while len(self.buf) < size:
            if self.closed:
                raise ConnectionClosed(f"closed after {len(self.buf)} of {size} bytes")
            self.buf += self._recv()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data


# -- golden transcripts ----------------------------------------------------------------


@dataclass
class Case:
    """One case of a transcript: comment lines, request lines, expected reply lines."""

    comments: list[str]
    request: list[str]
    expected: list[str]
    actual: list[str] = field(default_factory=list)


def load_transcript(path: Path) -> list[Case]:
    lines = path.read_text().split("\n")
    cases: list[Case] = []
    i = 0
    while i < len(lines):
        comments: list[str] = []
        while i < len(lines) and (not lines[i] or lines[i].startswith("#")):
            comments.append(lines[i])
            i += 1
        if i >= len(lines):
            break
        request: list[str] = []
        while i < len(lines) and lines[i] != SEPARATOR:
            request.append(lines[i])
            i += 1
        if i >= len(lines):
            raise ValueError(f"{path}: case {request[:1]} has no {SEPARATOR} line")
        i += 1
        expected: list[str] = []
        if i < len(lines) and lines[i] == SEPARATOR:  # doubled: ends at a doubled separator
            i += 1
            while i + 1 < len(lines) and not (lines[i] == lines[i + 1] == SEPARATOR):
                expected.append(lines[i])
                i += 1
            i += 2
        else:
            while i < len(lines) and lines[i]:
                expected.append(lines[i])
                i += 1
        cases.append(Case([c for c in comments if c], request, expected))
    return cases


def render(data: bytes) -> list[str]:
    """Reply bytes as transcript lines: split at CRLF, other control bytes escaped."""
    if not data:
        return []
    body = data[:-2] if data.endswith(b"\r\n") else data
    lines = []
    for raw in body.split(b"\r\n"):
        text = []
        for byte in raw:
            if byte == 0x5C:
                text.append("\\\\")
            elif byte == 0x0A:
                text.append("\\n")
            elif byte == 0x0D:
                text.append("\\r")
            elif 0x20 <= byte < 0x7F:
                text.append(chr(byte))
            else:
                text.append(f"\\x{byte:02x}")
        lines.append("".join(text))
    if not data.endswith(b"\r\n"):
        lines.append("<no CRLF at the end>")
    return lines


def _matches(expected: str, actual: str) -> bool:
    if INT_MASK not in expected:
        return expected == actual
    pattern = "-?[0-9]+".join(re.escape(part) for part in expected.split(INT_MASK))
    return re.fullmatch(pattern, actual) is not None


def _lines_match(expected: list[str], actual: list[str]) -> bool:
    return len(expected) == len(actual) and all(map(_matches, expected, actual))


def _exchange(client: RawClient, request: list[str]) -> list[str]:
    client.send("".join(line + "\r\n" for line in request).encode() + _END_REQUEST)
    data = b""
    while not data.endswith(_END_REPLY):
        if client.closed:
            return render(data) + [CLOSED]
        try:
            data += client._recv()
        except TimeoutError:
            raise AssertionError(
                f"the server hung: no reply to {request!r} within {HANG_TIMEOUT_S} s; "
                f"received so far: {data[:500]!r}"
            ) from None
    return render(data[: -len(_END_REPLY)])


def _write_transcript(path: Path, cases: list[Case]) -> None:
    out: list[str] = []
    for case in cases:
        if out:
            out.append("")
        out.extend(case.comments)
        out.extend(case.request)
        kept = [
            e if _matches(e, a) else a
            for e, a in zip(case.expected, case.actual, strict=False)
        ] + case.actual[len(case.expected) :]
        if "" in kept:
            out.extend([SEPARATOR, SEPARATOR, *kept, SEPARATOR, SEPARATOR])
        else:
            out.extend([SEPARATOR, *kept])
    path.write_text("\n".join(out) + "\n")


def run_transcript(path: Path, connect: Callable[[], RawClient]) -> None:
    """Play `path` against the server `connect` reaches; assert (or rewrite) every reply."""
    cases = load_transcript(path)
    client = connect()
    try:
        for case in cases:
            if client.closed:
                client.close()
                client = connect()
            case.actual = _exchange(client, case.request)
    finally:
        client.close()
    if os.environ.get(UPDATE_ENV, "") not in ("", "0"):
        _write_transcript(path, cases)
        return
    for case in cases:
        if not _lines_match(case.expected, case.actual):
            want = "\n".join(case.expected)
            got = "\n".join(case.actual)
            raise AssertionError(
                f"{path.name}: {case.request!r}\n--- expected\n{want}\n--- actual\n{got}\n"
                f"(rerun with {UPDATE_ENV}=1 to rewrite the file)"
            )
