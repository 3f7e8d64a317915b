"""The leader's live view of the chunk servers, sans I/O: where each chunk's replicas are,
placement of new chunks, leases, safe mode, re-replication and garbage collection.

Strategy: nothing here is in the Raft log. The leader rebuilds it from heartbeats: a full
report lists every replica of a server ([chunk, version, size]), an incremental one those
installed and dropped since the report it names as its base; the leader applies an
incremental report only on top of that base and otherwise answers {"full": true} (so a
lost reply or a new leader costs a full report), acknowledges each report it applied
("ack": its sequence number), and ignores a late copy of a report older than the last one
it applied from the same server process ("boot"). A replica whose chunk the table
(dfs/chunks.py) no longer has (an orphan) or whose version is older than the table's (a
stale replica that came back) is put on the server's delete list, which the heartbeat reply
carries; since a replica is no longer reported again and again, the chunks the table
dropped or moved to a new version (ChunkTable.changed) are rechecked against the servers
holding them at every heartbeat.
A server not heard from for `dead_after_s` is dead: its replicas no longer count.

- Placement: `replication` servers (default 3), one per rack while racks last, each rack's
  and server's least used first (ties broken by the injected random source).
- Leases: the first server of a new chunk's chain is its primary, with a lease of
  `lease_ms` that the writer renews (`renew`); a new allocation of the same chunk bumps
  its version, so an old primary's replica is stale wherever it shows up.
- Safe mode: a new leader knows no replica. It refuses allocations (ERR_SAFE_MODE, a
  TRYAGAIN, so clients retry) until `min_servers` servers have reported and at least
  `safe_ratio` of the complete files' chunks have a replica; then it leaves for its term.
- Re-replication (`plan`): every chunk of a complete file with fewer live replicas than the
  target is copied, fewest replicas first: a live holder is told (in its heartbeat reply)
  to copy it to a server that does not hold it (another rack first), as many copies at
  once as replicas are missing. A copy in flight counts until its target reports the
  chunk or `copy_timeout_s` passes. A chunk with more replicas than the
  target loses the extra ones: a decommissioning server's first, then the fullest server's.
- Decommissioning (the mark is in the Raft log: ChunkTable.decommissioning): a marked
  server gets no new chunk and its replicas do not count toward the target, so `plan`
  re-replicates everything on it (fewest replicas first) from it or another holder; once a
  chunk has its target elsewhere, the marked server's replica is dropped. It may be stopped
  when it holds nothing (`drains`).
- Balancing (dfs/balancer.py): with nothing under-replicated, a few chunks at a time are
  copied from the fullest server to the emptiest (a newly joined one); the trim then drops
  the extra replica from the fullest.
- Abandoned writes: a file still being written (`*._COPYING_`, not complete) whose writer
  has not allocated or renewed for `abandon_after_s` is deleted (the leader's upkeep), so
  its chunks become orphans.
Time enters as `now` (monotonic seconds) arguments.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dfs.balancer import balance
from dfs.chunks import ChunkTable

__all__ = [
    "DEFAULT_DEAD_AFTER_S", "DEFAULT_LEASE_MS", "DEFAULT_REPLICATION", "ERR_NO_SERVERS",
    "ERR_SAFE_MODE", "Placement", "ServerState", "balance",
]

DEFAULT_REPLICATION = 3
DEFAULT_DEAD_AFTER_S = 10.0
DEFAULT_LEASE_MS = 60_000  # GFS's lease length
DEFAULT_SAFE_RATIO = 0.999  # HDFS's dfs.namenode.safemode.threshold-pct
DEFAULT_COPY_TIMEOUT_S = 30.0
DEFAULT_ABANDON_AFTER_S = 3600.0  # HDFS's lease hard limit: a writer silent this long is gone
MAX_COPIES_PER_REPLY = 4  # copies one heartbeat reply hands a server
MIN_FREE_BYTES = 64 * 1024 * 1024  # a server with less free space gets no new chunk

ERR_SAFE_MODE = ("TRYAGAIN safe mode: {} of {} chunk servers needed have reported, {} of "
                 "{} chunks have a replica")
ERR_NO_SERVERS = "ERR no chunk server can take a chunk ({} live, {} needed at least)"


@dataclass
class ServerState:
    """One chunk server as its heartbeats describe it."""

    server_id: str
    address: str
    rack: str
    free: int = 0
    used: int = 0
    last_seen: float = 0.0
    chunks: dict[int, int] = field(default_factory=dict)  # chunk -> version held
    boot: int | None = None  # the server process's id: sequence numbers restart with it
    seq: int | None = None  # the sequence number of the last report applied
    deletes: set[int] = field(default_factory=set)
    # chunks `recheck` found stale or orphaned here: deleted at this server's next report
    # unless that report shows a current replica (one written since: not to be deleted)
    suspects: set[int] = field(default_factory=set)
    copies: list[list[Any]] = field(default_factory=list)

    def row(self, now: float) -> list[Any]:
        """`dfs admin report`'s row: id, address, rack, chunks, used, free, seconds since
        its last heartbeat."""
        return [self.server_id, self.address, self.rack, len(self.chunks), self.used,
                self.free, round(now - self.last_seen, 1)]


class Placement:
    """The live view (see the module header)."""

    def __init__(self, table: ChunkTable, rng: random.Random, *,
                 replication: int = DEFAULT_REPLICATION,
                 dead_after_s: float = DEFAULT_DEAD_AFTER_S,
                 lease_ms: int = DEFAULT_LEASE_MS, min_servers: int = 1,
                 safe_ratio: float = DEFAULT_SAFE_RATIO,
                 copy_timeout_s: float = DEFAULT_COPY_TIMEOUT_S,
                 abandon_after_s: float = DEFAULT_ABANDON_AFTER_S) -> None:
        self.table = table
        self.rng = rng
        self.replication = replication
        self.dead_after_s = dead_after_s
        self.lease_ms = lease_ms
        self.min_servers = min_servers
        self.safe_ratio = safe_ratio
        self.copy_timeout_s = copy_timeout_s
        self.abandon_after_s = abandon_after_s
        self.activity: dict[int, float] = {}  # inode being written -> its writer's last call
        self.servers: dict[str, ServerState] = {}
        # chunk -> {target server id: when that copy counts as failed}: copies in flight
        self.copying: dict[int, dict[str, float]] = {}
        self.leases: dict[int, tuple[str, float]] = {}  # chunk -> (primary, expiry)
        self.chains: dict[int, list[str]] = {}  # chunk -> its last write's servers
        self.safe = True

    def reset(self) -> None:
        """Forget everything (a new term of leadership): safe mode again."""
        self.servers.clear()
        self.copying.clear()
        self.leases.clear()
        self.chains.clear()
        self.activity.clear()
        self.table.changed.clear()  # the full reports to come are checked as they arrive
        self.safe = True

    # -- heartbeats -------------------------------------------------------------------------

    def heartbeat(self, now: float, report: dict[str, Any]) -> dict[str, Any]:
        """Take one server's report (full or incremental, see the module header); its
        reply: {"delete": [chunk ids], "copy": [[chunk, version, target address], ...],
        "ack": the report's sequence number}, or {"full": true} for an incremental report
        that does not follow the last one applied."""
        sid = str(report["id"])
        full = "chunks" in report
        server = self.servers.get(sid)
        same_run = server is not None and server.boot == report.get("boot")
        if same_run and report.get("seq", 0) <= (server.seq or -1):
            return {"delete": [], "copy": []}  # a late copy of a report already passed
        if not full and not (same_run and server.seq == report["base"]):
            return {"delete": [], "copy": [], "full": True}
        self.recheck()
        if server is None:
            server = self.servers[sid] = ServerState(sid, str(report["addr"]),
                                                     str(report["rack"]))
        server.address, server.rack = str(report["addr"]), str(report["rack"])
        server.free, server.used, server.last_seen = int(report["free"]), int(
            report["used"]), now
        server.boot, server.seq = report.get("boot"), report.get("seq")
        if full:
            server.chunks = {}
        for chunk in () if full else report["removed"]:
            server.chunks.pop(int(chunk), None)
        for chunk, version, _size in report["chunks"] if full else report["added"]:
            self._take(server, int(chunk), int(version))
        for chunk in list(self.copying):
            targets = self.copying[chunk]
            for sid in [t for t in targets
                        if t in self.servers and chunk in self.servers[t].chunks]:
                del targets[sid]  # arrived
            if not targets:
                del self.copying[chunk]
        for chunk in report.get("bad", ()):
            server.chunks.pop(int(chunk), None)
        server.deletes.update(c for c in server.suspects if c not in server.chunks)
        server.suspects = set()
        self._check_safe()
        reply: dict[str, Any] = {"delete": sorted(server.deletes), "copy": server.copies}
        if server.seq is not None:
            reply["ack"] = server.seq
        server.deletes, server.copies = set(), []
        return reply

    def _take(self, server: ServerState, chunk: int, version: int) -> None:
        """A replica the server reports: kept, or put on its delete list."""
        if chunk in server.deletes:
            return  # ordered deleted (this reply carries the order): not a replica
        if self._keeps(chunk, version):
            server.chunks[chunk] = version
        else:
            server.chunks.pop(chunk, None)
            server.deletes.add(chunk)

    def recheck(self) -> None:
        """The replicas of the chunks the table dropped or moved to a new version since the
        last look: those no longer kept stop counting, and are deleted at their server's
        next report unless it shows a current replica of the chunk. (Ordered deleted at
        once, a stale replica's order could reach its server after it took the chunk's new
        version, and a delete order names a chunk, not a version: the new replica went.)"""
        changed, self.table.changed = self.table.changed, set()
        for chunk in changed:
            for server in self.servers.values():
                version = server.chunks.get(chunk)
                if version is not None and not self._keeps(chunk, version):
                    del server.chunks[chunk]  # no longer counts; deleted at the server's
                    server.suspects.add(chunk)  # next report unless a new one came since

    def _keeps(self, chunk: int, version: int) -> bool:
        meta = self.table.chunks.get(chunk)
        if meta is None:
            return chunk >= self.table.next_chunk  # unknown to this log: leave it be
        return version >= meta.version

    def expire(self, now: float) -> list[str]:
        """Declare the servers not heard from for `dead_after_s` dead; their ids."""
        dead = [sid for sid, s in self.servers.items() if now - s.last_seen > self.dead_after_s]
        for sid in dead:
            del self.servers[sid]
        return dead

    def bad_replica(self, chunk: int, address: str) -> bool:
        """A client read damage from the replica of `chunk` at `address`: it no longer
        counts and its server is told to delete it. False if no such replica is known."""
        for server in self.servers.values():
            if server.address == address and chunk in server.chunks:
                del server.chunks[chunk]
                server.deletes.add(chunk)
                return True
        return False

    # -- reads ------------------------------------------------------------------------------

    def leaving(self, server: ServerState) -> bool:
        """True when `server` is marked decommissioning (by its id or address)."""
        marks = self.table.decommissioning
        return bool(marks) and (server.server_id in marks or server.address in marks)

    def _replicas(self, chunk: int, staying: bool = False) -> int:
        """Live current replicas of `chunk` (`staying`: on servers not decommissioning)."""
        meta = self.table.chunks.get(chunk)
        version = meta.version if meta else 0
        return sum(1 for s in self.servers.values() if s.chunks.get(chunk) == version
                   and not (staying and self.leaving(s)))

    def holders(self, chunk: int) -> list[ServerState]:
        """The live servers holding the current version of `chunk`."""
        meta = self.table.chunks.get(chunk)
        if meta is None:
            return []
        return [s for s in self.servers.values() if s.chunks.get(chunk) == meta.version]

    def locate(self, chunk: int) -> list[str]:
        """The addresses of the current replicas of `chunk`, in random order."""
        found = [s.address for s in self.holders(chunk)]
        self.rng.shuffle(found)
        return found

    def under_replicated(self) -> list[tuple[int, int]]:
        """(chunk, live replicas) of complete files below the target, fewest first (replicas
        on decommissioning servers do not count)."""
        rows = [(meta.chunk, self._replicas(meta.chunk, staying=True))
                for meta in self.table.sealed_chunks()]
        return sorted(((c, n) for c, n in rows if n < self.replication), key=lambda r: r[1])

    def _check_safe(self) -> None:
        if not self.safe:
            return
        sealed = [meta.chunk for meta in self.table.sealed_chunks()]
        found = sum(1 for c in sealed if self._replicas(c))
        if len(self.servers) >= self.min_servers and found >= self.safe_ratio * len(sealed):
            self.safe = False

    def safe_mode_text(self) -> str:
        """ERR_SAFE_MODE with the current figures."""
        sealed = [meta.chunk for meta in self.table.sealed_chunks()]
        found = sum(1 for c in sealed if self._replicas(c))
        return ERR_SAFE_MODE.format(len(self.servers), self.min_servers, found, len(sealed))

    # -- placement and leases ---------------------------------------------------------------

    def choose(self, count: int, exclude: Iterable[str] = ()) -> list[ServerState]:
        """Up to `count` servers (not in `exclude`, with MIN_FREE_BYTES free), one per rack
        first (see the header)."""
        shunned = set(exclude)
        left = [s for s in self.servers.values() if s.server_id not in shunned
                and s.free >= MIN_FREE_BYTES and not self.leaving(s)]
        self.rng.shuffle(left)
        left.sort(key=lambda s: (len(s.chunks), s.used))
        chosen: list[ServerState] = []
        racks: set[str] = set()
        for pass_ in (0, 1):
            for server in left:
                if len(chosen) == count:
                    return chosen
                if server in chosen or (pass_ == 0 and server.rack in racks):
                    continue
                chosen.append(server)
                racks.add(server.rack)
        return chosen

    def grant(self, now: float, chunk: int, avoid: Iterable[str] = ()) -> list[str]:
        """Servers for a new (version of a) chunk, the primary first, with its lease; the
        servers at the `avoid` addresses only when there is no other."""
        shunned = set(avoid)
        chosen = self.choose(self.replication, exclude=[
            s.server_id for s in self.servers.values() if s.address in shunned])
        if not chosen:  # (fewer replicas than the target are re-replicated once complete)
            chosen = self.choose(self.replication)
        if not chosen:
            raise ValueError(ERR_NO_SERVERS.format(len(self.servers), 1))
        self.leases[chunk] = (chosen[0].server_id, now + self.lease_ms / 1000)
        self.chains[chunk] = [s.server_id for s in chosen]
        return [s.address for s in chosen]

    def renew(self, now: float, chunk: int) -> bool:
        """Extend the lease of `chunk`; False when it has none."""
        lease = self.leases.get(chunk)
        if lease is None:
            return False
        self.leases[chunk] = (lease[0], now + self.lease_ms / 1000)
        return True

    def release(self, chunks: Iterable[int]) -> None:
        """The writer closed the file: every server of each chunk's last chain has it (the
        writer had their acknowledgement), so they count as replicas before their next
        report does; the leases end."""
        for chunk in chunks:
            self.leases.pop(chunk, None)
            meta = self.table.chunks.get(chunk)
            for sid in self.chains.pop(chunk, []):
                server = self.servers.get(sid)
                if meta is not None and server is not None:
                    server.chunks[chunk] = meta.version

    # -- abandoned writes -------------------------------------------------------------------

    def touch(self, inode: int, now: float) -> None:
        """The writer of file `inode` is alive (it allocated or renewed)."""
        self.activity[inode] = now

    def abandoned(self, writing: list[tuple[str, int]], now: float) -> list[str]:
        """Of the files being written ((path, inode): dfs.chunks.writing_files), those whose
        writer has not called for `abandon_after_s` (counted from when this leader first
        saw the file, if it never heard from the writer)."""
        seen = {inode for _, inode in writing}
        for inode in [i for i in self.activity if i not in seen]:
            del self.activity[inode]
        return [path for path, inode in writing
                if now - self.activity.setdefault(inode, now) > self.abandon_after_s]

    # -- re-replication ---------------------------------------------------------------------

    def plan(self, now: float) -> int:
        """Hand out copies for under-replicated chunks and deletes for over-replicated ones
        (see the module header); how many copies were handed out."""
        handed = 0
        for chunk, count in self.under_replicated():
            # (a copy to a server since declared dead will not arrive: asked again at once)
            pending = {t: d for t, d in self.copying.get(chunk, {}).items()
                       if d > now and t in self.servers}
            self.copying[chunk] = pending
            holders = self.holders(chunk)
            for _ in range(self.replication - count - len(pending)):
                if not holders:
                    break  # lost everywhere: nothing to copy from
                source = min(holders, key=lambda s: len(s.copies))
                if len(source.copies) >= MAX_COPIES_PER_REPLY:
                    break
                target = self._copy_target(holders, pending)
                if target is None:
                    break
                source.copies.append([chunk, source.chunks[chunk], target.address])
                pending[target.server_id] = now + self.copy_timeout_s
                handed += 1
        if not handed and not self.under_replicated():
            handed = balance(self, now)
        self._trim_extra()
        return handed

    def _copy_target(self, holders: list[ServerState],
                     pending: dict[str, float]) -> ServerState | None:
        racks = {s.rack for s in holders} | {self.servers[t].rack for t in pending
                                             if t in self.servers}
        others = self.choose(len(self.servers),
                             exclude=[s.server_id for s in holders] + list(pending))
        for server in others:
            if server.rack not in racks:
                return server
        return others[0] if others else None

    def _trim_extra(self) -> None:
        for meta in self.table.sealed_chunks():
            holders = self.holders(meta.chunk)
            if len(holders) <= self.replication:
                continue
            staying = [s for s in holders if not self.leaving(s)]
            if len(staying) < self.replication:
                continue  # a decommissioning holder still counts until the copies land
            drop = [s for s in holders if self.leaving(s)]
            staying.sort(key=lambda s: (len(s.chunks), s.used), reverse=True)
            drop += staying[:len(staying) - self.replication]
            for server in drop:
                del server.chunks[meta.chunk]
                server.deletes.add(meta.chunk)

    def drains(self) -> list[list[Any]]:
        """Each decommissioning mark: [mark, server id ("" when no live server has it),
        chunks it still holds]; 0 chunks: it may be stopped."""
        rows = []
        for mark in sorted(self.table.decommissioning):
            found = [s for s in self.servers.values() if mark in (s.server_id, s.address)]
            rows.append([mark, found[0].server_id if found else "",
                         len(found[0].chunks) if found else 0])
        return rows
