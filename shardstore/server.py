"""One shardstore node: a RaftHost with the configuration group and this node's shard
groups, the RESP service around them, and the node's background work.

Strategy: `ShardNode` builds a `RaftService` (core/raft_service.py) whose driver is
`HostDriver`, a RaftHost that opens the configuration group 0 (shardstore/cluster.py)
when it starts; the service gives the client port, the address book (node id -> client
address, in group 0), forwarding of writes to a group's leader, read barriers and
TRYAGAIN. The client commands live in shardstore/handlers.py. Background tasks:

- `_reconcile` (every RECONCILE_S): the config group's leader makes the slot map if
  there is none yet (`--shards`, `--replicas` over all `--peers`); this node publishes its
  40-hex name once, and a leader hint for each shard it has become the leader of; it
  opens each shard group the map makes it a member of (engine under
  `<data-dir>/shards/<id>/`, Raft log under `<data-dir>/groups/<id>/`) and destroys those
  it is no longer a member of; and it hands the leadership of a shard it leads to the
  shard's first member, its preferred leader, once that one has the whole log (at most
  once per BALANCE_S per shard), so the masters spread over the nodes as in a Redis
  Cluster (redis-benchmark --cluster wants two masters or more);
- `_expire` (every EXPIRE_S): for each shard this node leads, sample keys
  (machine.expired_keys) and propose the expired ones' deletion (an expire entry);
- `_everysec`: sync each engine once a second. With fsync "always" a shard's Raft log is
  fsynced before its entries are applied, so the engine's appends are not fsynced one by
  one (machine.ShardMachine's `sync_writes`): the timer only keeps a restart's replay
  short;
- `_moves` (every RECONCILE_S, on the configuration group's leader): drive the slot moves
  under way (shardstore/migrate.py's Mover; its node-to-node service SERVICE_MOVE runs on
  every node). The SHARDSTORE.* admin commands are shardstore/admin_commands.py's.

A node serves one keyspace (shardstore/keyspaces.py): `config` is the configuration as
its keyspace sees it (its shards, its slot map, its nodes in CLUSTER replies), made with
`--keyspace` options or KEYSPACE.CREATE; `full_config` is every keyspace's.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any

from core.cluster_options import ClusterSettings
from core.command_table import KeysError, get_keys
from core.limits import REDIS_MAX_BULK_BYTES, Limits
from core.raft.driver_types import Apply, SnapshotHook
from core.raft.errors import RaftError
from core.raft.group import RaftGroup
from core.raft.host import HostConfig, RaftHost
from core.raft_service import RaftService
from core.resp import CommandError
from shardstore import cluster
from shardstore.admin_commands import AdminCommands
from shardstore.asking import clear_after_other_commands
from shardstore.cluster import CONFIG_GROUP, ClusterView, ConfigMachine, Shard
from shardstore.engine.errors import EngineError, StorageFailed
from shardstore.handlers import ClientCommands
from shardstore.machine import ShardMachine, encode_expire, expired_keys
from shardstore.migrate import BATCH_KEYS, SERVICE_MOVE, Mover, MoveService
from shardstore.moves import STATE_DONE
from shardstore.replica_moves import ReplicaDriver
from shardstore.replicas import founders_for
from shardstore.writes import SERVICE_WRITE, LeaderWrites

__all__ = ["FSYNC_POLICIES", "HostDriver", "NodeOptions", "ShardNode"]

log = logging.getLogger("shardstore.server")

NAME = "shardstore"
VERSION = "0.1.0"
FSYNC_POLICIES = ("always", "everysec")
SHARDS_DIR = "shards"
RECONCILE_S = 0.2
EXPIRE_S = 0.5
EXPIRE_SAMPLE = 200  # keys looked at per shard per sweep
EVERYSEC_S = 1.0
SNAPSHOT_EVERY = 10_000  # applied entries between a shard's Raft snapshots
COMPACTION_MARGIN = 1_000  # entries a shard keeps behind its snapshot for slow followers
WRITE_TIMEOUT_S = 10.0
BALANCE_S = 5.0  # between two hand-overs of one shard to its preferred leader


@dataclass(frozen=True)
class NodeOptions:
    """shardstore's own options: the map's shape when the cluster is made, fsync, and
    how often a shard's Raft log is cut behind a snapshot of its engine."""

    shards: int = 3
    replicas: int = 3
    fsync: str = "always"
    timeout_s: float = WRITE_TIMEOUT_S
    snapshot_every: int = SNAPSHOT_EVERY
    compaction_margin: int = COMPACTION_MARGIN
    move_batch_keys: int = BATCH_KEYS
    keyspaces: tuple[tuple[str, tuple[int, ...]], ...] = ()  # when made: name -> node ids


