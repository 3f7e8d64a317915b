"""Every reply line kvcache sends, each written once, spelled as memcached 1.6.18 spells it
(including its quirks: the double space in the delete usage text, "are" in only one of the
two "options flags too long" errors).

Names ending in `_LINE` are complete lines with their CRLF; the others are the text of an
error without CRLF, for callers that add a prefix or pass it through `line()`.
"""

from __future__ import annotations

VERSION = "1.6.18"

CRLF = b"\r\n"


def line(text: str | bytes) -> bytes:
    """`text` as one reply line."""
    return (text.encode() if isinstance(text, str) else text) + CRLF


def unless(noreply: bool, reply: str | bytes) -> bytes:
    """`reply` (a complete reply, or the text of a line) unless noreply silences it."""
    if noreply:
        return b""
    return reply if isinstance(reply, bytes) else line(reply)


# -- classic replies --------------------------------------------------------------------
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
EXISTS = b"EXISTS\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DELETED = b"DELETED\r\n"
TOUCHED = b"TOUCHED\r\n"
END = b"END\r\n"


def value_block(key: bytes, flags: int, value: bytes, cas: int | None = None) -> bytes:
    """One hit of get/gets/gat/gats: the VALUE line (with the CAS for gets/gats) and data."""
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(value), value)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(value), cas, value)


OK = b"OK\r\n"
RESET = b"RESET\r\n"
VERSION_LINE = line("VERSION " + VERSION)

# -- classic errors -------------------------------------------------------------------------
ERROR = b"ERROR\r\n"
BAD_FORMAT = "CLIENT_ERROR bad command line format"
BAD_DATA_CHUNK = "CLIENT_ERROR bad data chunk"
BAD_COMMAND_LINE = "CLIENT_ERROR bad command line"
TOO_LARGE = "SERVER_ERROR object too large for cache"
OUT_OF_MEMORY_STORING = "SERVER_ERROR out of memory storing object"
OUT_OF_MEMORY = "SERVER_ERROR out of memory"
INVALID_EXPTIME = "CLIENT_ERROR invalid exptime argument"
INVALID_DELTA = "CLIENT_ERROR invalid numeric delta argument"
NON_NUMERIC = "CLIENT_ERROR cannot increment or decrement non-numeric value"
DELETE_USAGE = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
STATS_DETAIL_USAGE = "CLIENT_ERROR usage: stats detail on|off|dump"
CACHEDUMP_ILLEGAL_SLAB = "CLIENT_ERROR Illegal slab id"
SHUTDOWN_DISABLED = "ERROR: shutdown not enabled"
SHUTDOWN_BAD_MODE = "CLIENT_ERROR invalid shutdown mode"
MEMLIMIT_TOO_SMALL = "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"
MEMLIMIT_NOT_MEGABYTES = "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes"
MEMLIMIT_FAILED = "MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust"
TOO_MANY_CONNECTIONS = "ERROR Too many open connections"
CRAWLER_DISABLED = "CLIENT_ERROR lru crawler disabled"
CRAWLER_BAD_CLASS = "BADCLASS invalid class id"
CRAWLER_SLEEP_TOO_LONG = "CLIENT_ERROR sleep must be one second or less"
CRAWLER_START_FAILED = "ERROR failed to start lru crawler thread"
CRAWLER_STOP_FAILED = "ERROR failed to stop lru crawler thread"
REASSIGN_SAME = "SAME src and dst class are identical"
REASSIGN_BAD_CLASS = "BADCLASS invalid src or dst class id"
REASSIGN_NO_SPARE = "NOSPARE source class has no spare pages"
LRU_PCTS_TOO_HIGH = "ERROR hot and warm pcts must not exceed 80"
LRU_FACTORS_NOT_POSITIVE = "ERROR hot/warm age factors must be greater than 0"
WATCH_NOT_ALLOWED = "CLIENT_ERROR watch commands not allowed"
FLUSH_DISABLED = "CLIENT_ERROR flush_all not allowed"
CACHEDUMP_DISABLED = "CLIENT_ERROR stats cachedump not allowed"
METADUMP_DISABLED = "ERROR metadump not allowed"
INTERNAL_ERROR = "SERVER_ERROR internal error"  # ours: a bug, logged; the connection closes

# -- meta replies ---------------------------------------------------------------------------
META_HIT = b"HD"
META_VALUE = b"VA"
META_MISS = b"EN"
META_NOT_FOUND = b"NF"
META_NOT_STORED = b"NS"
META_EXISTS = b"EX"
META_NOOP_LINE = b"MN\r\n"
META_DEBUG = b"ME"

# -- meta errors ------------------------------------------------------------------------------
META_DUPLICATE_FLAG = "CLIENT_ERROR duplicate flag"
META_INVALID_FLAG = "CLIENT_ERROR invalid flag"
META_INVALID_OR_DUPLICATE = "CLIENT_ERROR invalid or duplicate flag"
META_BAD_TOKEN = "CLIENT_ERROR bad token in command line format"
META_KEY_DECODE = "CLIENT_ERROR error decoding key"
META_M_TOKEN_LENGTH = "CLIENT_ERROR incorrect length for M token"
META_INVALID_INITIAL = "CLIENT_ERROR invalid numeric initial value"
META_INVALID_DELTA = "CLIENT_ERROR invalid numeric delta value"
META_MG_FLAGS_TOO_LONG = "CLIENT_ERROR options flags are too long"
META_FLAGS_TOO_LONG = "CLIENT_ERROR options flags too long"
META_OPAQUE_TOO_LONG = "CLIENT_ERROR opaque token too long"
META_MS_BAD_MODE = "CLIENT_ERROR invalid mode for ms M token"
META_MA_BAD_MODE = "CLIENT_ERROR invalid mode for ma M token"
META_NEW_ITEM_NO_MEMORY = "SERVER_ERROR Out of memory allocating new item"
