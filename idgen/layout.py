"""The id layout and its offline decoding, shared by the server's PARSE and the client.

    bit 63      : 0 (ids are positive signed 64-bit integers)
    bits 62..22 : milliseconds since the epoch (41 bits, about 69.7 years)
    bits 21..12 : worker id (10 bits)
    bits 11..0  : sequence within the millisecond (12 bits)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# The bit widths are the sequencer's (native/snowflake_pure.py is the reference).
from native.snowflake_pure import MAX_SEQUENCE, SEQUENCE_BITS, TIME_BITS, WORKER_BITS
from native.snowflake_pure import MAX_TIME as MAX_TIME_MS
from native.snowflake_pure import MAX_WORKER as MAX_WORKER_ID

__all__ = [
    "DEFAULT_EPOCH_MS", "IDS_PER_MS", "MAX_ID", "MAX_SEQUENCE", "MAX_TIME_MS", "MAX_WORKER_ID",
    "SEQUENCE_BITS", "TIME_BITS", "WORKER_BITS", "ParsedId", "parse", "years_left",
]
MAX_ID = (1 << 63) - 1
IDS_PER_MS = MAX_SEQUENCE + 1

DEFAULT_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MS_PER_YEAR = 365.25 * 24 * 3600 * 1000


@dataclass(frozen=True)
class ParsedId:
    """What an id says about itself: absolute time, worker and sequence."""

    id: int
    time_ms: int
    worker: int
    sequence: int

    @property
    def time_iso(self) -> str:
        """The id's time as ISO 8601 UTC with milliseconds, e.g. 2026-11-26T17:50:58.123Z."""
        stamp = datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.time_ms % 1000:03d}Z"


def parse(id_: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> ParsedId:
    """Decode an id without asking a server. ValueError if it is not a valid id."""
    if not 0 <= id_ <= MAX_ID:
        raise ValueError(f"id {id_} is outside 0..{MAX_ID}")
    relative = id_ >> (WORKER_BITS + SEQUENCE_BITS)
    worker = (id_ >> SEQUENCE_BITS) & MAX_WORKER_ID
    return ParsedId(id_, epoch_ms + relative, worker, id_ & MAX_SEQUENCE)


def years_left(now_ms: int, epoch_ms: int) -> float:
    """Years until the 41 time bits run out, counted from wall time `now_ms`."""
    return (epoch_ms + MAX_TIME_MS - now_ms) / MS_PER_YEAR
