"""core.rpc: the sans-I/O codec and handshake alone, then real sockets on loopback.

Timeouts here only detect hangs (HANG_S); no assertion depends on how fast anything is.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from core.rpc import (
    AuthError,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    InsecureConfig,
    MalformedFrame,
    Peer,
    PeerUnavailable,
    RemoteError,
    RequestRefused,
    RpcClient,
    RpcServer,
    RpcTimeout,
    encode_frame,
)
from core.rpc.auth import AcceptorHandshake, ConnectorHandshake, new_nonce
from core.rpc.framing import FRAME_HEADER, MAX_HANDSHAKE_FRAME_BYTES, decode_payload
from tests.conftest import find_free_port

HANG_S = 20.0
SECRET = b"cluster secret for tests"
HOST = "127.0.0.1"


Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test's coroutine on the stdlib loop and on uvloop (what daemons use)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro_fn: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            async with asyncio.timeout(HANG_S):
                await coro_fn()

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(guarded())

    return runner


# -- sans-I/O framing --------------------------------------------------------------------------

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)
maps = st.dictionaries(st.text(max_size=8), values, max_size=6)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for lo, hi in zip(points, points[1:], strict=False):
        out.extend(decoder.feed(data[lo:hi]))
    return out


@given(st.lists(maps, max_size=6), st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_round_trip_whatever_the_chunking(objs: list[dict[str, Any]],
                                                  cuts: list[int]) -> None:
    data = b"".join(encode_frame(obj) for obj in objs)
    decoder = FrameDecoder()
    assert feed_in_chunks(decoder, data, cuts) == objs
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_raises_only_frame_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame_bytes=256)
    try:
        frames = feed_in_chunks(decoder, data, cuts)
    except FrameError:
        with pytest.raises(FrameError):  # a failed decoder stays failed
            decoder.feed(b"")
        return
    assert all(isinstance(f, dict) for f in frames)


@settings(max_examples=300)
@given(maps, st.integers(0, 10_000), st.integers(0, 255))
def test_corrupted_frames_raise_only_frame_errors(obj: dict[str, Any], where: int,
                                                  byte: int) -> None:
    data = bytearray(encode_frame(obj) * 2)
    data[where % len(data)] = byte
    try:
        frames = FrameDecoder(max_frame_bytes=4096).feed(bytes(data))
    except FrameError:
        return
    assert all(isinstance(f, dict) for f in frames)


def test_announced_oversize_frame_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(FRAME_HEADER.pack(1001))
    assert (info.value.length, info.value.limit) == (1001, 1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"")


def test_frame_at_the_limit_passes_and_encoding_over_it_is_refused() -> None:
    obj = {"b": b"x" * 100}
    frame = encode_frame(obj)
    limit = len(frame) - FRAME_HEADER.size
    assert FrameDecoder(max_frame_bytes=limit).feed(frame) == [obj]
    with pytest.raises(FrameTooLarge):
        encode_frame(obj, max_frame_bytes=limit - 1)


@pytest.mark.parametrize("payload", [
    msgpack.packb([1, 2]), msgpack.packb(7), b"\xc1", msgpack.packb({"a": 1}) + b"\x00",
    b"\xa3ab", msgpack.packb({1: 2}), b"\x81\xa1a\xd9\x02\xff\xfe",
])
def test_payloads_that_are_not_one_msgpack_map_are_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(FRAME_HEADER.pack(len(payload)) + payload)
    with pytest.raises(MalformedFrame):
        decode_payload(payload)


# -- sans-I/O handshake ------------------------------------------------------------------------

def handshake(acceptor_secret: bytes | None, connector_secret: bytes | None,
              expected: int = 2) -> tuple[AcceptorHandshake, ConnectorHandshake]:
    acceptor = AcceptorHandshake(2, acceptor_secret, new_nonce())
    connector = ConnectorHandshake(1, expected, connector_secret, new_nonce())
    auth = connector.receive_hello(acceptor.hello())
    connector.receive_ok(acceptor.receive_auth(auth))
    return acceptor, connector


def test_handshake_succeeds_with_the_same_secret_and_names_both_nodes() -> None:
    acceptor, connector = handshake(SECRET, SECRET)
    assert (acceptor.peer_id, connector.peer_id) == (1, 2)
    acceptor, connector = handshake(None, None)
    assert (acceptor.peer_id, connector.peer_id) == (1, 2)


def test_acceptor_refuses_a_wrong_secret() -> None:
    with pytest.raises(AuthError, match="wrong cluster secret"):
        handshake(SECRET, b"guess")


def test_connector_refuses_an_acceptor_that_cannot_prove_the_secret() -> None:
    acceptor = AcceptorHandshake(2, b"impostor", new_nonce())
    connector = ConnectorHandshake(1, 2, SECRET, new_nonce())
    auth = connector.receive_hello(acceptor.hello())
    forged = {"t": "ok", "proof": b"\0" * 32}
    with pytest.raises(AuthError, match="wrong cluster secret"):
        connector.receive_ok(forged)
    with pytest.raises(AuthError):
        acceptor.receive_auth(auth)  # and the impostor cannot check the connector either


@pytest.mark.parametrize("acceptor_secret, connector_secret", [(SECRET, None), (None, SECRET)])
def test_auth_modes_must_agree(acceptor_secret: bytes | None,
                               connector_secret: bytes | None) -> None:
    with pytest.raises(AuthError, match="auth modes disagree"):
        handshake(acceptor_secret, connector_secret)


def test_proofs_are_bound_to_the_nodes_and_cannot_be_replayed() -> None:
    acceptor = AcceptorHandshake(2, SECRET, new_nonce())
    connector = ConnectorHandshake(1, 2, SECRET, new_nonce())
    auth = connector.receive_hello(acceptor.hello())
    with pytest.raises(AuthError):
        acceptor.receive_auth({**auth, "node": 3})  # claims to be another node
    with pytest.raises(AuthError):
        AcceptorHandshake(2, SECRET, new_nonce()).receive_auth(auth)  # fresh challenge
    with pytest.raises(AuthError, match="expected node 3"):
        handshake(SECRET, SECRET, expected=3)


def test_no_secret_is_refused_beyond_loopback() -> None:
    with pytest.raises(InsecureConfig):
        RpcServer(1, "0.0.0.0", 0, None, Recorder())
    with pytest.raises(InsecureConfig):
        Peer(1, 2, ("10.1.2.3", 7000), None)
    RpcServer(1, "0.0.0.0", 0, SECRET, Recorder())
    RpcServer(1, "127.0.0.2", 0, None, Recorder())


# -- sockets -----------------------------------------------------------------------------------

class Recorder:
    """A handler recording messages; requests echo, or sleep, or fail, on demand."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Any]] = []
        self.arrived = asyncio.Event() if _loop_running() else None

    def on_message(self, peer_id: int, body: Any) -> None:
        self.messages.append((peer_id, body))
        if self.arrived is not None:
            self.arrived.set()

    async def on_request(self, peer_id: int, body: Any) -> Any:
        if body == "sleep":
            await asyncio.sleep(HANG_S)
        if body == "refuse":
            raise RequestRefused("not today")
        return {"from": peer_id, "echo": body}

    async def wait_for(self, count: int) -> None:
        assert self.arrived is not None
        while len(self.messages) < count:
            self.arrived.clear()
            await self.arrived.wait()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def start_server(secret: bytes | None = SECRET, node_id: int = 2, port: int = 0,
                       **options: Any) -> tuple[RpcServer, Recorder]:
    handler = Recorder()
    server = RpcServer(node_id, HOST, port, secret, handler, **options)
    await server.start()
    return server, handler


