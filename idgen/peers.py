"""Checking this worker against its peers: no shared worker id, no clock skew.

Each peer is asked `IDGEN.WHOAMI` (its worker id and wall clock). Its clock offset from
ours is estimated as NTP does for one exchange: the peer read its clock about half a round
trip before our reply arrived. The verdict (`judge`) is pure; `probe_peers` does the I/O.
Unreachable peers are skipped: a peer that is down cannot issue ids.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from dataclasses import dataclass

from core.clock import Clock
from core.resp_client import AsyncRespConnection, ReplyError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class PeerReading:
    """What one reachable peer said: its worker id and its clock minus ours (ms)."""

    address: str
    worker_id: int
    offset_ms: float


def judge(worker_id: int, readings: list[PeerReading], max_skew_ms: int) -> str | None:
    """The fault to declare (a RESP error text), or None when this worker may issue ids."""
    for reading in readings:
        if reading.worker_id == worker_id:
            return (
                f"CONFLICT worker id {worker_id} is also held by the peer at "
                f"{reading.address}; refusing to issue ids"
            )
    if not readings:
        return None
    # Offsets are peer minus us; ours to ourselves is 0, so the median includes this node.
    median = statistics.median([0.0] + [r.offset_ms for r in readings])
    if abs(median) > max_skew_ms:
        return (
            f"SKEW this clock is {-median:+.0f} ms from the median of the peers "
            f"(limit {max_skew_ms} ms); refusing to issue ids"
        )
    return None


async def probe_peer(address: str, clock: Clock, password: str | None) -> PeerReading | None:
    """Ask one peer who it is; None if it cannot be reached or answers nonsense."""
    host, _, port = address.rpartition(":")
    try:
        conn = await AsyncRespConnection.connect(
            host, int(port), timeout=PROBE_TIMEOUT_S, password=password
        )
    except (TimeoutError, OSError, ConnectionError, ReplyError) as exc:
        log.info("peer %s unreachable or refused us: %s", address, exc)
        return None
    try:
        sent = clock.monotonic()
        reply = await conn.call("IDGEN.WHOAMI")
        received = clock.monotonic()
        ours = clock.wall_ms()
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        peer_wall = int(fields[b"wall_ms"])
        offset = peer_wall - (ours - (received - sent) * 1000 / 2)
        return PeerReading(address, int(fields[b"worker_id"]), offset)
    except Exception as exc:  # a peer's bad answer must not stop this daemon
        log.warning("peer %s gave no usable answer: %s", address, exc)
        return None
    finally:
        await conn.close()


async def probe_peers(
    addresses: list[str], clock: Clock, password: str | None
) -> list[PeerReading]:
    results = await asyncio.gather(*(probe_peer(a, clock, password) for a in addresses))
    return [r for r in results if r is not None]
