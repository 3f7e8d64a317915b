"""The client side of RESP (the Redis protocol), shared by every RESP daemon's client library.

Three layers, each usable alone:

- `ReplyParser`: sans-I/O. `feed(bytes)` then `next_reply()` until it returns `NEED_DATA`.
  It understands RESP2 and RESP3 replies. The parser keeps one `bytes` buffer and an offset;
  aggregates under construction sit on an explicit stack, so a reply split over many reads is
  never re-parsed from its start (a partial element is). Bytes that arrive while the parser
  still waits for a known amount (a large bulk) are only queued and joined once enough has
  arrived. A run of integer elements inside an array (an `idgen` batch of ids) is decoded
  with one `split` and `map(int, ...)` instead of one Python step per element.
- `encode_command(*args)`: a command as a multibulk request.
- `RespConnection` (blocking sockets) and `AsyncRespConnection` (asyncio streams): one
  request at a time, replies in order, a deadline per request. A connection whose request
  failed half-way (timeout, broken socket, malformed reply, cancellation) is closed, since
  the reply stream can no longer be matched to requests. RESP3 pushes are out of band: they
  answer no request, so they go to the connection's `on_push` callback (or are dropped).
  Pub/sub, where the replies themselves are pushes, is not supported.

Type mapping: simple string `+` -> str, error `-` / bulk error `!` -> `ReplyError` (returned
by the parser, raised by `call`), integer `:` and big number `(` -> int, bulk `$` -> bytes,
array `*`, set `~` -> list, push `>` -> `Push` (a list), map `%` -> dict, null `_`, `$-1`,
`*-1` -> None, boolean `#` -> bool, double `,` -> float, verbatim `=` -> str without its
`txt:` prefix; attributes `|` are read and dropped.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeAlias

from core.attempt_deadline import bounded
from core.limits import REDIS_MAX_BULK_BYTES

__all__ = [
    "NEED_DATA",
    "AsyncRespConnection",
    "ProtocolError",
    "Push",
    "ReplyError",
    "ReplyParser",
    "RespConnection",
    "RespConnectionError",
    "RespTimeoutError",
    "encode_command",
]

# Limits, overridable per parser. Aggregate counts above MAX_ELEMENTS and bulks above
# MAX_BULK_BYTES are refused before any memory is reserved for them.
MAX_BULK_BYTES: Final = REDIS_MAX_BULK_BYTES  # replies of real Redis too
MAX_ELEMENTS: Final = 1024 * 1024
MAX_LINE_BYTES: Final = 64 * 1024  # simple strings, errors, numbers and type headers
MAX_DEPTH: Final = 64  # nesting of aggregates
BUFFER_SLACK_BYTES: Final = 1024 * 1024  # unparsed bytes allowed beyond the largest bulk

DEFAULT_TIMEOUT_S: Final = 5.0
RECV_BYTES: Final = 256 * 1024
_INT_RUN_MIN: Final = 8  # shortest run of integers worth the split-based decoder
_INT_LINE_MAX: Final = 23  # b":-9223372036854775808\r\n"

Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float


class ProtocolError(ValueError):
    """The peer sent bytes that are not valid RESP, or that break a limit. The stream is lost."""


class ReplyError(Exception):
    """An error reply (`-CODE message` or a bulk error). `code` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = message.split(" ", 1)[0] if message else ""


class RespConnectionError(ConnectionError):
    """The connection failed: refused, reset, closed by the server, or already closed."""


class RespTimeoutError(RespConnectionError, TimeoutError):
    """A connect or a request did not complete within its timeout; the connection is closed."""


class Push(list):  # type: ignore[type-arg]
    """An out-of-band RESP3 push (`>`); a list, distinguishable from an ordinary array."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by `ReplyParser.next_reply` when the buffered bytes hold no complete reply."""

# Aggregate kinds on the parser stack. Kinds below _MAP produce lists (integer runs allowed).
_ARRAY, _SET, _PUSH, _MAP, _ATTR = range(5)
_AGGREGATE_KINDS: Final = {42: _ARRAY, 126: _SET, 62: _PUSH, 37: _MAP, 124: _ATTR}
_CRLF: Final = b"\r\n"


