"""The pipeline lane, pure-Python reference: whole reads of simple commands answered at once,
without the request loop. Twin of kvcache._mcpipe (each twin of kvcache/mcproto_pure.py's
`Lane` calls its own: the compiled lane the compiled pipe); tests/test_kvcache_pipe.py
proves the two equal, and that a lane answering pipelines writes and counts what the request
loop alone writes and counts.

Strategy: two passes over one read. The first only reads: it cuts the read into lines and
checks that each is a command this lane answers (SIMPLE below) in its plainest form; any other
complete line, and a trailing partial line the parser could close the connection on, make the
whole read the request loop's (`pipeline` returns None), so nothing was run. The second pass
runs the lines in order through the storage's own calls (the ones the command handlers call,
so the counters move exactly as theirs do) and joins the replies.

SIMPLE, each on one line ending in CRLF, with no NUL, tokens split on spaces as memcached
splits them:
- `get <keys>` / `gets <keys>`: keys of at most MAX_KEY_BYTES, at most LANE_MAX_KEYS of them;
- `set <key> <flags> <exptime> <bytes> [noreply]` and its whole data block ending in CRLF:
  numbers of 1..LANE_DIGITS plain digits, a value the item surely holds (`value_max`);
- `incr`/`decr <key> <delta> [noreply]`: a delta of 1..DELTA_DIGITS plain digits;
- `mn`;
- `mg <key> <flags>` with the flags v f t c s k q u, O<opaque> (at most MAX_OPAQUE_BYTES) and
  T<ttl> (plain digits), none twice;
- `ms <key> <bytes> <flags>` with its block: the flags T<ttl> F<client flags> (plain digits),
  q, k, O<opaque>, none twice (mode set, no CAS);
- `md <key>` with q, k, O<opaque>; `ma <key>` with q, k, v, t, c, O<opaque>, D<delta> (plain
  digits) and one mode of MI M+ MD M-.
Every other form (base64 keys, vivify, recache, CAS, modes, signs, ...) is the loop's: its
rules are written once, in kvcache/meta.py and kvcache/commands.py.

Write points: the loop releases the items a pipeline's replies refer to (the lane's `pinned`,
Engine.pinned) after a get, gets or mn, and every `reqs_per_event` commands; so does this
lane. A reply that grows past LANE_REPLY_BYTES, or a multi-get whose reply could (the loop
streams it), ends the pass early: the lane writes what it has and hands the rest of the read
to the loop, which can only find simple commands there, never one that closes the
connection, so no write point the loop would have made is lost.
"""

from __future__ import annotations

from typing import Any

from kvcache import replies
from kvcache.items import KEY_BINARY, STALE, TOKEN_SENT, Mode, Outcome
from kvcache.metaflags import MAX_OPAQUE_BYTES, encode_key

MAX_KEY_BYTES = 250
LANE_DIGITS = 9  # flags, exptime, lengths and TTLs: below every wrap and range rule
DELTA_DIGITS = 19  # an incr/decr delta below 2**64 whatever its digits
LINE_BYTES = 2048  # a simple command line (memcached's LINE_WITHOUT_NEWLINE_BYTES)
GET_LINE_BYTES = 16384  # a get line: what memcached reads at once (READ_BUFFER_BYTES)
LANE_MAX_KEYS = 512
LANE_REPLY_BYTES = 256 * 1024  # the request loop writes once its queue reaches this much
LANE_JOIN_BYTES = 16 * 1024  # replies up to this much are joined, longer ones gathered
MAX_FLAG_TOKENS = 16  # words after an mg key or an ms length (memcached allows 17)

GET, GETS, SET, INCR, DECR, MN, MG, MS, MD, MA = range(10)
PARTIAL = -1  # the read ends inside this command: the parser keeps it for the next read
_MG_LETTERS = frozenset(b"vftcskqu")
_MS_LETTERS = frozenset(b"qk")
_MA_LETTERS = frozenset(b"qkvtc")
_MA_MODES = {b"MI": True, b"M+": True, b"MD": False, b"M-": False}  # incr?
_COMMITS = (GET, GETS, MN)  # the loop's write points (kvcache.commands.FLUSH_AFTER)

_STORED = replies.STORED
_NO_MEMORY = replies.line(replies.OUT_OF_MEMORY_STORING)
_OUT_OF_MEMORY = replies.line(replies.OUT_OF_MEMORY)
_NON_NUMERIC = replies.line(replies.NON_NUMERIC)
_CRLF = replies.CRLF

Op = tuple[int, int, Any]  # (kind, where the next command starts, the command's fields)


def _digits(token: bytes, most: int) -> int | None:
    return int(token) if 0 < len(token) <= most and token.isdigit() else None


def _words(line: bytes) -> list[bytes]:
    return [word for word in line.split(b" ") if word]


