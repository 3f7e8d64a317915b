"""The memcached text protocol as a sans-I/O parser, pure-Python reference: the twin of
kvcache._mcproto (kvcache/twins.py picks one; tests/test_kvcache_mcproto.py proves them
equal). The memcached rules it shares with the rest of kvcache (numbers, meta flags, reply
texts, item sizes) come from the kvcache modules that own them.

`RequestParser.feed(data)` takes whatever arrived; `next_request()` returns the next request
or None when it needs more bytes. It never touches a socket, a clock or the cache.

A request is one of:
- `list[bytes]`: the tokens of a command line without a data block (get, delete, mg, ...),
  split on spaces only, as memcached splits them (a tab is part of a key);
- `Store`: a storage command (set add replace append prepend cas, and meta `ms`) with its
  data block, or with the reason it has none (too large: the block was swallowed);
- `Reject`: a storage command line refused before its data block, with the reply;
- `Close`: the stream cannot be resynchronised; the server closes without a reply.

Framing rules, each measured against memcached 1.6.18:
- A line ends at `\\n`; a `\\r` before it is dropped. A NUL ends the command early (memcached
  reads the line with strlen).
- More than LINE_WITHOUT_NEWLINE_BYTES buffered without a newline closes the connection
  unless the line starts with `get ` or `gets ` (memcached grows its buffer only for
  multi-gets; we bound those at MAX_MULTIGET_LINE_BYTES). memcached reads at most
  READ_BUFFER_BYTES at a time, so a longer non-get line is never seen whole: it closes too.
- After a storage line, exactly `<bytes>+2` bytes follow whatever they contain; if they do not
  end in `\\r\\n` the request is a bad data chunk (nothing stored) and parsing resumes after
  them, exactly where memcached resumes.
- A refused storage line (bad number, key too long, wrong token count) has no data block:
  the next line is read as a command. A value over the size limit is refused *after* its
  length is known: its block is swallowed and the connection stays in sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kvcache import replies
from kvcache.items import Mode, Outcome
from kvcache.latency import SAMPLE_MASK, CommandLatency
from kvcache.mcpipe_pure import LANE_JOIN_BYTES, pipeline
from kvcache.metaflags import MAX_META_TOKENS, MAX_OPAQUE_BYTES, MetaFlags, parse_meta_flags
from kvcache.numbers import strtol32, strtoul32, strtoull
from kvcache.slabs import item_ntotal, shared_classes

MAX_KEY_BYTES = 250  # KEY_MAX_LENGTH
MAX_TOKENS = 24  # memcached tokenises at most 23 words (+ a terminal token) at a time
LINE_WITHOUT_NEWLINE_BYTES = 2048
READ_BUFFER_BYTES = 16384
MAX_MULTIGET_LINE_BYTES = 4 * 1024 * 1024  # ours: memcached lets multi-get lines grow unbounded
MAX_LEADING_SPACES = 100
COLLECT_BLOCKS_OVER = 64 * 1024  # bigger data blocks are gathered piecewise, joined once
INT32_MAX = (1 << 31) - 1

CLASSIC_STORAGE = {b"set": 6, b"add": 6, b"replace": 6, b"append": 6, b"prepend": 6, b"cas": 7}
_GET_PREFIXES = (b"get ", b"gets ")


class Store:
    """A storage command and its data block.

    `data` is the value (without its CRLF) or None when there is none to store: `too_large`
    (refused for size, block swallowed) or a bad data chunk. `meta` carries the parsed flags
    of an `ms`. exptime is the wire value (signed 32-bit); the storage converts it. `size` is
    the value length the line announced (memcached counts a bad chunk's set by it).
    """

    __slots__ = ("command", "key", "flags", "exptime", "cas", "noreply", "data", "too_large",
                 "meta", "size")

    def __init__(
        self,
        command: bytes,
        key: bytes,
        flags: int,
        exptime: int,
        cas: int,
        noreply: bool,
        meta: MetaFlags | None = None,
    ) -> None:
        self.command = command
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.cas = cas
        self.noreply = noreply
        self.data: bytes | None = None
        self.too_large = False
        self.meta = meta
        self.size = 0


class Reject:
    """A command refused by the parser; `reply` is what to send (b"" under noreply)."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes) -> None:
        self.reply = reply


class Close:
    """Close the connection without a reply; `reason` is for the log."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Request = list[bytes] | Store | Reject | Close


def tokenize(line: bytes) -> list[bytes]:
    """Split a command line as memcached does: on spaces only, empty words dropped."""
    tokens = line.split(b" ")
    if b"" in tokens:
        tokens = [t for t in tokens if t]
    return tokens


def ntokens(tokens: list[bytes]) -> int:
    """memcached's token count for the line: words (at most 23) plus the terminal token."""
    count = len(tokens)
    return count + 1 if count < MAX_TOKENS else MAX_TOKENS


def has_noreply(tokens: list[bytes]) -> bool:
    """memcached's set_noreply_maybe: the last token (as it counts them) is `noreply`."""
    return tokens[ntokens(tokens) - 2] == b"noreply"


def _error(text: str, noreply: bool = False) -> Reject:
    return Reject(b"" if noreply else replies.line(text))


class RequestParser:
    """Turns one connection's byte stream into requests (see the module docstring)."""

    def __init__(self, item_size_max: int, max_multiget_line: int = MAX_MULTIGET_LINE_BYTES,
                 use_cas: bool = True):
        """`use_cas` False (-C): a value may be 8 bytes longer at the -I limit."""
        self.slabs = shared_classes(item_size_max)
        self.use_cas = use_cas
        # the fast lane's sets: values that fit whatever the key and flags (see `answer`)
        self.lane_value_max = item_size_max - item_ntotal(MAX_KEY_BYTES, 1, 0)
        self.max_multiget_line = max_multiget_line
        self._buf = b""
        self._pos = 0
        self._swallow = 0  # bytes still to discard
        self._pending: Store | None = None  # a storage request waiting for its block
        self._need = 0  # size of that block, CRLF included
        self._parts: list[bytes] | None = None  # pieces of a big block still incomplete
        self._parts_len = 0
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client."""
        if self._swallow and self._pos == len(self._buf):
            taken = min(self._swallow, len(data))
            self._swallow -= taken
            data = data[taken:]
        if self._parts is not None:
            # A big data block arriving in pieces: collect them, join once (not per piece).
            self._parts.append(data)
            self._parts_len += len(data)
            if self._parts_len >= self._need:
                self._buf = b"".join(self._parts)
                self._pos = 0
                self._parts = None
            return
        if self._pos == len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0
        if self._pending is not None and self._need > COLLECT_BLOCKS_OVER:
            if len(self._buf) < self._need:
                self._parts = [self._buf]
                self._parts_len = len(self._buf)
                self._buf = b""

    def buffered(self) -> int:
        """Bytes received but not yet turned into requests."""
        collected = self._parts_len if self._parts is not None else 0
        return len(self._buf) - self._pos + collected

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive."""
        while not self.closed:
            if self._swallow:
                taken = min(self._swallow, len(self._buf) - self._pos)
                self._swallow -= taken
                self._pos += taken
                if self._swallow:
                    return None
            if self._pending is not None:
                return self._take_block()
            buf = self._buf
            pos = self._pos
            end = buf.find(b"\n", pos)
            if end < 0:
                return self._check_partial_line()
            if end - pos >= READ_BUFFER_BYTES and not self._multiget_at(pos):
                return self._close("command line longer than the read buffer")
            self._pos = end + 1
            if end - pos > 1 and buf[end - 1] == 0x0D:
                end -= 1
            line = buf[pos:end]
            if b"\0" in line:
                line = line[: line.index(b"\0")]
            tokens = tokenize(line)
            if tokens and (tokens[0] in CLASSIC_STORAGE or tokens[0] == b"ms"):
                return self._storage(tokens)
            return tokens
        return None

    # -- framing -------------------------------------------------------------------------
    def _check_partial_line(self) -> Request | None:
        pending = len(self._buf) - self._pos
        if pending <= LINE_WITHOUT_NEWLINE_BYTES:
            return None
        if not self._multiget_at(self._pos):
            return self._close("no newline in the first 2048 bytes of a command")
        if pending > self.max_multiget_line:
            return self._close("multi-get line over the limit")
        return None

    def _multiget_at(self, pos: int) -> bool:
        head = self._buf[pos:pos + MAX_LEADING_SPACES + 8]
        stripped = head.lstrip(b" ")
        if len(head) - len(stripped) > MAX_LEADING_SPACES:
            return False
        return stripped.startswith(_GET_PREFIXES)

    def _close(self, reason: str) -> Close:
        self.closed = True
        self._buf = b""
        self._pos = 0
        return Close(reason)

    def _storage(self, tokens: list[bytes]) -> Request | None:
        request, size = storage_header(tokens)
        if type(request) is Reject:
            self._swallow = size
            return request
        return self._expect_block(request, size)  # type: ignore[arg-type]

    def _expect_block(self, request: Store, vlen: int) -> Request | None:
        """Wait for `vlen` bytes and CRLF, or swallow them if the item cannot be stored."""
        nflags = request.meta.client_flags if request.meta is not None else request.flags
        request.size = vlen
        if not self.slabs.fits(len(request.key), nflags, vlen, self.use_cas):
            request.too_large = True
            self._swallow = vlen + 2
            return request
        self._pending = request
        self._need = vlen + 2
        return self._take_block()

    def _take_block(self) -> Request | None:
        request = self._pending
        assert request is not None
        pos = self._pos
        need = self._need
        if len(self._buf) - pos < need:
            return None
        end = pos + need
        if self._buf[end - 2:end] == b"\r\n":
            request.data = self._buf[pos:end - 2]
        self._pos = end
        self._pending = None
        return request


# -- storage headers (shared with kvcache._mcproto, which handles only the plainest lines
# itself and hands every other one to storage_header) ----------------------------------------
def storage_header(tokens: list[bytes]) -> tuple[Store | Reject, int]:
    """The header of a storage line (`tokens[0]` is a classic storage word or `ms`).

    Returns `(Store, value length)` when a data block follows, or `(Reject, n)` when the
    line is refused and `n` bytes (0: none; the block of an `ms` with bad flags) are to be
    swallowed before the next command."""
    if tokens[0] == b"ms":
        return _meta_set(tokens)
    return _classic_storage(tokens)


def _classic_storage(tokens: list[bytes]) -> tuple[Store | Reject, int]:
    """process_update_command: set/add/replace/append/prepend/cas header checks."""
    name = tokens[0]
    count = ntokens(tokens)
    minimum = CLASSIC_STORAGE[name]
    if count != minimum and count != minimum + 1:
        return Reject(replies.ERROR), 0
    noreply = tokens[count - 2] == b"noreply"
    key = tokens[1]
    if len(key) > MAX_KEY_BYTES:
        return _error(replies.BAD_FORMAT, noreply), 0
    flags = strtoul32(tokens[2])
    exptime = strtol32(tokens[3])
    vlen = strtol32(tokens[4])
    if flags is None or exptime is None or vlen is None:
        return _error(replies.BAD_FORMAT, noreply), 0
    cas = 0
    if name == b"cas":
        parsed = strtoull(tokens[5])
        if parsed is None:
            return _error(replies.BAD_FORMAT, noreply), 0
        cas = parsed
    if vlen < 0 or vlen > INT32_MAX - 2:
        return _error(replies.BAD_FORMAT, noreply), 0
    return Store(name, key, flags, exptime, cas, noreply), vlen


def _meta_set(tokens: list[bytes]) -> tuple[Store | Reject, int]:
    """process_mset_command: `ms <key> <datalen> <flags>*` header checks."""
    count = ntokens(tokens)
    if count < 3:
        return Reject(replies.ERROR), 0
    key = tokens[1]
    if len(key) > MAX_KEY_BYTES or count == 3:
        return _error(replies.BAD_FORMAT), 0
    if count > MAX_META_TOKENS:
        return _error(replies.META_FLAGS_TOO_LONG), 0
    vlen = strtol32(tokens[2])
    if vlen is None or vlen < 0 or vlen > INT32_MAX - 2:
        return _error(replies.BAD_FORMAT), 0
    meta = parse_meta_flags(key, tokens[3:count - 1])
    error = meta.error
    if error is None:
        for token in meta.tokens:
            if token[0] == 0x4F and len(token) > MAX_OPAQUE_BYTES:  # O
                error = replies.META_OPAQUE_TOO_LONG
        if meta.mode not in (0, 0x45, 0x41, 0x50, 0x52, 0x53):  # E A P R S
            error = replies.META_MS_BAD_MODE
    if error is not None:
        return _error(error), vlen + 2
    request = Store(b"ms", meta.key, meta.client_flags, meta.exptime, meta.req_cas,
                    meta.no_reply, meta)
    return request, vlen


# -- the fast lane: one plain get, gets or set per read ----------------------------------------
# Most reads a cache sees are one `get <key>` (or a multi-get), most of the rest one `set`.
# For those the server can skip the general request loop; `answer` is the whole of that path
# (kvcache._mcproto compiles it). The storage it is given (kvcache.storage.Storage) writes the
# reply and counts the command (`get_reply`, `get_many_reply`, `store_command`), so this
# module imports no storage.
_LINE_END = b"\r\n"
LANE_DIGITS = 9  # a set's numbers in the lane: 1..9 plain digits, below every range rule
# A multi-get in the lane: one line of at most LANE_LINE_BYTES (what memcached reads at
# once) holding at most LANE_MAX_KEYS keys, whose reply surely fits in LANE_REPLY_BYTES
# (at most kvcache.commands.STREAM_CHUNK_BYTES, which this module cannot import: a longer
# reply is the request loop's, which streams it). These bound what one read may cost and
# hold; past them the loop answers, with the same bytes and counts.
LANE_LINE_BYTES = READ_BUFFER_BYTES
LANE_MAX_KEYS = 512
LANE_REPLY_BYTES = 256 * 1024
_STORED = replies.STORED
_NO_MEMORY = replies.line(replies.OUT_OF_MEMORY_STORING)


def _idle(parser: RequestParser) -> bool:
    """Nothing buffered, nothing pending, not closed: a read may bypass the parser."""
    return not (parser.closed or parser._pos != len(parser._buf) or parser._swallow
                or parser._pending is not None or parser._parts is not None)


def answer(parser: RequestParser, data: bytes, storage: Any) -> bytes | None:
    """If `data` is exactly one `get <keys>\\r\\n` or `gets <keys>\\r\\n` (see
    LANE_MAX_KEYS: each key at most MAX_KEY_BYTES), or one `set <key> <flags> <exptime>
    <bytes>\\r\\n` with its whole data block (plain digits, no noreply, a value that surely
    fits), and `parser` holds nothing (no bytes, no pending block, not closed): its reply,
    the command counted and carried out. Else None, and the caller feeds `data` to the
    parser as usual. Either way the outcome is what feeding it would have given: the parser
    is left as feeding and consuming the request would leave it."""
    if len(data) < 7 or not _idle(parser):
        return None
    if data.startswith(b"get "):
        return _answer_get(data, 4, False, storage)
    if data.startswith(b"gets "):
        return _answer_get(data, 5, True, storage)
    if data.startswith(b"set "):
        return _answer_set(parser, data, storage)
    return None


class Lane:
    """One connection's read callback, fast lane first: the server installs
    `data_received` as its protocol's, so a plain get, multi-get, gets or set, or a pipeline
    of simple commands (kvcache/mcpipe_pure.py), is answered, counted and written without a
    Python frame of the server's (compiled). `fallback(data)` takes every other read, or
    what follows the simple commands (the connection's request loop). `open` says whether
    the lane may answer (the server closes it while the connection is not admitted, is
    streaming a reply or its writes are paused); `verbosity 2` (per-command traces) closes
    it too. `send` is the connection's one way to write."""

    def __init__(self, parser: RequestParser, storage: Any, settings: Any, pinned: set[Any],
                 fallback: Callable[[bytes], None]) -> None:
        self.parser = parser
        self.storage = storage
        self.stats = storage.stats
        self.settings = settings
        self.pinned = pinned  # items a pipeline's replies refer to (Engine.pinned)
        self.fallback: Callable[[bytes], None] | None = fallback
        self.transport: Any = None
        self.last_command: int = storage.now  # the cache time of the last command served
        self.open = False
        self.latency: CommandLatency | None = None  # where timed reads go (the server's)
        self.reads = 0

    def attach(self, transport: Any) -> None:
        """The connection is admitted: replies go to `transport`, the lane may answer."""
        self.transport = transport
        self.open = True

    def release(self) -> None:
        """The connection is gone: drop the transport and the fallback (no cycles)."""
        self.open = False
        self.transport = None
        self.fallback = None

    def data_received(self, data: bytes) -> None:
        """`_receive`, one read in 8 timed into `latency` (kvcache/latency.py)."""
        self.reads += 1
        if self.latency is None or self.reads & SAMPLE_MASK or not _idle(self.parser):
            self._receive(data)
            return
        started = time.perf_counter_ns()
        self._receive(data)
        self.latency.record(data, time.perf_counter_ns() - started)

    def _receive(self, data: bytes) -> None:
        """Answer `data` if it is one plain get, gets or set and the lane is open (see
        `answer`), or the simple commands it begins with (kvcache/mcpipe_pure.py); hand
        the rest, or all of it, to the fallback."""
        if self.open and self.settings.verbose < 2:
            reply = answer(self.parser, data, self.storage)
            if reply is not None:
                self.stats.bytes_read += len(data)
                self.last_command = self.storage.now
                self.send(reply)
                return
            done = pipeline(data, self.storage, self.pinned, self.parser.lane_value_max,
                            self.settings.reqs_per_event) if _idle(self.parser) else None
            if done is not None:
                parts, size, consumed = done
                self.stats.bytes_read += consumed
                self.last_command = self.storage.now
                if size > LANE_JOIN_BYTES:
                    self.send_parts(parts, size)
                elif size:
                    self.send(b"".join(parts))
                if consumed == len(data):
                    return
                data = data[consumed:]
        if self.fallback is not None:
            self.fallback(data)

    def send(self, data: bytes) -> None:
        """One write: a write point (the pinned items are released), counted in
        bytes_written; nothing once the transport is closing."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.pinned:
            self.pinned.clear()
        self.stats.bytes_written += len(data)
        self.transport.write(data)

    def send_parts(self, parts: list[bytes], size: int) -> None:
        """`send` of the pieces of one write, `size` bytes in all, not joined: the
        transport writes them in one gathered call (no copy of a large value)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.pinned:
            self.pinned.clear()
        self.stats.bytes_written += size
        self.transport.writelines(parts)


def _answer_get(data: bytes, start: int, with_cas: bool, storage: Any) -> bytes | None:
    """A get (one key: `get_reply`) or a multi-get or gets (`get_many_reply`) whose keys
    start at data[start]."""
    if not data.endswith(_LINE_END) or len(data) > LANE_LINE_BYTES:
        return None
    line = data[start:-2]
    if b"\n" in line or b"\0" in line:
        return None
    if not with_cas and b" " not in line:
        return storage.get_reply(line) if len(line) <= MAX_KEY_BYTES else None
    keys = tokenize(line)
    if not keys or len(keys) > LANE_MAX_KEYS or max(map(len, keys)) > MAX_KEY_BYTES:
        return None
    return storage.get_many_reply(keys, with_cas, LANE_REPLY_BYTES)  # type: ignore[no-any-return]


def _lane_number(token: bytes) -> int | None:
    return int(token) if 0 < len(token) <= LANE_DIGITS and token.isdigit() else None


def _answer_set(parser: RequestParser, data: bytes, storage: Any) -> bytes | None:
    end = data.find(b"\n")
    if end < 5 or data[end - 1] != 0x0D or b"\0" in data[:end]:
        return None
    words = data[:end - 1].split(b" ")
    if len(words) != 5 or not 0 < len(words[1]) <= MAX_KEY_BYTES:
        return None
    key = words[1]
    flags, exptime, vlen = (_lane_number(word) for word in words[2:])
    if flags is None or exptime is None or vlen is None or vlen > parser.lane_value_max:
        return None
    if len(data) != end + 1 + vlen + 2 or not data.endswith(_LINE_END):
        return None
    outcome = storage.store_command(Mode.SET, key, data[end + 1:end + 1 + vlen], flags,
                                    storage.expiry(exptime))
    return _STORED if outcome is Outcome.STORED else _NO_MEMORY  # a set stores or finds no memory
