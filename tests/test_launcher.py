"""`make run`'s launcher: starts the local cluster, prints how to use it, stops on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def test_launcher_starts_the_cluster_and_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    # The launcher writes ./var relative to its working directory: run it in tmp_path.
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.launcher"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "".join(lines)
        output = "".join(lines)
        assert output.count(" up") == 11, output
        assert "redis-cli -p 7101 NEXT" in output
        ids = [redis.Redis(port=port).execute_command("NEXT") for port in (7101, 7102, 7103)]
        assert len(set(ids)) == 3
        with socket.create_connection(("127.0.0.1", 11311), timeout=10) as cache:
            cache.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                reply += cache.recv(4096)
        assert reply == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
    output = "".join(lines)
    assert code == 0, output
    assert output.count("exited with 0") == 11, output
    assert (tmp_path / "var" / "idgen-1" / "idgen.json").exists()