def parse_op(data: bytes, pos: int, value_max: int) -> Op | None:
    """The simple command at data[pos:]: (kind, end, fields); (PARTIAL, pos, None) when the
    read ends before its line or its block does and the parser may wait for the rest;
    None when it is not simple."""
    nl = data.find(b"\n", pos)
    if nl < 0:
        return (PARTIAL, pos, None) if len(data) - pos <= LINE_BYTES else None
    if nl - pos < 2 or data[nl - 1] != 0x0D or b"\0" in data[pos:nl]:
        return None
    words = _words(data[pos:nl - 1])
    if not words:
        return None
    name = words[0]
    end = nl + 1
    if name in (b"get", b"gets"):
        if nl - pos >= GET_LINE_BYTES or not 1 < len(words) <= LANE_MAX_KEYS + 1:
            return None
        if max(map(len, words[1:])) > MAX_KEY_BYTES:
            return None
        return (GET if name == b"get" else GETS), end, words[1:]
    if name == b"mn":
        return (MN, end, None) if len(words) == 1 and nl - pos < LINE_BYTES else None
    if nl - pos >= LINE_BYTES or len(words) < 2 or len(words[1]) > MAX_KEY_BYTES:
        return None
    if name == b"set":
        return _parse_set(data, words, end, value_max)
    if name in (b"incr", b"decr"):
        return _parse_delta(words, end)
    if name == b"mg":
        flags = _meta_flags(words[2:], _MG_LETTERS, b"OT")
        return None if flags is None else (MG, end, (words[1], flags))
    if name == b"ms":
        return _parse_ms(data, words, end, value_max)
    if name == b"md":
        flags = _meta_flags(words[2:], _MS_LETTERS, b"O")
        return None if flags is None else (MD, end, (words[1], flags))
    if name == b"ma":
        return _parse_ma(words, end)
    return None


def _parse_ma(words: list[bytes], end: int) -> Op | None:
    """ma with the flags q k v t c, O, D<delta> (plain digits) and a mode MI M+ MD M-."""
    modes = [token for token in words[2:] if token[0] == 0x4D]  # M
    tokens = [token for token in words[2:] if token[0] != 0x4D]
    if len(modes) > 1 or (modes and modes[0] not in _MA_MODES):
        return None
    flags = _meta_flags(tokens, _MA_LETTERS, b"OD")
    if flags is None or len(words) - 2 > MAX_FLAG_TOKENS:
        return None
    delta = next((int(token[1:]) for token in flags if token[0] == 0x44), 1)  # D
    incr = _MA_MODES[modes[0]] if modes else True
    return MA, end, (words[1], flags, incr, delta)


def _block(data: bytes, start: int, vlen: int, fields: Any, kind: int) -> Op | None:
    """A storage command's data block at data[start:]: whole, pending, or bad (None)."""
    if len(data) < start + vlen + 2:
        return PARTIAL, start, None
    if data[start + vlen:start + vlen + 2] != _CRLF:
        return None
    return kind, start + vlen + 2, (*fields, data[start:start + vlen])


def _parse_set(data: bytes, words: list[bytes], end: int, value_max: int) -> Op | None:
    noreply = len(words) == 6 and words[5] == b"noreply"
    if len(words) != 5 and not noreply:
        return None
    flags, exptime, vlen = (_digits(word, LANE_DIGITS) for word in words[2:5])
    if flags is None or exptime is None or vlen is None or vlen > value_max:
        return None
    return _block(data, end, vlen, (words[1], flags, exptime, noreply), SET)


def _parse_delta(words: list[bytes], end: int) -> Op | None:
    noreply = len(words) == 4 and words[3] == b"noreply"
    if len(words) != 3 and not noreply:
        return None
    delta = _digits(words[2], DELTA_DIGITS)
    if delta is None:
        return None
    return (INCR if words[0] == b"incr" else DECR), end, (words[1], delta, noreply)


def _meta_flags(tokens: list[bytes], letters: frozenset[int], valued: bytes
                ) -> list[bytes] | None:
    """The flag tokens if each is a known one-letter flag or a valued one (O: an opaque of
    at most MAX_OPAQUE_BYTES; any other: plain digits), none twice; else None."""
    if len(tokens) > MAX_FLAG_TOKENS:
        return None
    seen = set()
    for token in tokens:
        letter = token[0]
        if letter in seen or (letter == 0x54 and 0x74 in seen):  # a t before a T
            return None
        seen.add(letter)
        if letter in letters and len(token) == 1:
            continue
        if letter == 0x4F and letter in valued and len(token) <= MAX_OPAQUE_BYTES:
            continue
        if letter not in valued or _digits(token[1:], LANE_DIGITS) is None:
            return None
    return tokens


