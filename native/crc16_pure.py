"""CRC16 and Redis Cluster key slots, pure-Python reference (the Cython twin is
native/_crc16.pyx).

The checksum is CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection, no final
xor; the check value of b"123456789" is 0x31C3. Redis Cluster maps a key to one of
SLOT_COUNT slots as crc16(key) mod SLOT_COUNT, hashing only the key's hash tag when it has
one: the bytes between the first `{` and the first `}` after it, if there is at least one
byte between them. So `{user1000}.following` and `{user1000}.followers` share a slot, while
`foo{}{bar}` hashes whole (the first tag is empty) and `foo{{bar}}` hashes `{bar`.

Strategy: one 256-entry table built at import, one table step per byte.
"""

from __future__ import annotations

POLYNOMIAL = 0x1021
SLOT_COUNT = 16384
_SLOT_MASK = SLOT_COUNT - 1
_BITS = 16
_MASK = (1 << _BITS) - 1
_TOP_BIT = 1 << (_BITS - 1)


def _build_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLYNOMIAL) if crc & _TOP_BIT else crc << 1
            crc &= _MASK
        table.append(crc)
    return tuple(table)


_TABLE = _build_table()


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected a bytes-like object, not {type(data).__name__}")


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/XMODEM of `data`, an int in [0, 65535]. TypeError for anything not bytes-like."""
    crc = 0
    table = _TABLE
    for byte in _as_bytes(data):
        crc = ((crc << 8) & _MASK) ^ table[(crc >> 8) ^ byte]
    return crc


def hash_tag(key: bytes | bytearray | memoryview) -> bytes:
    """The part of `key` that decides its slot: its non-empty `{tag}` if any, else all of it."""
    raw = _as_bytes(key)
    start = raw.find(b"{")
    if start < 0:
        return raw
    end = raw.find(b"}", start + 1)
    if end < 0 or end == start + 1:
        return raw
    return raw[start + 1 : end]


def key_slot(key: bytes | bytearray | memoryview) -> int:
    """Redis Cluster's slot of `key`, in [0, SLOT_COUNT), hash tags honoured."""
    return crc16(hash_tag(key)) & _SLOT_MASK
