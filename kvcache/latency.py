"""How long kvcache takes to answer its clients, by command, for the metrics endpoint.

Strategy: timing every read would cost a clock pair per command, a large part of a cached
get; so a connection's read callback (kvcache/protocol.py's Lane, both twins) times one
read in SAMPLE_EVERY, whole: from the bytes arriving to every reply written or queued. The
read is filed under its first command's name. A client that does not pipeline sends one
command per read, so for it this is that command's latency; a pipeline is timed whole and
filed under its first command. A read that continues a command begun in an earlier one (a
large value arriving in pieces) is not timed: its first bytes name no command.
memcached keeps no latency figures at all; these are ours.
"""

from __future__ import annotations

from core.stats import LatencyHistogram

__all__ = ["COMMANDS", "OTHER", "SAMPLE_MASK", "CommandLatency", "command_of"]

SAMPLE_MASK = 7  # a read is timed when its number & SAMPLE_MASK is 0: one in 8
MAX_NAME_BYTES = 16  # longer than every command name
OTHER = "other"  # the name of a read whose first word is no command
COMMANDS = frozenset({
    "get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
    "delete", "incr", "decr", "touch", "mg", "ms", "md", "ma", "mn", "me", "stats",
    "flush_all", "version", "verbosity", "quit", "shutdown", "lru_crawler", "slabs", "lru",
    "watch", "cache_memlimit", "misbehave",
})


def command_of(data: bytes) -> str:
    """The command a read begins with, or OTHER (names are case-sensitive, as memcached's)."""
    head = data[:MAX_NAME_BYTES + 1]
    end = len(head)
    for stop in (b" ", b"\r", b"\n"):
        found = head.find(stop)
        if 0 <= found < end:
            end = found
    name = head[:end].decode("ascii", "replace")
    return name if name in COMMANDS else OTHER


class CommandLatency:
    """The timed reads of every connection of a server: `by_command` maps a command name to
    its LatencyHistogram (`calls` and the buckets both count timed reads)."""

    def __init__(self) -> None:
        self.by_command: dict[str, LatencyHistogram] = {}

    def record(self, data: bytes, nanos: int) -> None:
        """A timed read `data` took `nanos` to answer."""
        name = command_of(data)
        figures = self.by_command.get(name)
        if figures is None:
            figures = self.by_command[name] = LatencyHistogram()
        figures.calls += 1
        figures.record(nanos)
