"""The classic memcached commands: one function per command, one table, one dispatcher.

`execute(engine, request)` runs one parsed request (kvcache/protocol.py) against the
Engine's storage (kvcache/engine.py) and returns its `Reply`: the reply bytes (b"" when
noreply silences it), a `Stream` for multi-key gets (written chunk by chunk, so a reply never
has to sit whole in memory), or a `Closing`.

Dispatch follows memcached's process_command_ascii: a word shorter than two letters is an
ERROR; meta commands are the two-letter words starting with `m` (kvcache/meta.py); words
starting with one of g s a c i d t are looked up in that letter's family only; any other
unknown word whose last token starts with `HTTP/` closes the connection silently (a browser
or an HTTP health check knocked). Token counts are checked once, from the table, as
memcached's WANT_TOKENS does. The operator commands (kvcache/admin.py) join the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from kvcache import admin, meta, replies
from kvcache.engine import CLOSE_AFTER_REPLIES, CLOSE_NOW, Engine, Handler, Reply, Stream
from kvcache.items import Mode, Outcome
from kvcache.numbers import strtol32, strtoull
from kvcache.protocol import MAX_KEY_BYTES, Close, Reject, Store, has_noreply, ntokens

log = logging.getLogger("kvcache")

STREAM_CHUNK_BYTES = 256 * 1024  # a multi-get reply is produced in pieces about this big

# memcached writes its queued replies out after these (and when its input runs dry, and
# every -R (reqs_per_event) commands); a closed connection loses the replies not written.
FLUSH_AFTER = frozenset((b"get", b"gets", b"gat", b"gats", b"bget", b"mn"))


@dataclass(frozen=True)
class Command:
    """One row of the command table. Token counts include memcached's terminal token
    (so `get k` has 3); a line outside [min_tokens, max_tokens] is answered ERROR."""

    name: bytes
    handler: Handler
    min_tokens: int = 2
    max_tokens: int = 1 << 30


_STORE_MODES = {b"set": Mode.SET, b"add": Mode.ADD, b"replace": Mode.REPLACE,
                b"append": Mode.APPEND, b"prepend": Mode.PREPEND, b"cas": Mode.CAS}
_STORE_REPLIES = {Outcome.STORED: replies.STORED, Outcome.NOT_STORED: replies.NOT_STORED,
                  Outcome.EXISTS: replies.EXISTS, Outcome.NOT_FOUND: replies.NOT_FOUND,
                  Outcome.NO_MEMORY: replies.line(replies.OUT_OF_MEMORY_STORING)}
_FAMILIES = b"gsacidt"


def execute(engine: Engine, request: list[bytes] | Store | Reject | Close) -> Reply:
    """Run one request from the parser; the reply (see the module docstring)."""
    kind = type(request)
    if kind is list:
        return dispatch(engine, request)  # type: ignore[arg-type]
    if kind is Store:
        if request.meta is not None:  # type: ignore[union-attr]
            return meta.finish_set(engine, request)  # type: ignore[arg-type]
        return store(engine, request)  # type: ignore[arg-type]
    if kind is Reject:
        return request.reply  # type: ignore[union-attr]
    return CLOSE_NOW


def dispatch(engine: Engine, tokens: list[bytes]) -> Reply:
    """A command line without a data block, routed as memcached routes it."""
    if not tokens:
        return replies.ERROR
    name = tokens[0]
    command = TABLE.get(name)
    if command is not None:  # first: the table holds no word the rules below route
        count = ntokens(tokens)
        if count < command.min_tokens or count > command.max_tokens:
            return replies.ERROR
        return command.handler(engine, tokens)
    if len(name) < 2:
        return replies.ERROR
    if name[0] == 0x6D and len(name) == 2:  # m?
        handler = meta.META_COMMANDS.get(name)
        return handler(engine, tokens) if handler is not None else replies.ERROR
    if name[0] in _FAMILIES:
        return replies.ERROR
    if tokens[ntokens(tokens) - 2].startswith(b"HTTP/"):
        return CLOSE_NOW
    return replies.ERROR


def store(engine: Engine, request: Store) -> bytes:
    """A classic storage command with its data block (or the reason it has none)."""
    stats = engine.stats
    storage = engine.storage
    if request.too_large:
        stats.store_too_large += 1
        if request.command == b"set":
            storage.delete(request.key)  # no stale value may survive a failed set
        return b"" if request.noreply else replies.line(replies.TOO_LARGE)
    data = request.data
    key = request.key
    if data is None:  # a bad chunk: memcached counts the set of the item it allocated
        stats.slab.set_cmds[storage.clsid_for(len(key), request.flags, request.size)] += 1
        return b"" if request.noreply else replies.line(replies.BAD_DATA_CHUNK)
    outcome = storage.store_command(_STORE_MODES[request.command], key, data,
                                    request.flags, storage.expiry(request.exptime),
                                    request.cas)
    return b"" if request.noreply else _STORE_REPLIES[outcome]


_noreply = has_noreply
_reply = replies.unless
value_block = replies.value_block


# -- retrieval --------------------------------------------------------------------------------
def _blocks(engine: Engine, keys: list[bytes], start: int, with_cas: bool,
            exptime: int | None, parts: list[bytes]) -> int:
    """Look up keys[start:] for a get/gets (`exptime` None) or gat/gats, appending their VALUE
    blocks to `parts` until those reach STREAM_CHUNK_BYTES; the index of the first key not
    looked up. The loop is the hot path of multi-gets: counters are summed locally and
    added once, before the caller can hand the chunk out."""
    storage = engine.storage
    stats = engine.stats
    read, touch = storage.read, storage.touch
    clsid_of = storage.clsid_of
    touch_hits = stats.slab.touch_hits
    size = misses = 0
    index = start
    count = len(keys)
    while index < count:
        key = keys[index]
        index += 1
        if exptime is None:
            item = read(key)  # counts the hit, by the LRU segment it was found in
        else:
            item = touch(key, exptime)
            if item is not None:
                touch_hits[clsid_of(item)] += 1
        if item is None:
            misses += 1
            continue
        block = value_block(key, item.flags, item.value, item.cas if with_cas else None)
        parts.append(block)
        size += len(block)
        if size >= STREAM_CHUNK_BYTES:
            break
    if exptime is None:
        stats.get_cmds += index - start
        stats.get_misses += misses
    else:
        stats.touch_cmds += index - start
        stats.touch_misses += misses
    return index


def _retrieve(engine: Engine, tokens: list[bytes], with_cas: bool, touch: bool) -> Reply:
    """process_get_command: every key answered in order, then END. A key over 250 bytes
    ends the command with an error (the keys before it were looked up, their values are
    dropped), as memcached does. A reply that outgrows STREAM_CHUNK_BYTES goes on as a
    Stream, so it never sits whole in memory."""
    exptime = None
    first = 1
    if touch:
        wire = strtol32(tokens[1])
        if wire is None:
            return replies.line(replies.INVALID_EXPTIME)
        exptime = engine.storage.expiry(wire)
        first = 2
    keys = tokens[first:]
    if any(len(key) > MAX_KEY_BYTES for key in keys):
        valid = keys[:next(i for i, key in enumerate(keys) if len(key) > MAX_KEY_BYTES)]
        index = 0
        while index < len(valid):
            index = _blocks(engine, valid, index, with_cas, exptime, [])
        return replies.line(replies.BAD_FORMAT)
    parts: list[bytes] = []
    index = _blocks(engine, keys, 0, with_cas, exptime, parts)
    if index == len(keys):
        parts.append(replies.END)
        return b"".join(parts)
    return Stream(_stream_values(engine, keys, index, with_cas, exptime, b"".join(parts)))


def _stream_values(engine: Engine, keys: list[bytes], index: int, with_cas: bool,
                   exptime: int | None, first: bytes) -> Iterator[bytes]:
    yield first
    while index < len(keys):
        parts: list[bytes] = []
        index = _blocks(engine, keys, index, with_cas, exptime, parts)
        if index == len(keys):
            parts.append(replies.END)
        yield b"".join(parts)


def cmd_get(engine: Engine, tokens: list[bytes]) -> Reply:
    if len(tokens) == 2 and len(tokens[1]) <= MAX_KEY_BYTES:  # the common case, compiled
        return engine.storage.get_reply(tokens[1])
    return _retrieve(engine, tokens, with_cas=False, touch=False)


def cmd_gets(engine: Engine, tokens: list[bytes]) -> Reply:
    return _retrieve(engine, tokens, with_cas=True, touch=False)


def cmd_gat(engine: Engine, tokens: list[bytes]) -> Reply:
    return _retrieve(engine, tokens, with_cas=False, touch=True)


def cmd_gats(engine: Engine, tokens: list[bytes]) -> Reply:
    return _retrieve(engine, tokens, with_cas=True, touch=True)


# -- mutation without a data block -------------------------------------------------------------
def cmd_delete(engine: Engine, tokens: list[bytes]) -> Reply:
    count = ntokens(tokens)
    noreply = False
    if count > 3:
        hold_is_zero = tokens[2] == b"0"
        noreply = _noreply(tokens)
        valid = (count == 4 and (hold_is_zero or noreply)) or (
            count == 5 and hold_is_zero and noreply
        )
        if not valid:
            return _reply(noreply, replies.DELETE_USAGE)
    key = tokens[1]
    if len(key) > MAX_KEY_BYTES:
        return _reply(noreply, replies.BAD_FORMAT)
    item = engine.storage.delete(key)
    if item is None:
        engine.stats.delete_misses += 1
        return _reply(noreply, replies.NOT_FOUND)
    engine.stats.slab.delete_hits[engine.storage.clsid_of(item)] += 1
    return _reply(noreply, replies.DELETED)


def _arithmetic(engine: Engine, tokens: list[bytes], incr: bool) -> Reply:
    noreply = _noreply(tokens)
    key = tokens[1]
    if len(key) > MAX_KEY_BYTES:
        return _reply(noreply, replies.BAD_FORMAT)
    delta = strtoull(tokens[2])
    if delta is None:
        return _reply(noreply, replies.INVALID_DELTA)
    outcome, number, _, _ = engine.storage.delta(key, incr, delta, pinned=engine.pinned)
    if outcome is Outcome.STORED:
        return _reply(noreply, b"%d\r\n" % number)
    if outcome is Outcome.NOT_FOUND:
        if incr:
            engine.stats.incr_misses += 1
        else:
            engine.stats.decr_misses += 1
        return _reply(noreply, replies.NOT_FOUND)
    if outcome is Outcome.NON_NUMERIC:
        return _reply(noreply, replies.NON_NUMERIC)
    return _reply(noreply, replies.OUT_OF_MEMORY)


def cmd_incr(engine: Engine, tokens: list[bytes]) -> Reply:
    return _arithmetic(engine, tokens, incr=True)


def cmd_decr(engine: Engine, tokens: list[bytes]) -> Reply:
    return _arithmetic(engine, tokens, incr=False)


def cmd_touch(engine: Engine, tokens: list[bytes]) -> Reply:
    noreply = _noreply(tokens)
    key = tokens[1]
    if len(key) > MAX_KEY_BYTES:
        return _reply(noreply, replies.BAD_FORMAT)
    wire = strtol32(tokens[2])
    if wire is None:
        return _reply(noreply, replies.INVALID_EXPTIME)
    storage = engine.storage
    item = storage.touch(key, storage.expiry(wire))
    engine.stats.touch_cmds += 1
    if item is None:
        engine.stats.touch_misses += 1
        return _reply(noreply, replies.NOT_FOUND)
    engine.stats.slab.touch_hits[storage.clsid_of(item)] += 1
    return _reply(noreply, replies.TOUCHED)


def cmd_flush_all(engine: Engine, tokens: list[bytes]) -> Reply:
    noreply = _noreply(tokens)
    engine.stats.flush_cmds += 1
    if not engine.settings.flush_enabled:
        return _reply(noreply, replies.FLUSH_DISABLED)
    delay = 0
    if ntokens(tokens) != (3 if noreply else 2):
        parsed = strtol32(tokens[1])
        if parsed is None:
            return _reply(noreply, replies.INVALID_EXPTIME)
        delay = parsed
    engine.storage.flush(delay)
    log.debug("flush_all delay=%d", delay)
    return _reply(noreply, replies.OK)


# -- everything else ---------------------------------------------------------------------------
def cmd_version(engine: Engine, tokens: list[bytes]) -> Reply:
    return replies.VERSION_LINE


def cmd_quit(engine: Engine, tokens: list[bytes]) -> Reply:
    return CLOSE_AFTER_REPLIES


COMMANDS = [
    Command(b"get", cmd_get, 3),
    Command(b"bget", cmd_get, 3),
    Command(b"gets", cmd_gets, 3),
    Command(b"gat", cmd_gat, 3),
    Command(b"gats", cmd_gats, 3),
    Command(b"delete", cmd_delete, 3, 5),
    Command(b"incr", cmd_incr, 4, 5),
    Command(b"decr", cmd_decr, 4, 5),
    Command(b"touch", cmd_touch, 4, 5),
    Command(b"flush_all", cmd_flush_all, 2, 4),
    Command(b"version", cmd_version),
    Command(b"quit", cmd_quit),
    *(Command(name, handler, low, high) for name, handler, low, high in admin.ADMIN_COMMANDS),
]
TABLE = {c.name: c for c in COMMANDS}
# dispatch looks words up in the table before memcached's routing rules, which is only the
# same routing while no word in it is one letter or meta-shaped (m + one letter).
assert all(len(c.name) > 1 and not (c.name[0] == 0x6D and len(c.name) == 2) for c in COMMANDS)
