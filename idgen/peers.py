"""Checking this worker against its peers: no shared worker id, no clock skew.

Peers talk over the node-to-node port (core/rpc, a `NodeTransport` shared with nothing else
in idgen): each daemon registers the `idgen` service, whose one request (`whoami`) answers
the daemon's worker id, wall clock and epoch. The cluster secret is checked per connection
by core/rpc before any request. Peers are named by node id, as every daemon's `--peers
ID=HOST:PORT` does; an idgen node's id is its worker id unless it was started with `--id`,
and the worker id that counts is the one the peer answers, never the one its id suggests.

A peer's clock offset from ours is estimated as NTP does for one exchange: the peer read its
clock about half a round trip before its answer arrived. The verdict (`judge`) is pure;
`PeerCheck` does the I/O. Peers that cannot be asked (down, timed out, or refusing our
cluster secret, which core/rpc logs on both sides) are skipped: a peer that is down cannot
issue ids.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.clock import Clock
from core.rpc import Address, NodeTransport, RequestRefused, RpcError, UnknownGroup

log = logging.getLogger(__name__)

SERVICE = "idgen"  # the service name on the node port
GROUP = 0  # idgen has no groups
OP_WHOAMI = "whoami"
PROBE_TIMEOUT_S = 1.0
# The first request on a new connection also waits for the connect and the handshake.
FIRST_CONTACT_TIMEOUT_S = 5.0
ERR_UNKNOWN_REQUEST = "idgen: unknown request {!r} (expected {{'op': 'whoami'}})"
ERR_BAD_ANSWER = "answer is not a whoami reply: {!r}"


@dataclass(frozen=True)
class PeerReading:
    """What one reachable peer said: its worker id and its clock minus ours (ms)."""

    node_id: int
    address: str  # its node port, HOST:PORT
    worker_id: int
    offset_ms: float


def judge(worker_id: int, readings: list[PeerReading], max_skew_ms: int) -> str | None:
    """The fault to declare (a RESP error text), or None when this worker may issue ids."""
    for reading in readings:
        if reading.worker_id == worker_id:
            return (
                f"CONFLICT worker id {worker_id} is also held by peer {reading.node_id} at "
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


def clock_offset_ms(peer_wall_ms: int, sent_s: float, received_s: float, our_wall_ms: int) -> float:
    """The peer's clock minus ours: it read `peer_wall_ms` about half the round trip
    (`sent_s` to `received_s`, monotonic seconds) before we read `our_wall_ms`."""
    return peer_wall_ms - (our_wall_ms - (received_s - sent_s) * 1000 / 2)


def whoami_request() -> dict[str, str]:
    """The request body a peer check sends."""
    return {"op": OP_WHOAMI}


def read_whoami(answer: Any) -> tuple[int, int]:
    """(worker_id, wall_ms) from a peer's answer; ValueError if it is not one."""
    if not isinstance(answer, dict):
        raise ValueError(ERR_BAD_ANSWER.format(answer))
    worker_id, wall_ms = answer.get("worker_id"), answer.get("wall_ms")
    if type(worker_id) is not int or type(wall_ms) is not int:
        raise ValueError(ERR_BAD_ANSWER.format(answer))
    return worker_id, wall_ms


class WhoamiService:
    """The `idgen` service of the node port (a core.rpc ServiceHandler): answers `whoami`
    with `answer()`; anything else is refused, never a crash."""

    def __init__(self, answer: Callable[[], dict[str, int]]) -> None:
        self.answer = answer

    def on_message(self, peer_id: int, group: int, payload: Any) -> None:
        log.debug("ignoring a one-way message from node %d: %r", peer_id, payload)

    async def on_request(self, peer_id: int, group: int, payload: Any) -> dict[str, int]:
        if group != GROUP:
            raise UnknownGroup(SERVICE, group)
        if payload != whoami_request():
            raise RequestRefused(ERR_UNKNOWN_REQUEST.format(payload))
        return self.answer()


class PeerCheck:
    """Asks the peers `{node id: node port}` who they are, over `transport`.

    A peer that cannot be asked is logged when it goes away and when it comes back, not on
    every check (core/rpc logs why its connection fails).
    """

    def __init__(self, transport: NodeTransport, peers: Mapping[int, Address], clock: Clock,
                 timeout: float = PROBE_TIMEOUT_S,
                 first_contact_timeout: float = FIRST_CONTACT_TIMEOUT_S) -> None:
        self.transport = transport
        self.peers = dict(peers)
        self.clock = clock
        self.timeout = timeout
        self.first_contact_timeout = first_contact_timeout
        self.unreachable: set[int] = set()

    def address(self, node_id: int) -> str:
        host, port = self.peers[node_id]
        return f"{host}:{port}"

    async def probe(self, node_id: int) -> PeerReading | None:
        """Ask one peer; None if it cannot be asked or answers nonsense. On a new
        connection the peer is asked twice (the first time with the longer
        `first_contact_timeout`), so the round trip measured is one exchange and not also
        the connect and the handshake."""
        clock = self.clock
        request = self.transport.request
        try:
            if not self.transport.connected(node_id):
                await request(node_id, SERVICE, GROUP, whoami_request(),
                              self.first_contact_timeout)
            sent = clock.monotonic()
            answer = await request(node_id, SERVICE, GROUP, whoami_request(), self.timeout)
            received = clock.monotonic()
            worker_id, wall_ms = read_whoami(answer)
        except (RpcError, ValueError) as exc:
            self._down(node_id, exc)
            return None
        if node_id in self.unreachable:
            self.unreachable.discard(node_id)
            log.info("peer %d at %s answers again", node_id, self.address(node_id))
        offset = clock_offset_ms(wall_ms, sent, received, clock.wall_ms())
        return PeerReading(node_id, self.address(node_id), worker_id, offset)

    async def probe_all(self) -> list[PeerReading]:
        """Readings of every peer that answered, in node id order."""
        results = await asyncio.gather(*(self.probe(n) for n in sorted(self.peers)))
        return [r for r in results if r is not None]

    def _down(self, node_id: int, exc: Exception) -> None:
        if node_id not in self.unreachable:
            self.unreachable.add(node_id)
            log.warning("peer %d at %s skipped (cannot be asked): %s", node_id,
                        self.address(node_id), exc)
