"""RESP request parser for the daemons: the compiled native._resp, or its pure twin.

`RequestParser` comes from native._resp when it is built (else native.resp_pure, with a
warning; INFRA_PURE=1 forces the twin). Everything else is the reference module's own
object, so `except ProtocolError` catches the errors of either parser. See
native/resp_pure.py for the contract.
"""

from __future__ import annotations

from native import load
from native.resp_pure import (
    MAX_BUFFER_BYTES,
    MAX_BULK_BYTES,
    MAX_ELEMENTS,
    MAX_INLINE_BYTES,
    UNAUTH_MAX_BULK_BYTES,
    UNAUTH_MAX_ELEMENTS,
    ProtocolError,
    split_inline,
)

_impl = load("native._resp", "native.resp_pure")

RequestParser = _impl.RequestParser
encode_int_array = _impl.encode_int_array
# Which twin is in use: "native" (compiled) or "pure" (the reference).
IMPLEMENTATION: str = "pure" if _impl.__name__ == "native.resp_pure" else "native"

__all__ = [
    "IMPLEMENTATION",
    "MAX_BUFFER_BYTES",
    "MAX_BULK_BYTES",
    "MAX_ELEMENTS",
    "MAX_INLINE_BYTES",
    "UNAUTH_MAX_BULK_BYTES",
    "UNAUTH_MAX_ELEMENTS",
    "ProtocolError",
    "RequestParser",
    "encode_int_array",
    "split_inline",
]
