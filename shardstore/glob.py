"""Redis's glob patterns (KEYS, SCAN MATCH) as compiled byte regexes.

The rules are Redis's stringmatchlen, case-sensitive: `*` any run, `?` one byte,
`[abc]`, `[^abc]`, `[a-z]` (a reversed range is swapped; bytes compare as signed C
chars, as Redis on x86-64 compares them, so 0x80-0xff sort below 0x00), `\\x` the byte
x literally, inside brackets too. An unclosed `[` runs to the end of the pattern; `[]`
matches nothing and `[^]` any one byte. A trailing lone backslash is a literal backslash.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Compiled patterns kept: SCAN clients repeat one pattern over many calls.
PATTERN_CACHE_SIZE = 256
NEVER = b"(?!)"
ANY_BYTE = b"."
# Redis compares pattern bytes as C chars, signed on the platforms it is built for:
# bytes from here up order below 0x00 in a range.
SIGNED_CHAR_LIMIT = 0x80


@lru_cache(maxsize=PATTERN_CACHE_SIZE)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    """A regex that fully matches exactly the byte strings `pattern` matches."""
    out: list[bytes] = []
    i = 0
    while i < len(pattern):
        char = pattern[i : i + 1]
        if char == b"*":
            out.append(b".*")
        elif char == b"?":
            out.append(ANY_BYTE)
        elif char == b"[":
            piece, i = _bracket(pattern, i + 1)
            out.append(piece)
            continue
        elif char == b"\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


def _bracket(pattern: bytes, i: int) -> tuple[bytes, int]:
    """The class starting after `[` at index i, and the index after its `]`."""
    negate = pattern[i : i + 1] == b"^"
    if negate:
        i += 1
    parts: list[bytes] = []
    while i < len(pattern) and pattern[i : i + 1] != b"]":
        if pattern[i : i + 1] == b"\\" and i + 1 < len(pattern):
            i += 1
            parts.append(_class_byte(pattern[i]))
        elif i + 2 < len(pattern) and pattern[i + 1 : i + 2] == b"-":
            parts.extend(_byte_range(pattern[i], pattern[i + 2]))
            i += 2
        else:
            parts.append(_class_byte(pattern[i]))
        i += 1
    i += 1  # past the `]` (or the end, for an unclosed class)
    if not parts:
        return (ANY_BYTE if negate else NEVER), i
    return b"[" + (b"^" if negate else b"") + b"".join(parts) + b"]", i


def _signed(value: int) -> int:
    return value - 256 if value >= SIGNED_CHAR_LIMIT else value


def _byte_range(first: int, last: int) -> list[bytes]:
    """Class pieces for the range first-last compared as C chars: bytes 0x80-0xff are
    below 0x00 (so [\xff-a] holds 0xff and 0x00-a)."""
    low, high = sorted((_signed(first), _signed(last)))
    spans = [(low, high)] if low >= 0 or high < 0 else [(0, high), (low, -1)]
    return [_class_byte(a % 256) + b"-" + _class_byte(b % 256) for a, b in spans]


def _class_byte(value: int) -> bytes:
    return b"\\x%02x" % value


def glob_match(pattern: bytes, subject: bytes) -> bool:
    """Whether `subject` matches the Redis glob `pattern`."""
    return compile_glob(pattern).fullmatch(subject) is not None