def _parse_ms(data: bytes, words: list[bytes], end: int, value_max: int) -> Op | None:
    if len(words) < 3:
        return None
    vlen = _digits(words[2], LANE_DIGITS)
    flags = _meta_flags(words[3:], _MS_LETTERS, b"OTF")
    if vlen is None or vlen > value_max or flags is None:
        return None
    return _block(data, end, vlen, (words[1], flags), MS)


def scan(data: bytes, value_max: int) -> list[Op] | None:
    """Every simple command of the read, in order, the last one perhaps PARTIAL; None when
    the read holds anything else (or nothing complete)."""
    ops: list[Op] = []
    pos = 0
    while pos < len(data):
        op = parse_op(data, pos, value_max)
        if op is None:
            return None
        ops.append(op)
        if op[0] == PARTIAL:
            break
        pos = op[1]
    return ops if ops and ops[0][0] != PARTIAL else None


def pipeline(data: bytes, storage: Any, pinned: set[Any], value_max: int,
             reqs_per_event: int) -> tuple[list[bytes], int, int] | None:
    """Answer the simple commands `data` holds (see the module docstring): (the replies,
    the empty ones left out; their length in all; how many bytes of `data` they consumed),
    the rest being the loop's; or None, nothing run, when the loop must take the whole
    read. The caller writes the replies in one write (joined while short, as the request
    loop joins them, else gathered)."""
    ops = scan(data, value_max)
    if ops is None:
        return None
    out: list[bytes] = []
    size = count = consumed = 0
    for kind, end, fields in ops:
        if kind == PARTIAL:
            break
        reply = _run(kind, fields, storage, pinned)
        if reply is None:  # a multi-get the loop streams
            break
        consumed = end
        if reply:
            out.append(reply)
            size += len(reply)
        count += 1
        if count >= reqs_per_event or kind in _COMMITS:
            count = 0
            pinned.clear()
        if size >= LANE_REPLY_BYTES:
            break
    if not consumed:
        return None
    return out, size, consumed


def _run(kind: int, fields: Any, storage: Any, pinned: set[Any]) -> bytes | None:
    if kind == GET or kind == GETS:
        if kind == GET and len(fields) == 1:
            return storage.get_reply(fields[0])  # type: ignore[no-any-return]
        return storage.get_many_reply(fields, kind == GETS, LANE_REPLY_BYTES)  # type: ignore[no-any-return]
    if kind == SET:
        key, flags, exptime, noreply, value = fields
        outcome = storage.store_command(Mode.SET, key, value, flags, storage.expiry(exptime))
        return b"" if noreply else _STORED if outcome is Outcome.STORED else _NO_MEMORY
    if kind == INCR or kind == DECR:
        return _delta(storage, pinned, kind == INCR, *fields)
    if kind == MN:
        return replies.META_NOOP_LINE
    if kind == MG:
        return meta_get(storage, pinned, *fields)
    if kind == MD:
        return meta_delete(storage, *fields)
    if kind == MA:
        return meta_arith(storage, pinned, *fields)
    return meta_set(storage, *fields)


def _delta(storage: Any, pinned: set[Any], incr: bool, key: bytes, delta: int,
           noreply: bool) -> bytes:
    """kvcache.commands' incr/decr, for a plain delta."""
    outcome, number, _, _ = storage.delta_number(key, incr, delta, pinned)
    if outcome is Outcome.STORED:
        reply = b"%d\r\n" % number
    elif outcome is Outcome.NOT_FOUND:
        if incr:
            storage.stats.incr_misses += 1
        else:
            storage.stats.decr_misses += 1
        reply = replies.NOT_FOUND
    else:
        reply = _NON_NUMERIC if outcome is Outcome.NON_NUMERIC else _OUT_OF_MEMORY
    return b"" if noreply else reply


def _echo(tokens: list[bytes], key: bytes, out: list[bytes]) -> None:
    for token in tokens:
        if token[0] == 0x4F:  # O
            out.append(b" " + token)
        elif token[0] == 0x6B:  # k
            out.append(b" k" + key)


def meta_get(storage: Any, pinned: set[Any], key: bytes, tokens: list[bytes]) -> bytes:
    """kvcache.meta's mg for the simple flags (see the module docstring). The hit is
    counted, given its T and bumped first (`Storage.meta_read`): only the flags' order could
    tell, and a `t` before a `T` is left to the loop."""
    stats = storage.stats
    ttl = next((int(token[1:]) for token in tokens if token[0] == 0x54), None)  # T
    item = storage.meta_read(key, None if ttl is None else storage.expiry(ttl),
                             b"u" not in tokens)
    quiet = b"q" in tokens
    if item is None:
        stats.get_misses += 1
        stats.get_cmds += 1
        if quiet:
            return b""
        out = [replies.META_MISS]
        _echo(tokens, key, out)
        out.append(_CRLF)
        return b"".join(out)
    return _meta_hit(storage, pinned, item, tokens)


