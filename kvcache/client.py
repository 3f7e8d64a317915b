"""memcached clients, blocking (`Client`) and asyncio (`AsyncClient`), over a ketama pool.

Layers, from the wire up:
- Commands are data: `cmd_*` functions validate arguments and return a `Command` (request
  bytes, reply shape, decoder). `ReplyReader` is sans-I/O: bytes in, replies out, with named
  limits. Neither touches a socket or a clock.
- `kvcache.ring.Router` is the pool's state: the ketama ring (placement as libmemcached and
  uhashring), each server's health, and where a key goes now.
- The two clients are thin: route, borrow a pooled connection, write, read until the reader
  has the reply, decode. Multi-gets send one request per server; the async client does all
  servers concurrently, the blocking one writes to all before reading any.

Health: `failure_threshold` consecutive failures (connect error, timeout, connection lost,
malformed reply) mark a server down. An error reply (SERVER_ERROR out of memory, CLIENT_ERROR)
is an answer, so it counts as success. A down server is probed with `version` on a fresh
connection, first `retry_backoff[0]` seconds later, then with the delay doubling up to
`retry_backoff[1]`. The blocking client probes inline, at the start of the first call after
a probe falls due (that call may wait up to one timeout); the async client starts the probe
as a task, so no call waits for it.
What a down server's keys do is `on_down`:
- "fail" (mcrouter's default): calls for them raise ServerDown at once, without I/O; other
  keys are unaffected, and no key ever moves, so no call returns another server's value.
- "remap" (twemproxy's auto_eject_hosts, libmemcached's auto eject): the ring is rebuilt
  without the down servers, so their keys go to their ring successors; when a probe succeeds
  they go home. Beware: a key written elsewhere while its home was down reads its home's older
  value once the home is back.
A failed call is never retried on another server (a timed-out write may have been applied).

Connections: a timeout bounds a whole call (connect, write, read). A connection that failed
is closed with every idle one to that server, never reused, so a late reply can not be taken
for another request's; a pooled connection the server closed (a restart) fails its next call.
noreply calls return once written: they can not tell success, so they do not count for
health. A server may still answer a noreply command with an error (memcached 1.6 does for a
line it can not parse), so the next request on that connection is fenced with `version` and
anything before the fence's reply is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from kvcache.ring import Key, Router, ServerSpec, parse_server

__all__ = [
    "AsyncClient",
    "CacheError",
    "Client",
    "CommandError",
    "Item",
    "NetworkError",
    "ProtocolError",
    "ReplyError",
    "ReplyReader",
    "ServerDown",
    "ServerError",
]

MAX_KEY_BYTES = 250
MAX_LINE_BYTES = 8192  # longest reply line accepted (VALUE header, STAT line, error text)
MAX_VALUE_BYTES = 128 * 1024 * 1024  # largest value accepted in a reply
READ_BYTES = 65536
MAX_IDLE_PER_SERVER = 8
FENCE = b"version\r\n"


class Item(NamedTuple):
    """A stored value: its bytes, its client flags, and its CAS token (gets, get_many(cas))."""

    value: bytes
    flags: int
    cas: int | None = None


class CacheError(Exception):
    """Base of every error this module raises (argument errors raise ValueError/TypeError)."""


class NetworkError(CacheError):
    """The call to `server` failed (connect, timeout, lost or malformed); the server is
    marked down after enough of them. `partial` holds what a multi-get got elsewhere."""

    def __init__(self, server: str, message: str, partial: dict[Any, Item] | None = None):
        super().__init__(f"{server}: {message}")
        self.server = server
        self.partial = partial


class ServerDown(NetworkError):
    """The key's server is marked down (on_down="fail"), or every server is (remap)."""


class ProtocolError(NetworkError):
    """The server's reply broke the protocol; the connection was dropped."""


class ReplyError(CacheError):
    """The server answered with an error; the connection stays in sync."""


class ServerError(ReplyError):
    """SERVER_ERROR <message>, e.g. "out of memory storing object"."""


class CommandError(ReplyError):
    """ERROR or CLIENT_ERROR <message>: the server refused the command."""


# -- commands (sans-I/O) -------------------------------------------------------------------

LINE, VALUES, STATS, NONE = "line", "values", "stats", "none"


