"""The connection layer under every daemon's client port: listen, admit, shut down.

A protocol (RESP in core/resp_server.py, memcached's text protocol in kvcache/server.py) is
an asyncio.Protocol whose `connection_made` asks `Connections.admit` first and whose
`connection_lost` calls `Connections.release`; everything about bytes stays in the protocol.
What is written here once:
- admission: at most `limit` clients at once; one more is sent the protocol's refusal (its
  own error line) and closed at once, and the refusals are logged sparingly (the 1st, 2nd,
  4th, 8th...: a connection flood stays a few lines);
- back-pressure: an admitted client's transport calls the protocol's `pause_writing` once
  `high_water` bytes of replies wait in its socket buffer (each protocol then stops reading
  from that client, and resumes in `resume_writing` when the buffer drains);
- idle timeouts (`Connections.close_idle`): the server calls it from its own timer with its
  clock's reading and each client's last activity, and the idle clients are closed;
- graceful shutdown (`Listeners.shutdown`): stop accepting, let the requests in flight finish
  (up to the grace period), close every client, wait for them to go, abort whatever is still
  open when the grace period ends (a client that stopped reading can hold a close forever),
  then wait for the listeners to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_BACKLOG = 1024
DEFAULT_GRACE_S = 5.0
SHUTDOWN_POLL_S = 0.01  # how often shutdown looks whether every client has gone

__all__ = ["DEFAULT_BACKLOG", "DEFAULT_GRACE_S", "ClientConnection", "Connections", "Listeners"]


class ClientConnection(Protocol):
    """What the layer needs of a connection: its transport, set once it is made."""

    transport: asyncio.Transport


class Connections:
    """The admitted clients of one server. `limit`: clients open at once; `refusal`: the
    bytes a client beyond it is sent before it is closed; `high_water`: bytes of replies
    queued for a client before its protocol's pause_writing is called. `total` counts the
    clients ever admitted, `rejected` the ones refused; neither is ever reset."""

    def __init__(self, name: str, limit: int, refusal: bytes, high_water: int) -> None:
        self.name = name
        self.limit = limit
        self.refusal = refusal
        self.high_water = high_water
        self.open: set[Any] = set()
        self.total = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, client: ClientConnection, peer: str) -> bool:
        """Admit `client` (its transport made), or refuse it: refusal written, transport
        closed, False returned."""
        transport = client.transport
        if len(self.open) >= self.limit:
            self.rejected += 1
            if self.rejected & (self.rejected - 1) == 0:
                log.warning("%s refusing %s: too many open connections (%d refused so far)",
                            self.name, peer, self.rejected)
            transport.write(self.refusal)
            transport.close()
            return False
        self.open.add(client)
        self.total += 1
        transport.set_write_buffer_limits(high=self.high_water)
        return True

    def release(self, client: ClientConnection) -> None:
        """`client` is gone (harmless for one never admitted)."""
        self.open.discard(client)

    def close_idle(self, now: float, timeout: float,
                   last_active: Callable[[Any], float | None]) -> int:
        """Close every client idle for more than `timeout` (now - last_active(client), in
        the caller's unit; a client for which last_active is None is busy, never idle).
        The number closed."""
        idle = [client for client in self.open
                if (since := last_active(client)) is not None and now - since > timeout
                and not client.transport.is_closing()]
        for client in idle:
            client.transport.close()
        return len(idle)


class Listeners:
    """The listening sockets of one server, opened by `tcp` or `unix`."""

    def __init__(self, backlog: int = DEFAULT_BACKLOG) -> None:
        self.backlog = backlog
        self.servers: list[asyncio.AbstractServer] = []

    async def tcp(self, factory: Callable[[], asyncio.Protocol], hosts: Iterable[str],
                  port: int) -> int:
        """Listen on every host at `port`; port 0 takes a free one, the same for every host
        after the first. The port listened on."""
        loop = asyncio.get_running_loop()
        for host in hosts:
            server = await loop.create_server(factory, host, port, reuse_address=True,
                                              backlog=self.backlog)
            self.servers.append(server)
            if port == 0:
                port = server.sockets[0].getsockname()[1]
        return port

    async def unix(self, factory: Callable[[], asyncio.Protocol], path: str, mode: int) -> None:
        """Listen on the UNIX socket `path` (an old socket file there is removed first),
        with permissions `mode`."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(factory, path, backlog=self.backlog)
        os.chmod(path, mode)
        self.servers.append(server)

    def sockets(self) -> list[Any]:
        """Every listening socket."""
        return [sock for server in self.servers for sock in server.sockets]

    async def shutdown(self, clients: Connections, grace: float = DEFAULT_GRACE_S,
                       busy: Iterable[asyncio.Future[Any]] = (),
                       finish: Callable[[Any], None] | None = None) -> None:
        """Stop accepting; wait for the `busy` requests (up to `grace` seconds); `finish`
        every client (default: close its transport, which writes what is queued first);
        wait for them to go until `grace` seconds have passed since the start, abort the
        rest; wait for the listeners to close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for server in self.servers:
            server.close()
        pending = [task for task in busy if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for client in list(clients.open):
            if finish is None:
                client.transport.close()
            else:
                finish(client)
        while clients.open and loop.time() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_S)
        if clients.open:
            for client in list(clients.open):
                client.transport.abort()
            await asyncio.sleep(0)  # abort calls connection_lost soon: let it run
        for server in self.servers:
            await server.wait_closed()
