"""The asyncio client: `AsyncClient` carries out kvcache/client_core.py's decisions.

Calls may run concurrently (each borrows its own connection); a multi-get or a per-server
command asks all its servers at once. A timeout bounds each call; cancelling a call closes
its connection (its reply may still come). Probes of down servers run as tasks, so no call
waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    collect,
    first_error,
    merge,
)
from kvcache.ring import Key, parse_server


class _AsyncConn:
    """One asyncio connection and its Exchange."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream, self.writer, self.exchange = reader, writer, Exchange()

    @classmethod
    async def open(cls, server: str) -> _AsyncConn:
        host, port, _ = parse_server(server)
        return cls(*await asyncio.open_connection(host, port))

    def close(self) -> None:
        self.writer.close()

    async def exchange_one(self, command: Command) -> Any:
        self.writer.write(self.exchange.request(command))
        await self.writer.drain()
        while (result := self.exchange.result(command)) is NEED_DATA:
            self.exchange.feed(await self.stream.read(READ_BYTES))
        return result


class AsyncClient(PoolCore):
    """asyncio memcached client: the API and rules of Client, every call a coroutine."""

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
        self._probes: dict[str, asyncio.Task[None]] = {}  # at most one running per server

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close idle connections and stop running probes (the client stays usable)."""
        for task in list(self._probes.values()):
            task.cancel()
        for server in self.servers:
            for conn in self._drain(server):
                conn.close()
                with contextlib.suppress(OSError):
                    await conn.writer.wait_closed()

    # -- execution --

    def _probe(self) -> None:
        """Start the due probes as tasks: no call waits for a probe."""
        for server in self.router.due_probes():
            # One at a time: a probe can outlast the claim (timeout > backoff cap), and a
            # second one's stale outcome would count a failure against, or flush, a server
            # the first had just brought back.
            if server not in self._probes:
                task = asyncio.get_running_loop().create_task(self._probe_one(server))
                self._probes[server] = task
                task.add_done_callback(lambda _, s=server: self._probes.pop(s, None))

    async def _probe_one(self, server: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _AsyncConn.open(server)
                try:
                    for command in self.probe_commands:
                        await conn.exchange_one(command)
                finally:
                    conn.close()
        except (*FAILURES, ReplyError):
            self._probed(server, False)
        else:
            await self._fan_out(self._probed(server, True))  # errors: counted, nothing more

    async def _exchange(self, server: str, command: Command) -> Any:
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._take(server) or await _AsyncConn.open(server)
                result = await conn.exchange_one(command)
        except ReplyError:
            self._give(server, conn, command)
            raise
        except FAILURES as exc:
            raise self._broken(server, conn, exc) from exc
        except BaseException:  # cancelled: the reply may still come, so drop the link
            close(conn)
            raise
        self._give(server, conn, command)
        return result

    async def _run(self, command: Command) -> Any:
        self._probe()
        return await self._exchange(self._route_call(command), command)

    async def _fan_out(
        self, commands: dict[str, Command]
    ) -> tuple[dict[str, Any], list[CacheError]]:
        servers = list(commands)
        outcomes = await asyncio.gather(
            *(self._exchange(s, commands[s]) for s in servers), return_exceptions=True
        )
        return collect(servers, outcomes)

    async def _all(self, command: Command) -> tuple[dict[str, Any], list[CacheError]]:
        self._probe()
        commands, errors = self._plan_all(command)
        results, failed = await self._fan_out(commands)
        return results, errors + failed

    # -- commands: see Client (kvcache/client_sync.py) for each contract --

    async def get(self, key: Key) -> Item | None:
        """See Client.get."""
        return await self._run(cmd_get(key, False))

    async def gets(self, key: Key) -> Item | None:
        """See Client.gets."""
        return await self._run(cmd_get(key, True))

    async def gat(self, key: Key, exptime: int) -> Item | None:
        """See Client.gat."""
        return await self._run(cmd_get(key, False, exptime))

    async def get_many(self, keys: Iterable[Key], *, cas: bool = False) -> dict[Key, Item]:
        """See Client.get_many; the servers are asked concurrently."""
        self._probe()
        wanted, commands, errors = self._plan_many(keys, cas)
        results, failed = await self._fan_out(commands)
        return merge(wanted, results, errors + failed)

    async def set(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool:  # fmt: skip
        """See Client.set."""
        return await self._run(cmd_store(b"set", key, value, flags, exptime, noreply))

    async def add(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool:  # fmt: skip
        """See Client.add."""
        return await self._run(cmd_store(b"add", key, value, flags, exptime, noreply))

    async def replace(self, key: Key, value: bytes, *, flags: int = 0, exptime: int = 0,
                      noreply: bool = False) -> bool:  # fmt: skip
        """See Client.replace."""
        return await self._run(cmd_store(b"replace", key, value, flags, exptime, noreply))

    async def append(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """See Client.append."""
        return await self._run(cmd_store(b"append", key, value, 0, 0, noreply))

    async def prepend(self, key: Key, value: bytes, *, noreply: bool = False) -> bool:
        """See Client.prepend."""
        return await self._run(cmd_store(b"prepend", key, value, 0, 0, noreply))

    async def cas(self, key: Key, value: bytes, cas: int, *, flags: int = 0, exptime: int = 0,
                  noreply: bool = False) -> bool | None:  # fmt: skip
        """See Client.cas."""
        return await self._run(cmd_store(b"cas", key, value, flags, exptime, noreply, cas))

    async def delete(self, key: Key, *, noreply: bool = False) -> bool:
        """See Client.delete."""
        return await self._run(cmd_delete(key, noreply))

    async def incr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """See Client.incr."""
        return await self._run(cmd_arith(b"incr", key, delta, noreply))

    async def decr(self, key: Key, delta: int = 1, *, noreply: bool = False) -> int | None:
        """See Client.decr."""
        return await self._run(cmd_arith(b"decr", key, delta, noreply))

    async def touch(self, key: Key, exptime: int, *, noreply: bool = False) -> bool:
        """See Client.touch."""
        return await self._run(cmd_touch(key, exptime, noreply))

    async def flush_all(self, delay: int = 0, *, noreply: bool = False) -> None:
        """See Client.flush_all."""
        first_error((await self._all(cmd_flush(delay, noreply)))[1])

    async def stats(self, *args: str) -> dict[str, dict[str, str]]:
        """See Client.stats."""
        return (await self._all(cmd_stats(args)))[0]

    async def version(self) -> dict[str, str]:
        """See Client.version."""
        return (await self._all(_VERSION))[0]
