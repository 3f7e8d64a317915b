"""String commands (SET GET GETDEL INCR INCRBY DECR DECRBY APPEND STRLEN MGET MSET) as
sans-I/O handlers: `cmd_x(view, args) -> reply`, args with the command name first.

Each handler reads and writes through a shardstore.kvview.View, which hides expired keys
and gathers the writes; errors are raised as CommandError with Redis 7's texts, in the
order Redis checks them (options before types, the increment before the stored value).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.resp import OK, CommandError
from shardstore.kvview import View
from shardstore.values import (
    ERR_ARITY,
    ERR_DECR_OVERFLOW,
    ERR_EXPIRE_TIME,
    ERR_NOT_INTEGER,
    ERR_STRING_TOO_LONG,
    ERR_SYNTAX,
    INT64_MAX,
    INT64_MIN,
    MAX_STRING_BYTES,
    checked_add,
    encode_string,
    int_arg,
    string_of,
)

MS_PER_S = 1000
# SET's expiry options: word -> (milliseconds per unit, absolute?).
SET_EXPIRY_WORDS = {b"EX": (MS_PER_S, False), b"PX": (1, False),
                    b"EXAT": (MS_PER_S, True), b"PXAT": (1, True)}


@dataclass
class SetOptions:
    """What SET's words after the value asked for."""

    nx: bool = False
    xx: bool = False
    get: bool = False
    keepttl: bool = False
    expiry_word: bytes = b""
    expiry_arg: bytes = b""


def parse_set_options(words: list[bytes]) -> SetOptions:
    """SET's options as Redis 7 reads them: NX/XX exclusive, one expiry kind (the same kind
    may repeat: the last wins), KEEPTTL only without an expiry; anything else a syntax error."""
    opts = SetOptions()
    i = 0
    while i < len(words):
        word = words[i].upper()
        has_next = i + 1 < len(words)
        if word == b"NX" and not opts.xx:
            opts.nx = True
        elif word == b"XX" and not opts.nx:
            opts.xx = True
        elif word == b"GET":
            opts.get = True
        elif word == b"KEEPTTL" and not opts.expiry_word:
            opts.keepttl = True
        elif (word in SET_EXPIRY_WORDS and has_next and not opts.keepttl
              and opts.expiry_word in (b"", word)):
            opts.expiry_word, opts.expiry_arg = word, words[i + 1]
            i += 1
        else:
            raise CommandError(ERR_SYNTAX)
        i += 1
    return opts


def set_expiry_ms(opts: SetOptions, now_ms: int) -> int:
    """The absolute expiry SET's options give (0 = none), or SET's expire-time errors."""
    if not opts.expiry_word:
        return 0
    unit, absolute = SET_EXPIRY_WORDS[opts.expiry_word]
    amount = int_arg(opts.expiry_arg)
    error = ERR_EXPIRE_TIME.format("set")
    if amount <= 0 or amount > INT64_MAX // unit:
        raise CommandError(error)
    when = amount * unit
    if not absolute:
        if when > INT64_MAX - now_ms:
            raise CommandError(error)
        when += now_ms
    return when


def cmd_set(view: View, args: list[bytes]) -> object:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]."""
    key, value = args[1], args[2]
    opts = parse_set_options(args[3:])
    expire_at = set_expiry_ms(opts, view.now_ms)
    old = view.lookup(key)
    old_value = string_of(old) if (opts.get and old is not None) else None
    if (opts.nx and old is not None) or (opts.xx and old is None):
        return old_value if opts.get else None
    if opts.keepttl and old is not None:
        expire_at = old.expire_at_ms
    if view.expired(expire_at):
        view.delete(key)
    else:
        view.put(key, encode_string(value), expire_at)
    return old_value if opts.get else OK


def cmd_get(view: View, args: list[bytes]) -> object:
    """GET key: the string, nil when missing, WRONGTYPE for a hash."""
    entry = view.lookup(args[1])
    return None if entry is None else string_of(entry)


def cmd_getdel(view: View, args: list[bytes]) -> object:
    """GETDEL key: GET, then delete the key (a hash is left alone: WRONGTYPE)."""
    entry = view.lookup(args[1])
    if entry is None:
        return None
    value = string_of(entry)
    view.delete(args[1])
    return value


def incr_by(view: View, key: bytes, delta: int) -> int:
    """Add `delta` to the integer string at `key` (0 when missing), keeping its expiry."""
    entry = view.lookup(key)
    current, expire_at = 0, 0
    if entry is not None:
        current = int_arg(string_of(entry), ERR_NOT_INTEGER)
        expire_at = entry.expire_at_ms
    total = checked_add(current, delta)
    view.put(key, encode_string(b"%d" % total), expire_at)
    return total


def cmd_incr(view: View, args: list[bytes]) -> object:
    """INCR key."""
    return incr_by(view, args[1], 1)


def cmd_decr(view: View, args: list[bytes]) -> object:
    """DECR key."""
    return incr_by(view, args[1], -1)


def cmd_incrby(view: View, args: list[bytes]) -> object:
    """INCRBY key increment (the increment is checked before the key)."""
    return incr_by(view, args[1], int_arg(args[2]))


def cmd_decrby(view: View, args: list[bytes]) -> object:
    """DECRBY key decrement; the one decrement with no negation (INT64_MIN) is refused."""
    amount = int_arg(args[2])
    if amount == INT64_MIN:
        raise CommandError(ERR_DECR_OVERFLOW)
    return incr_by(view, args[1], -amount)


def cmd_append(view: View, args: list[bytes]) -> object:
    """APPEND key value: the new length; a missing key is created, the expiry kept."""
    key, tail = args[1], args[2]
    entry = view.lookup(key)
    if entry is None:
        view.put(key, encode_string(tail))
        return len(tail)
    head = string_of(entry)
    if len(head) + len(tail) > MAX_STRING_BYTES:
        raise CommandError(ERR_STRING_TOO_LONG)
    view.put(key, encode_string(head + tail), entry.expire_at_ms)
    return len(head) + len(tail)


def cmd_strlen(view: View, args: list[bytes]) -> object:
    """STRLEN key: 0 when missing."""
    entry = view.lookup(args[1])
    return 0 if entry is None else len(string_of(entry))


def cmd_mget(view: View, args: list[bytes]) -> object:
    """MGET key...: nil for a missing key and for a key that is not a string."""
    replies: list[bytes | None] = []
    for key in args[1:]:
        entry = view.lookup(key)
        replies.append(entry.payload if entry is not None and entry.type_name == "string"
                       else None)
    return replies


def cmd_mset(view: View, args: list[bytes]) -> object:
    """MSET key value [key value ...]: every key set, every old expiry dropped."""
    if len(args) % 2 == 0:
        raise CommandError(ERR_ARITY.format("mset"))
    for i in range(1, len(args), 2):
        view.put(args[i], encode_string(args[i + 1]))
    return OK


