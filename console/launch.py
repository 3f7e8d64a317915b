"""console's part of `make run`: the web console on 127.0.0.1:7800, watching every process
the other packages' declarations start (their own launch modules give the addresses).
It keeps nothing on disk, so `var` is unused."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process
from dfs.launch import master_addresses
from idgen.launch import client_addresses as idgen_addresses
from kvcache.launch import CACHE_PORTS, PROXY_PORT
from scheduler.launch import client_addresses as scheduler_addresses
from shardstore.launch import CLIENT_PORT_BASE as SHARDSTORE_PORT_BASE
from shardstore.launch import NODE_IDS as SHARDSTORE_NODE_IDS

CONSOLE_PORT = 7800

TRY = [f"  open http://{LOOPBACK}:{CONSOLE_PORT}/   # the web console (console/README.md)"]


def watched() -> dict[str, list[str]]:
    """The addresses the console watches, per daemon."""
    return {
        "idgen": idgen_addresses(),
        "kvcache": [f"{LOOPBACK}:{port}" for port in (*CACHE_PORTS, PROXY_PORT)],
        "scheduler": scheduler_addresses(),
        "shardstore": [f"{LOOPBACK}:{SHARDSTORE_PORT_BASE + i}" for i in SHARDSTORE_NODE_IDS],
        "dfs": master_addresses(),
    }


def local_cluster(var: Path) -> LocalCluster:
    """The console process (see the module header)."""
    argv = [sys.executable, "-m", "console", "--listen", f"{LOOPBACK}:{CONSOLE_PORT}"]
    for daemon, addresses in watched().items():
        argv += [f"--{daemon}", ",".join(addresses)]
    note = f"(web console: http://{LOOPBACK}:{CONSOLE_PORT}/)"
    return LocalCluster([Process("console", argv, LOOPBACK, CONSOLE_PORT, note)], TRY)
