"""A toy RESP-on-Raft daemon for the service's tests: a replicated key-value map declared as
a state machine and five commands, everything else from core/raft_service.py.

    PUT key value          a write (forwarded to the leader, or redirected)
    GET key                a linearizable read (read barrier, then the local map)
    CAS key expected new   a write that sets `new` only if the value is `expected`: 1 if
                           it swapped, 0 if not (decided when the entry is applied)
    GPUT gid key value     a write to group `gid` (this node hosts group 0 only)
    FAIL text              a write whose apply result is the error text `text`

`ToyCluster` runs three nodes in one event loop on 127.0.0.2-4, each with its own Raft
driver, data directory and RESP port. As a process, with the shared cluster options
(core/cluster_options.py) and `--timeout-ms` (the service's wait before TRYAGAIN):

    python -m tests.raft_service_toy --id 1 --listen H:P --peer-listen H:P --peers ... \
        --data-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from core import cluster_options, daemon
from core.raft.driver import DriverConfig, RaftDriver
from core.raft_service import RaftService, Redirect, Routing
from core.resp import OK
from core.resp_server import Command
from tests.conftest import find_free_port

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
TICK_S = 0.01


class ToyMachine:
    """The replicated map: entries are msgpack [key, value], ["!cas", key, expected, new]
    or ["!fail", text]."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[Any]:
        out: list[Any] = []
        for _, raw in entries:
            item = msgpack.unpackb(raw)
            if item[0] == "!cas":
                _, key, expected, new = item
                swapped = self.data.get(key) == expected
                if swapped:
                    self.data[key] = new
                out.append(int(swapped))
                continue
            key, value = item
            if key == "!fail":
                out.append(value)
                continue
            self.data[key] = value
            out.append(None)
        return out

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data)

    def restore(self, blob: bytes) -> None:
        self.data = dict(msgpack.unpackb(blob))


class ToyNode:
    """One node: the machine, its commands, and the service around them."""

    def __init__(self, config: DriverConfig, *, routing: Routing = Routing.FORWARD,
                 redirect: Redirect | None = None, timeout_s: float = 5.0) -> None:
        self.machine = ToyMachine()

        def factory(apply: Any, snapshot: Any, restore: Any) -> RaftDriver:
            return RaftDriver(config, apply, snapshot, restore)

        self.service = RaftService("toy", "0.0.1", self.machine, factory, self.commands(),
                                   redirect=redirect, routing=routing, timeout_s=timeout_s)

    def commands(self) -> list[Command]:
        return [Command("PUT", self.cmd_set, 3), Command("GET", self.cmd_get, 2),
                Command("GPUT", self.cmd_gset, 4), Command("FAIL", self.cmd_fail, 2),
                Command("CAS", self.cmd_cas, 4)]

    async def cmd_set(self, session: Any, args: list[bytes]) -> Any:
        await self.service.write(msgpack.packb([args[1].decode(), args[2].decode()]))
        return OK

    async def cmd_get(self, session: Any, args: list[bytes]) -> Any:
        await self.service.barrier()
        return self.machine.data.get(args[1].decode())

    async def cmd_gset(self, session: Any, args: list[bytes]) -> Any:
        entry = msgpack.packb([args[2].decode(), args[3].decode()])
        await self.service.write(entry, group=int(args[1]))
        return OK

    async def cmd_cas(self, session: Any, args: list[bytes]) -> Any:
        entry = msgpack.packb(["!cas", *(arg.decode() for arg in args[1:4])])
        return await self.service.write(entry)

    async def cmd_fail(self, session: Any, args: list[bytes]) -> Any:
        return await self.service.write(msgpack.packb(["!fail", args[1].decode()]))


@dataclass
class ToyCluster:
    """Three toy nodes (ids 1-3) on HOSTS; `start()`, use, `stop()`."""

    tmp: Path
    election_tick: int = 15
    node_options: dict[str, Any] = field(default_factory=dict)
    nodes: dict[int, ToyNode] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        raft = {i + 1: (h, find_free_port(h)) for i, h in enumerate(HOSTS)}
        for node_id in raft:
            config = DriverConfig(node_id=node_id, data_dir=self.tmp / f"n{node_id}",
                                  listen=raft[node_id], peers=raft, founders=(1, 2, 3),
                                  tick_s=TICK_S, election_tick=self.election_tick)
            self.nodes[node_id] = ToyNode(config, **self.node_options)

    async def start(self, ids: Sequence[int] = (1, 2, 3)) -> None:
        for node_id in ids:
            await self.nodes[node_id].service.start(HOSTS[node_id - 1], 0)
            self.running.add(node_id)

    def address(self, node_id: int) -> str:
        return f"{HOSTS[node_id - 1]}:{self.nodes[node_id].service.resp.port}"

    def leader(self) -> int:
        """The id of the node that leads (0: none yet), as the running nodes see it."""
        for node_id in sorted(self.running):
            if self.nodes[node_id].service.driver.status()["role"] == "leader":
                return node_id
        return 0

    async def halt(self, node_id: int) -> None:
        """Stop a node at once: no hand-over, its clients cut off."""
        service = self.nodes[node_id].service
        self.running.discard(node_id)
        await service.resp.stop()
        await service.driver.stop(transfer=False)

    async def stop(self) -> None:
        for node_id in sorted(self.running):
            await self.nodes[node_id].service.stop()
        self.running.clear()


def serve(argv: list[str]) -> int:
    """One toy node as a process (see the module header); exits 0 on SIGTERM."""
    parser = argparse.ArgumentParser(prog="raft_service_toy")
    daemon.add_common_options(parser, 7900)
    cluster_options.add_cluster_options(parser, 7901)
    parser.add_argument("--timeout-ms", type=int, default=5000)
    args = parser.parse_args(argv)
    daemon.setup_logging(args.log_level)
    settings = cluster_options.cluster_settings(args, default_port=7900,
                                                default_peer_port=7901)
    node = ToyNode(cluster_options.driver_config(settings), timeout_s=args.timeout_ms / 1000)

    async def run(stop: asyncio.Event) -> int:
        await node.service.start(*settings.listen)
        await stop.wait()
        await node.service.stop()
        return 0

    return daemon.run(run)


if __name__ == "__main__":
    raise SystemExit(serve(sys.argv[1:]))
