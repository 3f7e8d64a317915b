"""What the proxy does with one client request, sans-I/O: a parsed request in, a plan out.

Requests come from kvcache/protocol.py's `RequestParser` (framing, storage headers, value
size, `ms` flags: the same limits and error strings as memcached 1.6.18). `plan()` makes the
checks memcached makes on the other commands *before* they touch a key (token counts, key
length, numbers), answering malformed input locally with memcached's own error lines; what
passes is forwarded. Meta flag errors other than the key's are left to the backend, which
answers them exactly (the key is still routed: with `b`, by its decoded bytes).

Plans:
- `Forward`: one keyed command for the key's backend (reads) or every replica (writes).
- `Retrieve`: get/gets/gat/gats, split per backend and merged back in the client's order.
- `Broadcast`: flush_all, to every backend.
- `Local`: answered by the proxy (errors, version, verbosity, mn), maybe with a side effect.
- `Admin`: stats, answered from the proxy's own figures.
- `QUIT` / `CLOSE_NOW`: close after the replies before it / at once.

Quiet commands (meta `q`, classic `noreply`) are forwarded as they are and followed by `mn`,
so the backend connection stays in step whether or not the backend answers; classic noreply
replies are then dropped, meta quiet ones passed on (`q` only hides the nominal reply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvcache import replies
from kvcache.metaflags import decode_key, encode_key, parse_meta_flags
from kvcache.numbers import strtol32, strtoul32, strtoull
from kvcache.protocol import MAX_KEY_BYTES, Close, Reject, Request, Store, has_noreply, ntokens
from kvcache.proxy_wire import FENCE, FENCED, LINE, META

CRLF = b"\r\n"
# Errors the proxy produces itself. mcrouter answers "SERVER_ERROR unavailable" for a
# destination it marked down (TKO), "SERVER_ERROR timeout" and "SERVER_ERROR connection
# error"; twemproxy "SERVER_ERROR <strerror>". Ours follow mcrouter, prefixed with "backend"
# so a client can tell them from a backend's own SERVER_ERROR (out of memory...).
UNAVAILABLE = b"SERVER_ERROR backend unavailable\r\n"
TIMEOUT = b"SERVER_ERROR backend timeout\r\n"
CONNECTION_ERROR = b"SERVER_ERROR backend connection error\r\n"
PROTOCOL_ERROR = b"SERVER_ERROR backend protocol error\r\n"
BUSY = b"SERVER_ERROR backend busy\r\n"
ERROR = replies.ERROR
BAD_FORMAT = replies.line(replies.BAD_FORMAT)


@dataclass(slots=True)
class Forward:
    """A keyed command. `key` routes it (decoded bytes for meta `b` keys); `payload` is what
    the backend gets (already fenced when quiet); `write`: to every replica, else read from
    the first healthy one. `silent`: the client gets nothing (classic noreply). `compare`:
    the command carries a CAS compare; it runs on the first replica only and, when it
    succeeds, `compare` (the same change without the compare) goes to the other replicas."""

    name: bytes
    key: bytes
    payload: bytes
    shape: str
    write: bool
    silent: bool = False
    compare: bytes | None = None
    compare_shape: str = LINE


@dataclass(slots=True)
class Retrieve:
    """get/gets/gat/gats of `keys` (in the client's order, repeats kept)."""

    verb: bytes
    exptime: bytes | None
    keys: list[bytes]

    def payload(self, keys: list[bytes]) -> bytes:
        if self.exptime is None:
            if len(keys) == 1:  # most gets
                return self.verb + b" " + keys[0] + CRLF
            return self.verb + b" " + b" ".join(keys) + CRLF
        return b" ".join([self.verb, self.exptime, *keys]) + CRLF


@dataclass(slots=True)
class Broadcast:
    """A command for every backend (flush_all); OK only if every backend said OK."""

    payload: bytes
    shape: str
    silent: bool


@dataclass(slots=True)
class Local:
    """Answered by the proxy; `also` is a write sent for its side effect (reply ignored)."""

    reply: bytes
    also: Forward | None = None


@dataclass(slots=True)
class Admin:
    tokens: list[bytes]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


QUIT = _Marker("QUIT")
CLOSE_NOW = _Marker("CLOSE_NOW")
Plan = Forward | Retrieve | Broadcast | Local | Admin | _Marker

VERSION_LINE = replies.line(f"VERSION {replies.VERSION}-proxy")


def compare_succeeded(reply: bytes, quiet: bool) -> bool:
    """Whether a compare command (cas, meta with C) changed the item: STORED, HD or VA; a
    quiet meta command says nothing when it succeeds."""
    if quiet:
        return reply == b""
    return reply == replies.STORED or reply.startswith((b"HD", b"VA"))


def _unless(noreply: bool, text: str) -> Local:
    return Local(b"" if noreply else replies.line(text))


def _fenced(payload: bytes, quiet: bool) -> tuple[bytes, str | None]:
    return (payload + FENCE, FENCED) if quiet else (payload, None)


# -- storage ---------------------------------------------------------------------------------
def delete_quietly(key: bytes) -> Forward:
    """md by base64 key (any bytes route and travel), quiet and fenced."""
    payload = b"md " + encode_key(key) + b" b q\r\n" + FENCE
    return Forward(b"md", key, payload, FENCED, write=True, silent=True)


def _classic_line(command: bytes, key: bytes, flags: int, exptime: int, size: int,
                  cas: int | None, noreply: bool) -> bytes:
    parts = [command, key, b"%d" % flags, b"%d" % exptime, b"%d" % size]
    if cas is not None:
        parts.append(b"%d" % cas)
    if noreply:
        parts.append(b"noreply")
    return b" ".join(parts) + CRLF


def _plan_store(request: Store) -> Plan:
    if request.meta is not None:
        return _plan_ms(request)
    name, key, noreply = request.command, request.key, request.noreply
    if request.too_large:
        # memcached drops the old value of a set it refuses for size; so do the backends.
        also = delete_quietly(key) if name == b"set" else None
        return Local(b"" if noreply else replies.line(replies.TOO_LARGE), also)
    data = request.data
    if data is None:
        return _unless(noreply, replies.BAD_DATA_CHUNK)
    block = data + CRLF
    if name == b"cas":
        # Sent with a reply even under noreply: the other replicas need to know the outcome.
        line = _classic_line(name, key, request.flags, request.exptime, len(data),
                             request.cas, False)
        then = _classic_line(b"set", key, request.flags, request.exptime, len(data), None,
                             False)
        return Forward(name, key, line + block, LINE, True, noreply, then + block, LINE)
    line = _classic_line(name, key, request.flags, request.exptime, len(data), None, noreply)
    payload, shape = _fenced(line + block, noreply)
    return Forward(name, key, payload, shape or LINE, True, noreply)


def _plan_ms(request: Store) -> Plan:
    meta = request.meta
    assert meta is not None
    if request.too_large:
        return Local(replies.line(replies.TOO_LARGE), delete_quietly(request.key))
    data = request.data
    if data is None:
        return Local(replies.line(replies.BAD_DATA_CHUNK))
    wire_key = encode_key(meta.key) if meta.key_binary else meta.key
    head = b"ms " + wire_key + b" %d" % len(data)

    def line(tokens: list[bytes]) -> bytes:
        return head + b"".join(b" " + t for t in tokens) + CRLF + data + CRLF

    payload, shape = _fenced(line(meta.tokens), meta.no_reply)
    compare = None
    if meta.has_cas:
        compare, _ = _fenced(line([t for t in meta.tokens if t[0] != 0x43]), meta.no_reply)
    return Forward(b"ms", request.key, payload, shape or META, True, False, compare,
                   shape or META)


# -- commands without a data block -----------------------------------------------------------
def _plan_retrieve(tokens: list[bytes]) -> Plan:
    verb = tokens[0]
    exptime = None
    first = 1
    if verb in (b"gat", b"gats"):
        parsed = strtol32(tokens[1])
        if parsed is None:
            return Local(replies.line(replies.INVALID_EXPTIME))
        exptime = b"%d" % parsed
        first = 2
    keys = tokens[first:]
    if any(len(key) > MAX_KEY_BYTES for key in keys):
        return Local(BAD_FORMAT)
    if not keys:
        return Local(replies.END)
    return Retrieve(b"get" if verb == b"bget" else verb, exptime, keys)


def _keyed(name: bytes, key: bytes, args: list[bytes], noreply: bool) -> Forward:
    line = b" ".join([name, key, *args, *([b"noreply"] if noreply else [])]) + CRLF
    payload, shape = _fenced(line, noreply)
    return Forward(name, key, payload, shape or LINE, True, noreply)


def _plan_delete(tokens: list[bytes]) -> Plan:
    count = ntokens(tokens)
    noreply = False
    if count > 3:
        hold_is_zero = tokens[2] == b"0"
        noreply = has_noreply(tokens)
        valid = (count == 4 and (hold_is_zero or noreply)) or (
            count == 5 and hold_is_zero and noreply)
        if not valid:
            return _unless(noreply, replies.DELETE_USAGE)
    if len(tokens[1]) > MAX_KEY_BYTES:
        return _unless(noreply, replies.BAD_FORMAT)
    return _keyed(b"delete", tokens[1], [], noreply)


def _plan_arithmetic(tokens: list[bytes]) -> Plan:
    noreply = has_noreply(tokens)
    if len(tokens[1]) > MAX_KEY_BYTES:
        return _unless(noreply, replies.BAD_FORMAT)
    delta = strtoull(tokens[2])
    if delta is None:
        return _unless(noreply, replies.INVALID_DELTA)
    return _keyed(tokens[0], tokens[1], [b"%d" % delta], noreply)


def _plan_touch(tokens: list[bytes]) -> Plan:
    noreply = has_noreply(tokens)
    if len(tokens[1]) > MAX_KEY_BYTES:
        return _unless(noreply, replies.BAD_FORMAT)
    exptime = strtol32(tokens[2])
    if exptime is None:
        return _unless(noreply, replies.INVALID_EXPTIME)
    return _keyed(b"touch", tokens[1], [b"%d" % exptime], noreply)


def _plan_flush_all(tokens: list[bytes]) -> Plan:
    noreply = has_noreply(tokens)
    args: list[bytes] = []
    if ntokens(tokens) != (3 if noreply else 2):
        delay = strtol32(tokens[1])
        if delay is None:
            return _unless(noreply, replies.INVALID_EXPTIME)
        args.append(b"%d" % delay)
    line = b" ".join([b"flush_all", *args, *([b"noreply"] if noreply else [])]) + CRLF
    payload, shape = _fenced(line, noreply)
    return Broadcast(payload, shape or LINE, noreply)


def _plan_verbosity(tokens: list[bytes]) -> Plan:
    noreply = has_noreply(tokens)
    if strtoul32(tokens[1]) is None:
        return _unless(noreply, replies.BAD_FORMAT)
    return Local(b"" if noreply else replies.OK)  # the proxy logs as its --log-level says


def _plan_meta(tokens: list[bytes]) -> Plan:
    """mg md ma me: route by key (decoded with `b`); the backend checks the flags."""
    name = tokens[0]
    count = ntokens(tokens)
    if name == b"mn":
        return Local(replies.META_NOOP_LINE)
    if name == b"me":
        if count < 3 or len(tokens[1]) > MAX_KEY_BYTES:
            return Local(BAD_FORMAT)
        key = tokens[1]
        if count >= 4 and tokens[2] == b"b":
            decoded = decode_key(key)
            if decoded is None:
                return Local(BAD_FORMAT)
            key = decoded
        return Forward(name, key, b" ".join(tokens) + CRLF, META, write=False)
    if name not in (b"mg", b"md", b"ma"):
        return Local(ERROR)
    if count < 3:
        return Local(ERROR)
    if len(tokens[1]) > MAX_KEY_BYTES:
        return Local(BAD_FORMAT)
    flags = parse_meta_flags(tokens[1], tokens[2:])
    key = flags.key if flags.error is None else tokens[1]
    letters = {t[0] for t in tokens[2:]}
    quiet = 0x71 in letters  # q
    payload, shape = _fenced(b" ".join(tokens) + CRLF, quiet)
    compare = None
    if name != b"mg" and 0x43 in letters and flags.error is None:  # C
        rest = [t for t in tokens if t[0] != 0x43]
        compare, _ = _fenced(b" ".join(rest) + CRLF, quiet)
    return Forward(name, key, payload, shape or META, name != b"mg", False, compare,
                   shape or META)


# -- dispatch ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Command:
    """A classic command: token counts include memcached's terminal token (`get k` has 3)."""

    handler: Callable[[list[bytes]], Plan]
    min_tokens: int = 2
    max_tokens: int = 1 << 30


COMMANDS: dict[bytes, Command] = {
    b"get": Command(_plan_retrieve, 3),
    b"bget": Command(_plan_retrieve, 3),
    b"gets": Command(_plan_retrieve, 3),
    b"gat": Command(_plan_retrieve, 3),
    b"gats": Command(_plan_retrieve, 3),
    b"delete": Command(_plan_delete, 3, 5),
    b"incr": Command(_plan_arithmetic, 4, 5),
    b"decr": Command(_plan_arithmetic, 4, 5),
    b"touch": Command(_plan_touch, 4, 5),
    b"flush_all": Command(_plan_flush_all, 2, 4),
    b"verbosity": Command(_plan_verbosity, 3, 4),
    b"version": Command(lambda _tokens: Local(VERSION_LINE)),
    b"quit": Command(lambda _tokens: QUIT),
    b"stats": Command(Admin),
}
_FAMILIES = b"gsacidt"


def plan(request: Request) -> Plan:
    """The plan for one request from the parser (see the module docstring)."""
    if type(request) is list:
        if len(request) == 2 and request[0] == b"get" and len(request[1]) <= MAX_KEY_BYTES:
            return Retrieve(b"get", None, request[1:])  # the commonest: as _plan_retrieve
        return _plan_tokens(request)
    if isinstance(request, Store):
        return _plan_store(request)
    if isinstance(request, Reject):
        return Local(request.reply)
    assert isinstance(request, Close)
    return CLOSE_NOW


def _plan_tokens(tokens: list[bytes]) -> Plan:
    """Dispatch as memcached's process_command_ascii does (see kvcache/commands.py)."""
    if not tokens or len(tokens[0]) < 2:
        return Local(ERROR)
    name = tokens[0]
    if name[0] == 0x6D and len(name) == 2:  # m?
        return _plan_meta(tokens)
    command = COMMANDS.get(name)
    if command is None:
        # Admin commands of a single server (shutdown, slabs, lru_crawler...) are not
        # proxied: like any unknown command they get ERROR.
        if name[0] not in _FAMILIES and tokens[ntokens(tokens) - 2].startswith(b"HTTP/"):
            return CLOSE_NOW
        return Local(ERROR)
    count = ntokens(tokens)
    if count < command.min_tokens or count > command.max_tokens:
        return Local(ERROR)
    return command.handler(tokens)
