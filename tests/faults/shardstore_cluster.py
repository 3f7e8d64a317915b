"""The shardstore drill's cluster: three nodes on harness hosts, a client host, control calls.

Strategy: hosts n1..n3 each run one `shardstore serve` node (3 shards x 3 replicas, every
node a member of every shard, small move batches so a reshard takes many steps); host n4
runs the clients and the drill's own commands, so a partition that cuts a node off cuts it
off from the clients too. Control calls go from a thread inside n4 to each node in turn
until one answers. `reshard` runs `shardstore admin reshard` as a process on n4. With
`faked_clock` the nodes run on their hosts' libfaketime clocks, for the nemesis's clock
faults (tests/faults/shardstore_nemesis.py).

`SlotClient` is the clients' routing: a slot map from CLUSTER SLOTS, MOVED followed (the
command was not run), ASK followed with ASKING on the same connection, and nothing else
retried: `call` raises whatever the node said or the socket did, and the caller decides
what the outcome means (for a write: unknown, since shardstore answers TRYAGAIN for a
write forwarded to a leader that did not answer, which may have been applied), except
`NotSent`: no connection could be made, so the command never left. After any failure the
next call refreshes the slot map first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError
from redis.retry import Retry

from native.crc16 import SLOT_COUNT, key_slot
from tests.faults.hosts import Harness
from tests.faults.node import Host, Node

__all__ = ["CLIENT_HOST", "NODES", "Cluster", "NotSent", "SlotClient"]

NODES = 3
CLIENT_HOST = "n4"
NODE_PORT = 7600
PEER_PORT = 7700
MOVE_BATCH_KEYS = 4  # keys per copy step: a move takes many steps, faults land inside it
CALL_TIMEOUT_S = 2.0  # a client's command
CONTROL_TIMEOUT_S = 5.0  # the drill's own commands
HANG_S = 90.0  # a wait longer than this is a hang, not slowness
POLL_S = 0.2
MAX_REDIRECTS = 5
CHECK_TIMEOUT_S = 120.0  # `shardstore admin check` takes at most this long
SECRET = "drill-cluster-secret"
LOG_TAIL_CHARS = 3000

Address = tuple[str, int]


class NotSent(redis.ConnectionError):
    """No connection to the node could be made: the command was never sent."""


def _connect(address: Address, timeout: float) -> redis.Redis:
    return redis.Redis(host=address[0], port=address[1], socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                       single_connection_client=True)


def _as_map(record: Any) -> dict[bytes, Any]:
    if isinstance(record, dict):
        return record
    return dict(zip(record[::2], record[1::2], strict=True))


class Cluster:
    """The three nodes and the drill's control calls from inside the client host."""

    def __init__(self, harness: Harness, workdir: Path, faked_clock: bool = False) -> None:
        self.harness = harness
        self.workdir = workdir
        self.faked_clock = faked_clock  # the nodes run on their hosts' faked wall clocks
        self.hosts = harness.hosts[:NODES]
        self.nodes: dict[str, Node] = {}
        self.pool: ThreadPoolExecutor = harness.executor(CLIENT_HOST)

    @property
    def addresses(self) -> list[Address]:
        return [(host.address, NODE_PORT) for host in self.hosts]

    def start(self) -> None:
        """Start the three nodes (at once: each waits for its peers) and wait until every
        one says the cluster is ok."""
        peers = ",".join(f"{h.index}={h.address}:{PEER_PORT}" for h in self.hosts)
        for host in self.hosts:
            argv = ["shardstore", "serve", "--id", str(host.index),
                    "--listen", f"{host.address}:{NODE_PORT}",
                    "--peer-listen", f"{host.address}:{PEER_PORT}", "--peers", peers,
                    "--data-dir", str(self.workdir / f"data-{host.name}"),
                    "--shards", "3", "--replicas", "3",
                    "--move-batch-keys", str(MOVE_BATCH_KEYS),
                    "--cluster-secret", SECRET,
                    "--protected-mode", "no"]  # the harness's network is the test's own
            self.nodes[host.name] = self.harness.spawn(host, argv, name=f"node-{host.name}",
                                                       faked_clock=self.faked_clock)
        self.until_ok()

    def until_ok(self) -> None:
        """Wait until every node answers CLUSTER INFO with state ok and three known nodes."""
        def all_ok() -> bool:
            for node in self.nodes.values():
                if not node.alive():
                    raise RuntimeError(f"node {node.host.name} exited:\n"
                                       f"{node.log()[-LOG_TAIL_CHARS:]}")
            for host in self.hosts:
                try:
                    info = self.ask(host, "CLUSTER", "INFO")
                except redis.RedisError:
                    return False
                if b"cluster_state:ok" not in info or b"cluster_known_nodes:3" not in info:
                    return False
            return True

        self.wait(all_ok, "every node to say cluster_state:ok")

    def ask(self, host: Host, *args: Any, timeout: float = CONTROL_TIMEOUT_S) -> Any:
        """One command to the node on `host`, sent from the client host."""
        def call() -> Any:
            with _connect((host.address, NODE_PORT), timeout) as conn:
                return conn.execute_command(*args)

        return self.pool.submit(call).result()

    def call(self, *args: Any) -> Any:
        """A command any node answers (unreachable nodes and errors: the next one)."""
        def attempt() -> Any:
            for host in self.hosts:
                try:
                    return (self.ask(host, *args),)
                except redis.RedisError:
                    continue
            return None

        return self.wait(attempt, f"a node to answer {args!r}")[0]

    def wait(self, probe: Callable[[], Any], what: str) -> Any:
        """Call `probe` every POLL_S until it returns a true value; TimeoutError after
        HANG_S (a hang)."""
        deadline = time.monotonic() + HANG_S
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"hang: no {what} in {HANG_S} s; logs in {self.workdir}")
            time.sleep(POLL_S)

    def shard_leader(self, shard: int) -> Node | None:
        """The node that says it leads `shard` (None when none says so now)."""
        for host in self.hosts:
            try:
                status = _as_map(self.ask(host, "SHARDSTORE.STATUS"))
            except redis.RedisError:
                continue
            for record in status[b"shards"]:
                record = _as_map(record)
                if record[b"shard"] == shard and record[b"role"] == b"leader":
                    return self.nodes[host.name]
        return None

    def slot_counts(self) -> dict[int, int]:
        """Slots owned per shard, by SHARDSTORE.SLOTS."""
        counts: dict[int, int] = {}
        for first, last, shard in self.call("SHARDSTORE.SLOTS"):
            counts[int(shard)] = counts.get(int(shard), 0) + int(last) - int(first) + 1
        return counts

    def moves(self) -> list[dict[bytes, Any]]:
        """Every move the configuration knows of, as maps (id, state, ...)."""
        return [_as_map(m) for m in self.call("SHARDSTORE.MOVES")]

    def until_moves_done(self) -> list[dict[bytes, Any]]:
        """Wait until no move is under way; the moves."""
        def finished() -> tuple[list[dict[bytes, Any]]] | None:
            moves = self.moves()
            return (moves,) if all(m[b"state"] == b"done" for m in moves) else None

        return self.wait(finished, "end of every move")[0]

    def admin(self, *words: str, name: str) -> Node:
        """`shardstore admin --node <n1>,<n2>,<n3> <words>` (the first node that answers)
        as a process on the client host."""
        node = ",".join(f"{host.address}:{NODE_PORT}" for host in self.hosts)
        return self.harness.spawn(CLIENT_HOST, ["shardstore", "admin", "--node", node,
                                                *words], name=name)

    def check(self) -> tuple[int, str]:
        """`shardstore admin check`: its exit status and output."""
        proc = self.admin("check", name=f"check-{time.monotonic_ns()}")
        assert proc.daemon.proc is not None
        code = proc.daemon.proc.wait(timeout=CHECK_TIMEOUT_S)
        return code, proc.log()


