"""A test-only daemon: many Raft groups in one process (core.raft.host.RaftHost), each a
small replicated key-value map, for the multi-group process drill and bench/raft_groups.py.

    python -m tests.raft_groups_demo --id 1 --listen 127.0.0.2:7001 --raft 127.0.0.2:7002 \\
        --data-dir var/g1 --peers 1=127.0.0.2:7002,2=127.0.0.3:7002,3=127.0.0.4:7002 \\
        --groups 50 [--quiesce | --no-quiesce]

The process hosts group 0 (the "config" group) and data groups 1..N; every node of `--peers`
founds every group. Each group's state machine is tests.raft_kv_demo's KvMachine (a map of
bytes, with snapshot and restore). The client port speaks lines (`\\r\\n`), one reply line per
command, pipelining allowed (replies come in order), as tests/raft_kv_demo.py does:

    SET g key value   -> OK <index>   (forwarded to group g's leader when this node is not it)
    GET g key         -> VALUE <v> | NIL   (linearizable: read barrier, then local read)
    LGET g key        -> VALUE <v> | NIL   (local, possibly stale)
    DUMP g            -> JSON {"applied": i, "data": {key: value}} after a read barrier
    LDUMP g           -> the same, local (no barrier)
    DIGESTS           -> JSON {g: [keys, bench entries, xxh64 of the map]} of every group, local
    LEADERS           -> JSON {g: leader id (0: none known)} of every group, this node's view
    STATUS            -> JSON RaftHost.status() (fsyncs, applied_entries, quiesced, ...)
    GSTATUS g         -> JSON RaftGroup.status()
    TRANSFER g to     -> OK <new leader>   (this node must lead g)
    BENCH n size c    -> BENCH <groups> <committed> <seconds> <failed>: in every data group
                         this node leads, n proposals of `size` bytes from `c` coroutines,
                         all at once (a group whose lead moves away stops early)
    PROFILE s path    -> OK <path>: cProfile of the event loop's thread for s seconds (pstats)
Errors are `ERR <type>: <message>`. `--quiesce` / `--no-quiesce` turn Raft's quiescence of
idle groups (core/raft/node.py) on or off (default: what RaftHost.group_config does); STATUS
says whether it is on.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import msgpack

from core.daemon import parse_hostport, run, setup_logging
from core.raft.config import Config
from core.raft.errors import RaftError
from core.raft.group import RaftGroup
from core.raft.host import HostConfig, RaftHost
from tests.raft_kv_demo import MAX_LINE_BYTES, OP_BENCH, OP_SET, KvMachine, Service, parse_peers

log = logging.getLogger("raft_groups_demo")

CONFIG_GROUP = 0
ERR_NO_GROUP = "ERR no such group"
ERR_UNKNOWN = "ERR unknown command or wrong arguments"


def quiesce_supported() -> bool:
    """Whether this tree's Raft node has quiescence (core.raft.Config.quiesce)."""
    return any(f.name == "quiesce" for f in dataclasses.fields(Config))


class Groups:
    """The host, its groups and their state machines."""

    def __init__(self, host: RaftHost, founders: tuple[int, ...], raft_options: dict[str, Any],
                 snapshot_every: int) -> None:
        self.host = host
        self.founders = founders
        self.raft_options = raft_options
        self.snapshot_every = snapshot_every
        self.machines: dict[int, KvMachine] = {}

    def create(self, group_id: int) -> RaftGroup:
        """Open (or recover) group `group_id` with a fresh KvMachine."""
        machine = KvMachine()
        config = self.host.group_config(group_id, founders=self.founders,
                                        snapshot_every=self.snapshot_every,
                                        raft_options=dict(self.raft_options))
        group = self.host.create_group(group_id, config, machine.apply, machine.snapshot,
                                       machine.restore)
        self.machines[group_id] = machine
        return group

    def group(self, word: bytes) -> tuple[RaftGroup, KvMachine]:
        """The group named by a command word; KeyError if this node does not host it."""
        gid = int(word)
        group = self.host.group(gid)
        if group is None:
            raise KeyError(gid)
        return group, self.machines[gid]

    def led_data_groups(self) -> list[RaftGroup]:
        return [g for gid, g in sorted(self.host.groups.items())
                if gid != CONFIG_GROUP and g.node is not None and g.node.lead == self.host.node_id]