def fast_peer(server: RpcServer, secret: bytes | None = SECRET, **options: Any) -> Peer:
    return Peer(1, server.node_id, (HOST, server.port), secret, backoff_min=0.01,
                backoff_max=0.05, **options)


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                          dict[str, Any]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    hello = msgpack.unpackb(await reader.readexactly(length))
    return reader, writer, hello


def test_authenticated_messages_and_requests_arrive_with_the_sender_id(run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server()
        peer = fast_peer(server)
        assert await peer.request(b"hi") == {"from": 1, "echo": b"hi"}
        assert peer.send({"n": 1}) and peer.send({"n": 2})
        await handler.wait_for(2)
        assert handler.messages == [(1, {"n": 1}), (1, {"n": 2})]
        assert server.peers() == [1]
        await peer.close()
        await server.close()

    run(main)


@pytest.mark.parametrize("server_secret, client_secret", [
    (SECRET, b"wrong secret"), (b"wrong secret", SECRET), (SECRET, None), (None, SECRET),
])
def test_wrong_or_missing_secret_is_refused_in_both_directions(
        server_secret: bytes | None, client_secret: bytes | None, run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server(server_secret, auth_failure_delay=0.01)
        peer = fast_peer(server, client_secret)
        with pytest.raises(PeerUnavailable, match="AuthError"):
            await peer.request(b"hi")
        peer.send(b"dropped")
        await asyncio.sleep(0.1)
        assert not peer.connected and handler.messages == [] and server.peers() == []
        await peer.close()
        await server.close()

    run(main)


def test_no_message_is_accepted_before_authentication(run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server()
        reader, writer, hello = await raw_connect(server.port)
        assert hello["t"] == "hello" and hello["auth"] is True
        writer.write(encode_frame({"t": "m", "b": b"sneaky"}))
        writer.write(encode_frame({"t": "q", "id": 1, "b": b"sneaky"}))
        answer = FrameDecoder().feed(await reader.read())  # everything until it closes
        assert answer == [{"t": "denied", "reason": "expected the 'auth' frame, got 'm'"}]
        reader, writer, _ = await raw_connect(server.port)
        writer.write(FRAME_HEADER.pack(MAX_HANDSHAKE_FRAME_BYTES + 1))  # tight limit first
        assert await reader.read() == b""
        assert handler.messages == [] and server.peers() == []
        await server.close()

    run(main)


def test_silent_connections_are_closed_after_the_auth_timeout(run: Runner) -> None:
    async def main() -> None:
        server, _ = await start_server(auth_timeout=0.2)
        reader, writer, _ = await raw_connect(server.port)
        assert await reader.read() == b""
        assert server.stats["refused"] == 1
        writer.close()
        await server.close()

    run(main)


def test_oversize_frames_after_auth_close_the_connection(
        caplog: pytest.LogCaptureFixture, run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server(max_frame_bytes=1024)
        peer = fast_peer(server, max_frame_bytes=1 << 20)
        assert peer.send(b"small") is False  # not connected yet: queued
        await handler.wait_for(1)
        assert peer.connected
        peer.send(b"x" * 2000)
        while peer.stats["connects"] < 2:  # closed by the server, then reconnected
            await asyncio.sleep(0.01)
        peer.send(b"after reconnect")
        await handler.wait_for(2)
        assert [body for _, body in handler.messages] == [b"small", b"after reconnect"]
        await peer.close()
        await server.close()

    with caplog.at_level(logging.WARNING, logger="core.rpc"):
        run(main)
    assert "exceeds the limit of 1024 bytes" in caplog.text


def test_malformed_msgpack_after_auth_closes_the_connection(run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server()
        peer = fast_peer(server)
        await peer.request(b"connect")
        conn = peer._conn
        assert conn is not None
        conn.write_bytes(FRAME_HEADER.pack(1) + b"\xc1")
        await conn.closed
        assert handler.messages == []
        await peer.close()
        await server.close()

    run(main)


def test_requests_answer_time_out_or_carry_the_remote_error(run: Runner) -> None:
    async def main() -> None:
        server, _ = await start_server()
        client = RpcClient(1, SECRET, {2: (HOST, server.port)})
        assert await client.request(2, [1, 2]) == {"from": 1, "echo": [1, 2]}
        with pytest.raises(RpcTimeout):
            await client.request(2, "sleep", timeout=0.1)
        with pytest.raises(RemoteError, match="not today"):
            await client.request(2, "refuse")
        results = await asyncio.gather(*(client.request(2, i) for i in range(100)))
        assert [r["echo"] for r in results] == list(range(100))
        with pytest.raises(PeerUnavailable):
            await client.request(3, b"no address")
        await client.close()
        await server.close()

    run(main)


def test_peer_reconnects_after_the_server_restarts(run: Runner) -> None:
    async def main() -> None:
        port = find_free_port(HOST)
        server, _ = await start_server(port=port)
        peer = fast_peer(server)
        assert (await peer.request(b"one"))["echo"] == b"one"
        await server.close()
        while peer.connected:
            await asyncio.sleep(0.01)
        with pytest.raises(PeerUnavailable):
            await peer.request(b"while down")
        server, handler = await start_server(port=port)
        while True:
            try:
                assert (await peer.request(b"two"))["echo"] == b"two"
                break
            except PeerUnavailable:
                await asyncio.sleep(0.02)
        assert peer.stats["connects"] == 2
        await peer.close()
        await server.close()

    run(main)


def test_queue_stays_bounded_while_the_peer_is_down(run: Runner) -> None:
    async def main() -> None:
        port = find_free_port(HOST)  # nothing listens there
        peer = Peer(1, 2, (HOST, port), SECRET, max_queue_frames=100, backoff_min=0.01)
        results = [peer.send({"n": n}) for n in range(10_000)]
        assert not any(results)
        assert peer.queued == 100 and peer.stats["dropped"] == 9_900
        while peer.down_reason is None:
            await asyncio.sleep(0.01)
        with pytest.raises(PeerUnavailable):
            await peer.request(b"x")
        await peer.close()

    run(main)


def test_queue_stays_bounded_when_the_peer_stops_reading(run: Runner) -> None:
    async def main() -> None:
        server, handler = await start_server()
        peer = fast_peer(server, max_queue_bytes=1 << 20)
        await peer.request(b"connect")
        inbound = server.by_peer[1].transport
        assert inbound is not None
        inbound.pause_reading()  # as if SIGSTOPped
        payload = b"x" * 60_000
        for _ in range(2000):  # 120 MB offered
            peer.send(payload)
            await asyncio.sleep(0)
        conn = peer._conn
        assert conn is not None and conn.transport is not None
        assert peer.stats["dropped"] > 0
        assert peer._queued_bytes <= (1 << 20) + len(payload) + 64
        assert conn.transport.get_write_buffer_size() <= 4 << 20
        await peer.close()
        await server.close()
        assert len(handler.messages) < 2000

    run(main)


def test_a_newer_connection_from_the_same_node_replaces_the_old_one(run: Runner) -> None:
    async def main() -> None:
        server, _ = await start_server()
        first, second = fast_peer(server), fast_peer(server)
        await first.request(b"a")
        old = server.by_peer[1]
        await second.request(b"b")
        assert server.by_peer[1] is not old
        await old.closed
        await first.close()
        await second.close()
        await server.close()

    run(main)


def test_loopback_without_secret_works_on_another_loopback_address(run: Runner) -> None:
    async def main() -> None:
        handler = Recorder()
        host = "127.0.0.3"
        server = RpcServer(2, host, 0, None, handler)
        await server.start()
        peer = Peer(1, 2, (host, server.port), None)
        assert (await peer.request(b"x"))["echo"] == b"x"
        await peer.close()
        await server.close()

    run(main)


@settings(max_examples=5, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=2000), min_size=10, max_size=20))
def test_garbage_before_auth_never_reaches_the_handler(blobs: list[bytes]) -> None:
    async def main() -> None:
        server, handler = await start_server(auth_failure_delay=0.0)
        for blob in blobs:
            reader, writer, _ = await raw_connect(server.port)
            writer.write(blob)
            writer.write_eof()
            await reader.read()  # the server closes (or waits for more, until our EOF)
            writer.close()
        peer = fast_peer(server)
        assert (await peer.request(b"still serving"))["from"] == 1
        assert handler.messages == []
        await peer.close()
        await server.close()

    asyncio.run(asyncio.wait_for(main(), HANG_S))
