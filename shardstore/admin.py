"""`shardstore admin ...`: reshard, rebalance and check a running cluster over RESP.

Strategy: the command line talks to any one node (`--node HOST:PORT`) with the SHARDSTORE.*
commands (shardstore/admin_commands.py), which any node answers and forwards to the
configuration group's leader; the moves themselves run inside the cluster, so this tool
may stop at any time and the moves it began still finish. Transient errors (no leader,
TRYAGAIN, a node down or paused) are ridden out by asking again, any node of `--node`,
with backoff, for up to `--timeout` seconds (shardstore/admin_retry.py); a permanent error
fails at once.

- `reshard --from A --to B --slots N [--batch K]`: the N highest slots of shard A go to
  shard B, K slots per move, one move at a time; a progress bar shows slots moved and
  keys copied (one line per move when stderr is not a terminal);
- `rebalance`: moves slots from the shards with the most to those with the fewest until
  every shard has 16384 / shards (the first ones one more), as reshard does;
- `add-node --keyspace K --id N`: the running node N (serving no keyspace) joins K with a
  new shard holding no slots yet (KEYSPACE.ADDNODE); `rebalance` then moves slots to it.
  With `--replica-of all|ID,...` it joins with no shard of its own and becomes a replica
  of those shards instead (shardstore/admin_replicas.py: the leader's snapshot is
  streamed to it and it catches up), with a progress bar;
- `remove-node --keyspace K --id N`: N's replica of each shard moves to the least loaded
  node of K without one (added, caught up, then N removed, a leader handing over first),
  or is dropped when the shard keeps its replica count without it, with a progress bar;
  refused before anything changes when a shard's replica would have nowhere to go (unless
  its slots can move to shards without N, as reshard moves them). Then N leaves K
  (KEYSPACE.REMOVENODE, which refuses while N still holds data). `--node` must be a node
  of K. Run again after an interruption, it waits for what is under way and goes on;
- `move cancel ID`: roll back a move still copying (SHARDSTORE.MOVE CANCEL): the source
  serves its keys again and the target's copies are purged, with a progress line of keys
  purged; exit status 1 if the move went on instead (its target took writes under ASKING,
  which a roll-back would lose) or had ended;
- `check`: every slot owned, every node agreeing on the epoch, every shard's replicas
  having applied what its leader has committed, no move stuck; `[OK]`/`[ERR]` lines as
  `redis-cli --cluster check` prints, exit status 1 on any `[ERR]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import redis

from core import client_cli, daemon
from native.crc16 import SLOT_COUNT
from shardstore.admin_check import field_of, run_checks
from shardstore.admin_replicas import (
    ERR_NO_ROOM,
    ERR_NOT_THIS_KEYSPACE,
    add_replicas,
    leave_replicas,
    plan_leave,
    shard_records,
)
from shardstore.admin_retry import (
    DEFAULT_TIMEOUT_S,
    AdminDeadline,
    RetryingClient,
    add_once,
    begin_move,
    cancel_once,
    no_retry,
    remove_once,
)
from shardstore.launch import CLIENT_PORT_BASE, KEYSPACES, LOOPBACK

__all__ = ["add_admin_parser", "add_node", "cancel_move", "check", "plan_rebalance", "rebalance",
           "remove_node", "reshard", "run_admin"]

DEFAULT_BATCH_SLOTS = 128
POLL_S = 0.2
PING_CONNECT_S = 2.0  # a node that does not take a connection this soon counts as down
MOVE_TIMEOUT_S = 600.0  # one move with no progress for this long: give up waiting
BAR_WIDTH = 30
ERR_NOT_ENOUGH = "shard {} owns {} slots, fewer than the {} asked for"
ERR_NODE = "--node must be HOST:PORT, got {!r}"
ERR_OTHER_KEYSPACE = ERR_NOT_THIS_KEYSPACE
NODE_FLAG = "--node"
SERVERS_ENV = "SHARDSTORE_SERVERS"  # the nodes admin asks when --node is not given
# make run's nodes of its default keyspace (shardstore/launch.py)
MAKE_RUN_NODES = tuple(f"{LOOPBACK}:{CLIENT_PORT_BASE + n}" for n in KEYSPACES["default"])

Out = Callable[[str], None]


def add_admin_parser(sub: Any) -> None:
    """The `admin` subcommand and its actions on the command line's subparsers."""
    admin = sub.add_parser("admin", help="reshard, rebalance or check a running cluster")
    admin.add_argument(NODE_FLAG, default=None,
                       help=f"any node, HOST:PORT[,HOST:PORT...]: the first that answers "
                            f"(default: ${SERVERS_ENV}, else make run's "
                            f"{','.join(MAKE_RUN_NODES)})")
    admin.add_argument("--password", default=None, help="the cluster's requirepass")
    admin.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       help="seconds to ride out transient errors (no leader, TRYAGAIN, a "
                            "node down) by asking again, any --node, before giving up "
                            f"(default {DEFAULT_TIMEOUT_S:g})")
    actions = admin.add_subparsers(dest="admin_action", required=True)
    move = actions.add_parser("reshard", help="move N slots from one shard to another")
    move.add_argument("--from", dest="source", type=int, required=True, help="shard id")
    move.add_argument("--to", dest="target", type=int, required=True, help="shard id")
    move.add_argument("--slots", type=int, required=True, help="how many slots")
    move.add_argument("--batch", type=int, default=DEFAULT_BATCH_SLOTS,
                      help="slots per move (each move fences its slots while it copies)")
    even = actions.add_parser("rebalance", help="spread the slots evenly over the shards")
    even.add_argument("--batch", type=int, default=DEFAULT_BATCH_SLOTS, help="slots per move")
    actions.add_parser("check", help="slots owned, replicas in sync, no move stuck")
    for action, text in (("add-node", "a running node joins a keyspace (then rebalance)"),
                         ("remove-node", "move a node's slots away, then it leaves")):
        member = actions.add_parser(action, help=text)
        member.add_argument("--keyspace", default="default", help="the keyspace's name")
        member.add_argument("--id", dest="node_id", type=int, required=True,
                            help="the node's id (its --id)")
        if action == "remove-node":
            member.add_argument("--batch", type=int, default=DEFAULT_BATCH_SLOTS,
                                help="slots per move")
        else:
            member.add_argument("--replica-of", dest="replica_of", default=None,
                                help="`all` or shard ids (comma-separated): join with no "
                                     "shard of its own, as a replica of these shards")
    one = actions.add_parser("move", help="act on one move (see SHARDSTORE.MOVES)")
    one_actions = one.add_subparsers(dest="move_action", required=True)
    cancel = one_actions.add_parser("cancel", help="roll back a move still copying")
    cancel.add_argument("move_id", type=int, help="the move's id (SHARDSTORE.MOVES)")


