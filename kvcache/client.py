"""memcached clients, blocking (`Client`) and asyncio (`AsyncClient`), over a ketama pool.

Layers, each its own module, from the wire up:
- kvcache/client_codec.py, sans-I/O: commands are data (`cmd_*` builders validate arguments
  and return a `Command`: request bytes, reply shape, decoder); `ReplyReader` turns bytes
  into replies with named limits; `Exchange` is one connection's conversation (the noreply
  fence included).
- kvcache/ring.py: `Router`, the pool's state: the ketama ring (placement as libmemcached and
  uhashring), each server's health, and where a key goes now.
- kvcache/client_core.py: `PoolCore`, every decision both clients share (routing, multi-get
  split, per-server commands, probes, failure accounting, merging), no waiting on I/O.
- kvcache/client_sync.py (`Client`) and kvcache/client_async.py (`AsyncClient`): thin: route,
  borrow a pooled connection, write, read until the Exchange has the reply. Multi-gets send
  one request per server; the async client asks all servers concurrently, the blocking one
  writes to all before reading any.

Health: `failure_threshold` consecutive failures (connect error, timeout, connection lost,
malformed reply) mark a server down. An error reply (SERVER_ERROR out of memory, CLIENT_ERROR)
is an answer, so it counts as success. A down server is probed with `version` on a fresh
connection, first `retry_backoff[0]` seconds later, then with the delay doubling up to
`retry_backoff[1]`. The blocking client probes inline, at the start of the first call after
a probe falls due (that call may wait up to one timeout); the async client starts the probe
as a task, so no call waits for it.
What a down server's keys do is `on_down`:
- "fail" (mcrouter's default): calls for them raise ServerDown at once, without I/O; other
  keys are unaffected, and no key ever moves, so no call returns another server's value.
- "remap" (twemproxy's auto_eject_hosts, libmemcached's auto eject): the ring is rebuilt
  without the down servers, so their keys go to their ring successors; when a probe succeeds
  the server is sent `flush_all` and then takes its keys back, so a value written on the
  successor meanwhile is never shadowed by the older copy the server kept (a hang, SIGSTOP).
  Then the copies this client wrote on the successors meanwhile are deleted there (they
  would be read, older, in the server's next outage; past MAX_MOVED_KEYS of kvcache/ring.py
  those successors are flushed instead). Caveats: a client cleans up only its own writes,
  and several clients notice a server's return at different moments, so between those
  moments they may read and write a key on different servers; use "fail" where that matters.
A failed call is never retried on another server (a timed-out write may have been applied).

Connections: a timeout bounds a whole call (connect, write, read). A connection that failed
is closed with every idle one to that server, never reused, so a late reply can not be taken
for another request's; a pooled connection the server closed (a restart) fails its next call.
noreply calls return once written: they can not tell success, so they do not count for
health. A server may still answer a noreply command with an error (memcached 1.6 does for a
line it can not parse), so the next request on that connection is fenced with `version` and
anything before the fence's reply is dropped.
"""

from __future__ import annotations

from kvcache.client_async import AsyncClient
from kvcache.client_codec import (
    MAX_KEY_BYTES,
    MAX_LINE_BYTES,
    MAX_VALUE_BYTES,
    CacheError,
    Command,
    CommandError,
    Item,
    NetworkError,
    ProtocolError,
    ReplyError,
    ReplyReader,
    ServerDown,
    ServerError,
)
from kvcache.client_sync import Client

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_LINE_BYTES",
    "MAX_VALUE_BYTES",
    "AsyncClient",
    "CacheError",
    "Client",
    "Command",
    "CommandError",
    "Item",
    "NetworkError",
    "ProtocolError",
    "ReplyError",
    "ReplyReader",
    "ServerDown",
    "ServerError",
]
