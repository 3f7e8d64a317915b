"""The idgen daemon: the asyncio layer around `IdGenerator`, the data directory and peers.

Order of effects: a high-water mark is fsynced (in a worker thread, so the event loop keeps
issuing below the old mark) before the generator is told about it; ids above a mark are
never issued before it is durable. A keeper task renews the mark ahead of the clock so NEXT
rarely waits for the disk. With a node port (core/rpc) the daemon answers its peers' checks
there, and a watcher task re-checks the peers (idgen/peers.py) and stops NEXT on conflict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from core.clock import Clock
from core.resp import CommandError, Raw, encode_error
from core.resp_commands import parse_int
from core.resp_server import Command, Limits, RespServer, Session
from core.rpc import Address, NodeTransport
from core.storage import FatalStorageError
from idgen import peers
from idgen.generator import IdGenerator, IssueRefused, Wait
from idgen.layout import parse
from idgen.store import IdgenStore
from native import snowflake
from native.resp import encode_int_array

log = logging.getLogger(__name__)

VERSION = "0.1.0"
MAX_BATCH = 100_000
ERR_BATCH = f"ERR count must be an integer between 1 and {MAX_BATCH}"
ERR_BAD_ID = "ERR id must be an integer between 0 and 9223372036854775807"
YEARS_LEFT_WARNING = 1.0
# Commands are tiny: the parser may hold little per client (smaller than core.limits'
# defaults: 64 KiB arguments, 1,024 of them, 1 MiB of unparsed input).
LIMITS = Limits(max_bulk=64 * 1024, max_elements=1024, max_buffer=1024 * 1024)


def _first_id(ids: list[int]) -> int:
    return ids[0]


def _id_array(ids: list[int]) -> Raw:
    return Raw(encode_int_array(ids))


def _id_replies(ids: list[int]) -> Raw:
    """One integer reply per id, as `len(ids)` separate NEXT commands would get."""
    return Raw((b":%d\r\n" * len(ids)) % tuple(ids))


class IdgenServer:
    """One running idgen daemon. `open_node_port()` (with a transport), `check_peers()`,
    `start()`, then `close()`; `fatal` is set on a disk error. `transport` is this node's
    core/rpc port, where the `idgen` service answers peers; `peer_nodes` (node id -> node
    port) are the daemons this one checks."""

    def __init__(
        self,
        store: IdgenStore,
        clock: Clock,
        *,
        password: str | None = None,
        max_backward_ms: int = 5,
        reserve_ms: int = 1000,
        transport: NodeTransport | None = None,
        peer_nodes: Mapping[int, Address] | None = None,
        max_skew_ms: int = 1000,
        peer_check_interval_s: float = 5.0,
        max_clients: int = 10_000,
    ) -> None:
        self.store = store
        self.clock = clock
        self.password = password
        self.generator = IdGenerator(
            store.worker_id,
            store.epoch_ms,
            clock,
            store.hwm_ms,
            max_backward_ms=max_backward_ms,
            reserve_ms=reserve_ms,
            hwm_reserve_ms=store.hwm_reserve_ms,
        )
        self.transport = transport
        self.peer_check: peers.PeerCheck | None = None
        if transport is not None:
            transport.register(peers.SERVICE, peers.WhoamiService(self.whoami))
            if peer_nodes:
                self.peer_check = peers.PeerCheck(transport, peer_nodes, clock)
        self.max_skew_ms = max_skew_ms
        self.peer_check_interval_s = peer_check_interval_s
        self.peer_readings: list[peers.PeerReading] = []
        self.fatal = asyncio.Event()
        self._reserving: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_years = False
        limits = LIMITS.with_clients(max_clients)
        self.resp = RespServer(
            "idgen", VERSION, self.commands(), password=password, limits=limits, info=self.info
        )

    def commands(self) -> list[Command]:
        return [
            Command(
                "NEXT", self.cmd_next, -1, frozenset({"write", "fast"}), max_arity=2,
                summary="NEXT [count]: one id, or an array", batch=self.next_run,
            ),
            Command(
                "PARSE", self.cmd_parse, 2, frozenset({"loading", "stale", "fast"}),
                summary="PARSE id: time, worker, sequence",
            ),
            Command(
                "IDGEN.WHOAMI", self.cmd_whoami, 1, frozenset({"loading", "stale", "fast"}),
                summary="Worker id and wall clock",
            ),
        ]

    # -- lifecycle ---------------------------------------------------------------------
    async def check_peers(self) -> str | None:
        """Probe the peers once; set or clear the generator's fault. Returns the fault."""
        if self.peer_check is None:
            return None
        self.peer_readings = await self.peer_check.probe_all()
        fault = peers.judge(self.store.worker_id, self.peer_readings, self.max_skew_ms)
        if fault != self.generator.fault:
            if fault:
                log.error("stopping NEXT: %s", fault)
            else:
                log.warning("peer check passes again; NEXT resumes")
        self.generator.fault = fault
        return fault

    async def open_node_port(self) -> None:
        """Listen for peers (before the first check, so peers starting together meet).
        Raises OSError (address in use) or core.rpc.InsecureConfig."""
        if self.transport is not None:
            await self.transport.start()

    async def start(self, host: str, port: int) -> None:
        await self.reserve()
        self._check_years_left()
        await self.resp.start(host, port)
        self._tasks = [asyncio.create_task(self._keep_reserving())]
        if self.peer_check is not None:
            self._tasks.append(asyncio.create_task(self._watch_peers()))

    async def close(self) -> None:
        await self.resp.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transport is not None:
            await self.transport.close()
        if self._reserving is not None:
            await asyncio.gather(self._reserving, return_exceptions=True)
        self.store.close()

    # -- the high-water mark -----------------------------------------------------------
    async def reserve(self) -> None:
        """Make sure a mark ahead of the clock is durable; one fsync in flight at a time."""
        if self._reserving is None:
            target = self.generator.reservation()
            if target is None:
                return
            self._reserving = asyncio.create_task(self._persist(target))
        await asyncio.shield(self._reserving)

    async def _persist(self, target: int) -> None:
        try:
            await asyncio.to_thread(self.store.record_hwm, target, self.generator.reserve_ms)
            self.generator.reserved(target)
        except FatalStorageError:
            # Never retried: NEXT refuses from now on and the daemon exits.
            log.critical("cannot persist the high-water mark; stopping", exc_info=True)
            self.generator.fault = "IOERR the data directory cannot be written"
            self.fatal.set()
        finally:
            self._reserving = None

    async def _keep_reserving(self) -> None:
        period = max(self.generator.reserve_ms / 4000, 0.01)
        while True:
            await asyncio.sleep(period)
            await self.reserve()
            self._check_years_left()

    async def _watch_peers(self) -> None:
        while True:
            await asyncio.sleep(self.peer_check_interval_s)
            await self.check_peers()

    def _check_years_left(self) -> None:
        years = self.generator.years_left()
        if years < YEARS_LEFT_WARNING and not self._warned_years:
            self._warned_years = True
            log.warning("only %.2f years left before the 41 time bits run out", years)

    # -- commands ----------------------------------------------------------------------
    def cmd_next(self, session: Session, args: list[bytes]) -> object:
        gen = self.generator
        try:
            if len(args) == 1:
                result = gen.next_one()
                if type(result) is int:
                    return result
                return self._next_slow([], 1, result, _first_id)
            count = parse_int(args[1], ERR_BATCH)
            if not 1 <= count <= MAX_BATCH:
                raise CommandError(ERR_BATCH)
            out: list[int] = []
            wait = gen.fill(out, count)
            if wait is None:
                return Raw(encode_int_array(out))
            return self._next_slow(out, count, wait, _id_array)
        except IssueRefused as exc:
            raise CommandError(str(exc)) from None

    def next_run(self, session: Session, count: int) -> object:
        """`count` pipelined plain NEXTs at once: `count` integer replies, one fill."""
        out: list[int] = []
        try:
            wait = self.generator.fill(out, count)
        except IssueRefused as exc:
            return _id_replies(out) + encode_error(str(exc)) * (count - len(out))
        if wait is None:
            return _id_replies(out)
        return self._next_slow(out, count, wait, _id_replies)

    async def _next_slow(
        self, out: list[int], count: int, wait: Wait, finish: Callable[[list[int]], object]
    ) -> object:
        """Issue the rest of `count` ids once the generator can; `finish` encodes them."""
        gen = self.generator
        while True:
            if wait.kind == "reserve":
                await self.reserve()
            elif wait.kind == "sleep":
                await asyncio.sleep(wait.ms / 1000)
            else:
                await asyncio.sleep(0)  # next ms soon: let other clients in meanwhile
            try:
                next_wait = gen.fill(out, count - len(out))
            except IssueRefused as exc:
                if finish is _id_replies:
                    return _id_replies(out) + encode_error(str(exc)) * (count - len(out))
                raise CommandError(str(exc)) from None
            if next_wait is None:
                return finish(out)
            wait = next_wait

    def cmd_parse(self, session: Session, args: list[bytes]) -> object:
        id_ = parse_int(args[1], ERR_BAD_ID)
        try:
            parsed = parse(id_, self.store.epoch_ms)
        except ValueError:
            raise CommandError(ERR_BAD_ID) from None
        return {
            "id": parsed.id,
            "time_ms": parsed.time_ms,
            "time": parsed.time_iso,
            "worker": parsed.worker,
            "sequence": parsed.sequence,
        }

    def cmd_whoami(self, session: Session, args: list[bytes]) -> object:
        return self.whoami()

    def whoami(self) -> dict[str, int]:
        """Worker id, wall clock and epoch: IDGEN.WHOAMI's reply and the peers' answer."""
        return {
            "worker_id": self.store.worker_id,
            "wall_ms": self.clock.wall_ms(),
            "epoch_ms": self.store.epoch_ms,
        }

    # -- figures -----------------------------------------------------------------------
    def info(self) -> dict[str, dict[str, object]]:
        gen = self.generator
        epoch = datetime.fromtimestamp(self.store.epoch_ms / 1000, tz=UTC)
        section: dict[str, object] = {
            "worker_id": self.store.worker_id,
            "epoch_ms": self.store.epoch_ms,
            "epoch": epoch.isoformat().replace("+00:00", "Z"),
            "ids_issued": gen.issued,
            "clock_waits": gen.waits["clock"],
            "sequence_waits": gen.waits["sequence"],
            "reserve_waits": gen.waits["reserve"],
            "clock_state": gen.clock_state(),
            "wall_ms": self.clock.wall_ms(),
            "last_issued_ms": gen.last_issued_ms,
            "durable_hwm_ms": gen.durable_hwm_ms,
            "reserve_ms": gen.reserve_ms,
            "max_backward_ms": gen.max_backward_ms,
            "years_left": f"{gen.years_left():.2f}",
            "generator": snowflake.IMPLEMENTATION,
            "data_dir": str(self.store.path),
        }
        if self.transport is not None:
            section["node_id"] = self.transport.node_id
            section["peer_listen"] = f"{self.transport.listen[0]}:{self.transport.port}"
        if self.peer_check is not None:
            check = self.peer_check
            section["peers"] = ",".join(f"{n}={check.address(n)}" for n in sorted(check.peers))
            section["peers_reachable"] = len(self.peer_readings)
            section["peer_offsets_ms"] = ",".join(
                f"{r.node_id}={r.offset_ms:+.1f}" for r in self.peer_readings
            )
        return {"Idgen": section}