def _meta_hit(storage: Any, pinned: set[Any], item: Any, tokens: list[bytes]) -> bytes:
    now = storage.now
    value = item.value
    want_value = b"v" in tokens
    out = [b"VA %d" % len(value) if want_value else replies.META_HIT]
    for token in tokens:
        letter = token[0]
        if letter == 0x73:  # s
            out.append(b" s%d" % len(value))
        elif letter == 0x74:  # t
            out.append(b" t-1" if not item.exptime else
                       b" t%d" % ((item.exptime - now) & 0xFFFFFFFF))
        elif letter == 0x63:  # c
            out.append(b" c%d" % item.cas)
        elif letter == 0x66:  # f
            out.append(b" f%d" % item.flags)
        elif letter == 0x4F:  # O
            out.append(b" " + token)
        elif letter == 0x6B:  # k
            out.append(_key_flag(item))
    _states(storage, item, out)
    out.append(_CRLF)
    if want_value:
        out.append(value)
        out.append(_CRLF)
    pinned.add(item)
    return b"".join(out)


def _key_flag(item: Any) -> bytes:
    if item.casbits & KEY_BINARY:
        return b" k" + encode_key(item.key) + b" b"
    return b" k" + item.key


def _states(storage: Any, item: Any, out: list[bytes]) -> None:
    """The Z, X and W flags (kvcache.meta._mg_hit: no N or R here)."""
    won = False
    if item.casbits & TOKEN_SENT:
        out.append(b" Z")
    if item.casbits & STALE:
        out.append(b" X")
        won = not item.casbits & TOKEN_SENT
    if won:
        out.append(b" W")
        storage.grant_token(item)


def meta_set(storage: Any, key: bytes, tokens: list[bytes], value: bytes) -> bytes:
    """kvcache.meta's finish_set for the simple flags: a set, counted as store_command
    counts it (set_cmds of the class, store_no_memory)."""
    flags = exptime = 0
    for token in tokens:
        if token[0] == 0x46:  # F
            flags = int(token[1:])
        elif token[0] == 0x54:  # T
            exptime = int(token[1:])
    outcome = storage.store_command(Mode.SET, key, value, flags, storage.expiry(exptime))
    if outcome is not Outcome.STORED:
        return _NO_MEMORY
    if b"q" in tokens:
        return b""
    out = [replies.META_HIT]
    _echo(tokens, key, out)
    out.append(_CRLF)
    return b"".join(out)


def meta_delete(storage: Any, key: bytes, tokens: list[bytes]) -> bytes:
    """kvcache.meta's md for the flags q, k and O: NF, or HD (silenced by q)."""
    item = storage.delete(key)
    stats = storage.stats
    if item is None:
        stats.delete_misses += 1
        out = [replies.META_NOT_FOUND]
    else:
        stats.slab.delete_hits[storage.clsid_of(item)] += 1
        if b"q" in tokens:
            return b""
        out = [replies.META_HIT]
    _echo(tokens, key, out)
    out.append(_CRLF)
    return b"".join(out)


def meta_arith(storage: Any, pinned: set[Any], key: bytes, tokens: list[bytes], incr: bool,
               delta: int) -> bytes:
    """kvcache.meta's ma for the simple flags (no vivify, no CAS, no TTL)."""
    outcome, number, item, _ = storage.delta(key, incr, delta, 0, pinned)
    if outcome is Outcome.NON_NUMERIC:
        return _NON_NUMERIC
    if outcome is Outcome.NO_MEMORY:
        return _OUT_OF_MEMORY
    if outcome is not Outcome.STORED:  # NOT_FOUND
        if incr:
            storage.stats.incr_misses += 1
        else:
            storage.stats.decr_misses += 1
        out = [replies.META_NOT_FOUND]
        _echo(tokens, key, out)
        out.append(_CRLF)
        return b"".join(out)
    if b"q" in tokens:
        return b""
    text = b"%d" % number
    out = [b"VA %d" % len(text) if b"v" in tokens else replies.META_HIT]
    for token in tokens:
        letter = token[0]
        if letter == 0x63:  # c
            out.append(b" c%d" % item.cas)
        elif letter == 0x74:  # t
            out.append(b" t-1" if not item.exptime else
                       b" t%d" % ((item.exptime - storage.now) & 0xFFFFFFFF))
        elif letter == 0x4F:  # O
            out.append(b" " + token)
        elif letter == 0x6B:  # k
            out.append(b" k" + key)
    if b"v" in tokens:
        out.append(_CRLF + text)
    out.append(_CRLF)
    return b"".join(out)
