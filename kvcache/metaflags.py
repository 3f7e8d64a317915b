"""Meta command flags (`mg foo s v t O123 q`), tokenised and checked as memcached 1.6.18
checks them, before a meta command runs.

`parse_meta_flags` mirrors memcached's one pass over the flag tokens: a repeated or
non-ASCII flag letter and an unknown letter stop the pass at once with their own error; a
bad value (`Tx`, `Cx`, a key that is not base64) marks the request failed but the pass goes
on, and the last such error is the one reported. Which flags a command then *uses* is the
command's business (kvcache/meta.py); like memcached, every command accepts every known
letter.

Keys given with the `b` flag are decoded here with memcached's own base64 rules (it skips
characters outside the alphabet, counts the rest, and stops at the first padded block),
which are looser than Python's strict decoder in some places and stricter in others.
"""

from __future__ import annotations

import base64

from kvcache import replies
from kvcache.numbers import strtol32, strtoul32, strtoull

# memcached: MFLAG_MAX_OPT_LENGTH (tokens on the line, the terminal one included) and
# MFLAG_MAX_OPAQUE_LENGTH (bytes of an O token, the letter included).
MAX_META_TOKENS = 20
MAX_OPAQUE_BYTES = 32

# Letters memcached 1.6.18 knows. P and L are proxy hints it accepts and ignores; E
# (explicit CAS), x (md removes value) and S were added in later releases and 1.6.18 answers
# them with "CLIENT_ERROR invalid flag", so kvcache does too.
_KNOWN = frozenset(b"bNTRlOPLkstcfvhuqFCMJDI")
# Letters that only ask for a field in the reply (or are ignored): nothing to parse, so
# `_apply` is not called for them (the reply builders read `tokens`).
_REPLY_ONLY = frozenset(b"OPLkstcf")


class MetaFlags:
    """The outcome of parsing one meta command's flags.

    `error` is None when the flags are usable; otherwise the error text memcached would
    give for mg/ms (md and ma replace it with one generic error). `tokens` keeps the flag
    tokens in request order: replies list their flags in that order.
    """

    __slots__ = (
        "tokens", "key", "key_binary", "error", "locked", "vivify", "value", "set_stale",
        "no_reply", "no_update", "has_cas", "new_ttl", "mode", "exptime", "autoviv_exptime",
        "recache_time", "client_flags", "req_cas", "delta", "initial",
    )

    def __init__(self, tokens: list[bytes], key: bytes) -> None:
        self.tokens = tokens
        self.key = key
        self.key_binary = False
        self.error: str | None = None
        self.locked = False  # h, l, N, R or T: the reply needs the state before the bump
        self.vivify = False
        self.value = False
        self.set_stale = False
        self.no_reply = False
        self.no_update = False
        self.has_cas = False
        self.new_ttl = False
        self.mode = 0
        # Wire values (signed 32-bit as memcached keeps them); the storage converts them.
        self.exptime = 0
        self.autoviv_exptime = 0
        self.recache_time = 0
        self.client_flags = 0
        self.req_cas = 0
        self.delta = 1
        self.initial = 0


def parse_meta_flags(key: bytes, tokens: list[bytes]) -> MetaFlags:
    """Parse the flag tokens of a meta command whose key token is `key`."""
    flags = MetaFlags(tokens, key)
    seen: set[int] = set()
    for token in tokens:
        letter = token[0]
        if letter >= 127 or letter in seen:
            flags.error = replies.META_DUPLICATE_FLAG
            return flags
        seen.add(letter)
        if letter not in _KNOWN:
            flags.error = replies.META_INVALID_FLAG
            return flags
        if letter not in _REPLY_ONLY:
            _apply(flags, letter, token)
    return flags


def _apply(flags: MetaFlags, letter: int, token: bytes) -> None:
    """One flag token; a bad value sets `flags.error` (the last one wins, as in memcached)."""
    if letter == 0x62:  # b
        decoded = decode_key(flags.key)
        flags.key_binary = True
        if decoded is None:
            flags.error = replies.META_KEY_DECODE
            flags.key = b""
        else:
            flags.key = decoded
    elif letter in (0x4E, 0x54, 0x52):  # N T R: a TTL
        flags.locked = True
        flags.vivify = flags.vivify or letter == 0x4E
        value = strtol32(token[1:])
        if value is None:
            flags.error = replies.META_BAD_TOKEN
        elif letter == 0x4E:
            flags.autoviv_exptime = value
        elif letter == 0x54:
            flags.exptime = value
            flags.new_ttl = True
        else:
            flags.recache_time = value
    elif letter in (0x6C, 0x68):  # l h
        flags.locked = True
    elif letter == 0x76:  # v
        flags.value = True
    elif letter == 0x75:  # u
        flags.no_update = True
    elif letter == 0x71:  # q
        flags.no_reply = True
    elif letter == 0x49:  # I
        flags.set_stale = True
    elif letter == 0x46:  # F
        value = strtoul32(token[1:])
        if value is None:
            # memcached sets no message of its own here: the default one stays.
            flags.error = flags.error or replies.BAD_FORMAT
        else:
            flags.client_flags = value
    elif letter == 0x43:  # C
        value = strtoull(token[1:])
        if value is None:
            flags.error = replies.META_BAD_TOKEN
        else:
            flags.req_cas = value
            flags.has_cas = True
    elif letter == 0x4D:  # M
        if len(token) != 2:
            flags.error = replies.META_M_TOKEN_LENGTH
        else:
            flags.mode = token[1]
    elif letter in (0x4A, 0x44):  # J D
        value = strtoull(token[1:])
        if value is None:
            flags.error = (
                replies.META_INVALID_INITIAL if letter == 0x4A else replies.META_INVALID_DELTA
            )
        elif letter == 0x4A:
            flags.initial = value
        else:
            flags.delta = value


_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                        b"0123456789+/")}
_PAD = 0x3D  # '='


def decode_key(text: bytes) -> bytes | None:
    """memcached's base64_decode: None where it returns 0 (failure or nothing decoded)."""
    symbols = [c for c in text if c in _B64_VALUES or c == _PAD]
    if not symbols or len(symbols) % 4:
        return None
    out = bytearray()
    pad = 0
    for start in range(0, len(symbols), 4):
        block = symbols[start:start + 4]
        pad = block.count(_PAD)
        a, b, c, d = (0 if s == _PAD else _B64_VALUES[s] for s in block)
        out += bytes(((a << 2 | b >> 4) & 0xFF, (b << 4 | c >> 2) & 0xFF, (c << 6 | d) & 0xFF))
        if pad:
            # memcached counts '=' anywhere in the block and stops after it.
            if pad > 2:
                return None
            del out[len(out) - pad:]
            break
    return bytes(out) or None


def encode_key(key: bytes) -> bytes:
    """A binary key as meta replies show it after `k` (the `b` flag follows)."""
    return base64.b64encode(key)
