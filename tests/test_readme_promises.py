"""README.md's promises that are not examples: the `serve` lines start a daemon, and the
idgen daemon warns once when its time bits have less than a year left.

Strategy: each `serve` line of the README (tests/test_readme.py reads them) runs in an empty
temporary directory, must listen where it says, answer a ping and exit 0 on SIGTERM; its
peers, if it names any, are not running. The warning is read from a real daemon's log,
started on a wall clock (libfaketime, tests/faults/clock.py) half a year before the
default epoch's time bits run out. Timeouts only detect hangs.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from core.launch_spec import Process
from idgen.layout import DEFAULT_EPOCH_MS, MAX_TIME_MS
from tests.conftest import find_free_port
from tests.faults import clock
from tests.test_readme import (
    COMMAND_S,
    ROOT,
    SERVE_LINE,
    port_is_open,
    shell_lines,
    split_comment,
    start,
    stop,
    wait_until,
)

YEAR_MS = 365 * 24 * 3600 * 1000
WARNING = "years left before the 41 time bits run out"
RESERVE_ROUNDS = 3  # the daemon checks the years left after each renewal of its mark


# -- serve lines --------------------------------------------------------------------------------


def serve_lines() -> list[str]:
    return [split_comment(line)[0] for line in shell_lines()
            if SERVE_LINE.match(line) and " serve " in line]


def listen_address(argv: list[str]) -> tuple[str, int]:
    if "--listen" in argv:
        host, _, port = argv[argv.index("--listen") + 1].rpartition(":")
        return host, int(port)
    host = argv[argv.index("-l") + 1] if "-l" in argv else "127.0.0.1"
    return host, int(argv[argv.index("-p") + 1])


@pytest.mark.parametrize("line", serve_lines())
def test_serve_lines_start_a_daemon(line: str, tmp_path: Path) -> None:
    """Each `serve` line, run in an empty directory, listens where it says, answers a ping
    and exits 0 on SIGTERM (its peers, if it names any, are not running)."""
    argv = shlex.split(line)
    daemon = Path(argv[0]).name
    argv[0] = str(ROOT / argv[0])
    host, port = listen_address(argv)
    process = start(Process(daemon, argv), tmp_path, cwd=tmp_path)
    try:
        wait_until(lambda: port_is_open(host, port), f"{line!r} to listen")
        with socket.create_connection((host, port), timeout=COMMAND_S) as conn:
            conn.sendall(b"version\r\n" if daemon == "kvcache" else b"PING\r\n")
            assert conn.recv(100).startswith((b"VERSION ", b"+PONG")), line
    finally:
        code = stop(process)
    assert code == 0, (tmp_path / f"{daemon}.log").read_text()


@pytest.mark.skipif(clock.unavailable_reason() is not None,
                    reason=str(clock.unavailable_reason()))
def test_idgen_warns_once_when_less_than_a_year_is_left(tmp_path: Path) -> None:
    """INFO idgen shows the years left; under one year a warning is logged, once."""
    end_ms = DEFAULT_EPOCH_MS + MAX_TIME_MS  # the default epoch's last millisecond
    offset_s = (end_ms - YEAR_MS // 2) / 1000 - time.time()
    faked = clock.ClockFile(tmp_path / "clock", offset_s)
    port = find_free_port()
    argv = [str(ROOT / ".venv/bin/idgen"), "serve", "--listen", f"127.0.0.1:{port}",
            "--worker-id", "1", "--data-dir", "data", "--reserve-ms", "100"]
    with open(tmp_path / "idgen.log", "ab") as log:
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=log,
                                   env={**os.environ, **faked.env()})
    try:
        wait_until(lambda: port_is_open("127.0.0.1", port), "idgen to listen")
        client = redis.Redis(port=port, socket_timeout=COMMAND_S)
        info = client.info("idgen")
        assert 0 < float(info["years_left"]) < 1, info
        marks: set[int] = set()

        def renewed() -> bool:
            marks.add(client.info("idgen")["durable_hwm_ms"])
            return len(marks) > RESERVE_ROUNDS

        wait_until(renewed, "the mark to be renewed a few times")
    finally:
        assert stop(process) == 0
    log = (tmp_path / "idgen.log").read_text()
    assert len(re.findall(WARNING, log)) == 1, log
