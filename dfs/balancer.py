"""The leader's balancer, sans I/O: moves chunks onto emptier chunk servers (a newly joined
one), a few at a time.

Strategy: a move is a copy plus a trim. When nothing is under-replicated, the servers that
are not decommissioning are sorted by how many replicas they hold; if the fullest holds
more than `BALANCE_SLACK` (and more than a tenth) above the emptiest, chunks of complete
files that the fullest holds and the emptiest does not are copied from the fullest to the
emptiest (a copy order in the fullest's next heartbeat reply, as re-replication hands them
out), at most `MAX_MOVES` copies in flight over the cluster. A copy that lands makes one
replica too many, and the placement's trim drops the one on the fullest holder: the
replication never falls below the target during a move.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["BALANCE_SLACK", "MAX_MOVES", "balance"]

MAX_MOVES = 4  # copies in flight at once for balancing (re-replication goes first)
BALANCE_SLACK = 2  # replicas of difference between fullest and emptiest that is balanced


class _Server(Protocol):
    server_id: str
    address: str
    chunks: dict[int, int]
    copies: list[list[Any]]


class _Placement(Protocol):
    servers: dict[str, Any]
    copying: dict[int, dict[str, float]]
    copy_timeout_s: float
    table: Any

    def leaving(self, server: Any) -> bool: ...


def _unbalanced(fullest: _Server, emptiest: _Server) -> bool:
    gap = len(fullest.chunks) - len(emptiest.chunks)
    return gap > BALANCE_SLACK and gap * 10 > len(fullest.chunks)


def balance(placement: _Placement, now: float) -> int:
    """Hand out up to MAX_MOVES (minus those in flight) copies from the fullest server to
    the emptiest (see the module header); how many were handed out."""
    for chunk in [c for c, targets in placement.copying.items()
                  if all(deadline <= now for deadline in targets.values())]:
        del placement.copying[chunk]  # failed or lost copies: the chunk may move again
    in_flight = sum(1 for targets in placement.copying.values()
                    for deadline in targets.values() if deadline > now)
    room = MAX_MOVES - in_flight
    staying = [s for s in placement.servers.values() if not placement.leaving(s)]
    if room <= 0 or len(staying) < 2:
        return 0
    staying.sort(key=lambda s: len(s.chunks))
    emptiest, fullest = staying[0], staying[-1]
    if not _unbalanced(fullest, emptiest):
        return 0
    handed = 0
    sealed = placement.table.chunks
    complete = {c for e in placement.table.files.values() if e.complete for c in e.chunks}
    for chunk, version in list(fullest.chunks.items()):
        if handed == room:
            break
        meta = sealed.get(chunk)
        if (chunk in emptiest.chunks or chunk in placement.copying or meta is None
                or chunk not in complete or version != meta.version):
            continue
        fullest.copies.append([chunk, version, emptiest.address])
        placement.copying[chunk] = {emptiest.server_id: now + placement.copy_timeout_s}
        handed += 1
    return handed