class GroupsService(Service):
    """The client port (tests/raft_kv_demo.py's line server) over many groups."""

    def __init__(self, groups: Groups) -> None:
        self.groups = groups
        self.connections: set[asyncio.Task[Any]] = set()

    async def command(self, words: list[bytes]) -> str:
        name, args = words[0].upper(), words[1:]
        handler = COMMANDS.get((name, len(args)))
        if handler is None:
            return f"{ERR_UNKNOWN}: {words[0].decode(errors='replace')}"
        try:
            return await handler(self, args)
        except KeyError:
            return ERR_NO_GROUP

    async def cmd_set(self, args: list[bytes]) -> str:
        group, _ = self.groups.group(args[0])
        index = await group.propose(OP_SET + msgpack.packb(args[1:]), forward=True)
        return f"OK {index}"

    async def cmd_get(self, args: list[bytes]) -> str:
        group, machine = self.groups.group(args[0])
        await group.read_barrier()
        return _value(machine, args[1])

    async def cmd_lget(self, args: list[bytes]) -> str:
        _, machine = self.groups.group(args[0])
        return _value(machine, args[1])

    async def cmd_dump(self, args: list[bytes]) -> str:
        group, machine = self.groups.group(args[0])
        await group.read_barrier()
        return _dump(group, machine)

    async def cmd_ldump(self, args: list[bytes]) -> str:
        group, machine = self.groups.group(args[0])
        return _dump(group, machine)

    async def cmd_digests(self, args: list[bytes]) -> str:
        return json.dumps({gid: [len(m.data), m.bench_entries, m.digest()]
                           for gid, m in sorted(self.groups.machines.items())})

    async def cmd_leaders(self, args: list[bytes]) -> str:
        return json.dumps({gid: g.node.lead if g.node is not None else 0
                           for gid, g in sorted(self.groups.host.groups.items())})

    async def cmd_status(self, args: list[bytes]) -> str:
        groups = self.groups.host.groups.values()
        quiesce = [g.node.config.quiesce for g in groups
                   if g.node is not None and hasattr(g.node.config, "quiesce")]
        return json.dumps({**self.groups.host.status(), "quiesce": any(quiesce)})

    async def cmd_gstatus(self, args: list[bytes]) -> str:
        group, _ = self.groups.group(args[0])
        return json.dumps(group.status())

    async def cmd_transfer(self, args: list[bytes]) -> str:
        group, _ = self.groups.group(args[0])
        return f"OK {await group.transfer_leadership(to=int(args[1]))}"

    async def cmd_profile(self, args: list[bytes]) -> str:
        """cProfile the event loop's thread for `seconds`, write pstats to `path`."""
        seconds, path = float(args[0]), args[1].decode()
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            await asyncio.sleep(seconds)
        finally:
            profiler.disable()
        profiler.dump_stats(path)
        return f"OK {path}"

    async def cmd_bench(self, args: list[bytes]) -> str:
        n, size, concurrency = (int(a) for a in args)
        led = self.groups.led_data_groups()
        started = time.perf_counter()
        done = await asyncio.gather(*(_bench_group(g, n, size, concurrency) for g in led))
        elapsed = time.perf_counter() - started
        return f"BENCH {len(led)} {sum(done)} {elapsed:.3f} {n * len(led) - sum(done)}"


