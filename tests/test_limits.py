"""Limits that had no test of their own: kvcache's 4 MiB cap on a multi-get line, the
scheduler refusing a node port or a client port beyond loopback without a secret, and the
idgen client's prefetch batch size as the requests on the wire show it.

The multi-get cap is checked on both parser twins fed as a socket feeds them, and on a real
daemon. The scheduler's refusals are those of `scheduler serve` run as a process. The batch
size is read from the `NEXT n` requests a small fake idgen server records.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idgen.client import IdgenClient
from idgen.client_core import MAX_BATCH
from kvcache import mcproto_pure
from kvcache.protocol import Close
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon, kvcache_daemon

MB = 1024 * 1024
CAP = mcproto_pure.MAX_MULTIGET_LINE_BYTES
PIECE = 64 * 1024  # what one read of a socket hands the parser, about
HANG_S = 30.0  # hang detection only


def parser_twins() -> list[Any]:
    twins = [pytest.param(mcproto_pure.RequestParser, id="pure")]
    try:
        native = importlib.import_module("kvcache._mcproto").RequestParser
        twins.append(pytest.param(native, id="native"))
    except ImportError:
        pass
    return twins


def multiget(size: int) -> bytes:
    """A `get` line of exactly `size` bytes before its newline."""
    head = b"get "
    keys = b" ".join(b"k%07d" % i for i in range((size - len(head)) // 9 + 1))
    return (head + keys)[:size].rstrip(b" ").ljust(size, b"x")


def feed(parser: Any, data: bytes) -> list[object]:
    out: list[object] = []
    for start in range(0, len(data), PIECE):
        parser.feed(data[start:start + PIECE])
        while (request := parser.next_request()) is not None:
            out.append(request)
            if isinstance(request, Close):
                return out
    return out


# -- kvcache: the multi-get line -------------------------------------------------------------


def test_the_cap_is_4_mib() -> None:
    assert CAP == 4 * MB


@pytest.mark.parametrize("parser_class", parser_twins())
def test_a_multiget_line_grows_to_the_cap_and_no_further(parser_class: Any) -> None:
    line = multiget(CAP - 2)
    [request] = feed(parser_class(MB), line + b"\r\n")
    assert isinstance(request, list) and request[:2] == [b"get", b"k0000000"]
    assert len(request) == len(line.split())
    out = feed(parser_class(MB), multiget(CAP + PIECE))
    assert len(out) == 1 and isinstance(out[0], Close), out[:1]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Daemon]:
    daemon = kvcache_daemon(tmp_path).start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


def read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_a_daemon_answers_a_multiget_under_the_cap_and_closes_one_over_it(cache: Daemon) -> None:
    with socket.create_connection((cache.host, cache.port), timeout=HANG_S) as conn:
        conn.sendall(b"set k0000001 0 0 1\r\nv\r\n" + multiget(CAP - 2) + b"\r\n")
        conn.shutdown(socket.SHUT_WR)
        assert read_all(conn) == b"STORED\r\nVALUE k0000001 0 1\r\nv\r\nEND\r\n"
    with socket.create_connection((cache.host, cache.port), timeout=HANG_S) as conn:
        try:
            conn.sendall(multiget(CAP + 4 * PIECE))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: what this checks
        try:
            assert read_all(conn) == b""  # closed without a reply
        except ConnectionResetError:
            pass
    with socket.create_connection((cache.host, cache.port), timeout=HANG_S) as conn:
        conn.sendall(b"version\r\n")  # the daemon serves on
        assert conn.recv(100).startswith(b"VERSION ")


# -- scheduler: beyond loopback --------------------------------------------------------------


def scheduler_serve(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "scheduler", "serve", "--id", "1",
            "--data-dir", str(tmp_path / "node"), *options]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=HANG_S,
                          check=False)


def test_the_scheduler_refuses_a_node_port_beyond_loopback_without_a_secret(
    tmp_path: Path,
) -> None:
    done = scheduler_serve(tmp_path, "--listen", f"127.0.0.1:{find_free_port()}",
                           "--peer-listen", "192.0.2.7:7501")
    assert done.returncode == 2, done
    assert "refusing Raft traffic on 192.0.2.7 without --cluster-secret" in done.stderr
    assert not (tmp_path / "node").exists()  # refused before anything was opened


def test_the_scheduler_refuses_a_client_port_beyond_loopback_without_a_password(
    tmp_path: Path,
) -> None:
    done = scheduler_serve(tmp_path, "--listen", "192.0.2.7:7401", "--cluster-secret", "s")
    assert done.returncode == 2, done
    assert "refusing to listen on 192.0.2.7 without --requirepass" in done.stderr


# -- idgen: the prefetch batch on the wire -------------------------------------------------------


class FakeIdServer:
    """Answers `NEXT n` with n increasing ids and records each n; `+OK` to anything else."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.counts: list[int] = []
        self.next_id = 1
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while words := self._command(reader):
                conn.sendall(self._reply(words))

    @staticmethod
    def _command(reader: Any) -> list[bytes]:
        header = reader.readline()
        if not header.startswith(b"*"):
            return header.split()
        words = []
        for _ in range(int(header[1:])):
            size = int(reader.readline()[1:])
            words.append(reader.read(size + 2)[:-2])
        return words

    def _reply(self, words: list[bytes]) -> bytes:
        if not words or words[0].upper() != b"NEXT":
            return b"+OK\r\n"
        count = int(words[1]) if len(words) > 1 else 1
        self.counts.append(count)
        ids = range(self.next_id, self.next_id + count)
        self.next_id += count
        if len(words) == 1:
            return b":%d\r\n" % ids[0]
        return b"*%d\r\n" % count + b"".join(b":%d\r\n" % i for i in ids)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(("prefetch", "batch", "expected"), [
    (1000, None, 500),  # half the target by default
    (1, None, 1),
    (1000, 64, 64),
    (4 * MAX_BATCH, None, MAX_BATCH),  # never more than one NEXT may ask for
])
def test_the_prefetch_refills_in_batches_of_its_size(
    prefetch: int, batch: int | None, expected: int
) -> None:
    server = FakeIdServer()
    try:
        with IdgenClient(server.address, prefetch=prefetch, batch=batch) as client:
            assert client.batch == expected
            taken = [client.next_id() for _ in range(min(3 * expected, 2000))]
        assert taken == sorted(set(taken))
        assert server.counts and set(server.counts) == {expected}, server.counts[:10]
    finally:
        server.close()
