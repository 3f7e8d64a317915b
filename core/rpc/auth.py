"""Sans-I/O mutual challenge-response on the shared cluster secret, before any other frame.

The exchange (every step one frame, a msgpack map):

    acceptor  -> connector  {"t": "hello", "v": 1, "node": A, "nonce": Na, "auth": bool}
    connector -> acceptor   {"t": "auth", "v": 1, "node": C, "to": A, "nonce": Nc,
                             "proof": HMAC(secret, transcript("connector"))}
    acceptor  -> connector  {"t": "ok", "proof": HMAC(secret, transcript("acceptor"))}
                         or {"t": "denied", "reason": "..."}, then the acceptor closes

`transcript(role)` = PROTOCOL_LABEL, role, Na, Nc, C and A (ids as u64 big-endian), so a
proof binds both fresh nonces, both node ids and the direction: it cannot be replayed on
another connection, reflected back, or relayed to another node. Nonces are 32 random bytes
chosen by the caller (`new_nonce()`), which keeps this module free of I/O and randomness.
Digests are compared with `hmac.compare_digest`.

Without a secret both sides must say so (`"auth": false`, an empty proof); a side with a
secret refuses a side without one, in both directions. `check_auth_allowed` refuses
running without a secret beyond loopback addresses (binding or connecting).

Every method raises `AuthError` naming what went wrong; the caller then closes the
connection (the acceptor after a short delay, see core/rpc/server.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import struct
from collections.abc import Mapping
from typing import Any

from core.rpc.errors import AuthError, InsecureConfig

__all__ = [
    "DEFAULT_AUTH_TIMEOUT_S",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "AcceptorHandshake",
    "ConnectorHandshake",
    "check_auth_allowed",
    "new_nonce",
    "normalize_secret",
    "proof",
]

PROTOCOL_VERSION = 1
PROTOCOL_LABEL = b"infra-primitives rpc v1"
NONCE_BYTES = 32
DEFAULT_AUTH_TIMEOUT_S = 5.0  # both sides give up on a handshake not done by then
MAX_NODE_ID = 2**64 - 1
_IDS = struct.Struct(">QQ")

ERR_VERSION = "unsupported protocol version {!r}"
ERR_EXPECTED = "expected the {!r} frame, got {!r}"
ERR_MODES = "auth modes disagree: this node {}, the peer {}"
ERR_BAD_PROOF = "wrong cluster secret (proof does not verify)"
ERR_WRONG_NODE = "reached node {}, expected node {}"
ERR_DENIED = "peer refused authentication: {}"


def new_nonce() -> bytes:
    """A fresh random challenge (the only randomness of the handshake)."""
    return secrets.token_bytes(NONCE_BYTES)


def normalize_secret(secret: str | bytes | None) -> bytes | None:
    """The secret as bytes; None (no auth) for None. An empty secret is refused."""
    if secret is None:
        return None
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise InsecureConfig("the cluster secret must not be empty")
    return raw


def check_auth_allowed(host: str, secret: bytes | None) -> None:
    """Raise InsecureConfig if there is no secret and `host` is not a loopback address."""
    if secret is not None:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise InsecureConfig(f"node-to-node traffic with {host} needs a cluster secret "
                             "(--cluster-secret); without one only loopback is allowed")


def proof(secret: bytes, role: bytes, acceptor_nonce: bytes, connector_nonce: bytes,
          connector_id: int, acceptor_id: int) -> bytes:
    """HMAC-SHA256 over the transcript seen from `role` (b"connector" or b"acceptor")."""
    msg = b"\0".join((PROTOCOL_LABEL, role, acceptor_nonce, connector_nonce,
                      _IDS.pack(connector_id, acceptor_id)))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _check_node_id(node_id: int) -> int:
    if type(node_id) is not int or not 0 < node_id <= MAX_NODE_ID:
        raise ValueError(f"node ids are ints in 1..2**64-1, got {node_id!r}")
    return node_id


def _field(frame: Mapping[str, Any], name: str, kind: type) -> Any:
    value = frame.get(name)
    if type(value) is not kind:
        raise AuthError(f"handshake field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _expect(frame: Mapping[str, Any], kind: str) -> None:
    if frame.get("t") != kind:
        raise AuthError(ERR_EXPECTED.format(kind, frame.get("t")))


def _remote_id(frame: Mapping[str, Any], name: str) -> int:
    value = _field(frame, name, int)
    if not 0 < value <= MAX_NODE_ID:
        raise AuthError(f"handshake field {name!r} is not a node id: {value!r}")
    return int(value)


def _remote_nonce(frame: Mapping[str, Any]) -> bytes:
    nonce = _field(frame, "nonce", bytes)
    if len(nonce) != NONCE_BYTES:
        raise AuthError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return bytes(nonce)


def _mode(secret: bytes | None) -> str:
    return "uses a cluster secret" if secret is not None else "runs without one"


class AcceptorHandshake:
    """The accepting side: `hello()` first, then `receive_auth(frame)` -> the "ok" frame.

    After success `peer_id` is the authenticated connector's node id.
    """

    def __init__(self, node_id: int, secret: bytes | None, nonce: bytes) -> None:
        self.node_id = _check_node_id(node_id)
        self.secret = secret
        self.nonce = nonce
        self.peer_id: int | None = None

    def hello(self) -> dict[str, Any]:
        return {"t": "hello", "v": PROTOCOL_VERSION, "node": self.node_id,
                "nonce": self.nonce, "auth": self.secret is not None}

    def receive_auth(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """Check the connector's answer; return the "ok" frame to send. Raises AuthError."""
        _expect(frame, "auth")
        if frame.get("v") != PROTOCOL_VERSION:
            raise AuthError(ERR_VERSION.format(frame.get("v")))
        peer = _remote_id(frame, "node")
        to = _remote_id(frame, "to")
        if to != self.node_id:
            raise AuthError(ERR_WRONG_NODE.format(self.node_id, to))
        nonce = _remote_nonce(frame)
        answer = _field(frame, "proof", bytes)
        if self.secret is None:
            if answer:
                raise AuthError(ERR_MODES.format(_mode(None), "uses a cluster secret"))
            self.peer_id = peer
            return {"t": "ok", "proof": b""}
        expected = proof(self.secret, b"connector", self.nonce, nonce, peer, self.node_id)
        if not hmac.compare_digest(answer, expected):
            if not answer:
                raise AuthError(ERR_MODES.format(_mode(self.secret), "runs without one"))
            raise AuthError(ERR_BAD_PROOF)
        self.peer_id = peer
        return {"t": "ok",
                "proof": proof(self.secret, b"acceptor", self.nonce, nonce, peer, self.node_id)}

    @staticmethod
    def denied(reason: str) -> dict[str, Any]:
        return {"t": "denied", "reason": reason}


