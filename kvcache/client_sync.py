"""The blocking client: `Client` carries out kvcache/client_core.py's decisions on sockets.

Each call borrows a pooled connection (or opens one), writes, reads until the connection's
`Exchange` has the reply, and gives the connection back; a timeout bounds the whole call
(connect, write, read). A multi-get or a per-server command writes to every server before
reading any: one round trip for all. Probes of down servers run inline, at the start of
the first call after a probe falls due (that call may wait up to one timeout).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from kvcache.client_codec import (
    NEED_DATA,
    CacheError,
    Command,
    Exchange,
    Item,
    ReplyError,
    cmd_arith,
    cmd_delete,
    cmd_flush,
    cmd_get,
    cmd_stats,
    cmd_store,
    cmd_touch,
)
from kvcache.client_codec import VERSION as _VERSION
from kvcache.client_core import (
    FAILURES,
    READ_BYTES,
    OnDown,
    PoolCore,
    Servers,
    close,
    first_error,
    merge,
)
from kvcache.ring import Key, parse_server


class _Conn:
    """One blocking connection and its Exchange."""

    def __init__(self, server: str, timeout: float) -> None:
        host, port, _ = parse_server(server)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.exchange = Exchange()

    def close(self) -> None:
        self.sock.close()

    def send(self, command: Command, deadline: float) -> None:
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(self.exchange.request(command))

    def receive(self, command: Command, deadline: float) -> Any:
        while (result := self.exchange.result(command)) is NEED_DATA:
            self.sock.settimeout(_left(deadline))
            self.exchange.feed(self.sock.recv(READ_BYTES))
        return result


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1e-3)


class Client(PoolCore):
    """Blocking memcached client over a ketama pool; thread-safe (one connection per call).

    `servers`: "host[:port]" strings or (host, port[, weight]) tuples. `timeout` bounds each
    call. Health and `on_down` are described in kvcache/client.py; `clock` (monotonic
    seconds) times the probe backoff. Keys are bytes or str (UTF-8), values bytes.
    """

    def __init__(
        self,
        servers: Servers,
        *,
        timeout: float = 1.0,
        failure_threshold: int = 3,
        retry_backoff: tuple[float, float] = (0.5, 30.0),
        on_down: OnDown = "fail",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(servers, timeout, failure_threshold, retry_backoff, on_down, clock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close idle connections (the client stays usable and reconnects on demand)."""
        for server in self.servers:
            for conn in self._drain(server):
                close(conn)

    # -- execution --

    def _probe(self) -> None:
        for server in self.router.due_probes():
            deadline = time.monotonic() + self.timeout
            try:
                conn = _Conn(server, self.timeout)
                try:
                    for command in self.probe_commands:
                        conn.send(command, deadline)
                        conn.receive(command, deadline)
                finally:
                    conn.close()
            except (*FAILURES, ReplyError):
                self._probed(server, False)
            else:
                self._fan_out(self._probed(server, True))  # errors: counted, nothing more

    def _start(self, server: str, command: Command, deadline: float) -> _Conn:
        conn = None
        try:
            conn = self._take(server) or _Conn(server, _left(deadline))
            conn.send(command, deadline)
            return conn
        except FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:  # interrupted: the reply may still come, so drop the link
            close(conn)
            raise

    def _finish(self, server: str, conn: _Conn, command: Command, deadline: float) -> Any:
        try:
            result = conn.receive(command, deadline)
        except ReplyError:
            self._give(server, conn, command)
            raise
        except FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:
            close(conn)
            raise
        self._give(server, conn, command)
        return result

    def _run(self, command: Command) -> Any:
        self._probe()
        server = self._route_call(command)
        deadline = time.monotonic() + self.timeout
        return self._finish(server, self._start(server, command, deadline), command, deadline)

    def _fan_out(self, commands: dict[str, Command]) -> tuple[dict[str, Any], list[CacheError]]:
        """Write every request, then read every reply: one round trip for all servers."""
        deadline = time.monotonic() + self.timeout
        started: dict[str, _Conn] = {}
        results: dict[str, Any] = {}
        errors: list[CacheError] = []
        for server, command in commands.items():
            try:
                started[server] = self._start(server, command, deadline)
            except CacheError as exc:
                errors.append(exc)
        for server, conn in started.items():
            try:
                results[server] = self._finish(server, conn, commands[server], deadline)
            except CacheError as exc:
                errors.append(exc)
        return results, errors

    def _all(self, command: Command) -> tuple[dict[str, Any], list[CacheError]]:
        self._probe()
        commands, errors = self._plan_all(command)
        results, failed = self._fan_out(commands)
        return results, errors + failed

    # -- commands: each contract is stated here once; AsyncClient refers to it --

    def get(self, key: Key) -> Item | None:
        """The key's Item (cas None), or None on a miss."""
        return self._run(cmd_get(key, False))

    def gets(self, key: Key) -> Item | None:
        """The key's Item with its CAS token, or None on a miss."""
        return self._run(cmd_get(key, True))

    def gat(self, key: Key, exptime: int) -> Item | None:
        """Get and touch: the key's Item, its expiry reset to `exptime`; None on a miss."""
        return self._run(cmd_get(key, False, exptime))

    def get_many(self, keys: Iterable[Key], *, cas: bool = False) -> dict[Key, Item]:
        """{key: Item} of the hits; one request per server. If a server is down or fails,
        its error is raised after the others answered, their hits in `error.partial`."""
        self._probe()
        wanted, commands, errors = self._plan_many(keys, cas)
        results, failed = self._fan_out(commands)
        return merge(wanted, results, errors + failed)

    def set(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool:  # fmt: skip
        """Store unconditionally; True once stored (always True with noreply)."""
        return self._run(cmd_store(b"set", key, value, flags, exptime, noreply))

    def add(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool:  # fmt: skip
        """Store only if the key is absent; False if it exists."""
        return self._run(cmd_store(b"add", key, value, flags, exptime, noreply))

    def replace(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                noreply: bool = False) -> bool:  # fmt: skip
        """Store only if the key exists; False if it is absent."""
        return self._run(cmd_store(b"replace", key, value, flags, exptime, noreply))

    def append(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """Append to an existing value (flags and expiry kept); False if absent."""
        return self._run(cmd_store(b"append", key, value, 0, 0, noreply))

    def prepend(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """Prepend to an existing value (flags and expiry kept); False if absent."""
        return self._run(cmd_store(b"prepend", key, value, 0, 0, noreply))

    def cas(self, key: Key, value: bytes, cas: int, *, flags: int = 0, exptime: int = 0,
            noreply: bool = False) -> bool | None:  # fmt: skip
        """Store if the CAS token still matches: True stored, False changed since, None absent."""
        return self._run(cmd_store(b"cas", key, value, flags, exptime, noreply, cas))

    def delete(self, key: Key, *, noreply: bool = False) -> bool:
        """True if the key was deleted, False if it was absent."""
        return self._run(cmd_delete(key, noreply))

    def incr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """Add to a decimal value (wraps at 2**64); the new value, or None if absent."""
        return self._run(cmd_arith(b"incr", key, delta, noreply))

    def decr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """Subtract from a decimal value (stops at 0); the new value, or None if absent."""
        return self._run(cmd_arith(b"decr", key, delta, noreply))

    def touch(self, key: Key, exptime: int, *, noreply: bool = False) -> bool:
        """Reset the key's expiry; False if absent."""
        return self._run(cmd_touch(key, exptime, noreply))

    def flush_all(self, delay: int = 0, *, noreply: bool = False) -> None:
        """Invalidate every item on every server (after `delay` seconds). Raises the first
        error (ServerDown for a down server) after trying every server."""
        first_error(self._all(cmd_flush(delay, noreply))[1])

    def stats(self, *args: str) -> dict[str, dict[str, str]]:
        """`stats [args]` of every server that answers (down or failing ones are left out)."""
        return self._all(cmd_stats(args))[0]

    def version(self) -> dict[str, str]:
        """The version string of every server that answers."""
        return self._all(_VERSION)[0]
