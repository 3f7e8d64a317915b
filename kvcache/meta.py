"""The meta commands: mg ms md ma me mn, answered as memcached 1.6.18 answers them.

A meta reply is a two-letter code (HD hit/done, VA value follows, EN miss, NF not found, NS
not stored, EX exists) followed by the requested flags *in request order*, then the state
flags Z (a recache token was already handed out), X (stale) and W (you won the token).
`q` silences the nominal reply only: EN for mg, HD for ms/md/ma; every error is shown.

Flags are parsed by kvcache/metaflags.py; the data block of `ms` is framed by
kvcache/protocol.py and arrives here as a `Store` with its MetaFlags.
"""

from __future__ import annotations

from collections.abc import Callable

from kvcache import replies
from kvcache.engine import Engine
from kvcache.items import FETCHED, KEY_BINARY, STALE, TOKEN_SENT, Item, Mode, Outcome
from kvcache.metaflags import (
    MAX_META_TOKENS,
    MAX_OPAQUE_BYTES,
    MetaFlags,
    decode_key,
    encode_key,
    parse_meta_flags,
)
from kvcache.protocol import MAX_KEY_BYTES, Store, ntokens
from kvcache.slabs import item_ntotal

CRLF = replies.CRLF
_O, _K = 0x4F, 0x6B


def _error(text: str) -> bytes:
    return replies.line(text)


def _key_flag(key: bytes, binary: bool) -> bytes:
    return b" k" + encode_key(key) + b" b" if binary else b" k" + key


def _echo(flags: MetaFlags, key: bytes, binary: bool, out: list[bytes]) -> str | None:
    """Append the O and k flags (all a reply without an item shows); an error if an opaque
    is too long."""
    for token in flags.tokens:
        letter = token[0]
        if letter == _O:
            if len(token) > MAX_OPAQUE_BYTES:
                return replies.META_OPAQUE_TOO_LONG
            out.append(b" " + token)
        elif letter == _K:
            out.append(_key_flag(key, binary))
    return None


def _prepare(tokens: list[bytes], too_long: str) -> MetaFlags | bytes:
    """The checks every meta command but ms makes first: a reply, or the parsed flags."""
    count = ntokens(tokens)
    if count < 3:
        return replies.ERROR
    if len(tokens[1]) > MAX_KEY_BYTES:
        return _error(replies.BAD_FORMAT)
    if count > MAX_META_TOKENS:
        return _error(too_long)
    return parse_meta_flags(tokens[1], tokens[2:])


# -- mg -----------------------------------------------------------------------------------
def cmd_mg(engine: Engine, tokens: list[bytes]) -> bytes:
    flags = _prepare(tokens, replies.META_MG_FLAGS_TOO_LONG)
    if isinstance(flags, bytes):
        return flags
    if flags.error is not None:
        return _error(flags.error)
    storage = engine.storage
    stats = engine.stats
    key = flags.key
    item = storage.find(key)
    created = False
    if item is None and flags.vivify:
        # memcached does not mark a vivified item's key binary: `k` shows it raw later.
        item = storage.vivify(key, 0, key_binary=False)
        created = item is not None
    if item is None:
        stats.get_misses += 1
        stats.get_cmds += 1
        out = [replies.META_MISS]
        error = _echo(flags, key, flags.key_binary, out)
        if error is not None:
            return _error(error)
        return b"" if flags.no_reply else b"".join(out) + CRLF
    return _mg_hit(engine, flags, item, created)


