"""`shardstore admin` rides out transient errors (shardstore/admin_retry.py, issue #12).

A fake node in a thread speaks just enough RESP (the SHARDSTORE.* admin commands) to be
resharded: it answers TRYAGAIN a few times before taking a move, or takes one and loses
the reply (UNKNOWN), or refuses it for good. Beside it, a port nothing listens on (a node
gone) and a socket that takes connections and never answers (a node under SIGSTOP). And
three real `shardstore serve` processes, the first `--node` of admin paused by SIGSTOP.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shardstore import admin
from shardstore.admin_retry import (
    AdminDeadline,
    RetryingClient,
    begin_move,
    cancel_once,
    is_transient,
    no_retry,
    remove_once,
)
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon
from tests.shardstore_procs import READY_S, serve_daemons

TRYAGAIN = b"-TRYAGAIN the cluster cannot take the request now: no leader\r\n"
UNKNOWN = b"-UNKNOWN the write may or may not have been applied (timeout): read first\r\n"
REFUSED = b"-ERR slot 99 is not owned by shard 1\r\n"
SHORT_S = 0.5  # the test clients' socket timeout (a paused node costs this much)


def _encode(value: Any) -> bytes:
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, (bytes, str)):
        data = value.encode() if isinstance(value, str) else value
        return b"$%d\r\n%s\r\n" % (len(data), data)
    if isinstance(value, dict):
        flat = [x for pair in value.items() for x in pair]
        return _encode(flat)
    return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)


class FakeNode:
    """Shards 1 (slots 0-99) and 2 (100-199); moves finish at once, copying 3 keys each.
    `tryagain` MOVEs are refused TRYAGAIN first; with `lose_reply`, the first MOVE is
    applied but answered UNKNOWN; with `refuse`, every MOVE is refused for good."""

    def __init__(self, tryagain: int = 0, lose_reply: bool = False,
                 refuse: bool = False) -> None:
        self.owner = {s: 1 if s < 100 else 2 for s in range(200)}
        self.moves: list[dict[bytes, Any]] = []
        self.tryagain, self.lose_reply, self.refuse = tryagain, lose_reply, refuse
        self.move_calls = 0
        self.nodes, self.empty, self.member_calls = [1, 2, 3], {3}, 0
        self.lock = threading.Lock()

    def answer(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        with self.lock:
            if name == b"PING":
                return b"+PONG\r\n"
            if name == b"HELLO":  # redis-py's handshake when it speaks RESP3
                proto = int(args[1]) if len(args) > 1 else 2
                return (b"%%1\r\n$5\r\nproto\r\n:%d\r\n" % proto if proto == 3
                        else _encode([b"proto", 2]))
            if name == b"SHARDSTORE.SHARDS":
                return _encode([{b"shard": sid, b"members": [1], b"slots": n}
                                for sid, n in sorted(self._counts().items())])
            if name == b"SHARDSTORE.SLOTS":
                return _encode([[s, s, sid] for s, sid in sorted(self.owner.items())])
            if name == b"SHARDSTORE.MOVES":
                return _encode(self.moves)
            if name == b"SHARDSTORE.MOVE":
                return self._move(args)
            if name == b"KEYSPACE.LIST":
                return _encode([{b"name": b"default", b"nodes": self.nodes,
                                 b"shards": sorted(set(self.owner.values()) | self.empty),
                                 b"mine": 1}])
            if name in (b"KEYSPACE.ADDNODE", b"KEYSPACE.REMOVENODE"):
                return self._member(name, int(args[2]))
        return b"+OK\r\n"  # CLIENT SETINFO and the like, which redis-py sends first

    def _counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for sid in self.owner.values():
            counts[sid] = counts.get(sid, 0) + 1
        return counts

    def _move(self, args: list[bytes]) -> bytes:
        self.move_calls += 1
        if args[1].upper() == b"CANCEL":
            self.moves[int(args[2]) - 1][b"state"] = b"cancel"
            return b"+OK\r\n"
        if self.refuse:
            return REFUSED
        if self.tryagain > 0:
            self.tryagain -= 1
            return TRYAGAIN
        source, target, slots = int(args[1]), int(args[2]), args[4].decode()
        for part in slots.split(","):
            first, _, last = part.partition("-")
            for s in range(int(first), int(last or first) + 1):
                assert self.owner[s] == source
                self.owner[s] = target
        move_id = len(self.moves) + 1
        self.moves.append({b"id": move_id, b"keys": f"slots {slots}".encode(),
                           b"source": source, b"target": target, b"state": b"done",
                           b"copied": 3, b"purged": 0, b"epoch": 1, b"cancelled": 0})
        if self.lose_reply:
            self.lose_reply = False
            self.moves[-1][b"state"] = b"copy"  # still copying when the reply is lost
            return UNKNOWN
        return b":%d\r\n" % move_id

    def _member(self, name: bytes, node: int) -> bytes:
        """Join or leave, the reply lost (UNKNOWN) the first time when `lose_reply`."""
        self.member_calls += 1
        if name == b"KEYSPACE.ADDNODE":
            if node in self.nodes:
                return b"-ERR node %d serves keyspace 'default' already\r\n" % node
            self.nodes.append(node)
            self.empty.add(4)
            reply = b":4\r\n"
        else:
            if node not in self.nodes:
                return b"-ERR node %d does not serve keyspace 'default'\r\n" % node
            self.nodes.remove(node)
            reply = b"+OK\r\n"
        if self.lose_reply:
            self.lose_reply = False
            return UNKNOWN
        return reply

    def finish_copies(self) -> None:
        with self.lock:
            for move in self.moves:
                move[b"state"] = b"done"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        node: FakeNode = self.server.node  # type: ignore[attr-defined]
        try:
            self._serve(node)
        except ConnectionError:  # the client left
            return

    def _serve(self, node: FakeNode) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            if line.startswith(b"*"):
                args = []
                for _ in range(int(line[1:])):
                    size = int(self.rfile.readline()[1:])
                    args.append(self.rfile.read(size + 2)[:-2])
            else:
                args = line.split()
            if args:
                self.wfile.write(node.answer(args))


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(node: FakeNode) -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.node = node  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def paused() -> Iterator[str]:
    """A node under SIGSTOP, as a client sees it: the kernel takes the connection, nothing
    ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _client(nodes: list[str], timeout_s: float = 10.0, stream: io.StringIO | None = None,
            socket_s: float = SHORT_S) -> RetryingClient:
    def connect(node: str) -> redis.Redis:
        host, _, port = node.rpartition(":")
        return redis.Redis(host=host, port=int(port), socket_timeout=socket_s,
                           socket_connect_timeout=SHORT_S, retry=no_retry())

    return RetryingClient(nodes, None, timeout_s, stream or io.StringIO(), connect=connect)


