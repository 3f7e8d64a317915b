"""What a RESP command handler sees: the client's `Session`, and the server as `ServerView`.

Both live here, apart from core.resp_server, so that the handlers of the shared commands
(core.resp_commands) and the server that runs them depend on this module and on
core.command_table, never on each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from core.command_table import CommandTable
from core.users import DEFAULT_USER, UserDirectory


@dataclass(eq=False)
class Session:
    """What the server knows of one client connection. `user`: who is calling (the default
    user until AUTH names another), so a daemon's handler can check what it may do."""

    id: int
    peer: str
    authenticated: bool
    user: str = DEFAULT_USER
    protocol: int = 2
    name: str = ""
    lib_name: str = ""
    lib_ver: str = ""
    last_command: str = ""
    created: float = field(default_factory=time.monotonic)
    close_after_reply: bool = False


class ServerView(Protocol):
    """The parts of a RESP server the shared commands read (core.resp_server.RespServer)."""

    name: str
    version: str
    mode: str  # what HELLO says: "standalone", or "cluster" for a Redis Cluster node
    password: str | None
    users: UserDirectory | None
    sessions: dict[int, Session]
    table: CommandTable

    def info_sections(self) -> dict[str, dict[str, object]]:
        """Every INFO section, in the order INFO prints them."""
        ...

    def config_get(self, patterns: list[str]) -> dict[str, str]:
        """The CONFIG GET values whose names match any of the glob `patterns`."""
        ...
