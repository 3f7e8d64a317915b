"""A real redis-server for tests that compare our replies or functions with Redis's own.

`redis_server(tmp, *extra)` starts one on a free loopback port with no persistence, yields
the port and stops it. `REDIS_SERVER` is None when redis-server is not installed; tests mark
themselves with `needs_redis` so they skip with that reason.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import find_free_port, wait_for_tcp_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
STOP_TIMEOUT_S = 10


@contextmanager
def redis_server(tmp: Path, *extra: str) -> Iterator[int]:
    """A running redis-server on 127.0.0.1 (data and logs under `tmp`); yields its port."""
    assert REDIS_SERVER is not None
    port = find_free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_tcp_port("127.0.0.1", port, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def cluster_redis_server(tmp: Path) -> Iterator[int]:
    """A redis-server with cluster support on (CLUSTER KEYSLOT needs it), no slots assigned.

    The cluster bus gets its own free port: the default, the client port + 10000, does not
    exist for client ports above 55535.
    """
    with redis_server(
        tmp, "--cluster-enabled", "yes", "--cluster-config-file", str(tmp / "nodes.conf"),
        "--cluster-port", str(find_free_port()),
    ) as port:
        yield port