def test_tryagain_a_few_times_then_ok_is_ridden_out(serve: Any) -> None:
    node = FakeNode(tryagain=3)
    out = io.StringIO()
    with _client([serve(node)], stream=out) as client:
        copied = admin.reshard(client, 1, 2, 10, 5, out)
    assert copied == 6
    assert [s for s in range(200) if node.owner[s] == 2][:10] == list(range(90, 100))
    assert client.retries == 3 and node.move_calls == 5
    assert "waiting for a leader: TRYAGAIN" in out.getvalue()


def test_a_node_gone_or_paused_gives_way_to_the_next(serve: Any, paused: str) -> None:
    node = FakeNode()
    gone = f"127.0.0.1:{find_free_port()}"
    out = io.StringIO()
    with _client([paused, gone, serve(node)], stream=out) as client:
        assert admin.reshard(client, 1, 2, 4, 2, out) == 6
    assert client.retries >= 1 and "waiting for a leader" in out.getvalue()
    assert len(node.moves) == 2


def test_a_lost_reply_does_not_begin_the_move_twice(serve: Any) -> None:
    node = FakeNode(lose_reply=True)
    with _client([serve(node)]) as client:
        threading.Timer(0.3, node.finish_copies).start()
        assert admin.reshard(client, 1, 2, 5, 5, io.StringIO()) == 3
    assert len(node.moves) == 1 and node.move_calls == 1
    with _client([serve(node)]) as client:  # begun and finished: nothing left to begin
        assert begin_move(client, 1, 2, [95, 96, 97, 98, 99]) is None


def test_a_refused_move_fails_at_once_and_the_deadline_ends_the_wait(serve: Any) -> None:
    with _client([serve(FakeNode(refuse=True))]) as client:
        with pytest.raises(redis.ResponseError, match="not owned"):
            admin.reshard(client, 1, 2, 5, 5, io.StringIO())
        assert client.retries == 0
    with _client([serve(FakeNode(tryagain=10**6))], timeout_s=0.5) as client:
        with pytest.raises(AdminDeadline, match="gave up after 0.5 s"):
            admin.reshard(client, 1, 2, 5, 5, io.StringIO())


