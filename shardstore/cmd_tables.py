"""The TABLE.* commands of a shardstore node, and the routing decision for rows of range
tables.

Strategy: the catalog (shardstore/catalog.py) lives in the configuration group, so
TABLE.CREATE and TABLE.SPLIT parse their words into a "table.*" entry and commit it
there (any node: core forwards to group 0's leader); TABLE.LIST and TABLE.INFO read this
node's copy. Rows of range tables are not slot-addressed: `range_shard`, which
shardstore/handlers.py asks before the slot map, finds the shard of a command's keys by
the table's range map and returns it when this node hosts it; otherwise the node refuses
with an error naming the router (never `-MOVED`, which would poison a cluster client's slot
map). `TABLE.RANGE table from to [COUNT n]` reads the keys with a position in [from, to),
in key order, from the shards whose ranges meet [from, to) only (all must be hosted here:
the router, shardstore/router.py, sends each node its part); the shards it touched are
counted, per table in TABLE.INFO and in the `Tables` section of INFO.

Syntax (points as shardstore/table_keys.py reads them; `-` and `+` are the open ends):

    TABLE.CREATE name [KEYSPACE ks] HASH
    TABLE.CREATE name [KEYSPACE ks] RANGE DATE|SNOWFLAKE [EPOCH ms] [SPLITS point ...]
                 [SHARDS id ...]                 (one shard per range; default round-robin)
    TABLE.SPLIT name point [SHARD id]            (default: the range's own shard) -> OK,
                                                 or a move's id when SHARD is another
    TABLE.LIST                                   -> [[name, keyspace, rule], ...]
    TABLE.INFO name                              -> a map (see `cmd_info`)
    TABLE.RANGE name from to [COUNT n]           -> keys (at most n)
    TABLE.RANGE name from to [COUNT n] CURSOR c  -> [next cursor, keys]: a page; the
                                                 first call sends 0, the last page
                                                 answers 0 (shardstore/range_pages.py)
    TABLE.MOVE name keyspace                     -> ids of the moves begun
    TABLE.MOVE.REVERSE | .CANCEL | .FINISH name  (shardstore/table_move.py)

TABLE.CREATE of a RANGE table is refused when keys with its prefix exist in a shard this
node hosts (they were placed by slot; the range map would hide them): create a range table
before writing its rows. Only the shards hosted here are looked at.

A split that gives [point, end of its range) to another shard runs as a move of those rows
(shardstore/moves.py with a positions key set, shardstore/table_moves.py): the source
shard's log fences them first, so no write can land on the old shard unseen; they are
copied, and the table's map gives the range to the new shard when the move ends (split
there). It does so even when no row lies there (the move then copies nothing), as a bare
map change could race a write routed by the old map. TABLE.SPLIT answers the move's id
(`SHARDSTORE.MOVES` shows its progress); a split that keeps the shard answers OK.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.command_table import Command, KeysError, get_keys
from core.raft.host import RaftHost
from core.raft_service import RaftService
from core.resp import OK, CommandError
from core.resp_session import Session
from shardstore import catalog as catalog_mod
from shardstore.catalog import Catalog, CatalogError, Table
from shardstore.cluster import ClusterConfig, ClusterView, ConfigMachine, Shard
from shardstore.keysets import KeySet
from shardstore.machine import ShardMachine
from shardstore.migrate import Mover
from shardstore.moves import encode_begin
from shardstore.range_pages import RangeRequest, page_reply, parse_range_request
from shardstore.table_bindings import Bindings, slot_runs
from shardstore.table_keys import (
    KIND_SNOWFLAKE,
    MAX_POSITION,
    point_text,
)
from shardstore.table_move import TableMoveCommands, move_status
from shardstore.table_scan import merge_keys, range_keys
from shardstore.table_verify import SERVICE_DIGEST, DigestService, Verifier

__all__ = ["ERR_NOT_SERVED", "TableCommands"]

INFO_COUNT_MAX = 10_000  # keys TABLE.INFO counts per range at most (a walk of the key index)
READONLY_ATTR = "shardstore_readonly"  # handlers.py's READONLY mark on a Session
ERR_NOT_SERVED = ("ERR {} of range table {!r} lies on shard {}, which this node does not "
                  "serve (its master: {}): " + catalog_mod.NOT_HERE)
ERR_OPENING = "TRYAGAIN shard {} is opening on this node"
ERR_PREFIX_USED = ("ERR keys beginning {!r} exist (shard {}): they are placed by slot, and a "
                   "RANGE table would hide them; create a range table before its rows")
ERR_NO_SHARD = "CLUSTERDOWN shard {} of range table {!r} is not in the map"
UNKNOWN = "unknown"


class TablesNode(Protocol):
    """What the table commands need of the node (shardstore.server.ShardNode)."""

    me: int
    service: RaftService
    machines: dict[int, ShardMachine]
    config_machine: ConfigMachine
    host: RaftHost
    mover: Mover

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def full_config(self) -> ClusterConfig: ...

    def now_ms(self) -> int: ...

    def view(self) -> ClusterView: ...

    def machine_of_group(self, group_id: int) -> ShardMachine | None: ...


class TableCommands:
    """The TABLE.* rows and `range_shard` (see the module header)."""

    def __init__(self, node: TablesNode) -> None:
        self.node = node
        self.reads = 0  # TABLE.RANGE calls answered
        self.shards_touched = 0  # shards they read, summed
        self.by_table: dict[str, list[int]] = {}  # name -> [reads, shards touched, last]
        self.moves = TableMoveCommands(node, lambda: self.catalog)  # TABLE.MOVE*
        node.mover.before_round = self.moves.drive  # the coordinator's table moves
        self.verifier = self._verifier(node)
        self.bindings = Bindings()  # HASH tables bound to other keyspaces

    @staticmethod
    def _verifier(node: TablesNode) -> Verifier:
        """The checksums compared before a range move's hand-over (table_verify.py): its
        service on this node, and the coordinator's hook."""
        timeout_s = node.mover.timeout_s

        def store_of(group: int) -> Any:
            machine = node.machine_of_group(group)
            return machine.store if machine is not None else None

        service = DigestService(node.host, store_of, timeout_s)
        node.host.transport.register(SERVICE_DIGEST, service)
        verifier = Verifier(node, service, timeout_s)
        node.mover.verify = verifier.verify
        return verifier

    @property
    def catalog(self) -> Catalog:
        return self.node.config_machine.catalog

    def rows(self) -> list[Command]:
        write = frozenset({"write"})
        read = frozenset({"readonly"})
        return [
            Command("TABLE.CREATE", self.cmd_create, -3, write,
                    summary="Create a table: a key prefix with a HASH or RANGE rule"),
            Command("TABLE.SPLIT", self.cmd_split, -3, write,
                    summary="Cut a range table's range at a point"),
            Command("TABLE.LIST", self.cmd_list, 1, read, summary="The tables"),
            Command("TABLE.INFO", self.cmd_info, 2, read,
                    summary="A table's rule, ranges, shards and range-read figures"),
            Command("TABLE.RANGE", self.cmd_range, -4, read,
                    summary="Keys of a range table with a position in [from, to)"),
            *self.moves.rows(),
        ]

    def stats(self) -> dict[str, object]:
        """The Tables section of INFO."""
        return {"tables": len(self.catalog.tables), "range_reads": self.reads,
                "range_shards_touched": self.shards_touched,
                "move_rows_verified": self.verifier.verified,
                "move_verify_mismatches": self.verifier.mismatches}

    # -- the routing decision ------------------------------------------------------------------

    def range_shard(self, row: Command, args: list[bytes]) -> Shard | None:
        """The shard of a command whose keys are rows of range tables, hosted here; None
        when its keys are no such rows (the slot map decides). CommandError: the keys
        span shards or mix kinds, a key has no position, or the shard is not served here,
        or a key is a row of a HASH table bound to another keyspace (table_bindings.py)."""
        catalog, keyspace = self.catalog, self.node.config.keyspace
        if not catalog.has_ranges and not self.bindings.elsewhere(catalog, keyspace):
            return None
        try:
            keys = get_keys(row, args)
        except KeysError:
            return None  # the slot path answers the arity error
        self.bindings.refuse(catalog, keyspace, keys)  # table_bindings.py
        if not catalog.has_ranges:
            return None
        try:
            sid = catalog.range_shard(keys)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        if sid is None:
            return None
        table = catalog.table_of(keys[0])
        name = table.name if table else ""
        return self._hosted(sid, name, f"key {keys[0].decode('utf-8', 'replace')!r}")

    def _full_view(self) -> ClusterView:
        """Every keyspace's shards and nodes: a range table's ranges may lie on shards of
        other keyspaces (a table moved by TABLE.MOVE)."""
        view = self.node.view()
        full = self.node.full_config
        if full is view.config:
            return view
        addresses = dict(self.node.service.book.clients)
        return ClusterView(full, self.node.me, addresses, view.leaders, view.offsets,
                           view.bus_ports)

    def _hosted(self, sid: int, table: str, what: str) -> Shard:
        shard = self.node.full_config.shards.get(sid)
        if shard is None:
            raise CommandError(ERR_NO_SHARD.format(sid, table))
        if sid in self.node.machines:
            return shard
        if self.node.me in shard.members:
            raise CommandError(ERR_OPENING.format(sid))
        view = self._full_view()
        members = view.ordered_members(shard)
        master = view.addresses[members[0]] if members else UNKNOWN
        raise CommandError(ERR_NOT_SERVED.format(what, table, sid, master))

    # -- commands ------------------------------------------------------------------------------

    async def cmd_create(self, session: Session, args: list[bytes]) -> Any:
        try:
            entry = catalog_mod.parse_create(args)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        if entry["rule"] == catalog_mod.RULE_RANGE:
            await self._check_prefix_unused(entry["name"])
        return await self._commit(catalog_mod.encode_create(entry))

    async def _check_prefix_unused(self, name: str) -> None:
        """Refuse a RANGE table whose prefix already has keys in a shard hosted here:
        they were placed by slot, and the range map would hide them."""
        prefix = name.encode() + catalog_mod.SEPARATOR
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        for sid, machine in sorted(self.node.machines.items()):
            await self.node.service.barrier(self.node.config.shards[sid].group)
            if machine.engine.scan(prefix, end, 1):
                raise CommandError(ERR_PREFIX_USED.format(prefix.decode(), sid))

    async def _commit(self, data: bytes) -> Any:
        await self.node.service.write(data)
        return OK

    async def cmd_split(self, session: Session, args: list[bytes]) -> Any:
        """A split keeping the range's shard: a map change (OK). One giving [at, end of
        its range) to another shard: a move of those rows (the move's id)."""
        try:
            entry = catalog_mod.parse_split(args, self.catalog)
            table = self.catalog.range_table(entry["name"])
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        old = table.shard_at(entry["at"])
        if entry["shard"] == old:
            return await self._commit(catalog_mod.encode_split(entry))
        _, high, _ = table.pieces(entry["at"], MAX_POSITION)[0]  # the rest of the range
        keys = KeySet.of_positions(table.prefix, table.kind, table.epoch_ms, entry["at"], high)
        return await self.node.service.write(encode_begin(keys, old, entry["shard"]))

    def cmd_list(self, session: Session, args: list[bytes]) -> Any:
        """[[name, keyspace, rule], ...] by name; rule HASH, RANGE DATE or RANGE SNOWFLAKE."""
        return [[t.name.encode(), t.keyspace.encode(), t.rule_text().encode()]
                for _, t in sorted(self.catalog.tables.items())]

    def cmd_info(self, session: Session, args: list[bytes]) -> Any:
        """name, keyspace, rule, kind, epoch, ranges ([from, to, shard, [address ...]
        master first, keys here or -1 when this node does not host the shard]), the
        range-read figures of this node: range_reads, range_shards_touched, last, and
        `move`: a move to another keyspace (table_move.move_status) or nil; for a HASH
        table bound to another keyspace than this node's, `slots` too (its keyspace's
        slot runs: shardstore/table_bindings.py)."""
        name = args[1].decode("utf-8", "replace")
        table = self.catalog.tables.get(name)
        if table is None:
            raise CommandError(catalog_mod.ERR_NO_TABLE.format(name))
        reads, touched, last = self.by_table.get(name, [0, 0, 0])
        reply: dict[bytes, Any] = {
            b"name": table.name.encode(), b"keyspace": table.keyspace.encode(),
            b"rule": table.rule.encode(), b"kind": table.kind.encode(),
            b"epoch": table.epoch_ms if table.kind == KIND_SNOWFLAKE else 0,
            b"ranges": self._ranges(table) if table.ranged else [],
            b"range_reads": reads, b"range_shards_touched": touched,
            b"last_range_shards": last,
            b"move": move_status(table, self.node.full_config),
        }
        if not table.ranged and table.keyspace != self.node.config.keyspace:
            space = self.node.full_config.spaces.get(table.keyspace)  # table_bindings.py
            reply[b"slots"] = slot_runs(space.ranges if space else [],
                                        self.node.full_config.shards, self._full_view())
        return reply

    def _ranges(self, table: Table) -> list[Any]:
        view = self._full_view()
        out: list[Any] = []
        for low, high, sid in table.ranges():
            shard = self.node.full_config.shards.get(sid)
            members = view.ordered_members(shard) if shard else []
            machine = self.node.machines.get(sid)
            keys = -1
            if machine is not None:
                keys = len(range_keys(machine.engine, table, low, high, INFO_COUNT_MAX,
                                      self.node.now_ms()))
            out.append([point_text(table.kind, low).encode(),
                        point_text(table.kind, high).encode(), sid,
                        [view.addresses[m].encode() for m in members], keys])
        return out

    async def cmd_range(self, session: Session, args: list[bytes]) -> Any:
        """The keys of the range, at most COUNT, after CURSOR's key when it is given
        (shardstore/range_pages.py says the reply's forms)."""
        request = self._range_args(args)
        table = request.table
        pieces = table.pieces(request.low, request.high)
        sids = list(dict.fromkeys(sid for _, _, sid in pieces))
        shards = [self._hosted(sid, table.name, "part of the range") for sid in sids]
        if not getattr(session, READONLY_ATTR, False):
            for shard in shards:
                await self.node.service.barrier(shard.group)
        now = self.node.now_ms()
        parts = []
        for piece_low, piece_high, sid in pieces:
            machine = self.node.machines.get(sid)
            if machine is None:
                raise CommandError(ERR_OPENING.format(sid))
            parts.append(range_keys(machine.engine, table, piece_low, piece_high,
                                    request.count + 1, now, request.after))
        self._count(table.name, len(sids))
        return page_reply(merge_keys(parts, request.count + 1), request.count, request)

    def _range_args(self, args: list[bytes]) -> RangeRequest:
        try:
            return parse_range_request(args, self.catalog)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None

    def _count(self, name: str, shards: int) -> None:
        self.reads += 1
        self.shards_touched += shards
        figures = self.by_table.setdefault(name, [0, 0, 0])
        figures[0] += 1
        figures[1] += shards
        figures[2] = shards
