"""The memcached text protocol as the clients speak it, sans-I/O: commands and replies.

- Commands are data: the `cmd_*` builders validate arguments and return a `Command` (request
  bytes, reply shape, decoder). Both clients (kvcache/client_sync.py, client_async.py) build
  every request here, so an argument is checked once, before any I/O.
- `ReplyReader` turns one connection's bytes into whole replies, with named limits.
- `Exchange` is one connection's conversation: the bytes to write for a command and its
  result once enough bytes came (`NEED_DATA` until then), including the noreply fence.

Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from kvcache.ring import Key

MAX_KEY_BYTES: Final = 250
MAX_LINE_BYTES: Final = 8192  # longest reply line accepted (VALUE header, STAT line, error)
MAX_VALUE_BYTES: Final = 128 * 1024 * 1024  # largest value accepted in a reply
FENCE: Final = b"version\r\n"


class Item(NamedTuple):
    """A stored value: its bytes, its client flags, and its CAS token (gets, get_many(cas))."""

    value: bytes
    flags: int
    cas: int | None = None


class CacheError(Exception):
    """Base of every error the clients raise (argument errors raise ValueError/TypeError)."""


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


# -- commands --------------------------------------------------------------------------------

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


VERSION: Final = Command(b"version\r\n", LINE, _version)


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


def _keyed(verb: bytes, key: Key, args: list[bytes], noreply: bool, decode: Any) -> Command:
    """delete/incr/decr/touch: `verb key args... [noreply]`, one reply line."""
    wire = encode_key(key)
    payload = b" ".join([verb, wire, *args, *([b"noreply"] if noreply else [])]) + b"\r\n"
    if noreply:
        return Command(payload, NONE, _noreply(None if decode is _counter else True), wire)
    return Command(payload, LINE, decode, wire)


def cmd_delete(key: Key, noreply: bool) -> Command:
    """delete; decodes to True (deleted) or False (absent)."""
    return _keyed(b"delete", key, [], noreply, _DELETED)


def cmd_delete_batch(keys: Sequence[bytes]) -> Command:
    """`delete <key> noreply` for each wire key, pipelined in one request; no reply."""
    payload = b"".join(b"delete " + encode_key(k) + b" noreply\r\n" for k in keys)
    return Command(payload, NONE, _noreply(None))


def cmd_arith(verb: bytes, key: Key, delta: int, noreply: bool) -> Command:
    """incr/decr by a 64-bit delta; decodes to the new value or None (absent)."""
    return _keyed(verb, key, [_uint("delta", delta, 64)], noreply, _counter)


def cmd_touch(key: Key, exptime: int, noreply: bool) -> Command:
    """touch; decodes to True (touched) or False (absent)."""
    return _keyed(b"touch", key, [_int("exptime", exptime)], noreply, _TOUCHED)


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


# -- replies ---------------------------------------------------------------------------------


class ReplyBuffer:
    """The unread bytes of one connection and the framing both reply readers share (the
    client's ReplyReader and the proxy's ReplyFramer): lines up to `max_line`, value blocks
    up to `max_value`; broken framing raises ValueError (the caller drops the link)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_value: int = MAX_VALUE_BYTES):
        self._buf = bytearray()
        self._pos = 0
        self.max_line = max_line
        self.max_value = max_value

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def _raw_line(self) -> bytes | None:
        """The next line without its CRLF (the position moves past it), or None."""
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > self.max_line:
                raise ValueError("reply line too long")
            return None
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def _block_end(self, size_token: bytes) -> int | None:
        """Where the data block of `size_token` bytes at the position ends (before its
        CRLF), or None until the whole block and its CRLF arrived."""
        if not size_token.isdigit():
            raise ValueError(f"bad value size {size_token[:20]!r}")
        size = int(size_token)
        if size > self.max_value:
            raise ValueError(f"value of {size} bytes is over the limit")
        end = self._pos + size
        if len(self._buf) < end + 2:
            return None
        if self._buf[end : end + 2] != b"\r\n":
            raise ValueError("value block not terminated by CRLF")
        return end


class ReplyReader(ReplyBuffer):
    """Bytes from one connection in, whole replies out: `feed(data)`, then `read_<shape>()`
    returns the reply or None until enough bytes came. Error replies raise ServerError or
    CommandError once consumed; broken framing raises ValueError (the caller drops the link)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_value: int = MAX_VALUE_BYTES):
        super().__init__(max_line, max_value)
        self._items: dict[bytes, Item] = {}
        self._stats: dict[str, str] = {}

    def _line(self) -> bytes | None:
        line = self._raw_line()
        if line is None:
            return None
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
            end = self._block_end(parts[3])
            if end is None:
                self._pos = start  # wait for the whole block; the header is parsed again
                return None
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


NEED_DATA: Final = object()
"""What `Exchange.result` returns until the reply is whole."""


class Exchange:
    """One connection's conversation, sans-I/O: `request(command)` is the bytes to write,
    `feed(data)` takes what the server sent, `result(command)` is the decoded reply (or
    NEED_DATA). One command at a time: its result is taken before the next request.

    The fence: noreply commands can not tell success, but a server may still answer one with
    an error (memcached 1.6 does for a line it can not parse). So after a noreply command the
    next request is preceded by `version`, and everything before its VERSION reply is dropped.
    Invariant: `fence` is True while a noreply command was the last one written.
    """

    def __init__(self) -> None:
        self.reader = ReplyReader()
        self.fence = False

    def request(self, command: Command) -> bytes:
        if self.fence and command.reply != NONE:
            return FENCE + command.payload
        return command.payload

    def feed(self, data: bytes) -> None:
        """Bytes read from the connection; b"" (the server closed it) raises ConnectionError."""
        if not data:
            raise ConnectionError("connection closed by the server")
        self.reader.feed(data)

    def result(self, command: Command) -> Any:
        """The command's result, NEED_DATA until its reply is whole. ReplyError for an error
        reply (the connection stays in sync), ValueError for a broken one."""
        if command.reply == NONE:
            self.fence = True
            return command.decode(None)
        if self.fence:
            if self.reader.skip_fence() is None:
                return NEED_DATA
            self.fence = False
        reply = self.reader.read(command.reply)
        return NEED_DATA if reply is None else decode_reply(command, reply)
