"""The CLUSTER.* commands of every RESP-on-Raft daemon (core/raft_service.py adds them).

Each is about the daemon's main group unless the command ends with `GROUP <gid>`:

    CLUSTER.INFO [GROUP gid]                this node's view: id, role, leader, term,
                                            commit_index, applied_index, members, clients
    CLUSTER.ADD id host:peerport [host:clientport] [GROUP gid]   add a voter (forwarded)
    CLUSTER.REMOVE id [GROUP gid]           remove a voter (forwarded)
    CLUSTER.LEADER [GROUP gid]              [leader id, its client address] (0, nil: none)
    CLUSTER.TRANSFER [id] [GROUP gid]       hand leadership to voter id (default: the most
                                            up-to-date other voter); from a follower the
                                            command is sent on to the leader's client
                                            port; the reply is the new leader's id
    CLUSTER.GROUPS                          one map per group this node hosts: group,
                                            role, leader, term, members, commit_index,
                                            applied_index

Strategy: argument checks first (they reply at once), then the work as a coroutine.
Membership changes and the transfer fail with the service's TRYAGAIN (and leader hint)
when the group cannot take them. `clients` is the node address book (node id -> client
address), which is node-wide and lives in the main group. A transfer sent on by a follower
carries the trailing word FORWARDED, so the node that gets it never sends it on again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from core.raft.driver import NotLeaderError
from core.raft.errors import RaftError
from core.raft_groups import GroupDirectory, GroupHandle
from core.resp import CommandError
from core.resp_client import AsyncRespConnection, ReplyError, RespConnectionError
from core.resp_commands import parse_int
from core.resp_server import ERR_ARITY, Command
from core.service_machine import AddressBook, encode_client

__all__ = [
    "ERR_ADDRESS", "ERR_GROUP_ID", "ERR_MEMBER", "ERR_NODE_ID", "ERR_NOT_MEMBER",
    "GROUP_WORD", "ClusterCommands", "ClusterHost", "parse_address", "parse_node_id",
]

ERR_NODE_ID = "ERR node id must be a positive integer"
ERR_ADDRESS = "ERR bad address '{}': expected HOST:PORT"
ERR_MEMBER = "ERR node {} is already a member"
ERR_NOT_MEMBER = "ERR node {} is not a member"
ERR_GROUP_ID = "ERR group id must be a non-negative integer"
GROUP_WORD = b"GROUP"
FORWARDED_WORD = b"FORWARDED"
FORWARD_TIMEOUT_S = 30.0  # a transfer sent on to the leader: connect, transfer, reply


class ClusterHost(Protocol):
    """What the commands need of the service (core.raft_service.RaftService)."""

    book: AddressBook
    directory: GroupDirectory
    password: str | None

    def handle(self, group: int | None = None) -> GroupHandle: ...

    async def write(self, data: bytes, group: int | None = None) -> Any: ...

    def unavailable(self, handle: GroupHandle, exc: BaseException) -> CommandError: ...

    def leader_client(self, handle: GroupHandle) -> tuple[int, str | None]: ...


def parse_address(raw: bytes) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), or CommandError(ERR_ADDRESS)."""
    text = raw.decode("utf-8", "replace")
    host, sep, port = text.rpartition(":")
    if (not sep or not host or "\ufffd" in host or not port.isdigit()
            or not 0 < int(port) < 65536):
        raise CommandError(ERR_ADDRESS.format(text))
    return host, int(port)


def parse_node_id(raw: bytes) -> int:
    """A node id (>= 1), or CommandError(ERR_NODE_ID)."""
    node_id = parse_int(raw, ERR_NODE_ID)
    if node_id < 1:
        raise CommandError(ERR_NODE_ID)
    return node_id


def split_group(args: list[bytes]) -> tuple[list[bytes], int | None]:
    """Take a trailing `GROUP <gid>` off `args`: (the rest, gid or None)."""
    if len(args) >= 3 and args[-2].upper() == GROUP_WORD:
        gid = parse_int(args[-1], ERR_GROUP_ID)
        if gid < 0:
            raise CommandError(ERR_GROUP_ID)
        return args[:-2], gid
    return args, None


def _arity(name: str) -> CommandError:
    return CommandError(ERR_ARITY.format(name.lower()))


async def _checked(service: ClusterHost, handle: GroupHandle,
                   work: Callable[[], Awaitable[Any]]) -> Any:
    """Run a membership change or transfer; Raft errors become TRYAGAIN."""
    try:
        return await work()
    except (RaftError, TimeoutError) as exc:
        raise service.unavailable(handle, exc) from None


# Command flags (Redis's words): reading the membership works while loading or without a
# leader; changing it is an admin command.
_VIEW = frozenset({"loading", "stale"})
_CHANGE = frozenset({"admin"})


