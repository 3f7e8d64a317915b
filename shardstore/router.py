"""`shardstore router`: one RESP address for clients that are not cluster-aware (the
Codis / twemproxy model), in front of a shardstore cluster.

Strategy: the router is a core RespServer whose rows are shardstore's command table
(shardstore/commands.py: arity, flags, key specs) with forwarding handlers, plus the
TABLE.* commands. It keeps a `RouteMap` (shardstore/router_plan.py) fetched from any node
it knows (`CLUSTER SLOTS`, `TABLE.LIST`, `TABLE.INFO` of each table): at start, every
REFRESH_S, and soon after a redirection or a failure. A command with keys is cut into
parts by `router_plan.plan`, the parts go to their masters at once (each on a pooled
connection of its own) and `router_plan.assemble` makes the reply. core's RespServer
keeps the replies of a pipelining client in the order of its commands.

Each part follows the cluster: `-MOVED slot addr` repoints the slot and goes there,
`-ASK slot addr` goes there once behind `ASKING`, `-TRYAGAIN`/`-CLUSTERDOWN` (a shard
without a leader) and a refused connection are tried again, after a fresh map, with
pauses, until DEADLINE_S; then the client gets `-CLUSTERDOWN router: ...` naming the
node and the last failure. A write whose connection broke after it was sent is not sent
again (it may have been applied): the client gets `-UNKNOWN router: ... outcome unknown`.

Commands without keys: DBSIZE sums every master's, FLUSHALL runs on each, SCAN walks the
masters in turn (the router's cursor is the node's cursor times MAX_MASTERS plus the
master's index). `TABLE.RANGE table from to [COUNT n]` is cut by the table's range map
into one part per range it meets, each read from its shard's master, and merged in key
order; with `CURSOR c` it answers one page and the next cursor, each shard asked for the
keys after the cursor's key (shardstore/range_pages.py); the shards touched are counted in
the router's INFO (`Router` section).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from core.command_table import Command
from core.limits import REDIS_MAX_BULK_BYTES, Limits
from core.resp import OK, CommandError, Simple
from core.resp_client import AsyncRespConnection, ProtocolError, ReplyError
from core.resp_commands import parse_int
from core.resp_server import RespServer
from core.resp_session import Session
from shardstore import commands as layer
from shardstore.catalog import NOT_HERE, CatalogError
from shardstore.range_pages import RangeRequest, join_pieces, parse_range_request, piece_args
from shardstore.router_plan import SHARD, Part, RouteMap, assemble, plan

__all__ = ["Router", "RouterOptions"]

log = logging.getLogger("shardstore.router")

NAME = "shardstore-router"
VERSION = "0.1.0"
REFRESH_S = 2.0  # the map is fetched again this often
STALE_REFRESH_S = 0.2  # at most this often after a redirection or failure
TIMEOUT_S = 5.0  # one request to one node
DEADLINE_S = 10.0  # one part, over every retry
PAUSE_S = 0.05  # between two tries of a part, doubled up to PAUSE_MAX_S
PAUSE_MAX_S = 0.5
MAX_REDIRECTS = 16  # MOVED/ASK hops of one part
MAX_IDLE_PER_NODE = 32  # pooled connections kept per node
STOP_RETRY_S = 0.5  # `stop` cancels the refresh loop again if it has not ended by then
MAX_MASTERS = 1024  # SCAN cursor: the master's index is the cursor modulo this
COMMON_NAMES = frozenset({"PING", "ECHO", "HELLO", "AUTH", "QUIT", "INFO", "COMMAND",
                          "CLIENT", "CONFIG", "SELECT"})
RETRY_CODES = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING"})
RESP3_MAPS = frozenset({"HGETALL"})  # flat arrays from the nodes (RESP2), maps in RESP3
ERR_DOWN = "CLUSTERDOWN router: {} did not answer within {:g}s: {}"
ERR_NO_MAP = "CLUSTERDOWN router: no node answered for the cluster's map: {}"
ERR_UNKNOWN = ("UNKNOWN router: lost {} while it ran a write; its outcome is unknown "
               "(not sent again)")  # not TRYAGAIN, which clients resend as not run
ERR_NO_TARGET = "no master known for {} {}"
ERR_CURSOR = "ERR invalid cursor"
NODE_ERRORS = (OSError, ProtocolError, TimeoutError)


class RouterOptions:
    """The router's seeds (any nodes, "host:port"), the nodes' password, and its limits."""

    def __init__(self, seeds: Sequence[str], *, node_password: str | None = None,
                 timeout_s: float = TIMEOUT_S, deadline_s: float = DEADLINE_S) -> None:
        self.seeds = list(seeds)
        self.node_password = node_password
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s


class _Lost(Exception):
    """A write's connection broke after it was sent."""


