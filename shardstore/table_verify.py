"""Checksums of a range move's rows on its source and its target, compared before the
hand-over.

Strategy: when the copy of a move of range-table rows is over, the rows no longer change
on either side. The source's fence refuses every write to them since the freeze, and
the target does not serve them until the configuration's OP_END. `Verifier.verify`, which
the coordinator (shardstore/migrate.py's Mover, through its `verify` hook) calls just
before OP_END, asks a replica of each side for the checksum of the rows in pages of
DIGEST_KEYS keys, in key order from the same cursor. A page's checksum is xxhash64 over
each live row's key, value and expiry, each length-prefixed. The two sides must agree
on every page: the same checksum, the same count and the same next cursor. A mismatch
stops the hand-over. The move stays frozen on its source, the coordinator logs it, and
it tries again on its next round, so the source stays authoritative.

Each replica answers as core/rpc service SERVICE_DIGEST:
[keys, after, limit, now_ms] -> [checksum hex, rows, next cursor or None]. It answers
after a read barrier on the group, so it sees everything committed before the request.
A row that expired by `now_ms` (the coordinator's clock, the same for both sides) is
left out, because the two sides' expiry sweeps need not have reached it alike. The rows
of a HASH table in a set of slots (a HASH table's move) are checked the same way: they
lie within the table's prefix in key order. Slot moves are not checked: a slot set
spreads over the whole key order.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

import xxhash

from core.raft.errors import RaftError
from core.raft.host import RaftHost
from core.rpc import RpcError, UnknownGroup
from shardstore.cluster import ClusterConfig
from shardstore.keysets import KIND_POSITIONS, KIND_TABLE_SLOTS, KeySet
from shardstore.migrate import MoveStalled
from shardstore.moves import Move

__all__ = ["DIGEST_KEYS", "SERVICE_DIGEST", "DigestService", "Verifier", "digest_rows"]

log = logging.getLogger("shardstore.table_verify")

SERVICE_DIGEST = "shardstore.digest"
DIGEST_KEYS = 2048  # rows one checksum page covers
LENGTH = struct.Struct(">IIq")  # key length, value length, expiry
REPLY_OK = "ok"
REPLY_REFUSED = "refused"
ERR_NOT_HERE = "this node hosts no replica of group {}"
ERR_MALFORMED = "malformed digest request"
ERR_MISMATCH = ("rows of move {} differ between shard {} and shard {} after {!r}: {} "
                "against {}; the hand-over waits")


def digest_rows(store: Any, keys: KeySet, after: bytes | None, limit: int,
                now_ms: int) -> tuple[str, int, bytes | None]:
    """(xxhash64 hex, rows, the last row's key or None when no row is left) of the live
    rows of `keys` in `store` after key `after` (None: from the first), `limit` at most."""
    first, end = keys.scan_bounds()
    digest = xxhash.xxh64()
    count = 0
    cursor = after if after is not None else first
    if after is None and store.get(first) is not None:
        count += _add(digest, store, keys, first, now_ms)
    while True:
        walked = store.keys_after(cursor, limit)
        for key in walked:
            if end is not None and key >= end:
                return digest.hexdigest(), count, None
            count += _add(digest, store, keys, key, now_ms)
            if count >= limit:
                return digest.hexdigest(), count, key
        if len(walked) < limit:
            return digest.hexdigest(), count, None
        cursor = walked[-1]


def _add(digest: Any, store: Any, keys: KeySet, key: bytes, now_ms: int) -> int:
    if key not in keys:
        return 0
    found = store.get(key)
    if found is None or 0 < found[1] <= now_ms:
        return 0
    value, expire = found
    digest.update(LENGTH.pack(len(key), len(value), expire))
    digest.update(key)
    digest.update(value)
    return 1


class DigestService:
    """The core/rpc service SERVICE_DIGEST of a node (see the module header)."""

    def __init__(self, host: RaftHost, store_of: Callable[[int], Any | None],
                 timeout_s: float) -> None:
        self.host = host
        self.store_of = store_of  # group id -> the store of the shard hosted here
        self.timeout_s = timeout_s

    def on_message(self, peer_id: int, group_id: int, payload: Any) -> None:
        """The service takes requests only."""

    async def on_request(self, peer_id: int, group_id: int, payload: Any) -> Any:
        if self.host.group(group_id) is None:
            raise UnknownGroup(SERVICE_DIGEST, group_id)
        return await self.serve(group_id, payload)

    async def serve(self, group_id: int, payload: Any) -> list[Any]:
        group, store = self.host.group(group_id), self.store_of(group_id)
        if group is None or store is None:
            return [REPLY_REFUSED, ERR_NOT_HERE.format(group_id)]
        try:
            keys = KeySet.from_wire(payload[0])
            after, limit, now_ms = payload[1], int(payload[2]), int(payload[3])
        except (TypeError, IndexError, ValueError):
            return [REPLY_REFUSED, ERR_MALFORMED]
        try:
            await group.read_barrier(timeout=self.timeout_s)
        except (RaftError, TimeoutError) as exc:
            return [REPLY_REFUSED, repr(exc)]
        return [REPLY_OK, *digest_rows(store, keys, after, limit, now_ms)]


class VerifyNode(Protocol):
    """What the verifier needs of shardstore.server.ShardNode."""

    me: int
    host: RaftHost

    @property
    def full_config(self) -> ClusterConfig: ...

    def now_ms(self) -> int: ...


class Verifier:
    """Compares a move's rows on both sides (see the module header); `verified` and
    `mismatches` count rows checked equal and pages found different on this node."""

    def __init__(self, node: VerifyNode, service: DigestService, timeout_s: float,
                 page_keys: int = DIGEST_KEYS) -> None:
        self.node = node
        self.service = service
        self.timeout_s = timeout_s
        self.page_keys = page_keys
        self.verified = 0
        self.mismatches = 0

    async def verify(self, move: Move) -> None:
        """Return when both sides hold the same rows; MoveStalled otherwise."""
        if move.keys.kind not in (KIND_POSITIONS, KIND_TABLE_SLOTS):
            return
        after: bytes | None = None
        now = self.node.now_ms()
        while True:
            request = [move.keys.to_wire(), after, self.page_keys, now]
            source = await self._ask(move.source, request)
            target = await self._ask(move.target, request)
            if source != target:
                self.mismatches += 1
                text = ERR_MISMATCH.format(move.move_id, move.source, move.target, after,
                                           source, target)
                log.warning("%s", text)
                raise MoveStalled(text)
            self.verified += int(source[1])
            after = source[2]
            if after is None:
                return

    async def _ask(self, shard_id: int, payload: list[Any]) -> list[Any]:
        config = self.node.full_config
        shard = config.shards[shard_id]
        hint = config.leaders.get(shard_id, (0, 0))[0]
        errors = []
        for member in dict.fromkeys([hint, *shard.members]):
            if member not in shard.members:
                continue
            try:
                if member == self.node.me:
                    reply = await self.service.serve(shard.group, payload)
                else:
                    reply = await self.node.host.transport.request(
                        member, SERVICE_DIGEST, shard.group, payload, self.timeout_s)
            except (RpcError, TimeoutError, OSError) as exc:
                errors.append(f"node {member}: {exc!r}")
                continue
            if reply[0] == REPLY_OK:
                return list(reply[1:])
            errors.append(f"node {member}: {reply[1]}")
        raise MoveStalled(f"checksums of shard {shard_id}: " + "; ".join(errors))
