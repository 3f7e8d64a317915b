"""Ketama continuum: the compiled native._ketama, or its pure twin native.ketama_pure.

`Continuum` and `key_hash` come from native._ketama when it is built (else the twin, with a
warning; INFRA_PURE=1 forces the twin). Building a pool's points (`build`, `server_name`,
`digest_counts`, `server_points`) is done once per pool change and is always the reference
module's code. IMPLEMENTATION says which twin is in use ("native" or "pure"). See
native/ketama_pure.py for the rules.
"""

from __future__ import annotations

from native import load
from native.ketama_pure import (
    DEFAULT_PORT,
    DIGESTS_PER_SERVER,
    POINT_MAX,
    POINTS_PER_DIGEST,
    build,
    digest_counts,
    server_name,
    server_points,
)

_impl = load("native._ketama", "native.ketama_pure")

Continuum = _impl.Continuum
key_hash = _impl.key_hash
IMPLEMENTATION: str = "pure" if _impl.__name__ == "native.ketama_pure" else "native"

__all__ = [
    "DEFAULT_PORT",
    "DIGESTS_PER_SERVER",
    "IMPLEMENTATION",
    "POINTS_PER_DIGEST",
    "POINT_MAX",
    "Continuum",
    "build",
    "digest_counts",
    "key_hash",
    "server_name",
    "server_points",
]
