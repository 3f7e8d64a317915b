"""The asyncio RESP server every RESP daemon stands on: connections, one command table,
dispatch with arity and auth checked once, and the commands every daemon answers.

A daemon hands `RespServer` its own `Command` rows (core.command_table), its `Limits`
(core.limits) and an INFO callback; the base adds PING, ECHO, HELLO, AUTH, INFO, QUIT,
COMMAND, CLIENT, CONFIG and SELECT (core.resp_commands). Dispatch finds the row (a container's
subcommand by its second word), then checks authentication and the row's arity bounds, so
arity and unknown-subcommand errors come from the table with Redis's wording.

Per connection the order of replies is the order of commands, also for commands whose
handler must wait (the handler then returns a coroutine). While one of those is
in flight the connection queues the commands that follow and runs them after it; it keeps
reading (so a client that hangs up is noticed and its waiting command cancelled) until
MAX_WAITING_COMMANDS are queued, so memory stays bounded and the pipeline order holds.
A protocol error is answered after the replies of the commands before it, then the
connection is closed (Redis does the same: the stream cannot be resynchronised).

A daemon may take a run of pipelined commands together (`RespServer.pipeline`, a
`Pipeline`): offered the parsed commands from one on, it takes the first n >= 2 or none,
and answers them with one coroutine of n results (the connection waits for it as for one
command) or with the list of n results at once; the replies are written in order
(shardstore proposes a run of writes to one shard as one Raft entry, and answers a run of
reads that need no barrier at once).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Coroutine, Iterable
from time import perf_counter_ns
from types import CoroutineType
from typing import Any

from core import resp_commands
from core.command_table import Command, CommandTable, Handler, full_name_of
from core.connections import Connections, Listeners
from core.limits import DEFAULT_LIMITS, Limits
from core.resp import OK, CommandError, Raw, RequestParser, encode, encode_error
from core.resp_session import Session
from core.stats import (
    LATENCY_SAMPLE_EVERY,
    ProcessFigures,
    command_stats_info,
)
from core.users import UserDirectory

# Command, Handler, Limits and Session are defined apart (core.command_table, core.limits,
# core.resp_session) and offered here too, where daemons have always imported them from.
__all__ = ["Command", "Handler", "Limits", "Pipeline", "RespServer", "ServerConnection",
           "Session"]

log = logging.getLogger(__name__)

ERR_MAX_CLIENTS = "ERR max number of clients reached"
ERR_NOAUTH = "NOAUTH Authentication required."
ERR_UNKNOWN_COMMAND = "ERR unknown command '{}', with args beginning with: {}"
ERR_UNKNOWN_SUBCOMMAND = "ERR unknown subcommand '{}'. Try {} HELP."
ERR_ARITY = "ERR wrong number of arguments for '{}' command"
ERR_INTERNAL = "ERR internal error while running '{}' (logged on the server)"
# Replies are written at least every WRITE_CHUNK bytes, so a full write buffer
# (pause_writing) is noticed between two commands of one read.
WRITE_CHUNK = 64 * 1024
# Commands a connection may queue behind one that waits before it stops reading.
MAX_WAITING_COMMANDS = 1024
# Redis shows at most this many characters of an unknown (sub)command and its arguments.
MAX_SHOWN_CHARS = 128
OK_REPLY = encode(OK)  # the same in RESP2 and RESP3

# A daemon's taker of pipelined runs: (session, commands, index) -> the rows of the run it
# takes, commands[index:index + len(rows)] with len(rows) >= 2, and a coroutine of one
# result per command in order (a reply value, or a CommandError), or that list itself when
# it could answer at once; None: it takes none.
# It sees authenticated sessions only and takes only commands whose `plain_row` it got.
Pipeline = Callable[
    [Session, list[list[bytes]], int],
    tuple[list[Command], Coroutine[Any, Any, list[Any]] | list[Any]] | None,
]


class RespServer:
    """A RESP server for one daemon. `commands` are the daemon's own; `info` returns extra
    INFO sections ({"Idgen": {"worker_id": 3, ...}}); `config` extra CONFIG GET values."""

    def __init__(
        self,
        name: str,
        version: str,
        commands: Iterable[Command],
        *,
        password: str | None = None,
        users: UserDirectory | None = None,
        limits: Limits | None = None,
        info: Callable[[], dict[str, dict[str, object]]] | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.mode = "standalone"  # HELLO's mode; a Redis Cluster node says "cluster"
        self.password = password
        self.users = users  # named users for `AUTH user pass` (core.users); None: default only
        self.limits = limits or DEFAULT_LIMITS
        self._daemon_info = info or dict
        self.config = dict(config or {})
        self.commands_processed = 0
        self.process = ProcessFigures()
        self.sessions: dict[int, Session] = {}
        self.counters = {
            "total_connections_received": 0,
            "rejected_connections": 0,
            "protocol_errors": 0,
            "total_net_input_bytes": 0,  # read from clients, as Redis's INFO Stats says
            "total_net_output_bytes": 0,  # written to clients
        }
        # The daemon's rows after the common ones, so a daemon may replace one of those.
        self.table = CommandTable([*resp_commands.common_commands(self), *commands])
        self.commands: dict[bytes, Command] = self.table.rows
        # Batchable commands by the exact spellings clients send (upper and lower case).
        self.batchable: dict[bytes, Command] = {}
        for command in self.commands.values():
            if command.batch is not None:
                self.batchable[command.name.encode()] = command
                self.batchable[command.name.lower().encode()] = command
        self.pipeline: Pipeline | None = None  # see the module header
        self._next_id = 0
        # Listening, admission and shutdown: core/connections.py, as for every daemon.
        self._listeners = Listeners()
        self._connections = Connections(name, self.limits.max_clients,
                                        encode_error(ERR_MAX_CLIENTS), self.limits.write_high_water)
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        self.port = await self._listeners.tcp(lambda: ServerConnection(self), [host], port)
        self.config.setdefault("bind", host)
        self.config.setdefault("port", str(self.port))
        log.info("%s listening on %s:%d", self.name, host, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight commands finish (up to `grace` s), close clients
        (aborting those still open after `grace` s)."""
        busy = [c.in_flight for c in self._connections.open if c.in_flight is not None]
        await self._listeners.shutdown(self._connections, grace, busy)

    # -- dispatch ----------------------------------------------------------------------
    def new_session(self, peer: str) -> Session:
        self._next_id += 1
        session = Session(self._next_id, peer, authenticated=self.password is None)
        self.sessions[session.id] = session
        return session

    def dispatch(self, session: Session, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
        """Run one command; encoded reply bytes, or a coroutine when the handler must wait.

        This is every daemon's hot path: an integer or bulk-string reply skips the generic
        encoder.
        """
        self.commands_processed += 1
        command = self.commands.get(args[0]) or self.commands.get(args[0].upper())
        if command is None:
            return encode_error(_unknown_command(args))
        if not session.authenticated and not command.no_auth:
            return encode_error(ERR_NOAUTH)
        if not command.min_args <= len(args) <= command.max_args:
            return encode_error(ERR_ARITY.format(command.name.lower()))
        if command.subcommands and len(args) > 1:
            sub = command.by_name.get(args[1].upper())
            if sub is None:
                return encode_error(_unknown_subcommand(command, args[1]))
            if not sub.min_args <= len(args) <= sub.max_args:
                return encode_error(ERR_ARITY.format(full_name_of(command, sub)))
            session.last_command = full_name_of(command, sub)
            command = sub
        else:
            session.last_command = command.name
        latency = command.latency
        latency.calls += 1
        timed = not latency.calls & (LATENCY_SAMPLE_EVERY - 1)
        started = perf_counter_ns() if timed else 0
        try:
            result = command.handler(session, args)
        except CommandError as err:
            latency.errors += 1
            return encode_error(err.message)
        except Exception:
            return self._internal_error(command)
        kind = type(result)
        if kind is bytes:  # a bulk string (GET's hit), the same in RESP2 and RESP3
            reply = b"$%d\r\n%s\r\n" % (len(result), result)
        elif kind is int:
            reply = b":%d\r\n" % result
        elif kind is Raw:
            reply = result
        elif kind is CoroutineType:
            return self._finish(command, session, result, started or perf_counter_ns())
        else:
            reply = encode(result, session.protocol)
        if timed:
            latency.record(perf_counter_ns() - started)
        return reply

    async def _finish(
        self, command: Command, session: Session, pending: Coroutine[Any, Any, Any], started: int
    ) -> bytes:
        try:
            result = await pending
        except CommandError as err:
            command.latency.errors += 1
            return encode_error(err.message)
        except Exception:
            return self._internal_error(command)
        command.latency.record(perf_counter_ns() - started)
        return encode(result, session.protocol)

    def dispatch_run(
        self, session: Session, command: Command, count: int
    ) -> bytes | Coroutine[Any, Any, bytes]:
        """Answer `count` consecutive argument-less calls of a batchable command (the caller
        checked authentication). Same replies, in the same order, as `count` dispatches."""
        assert command.batch is not None
        self.commands_processed += count
        command.latency.calls += count
        session.last_command = command.name
        started = perf_counter_ns()
        try:
            replies = command.batch(session, count)
        except Exception:
            return self._internal_error(command)
        if type(replies) is not CoroutineType:
            # One timing for the run, recorded as the mean cost of its commands.
            command.latency.record((perf_counter_ns() - started) // count)
        return replies

    def plain_row(self, args: list[bytes]) -> Command | None:
        """The row `dispatch` would run for `args` when it is a command without subcommands
        and `args` meet its arity; else None (dispatch answers it)."""
        command = self.commands.get(args[0]) or self.commands.get(args[0].upper())
        if command is None or command.subcommands:
            return None
        return command if command.min_args <= len(args) <= command.max_args else None

    def dispatch_pipeline(
        self, session: Session, commands: list[list[bytes]], index: int
    ) -> tuple[int, bytes | Coroutine[Any, Any, bytes]] | None:
        """Offer commands[index:] to the daemon's `pipeline`: (how many it took, their
        replies' bytes in order or a coroutine of them), or None when it took none."""
        assert self.pipeline is not None
        started = perf_counter_ns()
        taken = self.pipeline(session, commands, index)
        if taken is None:
            return None
        rows, pending = taken
        self.commands_processed += len(rows)
        for row in rows:
            row.latency.calls += 1
        session.last_command = rows[-1].name
        if type(pending) is list:
            return len(rows), self._encode_run(rows, session, pending, started)
        return len(rows), self._finish_run(rows, session, pending, started)  # type: ignore[arg-type]

    async def _finish_run(
        self, rows: list[Command], session: Session,
        pending: Coroutine[Any, Any, list[Any]], started: int,
    ) -> bytes:
        try:
            results = await pending
        except Exception:
            return b"".join(self._internal_error(row) for row in rows)
        return self._encode_run(rows, session, results, started)

    def _encode_run(
        self, rows: list[Command], session: Session, results: list[Any], started: int
    ) -> bytes:
        each = (perf_counter_ns() - started) // len(rows)
        replies = []
        for row, result in zip(rows, results, strict=True):
            if type(result) is bytes:  # the common reply (GET): a bulk string
                row.latency.record(each)
                replies.append(b"$%d\r\n%s\r\n" % (len(result), result))
            elif result is OK:  # SET's
                row.latency.record(each)
                replies.append(OK_REPLY)
            elif isinstance(result, CommandError):
                row.latency.errors += 1
                replies.append(encode_error(result.message))
            else:
                row.latency.record(each)
                replies.append(encode(result, session.protocol))
        return b"".join(replies)

    def _internal_error(self, command: Command) -> bytes:
        log.exception("command %s failed", command.name)
        command.latency.errors += 1
        return encode_error(ERR_INTERNAL.format(command.name))

    # -- figures -----------------------------------------------------------------------
    def info_sections(self) -> dict[str, dict[str, object]]:
        """Every INFO section, in the order INFO prints them."""
        sections: dict[str, dict[str, object]] = {
            "Server": {
                "server_name": self.name,
                "server_version": self.version,
                "tcp_port": self.port,
                **self.process.info(),
            },
            "Clients": {
                "connected_clients": len(self._connections),
                "maxclients": self.limits.max_clients,
            },
            "Stats": {"total_commands_processed": self.commands_processed, **self.counters},
        }
        sections.update(self._daemon_info())
        sections["Commandstats"] = command_stats_info(
            {r.full_name: r.command.latency for r in self.table.walk() if r.command.handler}
        )
        return sections

    def config_get(self, patterns: list[str]) -> dict[str, str]:
        values = {
            "maxclients": str(self.limits.max_clients),
            "proto-max-bulk-len": str(self.limits.max_bulk),
            "client-query-buffer-limit": str(self.limits.max_buffer),
            "timeout": "0",
            # redis-benchmark asks for these two on start; we keep no RDB/AOF of Redis's kind.
            "save": "",
            "appendonly": "no",
            **self.config,
        }
        return {
            key: value
            for key, value in values.items()
            if any(fnmatch.fnmatchcase(key, pattern.lower()) for pattern in patterns)
        }

    def connection_opened(self, conn: ServerConnection, peer: str) -> bool:
        """Admit a new connection, or refuse it (told so and closed) when the server is full."""
        self.counters["total_connections_received"] += 1
        if not self._connections.admit(conn, peer):
            self.counters["rejected_connections"] += 1
            return False
        return True

    def connection_closed(self, conn: ServerConnection) -> None:
        self._connections.release(conn)
        if conn.session is not None:
            self.sessions.pop(conn.session.id, None)


def _unknown_command(args: list[bytes]) -> str:
    # As Redis: arguments are shown while fewer than 128 characters are, each cut to fit.
    shown = ""
    for arg in args[1:]:
        if len(shown) >= MAX_SHOWN_CHARS:
            break
        shown += f"'{arg[: MAX_SHOWN_CHARS - len(shown)].decode('utf-8', 'replace')}' "
    return ERR_UNKNOWN_COMMAND.format(_shown(args[0]), shown)


def _unknown_subcommand(container: Command, name: bytes) -> str:
    return ERR_UNKNOWN_SUBCOMMAND.format(_shown(name), container.name.upper())


def _shown(word: bytes) -> str:
    return word[:MAX_SHOWN_CHARS].decode("utf-8", "replace")


class ServerConnection(asyncio.Protocol):
    """One client: read, feed the parser, dispatch, write. Nothing else lives here."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.session: Session | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser: RequestParser = None  # type: ignore[assignment]
        self.in_flight: asyncio.Task[None] | None = None
        # Commands parsed but not yet run: the client stopped reading its replies.
        self._held: tuple[list[list[bytes]], int] | None = None
        # Commands that arrived after one still waiting for its reply, run once it has it.
        # Reading goes on meanwhile (up to MAX_WAITING_COMMANDS), so a client that hangs
        # up is noticed and its waiting command cancelled.
        self._waiting: list[list[bytes]] = []
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        address = transport.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if address else "?"
        if not self.server.connection_opened(self, peer):
            return
        self.session = self.server.new_session(peer)
        limits = self.server.limits
        self.parser = RequestParser(
            limits.max_inline,
            limits.max_bulk,
            limits.max_elements,
            limits.max_buffer,
            self.session.authenticated,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connection_closed(self)
        if self.in_flight is not None:
            self.in_flight.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._held is not None and self.in_flight is None:
            commands, index = self._held
            self._held = None
            self._run(commands, index)
        self._resume_reading_if_idle()

    def _resume_reading_if_idle(self) -> None:
        if (
            self.in_flight is None
            and self._held is None
            and not self._write_paused
            and not self.transport.is_closing()
        ):
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.server.counters["total_net_input_bytes"] += len(data)
        if self.session is None:
            return
        parser = self.parser
        if self.in_flight is not None:
            self._waiting.extend(parser.feed(data))
            if len(self._waiting) > MAX_WAITING_COMMANDS or parser.error is not None:
                self.transport.pause_reading()
            return
        was_authenticated = parser.authenticated
        self._run(parser.feed(data), 0)
        # Before AUTH the parser stops ahead of a command over the unauthenticated limits
        # when commands precede it (one may be AUTH): now that they ran, parse on.
        while (
            not was_authenticated
            and parser.buffered
            and parser.error is None
            and self.in_flight is None
            and self._held is None
            and not self.transport.is_closing()
        ):
            was_authenticated = parser.authenticated
            commands = parser.feed(b"")
            if not commands and parser.error is None:
                break
            self._run(commands, 0)

    def _run(self, commands: list[list[bytes]], start: int) -> None:
        """Dispatch commands[start:], writing replies in order; stop at one that waits."""
        session = self.session
        assert session is not None
        server = self.server
        batchable = server.batchable
        replies: list[bytes] = []
        pending = 0
        index, end = start, len(commands)
        while index < end:
            if pending > WRITE_CHUNK:
                self._write(replies)
                replies, pending = [], 0
            if self._write_paused:  # the client is not reading: hold the rest
                self._write(replies)
                self._held = (commands, index)
                return
            args = commands[index]
            command = batchable.get(args[0]) if len(args) == 1 else None
            run = 1
            if command is not None and session.authenticated:
                while index + run < end and commands[index + run] == args:
                    run += 1
            taken = None
            if run > 1:
                reply = server.dispatch_run(session, command, run)  # type: ignore[arg-type]
            elif server.pipeline is not None and index + 1 < end and session.authenticated:
                taken = server.dispatch_pipeline(session, commands, index)
            if taken is not None:
                run, reply = taken
            elif run == 1:
                reply = server.dispatch(session, args)
            index += run
            if type(reply) is CoroutineType:
                self._write(replies)
                self._waiting = commands[index:]
                self.in_flight = asyncio.get_running_loop().create_task(
                    self._await_reply(reply)  # type: ignore[arg-type]
                )
                return
            replies.append(reply)  # type: ignore[arg-type]
            pending += len(reply)  # type: ignore[arg-type]
            if session.close_after_reply:
                self._write(replies)
                self.transport.close()
                return
            if not self.parser.authenticated and session.authenticated:
                self.parser.authenticated = True
        self._write(replies)
        if self.parser.error is not None:
            self.server.counters["protocol_errors"] += 1
            self._send(encode_error("ERR " + str(self.parser.error)))
            self.transport.close()

    async def _await_reply(self, pending: Coroutine[Any, Any, bytes]) -> None:
        try:
            reply = await pending
        except BaseException:
            # dispatch answers every failure itself; anything else (cancellation) ends the
            # connection rather than leave it paused with replies missing.
            self.transport.close()
            raise
        finally:
            self.in_flight = None
        if self.transport.is_closing():
            return
        self._send(reply)
        commands, self._waiting = self._waiting, []
        self._run(commands, 0)
        self._resume_reading_if_idle()

    def _write(self, replies: list[bytes]) -> None:
        if len(replies) == 1:
            data = replies[0]
        elif replies:
            data = b"".join(replies)
        else:
            return
        self.server.counters["total_net_output_bytes"] += len(data)  # _send, inlined
        self.transport.write(data)

    def _send(self, data: bytes) -> None:
        self.server.counters["total_net_output_bytes"] += len(data)
        self.transport.write(data)
