"""What one client may make a RESP daemon hold: the one `Limits` every RESP daemon takes.

The request parser's own defaults (native.resp: MAX_INLINE_BYTES, MAX_BULK_BYTES,
MAX_ELEMENTS, MAX_BUFFER_BYTES) are the defaults here, so a parser built with no arguments,
a server built with no Limits and CONFIG GET all say the same: 64 KiB inline lines,
1,048,576 elements (Redis's), 512 KiB bulks and 4 MiB of unparsed input per client (Redis
allows 512 MiB and 1 GiB; ours stay small so memory stays bounded). A daemon that stores
values passes larger ones (REDIS_MAX_BULK_BYTES is Redis's proto-max-bulk-len); a daemon whose
commands are tiny passes smaller ones (idgen's LIMITS: 64 KiB bulks, 1,024 elements).
The client's reply parser (core.resp_client) keeps Redis's sizes: it also reads real Redis.

Before AUTH succeeds every daemon takes only small requests (native.resp
UNAUTH_MAX_ELEMENTS elements of at most UNAUTH_MAX_BULK_BYTES each), as Redis does; those
two are fixed, not per daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from native.resp import (
    MAX_BUFFER_BYTES,
    MAX_BULK_BYTES,
    MAX_ELEMENTS,
    MAX_INLINE_BYTES,
    UNAUTH_MAX_BULK_BYTES,
    UNAUTH_MAX_ELEMENTS,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_CLIENTS",
    "REDIS_MAX_BULK_BYTES",
    "UNAUTH_MAX_BULK_BYTES",
    "UNAUTH_MAX_ELEMENTS",
    "WRITE_HIGH_WATER_BYTES",
    "Limits",
]

REDIS_MAX_BULK_BYTES = 512 * 1024 * 1024
MAX_CLIENTS = 10_000
# Replies waiting in a client's socket buffer before the server stops reading from it.
WRITE_HIGH_WATER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-client limits of a RESP daemon, and its connection count.

    max_inline: bytes of an inline command line (and of a multibulk header line).
    max_bulk: bytes of one argument (Redis's proto-max-bulk-len).
    max_elements: arguments of one multibulk command.
    max_buffer: bytes of unparsed input held for one client (client-query-buffer-limit).
    max_clients: open client connections; one more is refused with an error (maxclients).
    write_high_water: bytes of replies queued for a client before reading from it pauses.
    A request over a parser limit gets Redis's protocol error and the connection is closed.
    """

    max_inline: int = MAX_INLINE_BYTES
    max_bulk: int = MAX_BULK_BYTES
    max_elements: int = MAX_ELEMENTS
    max_buffer: int = MAX_BUFFER_BYTES
    max_clients: int = MAX_CLIENTS
    write_high_water: int = WRITE_HIGH_WATER_BYTES

    def with_clients(self, max_clients: int) -> Limits:
        """The same limits with another connection count (a daemon's --maxclients)."""
        return replace(self, max_clients=max_clients)


DEFAULT_LIMITS = Limits()