class ConnectorHandshake:
    """The connecting side: `receive_hello(frame)` -> the "auth" frame, then `receive_ok`.

    `expected_peer` is the node id this side means to reach (None: any, for tools).
    """

    def __init__(self, node_id: int, expected_peer: int | None, secret: bytes | None,
                 nonce: bytes) -> None:
        self.node_id = _check_node_id(node_id)
        self.expected_peer = expected_peer
        self.secret = secret
        self.nonce = nonce
        self.peer_id: int | None = None
        self._acceptor_nonce = b""

    def receive_hello(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        _expect(frame, "hello")
        if frame.get("v") != PROTOCOL_VERSION:
            raise AuthError(ERR_VERSION.format(frame.get("v")))
        peer = _remote_id(frame, "node")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise AuthError(ERR_WRONG_NODE.format(peer, self.expected_peer))
        self._acceptor_nonce = _remote_nonce(frame)
        wants_auth = _field(frame, "auth", bool)
        if wants_auth != (self.secret is not None):
            peer_mode = "uses a cluster secret" if wants_auth else "runs without one"
            raise AuthError(ERR_MODES.format(_mode(self.secret), peer_mode))
        self.peer_id = peer
        answer = b""
        if self.secret is not None:
            answer = proof(self.secret, b"connector", self._acceptor_nonce, self.nonce,
                           self.node_id, peer)
        return {"t": "auth", "v": PROTOCOL_VERSION, "node": self.node_id, "to": peer,
                "nonce": self.nonce, "proof": answer}

    def receive_ok(self, frame: Mapping[str, Any]) -> None:
        """Check the acceptor's proof (mutual authentication). Raises AuthError."""
        if frame.get("t") == "denied":
            raise AuthError(ERR_DENIED.format(frame.get("reason")))
        _expect(frame, "ok")
        if self.peer_id is None:
            raise AuthError("'ok' before 'hello'")
        answer = _field(frame, "proof", bytes)
        if self.secret is None:
            return
        expected = proof(self.secret, b"acceptor", self._acceptor_nonce, self.nonce,
                         self.node_id, self.peer_id)
        if not hmac.compare_digest(answer, expected):
            raise AuthError(ERR_BAD_PROOF)
