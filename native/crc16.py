"""CRC16 and Redis Cluster key slots: the compiled native._crc16, or its pure twin.

`crc16`, `hash_tag` and `key_slot` come from native._crc16 when it is built (else
native.crc16_pure, with a warning; INFRA_PURE=1 forces the twin). IMPLEMENTATION says which
twin is in use ("native" or "pure"). See native/crc16_pure.py for the rules.
"""

from __future__ import annotations

from native import load
from native.crc16_pure import POLYNOMIAL, SLOT_COUNT

_impl = load("native._crc16", "native.crc16_pure")

crc16 = _impl.crc16
hash_tag = _impl.hash_tag
key_slot = _impl.key_slot
IMPLEMENTATION: str = "pure" if _impl.__name__ == "native.crc16_pure" else "native"

__all__ = ["IMPLEMENTATION", "POLYNOMIAL", "SLOT_COUNT", "crc16", "hash_tag", "key_slot"]
