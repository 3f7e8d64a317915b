"""Fixtures shared by the test modules: free TCP ports and waiting for a server to listen."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timed assertion: on a busy 2-core machine one example
# can take longer than 200 ms for reasons that are not the code's. Examples still run; only
# their duration is not judged.
settings.register_profile("infra", deadline=None)
settings.load_profile("infra")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_tcp_port(
    host: str,
    port: int,
    timeout: float = 15.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Return once `host:port` accepts connections; fail if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def free_port() -> Callable[..., int]:
    """`free_port(host="127.0.0.1") -> int`: a currently unused TCP port."""
    return find_free_port


@pytest.fixture(scope="session")
def wait_for_port() -> Callable[..., None]:
    """`wait_for_port(host, port, timeout=15.0, proc=None)`: block until the port listens."""
    return wait_for_tcp_port
