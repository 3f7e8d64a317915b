"""Snowflake id issuing: the compiled native._snowflake, or its pure twin native.snowflake_pure.

Import from here. Both twins have the same API and rules (documented in snowflake_pure);
IMPLEMENTATION says which one was loaded ("native" or "pure"). INFRA_PURE=1 forces the twin.
"""

from __future__ import annotations

from native import load

_impl = load("native._snowflake", "native.snowflake_pure")

IMPLEMENTATION: str = "pure" if _impl.__name__ == "native.snowflake_pure" else "native"

TIME_BITS: int = _impl.TIME_BITS
WORKER_BITS: int = _impl.WORKER_BITS
SEQUENCE_BITS: int = _impl.SEQUENCE_BITS
MAX_TIME: int = _impl.MAX_TIME
MAX_WORKER: int = _impl.MAX_WORKER
MAX_SEQUENCE: int = _impl.MAX_SEQUENCE

OK: int = _impl.OK
EXHAUSTED: int = _impl.EXHAUSTED
BEHIND: int = _impl.BEHIND
LIMIT: int = _impl.LIMIT
OVERFLOW: int = _impl.OVERFLOW

Sequencer = _impl.Sequencer
make_id = _impl.make_id
parse_id = _impl.parse_id

__all__ = [
    "BEHIND",
    "EXHAUSTED",
    "IMPLEMENTATION",
    "LIMIT",
    "MAX_SEQUENCE",
    "MAX_TIME",
    "MAX_WORKER",
    "OK",
    "OVERFLOW",
    "SEQUENCE_BITS",
    "TIME_BITS",
    "WORKER_BITS",
    "Sequencer",
    "make_id",
    "parse_id",
]
