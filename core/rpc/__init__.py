"""core.rpc: node-to-node messages of one daemon's cluster (DESIGN.md, "Wire protocols").

Length-prefixed msgpack frames over TCP (core/rpc/framing.py, sans-I/O), a mutual
challenge-response on the shared cluster secret before any other frame (core/rpc/auth.py,
sans-I/O), and the asyncio layer: `RpcServer` (accepts, authenticates, delivers to an
`RpcHandler`) and `Peer` / `RpcClient` (one persistent connection per peer, reconnect with
backoff, bounded queues, fire-and-forget `send` and `request` with timeouts). One port per
process serves every service and Raft group: `NodeTransport` puts a `ServiceRouter` behind the
server, and every frame names its service and group (core/rpc/router.py).

    server = RpcServer(1, "127.0.0.2", 7001, secret, handler)   # handler.on_message/on_request
    await server.start()
    client = RpcClient(1, secret, {2: ("127.0.0.3", 7001)})
    client.send(2, {"any": "msgpack value"})                     # False: unreachable now
    reply = await client.request(2, body, timeout=1.0)
"""

from core.rpc.auth import check_auth_allowed
from core.rpc.errors import (
    AuthError,
    FrameError,
    FrameTooLarge,
    InsecureConfig,
    MalformedFrame,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RequestRefused,
    RpcError,
    RpcTimeout,
)
from core.rpc.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from core.rpc.peer import Address, Peer, RpcClient
from core.rpc.router import NodeTransport, ServiceHandler, ServiceRouter, UnknownGroup
from core.rpc.server import RpcHandler, RpcServer

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Address",
    "AuthError",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "InsecureConfig",
    "MalformedFrame",
    "NodeTransport",
    "Peer",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteError",
    "RequestRefused",
    "RpcClient",
    "RpcError",
    "RpcHandler",
    "RpcServer",
    "RpcTimeout",
    "ServiceRouter",
    "ServiceHandler",
    "UnknownGroup",
    "check_auth_allowed",
    "encode_frame",
]
