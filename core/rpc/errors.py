"""The one error hierarchy of core.rpc: remote misbehaviour versus local conditions.

Remote misbehaviour (the connection is closed, the reason logged):
- `FrameError`: bytes that are not a frame: `FrameTooLarge` (announced length above the
  limit) or `MalformedFrame` (not msgpack, or not a map).
- `AuthError`: the handshake failed (wrong secret, wrong node, auth modes disagree, a
  message before authentication, no answer in time).
- `ProtocolError`: an authenticated peer sent a frame that makes no sense.

Local conditions a caller handles:
- `PeerUnavailable`: the peer is down (the last connection attempt failed) or the
  connection was lost while a request was outstanding (it may or may not have run).
- `RpcTimeout`: no response within the request's timeout (it may or may not have run).
- `RemoteError`: the remote handler raised; the text is its message.
- `RequestRefused`: raised by a request handler to refuse; the requester's RemoteError.
- `InsecureConfig`: no cluster secret while binding or connecting beyond loopback.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "FrameError",
    "FrameTooLarge",
    "InsecureConfig",
    "MalformedFrame",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteError",
    "RequestRefused",
    "RpcError",
    "RpcTimeout",
]


class RpcError(Exception):
    """Base class of every error core.rpc raises on purpose."""


class FrameError(RpcError):
    """The byte stream is not a sequence of valid frames; it cannot be resynchronised."""


class FrameTooLarge(FrameError):
    """A frame's announced (or, when encoding, actual) length exceeds the limit."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")


class MalformedFrame(FrameError):
    """A frame's payload is not a msgpack map."""


class AuthError(RpcError):
    """The challenge-response handshake failed; the message says why."""


class ProtocolError(RpcError):
    """An authenticated peer sent a frame of an unknown kind or with bad fields."""


class PeerUnavailable(RpcError):
    """The peer cannot be reached now, or the connection broke under a pending request.

    `sent` is False when a request was never handed to a connection (it did not run and
    may be retried), True when it was (it may or may not have run).
    """

    def __init__(self, message: str, sent: bool = False) -> None:
        self.sent = sent
        super().__init__(message)


class RpcTimeout(RpcError, TimeoutError):
    """A request got no response within its timeout."""


class RemoteError(RpcError):
    """The remote handler raised while serving a request; the text is its message."""


class RequestRefused(RpcError):
    """Raise from a handler's `on_request` to answer with an error without logging a
    traceback (an expected refusal); the requester gets RemoteError with this text."""


class InsecureConfig(RpcError, ValueError):
    """Running without a cluster secret is only allowed on loopback addresses."""