@dataclass(frozen=True, slots=True)
class Command:
    """One request: its bytes, the reply shape to read, and how to turn the reply into a
    result. `key` routes it (None: a per-server command). `keys`: what a VALUES reply may hold."""

    payload: bytes
    reply: str
    decode: Callable[[Any], Any]
    key: bytes | None = None
    keys: frozenset[bytes] = frozenset()


_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")  # memcached splits on space; no controls


def encode_key(key: Key) -> bytes:
    """The wire form of a key; ValueError unless 1 to 250 bytes without spaces or controls."""
    raw = key.encode() if isinstance(key, str) else key
    if not isinstance(raw, bytes):
        raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
    if not 0 < len(raw) <= MAX_KEY_BYTES or _BAD_KEY_BYTE.search(raw):
        raise ValueError(f"bad key {raw[:60]!r}: 1 to 250 bytes, no spaces or control bytes")
    return raw


def _uint(name: str, value: int, bits: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an integer in [0, 2**{bits})")
    return b"%d" % value


def _int(name: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 31:
        raise ValueError(f"{name} must be a 32-bit integer")
    return b"%d" % value


def _expect(table: dict[bytes, Any]) -> Callable[[bytes], Any]:
    def decode(line: bytes) -> Any:
        if line not in table:
            raise ValueError(f"unexpected reply {line[:80]!r}")
        return table[line]

    return decode


_STORED = _expect({b"STORED": True, b"NOT_STORED": False})
_CAS = _expect({b"STORED": True, b"EXISTS": False, b"NOT_FOUND": None})
_DELETED = _expect({b"DELETED": True, b"NOT_FOUND": False})
_TOUCHED = _expect({b"TOUCHED": True, b"NOT_FOUND": False})
_OK = _expect({b"OK": None})


def _noreply(value: Any) -> Callable[[Any], Any]:
    return lambda _reply: value


def _first(items: dict[bytes, Item]) -> Item | None:
    return next(iter(items.values()), None)


def _counter(line: bytes) -> int | None:
    if line == b"NOT_FOUND":
        return None
    if not line.isdigit():
        raise ValueError(f"unexpected reply {line[:80]!r}")
    return int(line)


def _version(line: bytes) -> str:
    if not line.startswith(b"VERSION "):
        raise ValueError(f"unexpected reply {line[:80]!r}")
    return line[8:].decode(errors="replace")


def cmd_retrieve(keys: Sequence[Key], cas: bool, exptime: int | None = None) -> Command:
    """get/gets (exptime None) or gat/gats; decodes to {wire key: Item} of the hits."""
    wire = [encode_key(k) for k in keys]
    verb = (b"gets" if cas else b"get") if exptime is None else (b"gats" if cas else b"gat")
    head = [verb] if exptime is None else [verb, _int("exptime", exptime)]
    payload = b" ".join(head + wire) + b"\r\n"
    return Command(payload, VALUES, lambda items: items, wire[0], frozenset(wire))


def cmd_get(key: Key, cas: bool, exptime: int | None = None) -> Command:
    """get/gets/gat/gats of one key; decodes to its Item or None."""
    many = cmd_retrieve([key], cas, exptime)
    return Command(many.payload, VALUES, _first, many.key, many.keys)


def cmd_store(
    verb: bytes, key: Key, value: bytes, flags: int, exptime: int, noreply: bool,
    cas: int | None = None,
) -> Command:  # fmt: skip
    """set/add/replace/append/prepend/cas; decodes to True (stored) or False (or None: cas
    on a missing key). noreply: sends and returns True (None for cas) without a reply."""
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    wire = encode_key(key)
    parts = [verb, wire, _uint("flags", flags, 32), _int("exptime", exptime), b"%d" % len(value)]
    if cas is not None:
        parts.append(_uint("cas", cas, 64))
    if noreply:
        parts.append(b"noreply")
    payload = b" ".join(parts) + b"\r\n" + value + b"\r\n"
    if noreply:
        return Command(payload, NONE, _noreply(None if cas is not None else True), wire)
    return Command(payload, LINE, _CAS if cas is not None else _STORED, wire)


def cmd_keyed(verb: bytes, key: Key, args: list[bytes], noreply: bool, decode: Any) -> Command:
    """delete/incr/decr/touch: `verb key args... [noreply]`, one reply line."""
    wire = encode_key(key)
    payload = b" ".join([verb, wire, *args, *([b"noreply"] if noreply else [])]) + b"\r\n"
    if noreply:
        return Command(payload, NONE, _noreply(None if decode is _counter else True), wire)
    return Command(payload, LINE, decode, wire)


def cmd_flush(delay: int, noreply: bool) -> Command:
    """flush_all [delay] [noreply]."""
    parts = [b"flush_all", _uint("delay", delay, 31)] + ([b"noreply"] if noreply else [])
    return Command(b" ".join(parts) + b"\r\n", NONE if noreply else LINE, _OK)


def cmd_stats(args: Sequence[str]) -> Command:
    """stats [args]: STAT lines up to END (stats reset/detail, which answer otherwise, are not
    supported)."""
    words = [a.encode() for a in args]
    if any(not w or _BAD_KEY_BYTE.search(w) for w in words):
        raise ValueError("stats arguments are single words")
    return Command(b" ".join([b"stats", *words]) + b"\r\n", STATS, lambda stats: stats)


# -- replies (sans-I/O) --------------------------------------------------------------------


class ReplyReader:
    """Bytes from one connection in, whole replies out: `feed(data)`, then `read_<shape>()`
    returns the reply or None until enough bytes came. Error replies raise ServerError or
    CommandError once consumed; broken framing raises ValueError (the caller drops the link)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_value: int = MAX_VALUE_BYTES):
        self._buf = bytearray()
        self._pos = 0
        self._items: dict[bytes, Item] = {}
        self._stats: dict[str, str] = {}
        self.max_line = max_line
        self.max_value = max_value

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > self.max_line:
                raise ValueError("reply line too long")
            return None
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        if line.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
            self._items, self._stats = {}, {}
            kind, _, message = line.partition(b" ")
            text = message.decode(errors="replace")
            raise (ServerError if kind == b"SERVER_ERROR" else CommandError)(text or kind.decode())
        return line

    def read_line(self) -> bytes | None:
        return self._line()

    def read_values(self) -> dict[bytes, Item] | None:
        """VALUE blocks up to END, as {key: Item}."""
        while True:
            start = self._pos
            line = self._line()
            if line is None:
                return None
            if line == b"END":
                items, self._items = self._items, {}
                return items
            parts = line.split(b" ")
            if (
                parts[0] != b"VALUE"
                or len(parts) not in (4, 5)
                or not all(p.isdigit() for p in parts[2:])
            ):
                raise ValueError(f"unexpected reply {line[:80]!r}")
            size = int(parts[3])
            if size > self.max_value:
                raise ValueError(f"value of {size} bytes is over the limit")
            if len(self._buf) - self._pos < size + 2:
                self._pos = start  # wait for the whole block; the header is parsed again
                return None
            end = self._pos + size
            if self._buf[end : end + 2] != b"\r\n":
                raise ValueError("value block not terminated by CRLF")
            cas = int(parts[4]) if len(parts) == 5 else None
            self._items[parts[1]] = Item(bytes(self._buf[self._pos : end]), int(parts[2]), cas)
            self._pos = end + 2

    def read_stats(self) -> dict[str, str] | None:
        """STAT lines up to END, as {name: value}."""
        while (line := self._line()) is not None:
            if line == b"END":
                stats, self._stats = self._stats, {}
                return stats
            tag, _, rest = line.decode(errors="replace").partition(" ")
            name, _, value = rest.partition(" ")
            if tag != "STAT" or not name:
                raise ValueError(f"unexpected reply {line[:80]!r}")
            self._stats[name] = value
        return None

    def skip_fence(self) -> bool | None:
        """Drop everything up to and including a VERSION line (a fence); None until seen."""
        while True:
            try:
                line = self._line()
            except ReplyError:
                continue  # an error for an earlier noreply command
            if line is None:
                return None
            if line.startswith(b"VERSION"):
                return True

    def read(self, shape: str) -> Any:
        if shape == VALUES:
            return self.read_values()
        return self.read_stats() if shape == STATS else self.read_line()


def decode_reply(command: Command, reply: Any) -> Any:
    """The command's result; ValueError for a reply that does not fit the command."""
    if command.reply == VALUES and not reply.keys() <= command.keys:
        raise ValueError("reply holds a key that was not asked for")
    return command.decode(reply)


# -- I/O ---------------------------------------------------------------------------------------


class _Conn:
    """One blocking connection and its reader. `fence`: a noreply command went out last."""

    def __init__(self, server: str, timeout: float) -> None:
        host, port, _ = parse_server(server)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = ReplyReader()
        self.fence = False

    def send(self, command: Command, deadline: float) -> None:
        fenced = self.fence and command.reply != NONE
        payload = FENCE + command.payload if fenced else command.payload
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        self.sock.sendall(payload)

    def receive(self, command: Command, deadline: float) -> Any:
        if command.reply == NONE:
            self.fence = True
            return command.decode(None)
        while self.fence and self.reader.skip_fence() is None:
            self._fill(deadline)
        self.fence = False
        while (reply := self.reader.read(command.reply)) is None:
            self._fill(deadline)
        return decode_reply(command, reply)

    def _fill(self, deadline: float) -> None:
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        data = self.sock.recv(READ_BYTES)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.reader.feed(data)


class _AsyncConn:
    """One asyncio connection and its reader; `fence` as in _Conn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream, self.writer, self.reader, self.fence = reader, writer, ReplyReader(), False

    @classmethod
    async def open(cls, server: str) -> _AsyncConn:
        host, port, _ = parse_server(server)
        return cls(*await asyncio.open_connection(host, port))

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, command: Command) -> Any:
        fenced = self.fence and command.reply != NONE
        self.writer.write(FENCE + command.payload if fenced else command.payload)
        await self.writer.drain()
        if command.reply == NONE:
            self.fence = True
            return command.decode(None)
        while self.fence and self.reader.skip_fence() is None:
            await self._fill()
        self.fence = False
        while (reply := self.reader.read(command.reply)) is None:
            await self._fill()
        return decode_reply(command, reply)

    async def _fill(self) -> None:
        data = await self.stream.read(READ_BYTES)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.reader.feed(data)


# What makes a call a failure: OSError (TimeoutError and ConnectionError included) and the
# ValueError of a reply that breaks the protocol.
_FAILURES = (OSError, ValueError)


def _failure(server: str, exc: BaseException) -> NetworkError:
    kind = ProtocolError if isinstance(exc, ValueError) else NetworkError
    message = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
    return kind(server, message)


VERSION = Command(b"version\r\n", LINE, _version)
Servers = Iterable[ServerSpec]
OnDown = Literal["fail", "remap"]


class _Pool:
    """What both clients share: the router, idle connections per server, the timeout."""

    def __init__(
        self,
        servers: Servers,
        timeout: float,
        failure_threshold: int,
        retry_backoff: tuple[float, float],
        on_down: OnDown,
        clock: Callable[[], float],
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.router = Router(servers, failure_threshold, retry_backoff, on_down, clock)
        self.timeout = timeout
        self._idle: dict[str, list[Any]] = {s: [] for s in self.router.ring.servers}

    @property
    def servers(self) -> tuple[str, ...]:
        """Every server address ("host:port"), in the order given."""
        return self.router.ring.servers

    @property
    def down_servers(self) -> frozenset[str]:
        """The servers marked down now."""
        return self.router.down

    def _route(self, key: bytes) -> str:
        server = self.router.route(key)
        if server is None:
            raise ServerDown(self.router.ring.get_server(key), "marked down")
        return server

    def _take(self, server: str) -> Any:
        try:
            return self._idle[server].pop()
        except IndexError:
            return None

    def _give(self, server: str, conn: Any, command: Command) -> None:
        idle = self._idle[server]
        if len(idle) < MAX_IDLE_PER_SERVER:
            idle.append(conn)
        else:
            _close(conn)
        if command.reply != NONE:
            self.router.succeeded(server)

    def _broken(self, server: str, conn: Any, exc: BaseException) -> NetworkError:
        """Close `conn` (and the idle ones: they likely broke too); count the failure."""
        for other in [conn, *self._drain(server)]:
            _close(other)
        self.router.failed(server)
        return _failure(server, exc)

    def _drain(self, server: str) -> list[Any]:
        idle, self._idle[server] = self._idle[server], []
        return idle

    def _plan_many(
        self, keys: Iterable[Key], cas: bool
    ) -> tuple[dict[bytes, list[Key]], dict[str, Command], list[CacheError]]:
        """get_many's requests per server, and ServerDown for keys that must fail fast."""
        wanted: dict[bytes, list[Key]] = {}
        for key in keys:
            wanted.setdefault(encode_key(key), []).append(key)
        groups: dict[str, list[bytes]] = {}
        errors: list[CacheError] = []
        for wire in wanted:
            try:
                groups.setdefault(self._route(wire), []).append(wire)
            except ServerDown as exc:
                errors.append(exc)
        return wanted, {s: cmd_retrieve(ks, cas) for s, ks in groups.items()}, errors

    def _plan_all(self) -> tuple[list[str], list[CacheError]]:
        down = self.router.down
        errors: list[CacheError] = [ServerDown(s, "marked down") for s in down]
        return [s for s in self.servers if s not in down], errors


def _close(conn: Any) -> None:
    if isinstance(conn, _Conn):
        conn.sock.close()
    elif conn is not None:
        conn.close()


def _merge(
    wanted: dict[bytes, list[Key]], results: dict[str, Any], errors: list[CacheError]
) -> dict[Key, Item]:
    found = {
        key: item for items in results.values() for w, item in items.items() for key in wanted[w]
    }
    if errors:
        first = errors[0]
        if isinstance(first, NetworkError):
            first.partial = found
        raise first
    return found


class Client(_Pool):
    """Blocking memcached client over a ketama pool; thread-safe (one connection per call).

    `servers`: "host[:port]" strings or (host, port[, weight]) tuples. `timeout` bounds each
    call. Health and `on_down` are described in the module docstring; `clock` (monotonic
    seconds) times the probe backoff. Keys are bytes or str (UTF-8), values bytes.
    """

    def __init__(
        self,
        servers: Servers,
        *,
        timeout: float = 1.0,
        failure_threshold: int = 3,
        retry_backoff: tuple[float, float] = (0.5, 30.0),
        on_down: OnDown = "fail",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(servers, timeout, failure_threshold, retry_backoff, on_down, clock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close idle connections (the client stays usable and reconnects on demand)."""
        for server in self.servers:
            for conn in self._drain(server):
                _close(conn)

    # -- execution --

    def _probe(self) -> None:
        for server in self.router.due_probes():
            deadline = time.monotonic() + self.timeout
            try:
                conn = _Conn(server, self.timeout)
                try:
                    conn.send(VERSION, deadline)
                    conn.receive(VERSION, deadline)
                finally:
                    conn.sock.close()
            except (*_FAILURES, ReplyError):
                self.router.failed(server)
            else:
                for old in self._drain(server):
                    _close(old)
                self.router.succeeded(server)

    def _start(self, server: str, command: Command, deadline: float) -> _Conn:
        conn = None
        try:
            conn = self._take(server) or _Conn(server, max(deadline - time.monotonic(), 1e-3))
            conn.send(command, deadline)
            return conn
        except _FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:  # interrupted: the reply may still come, so drop the link
            _close(conn)
            raise

    def _finish(self, server: str, conn: _Conn, command: Command, deadline: float) -> Any:
        try:
            result = conn.receive(command, deadline)
        except ReplyError:
            self._give(server, conn, command)
            raise
        except _FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:
            _close(conn)
            raise
        self._give(server, conn, command)
        return result

    def _run(self, command: Command) -> Any:
        self._probe()
        assert command.key is not None
        server = self._route(command.key)
        deadline = time.monotonic() + self.timeout
        return self._finish(server, self._start(server, command, deadline), command, deadline)

    def _fan_out(self, commands: dict[str, Command]) -> tuple[dict[str, Any], list[CacheError]]:
        """Write every request, then read every reply: one round trip for all servers."""
        deadline = time.monotonic() + self.timeout
        started: dict[str, _Conn] = {}
        results: dict[str, Any] = {}
        errors: list[CacheError] = []
        for server, command in commands.items():
            try:
                started[server] = self._start(server, command, deadline)
            except CacheError as exc:
                errors.append(exc)
        for server, conn in started.items():
            try:
                results[server] = self._finish(server, conn, commands[server], deadline)
            except CacheError as exc:
                errors.append(exc)
        return results, errors

    def _all(self, command: Command) -> tuple[dict[str, Any], list[CacheError]]:
        self._probe()
        servers, errors = self._plan_all()
        results, failed = self._fan_out(dict.fromkeys(servers, command))
        return results, errors + failed

    # -- commands --

    def get(self, key: Key) -> Item | None:
        """The key's Item (cas None), or None on a miss."""
        return self._run(cmd_get(key, False))

    def gets(self, key: Key) -> Item | None:
        """The key's Item with its CAS token, or None on a miss."""
        return self._run(cmd_get(key, True))

    def gat(self, key: Key, exptime: int) -> Item | None:
        """Get and touch: the key's Item, its expiry reset to `exptime`; None on a miss."""
        return self._run(cmd_get(key, False, exptime))

    def get_many(self, keys: Iterable[Key], *, cas: bool = False) -> dict[Key, Item]:
        """{key: Item} of the hits; one request per server. If a server is down or fails,
        its error is raised after the others answered, their hits in `error.partial`."""
        self._probe()
        wanted, commands, errors = self._plan_many(keys, cas)
        results, failed = self._fan_out(commands)
        return _merge(wanted, results, errors + failed)

    def set(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool:  # fmt: skip
        """Store unconditionally; True once stored (always True with noreply)."""
        return self._run(cmd_store(b"set", key, value, flags, exptime, noreply))

    def add(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool:  # fmt: skip
        """Store only if the key is absent; False if it exists."""
        return self._run(cmd_store(b"add", key, value, flags, exptime, noreply))

    def replace(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                noreply: bool = False) -> bool:  # fmt: skip
        """Store only if the key exists; False if it is absent."""
        return self._run(cmd_store(b"replace", key, value, flags, exptime, noreply))

    def append(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """Append to an existing value (flags and expiry kept); False if absent."""
        return self._run(cmd_store(b"append", key, value, 0, 0, noreply))

    def prepend(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """Prepend to an existing value (flags and expiry kept); False if absent."""
        return self._run(cmd_store(b"prepend", key, value, 0, 0, noreply))

    def cas(self, key: Key, value: bytes, cas: int, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool | None:  # fmt: skip
        """Store if the CAS token still matches: True stored, False changed since, None absent."""
        return self._run(cmd_store(b"cas", key, value, flags, exptime, noreply, cas))

    def delete(self, key: Key, *, noreply: bool = False) -> bool:
        """True if the key was deleted, False if it was absent."""
        return self._run(cmd_keyed(b"delete", key, [], noreply, _DELETED))

    def incr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """Add to a decimal value (wraps at 2**64); the new value, or None if absent."""
        return self._run(cmd_keyed(b"incr", key, [_uint("delta", delta, 64)], noreply, _counter))

    def decr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """Subtract from a decimal value (stops at 0); the new value, or None if absent."""
        return self._run(cmd_keyed(b"decr", key, [_uint("delta", delta, 64)], noreply, _counter))

    def touch(self, key: Key, exptime: int, *, noreply: bool = False) -> bool:
        """Reset the key's expiry; False if absent."""
        return self._run(cmd_keyed(b"touch", key, [_int("exptime", exptime)], noreply, _TOUCHED))

    def flush_all(self, delay: int = 0, *, noreply: bool = False) -> None:
        """Invalidate every item on every server (after `delay` seconds). Raises the first
        error (ServerDown for a down server) after trying every server."""
        _, errors = self._all(cmd_flush(delay, noreply))
        if errors:
            raise errors[0]

    def stats(self, *args: str) -> dict[str, dict[str, str]]:
        """`stats [args]` of every server that answers (down or failing ones are left out)."""
        return self._all(cmd_stats(args))[0]

    def version(self) -> dict[str, str]:
        """The version string of every server that answers."""
        return self._all(VERSION)[0]


class AsyncClient(_Pool):
    """asyncio memcached client: the API and rules of Client, every call a coroutine.

    Calls may run concurrently (each borrows its own connection); a multi-get or a per-server
    command asks all its servers at once. Cancelling a call closes its connection.
    """

    def __init__(
        self,
        servers: Servers,
        *,
        timeout: float = 1.0,
        failure_threshold: int = 3,
        retry_backoff: tuple[float, float] = (0.5, 30.0),
        on_down: OnDown = "fail",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(servers, timeout, failure_threshold, retry_backoff, on_down, clock)
        self._probes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close idle connections and stop running probes (the client stays usable)."""
        for task in list(self._probes):
            task.cancel()
        for server in self.servers:
            for conn in self._drain(server):
                conn.close()
                with contextlib.suppress(OSError):
                    await conn.writer.wait_closed()

    # -- execution --

    def _probe(self) -> None:
        """Start the due probes as tasks: no call waits for a probe."""
        for server in self.router.due_probes():
            task = asyncio.get_running_loop().create_task(self._probe_one(server))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _probe_one(self, server: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _AsyncConn.open(server)
                try:
                    await conn.exchange(VERSION)
                finally:
                    conn.close()
        except (*_FAILURES, ReplyError):
            self.router.failed(server)
        else:
            for old in self._drain(server):
                old.close()
            self.router.succeeded(server)

    async def _exchange(self, server: str, command: Command) -> Any:
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._take(server) or await _AsyncConn.open(server)
                result = await conn.exchange(command)
        except ReplyError:
            self._give(server, conn, command)
            raise
        except _FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:  # cancelled: the reply may still come, so drop the link
            _close(conn)
            raise
        self._give(server, conn, command)
        return result

    async def _run(self, command: Command) -> Any:
        self._probe()
        assert command.key is not None
        return await self._exchange(self._route(command.key), command)

    async def _fan_out(
        self, commands: dict[str, Command]
    ) -> tuple[dict[str, Any], list[CacheError]]:
        servers = list(commands)
        replies = await asyncio.gather(
            *(self._exchange(s, commands[s]) for s in servers), return_exceptions=True
        )
        results: dict[str, Any] = {}
        errors: list[CacheError] = []
        for server, reply in zip(servers, replies, strict=True):
            if isinstance(reply, CacheError):
                errors.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                results[server] = reply
        return results, errors

    async def _all(self, command: Command) -> tuple[dict[str, Any], list[CacheError]]:
        self._probe()
        servers, errors = self._plan_all()
        results, failed = await self._fan_out(dict.fromkeys(servers, command))
        return results, errors + failed

    # -- commands: see Client for each contract --

    async def get(self, key: Key) -> Item | None:
        """See Client.get."""
        return await self._run(cmd_get(key, False))

    async def gets(self, key: Key) -> Item | None:
        """See Client.gets."""
        return await self._run(cmd_get(key, True))

    async def gat(self, key: Key, exptime: int) -> Item | None:
        """See Client.gat."""
        return await self._run(cmd_get(key, False, exptime))

    async def get_many(self, keys: Iterable[Key], *, cas: bool = False) -> dict[Key, Item]:
        """See Client.get_many; the servers are asked concurrently."""
        self._probe()
        wanted, commands, errors = self._plan_many(keys, cas)
        results, failed = await self._fan_out(commands)
        return _merge(wanted, results, errors + failed)

    async def set(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool:  # fmt: skip
        """See Client.set."""
        return await self._run(cmd_store(b"set", key, value, flags, exptime, noreply))

    async def add(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool:  # fmt: skip
        """See Client.add."""
        return await self._run(cmd_store(b"add", key, value, flags, exptime, noreply))

    async def replace(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                      noreply: bool = False) -> bool:  # fmt: skip
        """See Client.replace."""
        return await self._run(cmd_store(b"replace", key, value, flags, exptime, noreply))

    async def append(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """See Client.append."""
        return await self._run(cmd_store(b"append", key, value, 0, 0, noreply))

    async def prepend(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """See Client.prepend."""
        return await self._run(cmd_store(b"prepend", key, value, 0, 0, noreply))

    async def cas(self, key: Key, value: bytes, cas: int, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool | None:  # fmt: skip
        """See Client.cas."""
        return await self._run(cmd_store(b"cas", key, value, flags, exptime, noreply, cas))

    async def delete(self, key: Key, *, noreply: bool = False) -> bool:
        """See Client.delete."""
        return await self._run(cmd_keyed(b"delete", key, [], noreply, _DELETED))

    async def incr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """See Client.incr."""
        delta_arg = [_uint("delta", delta, 64)]
        return await self._run(cmd_keyed(b"incr", key, delta_arg, noreply, _counter))

    async def decr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """See Client.decr."""
        delta_arg = [_uint("delta", delta, 64)]
        return await self._run(cmd_keyed(b"decr", key, delta_arg, noreply, _counter))

    async def touch(self, key: Key, exptime: int, *, noreply: bool = False) -> bool:
        """See Client.touch."""
        exptime_arg = [_int("exptime", exptime)]
        return await self._run(cmd_keyed(b"touch", key, exptime_arg, noreply, _TOUCHED))

    async def flush_all(self, delay: int = 0, *, noreply: bool = False) -> None:
        """See Client.flush_all."""
        _, errors = await self._all(cmd_flush(delay, noreply))
        if errors:
            raise errors[0]

    async def stats(self, *args: str) -> dict[str, dict[str, str]]:
        """See Client.stats."""
        return (await self._all(cmd_stats(args)))[0]

    async def version(self) -> dict[str, str]:
        """See Client.version."""
        return (await self._all(VERSION))[0]