def test_the_command_line_names_the_deadline_and_skips_a_dead_first_node(
        serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    node = FakeNode(tryagain=2)
    gone = f"127.0.0.1:{find_free_port()}"
    args = argparse.Namespace(node=f"{gone},{serve(node)}", password=None, timeout=10.0,
                              admin_action="reshard", source=1, target=2, slots=3, batch=3)
    assert admin.run_admin(args) == 0
    assert "waiting for a leader" in capsys.readouterr().err
    args = argparse.Namespace(node=serve(FakeNode(tryagain=10**6)), password=None,
                              timeout=0.3, admin_action="reshard", source=1, target=2,
                              slots=3, batch=3)
    assert admin.run_admin(args) == 1
    assert "gave up after 0.3 s of transient errors" in capsys.readouterr().err


def test_a_cancel_is_not_sent_again_once_the_move_rolls_back(serve: Any) -> None:
    node = FakeNode(lose_reply=True)
    with _client([serve(node)]) as client:
        assert begin_move(client, 1, 2, [99]) == 1  # the lost reply: the move is found
        cancel_once(client, 1)
        cancel_once(client, 1)  # a retry after a lost OK
    assert node.move_calls == 2 and node.moves[0][b"state"] == b"cancel"


def test_a_join_or_leave_whose_reply_was_lost_is_not_sent_again(serve: Any) -> None:
    node = FakeNode(lose_reply=True)
    address = serve(node)
    with _client([address]) as client:
        assert admin.add_node(client, "default", 7, io.StringIO()) == 4
        assert node.member_calls == 1 and 7 in node.nodes
        with pytest.raises(redis.ResponseError, match="serves keyspace"):
            admin.add_node(client, "default", 7, io.StringIO())  # a first try: refused
    node.lose_reply = True
    with _client([address]) as client:
        remove_once(client, "default", 7)
    assert node.member_calls == 3 and 7 not in node.nodes


def test_which_errors_are_transient() -> None:
    assert is_transient(redis.ResponseError("TRYAGAIN no leader"))
    assert is_transient(redis.ConnectionError("refused"))
    assert is_transient(redis.ResponseError("UNKNOWN the write may or may not"))
    assert not is_transient(redis.ResponseError("ERR slot 1 is already moving (move 2)"))
    assert not is_transient(ValueError("bad"))


def test_reshard_completes_with_its_first_node_under_sigstop(tmp_path: Path) -> None:
    """Real nodes: the first `--node` is paused (SIGSTOP) before admin starts; its shards'
    and the configuration group's leaders move to the others while admin asks node 2."""
    daemons = serve_daemons(tmp_path, 2, 3)
    for daemon in daemons:
        daemon.start()
    try:
        _until_serving(daemons)
        assert daemons[0].proc is not None
        os.kill(daemons[0].proc.pid, signal.SIGSTOP)
        try:
            out = io.StringIO()  # admin's client, already on the paused node
            with _client([d.address for d in daemons[:2]], 60.0, out, 1.0) as client:
                assert admin.reshard(client, 1, 2, 4, 2, out) == 0
            assert "waiting for a leader" in out.getvalue() and client.retries >= 1
            nodes = ",".join(d.address for d in daemons[:2])
            done = subprocess.run(
                [sys.executable, "-m", "shardstore", "admin", "--node", nodes, "--timeout",
                 "60", "reshard", "--from", "2", "--to", "1", "--slots", "4", "--batch", "2"],
                capture_output=True, text=True, timeout=120, cwd=ROOT)
        finally:
            os.kill(daemons[0].proc.pid, signal.SIGCONT)
        assert done.returncode == 0, done.stderr
        assert "4/4 slots moved" in done.stderr
    finally:
        for daemon in daemons:
            daemon.stop()


def _until_serving(daemons: list[Daemon]) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        infos = []
        with contextlib.suppress(redis.RedisError):  # a node not answering yet: ask again
            for d in daemons:
                with redis.Redis(host=d.host, port=d.port, socket_timeout=5) as c:
                    infos.append(c.execute_command("CLUSTER", "INFO"))
        if len(infos) == len(daemons) and all(b"cluster_state:ok" in i for i in infos):
            return
        assert time.monotonic() < deadline, daemons[0].log()[-2000:]
        time.sleep(0.2)
