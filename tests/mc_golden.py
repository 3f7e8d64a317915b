"""Golden memcached transcripts: replies recorded once from the real memcached, replayed
against kvcache in every run (tests/test_kvcache_golden.py).

A file holds cases in the layout of tests/transcripts.py's transcripts, adapted to the
memcached text protocol: `# case NAME`, then the lines sent (each is sent followed by CRLF,
all of a case in one write), then `----`, then the reply split at CRLF, then `====`, which
closes the case whatever the reply holds (memcached replies may contain blank lines). Any
other control byte, and a backslash, is escaped (`\\n`, `\\r`, `\\t`, `\\xHH`, `\\\\`), so
a file is plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEPARATOR = "----"
END = "===="
CASE_PREFIX = "# case "
_ESCAPES = {b"\\": "\\\\", b"\n": "\\n", b"\r": "\\r", b"\t": "\\t"}
_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|n|r|t|\\)")


@dataclass(frozen=True)
class Case:
    """One recorded exchange: `sent` is the whole stream, `reply` the whole reply."""

    name: str
    sent: bytes
    reply: bytes


def escape(line: bytes) -> str:
    """A line as text: printable ASCII kept, every other byte escaped."""
    out = []
    for byte in line:
        char = bytes([byte])
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescape(text: str) -> bytes:
    """The inverse of `escape`."""
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x":
            return chr(int(code[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[code]
    return _UNESCAPE.sub(one, text).encode("latin-1")


def _lines(data: bytes) -> list[bytes]:
    """`data` split at CRLF; the CRLF ending the last line makes no empty line."""
    parts = data.split(b"\r\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


def _joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def render(cases: list[Case]) -> str:
    """The file text for `cases` (each `sent` and `reply` must end in CRLF or be empty)."""
    out: list[str] = []
    for case in cases:
        out.append(CASE_PREFIX + case.name)
        out.extend(escape(line) for line in _lines(case.sent))
        out.append(SEPARATOR)
        out.extend(escape(line) for line in _lines(case.reply))
        out.append(END)
    return "\n".join(out) + "\n"


def parse(text: str) -> list[Case]:
    """The cases of a file written by `render`."""
    cases: list[Case] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith(CASE_PREFIX):
            continue
        name = line[len(CASE_PREFIX):]
        sent: list[bytes] = []
        for row in lines:
            if row == SEPARATOR:
                break
            sent.append(unescape(row))
        reply: list[bytes] = []
        for row in lines:
            if row == END:
                break
            reply.append(unescape(row))
        cases.append(Case(name, _joined(sent), _joined(reply)))
    return cases


def load(path: Path) -> list[Case]:
    return parse(path.read_text(encoding="ascii"))


def save(path: Path, cases: list[Case]) -> None:
    path.write_text(render(cases), encoding="ascii")
