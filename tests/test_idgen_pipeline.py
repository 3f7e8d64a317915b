"""Pipelined runs of NEXT are answered together (Command.batch): the replies must be exactly
what the same commands one by one would get, in order, errors included."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from idgen.layout import parse
from tests.procs import Daemon, idgen_daemon


def exchange(address: tuple[str, int], payload: bytes, replies: int) -> list[bytes]:
    """Send `payload`, read until `replies` RESP lines of integer/error/status came back."""
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"\r\n") < replies:
            chunk = sock.recv(1 << 16)
            assert chunk, f"closed after {data!r}"
            data += chunk
    return data.split(b"\r\n")[:replies]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    node = idgen_daemon(tmp_path_factory.mktemp("pipeline"), worker_id=9).start()
    yield node
    assert node.stop() == 0


def test_a_run_of_next_gives_one_increasing_id_per_command(daemon: Daemon) -> None:
    count = 20_000  # several milliseconds' worth: the run must wait for the clock
    lines = exchange((daemon.host, daemon.port), b"NEXT\r\n" * count, count)
    ids = [int(line[1:]) for line in lines]
    assert all(line.startswith(b":") for line in lines)
    assert ids == sorted(set(ids))
    assert {parse(i).worker for i in ids} == {9}


def test_runs_mixed_with_other_commands_keep_their_order(daemon: Daemon) -> None:
    payload = b"NEXT\r\nNEXT\r\nPING\r\nnext\r\nNEXT\r\nNEXT 1\r\nNEXT\r\nNEXT x\r\nNEXT\r\n"
    lines = exchange((daemon.host, daemon.port), payload, 10)
    assert lines[2] == b"+PONG"
    assert lines[5] == b"*1"
    assert lines[8].startswith(b"-ERR count must be")
    ids = [int(line[1:]) for i, line in enumerate(lines) if i not in (2, 5, 8)]
    assert ids == sorted(set(ids)) and len(ids) == 7


def test_a_refused_run_answers_each_command_with_the_error(tmp_path: Path) -> None:
    node = idgen_daemon(tmp_path, worker_id=4).start()
    try:
        exchange((node.host, node.port), b"NEXT 1000\r\n", 1)
        node.kill()
        # Restarted with the clock 10 s behind what the first life issued: refused.
        behind = Daemon([*node.argv, "--clock-offset-ms", "-10000"], node.host, node.port,
                        node.log_path).start()
        lines = exchange((behind.host, behind.port), b"NEXT\r\n" * 3 + b"PING\r\n", 4)
        assert all(line.startswith(b"-CLOCK clock moved backwards by") for line in lines[:3])
        assert lines[3] == b"+PONG"
        assert behind.stop() == 0
    finally:
        node.stop()
