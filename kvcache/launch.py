"""kvcache's part of `make run`: three memcached-compatible caches on 11311-11313 (clients
hash keys across them with ketama) and a routing proxy on 11310 in front of them, for
clients that know one address only. The caches keep nothing on disk, so `var` is unused."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

CACHE_PORTS = [11311, 11312, 11313]
PROXY_PORT = 11310
CACHE_MEGABYTES = 64

TRY = [
    "  printf 'set greeting 0 0 5\\r\\nhello\\r\\nget greeting\\r\\n' | nc -q1 127.0.0.1 11311",
    "  printf 'mg greeting v t\\r\\nstats settings\\r\\n' | nc -q1 127.0.0.1 11311",
    "  printf 'set a 0 0 1\\r\\n1\\r\\nget a greeting\\r\\nstats\\r\\n' | nc -q1 127.0.0.1 11310"
    "  # proxy",
    '  .venv/bin/python -c "from kvcache.client import Client; \\',
    "c = Client(['127.0.0.1:11311', '127.0.0.1:11312', '127.0.0.1:11313']); \\",
    "c.set('k', b'v'); print(c.get('k'))\"",
]


def local_cluster(var: Path) -> LocalCluster:
    """The three caches, then the proxy (see the module header)."""
    processes = []
    for index, port in enumerate(CACHE_PORTS, start=1):
        argv = [sys.executable, "-m", "kvcache", "serve", "-l", LOOPBACK, "-p", str(port),
                "-m", str(CACHE_MEGABYTES)]
        processes.append(Process(f"kvcache-{index}", argv, LOOPBACK, port))
    servers = ",".join(f"{LOOPBACK}:{port}" for port in CACHE_PORTS)
    proxy = [sys.executable, "-m", "kvcache", "proxy", "-p", str(PROXY_PORT),
             "--servers", servers]
    processes.append(Process("kvproxy", proxy, LOOPBACK, PROXY_PORT))
    return LocalCluster(processes, TRY)