def _mg_hit(engine: Engine, flags: MetaFlags, item: Item, created: bool) -> bytes:
    storage = engine.storage
    now = storage.now
    value = item.value
    out = [b"VA %d" % len(value) if flags.value else replies.META_HIT]
    won = False
    ttl_set = False
    for token in flags.tokens:
        letter = token[0]
        if letter == 0x54:  # T
            ttl_set = True
            storage.set_exptime(item, storage.expiry(flags.exptime))
        elif letter == 0x4E:  # N
            if created:
                storage.set_exptime(item, storage.expiry(flags.autoviv_exptime))
                won = True
        elif letter == 0x52:  # R
            if (not item.casbits & TOKEN_SENT and not created and item.exptime
                    and item.exptime < storage.expiry(flags.recache_time)):
                won = True
        elif letter == 0x73:  # s
            out.append(b" s%d" % len(value))
        elif letter == 0x74:  # t
            out.append(b" t-1" if not item.exptime else
                       b" t%d" % ((item.exptime - now) & 0xFFFFFFFF))
        elif letter == 0x63:  # c
            out.append(b" c%d" % item.cas)
        elif letter == 0x66:  # f
            out.append(b" f%d" % item.flags)
        elif letter == 0x6C:  # l
            out.append(b" l%d" % ((now - item.atime) & 0xFFFFFFFF))
        elif letter == 0x68:  # h
            out.append(b" h1" if item.casbits & FETCHED else b" h0")
        elif letter == _O:
            if len(token) > MAX_OPAQUE_BYTES:
                return _error(replies.META_OPAQUE_TOO_LONG)
            out.append(b" " + token)
        elif letter == _K:
            out.append(_key_flag(item.key, bool(item.casbits & KEY_BINARY)))
    if item.casbits & TOKEN_SENT:
        out.append(b" Z")
    if item.casbits & STALE:
        out.append(b" X")
        if not item.casbits & TOKEN_SENT:
            won = True
    if won:
        out.append(b" W")
        storage.grant_token(item)
    out.append(CRLF)
    if flags.value:
        out.append(value)
        out.append(CRLF)
    stats = engine.stats
    if ttl_set:
        stats.touch_cmds += 1
        stats.slab.touch_hits[storage.clsid_of(item)] += 1
    else:  # before the bump: the hit counts to the segment the item was found in
        stats.get_cmds += 1
        storage.count_hit(item)
    if not flags.no_update:
        storage.bump(item)
    engine.pinned.add(item)
    return b"".join(out)


# -- ms (its header and block were checked by the parser) ---------------------------------
_MS_MODES = {0: Mode.SET, 0x53: Mode.SET, 0x45: Mode.ADD, 0x41: Mode.APPEND,
             0x50: Mode.PREPEND, 0x52: Mode.REPLACE}
_MS_CODES = {Outcome.STORED: replies.META_HIT, Outcome.EXISTS: replies.META_EXISTS,
             Outcome.NOT_FOUND: replies.META_NOT_FOUND,
             Outcome.NOT_STORED: replies.META_NOT_STORED}


def finish_set(engine: Engine, request: Store) -> bytes:
    flags = request.meta
    assert flags is not None
    storage = engine.storage
    stats = engine.stats
    key = request.key
    if request.too_large:
        stats.store_too_large += 1
        storage.delete(key)  # memcached drops the old value whatever the mode
        return _error(replies.TOO_LARGE)
    data = request.data
    if data is None:
        return _error(replies.BAD_DATA_CHUNK)
    stats.slab.set_cmds[storage.clsid_for(len(key), flags.client_flags, len(data))] += 1
    mode = _MS_MODES[flags.mode]
    if flags.has_cas and mode in (Mode.SET, Mode.REPLACE):
        mode = Mode.CAS
    outcome, item = storage.store(
        mode, key, data, flags.client_flags, storage.expiry(flags.exptime),
        flags.req_cas if flags.has_cas else 0,
        set_stale=flags.set_stale and mode is Mode.CAS, key_binary=flags.key_binary,
    )
    if outcome is Outcome.NO_MEMORY:
        stats.store_no_memory += 1
        return _error(replies.OUT_OF_MEMORY_STORING)
    if outcome is Outcome.STORED and flags.no_reply:
        return b""
    out = [_MS_CODES[outcome]]
    for token in flags.tokens:
        letter = token[0]
        if letter == _O:
            out.append(b" " + token)
        elif letter == _K:
            out.append(_key_flag(key, flags.key_binary))
        elif letter == 0x63:  # c
            out.append(b" c%d" % (item.cas if item is not None else 0))
    out.append(CRLF)
    return b"".join(out)


# -- md -----------------------------------------------------------------------------------
def cmd_md(engine: Engine, tokens: list[bytes]) -> bytes:
    flags = _prepare(tokens, replies.META_FLAGS_TOO_LONG)
    if isinstance(flags, bytes):
        return flags
    if flags.error is not None:
        return _error(replies.META_INVALID_OR_DUPLICATE)
    key = flags.key
    echoed: list[bytes] = []
    error = _echo(flags, key, flags.key_binary, echoed)
    if error is not None:
        return _error(error)
    storage = engine.storage
    stats = engine.stats
    item = storage.find(key)
    if item is None:
        stats.delete_misses += 1
        code = replies.META_NOT_FOUND
    elif flags.has_cas and item.cas != flags.req_cas:
        stats.delete_misses += 1
        code = replies.META_EXISTS
    else:
        if flags.set_stale:
            storage.invalidate(item, storage.expiry(flags.exptime) if flags.new_ttl else None)
        else:
            stats.slab.delete_hits[storage.clsid_of(item)] += 1
            storage.remove(item)
        if flags.no_reply:
            return b""
        code = replies.META_HIT
    return code + b"".join(echoed) + CRLF