class ClusterCommands:
    """The CLUSTER.* commands of one service (see the module header)."""

    def __init__(self, service: ClusterHost) -> None:
        self.service = service

    def commands(self) -> list[Command]:
        """The command-table rows."""
        return [
            Command("CLUSTER.INFO", self.cmd_info, -1, _VIEW,
                    summary="CLUSTER.INFO [GROUP gid]: members, leader, term, commit index"),
            Command("CLUSTER.ADD", self.cmd_add, -3, _CHANGE,
                    summary="CLUSTER.ADD id host:peerport [host:clientport] [GROUP gid]: "
                    "add a voter"),
            Command("CLUSTER.REMOVE", self.cmd_remove, -2, _CHANGE,
                    summary="CLUSTER.REMOVE id [GROUP gid]: remove a voter"),
            Command("CLUSTER.LEADER", self.cmd_leader, -1, _VIEW,
                    summary="CLUSTER.LEADER [GROUP gid]: the leader's id and client address"),
            Command("CLUSTER.TRANSFER", self.cmd_transfer, -1, _CHANGE,
                    summary="CLUSTER.TRANSFER [id] [GROUP gid]: hand leadership over"),
            Command("CLUSTER.GROUPS", self.cmd_groups, 1, _VIEW,
                    summary="The Raft groups this node hosts, one map each"),
        ]

    def _members(self, handle: GroupHandle) -> list[int]:
        """The voters as this node last applied them (a check of obvious mistakes; the
        leader decides)."""
        return list(handle.status()["members"])

    def cmd_info(self, session: Any, args: list[bytes]) -> Any:
        rest, gid = split_group(args)
        if len(rest) != 1:
            raise _arity("CLUSTER.INFO")
        status = self.service.handle(gid).status()
        return {
            "id": status["id"], "role": status["role"], "leader": status["leader"],
            "term": status["term"], "commit_index": status["commit"],
            "applied_index": status["applied"], "members": status["members"],
            "clients": self.service.book.as_wire(),
        }

    def cmd_add(self, session: Any, args: list[bytes]) -> Any:
        rest, gid = split_group(args)
        if not 3 <= len(rest) <= 4:
            raise _arity("CLUSTER.ADD")
        node_id, peer = parse_node_id(rest[1]), parse_address(rest[2])
        client = "{}:{}".format(*parse_address(rest[3])) if len(rest) > 3 else ""
        handle = self.service.handle(gid)
        if node_id in self._members(handle):  # the leader refuses it too
            raise CommandError(ERR_MEMBER.format(node_id))

        async def run() -> Any:
            index = await _checked(self.service, handle,
                                   lambda: handle.add_node(node_id, peer, forward=True))
            if client:
                await self.service.write(encode_client(node_id, client))
            return int(index)

        return run()

    def cmd_remove(self, session: Any, args: list[bytes]) -> Any:
        rest, gid = split_group(args)
        if len(rest) != 2:
            raise _arity("CLUSTER.REMOVE")
        node_id = parse_node_id(rest[1])
        handle = self.service.handle(gid)
        if node_id not in self._members(handle):
            raise CommandError(ERR_NOT_MEMBER.format(node_id))

        async def run() -> Any:
            index = await _checked(self.service, handle,
                                   lambda: handle.remove_node(node_id, forward=True))
            if gid is None and self.service.book.get(node_id) is not None:
                await self.service.write(encode_client(node_id, ""))
            return int(index)

        return run()

    def cmd_leader(self, session: Any, args: list[bytes]) -> Any:
        rest, gid = split_group(args)
        if len(rest) != 1:
            raise _arity("CLUSTER.LEADER")
        leader, address = self.service.leader_client(self.service.handle(gid))
        return [leader, address]

    def cmd_groups(self, session: Any, args: list[bytes]) -> Any:
        out = []
        for gid in self.service.directory.group_ids():
            handle = self.service.directory.group(gid)
            if handle is None:  # destroyed meanwhile
                continue
            status = handle.status()
            out.append({
                "group": gid, "role": status["role"], "leader": status["leader"],
                "term": status["term"], "members": status["members"],
                "commit_index": status["commit"], "applied_index": status["applied"],
            })
        return out

    def cmd_transfer(self, session: Any, args: list[bytes]) -> Any:
        forwarded = len(args) > 1 and args[-1].upper() == FORWARDED_WORD
        rest, gid = split_group(args[:-1] if forwarded else args)
        if len(rest) > 2:
            raise _arity("CLUSTER.TRANSFER")
        to = parse_node_id(rest[1]) if len(rest) == 2 else None
        handle = self.service.handle(gid)
        if to is not None and to not in self._members(handle):
            raise CommandError(ERR_NOT_MEMBER.format(to))
        return self._transfer(handle, gid, to, forwarded)

    async def _transfer(self, handle: GroupHandle, gid: int | None, to: int | None,
                        forwarded: bool) -> int:
        status = handle.status()
        if status["role"] == "leader" and to == status["id"]:
            return to
        try:
            return int(await handle.transfer_leadership(to))
        except NotLeaderError as exc:
            leader, address = self.service.leader_client(handle)
            if forwarded or not leader or address is None:
                raise self.service.unavailable(handle, exc) from None
            return await self._send_on(handle, address, gid, to)
        except (RaftError, TimeoutError) as exc:
            raise self.service.unavailable(handle, exc) from None

    async def _send_on(self, handle: GroupHandle, address: str, gid: int | None,
                       to: int | None) -> int:
        """CLUSTER.TRANSFER on the leader's client port (marked FORWARDED)."""
        host, _, port = address.rpartition(":")
        words: list[str] = ["CLUSTER.TRANSFER"]
        words += [str(to)] if to is not None else []
        words += ["GROUP", str(gid)] if gid is not None else []
        try:
            conn = await AsyncRespConnection.connect(host, int(port), FORWARD_TIMEOUT_S,
                                                     password=self.service.password)
            async with conn:
                return int(await conn.call(*words, FORWARDED_WORD.decode()))  # type: ignore[arg-type]
        except ReplyError as exc:
            raise CommandError(exc.message) from None
        except (RespConnectionError, OSError, TimeoutError) as exc:
            raise self.service.unavailable(handle, exc) from None
