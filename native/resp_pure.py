"""RESP request parser, pure-Python reference (the Cython twin is native/_resp.pyx).

Sans-I/O: `feed(bytes)` returns every command completed by those bytes, each a list of
bytes arguments. Both request forms a Redis server accepts are understood: multibulk
(`*2\\r\\n$4\\r\\nNEXT\\r\\n$2\\r\\n10\\r\\n`, what clients send) and inline (`NEXT 10\\r\\n`,
what netcat sends, with Redis's quoting rules).

Strategy: the unconsumed bytes live in one buffer; a command is taken only when it is
complete, otherwise the parser rewinds to the command's start and waits. Only headers are
rescanned on the next feed; bulk payloads are skipped by length.

After a protocol error the stream cannot be resynchronised (Redis replies and closes), so the
parser keeps the error in `error`, returns the commands completed before it and accepts no
more input. Error texts are Redis's own, so clients and tests see what they would from Redis.
"""

from __future__ import annotations

# Limits, in bytes or elements: the defaults of every RESP daemon (core.limits.Limits takes
# them from here). Inline and element counts are Redis's; bulks and the buffer are smaller
# than Redis's 512 MiB and 1 GiB, so a daemon's memory stays bounded unless it asks for more.
MAX_INLINE_BYTES = 64 * 1024
MAX_BULK_BYTES = 512 * 1024
MAX_ELEMENTS = 1024 * 1024
MAX_BUFFER_BYTES = 4 * 1024 * 1024
# Before AUTH succeeds a client may send only small commands (as Redis does).
UNAUTH_MAX_ELEMENTS = 10
UNAUTH_MAX_BULK_BYTES = 16 * 1024

ERR_INLINE_TOO_BIG = "Protocol error: too big inline request"
ERR_MBULK_COUNT_TOO_BIG = "Protocol error: too big mbulk count string"
ERR_BULK_COUNT_TOO_BIG = "Protocol error: too big bulk count string"
ERR_INVALID_MBULK = "Protocol error: invalid multibulk length"
ERR_INVALID_BULK = "Protocol error: invalid bulk length"
ERR_UNAUTH_MBULK = "Protocol error: unauthenticated multibulk length"
ERR_UNAUTH_BULK = "Protocol error: unauthenticated bulk length"
ERR_UNBALANCED_QUOTES = "Protocol error: unbalanced quotes in request"
ERR_BUFFER_LIMIT = "Protocol error: query buffer limit exceeded"
ERR_EXPECTED_DOLLAR = "Protocol error: expected '$', got '{}'"


class ProtocolError(Exception):
    """The client broke the protocol; `str(err)` is the reply text without the `ERR ` code."""


class _Incomplete(Exception):
    """Internal: the buffer ends inside a command."""


class _UnauthLimit(ProtocolError):
    """Internal: a command over the unauthenticated limits. When commands precede it in
    the same feed the parser stops before it instead (one of them may be AUTH); the server
    runs them and feeds b"" to go on, as Redis runs each command before parsing the next."""