# -- ma -----------------------------------------------------------------------------------
def cmd_ma(engine: Engine, tokens: list[bytes]) -> bytes:
    flags = _prepare(tokens, replies.META_FLAGS_TOO_LONG)
    if isinstance(flags, bytes):
        return flags
    if flags.error is not None:
        return _error(replies.META_INVALID_OR_DUPLICATE)
    if flags.mode in (0, 0x49, 0x2B):  # I +
        incr = True
    elif flags.mode in (0x44, 0x2D):  # D -
        incr = False
    else:
        return _error(replies.META_MA_BAD_MODE)
    storage = engine.storage
    stats = engine.stats
    key = flags.key
    outcome, number, item, in_place = storage.delta(key, incr, flags.delta, flags.req_cas,
                                                    pinned=engine.pinned)
    created = False
    code = b""
    if outcome is Outcome.NON_NUMERIC:
        return _error(replies.NON_NUMERIC)
    if outcome is Outcome.NO_MEMORY:
        return _error(replies.OUT_OF_MEMORY)
    if outcome is Outcome.EXISTS:
        code = replies.META_EXISTS
    elif outcome is Outcome.NOT_FOUND:
        if flags.vivify:
            number = flags.initial
            # as for mg's N: memcached does not mark a vivified item's key binary
            stored, item = storage.store(Mode.ADD, key, b"%d" % number, 0, 0,
                                         key_binary=False)
            if stored is Outcome.NO_MEMORY:
                return _error(replies.META_NEW_ITEM_NO_MEMORY)
            created = item is not None
        else:
            if incr:
                stats.incr_misses += 1
            else:
                stats.decr_misses += 1
            code = replies.META_NOT_FOUND
    if item is None or code:
        out = [code]
        error = _echo(flags, key, flags.key_binary, out)
        return _error(error) if error is not None else b"".join(out) + CRLF
    text = b"%d" % number
    out = [b"VA %d" % len(text) if flags.value else replies.META_HIT]
    for token in flags.tokens:
        letter = token[0]
        if letter == 0x63:  # c
            out.append(b" c%d" % item.cas)
        elif letter == 0x74:  # t
            out.append(b" t-1" if not item.exptime else
                       b" t%d" % ((item.exptime - storage.now) & 0xFFFFFFFF))
        elif letter == 0x54:  # T
            # memcached applies T to the item it incremented; when a new item replaced
            # it (not in place), the new one keeps the old TTL.
            if in_place or created:
                storage.set_exptime(item, storage.expiry(flags.exptime))
        elif letter == 0x4E:  # N
            if created:
                storage.set_exptime(item, storage.expiry(flags.autoviv_exptime))
        elif letter == _O:
            if len(token) > MAX_OPAQUE_BYTES:
                return _error(replies.META_OPAQUE_TOO_LONG)
            out.append(b" " + token)
        elif letter == _K:
            out.append(_key_flag(key, flags.key_binary))
    if outcome is Outcome.STORED and flags.no_reply:
        return b""  # q hides a success, after its flags (T...) took effect
    if flags.value:
        out.append(CRLF + text)
    out.append(CRLF)
    return b"".join(out)


# -- me, mn -------------------------------------------------------------------------------
def cmd_me(engine: Engine, tokens: list[bytes]) -> bytes:
    """The debug view of one item (no bump, not counted as a read)."""
    count = ntokens(tokens)
    if count < 3 or len(tokens[1]) > MAX_KEY_BYTES:
        return _error(replies.BAD_FORMAT)
    key: bytes | None = tokens[1]
    if count >= 4 and tokens[2] == b"b":
        key = decode_key(tokens[1])
        if key is None:
            return _error(replies.BAD_FORMAT)
    storage = engine.storage
    engine.stats.meta_cmds += 1
    item = storage.find(key)
    if item is None:
        return replies.META_MISS + CRLF
    now = storage.now
    shown = encode_key(item.key) if item.casbits & KEY_BINARY else item.key
    ntotal = item_ntotal(len(item.key), item.flags, len(item.value), storage.use_cas)
    return b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
        shown,
        -1 if not item.exptime else now - item.exptime,
        now - item.atime,
        item.cas,
        b"yes" if item.casbits & FETCHED else b"no",
        storage.slabs.clsid(ntotal),
        ntotal,
    )


def cmd_mn(engine: Engine, tokens: list[bytes]) -> bytes:
    return replies.META_NOOP_LINE


META_COMMANDS: dict[bytes, Callable[[Engine, list[bytes]], bytes]] = {
    b"mg": cmd_mg,
    b"md": cmd_md,
    b"ma": cmd_ma,
    b"me": cmd_me,
    b"mn": cmd_mn,
}