COMMANDS: dict[tuple[bytes, int], Any] = {
    (b"SET", 3): GroupsService.cmd_set, (b"GET", 2): GroupsService.cmd_get,
    (b"LGET", 2): GroupsService.cmd_lget, (b"DUMP", 1): GroupsService.cmd_dump,
    (b"LDUMP", 1): GroupsService.cmd_ldump, (b"DIGESTS", 0): GroupsService.cmd_digests,
    (b"LEADERS", 0): GroupsService.cmd_leaders, (b"STATUS", 0): GroupsService.cmd_status,
    (b"GSTATUS", 1): GroupsService.cmd_gstatus, (b"TRANSFER", 2): GroupsService.cmd_transfer,
    (b"BENCH", 3): GroupsService.cmd_bench, (b"PROFILE", 2): GroupsService.cmd_profile,
}


def _value(machine: KvMachine, key: bytes) -> str:
    value = machine.data.get(key)
    return "NIL" if value is None else f"VALUE {value.decode(errors='replace')}"


def _dump(group: RaftGroup, machine: KvMachine) -> str:
    data = {k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in machine.data.items()}
    return json.dumps({"applied": group.applied, "data": data})


async def _bench_group(group: RaftGroup, n: int, size: int, concurrency: int) -> int:
    """Up to n proposals of `size` bytes to `group` (led here) from `concurrency`
    coroutines; return how many were committed. A proposal that fails (this node lost the
    lead, or does not know) is not counted, and its proposer stops."""
    payload = OP_BENCH + b"x" * (size - 1)
    left = [n]
    committed = [0]

    async def proposer() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                await group.propose(payload)
            except RaftError:
                return
            committed[0] += 1

    await asyncio.gather(*(proposer() for _ in range(concurrency)))
    return committed[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raft_groups_demo", description=__doc__.split("\n")[0])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--listen", required=True, help="client HOST:PORT")
    p.add_argument("--raft", required=True, help="node-to-node HOST:PORT")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--peers", required=True, help="ID=HOST:PORT,... (Raft addresses, founders)")
    p.add_argument("--groups", type=int, default=50, help="data groups besides group 0")
    p.add_argument("--quiesce", action=argparse.BooleanOptionalAction, default=None,
                   help="idle groups stop ticking (default: RaftHost.group_config's)")
    p.add_argument("--cluster-secret", default=None)
    p.add_argument("--tick-ms", type=int, default=20)
    p.add_argument("--election-tick", type=int, default=15)
    p.add_argument("--snapshot-every", type=int, default=10_000)
    p.add_argument("--log-level", default="INFO")
    return p


def host_config(args: argparse.Namespace) -> HostConfig:
    peers = parse_peers(args.peers)
    return HostConfig(node_id=args.id, data_dir=Path(args.data_dir),
                      listen=parse_hostport(args.raft), peers=peers,
                      secret=args.cluster_secret, tick_s=args.tick_ms / 1000,
                      election_tick=args.election_tick)


def raft_options(quiesce: bool | None) -> dict[str, Any]:
    """The groups' core.raft.Config options for --quiesce / --no-quiesce (None: the host's
    default)."""
    if quiesce is None:
        return {}
    if not quiesce_supported():
        log.warning("raft_groups_demo: this tree has no quiescence; --quiesce is ignored")
        return {}
    return {"quiesce": quiesce}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = host_config(args)
    options = raft_options(args.quiesce)
    host_name, port = parse_hostport(args.listen)

    async def serve(stop: asyncio.Event) -> int:
        host = RaftHost(config)
        await host.start()
        groups = Groups(host, tuple(sorted(config.peers)), options, args.snapshot_every)
        for gid in range(args.groups + 1):
            groups.create(gid)
        service = GroupsService(groups)
        server = await asyncio.start_server(service.handle, host_name, port,
                                            limit=MAX_LINE_BYTES)
        log.info("raft_groups_demo: node %d serving %d groups, clients on %s:%d", args.id,
                 args.groups + 1, host_name, port)
        failed = asyncio.ensure_future(host.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.close()
        await service.close()
        if failed.done():
            return 1 if failed.exception() else 0
        failed.cancel()
        await host.stop(transfer=True)
        log.info("raft_groups_demo: node %d stopped", args.id)
        return 0

    return run(serve)


if __name__ == "__main__":
    raise SystemExit(main())
