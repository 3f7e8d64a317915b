"""The memcached text protocol as a sans-I/O parser: bytes in, requests out.

`RequestParser` is the compiled kvcache._mcproto when it is built, else its pure-Python twin
kvcache.mcproto_pure (kvcache/twins.py chooses). The twins have the same API and behaviour
(tests/test_kvcache_mcproto.py proves it); kvcache/mcproto_pure.py is the reference and
documents the framing rules. The same twin also supplies `Lane`, the server's read callback,
whose fast lane answers a read holding one plain `get`/`gets` line (one key or many) or one
plain `set` without the general request loop. Everything else here (the request types, the
limits, the token helpers) is the reference module's own object, so `type(request) is
Store` holds whichever parser produced the request.
"""

from __future__ import annotations

from kvcache.mcproto_pure import (
    CLASSIC_STORAGE,
    LINE_WITHOUT_NEWLINE_BYTES,
    MAX_KEY_BYTES,
    MAX_MULTIGET_LINE_BYTES,
    MAX_TOKENS,
    READ_BUFFER_BYTES,
    Close,
    Reject,
    Request,
    Store,
    has_noreply,
    ntokens,
    storage_header,
    tokenize,
)
from kvcache.twins import implementation
from kvcache.twins import mcproto as _impl

RequestParser = _impl.RequestParser
# A connection's read callback, fast lane first (kvcache/mcproto_pure.py: `answer`, `Lane`).
Lane = _impl.Lane
# Which twin is in use: "native" (compiled) or "pure" (the reference).
IMPLEMENTATION: str = implementation(_impl)

__all__ = [
    "CLASSIC_STORAGE",
    "IMPLEMENTATION",
    "Lane",
    "LINE_WITHOUT_NEWLINE_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MULTIGET_LINE_BYTES",
    "MAX_TOKENS",
    "READ_BUFFER_BYTES",
    "Close",
    "Reject",
    "Request",
    "RequestParser",
    "Store",
    "has_noreply",
    "ntokens",
    "storage_header",
    "tokenize",
]
