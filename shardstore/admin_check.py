"""`shardstore admin check`: the cluster's health as `[OK]`/`[ERR]` lines.

Strategy: from one node, the slot map (SHARDSTORE.SLOTS) and the node list (CLUSTER
NODES); from every node, its status (SHARDSTORE.STATUS: epoch, and per hosted shard its
role, applied and commit indexes and key count). Checks, each one line or more:

- every one of the 16384 slots is owned by a shard;
- every node reports the same configuration epoch;
- each shard's replicas are in sync: every member has applied the commit index its
  leader reported (waiting up to SYNC_WAIT_S for a busy cluster to catch up), and when
  they stand at the same index they hold the same number of keys;
- no move is stuck: a move under way must show progress within STUCK_WAIT_S;
- every shard has as many members as its replica count (a change of its replicas under
  way, shardstore/replicas.py, is shown).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from native.crc16 import SLOT_COUNT

__all__ = ["field_of", "run_checks"]

SYNC_WAIT_S = 5.0
STUCK_WAIT_S = 2.0
POLL_S = 0.2

Out = Callable[[str], None]


def field_of(record: Any, name: str) -> Any:
    """A field of a map reply (a RESP3 dict, or RESP2's flat list of pairs)."""
    if isinstance(record, dict):
        return record.get(name.encode(), record.get(name))
    pairs = dict(zip(record[::2], record[1::2], strict=True))
    return pairs.get(name.encode(), pairs.get(name))


def run_checks(client: redis.Redis, out: Out,
               connect_like: Callable[[str], redis.Redis]) -> int:
    """Print the checks (see the module header); 0 if every one passed, else 1."""
    failures = _slots(client, out)
    addresses = _addresses(client)
    statuses = _statuses(addresses, connect_like)
    failures += _epochs(statuses, out)
    failures += _replicas(addresses, statuses, connect_like, out)
    failures += _moves(client, out)
    failures += _members(client, out)
    out("[OK] All checks passed." if not failures else f"[ERR] {failures} check(s) failed.")
    return 0 if not failures else 1


def _slots(client: redis.Redis, out: Out) -> int:
    covered = sum(int(last) - int(first) + 1
                  for first, last, _ in client.execute_command("SHARDSTORE.SLOTS"))
    if covered == SLOT_COUNT:
        out(f"[OK] All {SLOT_COUNT} slots covered.")
        return 0
    out(f"[ERR] Only {covered} of {SLOT_COUNT} slots are owned by a shard.")
    return 1


def _addresses(client: redis.Redis) -> list[str]:
    text = client.execute_command("CLUSTER", "NODES")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return [line.split()[1].split("@")[0] for line in text.splitlines() if line.strip()]


def _statuses(addresses: list[str], connect_like: Callable[[str], redis.Redis]
              ) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for address in addresses:
        try:
            with connect_like(address) as node:
                found[address] = node.execute_command("SHARDSTORE.STATUS")
        except redis.RedisError as exc:
            found[address] = exc
    return found


def _epochs(statuses: dict[str, Any], out: Out) -> int:
    failures = 0
    epochs = {}
    for address, status in statuses.items():
        if isinstance(status, Exception):
            out(f"[ERR] Node {address} does not answer: {status}")
            failures += 1
        else:
            epochs[address] = int(field_of(status, "epoch"))
    if len(set(epochs.values())) == 1:
        out(f"[OK] All {len(epochs)} nodes agree: configuration epoch "
            f"{next(iter(epochs.values()))}.")
    elif epochs:
        out(f"[ERR] Nodes disagree on the configuration epoch: {epochs}")
        failures += 1
    return failures


def _replicas(addresses: list[str], statuses: dict[str, Any],
              connect_like: Callable[[str], redis.Redis], out: Out) -> int:
    deadline = time.monotonic() + SYNC_WAIT_S
    while True:
        lagging = _lagging(statuses)
        if not lagging or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
        statuses = _statuses(addresses, connect_like)
    shards = _by_shard(statuses)
    for sid, replicas in sorted(shards.items()):
        if sid in lagging:
            out(f"[ERR] Shard {sid}: replicas not in sync: {lagging[sid]}")
            continue
        indexes = {r["applied"] for r in replicas}
        keys = {r["keys"] for r in replicas}
        if len(indexes) == 1 and len(keys) > 1:
            out(f"[ERR] Shard {sid}: replicas at one index hold different key counts {keys}")
            lagging[sid] = "keys differ"
            continue
        out(f"[OK] Shard {sid}: {len(replicas)} replica(s) in sync, {max(keys)} keys.")
    return len(lagging)


def _by_shard(statuses: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    shards: dict[int, list[dict[str, Any]]] = {}
    for address, status in statuses.items():
        if isinstance(status, Exception):
            continue
        for record in field_of(status, "shards"):
            row = {name: field_of(record, name) for name in ("shard", "role", "applied",
                                                          "commit", "keys")}
            row = {k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in row.items()}
            row["address"] = address
            shards.setdefault(int(row["shard"]), []).append(row)
    return shards


def _lagging(statuses: dict[str, Any]) -> dict[int, str]:
    """shard id -> what lags, for shards whose replicas have not applied their leader's
    commit index (or that have no leader)."""
    lagging = {}
    for sid, replicas in _by_shard(statuses).items():
        leaders = [r for r in replicas if r["role"] == "leader"]
        if not leaders:
            lagging[sid] = "no leader"
            continue
        commit = leaders[0]["commit"]
        behind = [f"{r['address']} applied {r['applied']} < {commit}" for r in replicas
                  if r["applied"] < commit]
        if behind:
            lagging[sid] = "; ".join(behind)
    return lagging


def _under_way(client: redis.Redis) -> dict[int, str]:
    return {int(field_of(m, "id")): _progress(m) for m in client.execute_command("SHARDSTORE.MOVES")
            if field_of(m, "state") not in (b"done", "done")}


def _moves(client: redis.Redis, out: Out) -> int:
    first = _under_way(client)
    if not first:
        out("[OK] No move under way.")
        return 0
    time.sleep(STUCK_WAIT_S)
    later = _under_way(client)
    failures = 0
    for move_id, progress in sorted(first.items()):
        if move_id not in later:
            out(f"[OK] Move {move_id} finished meanwhile.")
        elif later[move_id] != progress:
            out(f"[OK] Move {move_id} under way: {later[move_id]}.")
        else:
            out(f"[ERR] Move {move_id} stuck: no progress in {STUCK_WAIT_S:.0f}s ({progress}).")
            failures += 1
    return failures


def _progress(move: Any) -> str:
    state = field_of(move, "state")
    state = state.decode() if isinstance(state, bytes) else str(state)
    return (f"{state}, {int(field_of(move, 'copied'))} keys copied, "
            f"{int(field_of(move, 'purged'))} purged")


def _members(client: redis.Redis, out: Out) -> int:
    """Every shard has its replica count of members (shardstore/replicas.py); a change of
    them under way is shown, not failed."""
    failures = 0
    for record in client.execute_command("SHARDSTORE.SHARDS"):
        sid, members = int(field_of(record, "shard")), list(field_of(record, "members"))
        wanted = int(field_of(record, "replicas") or len(members))
        joining = int(field_of(record, "joining") or 0)
        leaving = int(field_of(record, "leaving") or 0)
        if joining or leaving:
            out(f"[OK] Shard {sid}: replica change under way (joining node {joining or '-'}, "
                f"leaving node {leaving or '-'}).")
        elif len(members) < wanted:
            out(f"[ERR] Shard {sid}: {len(members)} replica(s), fewer than its {wanted}.")
            failures += 1
    return failures
