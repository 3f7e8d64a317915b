"""The memcached text protocol as a sans-I/O parser: bytes in, requests out.

`RequestParser` is the compiled native._mcproto when it is built, else its pure-Python twin
native.mcproto_pure (with a warning; INFRA_PURE=1 forces the twin). The twins have the same
API and behaviour (tests/test_native_mcproto.py proves it); native/mcproto_pure.py is the
reference and documents the framing rules. The same twin also supplies the fast lane
(`answer`) that answers a read holding one plain `get`/`gets` line (one key or many) or one
plain `set` without the general request loop, and `Lane`, the server's read callback built
around it. Everything else here (the request types, the limits, the token helpers) is the
reference module's own object, so `type(request) is Store` holds whichever parser produced
the request.
"""

from __future__ import annotations

from native import load
from native.mcproto_pure import (
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

_impl = load("native._mcproto", "native.mcproto_pure")

RequestParser = _impl.RequestParser
# The fast lane for a read that is one plain get/gets line or one `set` (native/mcproto_pure.py).
answer = _impl.answer
Lane = _impl.Lane
# Which twin is in use: "native" (compiled) or "pure" (the reference).
IMPLEMENTATION: str = "pure" if _impl.__name__ == "native.mcproto_pure" else "native"

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
    "answer",
    "has_noreply",
    "ntokens",
    "storage_header",
    "tokenize",
]
