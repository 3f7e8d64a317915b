"""The console process: an asyncio HTTP/1.1 server and the poller behind it.

Strategy: one process watches all five daemons through their own ports, so no daemon carries
HTTP, HTML or JavaScript (each stays a small protocol server), one page shows everything,
and the console needs nothing the daemons' clients do not already get. `Poller` asks every
daemon once per POLL_INTERVAL_S (console/collect.py) whatever the number of browsers, keeps
the latest snapshot and feeds the chart series (console/rates.py). Each HTTP connection
feeds bytes to console/http_parse.py's reader and writes console/app.py's responses; a bad
request gets its 4xx status and the connection is closed; an idle connection is closed
after IDLE_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus
from typing import Any, Final

from console.app import ConsoleApp, Response, error_response
from console.collect import Collector, Targets
from console.http_parse import NEED_DATA, HttpError, Request, RequestReader
from console.rates import Rates
from console.sessions import SessionStore

__all__ = ["IDLE_TIMEOUT_S", "POLL_INTERVAL_S", "ConsoleServer", "Poller", "encode_response"]

POLL_INTERVAL_S: Final = 1.0
IDLE_TIMEOUT_S: Final = 60.0
READ_BYTES: Final = 64 * 1024
MAX_CONNECTIONS: Final = 256
ERR_BUSY: Final = "too many connections"
ERR_INTERNAL: Final = "internal error (see the console's log)"

log = logging.getLogger("console")


class Poller:
    """Polls the daemons in the background; `state()` is the latest snapshot and charts."""

    def __init__(self, collector: Collector, interval_s: float = POLL_INTERVAL_S) -> None:
        self.collector = collector
        self.interval_s = interval_s
        self.rates = Rates()
        self.snapshot: dict[str, Any] = {}
        self.polled_ms = 0
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def state(self) -> dict[str, Any]:
        """What /api/state serves (before the session's part)."""
        return {"polled_ms": self.polled_ms, "polls": self.polls, "daemons": self.snapshot,
                "charts": self.rates.series()}

    async def poll_once(self) -> None:
        """One poll of every daemon."""
        snapshot = await self.collector.poll()
        self.polled_ms = int(time.time() * 1000)
        self.rates.add(self.polled_ms, snapshot)
        self.snapshot = snapshot
        self.polls += 1

    def start(self) -> None:
        """Start polling every interval."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # a bug in one poll must not stop the page from updating
                log.exception("poll failed")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def stop(self) -> None:
        """Stop polling and close the daemons' connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.collector.close()


def encode_response(response: Response, *, head_only: bool = False,
                    keep_alive: bool = True) -> bytes:
    """`response` as HTTP/1.1 bytes."""
    reason = HTTPStatus(response.status).phrase
    headers = {**response.headers, "Content-Length": str(len(response.body)),
               "Connection": "keep-alive" if keep_alive else "close"}
    lines = [f"HTTP/1.1 {response.status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class ConsoleServer:
    """The HTTP side: `start(host, port)`, then `stop()`."""

    def __init__(self, targets: Targets, *, interval_s: float = POLL_INTERVAL_S) -> None:
        self.poller = Poller(Collector(targets), interval_s)
        self.app = ConsoleApp(targets, self.poller.state, SessionStore(time.monotonic))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen and start polling; returns the port (useful with port 0)."""
        self.poller.start()
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close connections, stop polling."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await self.poller.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            # a peer that vanished, idled out or was cut off by stop() just ends its exchange
            with contextlib.suppress(TimeoutError, ConnectionError, asyncio.CancelledError):
                if len(self._connections) > MAX_CONNECTIONS:
                    writer.write(encode_response(error_response(503, ERR_BUSY),
                                                 keep_alive=False))
                    return
                await self._exchange(reader, writer)
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        parser = RequestReader()
        while True:
            try:
                request = parser.next_request()
            except HttpError as exc:
                writer.write(encode_response(error_response(exc.status, exc.message),
                                             keep_alive=False))
                await writer.drain()
                return
            if request is NEED_DATA:
                data = await asyncio.wait_for(reader.read(READ_BYTES), IDLE_TIMEOUT_S)
                if not data:
                    return
                parser.feed(data)
                continue
            assert isinstance(request, Request)
            try:
                response = await self.app.handle(request)
            except Exception:  # a bug answers 500 and is logged; the server keeps serving
                log.exception("%s %s failed", request.method, request.path)
                response = error_response(500, ERR_INTERNAL)
            writer.write(encode_response(response, head_only=request.method == "HEAD",
                                         keep_alive=request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return
