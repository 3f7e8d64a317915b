"""The RESP-on-Raft service: what turns a daemon's state machine and command table into a
clustered RESP daemon on a Raft group (DESIGN.md, "What core/ offers every daemon").

Strategy: a daemon declares its state machine (apply, snapshot, restore: see
core/service_machine.py) and its commands; `RaftService` builds the Raft driver around the
machine (wrapped with the node address book), the RESP server around the commands plus the
CLUSTER.* commands (core/cluster_commands.py), and offers the daemon's handlers two calls:

- `await service.write(entry, group=None)`: commit an entry in a group (the main group by
  default) and return what apply returned (a str result becomes an error reply). Routing
  FORWARD (the default): any node that hosts the group accepts the write and forwards it
  to the leader, then waits until it has applied the entry itself, so the client reads its
  own write wherever it asks. Routing REDIRECT: a follower answers with the daemon's
  redirect hook instead (e.g. `-MOVED slot host:port`, pointing at the leader; without a
  hook it forwards);
- `await service.barrier(group=None)`: wait until local reads are linearizable (Raft read
  index, confirmed by a quorum), on any node of the group.

A group the node does not host is answered by the redirect hook (`Redirect(group, None)`)
or, without one, ERR_NO_GROUP. While the group has no leader or no quorum a request fails
with `-TRYAGAIN <reason>`; when a leader other than this node is known (it is unreachable,
stopped or slow), the text ends with ` leader=HOST:PORT`, its client address from the
address book, so a client can go there directly (LEADER_HINT; the client failover core
parses this suffix).

Address book: each node publishes its own client address (`advertise`) through the main
group once it is a member and a leader is reachable, and again if the book ever loses or
changes it; CLUSTER.ADD may name it earlier and CLUSTER.REMOVE forgets it.

Groups: the driver is reached through a `GroupDirectory` (`group(gid)`, `group_ids()`).
A `RaftDriver` is one group, id 0 (`SingleGroup`); a host of many groups is its own
directory. Each group's handle answers the `GroupHandle` protocol.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable
from typing import Any

from core.cluster_commands import ClusterCommands
from core.raft.driver import NotLeaderError
from core.raft.errors import RaftError
from core.raft_groups import (
    MAIN_GROUP,
    GroupDirectory,
    GroupHandle,
    SingleGroup,
    group_id_of,
)
from core.resp import CommandError
from core.resp_server import Command, Limits, RespServer
from core.service_machine import AddressBook, ServiceMachine, StateMachine, encode_client
from core.users import UserDirectory

__all__ = [
    "ERR_NO_GROUP", "ERR_OUTCOME_UNKNOWN", "ERR_TRYAGAIN", "LEADER_HINT", "MAIN_GROUP",
    "GroupDirectory", "GroupHandle", "RaftService", "Redirect", "Routing", "SingleGroup",
    "group_id_of",
]

log = logging.getLogger("core.raft_service")

ERR_TRYAGAIN = "TRYAGAIN the cluster cannot take the request now: {}"
# A write that may or may not have been applied. Not TRYAGAIN: Redis Cluster clients resend
# a TRYAGAIN as not run (redis-py's RedisCluster does), which would apply an INCR twice.
ERR_OUTCOME_UNKNOWN = ("UNKNOWN the write may or may not have been applied ({}): read before "
                       "retrying it")
LEADER_HINT = " leader={}"
ERR_NO_GROUP = "ERR this node hosts no group {}"
REASON_NO_LEADER = "no leader"
DEFAULT_TIMEOUT_S = 10.0  # a write or read barrier waits this long (the driver's default)
PUBLISH_CHECK_S = 1.0  # how often a node checks that the book has its client address


class Routing(enum.Enum):
    """What a follower does with a write: forward it to the leader, or redirect the client."""

    FORWARD = "forward"
    REDIRECT = "redirect"


# (group id, the group leader's client address if known) -> the error text of the reply
Redirect = Callable[[int, str | None], str]
DriverFactory = Callable[..., Any]  # (apply, snapshot, restore) -> a started-later driver


class RaftService:
    """One node of a RESP-on-Raft daemon: `start(host, port)`, use, `stop()`.

    `machine`: the daemon's StateMachine; `driver_factory(apply, snapshot, restore)` builds
    the Raft driver (a RaftDriver, or a host that is also a GroupDirectory); `commands`:
    the daemon's command table (the CLUSTER.* rows are added). `advertise`: this node's
    client address for the book (default: the address `start` listens on); `redirect` and
    `routing`: see the module header; `timeout_s`: how long a write or read barrier may
    wait before TRYAGAIN; `users`: named users `AUTH user pass` may name (core.users).
    """

    def __init__(self, name: str, version: str, machine: StateMachine,
                 driver_factory: DriverFactory, commands: Iterable[Command], *,
                 password: str | None = None, users: UserDirectory | None = None,
                 limits: Limits | None = None,
                 info: Callable[[], dict[str, dict[str, object]]] | None = None,
                 advertise: str | None = None, redirect: Redirect | None = None,
                 routing: Routing = Routing.FORWARD, main_group: int = MAIN_GROUP,
                 timeout_s: float = DEFAULT_TIMEOUT_S, publish_address: bool = True) -> None:
        self.machine = ServiceMachine(machine)
        self.book: AddressBook = self.machine.book
        self.driver = driver_factory(self.machine.apply, self.machine.snapshot,
                                     self.machine.restore)
        self.directory: GroupDirectory = (self.driver if hasattr(self.driver, "group_ids")
                                          else SingleGroup(self.driver))
        self.main_group = main_group
        self.password = password
        self.advertise = advertise or ""
        self.redirect = redirect
        self.routing = routing
        self.timeout_s = timeout_s
        self.publish_address = publish_address
        self.cluster = ClusterCommands(self)
        self.resp = RespServer(name, version, [*commands, *self.cluster.commands()],
                               password=password, users=users, limits=limits, info=info)
        self._publisher: asyncio.Task[None] | None = None

    # -- life ----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Start the driver, then serve clients on host:port (port 0: any)."""
        await self.driver.start()
        await self.resp.start(host, port)
        if not self.advertise:
            self.advertise = f"{host}:{self.resp.port}"
        if self.publish_address:
            self._publisher = asyncio.create_task(self._publish())

    async def stop(self) -> None:
        """Hand leadership over (so the group is not leaderless while clients drain), stop
        serving clients, then stop the driver."""
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        await self.driver.hand_over()
        await self.resp.stop()
        await self.driver.stop(transfer=True)

    # -- what the daemon's handlers call -------------------------------------------------------

    def handle(self, group: int | None = None) -> GroupHandle:
        """The hosted group `group` (the main group if None); CommandError (the redirect
        hook's text, or ERR_NO_GROUP) when this node does not host it."""
        gid = self.main_group if group is None else group
        handle = self.directory.group(gid)
        if handle is None:
            if self.redirect is not None:
                raise CommandError(self.redirect(gid, None))
            raise CommandError(ERR_NO_GROUP.format(gid))
        return handle

    async def write(self, data: bytes, group: int | None = None) -> Any:
        """Commit `data` in the group and return its apply result (see the module header).
        Raises CommandError: a str result, TRYAGAIN, or a redirect."""
        handle = self.handle(group)
        forward = self.routing is Routing.FORWARD or self.redirect is None
        try:
            result = await handle.execute(data, forward=forward, timeout=self.timeout_s)
        except NotLeaderError as exc:
            if forward:
                raise self.unavailable(handle, exc) from None
            raise self._redirect_to_leader(handle, exc) from None
        except (RaftError, TimeoutError) as exc:
            raise self.unavailable(handle, exc) from None
        if isinstance(result, str):
            raise CommandError(result)
        return result

    async def barrier(self, group: int | None = None) -> int:
        """Wait until reads of the group's local state are linearizable; its read index."""
        handle = self.handle(group)
        try:
            return await handle.read_barrier(timeout=self.timeout_s)
        except (RaftError, TimeoutError) as exc:
            raise self.unavailable(handle, exc) from None

    def reads_ready(self, group: int | None = None) -> bool:
        """True when a read of the group's local state needs no barrier right now (see
        RaftGroup.reads_ready): the caller may answer without awaiting anything."""
        try:
            return self.handle(group).reads_ready()
        except (CommandError, RuntimeError, AssertionError):  # not hosted, not started yet
            return False

    def unavailable(self, handle: GroupHandle, exc: BaseException) -> CommandError:
        """The TRYAGAIN reply for `exc`, with the leader hint when a leader other than this
        node is known and the book has its client address."""
        reason = str(exc) or (REASON_NO_LEADER if isinstance(exc, TimeoutError)
                              else type(exc).__name__)
        text = ERR_TRYAGAIN.format(reason)
        leader, address = self.leader_client(handle)
        if leader and leader != self._own_id(handle) and address:
            text += LEADER_HINT.format(address)
        return CommandError(text)

    def leader_client(self, handle: GroupHandle) -> tuple[int, str | None]:
        """The group's leader as this node knows it (0: none) and its client address."""
        try:
            status = handle.status()
        except (RuntimeError, AssertionError):  # not started yet
            return 0, None
        leader = int(status.get("leader") or 0)
        if not leader:
            return 0, None
        if leader == status.get("id") and self.advertise:
            return leader, self.book.get(leader) or self.advertise
        return leader, self.book.get(leader)

    def _redirect_to_leader(self, handle: GroupHandle, exc: NotLeaderError) -> CommandError:
        leader, address = self.leader_client(handle)
        if not leader or address is None or self.redirect is None:
            return self.unavailable(handle, exc)
        return CommandError(self.redirect(group_id_of(handle), address))

    def _own_id(self, handle: GroupHandle) -> int:
        try:
            return int(handle.status()["id"])
        except (RuntimeError, AssertionError, KeyError):
            return 0

    # -- the address book ----------------------------------------------------------------------

    async def _publish(self) -> None:
        """Keep this node's client address in the book (see the module header)."""
        handle = self.handle()
        while True:
            try:
                status = handle.status()
                me = int(status["id"])
                if (me in status["members"] and status.get("leader")
                        and self.book.get(me) != self.advertise):
                    await handle.execute(encode_client(me, self.advertise), forward=True,
                                         timeout=self.timeout_s)
                    log.info("node %d: client address %s published", me, self.advertise)
            except asyncio.CancelledError:
                raise
            except (RaftError, TimeoutError, RuntimeError) as exc:
                log.debug("publishing the client address failed: %r", exc)
            await asyncio.sleep(PUBLISH_CHECK_S)
