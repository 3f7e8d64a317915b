"""Connections from the console to the daemons' own ports, and their replies made JSON.

Strategy: one `NodeLink` per RESP node address keeps one `AsyncRespConnection` (RESP3, so
maps arrive as maps) authenticated with the console's read password for that daemon, if it
has one. A call that fails closes the connection; the next poll connects again, so a node
that died is reported down once and comes back by itself. `MemcachedLink` does the same for
a kvcache server or proxy through kvcache's own asyncio client (`stats`). Replies go through
`plain()`: bytes become text, map keys strings, so every reply can be sent to the page as
JSON. `parse_info` reads an INFO reply's `key:value` lines by section.
"""

from __future__ import annotations

from typing import Any, Final

from core.resp_client import AsyncRespConnection, ReplyError, RespConnectionError
from kvcache.client_async import AsyncClient

__all__ = ["PROBE_TIMEOUT_S", "MemcachedLink", "NodeLink", "Reply", "parse_info", "plain"]

PROBE_TIMEOUT_S: Final = 1.5  # a node slower than this to answer is shown as down
MAX_TEXT_CHARS: Final = 4096  # longer strings in a reply are cut (a job's command, a message)

ERR_NO_STATS: Final = "no stats reply (server down)"

Reply = Any  # a JSON-able value, or {"error": text}


def plain(value: object) -> Reply:
    """`value` (a RESP reply) as JSON-able data."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:MAX_TEXT_CHARS]
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, BaseException):
        return {"error": str(value)}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def parse_info(text: str) -> dict[str, dict[str, str]]:
    """An INFO reply: section name (lower case) -> key -> value text."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in text.splitlines():
        if line.startswith("#"):
            current = sections.setdefault(line.lstrip("# ").strip().lower(), {})
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    if not sections[""]:
        del sections[""]
    return sections


def split_address(address: str, *, any_port: bool = False) -> tuple[str, int]:
    """host:port -> (host, port); raises ValueError. Port 0 only with `any_port` (a
    listening address the system picks a port for)."""
    host, colon, port = address.rpartition(":")
    low = 0 if any_port else 1
    if not colon or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    return host, int(port)


class NodeLink:
    """One RESP node (see the module header)."""

    def __init__(self, address: str, password: str | None) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self._password = password
        self._conn: AsyncRespConnection | None = None
        self.error = ""  # why the last call failed, "" while the node answers

    @property
    def up(self) -> bool:
        """Whether the last call reached the node."""
        return not self.error

    async def call(self, *args: str | int) -> Reply:
        """One command's reply as plain data; an error reply as {"error": text}; raises
        RespConnectionError when the node cannot be reached (and marks it down)."""
        try:
            reply = await (await self._connected()).call(*args)
        except ReplyError as exc:
            self.error = ""
            return {"error": str(exc)}
        except (TimeoutError, RespConnectionError, OSError) as exc:
            raise self._down(exc) from exc
        self.error = ""
        return plain(reply)

    async def pipeline(self, commands: list[tuple[str | int, ...]]) -> list[Reply]:
        """Several commands sent at once; their replies in order as plain data (an error
        reply as {"error": text}); raises RespConnectionError as `call` does."""
        try:
            conn = await self._connected()
            replies = await conn.pipeline(commands)
        except (TimeoutError, RespConnectionError, OSError) as exc:
            raise self._down(exc) from exc
        self.error = ""
        return [plain(r) for r in replies]

    async def _connected(self) -> AsyncRespConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await AsyncRespConnection.connect(
                self.host, self.port, timeout=PROBE_TIMEOUT_S, password=self._password,
                protocol=3)
        return self._conn

    def _down(self, exc: BaseException) -> RespConnectionError:
        self._drop()
        self.error = str(exc) or type(exc).__name__
        return RespConnectionError(self.error)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.abort()
        self._conn = None

    async def close(self) -> None:
        """Close the connection (the link reconnects on its next call)."""
        if self._conn is not None:
            await self._conn.close()
        self._conn = None


class MemcachedLink:
    """One kvcache server or proxy, read with `stats`."""

    def __init__(self, address: str) -> None:
        self.address = address
        split_address(address)
        self._client = AsyncClient([address], timeout=PROBE_TIMEOUT_S)
        self.error = ""

    async def stats(self) -> dict[str, str] | None:
        """The `stats` figures, or None (and `error` set) when it cannot be read."""
        try:
            replies = await self._client.stats()
        except Exception as exc:  # noqa: BLE001 - any failure means "down" on the page
            self.error = str(exc) or type(exc).__name__
            await self._client.close()
            return None
        if not replies:  # the client skips a server it knows is down
            self.error = ERR_NO_STATS
            return None
        self.error = ""
        return next(iter(replies.values()))

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()