class HostDriver:
    """A RaftHost seen as the service's driver: it opens group 0 with the service's hooks
    on start, and is the directory of every group it hosts."""

    def __init__(self, host: RaftHost, apply: Apply, snapshot: SnapshotHook,
                 restore: Any, founders: tuple[int, ...]) -> None:
        self.host = host
        self._hooks = (apply, snapshot, restore)
        self.founders = founders

    async def start(self) -> None:
        await self.host.start()
        config = self.host.group_config(CONFIG_GROUP, founders=self.founders)
        self.host.create_group(CONFIG_GROUP, config, *self._hooks)

    async def hand_over(self) -> None:
        await self.host.hand_over()

    async def stop(self, transfer: bool = True) -> None:
        await self.host.stop(transfer=transfer)

    def group(self, gid: int) -> RaftGroup | None:
        return self.host.group(gid)

    def group_ids(self) -> list[int]:
        return self.host.group_ids()


class ShardNode:
    """See the module header. `await start()`, serve, `await stop()`; `wait_failed()`
    returns when the Raft host stopped on a fatal error."""

    def __init__(self, settings: ClusterSettings, options: NodeOptions, *,
                 layer: Any = None, engine_class: Any = None) -> None:
        if layer is None:
            from shardstore import commands as layer
        if engine_class is None:
            from shardstore.engine import Engine as engine_class
        self.layer = layer  # the command layer (shardstore.commands)
        self.engine_class = engine_class  # shardstore.engine.Engine
        self.settings = settings
        self.options = options
        self.me = settings.node_id
        self.data_dir = settings.data_dir
        self.config_machine = ConfigMachine()
        self.machines: dict[int, ShardMachine] = {}  # shard id -> its machine here
        self.name = ""
        host_config = HostConfig(node_id=self.me, data_dir=settings.data_dir,
                                 listen=settings.peer_listen, peers=settings.peers,
                                 secret=settings.secret, tick_s=settings.tick_s,
                                 election_tick=settings.election_tick)
        self.host = RaftHost(host_config)
        self.writes = LeaderWrites(self.host, self.now_ms, options.timeout_s)
        self.move_service = MoveService(self.host, self.machine_of_group, options.timeout_s)
        self.replicas = ReplicaDriver(self)  # shard membership changes (replica_moves.py)
        self.mover = Mover(self, self.move_service, options.timeout_s,
                           options.move_batch_keys)
        self._key_rows: dict[bytes, Any] | None = None

        def factory(apply: Apply, snapshot: SnapshotHook, restore: Any) -> HostDriver:
            return HostDriver(self.host, apply, snapshot, restore, settings.founders)

        self.commands = ClientCommands(self)
        self.admin = AdminCommands(self)
        limits = Limits(max_bulk=REDIS_MAX_BULK_BYTES)
        self.service = RaftService(NAME, VERSION, self.config_machine, factory,
                                   [*self.commands.rows(), *self.admin.rows()],
                                   password=settings.password,
                                   limits=limits, info=self.info,
                                   advertise=settings.advertise, timeout_s=options.timeout_s)
        self.service.resp.mode = "cluster"  # HELLO says so, as a Redis Cluster node does
        self.service.resp.pipeline = self.commands.pipeline  # a run of writes: one entry
        clear_after_other_commands(self.service.resp.commands.values())  # ASKING: one command
        self._tasks: list[asyncio.Task[None]] = []
        self._cursors: dict[int, bytes] = {}
        self._balanced: dict[int, float] = {}  # shard id -> when it was last handed over
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._view: cluster.ClusterConfig | None = None
        self._view_at = -1

    @property
    def config(self) -> cluster.ClusterConfig:
        """The configuration as this node's keyspace sees it (shardstore/keyspaces.py:
        its shards and slot map), recomputed when the configuration changes."""
        machine = self.config_machine
        if self._view is None or self._view_at != machine.version:
            full = machine.config
            space = full.keyspace_of_node(self.me) or cluster.DEFAULT_KEYSPACE
            self._view = full.view(space) if full.spaces else full
            self._view_at = machine.version
        return self._view

    @property
    def full_config(self) -> cluster.ClusterConfig:
        """The configuration of every keyspace (what the move coordinator drives)."""
        return self.config_machine.config

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.name = cluster.load_node_name(self.data_dir, self.me)
        self.host.transport.register(SERVICE_WRITE, self.writes)
        self.host.transport.register(SERVICE_MOVE, self.move_service)
        await self.service.start(*self.settings.listen)
        loops = [self._reconcile(), self._expire(), self._moves(), self._everysec()]
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.stop()
        self.host.transport.router.unregister(SERVICE_WRITE)
        self.host.transport.router.unregister(SERVICE_MOVE)
        for machine in self.machines.values():
            machine.engine.close()
        self.machines.clear()

    async def wait_failed(self) -> None:
        """Returns (raising the error) when the Raft host stops on a fatal error or a
        shard's engine cannot open (corruption, a failing disk): the process must exit."""
        host = asyncio.ensure_future(self.host.wait())
        done, _ = await asyncio.wait({host, self._failed}, return_when=asyncio.FIRST_COMPLETED)
        host.cancel()
        for future in done:
            future.result()

    # -- what the handlers ask -----------------------------------------------------------------

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def view(self) -> ClusterView:
        """This node's view of the cluster for the CLUSTER replies."""
        leaders: dict[int, int] = {}
        offsets: dict[int, int] = {}
        for sid in self.machines:
            group = self.host.group(self.config.shards[sid].group)
            if group is not None and group.node is not None:
                leaders[sid] = group.node.lead
                offsets[sid] = group.applied
        config = self.config
        space = config.spaces.get(config.keyspace)
        book = {node: address for node, address in self.service.book.clients.items()
                if space is None or node in space.nodes}  # the nodes of this keyspace
        return ClusterView(config, self.me, book, leaders, offsets,
                           {k: v[1] for k, v in self.settings.peers.items()})

    def led_shards(self) -> list[Shard]:
        """The shards this node hosts and reports as their master (CLUSTER SLOTS): those
        it leads now, as far as it knows."""
        masters = self.view().masters()
        return [s for sid, s in sorted(self.config.shards.items())
                if sid in self.machines and masters.get(sid) == self.me]

    def replicas_in_sync(self) -> int:
        """WAIT's answer from the commit state: over the shards this node leads, the least
        number of other members whose log has everything committed (0: it leads none)."""
        counts = []
        for shard in self.led_shards():
            group = self.host.group(shard.group)
            node = group.node if group is not None else None
            if node is None or node.lead != self.me:
                continue
            counts.append(sum(1 for peer, progress in node.progress.items()
                              if peer != self.me and progress.match >= node.committed))
        return min(counts) if counts else 0

    # -- background ----------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        while True:
            try:
                await self._reconcile_once()
            except asyncio.CancelledError:
                raise
            except (RaftError, TimeoutError, CommandError) as exc:  # no leader yet: retry
                log.debug("reconcile: %r", exc)
            except Exception as exc:  # an engine that refuses to open, a failing disk
                log.critical("node %d stops: %r", self.me, exc)
                if not self._failed.done():
                    self._failed.set_exception(exc)
                return
            await asyncio.sleep(RECONCILE_S)

    async def _reconcile_once(self) -> None:
        group0 = self.host.group(CONFIG_GROUP)
        if group0 is None or group0.node is None:
            return
        config = self.config
        if not config.initialised and self.settings.founders and group0.node.lead == self.me:
            entry = cluster.encode_init(sorted(self.settings.peers), self.options.shards,
                                        self.options.replicas, dict(self.options.keyspaces))
            await self.service.write(entry)
        if config.initialised and config.names.get(self.me) != self.name and group0.node.lead:
            await self.service.write(cluster.encode_name(self.me, self.name))
        hosted = {s.shard_id: s for s in config.hosted_by(self.me)}
        for sid, shard in hosted.items():
            if sid not in self.machines:
                await self._open_shard(shard)
        for sid in [s for s in self.machines if s not in hosted]:
            await self._close_shard(sid)
        await self._publish_leaders()
        await self._prefer_leaders()
        await self.replicas.run_once()

    async def _prefer_leaders(self) -> None:
        now = time.monotonic()
        for sid in list(self.machines):
            shard = self.config.shards[sid]
            group = self.host.group(shard.group)
            node = group.node if group is not None else None
            preferred = shard.members[0]
            if (node is None or node.lead != self.me or preferred == self.me
                    or now - self._balanced.get(sid, -BALANCE_S) < BALANCE_S):
                continue
            progress = node.progress.get(preferred)
            if progress is None or progress.match < node.committed:
                continue
            self._balanced[sid] = now
            assert group is not None
            try:
                await group.transfer_leadership(preferred)
            except (RaftError, TimeoutError) as exc:
                log.info("shard %d: no hand-over to node %d: %r", sid, preferred, exc)

    async def _publish_leaders(self) -> None:
        for sid in list(self.machines):
            shard = self.config.shards[sid]
            group = self.host.group(shard.group)
            if group is None or group.node is None or group.node.lead != self.me:
                continue
            term = group.node.term
            if self.config.leaders.get(sid) != (self.me, term):
                await self.service.write(cluster.encode_leader(sid, self.me, term))

    async def _open_shard(self, shard: Shard) -> None:
        engine_class = self.engine_class
        directory = self.data_dir / SHARDS_DIR / str(shard.shard_id)
        directory.mkdir(parents=True, exist_ok=True)
        fsync = self.options.fsync
        engine = await asyncio.to_thread(engine_class.open, directory, fsync=fsync)

        def load(pieces: Any, index: int) -> Any:
            machine.engine.close()
            return engine_class.load(directory, pieces, index, fsync=fsync)

        machine = ShardMachine(engine, self.layer, load, keys_of=self.keys_of,
                               sync_writes=fsync != "always")
        founders = founders_for(shard, self.me)  # () for a joining replica: an empty log
        config = self.host.group_config(shard.group, founders=founders,
                                        fsync=fsync if founders else "always",
                                        machine_applied=engine.applied_index,
                                        snapshot_every=self.options.snapshot_every,
                                        compaction_margin=self.options.compaction_margin)
        self.host.create_group(shard.group, config, machine.apply, machine.snapshot,
                               machine.restore)
        self.machines[shard.shard_id] = machine
        log.info("node %d: shard %d open (group %d, members %s)", self.me, shard.shard_id,
                 shard.group, shard.members)

    async def _close_shard(self, sid: int) -> None:
        machine = self.machines.pop(sid)
        await self.host.destroy_group(sid)
        machine.engine.close()
        directory = self.data_dir / SHARDS_DIR / str(sid)
        await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_S)
            for shard in self.led_shards():
                try:
                    await self._expire_shard(shard)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # TRYAGAIN, a lost leadership: next round
                    log.debug("expiry of shard %d: %r", shard.shard_id, exc)

    async def _expire_shard(self, shard: Shard) -> None:
        machine = self.machines.get(shard.shard_id)
        if machine is None:
            return
        now = self.now_ms()
        cursor = self._cursors.get(shard.shard_id, b"")
        keys, self._cursors[shard.shard_id] = expired_keys(machine.store, now, cursor,
                                                           EXPIRE_SAMPLE)
        if keys:
            await self.service.write(encode_expire(now, keys), group=shard.group)

    # -- moves ---------------------------------------------------------------------------------

    async def config_write(self, entry: bytes) -> Any:
        """Commit `entry` in the configuration group (forwarded to its leader)."""
        return await self.service.write(entry)

    def range_prefixes(self) -> list[bytes]:
        """The key prefixes of the range tables (their rows are not slot-addressed)."""
        tables = self.config_machine.catalog.tables.values()
        return sorted(t.prefix for t in tables if t.ranged)

    def machine_of_group(self, group_id: int) -> ShardMachine | None:
        """The machine of the shard whose Raft group is `group_id`, if hosted here."""
        for sid, machine in self.machines.items():
            shard = self.config.shards.get(sid)
            if shard is not None and shard.group == group_id:
                return machine
        return None

    def keys_of(self, args: list[bytes]) -> list[bytes]:
        """The keys of the client request `args` by the command table (none for an
        unknown or malformed one: it changes nothing anyway)."""
        if self._key_rows is None:
            table = self.layer.COMMANDS
            rows = table.values() if isinstance(table, dict) else table
            self._key_rows = {r.name.upper().encode(): r for r in rows if r.key_specs}
        row = self._key_rows.get(bytes(args[0]).upper()) if args else None
        if row is None:
            return []
        try:
            return list(get_keys(row, args))
        except KeysError:
            return []

    async def _moves(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_S)
            if not self.config.moves or not self.mover.leading():
                continue
            try:
                await self.mover.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a shard gone quiet, a lost leadership: next round
                log.warning("moves: %r", exc)

    async def _everysec(self) -> None:
        while True:
            await asyncio.sleep(EVERYSEC_S)
            for sid, machine in list(self.machines.items()):
                try:
                    await asyncio.to_thread(machine.engine.sync)
                except StorageFailed as exc:  # an fsync error is fatal, never retried
                    log.critical("node %d stops: shard %d: %r", self.me, sid, exc)
                    if not self._failed.done():
                        self._failed.set_exception(exc)
                    return
                except EngineError as exc:  # closed under the sync: the shard has gone
                    log.debug("sync of shard %d: %r", sid, exc)

    # -- INFO ----------------------------------------------------------------------------------

    def info(self) -> dict[str, dict[str, object]]:
        """INFO's sections: Cluster (`cluster_enabled:1` as a Redis Cluster node says, which
        redis-cli --cluster and redis-benchmark --cluster look for) and the node's own."""
        return {"Cluster": {"cluster_enabled": 1}, **self._info()}

    def _info(self) -> dict[str, dict[str, object]]:
        """The Shardstore, Raft and Tables (shardstore/cmd_tables.py) sections of INFO."""
        led = self.led_shards()
        section: dict[str, object] = {
            "node_id": self.me, "node_name": self.name, "config_epoch": self.config.epoch,
            "shards_total": len(self.config.shards),
            "shards_hosted": ",".join(str(s) for s in sorted(self.machines)),
            "shards_leading": ",".join(str(s.shard_id) for s in led),
            "fsync": self.options.fsync,
            "keyspace": self.config.keyspace,
            "moves_under_way": sum(1 for m in self.config.moves.values()
                                   if m.state != STATE_DONE),
            "moves_done": self.config.moves_done,
            **self.commands.asking.stats(),  # ASK answered, ASKING served (asking.py)
        }
        for sid, machine in sorted(self.machines.items()):
            stats = dict(getattr(machine.engine, "stats", {}) or {})
            section[f"shard{sid}"] = ",".join(f"{k}={v}" for k, v in sorted(stats.items()))
        raft = {k: v for k, v in self.host.status().items() if isinstance(v, int | str)}
        return {"Shardstore": section, "Raft": raft, "Tables": self.commands.tables.stats()}