def connect(node: str, password: str | None) -> redis.Redis:
    host, sep, port = node.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(ERR_NODE.format(node))
    return redis.Redis(host=host or "127.0.0.1", port=int(port), password=password,
                       socket_timeout=30, socket_connect_timeout=PING_CONNECT_S,
                       retry=no_retry())


def admin_servers(flag: str | None, environ: Mapping[str, str]) -> client_cli.Servers:
    """The nodes `--node` names, else $SHARDSTORE_SERVERS, else make run's, and which of
    the three it was. ValueError when the text names no node, ConfigError (core.daemon)
    when an item is not HOST:PORT."""
    if flag is not None:
        text, source = flag, NODE_FLAG
    elif environ.get(SERVERS_ENV, "").strip():
        text, source = environ[SERVERS_ENV], f"${SERVERS_ENV}"
    else:
        text, source = ",".join(MAKE_RUN_NODES), client_cli.SOURCE_DEFAULT
    nodes = [daemon.parse_hostport(item.strip()) for item in text.split(",") if item.strip()]
    if not nodes:
        raise ValueError(client_cli.ERR_NO_NODE.format(source))
    return client_cli.Servers(nodes, source)


def answering_node(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The first node of `admin_servers` that answers a PING (core/client_cli.py);
    NoNodeAnswers, naming them and where they came from, when none does within
    client_cli.PROBE_WITHIN_S."""
    servers = admin_servers(flag, os.environ if environ is None else environ)
    host, port = client_cli.first_answering(servers, "shardstore node", SERVERS_ENV,
                                            flag=NODE_FLAG)
    return f"{host}:{port}"


def retrying_client(args: argparse.Namespace) -> RetryingClient:
    """A RetryingClient (shardstore/admin_retry.py) over the nodes of `args`, the first
    that answers a PING first; NoNodeAnswers when none does at the start."""
    first = answering_node(args.node)
    servers = admin_servers(args.node, os.environ)
    nodes = [f"{host}:{port}" for host, port in servers.nodes]
    at = nodes.index(first) if first in nodes else 0
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT_S)
    return RetryingClient(nodes[at:] + nodes[:at], args.password, timeout, sys.stderr,
                          connect=lambda node: connect(node, args.password))


def run_admin(args: argparse.Namespace) -> int:
    """Carry out the admin action `args` names; the exit status."""
    try:
        client = retrying_client(args)
        with client:
            if args.admin_action == "reshard":
                reshard(client, args.source, args.target, args.slots, args.batch)
                return 0
            if args.admin_action == "rebalance":
                rebalance(client, args.batch)
                return 0
            if args.admin_action == "move":
                return cancel_move(client, args.move_id)
            if args.admin_action == "add-node":
                add_node(client, args.keyspace, args.node_id, replica_of=args.replica_of)
                return 0
            if args.admin_action == "remove-node":
                remove_node(client, args.keyspace, args.node_id, args.batch)
                return 0
            return check(client, print)
    except (ValueError, redis.RedisError, daemon.ConfigError, client_cli.NoNodeAnswers,
            AdminDeadline) as exc:
        print(f"shardstore admin: {exc}", file=sys.stderr)
        return 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def slot_owners(client: redis.Redis) -> dict[int, list[int]]:
    """shard id -> its slots, from SHARDSTORE.SLOTS; every shard of the keyspace, those
    with none too (SHARDSTORE.SHARDS: a node's new shard)."""
    owners: dict[int, list[int]] = {
        int(field_of(s, "shard")): [] for s in client.execute_command("SHARDSTORE.SHARDS")}
    for first, last, sid in client.execute_command("SHARDSTORE.SLOTS"):
        owners.setdefault(int(sid), []).extend(range(int(first), int(last) + 1))
    return owners


def reshard(client: redis.Redis | RetryingClient, source: int, target: int, count: int, batch: int,
            stream: TextIO | None = None) -> int:
    """Move the `count` highest slots of `source` to `target`, `batch` per move; the
    number of keys copied."""
    owned = sorted(slot_owners(client).get(source, []))
    if count > len(owned):
        raise ValueError(ERR_NOT_ENOUGH.format(source, len(owned), count))
    chosen = owned[len(owned) - count:]
    bar = Progress(count, stream or sys.stderr)
    copied = 0
    for i in range(0, count, max(1, batch)):
        slots = chosen[i:i + max(1, batch)]
        move_id = begin_move(client, source, target, slots)
        if move_id is None:  # an earlier try began it and it has finished
            bar.show(i + len(slots), copied)
            continue
        before = copied
        copied += wait_for_move(client, move_id,
                                lambda n, done=i, base=before: bar.show(done, base + n))
        bar.show(i + len(slots), copied, final_move=move_id)
    bar.close()
    return copied


def wait_for_move(client: redis.Redis, move_id: int, show: Callable[[int], None]) -> int:
    """Poll SHARDSTORE.MOVES until move `move_id` is finished; the keys it copied."""
    copied, last_change = 0, time.monotonic()
    while True:
        moves = {int(field_of(m, "id")): m for m in client.execute_command("SHARDSTORE.MOVES")}
        move = moves.get(move_id)
        if move is None:  # finished long ago (its record is gone)
            return copied
        now_copied = int(field_of(move, "copied"))
        if field_of(move, "state") in (b"done", "done"):
            show(now_copied)
            return now_copied
        if now_copied != copied:
            copied, last_change = now_copied, time.monotonic()
            show(copied)
        if time.monotonic() - last_change > MOVE_TIMEOUT_S:
            raise ValueError(f"move {move_id} made no progress in {MOVE_TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)


def add_node(client: redis.Redis, keyspace: str, node_id: int,
             stream: TextIO | None = None, replica_of: str | None = None) -> int:
    """Node `node_id` joins `keyspace`; the id of its new shard. With `replica_of` (`all`
    or shard ids) it becomes a replica of those shards instead (0)."""
    if replica_of is not None:
        shards = add_replicas(client, keyspace, node_id, replica_of, stream or sys.stderr)
        (stream or sys.stderr).write(f"node {node_id} joined keyspace {keyspace} as a "
                                     f"replica of shards {shards}\n")
        return 0
    shard = add_once(client, keyspace, node_id)
    (stream or sys.stderr).write(
        f"node {node_id} joined keyspace {keyspace} with shard {shard} (no slots yet): "
        f"`shardstore admin rebalance` gives it its share\n")
    return shard


def remove_node(client: redis.Redis, keyspace: str, node_id: int, batch: int,
                stream: TextIO | None = None) -> int:
    """Move `node_id`'s replicas to other nodes of `keyspace` (the slots of a shard whose
    replica cannot move, to shards without it), then the node leaves `keyspace`; the keys
    copied by slot moves."""
    out = stream or sys.stderr
    mine = [field_of(k, "name") for k in client.execute_command("KEYSPACE.LIST")
            if int(field_of(k, "mine"))]
    serves = _text(mine[0]) if mine else ""
    if serves != keyspace:
        raise ValueError(ERR_OTHER_KEYSPACE.format(serves, keyspace, keyspace))
    records = shard_records(client)
    nodes = [int(n) for k in client.execute_command("KEYSPACE.LIST")
             if _text(field_of(k, "name")) == keyspace for n in field_of(k, "nodes")]
    movable, stuck = plan_leave(records, nodes, node_id, keyspace)
    donors = [(r.shard, r.slots) for r in stuck if r.slots]
    takers = [r.shard for r in records if node_id not in r.members or r.shard in movable]
    if donors and not takers:
        first = next(r for r in stuck if r.slots)
        raise ValueError(ERR_NO_ROOM.format(first.shard, first.replicas, keyspace, node_id,
                                            len(nodes) - 1))
    moved = leave_replicas(client, movable, node_id, out) if movable else 0
    copied = 0
    for donor, slots in donors:
        for i, taker in enumerate(takers):
            share = slots // len(takers) + (1 if i < slots % len(takers) else 0)
            if share:
                out.write(f"shard {donor} -> shard {taker}: {share} slots\n")
                copied += reshard(client, donor, taker, share, batch, out)
    remove_once(client, keyspace, node_id)
    out.write(f"node {node_id} left keyspace {keyspace} ({moved} replicas moved, {copied} "
              f"keys moved)\n")
    return copied


def cancel_move(client: redis.Redis, move_id: int, stream: TextIO | None = None) -> int:
    """Cancel move `move_id` and wait for its roll-back, showing keys purged from the
    target; 0 once rolled back, 1 if the move went on instead."""
    out = stream or sys.stderr
    cancel_once(client, move_id)
    purged, last_change = -1, time.monotonic()
    while True:
        moves = {int(field_of(m, "id")): m for m in client.execute_command("SHARDSTORE.MOVES")}
        move = moves.get(move_id)
        state = field_of(move, "state") if move is not None else b"done"
        state = state.decode() if isinstance(state, bytes) else str(state)
        now_purged = int(field_of(move, "purged")) if move is not None else purged
        if state == "done" and move is not None and not int(field_of(move, "cancelled") or 0):
            out.write(f"move {move_id} went on and finished: its target took writes under "
                      f"ASKING that a roll-back would lose\n")
            return 1
        if state == "done":
            out.write(f"move {move_id} cancelled: {max(0, now_purged)} keys purged from the "
                      f"target\n")
            return 0
        if state != "cancel":
            out.write(f"move {move_id} goes on (state {state}): its target took writes "
                      f"under ASKING that a roll-back would lose\n")
            return 1
        if now_purged != purged:
            purged, last_change = now_purged, time.monotonic()
            out.write(f"\rcancelling move {move_id}: {purged} keys purged from the target")
            out.flush()
        if time.monotonic() - last_change > MOVE_TIMEOUT_S:
            raise ValueError(f"move {move_id} made no progress in {MOVE_TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)


def plan_rebalance(owners: dict[int, list[int]]) -> list[tuple[int, int, int]]:
    """[(from shard, to shard, slots)] that leave every shard with SLOT_COUNT / shards
    slots (the lowest shard ids one more when it does not divide)."""
    ids = sorted(owners)
    base, extra = divmod(SLOT_COUNT, len(ids))
    want = {sid: base + (1 if i < extra else 0) for i, sid in enumerate(ids)}
    surplus = {sid: len(owners[sid]) - want[sid] for sid in ids}
    plan = []
    for giver in [s for s in ids if surplus[s] > 0]:
        for taker in [s for s in ids if surplus[s] < 0]:
            amount = min(surplus[giver], -surplus[taker])
            if amount > 0:
                plan.append((giver, taker, amount))
                surplus[giver] -= amount
                surplus[taker] += amount
    return plan


def rebalance(client: redis.Redis, batch: int, stream: TextIO | None = None) -> int:
    """Carry out `plan_rebalance`; the keys copied."""
    plan = plan_rebalance(slot_owners(client))
    out = stream or sys.stderr
    if not plan:
        out.write("the slots are balanced already\n")
    copied = 0
    for giver, taker, amount in plan:
        out.write(f"shard {giver} -> shard {taker}: {amount} slots\n")
        copied += reshard(client, giver, taker, amount, batch, out)
    return copied


class Progress:
    """A progress bar of slots moved and keys copied on `stream`: redrawn in place on a
    terminal, else one line per finished move."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.tty = stream.isatty()

    def show(self, slots: int, keys: int, final_move: int | None = None) -> None:
        filled = BAR_WIDTH * slots // self.total
        text = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {slots}/{self.total} slots "
                f"moved, {keys} keys copied")
        if self.tty:
            self.stream.write("\r" + text)
        elif final_move is not None:
            self.stream.write(f"{text} (move {final_move} done)\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def check(client: redis.Redis, out: Out) -> int:
    """Print the checks of the module header (shardstore/admin_check.py); 0 if all
    passed, else 1."""
    return run_checks(client, out, connect_like=_connect_like(client))


def _connect_like(client: redis.Redis) -> Callable[[str], redis.Redis]:
    kwargs = client.connection_pool.connection_kwargs
    password = kwargs.get("password")

    def make(address: str) -> redis.Redis:
        return connect(address, password)

    return make