class Backends:
    """Pooled connections to the nodes, by "host:port"."""

    def __init__(self, options: RouterOptions) -> None:
        self.options = options
        self.idle: dict[str, list[AsyncRespConnection]] = {}

    async def call(self, address: str, args: Sequence[Any], asking: bool = False,
                   write: bool = False) -> Any:
        """One command on `address`; ReplyError for an error reply; a node failure as
        OSError/ProtocolError/TimeoutError, or _Lost for a write sent on a broken link."""
        pool = self.idle.setdefault(address, [])
        conn = pool.pop() if pool else None
        if conn is None or conn.closed:
            host, _, port = address.rpartition(":")
            conn = await AsyncRespConnection.connect(host, int(port),
                                                     timeout=self.options.timeout_s,
                                                     password=self.options.node_password)
        try:
            if asking:
                replies = await conn.pipeline([["ASKING"], list(args)])
                reply = replies[1]
                if isinstance(reply, ReplyError):
                    raise reply
            else:
                reply = await conn.call(*args)
        except NODE_ERRORS:
            conn.abort()
            if write:
                raise _Lost(address) from None
            raise
        if len(pool) < MAX_IDLE_PER_NODE:
            pool.append(conn)
        else:
            await conn.close()
        return reply

    async def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.abort()
        self.idle.clear()


def _simple(reply: Any) -> Any:
    """A node's reply as the router sends it on: simple strings stay simple."""
    if isinstance(reply, str):
        return Simple(reply)
    if isinstance(reply, list):
        return [_simple(r) for r in reply]
    return reply


