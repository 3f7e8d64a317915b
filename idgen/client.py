"""Client library for idgen: `IdgenClient` (blocking) and `AsyncIdgenClient` (asyncio).

Strategy
- Failover is core/failover.py's, whose header states it: nodes are tried in rounds from
  the one that answered last (or that a leader hint named), a failed node is skipped for a
  backoff that doubles per failure, TRYAGAIN/LOADING moves on to the next node, MOVED/ASK
  redirect, `-ERR` is the caller's mistake (no failover), jittered pauses separate rounds up
  to the deadline, and giving up raises one error that lists each node's last failure.
  For idgen: a server also fails by answering one of the "cannot issue now" codes (CLOCK,
  CONFLICT, SKEW, OVERFLOW, NOAUTH, IOERR, LOADING, ...); its backoff is 1 s doubling up to
  30 s; there is no deadline: a request makes one round, then raises `IdgenUnavailable` (a
  prefetching client's refiller retries on its own); the mistake is `IdgenUsageError`.
- Prefetch. With `prefetch=P`, ids wait in a local deque and `next_id()` pops one: a length
  check and a `popleft` on the fast path. Once the deque holds fewer than P//2 ids, a
  background refiller (a daemon thread, or an asyncio task) asks for `NEXT batch` until it
  holds at least P//2 again. An empty deque makes `next_id()` wait for the refill.
- Ordering. Servers have distinct worker ids, so ids are unique across servers, and each
  server's ids are strictly increasing. Ids handed out by one client may come from several
  servers (after a failover, or through the prefetch buffer), so they are unique but not
  globally increasing. Ids fetched but never handed out (buffer left at `close()`, replies
  lost to a timeout) are simply skipped; no id is ever handed out twice.


Layers, each its own module:
- idgen/client_core.py, no I/O: errors, limits, how idgen's error replies are read and its
  failover policy (for core/failover.py), reply checks, prefetch arithmetic, `_ClientBase`
  (settings and the prefetch buffer), the callers' state (`_CallerCore`) and every decision
  of the refillers (`_RefillCore`: when a wait gives up, what a failure leaves).
- idgen/client_sync.py: `IdgenClient`, its failover caller and its refiller thread.
- idgen/client_async.py: `AsyncIdgenClient`, its failover caller and its refiller task.
  Both carry out the core's decisions on their connections, threads or tasks.
This module re-exports the public names, so `from idgen.client import ...` is the API.

Offline decoding is `idgen.layout.parse`, re-exported here as `parse`.
"""

from __future__ import annotations

from idgen import layout
from idgen.client_async import AsyncIdgenClient
from idgen.client_core import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CANNOT_ISSUE_CODES,
    DEFAULT_TIMEOUT_S,
    MAX_BATCH,
    RETRY_PAUSE_MAX_S,
    RETRY_PAUSE_MIN_S,
    SERVER_TROUBLE_PREFIXES,
    IdgenError,
    IdgenUnavailable,
    IdgenUsageError,
    parse_servers,
)
from idgen.client_sync import IdgenClient
from idgen.layout import ParsedId

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "CANNOT_ISSUE_CODES",
    "DEFAULT_TIMEOUT_S",
    "MAX_BATCH",
    "RETRY_PAUSE_MAX_S",
    "RETRY_PAUSE_MIN_S",
    "SERVER_TROUBLE_PREFIXES",
    "AsyncIdgenClient",
    "IdgenClient",
    "IdgenError",
    "IdgenUnavailable",
    "IdgenUsageError",
    "ParsedId",
    "parse",
    "parse_servers",
]

parse = layout.parse
