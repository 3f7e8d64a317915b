"""A TCP relay that adds latency and jitter, and can pause or cut, between two nodes.

Strategy: an asyncio server accepts on a socket it is given; for each client it opens a
connection to the target (through a socket factory, so the harness can create that socket in
a chosen network namespace) and runs one pump per direction. A pump reads chunks, stamps each
with a due time `now + delay + uniform(0, jitter)`, raised to the previous chunk's due time so
bytes never overtake each other within a connection, and a writer delivers them when due.
Between connections the same holds by default (one due-time floor per direction), so jitter
delays but never reorders; `allow_reorder(True)` drops that shared floor, and chunks of
different connections may then overtake each other: the only reordering a TCP relay can show
(TCP itself never reorders bytes of one connection). `pause()` holds every byte (and new
connections' bytes) until `resume()`; `cut()` aborts every connection (RST to both sides) and
refuses new ones until `restore()`. Delay, jitter, pause and cut take effect at run time.
`LoopThread` and `RelayHandle` drive a relay from synchronous test code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

FORWARD = "forward"  # client -> target
BACK = "back"  # target -> client
DIRECTIONS = (FORWARD, BACK)
CHUNK_BYTES = 65536
MAX_QUEUED_CHUNKS = 1024
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0
ZERO_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST

T = TypeVar("T")


@dataclass
class Shape:
    """Delay applied to one direction: each chunk waits `delay` plus up to `jitter` seconds."""

    delay: float = 0.0
    jitter: float = 0.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with RST (zero linger) instead of FIN, dropping unsent bytes."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ZERO_LINGER)
    writer.transport.abort()


class _Link:
    """One relayed connection: the client's stream pair and the target's."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.target = target

    def abort(self) -> None:
        """Reset both connections at once (RST, as a zero linger makes it); queued bytes go."""
        for _, writer in (self.client, self.target):
            _reset(writer)

    def close(self) -> None:
        """Close both connections after what was written is flushed."""
        for _, writer in (self.client, self.target):
            writer.close()