class SlotClient:
    """Redis Cluster routing for one client thread (module header); use it on the client
    host. `call(key, *args)` returns the reply or raises the error."""

    def __init__(self, seeds: list[Address], timeout: float = CALL_TIMEOUT_S) -> None:
        self.seeds = seeds
        self.timeout = timeout
        self.owners: list[Address | None] = [None] * SLOT_COUNT
        self.conns: dict[Address, redis.Redis] = {}
        self.stale = True

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def conn(self, address: Address) -> redis.Redis:
        if address not in self.conns:
            self.conns[address] = _connect(address, self.timeout)
        return self.conns[address]

    def drop(self, address: Address) -> None:
        conn = self.conns.pop(address, None)
        if conn is not None:
            conn.close()

    def refresh(self) -> None:
        """The slot map from the first seed that answers CLUSTER SLOTS (unchanged if none)."""
        for seed in self.seeds:
            try:
                slots = self.conn(seed).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                self.drop(seed)
                continue
            for row in slots:
                first, last, primary = int(row[0]), int(row[1]), row[2]
                host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                for slot in range(first, last + 1):
                    self.owners[slot] = (host, int(primary[1]))
            self.stale = False
            return

    def call(self, key: str, *args: Any) -> Any:
        """Run `args` on the owner of `key`'s slot, following MOVED and ASK only."""
        if self.stale:
            self.refresh()
        slot = key_slot(key.encode())
        address = self.owners[slot] or self.seeds[0]
        asking = False
        for _ in range(MAX_REDIRECTS):
            conn = self.conn(address)
            try:
                conn.connection.connect()  # connected already: a no-op
            except redis.RedisError as exc:
                self.stale = True
                self.drop(address)
                raise NotSent(f"no connection to {address[0]}:{address[1]}: {exc}") from exc
            try:
                if asking:
                    pipe = conn.pipeline(transaction=False)
                    pipe.execute_command("ASKING")
                    pipe.execute_command(*args)
                    return pipe.execute(raise_on_error=True)[1]
                return conn.execute_command(*args)
            except MovedError as exc:
                address, asking = (exc.host, int(exc.port)), False
                self.owners[slot] = address
            except AskError as exc:
                address, asking = (exc.host, int(exc.port)), True
            except redis.ResponseError:
                self.stale = True  # an error reply: the connection is still in step
                raise
            except redis.RedisError:
                self.stale = True
                self.drop(address)  # a timeout or a lost connection: start afresh
                raise
        raise redis.ResponseError(f"more than {MAX_REDIRECTS} redirects for {key!r}")