def _parse_count(raw: bytes) -> int | None:
    """Redis's string2ll for lengths: optional '-', ASCII digits only, no '+', no spaces."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits or not digits.isdigit() or len(digits) > 18:
        return None
    return int(raw)


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_SPACES = b" \n\r\t\v\f"


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command as Redis's sdssplitargs does (quotes, \\xHH, escapes).

    Raises ProtocolError on unbalanced quotes, or a closing quote not followed by a space.
    """
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    raise ProtocolError(ERR_UNBALANCED_QUOTES)
                c = line[i]
                if (
                    c == 92 and i + 3 < n and line[i + 1] == ord("x")
                    and line[i + 2] in _HEX and line[i + 3] in _HEX
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        raise ProtocolError(ERR_UNBALANCED_QUOTES)
                    in_double = False
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_single:
                if i >= n:
                    raise ProtocolError(ERR_UNBALANCED_QUOTES)
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    current.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        raise ProtocolError(ERR_UNBALANCED_QUOTES)
                    in_single = False
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACES:
                    break
                if c == 34:
                    in_double = True
                elif c == 39:
                    in_single = True
                else:
                    current.append(c)
            i += 1
        args.append(bytes(current))


class RequestParser:
    """Bytes in, commands out. See the module docstring for the contract.

    `authenticated` may be flipped by the server after AUTH; while it is False the tighter
    UNAUTH_* limits apply.
    """

    def __init__(
        self,
        max_inline: int = MAX_INLINE_BYTES,
        max_bulk: int = MAX_BULK_BYTES,
        max_elements: int = MAX_ELEMENTS,
        max_buffer: int = MAX_BUFFER_BYTES,
        authenticated: bool = True,
    ) -> None:
        self.max_inline = max_inline
        self.max_bulk = max_bulk
        self.max_elements = max_elements
        self.max_buffer = max_buffer
        self.authenticated = authenticated
        self.error: ProtocolError | None = None
        self._buf = b""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Add received bytes; return the commands they complete (possibly none)."""
        if self.error is not None:
            return []
        buf = self._buf + data if self._buf else bytes(data)
        commands: list[list[bytes]] = []
        pos = 0
        try:
            while pos < len(buf):
                if buf[pos] == 42:  # '*'
                    args, pos = self._parse_multibulk(buf, pos)
                else:
                    args, pos = self._parse_inline(buf, pos)
                if args:
                    commands.append(args)
        except _Incomplete:
            pass
        except _UnauthLimit as exc:
            if not commands:
                self.error = ProtocolError(str(exc))
                self._buf = b""
                return commands
        except ProtocolError as exc:
            self.error = exc
            self._buf = b""
            return commands
        self._buf = buf[pos:]
        if len(self._buf) > self.max_buffer:
            self.error = ProtocolError(ERR_BUFFER_LIMIT)
            self._buf = b""
        return commands

    def _parse_inline(self, buf: bytes, pos: int) -> tuple[list[bytes], int]:
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > self.max_inline:
                raise ProtocolError(ERR_INLINE_TOO_BIG)
            raise _Incomplete
        if end - pos > self.max_inline:
            raise ProtocolError(ERR_INLINE_TOO_BIG)
        line = buf[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        return split_inline(line), end + 1

    def _read_line(self, buf: bytes, pos: int, too_big: str) -> tuple[bytes, int]:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > self.max_inline:
                raise ProtocolError(too_big)
            raise _Incomplete
        if end - pos > self.max_inline:
            raise ProtocolError(too_big)
        return buf[pos:end], end + 2

    def _parse_multibulk(self, buf: bytes, pos: int) -> tuple[list[bytes], int]:
        header, pos = self._read_line(buf, pos + 1, ERR_MBULK_COUNT_TOO_BIG)
        count = _parse_count(header)
        if count is None or count > self.max_elements:
            raise ProtocolError(ERR_INVALID_MBULK)
        if not self.authenticated and count > UNAUTH_MAX_ELEMENTS:
            raise _UnauthLimit(ERR_UNAUTH_MBULK)
        args: list[bytes] = []
        for _ in range(count):
            if pos >= len(buf):
                raise _Incomplete
            if buf[pos] != 36:  # '$'
                raise ProtocolError(ERR_EXPECTED_DOLLAR.format(chr(buf[pos])))
            header, pos = self._read_line(buf, pos + 1, ERR_BULK_COUNT_TOO_BIG)
            size = _parse_count(header)
            if size is None or size < 0 or size > self.max_bulk:
                raise ProtocolError(ERR_INVALID_BULK)
            if not self.authenticated and size > UNAUTH_MAX_BULK_BYTES:
                raise _UnauthLimit(ERR_UNAUTH_BULK)
            if pos + size + 2 > len(buf):
                raise _Incomplete
            args.append(buf[pos : pos + size])
            pos += size + 2  # Redis skips the CRLF after a bulk without checking it
        return args, pos


def encode_int_array(values: list[int]) -> bytes:
    """A RESP array of integers (`*n` then `:v` each): identical in RESP2 and RESP3.

    idgen's `NEXT n` replies are these, up to 100,000 long, hence the native twin.
    """
    return b"*%d\r\n" % len(values) + b"".join([b":%d\r\n" % v for v in values])