class Relay:
    """Relays every connection made to `listen` to `target`, shaped as set at run time.

    `connect_socket()` makes the (unconnected) socket used to reach the target; by default an
    ordinary IPv4 TCP socket. `seed` seeds the jitter.
    """

    def __init__(
        self,
        listen: socket.socket,
        target: tuple[str, int],
        connect_socket: Callable[[], socket.socket] | None = None,
        seed: int = 0,
    ) -> None:
        self._listen = listen
        self.target = target
        self._connect_socket = connect_socket or (lambda: socket.socket())
        self._rng = random.Random(seed)
        self._shapes = {direction: Shape() for direction in DIRECTIONS}
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut = False
        self._reorder = False
        self._floor = dict.fromkeys(DIRECTIONS, 0.0)  # latest due time given, per direction
        self._server: asyncio.Server | None = None
        self.connections = 0
        self.bytes = dict.fromkeys(DIRECTIONS, 0)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: the listening socket's (host, port)."""
        host, port = self._listen.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Start accepting (the listening socket must already be bound)."""
        self._server = await asyncio.start_server(self._on_client, sock=self._listen)

    async def close(self) -> None:
        """Stop accepting and abort every relayed connection."""
        if self._server is not None:
            self._server.close()
        self._abort_all()
        self._flowing.set()

    def shape(self, delay: float, jitter: float = 0.0, direction: str | None = None) -> None:
        """Delay chunks by `delay` + uniform(0, `jitter`) seconds in `direction` (None: both)."""
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be non-negative")
        for name in DIRECTIONS if direction is None else (direction,):
            self._shapes[name] = Shape(delay, jitter)

    def allow_reorder(self, allowed: bool) -> None:
        """Whether chunks of different connections may overtake each other under jitter."""
        self._reorder = allowed

    def pause(self) -> None:
        """Hold every byte in both directions until `resume()`; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what `pause()` held, and flow again."""
        self._flowing.set()

    def cut(self) -> None:
        """Abort every relayed connection and refuse new ones until `restore()`."""
        self._cut = True
        self._abort_all()

    def restore(self) -> None:
        """Accept and relay again after `cut()`."""
        self._cut = False

    def _abort_all(self) -> None:
        for link in list(self._links):
            link.abort()

    def _due(self, direction: str, last_due: float) -> float:
        shape = self._shapes[direction]
        extra = self._rng.uniform(0.0, shape.jitter) if shape.jitter else 0.0
        due = max(last_due, asyncio.get_running_loop().time() + shape.delay + extra)
        if not self._reorder:
            due = max(due, self._floor[direction])
        self._floor[direction] = max(self._floor[direction], due)
        return due

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(writer)
            return
        target = await self._open_target()
        if target is None or self._cut:
            _reset(writer)
            if target is not None:
                _reset(target[1])
            return
        link = _Link((reader, writer), target)
        self._links.add(link)
        self.connections += 1
        try:
            await asyncio.gather(
                self._pump(FORWARD, reader, target[1], link),
                self._pump(BACK, target[0], writer, link),
            )
        finally:
            self._links.discard(link)
            link.close()

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        sock = self._connect_socket()
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, self.target), CONNECT_TIMEOUT_S)
            return await asyncio.open_connection(sock=sock)
        except OSError:  # TimeoutError is one
            sock.close()
            return None

    async def _pump(
        self,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        deliver = asyncio.ensure_future(self._deliver(direction, queue, writer))
        deliver.add_done_callback(
            lambda task: task.cancelled() or task.exception() is None or link.abort()
        )
        last_due = 0.0
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                last_due = self._due(direction, last_due)
                await queue.put((last_due, chunk))
            await queue.put((last_due, b""))
            await deliver
        except OSError:
            link.abort()
        finally:
            if not deliver.done():
                deliver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deliver

    async def _deliver(
        self,
        direction: str,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if not chunk:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                return
            writer.write(chunk)
            self.bytes[direction] += len(chunk)
            await writer.drain()


class LoopThread:
    """An asyncio event loop in a daemon thread, for relays driven from synchronous tests.

    `initializer`, when given, runs first in the loop's thread (the harness uses it to move
    the thread into a host's network namespace for good).
    """

    def __init__(self, initializer: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._initializer = initializer
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        if self._initializer is not None:
            self._initializer()
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call `fn(*args)` in the loop's thread and return its result."""

        async def wrapped() -> T:
            return fn(*args)

        return self.run(wrapped())

    def stop(self) -> None:
        """Stop the loop and join its thread. Idempotent."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self.loop.close()


class RelayHandle:
    """A relay running on a `LoopThread`, with the relay's controls as blocking calls."""

    def __init__(self, relay: Relay, loop: LoopThread) -> None:
        self.relay = relay
        self._loop = loop

    @property
    def address(self) -> tuple[str, int]:
        """Where the relayed node should connect instead of the target."""
        return self.relay.address

    def shape(self, delay: float, jitter: float = 0.0, direction: str | None = None) -> None:
        """See `Relay.shape`."""
        self._loop.call(self.relay.shape, delay, jitter, direction)

    def allow_reorder(self, allowed: bool) -> None:
        """See `Relay.allow_reorder`."""
        self._loop.call(self.relay.allow_reorder, allowed)

    def pause(self) -> None:
        """See `Relay.pause`."""
        self._loop.call(self.relay.pause)

    def resume(self) -> None:
        """See `Relay.resume`."""
        self._loop.call(self.relay.resume)

    def cut(self) -> None:
        """See `Relay.cut`."""
        self._loop.call(self.relay.cut)

    def restore(self) -> None:
        """See `Relay.restore`."""
        self._loop.call(self.relay.restore)

    def close(self) -> None:
        """See `Relay.close`."""
        if not self._loop.loop.is_closed():
            self._loop.run(self.relay.close())
