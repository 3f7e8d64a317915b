"""TABLE.MOVE survives its coordinator: three `shardstore serve` processes, the keyspace
`default` on nodes 1-2 and `users` on node 3. A range table's rows are moved from `default`
to `users` in tiny batches. The configuration group's leader drives the moves, and it is
SIGKILLed in the middle of a copy, then restarted. The next leader resumes from the
recorded cursor: every row is read back from `users` with its value, and the shards of
`default` hold none."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from shardstore.client import ShardstoreClient
from tests.conftest import wait_for_tcp_port
from tests.shardstore_procs import as_map, serve_daemons

READY_S = 30.0
MOVE_S = 90.0
BATCH_KEYS = 2  # keys per copy entry: each range's copy takes many steps
ROWS = 120


class Procs:
    """The three processes (see the module header)."""

    def __init__(self, tmp: Path) -> None:
        self.daemons = serve_daemons(tmp, 1, 2, (
            "--keyspace", "default=1,2", "--keyspace", "users=3",
            "--move-batch-keys", str(BATCH_KEYS)))

    def client(self, index: int) -> redis.Redis:
        daemon = self.daemons[index]
        return redis.Redis(host=daemon.host, port=daemon.port, socket_timeout=20)

    def ask(self, *words: object) -> Any:
        """A command on the first node alive that answers."""
        for index, daemon in enumerate(self.daemons):
            if daemon.alive():
                try:
                    with self.client(index) as c:
                        return c.execute_command(*words)
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
        raise AssertionError("no node answers")

    def status(self, index: int) -> dict[bytes, Any]:
        with self.client(index) as c:
            return as_map(c.execute_command("SHARDSTORE.STATUS"))

    def ready(self) -> bool:
        try:
            infos = [self.client(i).execute_command("CLUSTER", "INFO") for i in range(3)]
        except redis.RedisError:
            return False
        return all(b"cluster_state:ok" in i for i in infos)

    def table_moves(self) -> list[dict[bytes, Any]]:
        return [as_map(m) for m in self.ask("SHARDSTORE.MOVES")]


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + MOVE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _rows() -> list[str]:
    months = ("2026-10", "2026-11", "2026-12", "2027-01")
    return [f"orders:{months[i % 4]}-{1 + i % 28:02d}:{i}" for i in range(ROWS)]


def _bound_to_users(procs: Procs) -> bool:
    info = as_map(procs.ask("TABLE.INFO", "orders"))
    return info[b"keyspace"] == b"users" and all(
        m[b"state"] == b"done" for m in procs.table_moves())


def test_a_table_move_resumes_after_its_coordinator_is_killed(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        for daemon in procs.daemons:  # all at once, then wait for each
            daemon.start(wait=False)
        for daemon in procs.daemons:
            wait_for_tcp_port(daemon.host, daemon.port, timeout=READY_S, proc=daemon.proc)
        _until(procs.ready, "the cluster")
        _move_and_kill(procs)
    finally:
        for daemon in procs.daemons:
            if daemon.alive():
                daemon.signal(signal.SIGTERM)  # all stop together
        for daemon in procs.daemons:
            daemon.stop()


def _move_and_kill(procs: Procs) -> None:
    assert procs.ask("TABLE.CREATE", "orders", "RANGE", "DATE", "SPLITS", "2026-11",
                     "2026-12") == b"OK"
    seeds = [d.address for d in procs.daemons]
    with ShardstoreClient(seeds) as client:
        for key in _rows():
            assert client.set(key, key)
    begun = procs.ask("TABLE.MOVE", "orders", "users")
    assert 1 <= len(begun) <= 3  # the coordinator's round may begin some first
    _until(lambda: any(m[b"state"] == b"copy" and m[b"copied"] > 2 * BATCH_KEYS
                       for m in procs.table_moves()), "a copy under way")
    leader = int(procs.status(0)[b"config_leader"])
    victim = procs.daemons[leader - 1]
    victim.kill()
    time.sleep(0.5)
    victim.start()
    _until(lambda: _bound_to_users(procs), "the move's end")
    _until(procs.ready, "the cluster again")
    with ShardstoreClient(seeds) as client:
        assert [client.get(key) for key in _rows()] == [k.encode() for k in _rows()]
    for index in range(3):
        counts = [as_map(r)[b"keys"] for r in procs.status(index)[b"shards"]]
        assert sum(counts) == (ROWS if index == 2 else 0), (index, counts)
