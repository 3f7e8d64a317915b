"""Numbers on the wire, read exactly as memcached 1.6 reads them.

memcached parses every numeric token with C's strtol/strtoul/strtoull wrapped in its
`safe_strto*` helpers, and clients depend on the quirks (measured against memcached 1.6.18):

- leading C whitespace is skipped and a `+` or `-` sign is accepted;
- the number may be followed by whitespace (a tab inside a token, the `\\r` of a bare-`\\n`
  line) but by nothing else;
- out-of-range magnitudes fail (ERANGE), but an in-range result is then truncated to the
  field's width: `set k 0 -2147483649 1` stores with exptime 2147483647, flags
  `4294967296` become 0;
- unsigned parsers accept `-N` only while the wrapped result stays below 2**63
  (`incr k -0` works, `incr k -1` is an error, `-9223372036854775809` is 2**63 - 1).

Each function returns the parsed value or None.
"""

from __future__ import annotations

C_WHITESPACE = b" \t\n\v\f\r"
_DIGITS = frozenset(b"0123456789")
U64 = 1 << 64
I64_MAX = (1 << 63) - 1
I32_WRAP = 1 << 32


def _scan(token: bytes) -> tuple[bool, int, int] | None:
    """(negative, magnitude, end) of the leading number in `token`, None if no digits.

    `end` is where strtol would leave endptr; the caller checks what follows.
    """
    pos = 0
    n = len(token)
    while pos < n and token[pos] in C_WHITESPACE:
        pos += 1
    negative = False
    if pos < n and token[pos] in b"+-":
        negative = token[pos] == 0x2D
        pos += 1
    start = pos
    while pos < n and token[pos] in _DIGITS:
        pos += 1
    if pos == start:
        return None
    digits = token[start:pos].lstrip(b"0")
    if len(digits) > 20:  # beyond any 64-bit value; also keeps int() away from huge inputs
        return negative, U64, pos
    return negative, int(digits or b"0"), pos


def _tail_ok(token: bytes, end: int) -> bool:
    """memcached: `xisspace(*endptr) || (*endptr == '\\0' && endptr != str)`."""
    return end == len(token) or token[end] in C_WHITESPACE


def strtoull(token: bytes) -> int | None:
    """memcached's safe_strtoull: an unsigned 64-bit value (also used for safe_strtoul,
    whose `unsigned long` is 64 bits wide on the platforms memcached runs on)."""
    if token.isdigit() and len(token) < 20:  # the common case, exactly equivalent
        return int(token)
    scanned = _scan(token)
    if scanned is None:
        return None
    negative, magnitude, end = scanned
    if magnitude >= U64 or not _tail_ok(token, end):
        return None
    value = (U64 - magnitude) % U64 if negative else magnitude
    if value > I64_MAX and negative:
        return None
    return value


def strtoul32(token: bytes) -> int | None:
    """safe_strtoul into a uint32_t: parsed as 64 bits, then truncated (client flags)."""
    value = strtoull(token)
    return None if value is None else value & 0xFFFFFFFF


def strtol32(token: bytes) -> int | None:
    """safe_strtol into an int32_t: parsed as a signed 64-bit long, then truncated."""
    if token.isdigit() and len(token) < 10:
        return int(token)
    scanned = _scan(token)
    if scanned is None:
        return None
    negative, magnitude, end = scanned
    value = -magnitude if negative else magnitude
    if not -I64_MAX - 1 <= value <= I64_MAX or not _tail_ok(token, end):
        return None
    value &= I32_WRAP - 1
    return value - I32_WRAP if value >= 1 << 31 else value


def parse_u64_prefix(data: bytes) -> int | None:
    """The number a stored value holds for incr/decr: memcached runs safe_strtoull over the
    item data, which it keeps followed by \\r\\n, so the number may be padded with spaces
    on either side (its own in-place decr pads with trailing spaces)."""
    return strtoull(data + b"\r")