class Router:
    """See the module header. `await start(host, port)`, serve, `await stop()`."""

    def __init__(self, options: RouterOptions, *, password: str | None = None) -> None:
        self.options = options
        self.routes = RouteMap()
        self.backends = Backends(options)
        self.known: list[str] = list(options.seeds)  # nodes to ask for the map
        self.figures = dict.fromkeys(("commands_forwarded", "parts_sent", "moved", "ask",
                                      "retries", "map_refreshes", "range_reads",
                                      "range_shards_touched", "node_failures"), 0)
        self._stale = True
        self._refreshing: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        limits = Limits(max_bulk=REDIS_MAX_BULK_BYTES)
        self.server = RespServer(NAME, VERSION, self.rows(), password=password, limits=limits,
                                 info=self.info)

    # -- life ----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        self._refreshing = asyncio.Lock()
        try:
            await self.refresh()
        except CommandError as exc:
            log.warning("router: no map yet: %s", exc)
        await self.server.start(host, port)
        self._task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        self._stopping = True  # the refresh loop ends on it even if a cancellation is lost
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_RETRY_S)
        await self.server.stop()
        await self.backends.close()

    async def _refresh_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(STALE_REFRESH_S if self._stale else REFRESH_S)
            try:
                await self.refresh()
            except CommandError as exc:
                log.info("router: map refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Fetch the slot map and the catalog from the first node that answers."""
        assert self._refreshing is not None
        async with self._refreshing:
            failures = []
            for address in list(dict.fromkeys([*self.routes.masters, *self.known])):
                try:
                    await self._refresh_from(address)
                    self._stale = False
                    self.figures["map_refreshes"] += 1
                    return
                except (*NODE_ERRORS, ReplyError, ValueError) as exc:
                    failures.append(f"{address}: {exc}")
            raise CommandError(ERR_NO_MAP.format("; ".join(failures) or "no node known"))

    async def _refresh_from(self, address: str) -> None:
        slots = await self.backends.call(address, ["CLUSTER", "SLOTS"])
        names = await self.backends.call(address, ["TABLE.LIST"])
        infos = [await self.backends.call(address, ["TABLE.INFO", row[0]]) for row in names]
        routes = RouteMap()
        routes.load_slots(slots)
        routes.load_tables(infos)
        self.routes = routes
        self.known = list(dict.fromkeys([*routes.masters, *self.known]))

    # -- rows ----------------------------------------------------------------------------------

    def rows(self) -> list[Command]:
        out = []
        for row in layer.COMMANDS:
            if row.name.upper() in COMMON_NAMES:
                continue
            handler = self._keyed(row) if row.key_specs else self._keyless(row)
            out.append(Command(row.name, handler, row.arity, row.flags, row.summary,
                               key_specs=row.key_specs, acl=row.acl, tips=row.tips))
        read, write = frozenset({"readonly"}), frozenset({"write"})
        out += [Command("TABLE.RANGE", self.cmd_range, -4, read),
                Command("TABLE.LIST", self._anywhere, 1, read),
                Command("TABLE.INFO", self._anywhere, 2, read),
                Command("TABLE.CREATE", self._table_change, -3, write),
                Command("TABLE.SPLIT", self._table_change, -3, write),
                Command("TABLE.MOVE", self._table_change, 3, write),
                *(Command(f"TABLE.MOVE.{step}", self._table_change, 2, write)
                  for step in ("REVERSE", "CANCEL", "FINISH"))]
        return out

    def _keyed(self, row: Command) -> Any:
        def handler(session: Session, args: list[bytes]) -> Coroutine[Any, Any, Any]:
            return self._forward(row, args, session.protocol)
        return handler

    def _keyless(self, row: Command) -> Any:
        name = row.name.upper()

        def handler(session: Session, args: list[bytes]) -> Coroutine[Any, Any, Any]:
            if name == "SCAN":
                return self._scan(args)
            return self._every_master(name, args, write="write" in row.flags)
        return handler

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(self, row: Command, args: list[bytes], protocol: int) -> Any:
        if self._stale:
            await self._try_refresh()
        self.figures["commands_forwarded"] += 1
        parts = plan(row, args, self.routes)
        write = "write" in row.flags
        replies = await asyncio.gather(*(self._send(p, write) for p in parts),
                                       return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        reply = _simple(assemble(row, parts, list(replies)))
        if protocol == 3 and row.name.upper() in RESP3_MAPS and isinstance(reply, list):
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return reply

    async def _try_refresh(self) -> None:
        try:
            await self.refresh()
        except CommandError as exc:
            log.info("router: %s", exc)

    async def _send(self, part: Part, write: bool) -> Any:
        """One part to its target's master, following the cluster (module header)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_s
        address, asking, pause, hops, catalog_retry = None, False, PAUSE_S, 0, True
        last: BaseException | str = "no try"
        while True:
            address = address or self.routes.address(part.target)
            if address is not None:
                try:
                    self.figures["parts_sent"] += 1
                    return await self.backends.call(address, part.args, asking, write)
                except _Lost:
                    raise CommandError(ERR_UNKNOWN.format(address)) from None
                except ReplyError as err:
                    redirect = self._redirect(err, repoint=part.target[0] != SHARD)
                    if redirect is not None and hops < MAX_REDIRECTS:
                        hops += 1
                        address, asking = redirect
                        continue
                    if NOT_HERE in err.message and catalog_retry:  # our catalog is behind
                        catalog_retry = False  # our catalog is behind the node's
                        await self._try_refresh()
                        self._retarget(part)  # a HASH table's binding may have switched
                        address = None
                        continue
                    if err.code not in RETRY_CODES:
                        raise CommandError(err.message) from None
                    last = err.message
                except NODE_ERRORS as exc:
                    self.figures["node_failures"] += 1
                    last = exc
            else:
                last = ERR_NO_TARGET.format(*part.target)
            if loop.time() + pause > deadline:
                raise CommandError(ERR_DOWN.format(address or part.target,
                                                   self.options.deadline_s, last))
            self.figures["retries"] += 1
            self._stale = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, PAUSE_MAX_S)
            await self._try_refresh()
            address, asking = None, False

    def _retarget(self, part: Part) -> None:
        """Route `part` again by its first key (argument 1) with the routes refreshed:
        a HASH table's rows follow its keyspace binding (shardstore/table_bindings.py)."""
        if len(part.args) < 2:
            return
        try:
            part.target = self.routes.target(bytes(part.args[1]))
        except CatalogError:
            pass  # a range row with no position: the node's answer stands

    def _redirect(self, err: ReplyError, repoint: bool = True) -> tuple[str, bool] | None:
        """(address, asking) for -MOVED / -ASK; a MOVED repoints its slot, unless it came
        for a row routed by a HASH table's own map (another keyspace's slot, not the
        seeds': the refresh it marks due reloads that map)."""
        words = err.message.split()
        if err.code not in ("MOVED", "ASK") or len(words) != 3:
            return None
        if err.code == "MOVED":
            self.figures["moved"] += 1
            if repoint:
                self.routes.moved(int(words[1]), words[2])
            self._stale = True
            return words[2], False
        self.figures["ask"] += 1
        return words[2], True

    # -- commands without keys -----------------------------------------------------------------

    async def _masters(self) -> list[str]:
        if self._stale or not self.routes.masters:
            await self._try_refresh()
        if not self.routes.masters:
            raise CommandError(ERR_NO_MAP.format("no slot map"))
        return list(self.routes.masters)

    async def _on(self, address: str, args: Sequence[Any], write: bool = False) -> Any:
        try:
            return await self.backends.call(address, args, write=write)
        except ReplyError as err:
            raise CommandError(err.message) from None
        except _Lost:
            raise CommandError(ERR_UNKNOWN.format(address)) from None
        except NODE_ERRORS as exc:
            self._stale = True
            raise CommandError(ERR_DOWN.format(address, self.options.timeout_s, exc)) from None

    async def _every_master(self, name: str, args: list[bytes], write: bool) -> Any:
        replies = [await self._on(a, args, write) for a in await self._masters()]
        if name == "DBSIZE":
            return sum(int(r) for r in replies)
        return _simple(replies[-1]) if replies else OK

    async def _scan(self, args: list[bytes]) -> Any:
        cursor = parse_int(args[1], ERR_CURSOR)
        if cursor < 0:
            raise CommandError(ERR_CURSOR)
        masters = await self._masters()
        index, node_cursor = cursor % MAX_MASTERS, cursor // MAX_MASTERS
        if index >= len(masters):
            return [b"0", []]
        reply = await self._on(masters[index], [args[0], str(node_cursor).encode(), *args[2:]])
        following, keys = int(reply[0]), reply[1]
        if following == 0:
            index, following = index + 1, 0
            if index >= len(masters):
                return [b"0", keys]
        return [str(following * MAX_MASTERS + index).encode(), keys]

    # -- tables --------------------------------------------------------------------------------

    async def _anywhere(self, session: Session, args: list[bytes]) -> Any:
        masters = await self._masters()
        return _simple(await self._on(masters[0], args))

    async def _table_change(self, session: Session, args: list[bytes]) -> Any:
        """TABLE.CREATE / SPLIT / MOVE (and MOVE's REVERSE, CANCEL, FINISH) on any node (it
        commits them in the configuration group); the map is fetched again after."""
        reply = await self._on((await self._masters())[0], args, write=True)
        await self._try_refresh()
        return _simple(reply)

    async def cmd_range(self, session: Session, args: list[bytes]) -> Any:
        """TABLE.RANGE across shards, one page when CURSOR is given (see the module
        header and shardstore/range_pages.py)."""
        request = await self._range_args(args)
        pieces = request.table.pieces(request.low, request.high)
        parts = [Part((SHARD, sid), piece_args(request, a, b)) for a, b, sid in pieces]
        replies = await asyncio.gather(*(self._send(p, False) for p in parts),
                                       return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        self.figures["range_reads"] += 1
        self.figures["range_shards_touched"] += len({sid for _, _, sid in pieces})
        try:
            return join_pieces(replies, request)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def _range_args(self, args: list[bytes]) -> RangeRequest:
        if args[1].decode("utf-8", "replace") not in self.routes.catalog.tables:
            await self._try_refresh()
        try:
            return parse_range_request(args, self.routes.catalog)
        except CatalogError as exc:
            raise CommandError(str(exc)) from None

    def info(self) -> dict[str, dict[str, object]]:
        """The Router section of INFO."""
        section: dict[str, object] = dict(self.figures)
        section["masters"] = ",".join(self.routes.masters)
        section["tables"] = len(self.routes.catalog.tables)
        return {"Router": section}
