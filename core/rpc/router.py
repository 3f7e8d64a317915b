"""One node-to-node port per process, shared by every service and Raft group on it.

Every frame body between nodes is an envelope `[service, group, payload]`: `service` a short
string naming who handles it ("raft", "raft.snap", "idgen", ...), `group` an int naming the
Raft group or other partition inside that service (0 when the service has none), `payload`
whatever msgpack value the service defines. `ServiceRouter` is the RpcHandler an RpcServer
delivers to: it unwraps the envelope and calls the service registered under that name.

What cannot be delivered never crashes anything: a malformed envelope or an unknown
service is counted, logged once per (peer, service) and dropped when it is a one-way
message, and refused with RequestRefused (which the RpcServer sends back as an error
reply) when it is a request. A service refuses unknown groups the same way
(`UnknownGroup`). The router also notes when each peer was last heard from, which is the
node-level liveness signal quiesced Raft groups rely on (core/raft/host.py).

`NodeTransport` bundles the listener, the router and the outgoing peers of one node:

    transport = NodeTransport(1, ("127.0.0.2", 7001), {2: ("127.0.0.3", 7001)}, secret)
    transport.register("raft", raft_host)        # on_message(peer, group, payload) / on_request
    await transport.start()
    transport.send(2, "raft", 0, payload)        # False: unreachable now
    reply = await transport.request(2, "raft", 7, body, timeout=1.0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from core.rpc.errors import RequestRefused
from core.rpc.peer import DEFAULT_REQUEST_TIMEOUT_S, Address, RpcClient
from core.rpc.server import RpcServer

__all__ = ["NodeTransport", "ServiceRouter", "ServiceHandler", "UnknownGroup"]

log = logging.getLogger("core.rpc.router")

ERR_MALFORMED = "malformed envelope: expected [service, group, payload]"
ERR_UNKNOWN_SERVICE = "unknown service {!r}"
ERR_UNKNOWN_GROUP = "unknown group {} of service {!r}"
MAX_SERVICE_NAME = 64


class UnknownGroup(RequestRefused):
    """A service has no group with this id on this node (sent back as an error reply)."""

    def __init__(self, service: str, group: int) -> None:
        super().__init__(ERR_UNKNOWN_GROUP.format(group, service))


class ServiceHandler(Protocol):
    """What a service registers. Exceptions from `on_message` are logged by the RpcServer;
    from `on_request` they go back to the caller as a RemoteError."""

    def on_message(self, peer_id: int, group: int, payload: Any) -> None: ...

    async def on_request(self, peer_id: int, group: int, payload: Any) -> Any: ...


def _envelope(body: Any) -> tuple[str, int, Any] | None:
    if not isinstance(body, list | tuple) or len(body) != 3:
        return None
    service, group, payload = body
    if not isinstance(service, str) or not 0 < len(service) <= MAX_SERVICE_NAME:
        return None
    if type(group) is not int:
        return None
    return service, group, payload


class ServiceRouter:
    """An RpcHandler dispatching envelopes to services by name (see the module header)."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceHandler] = {}
        self.last_heard: dict[int, float] = {}  # peer id -> time.monotonic() of its last frame
        self.stats = {"malformed": 0, "unknown_service": 0}
        self._warned: set[tuple[int, str]] = set()

    def register(self, service: str, handler: ServiceHandler) -> None:
        """Route `service` to `handler`; ValueError if the name is taken or invalid."""
        if not 0 < len(service) <= MAX_SERVICE_NAME:
            raise ValueError(f"bad service name {service!r}")
        if service in self.services:
            raise ValueError(f"service {service!r} is already registered")
        self.services[service] = handler

    def unregister(self, service: str) -> None:
        self.services.pop(service, None)

    def on_message(self, peer_id: int, body: Any) -> None:
        self.last_heard[peer_id] = time.monotonic()
        target = self._target(peer_id, body)
        if target is not None:
            handler, group, payload = target
            handler.on_message(peer_id, group, payload)

    async def on_request(self, peer_id: int, body: Any) -> Any:
        self.last_heard[peer_id] = time.monotonic()
        envelope = _envelope(body)
        if envelope is None:
            self.stats["malformed"] += 1
            raise RequestRefused(ERR_MALFORMED)
        service, group, payload = envelope
        handler = self.services.get(service)
        if handler is None:
            self.stats["unknown_service"] += 1
            raise RequestRefused(ERR_UNKNOWN_SERVICE.format(service))
        return await handler.on_request(peer_id, group, payload)

    def _target(self, peer_id: int, body: Any) -> tuple[ServiceHandler, int, Any] | None:
        envelope = _envelope(body)
        if envelope is None:
            self.stats["malformed"] += 1
            self._warn_once(peer_id, "", ERR_MALFORMED)
            return None
        service, group, payload = envelope
        handler = self.services.get(service)
        if handler is None:
            self.stats["unknown_service"] += 1
            self._warn_once(peer_id, service, ERR_UNKNOWN_SERVICE.format(service))
            return None
        return handler, group, payload

    def _warn_once(self, peer_id: int, service: str, reason: str) -> None:
        if (peer_id, service) not in self._warned:
            self._warned.add((peer_id, service))
            log.warning("rpc: dropping a message from node %d: %s", peer_id, reason)


class NodeTransport:
    """The node-to-node side of one process: an RpcServer on `listen` whose handler is a
    ServiceRouter, and an RpcClient to the peers. `peer_options` go to every Peer."""

    def __init__(self, node_id: int, listen: Address, peers: Mapping[int, Address],
                 secret: str | bytes | None, **peer_options: Any) -> None:
        self.node_id = node_id
        self.listen = listen
        self.router = ServiceRouter()
        self.client = RpcClient(node_id, secret,
                                {k: v for k, v in peers.items() if k != node_id},
                                **peer_options)
        self.server = RpcServer(node_id, listen[0], listen[1], secret, self.router)

    @property
    def port(self) -> int:
        return self.server.port

    def register(self, service: str, handler: ServiceHandler) -> None:
        self.router.register(service, handler)

    async def start(self) -> None:
        """Listen. Raises OSError (port in use), InsecureConfig."""
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()
        await self.client.close()

    def send(self, peer_id: int, service: str, group: int, payload: Any) -> bool:
        """Fire and forget; False if `peer_id` is unreachable now (see core.rpc.peer)."""
        return self.client.send(peer_id, [service, group, payload])

    async def request(self, peer_id: int, service: str, group: int, payload: Any,
                      timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> Any:
        """A request to `service`/`group` on `peer_id`; raises as RpcClient.request."""
        return await self.client.request(peer_id, [service, group, payload], timeout)

    def set_address(self, peer_id: int, address: Address) -> None:
        if peer_id != self.node_id:
            self.client.set_address(peer_id, address)

    def connected(self, peer_id: int) -> bool:
        peer = self.client.peers.get(peer_id)
        return peer is not None and peer.connected

    def heard_within(self, peer_id: int, seconds: float) -> bool:
        """Whether any frame came from `peer_id` in the last `seconds`."""
        heard = self.router.last_heard.get(peer_id)
        return heard is not None and time.monotonic() - heard <= seconds