def _hashable(value: object) -> object:
    """A map key as something a dict accepts (RESP3 allows aggregates as keys)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((_hashable(k), _hashable(v)) for k, v in value.items())
    return value


def _finish(kind: int, items: list[object]) -> object:
    if kind == _MAP:
        it = iter(items)
        try:
            return dict(zip(it, it, strict=True))
        except TypeError:
            it = iter(items)
            return {_hashable(k): v for k, v in zip(it, it, strict=True)}
    if kind == _PUSH:
        return Push(items)
    return items


class ReplyParser:
    """Sans-I/O RESP2/RESP3 reply parser: `feed(data)`, then `next_reply()` until NEED_DATA.

    After a `ProtocolError` the parser is unusable: every later call raises it again.
    """

    __slots__ = (
        "max_bulk_bytes",
        "max_elements",
        "max_line_bytes",
        "max_depth",
        "max_buffer_bytes",
        "_buf",
        "_pos",
        "_chunks",
        "_queued",
        "_need",
        "_stack",
        "_broken",
    )

    def __init__(
        self,
        *,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        max_elements: int = MAX_ELEMENTS,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_depth: int = MAX_DEPTH,
        max_buffer_bytes: int | None = None,
    ) -> None:
        self.max_bulk_bytes = max_bulk_bytes
        self.max_elements = max_elements
        self.max_line_bytes = max_line_bytes
        self.max_depth = max_depth
        self.max_buffer_bytes = (
            max_bulk_bytes + BUFFER_SLACK_BYTES if max_buffer_bytes is None else max_buffer_bytes
        )
        # Invariant: self._buf[:self._pos] is consumed (its values sit on self._stack);
        # self._chunks holds self._queued bytes fed since, not yet appended to self._buf.
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._queued = 0
        # next_reply() does not try again before this many unconsumed bytes are held.
        self._need = 1
        self._stack: list[list[object]] = []  # [kind, elements still to read, items]
        self._broken: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. ProtocolError if the unparsed bytes would pass the bound."""
        if self._broken is not None:
            raise ProtocolError(self._broken)
        if not data:
            return
        held = len(self._buf) - self._pos + self._queued + len(data)
        if held > self.max_buffer_bytes:
            self._fail(
                f"reply buffer over {self.max_buffer_bytes} bytes; "
                "call next_reply() between feeds"
            )
        self._chunks.append(bytes(data))
        self._queued += len(data)

    def buffered(self) -> int:
        """Bytes received but not yet consumed by a reply."""
        return len(self._buf) - self._pos + self._queued

    def next_reply(self) -> object:
        """The next complete reply, or NEED_DATA. ProtocolError on malformed input."""
        if self._broken is not None:
            raise ProtocolError(self._broken)
        if len(self._buf) - self._pos + self._queued < self._need:
            return NEED_DATA
        if self._chunks:
            if self._pos < len(self._buf):
                self._chunks.insert(0, self._buf[self._pos :])
            self._buf = b"".join(self._chunks)
            self._pos = 0
            self._chunks.clear()
            self._queued = 0
        try:
            return self._parse()
        except ProtocolError as exc:
            self._fail(str(exc))
        except (ValueError, UnicodeDecodeError) as exc:
            self._fail(f"malformed reply near offset {self._pos}: {exc}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, reason: str) -> None:
        self._broken = reason
        self._buf = b""
        self._chunks.clear()
        self._stack.clear()
        raise ProtocolError(reason)

    def _incomplete(self, pos: int, need: int) -> _NeedData:
        """Keep what is consumed; wait until `need` bytes from `pos` are held."""
        self._pos = pos
        self._need = need
        return NEED_DATA

    def _parse(self) -> object:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        stack = self._stack
        find = buf.find
        max_line = self.max_line_bytes
        while True:
            # Step 1: read one value at `pos`, or open an aggregate and read on.
            if pos >= n:
                return self._incomplete(pos, 1)
            kind = buf[pos]
            if kind == 58 and stack and stack[-1][0] < _MAP:  # ':' inside a list
                frame = stack[-1]
                if frame[1] >= _INT_RUN_MIN:  # type: ignore[operator]
                    new_pos = self._int_run(buf, pos, frame)
                    if new_pos != pos:
                        pos = new_pos
                        if frame[1]:
                            continue
                        stack.pop()
                        value: object = _finish(frame[0], frame[2])  # type: ignore[arg-type]
                        # fall through to step 2 with the finished aggregate
                        kind = -1
            if kind != -1:
                end = find(_CRLF, pos)
                if end < 0:
                    if n - pos > max_line + 1:
                        raise ProtocolError(f"reply line longer than {max_line} bytes")
                    return self._incomplete(pos, n - pos + 1)
                if end - pos > max_line + 1:
                    raise ProtocolError(f"reply line longer than {max_line} bytes")
                if kind == 58:  # ':' integer
                    value = int(buf[pos + 1 : end])
                    pos = end + 2
                elif kind == 36 or kind == 33 or kind == 61:  # '$' bulk, '!' error, '=' verbatim
                    length = int(buf[pos + 1 : end])
                    if length < 0:
                        if length != -1 or kind != 36:
                            raise ProtocolError(f"invalid bulk length {length}")
                        value = None
                        pos = end + 2
                    else:
                        if length > self.max_bulk_bytes:
                            raise ProtocolError(
                                f"bulk length {length} over the limit {self.max_bulk_bytes}"
                            )
                        start = end + 2
                        stop = start + length
                        if stop + 2 > n:
                            return self._incomplete(pos, stop + 2 - pos)
                        if buf[stop : stop + 2] != _CRLF:
                            raise ProtocolError("bulk payload not followed by CRLF")
                        data = buf[start:stop]
                        pos = stop + 2
                        if kind == 36:
                            value = data
                        elif kind == 33:
                            value = ReplyError(data.decode("utf-8", "replace"))
                        else:
                            if length < 4 or data[3] != 58:
                                raise ProtocolError("verbatim string without a format prefix")
                            value = data[4:].decode("utf-8", "replace")
                elif kind in _AGGREGATE_KINDS:
                    count = int(buf[pos + 1 : end])
                    pos = end + 2
                    agg = _AGGREGATE_KINDS[kind]
                    if count < 0:
                        if count != -1 or agg != _ARRAY:
                            raise ProtocolError(f"invalid aggregate length {count}")
                        value = None
                    elif count > self.max_elements:
                        raise ProtocolError(
                            f"aggregate of {count} elements over the limit {self.max_elements}"
                        )
                    elif count == 0:
                        if agg == _ATTR:
                            continue
                        value = _finish(agg, [])
                    else:
                        if len(stack) >= self.max_depth:
                            raise ProtocolError(f"replies nested deeper than {self.max_depth}")
                        stack.append([agg, count * 2 if agg >= _MAP else count, []])
                        continue
                elif kind == 43:  # '+' simple string
                    value = buf[pos + 1 : end].decode("utf-8", "replace")
                    pos = end + 2
                elif kind == 45:  # '-' error
                    value = ReplyError(buf[pos + 1 : end].decode("utf-8", "replace"))
                    pos = end + 2
                elif kind == 95:  # '_' null
                    if end != pos + 1:
                        raise ProtocolError("null with a payload")
                    value = None
                    pos = end + 2
                elif kind == 35:  # '#' boolean
                    flag = buf[pos + 1 : end]
                    if flag == b"t":
                        value = True
                    elif flag == b"f":
                        value = False
                    else:
                        raise ProtocolError(f"invalid boolean {flag!r}")
                    pos = end + 2
                elif kind == 44:  # ',' double
                    value = float(buf[pos + 1 : end])
                    pos = end + 2
                elif kind == 40:  # '(' big number
                    value = int(buf[pos + 1 : end])
                    pos = end + 2
                else:
                    raise ProtocolError(f"unknown reply type byte {bytes([kind])!r}")
            # Step 2: hand the value to the innermost open aggregate, closing finished ones.
            while True:
                if not stack:
                    self._pos = pos
                    self._need = 1
                    if pos == n:
                        self._buf = b""
                        self._pos = 0
                    return value
                frame = stack[-1]
                frame[2].append(value)  # type: ignore[attr-defined]
                left = frame[1] - 1  # type: ignore[operator]
                frame[1] = left
                if left:
                    break
                stack.pop()
                if frame[0] == _ATTR:
                    break  # attributes are dropped; the value they annotate follows
                value = _finish(frame[0], frame[2])  # type: ignore[arg-type]

    def _int_run(self, buf: bytes, pos: int, frame: list[object]) -> int:
        """Decode the complete integer elements at `pos` into `frame`; return the new offset.

        Returns `pos` unchanged when the first line is incomplete, too long for the window,
        or when the lines are not all integers; the caller then reads one element itself.
        """
        remaining: int = frame[1]  # type: ignore[assignment]
        parts = buf[pos : pos + remaining * _INT_LINE_MAX].split(_CRLF, remaining)
        parts.pop()  # a partial line, or whatever follows the last element
        if not parts:
            return pos
        joined = _CRLF.join(parts)
        if joined.count(b"\r\n:") != len(parts) - 1:
            return pos  # another type among them: fall back to one element at a time
        frame[2].extend(map(int, joined[1:].split(b"\r\n:")))  # type: ignore[attr-defined]
        frame[1] = remaining - len(parts)
        return pos + len(joined) + 2


def _encode_arg(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("booleans are not valid RESP arguments; pass 0/1 or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    if isinstance(arg, bytearray | memoryview):
        return bytes(arg)
    raise TypeError(f"cannot encode {type(arg).__name__} as a RESP argument")


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP multibulk request. Arguments: bytes, str (UTF-8), int, float."""
    if not args:
        raise ValueError("a command needs at least its name")
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode_arg(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _encode_pipeline(commands: Iterable[Sequence[Arg]]) -> tuple[bytes, int]:
    encoded = [encode_command(*command) for command in commands]
    return b"".join(encoded), len(encoded)


def _check_protocol(protocol: int) -> None:
    if protocol not in (2, 3):
        raise ValueError(f"protocol must be 2 or 3, not {protocol!r}")


class RespConnection:
    """A blocking RESP connection. One request at a time; not safe to share between threads.

    Every request has a deadline of `timeout` seconds for the whole round trip.
    """

    def __init__(self, sock: socket.socket, *, timeout: float, address: str = "") -> None:
        self._sock: socket.socket | None = sock
        self._parser = ReplyParser()
        self.timeout = timeout
        self.address = address
        self.hello: object = None  # the HELLO 3 reply, when protocol 3 was negotiated
        self.on_push: Callable[[Push], None] | None = None  # out-of-band RESP3 pushes

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        timeout: float = DEFAULT_TIMEOUT_S,
        password: str | bytes | None = None,
        protocol: int = 2,
        username: str | None = None,
    ) -> RespConnection:
        """Open a connection, send `AUTH password` if given (`AUTH username password` with
        a `username`), then `HELLO 3` for protocol 3.

        RespConnectionError/RespTimeoutError if the server cannot be reached; ReplyError
        (connection closed) if it refuses AUTH or HELLO.
        """
        _check_protocol(protocol)
        address = f"{host}:{port}"
        try:
            limit = bounded(timeout)
            sock = socket.create_connection((host, port), timeout=limit)
        except TimeoutError as exc:
            raise RespTimeoutError(f"connect to {address} timed out after {limit}s") from exc
        except OSError as exc:
            raise RespConnectionError(f"cannot connect to {address}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, timeout=timeout, address=address)
        try:
            if password is not None:
                conn.call("AUTH", *([username] if username else []), password)
            if protocol == 3:
                conn.hello = conn.call("HELLO", 3)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def closed(self) -> bool:
        """True once closed, by `close()` or after a failed request."""
        return self._sock is None

    def call(self, *args: Arg) -> object:
        """Send one command and return its reply; an error reply is raised as ReplyError."""
        reply = self._round_trip(encode_command(*args), 1)[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Iterable[Sequence[Arg]]) -> list[object]:
        """Send all commands at once; their replies in order, error replies as ReplyError values."""
        payload, count = _encode_pipeline(commands)
        return self._round_trip(payload, count) if count else []

    def _round_trip(self, payload: bytes, count: int) -> list[object]:
        sock = self._sock
        if sock is None:
            raise RespConnectionError(f"connection to {self.address} is closed")
        parser = self._parser
        replies: list[object] = []
        timeout = bounded(self.timeout)  # shorter inside a failover attempt near its end
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            sock.sendall(payload)
            while True:
                reply = parser.next_reply()
                if reply is NEED_DATA:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    data = sock.recv(RECV_BYTES)
                    if not data:
                        raise RespConnectionError(f"{self.address} closed the connection")
                    parser.feed(data)
                    continue
                if type(reply) is Push:
                    if self.on_push is not None:
                        self.on_push(reply)
                    continue
                replies.append(reply)
                if len(replies) == count:
                    return replies
        except RespConnectionError:
            self.close()
            raise
        except TimeoutError as exc:
            self.close()
            raise RespTimeoutError(
                f"no reply from {self.address} within {timeout}s"
            ) from exc
        except OSError as exc:
            self.close()
            raise RespConnectionError(f"connection to {self.address} failed: {exc}") from exc
        except BaseException:
            self.close()  # ProtocolError, KeyboardInterrupt: the stream is out of step
            raise

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<RespConnection {self.address} {state}>"


class AsyncRespConnection:
    """An asyncio RESP connection. Concurrent calls are serialised by a lock, in call order.

    Every request has a deadline of `timeout` seconds, counted from when it holds the lock.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        address: str = "",
    ) -> None:
        self._reader = reader
        self._writer: asyncio.StreamWriter | None = writer
        self._parser = ReplyParser()
        self._lock = asyncio.Lock()
        self.timeout = timeout
        self.address = address
        self.hello: object = None  # the HELLO 3 reply, when protocol 3 was negotiated
        self.on_push: Callable[[Push], None] | None = None  # out-of-band RESP3 pushes

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        timeout: float = DEFAULT_TIMEOUT_S,
        password: str | bytes | None = None,
        protocol: int = 2,
        username: str | None = None,
    ) -> AsyncRespConnection:
        """Open a connection, send `AUTH [username] password` if given, then `HELLO 3` for
        protocol 3."""
        _check_protocol(protocol)
        address = f"{host}:{port}"
        try:
            limit = bounded(timeout)
            # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the connection completes, and the caller's task then never ends)
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise RespTimeoutError(f"connect to {address} timed out after {limit}s") from exc
        except OSError as exc:
            raise RespConnectionError(f"cannot connect to {address}: {exc}") from exc
        conn = cls(reader, writer, timeout=timeout, address=address)
        try:
            if password is not None:
                await conn.call("AUTH", *([username] if username else []), password)
            if protocol == 3:
                conn.hello = await conn.call("HELLO", 3)
        except BaseException:
            conn.abort()
            raise
        return conn

    @property
    def closed(self) -> bool:
        """True once closed, by `close()` or after a failed request."""
        return self._writer is None

    async def call(self, *args: Arg) -> object:
        """Send one command and return its reply; an error reply is raised as ReplyError."""
        reply = (await self._round_trip(encode_command(*args), 1))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Iterable[Sequence[Arg]]) -> list[object]:
        """Send all commands at once; their replies in order, error replies as ReplyError values."""
        payload, count = _encode_pipeline(commands)
        return await self._round_trip(payload, count) if count else []

    async def _round_trip(self, payload: bytes, count: int) -> list[object]:
        async with self._lock:
            writer = self._writer
            if writer is None:
                raise RespConnectionError(f"connection to {self.address} is closed")
            parser = self._parser
            reader = self._reader
            replies: list[object] = []
            timeout = bounded(self.timeout)  # shorter inside a failover attempt near its end
            try:
                # asyncio.timeout is wait_for's deadline without a task per request.
                async with asyncio.timeout(timeout):
                    writer.write(payload)
                    await writer.drain()
                    while True:
                        reply = parser.next_reply()
                        if reply is NEED_DATA:
                            data = await reader.read(RECV_BYTES)
                            if not data:
                                raise RespConnectionError(
                                    f"{self.address} closed the connection"
                                )
                            parser.feed(data)
                            continue
                        if type(reply) is Push:
                            if self.on_push is not None:
                                self.on_push(reply)
                            continue
                        replies.append(reply)
                        if len(replies) == count:
                            return replies
            except RespConnectionError:
                self.abort()
                raise
            except TimeoutError as exc:
                self.abort()
                raise RespTimeoutError(
                    f"no reply from {self.address} within {timeout}s"
                ) from exc
            except OSError as exc:
                self.abort()
                raise RespConnectionError(
                    f"connection to {self.address} failed: {exc}"
                ) from exc
            except BaseException:
                self.abort()  # ProtocolError, cancellation: the stream is out of step
                raise

    def abort(self) -> None:
        """Close the transport at once, without waiting; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        """Close the connection and wait until the transport is gone; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def __aenter__(self) -> AsyncRespConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._writer is None else "open"
        return f"<AsyncRespConnection {self.address} {state}>"
