"""`-o idle_timeout=N`: a client idle for more than N seconds is closed, as memcached does.

In process, the server runs on a ManualClock and its maintenance step is called by hand, so
which client is idle is decided by the clock alone. Against the real memcached (both started
with the same -o idle_timeout), a silent client is closed by both, and `stats` shows the same
names (idle_kicks appears only when the option is set) with idle_kicks counting the close.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from core.clock import ManualClock
from core.daemon import ConfigError
from kvcache.__main__ import build_parser, settings_from_args
from kvcache.server import KvcacheServer
from kvcache.settings import Settings
from tests.kvcache_wire import Memcached, reference_missing, request, stat_names, stat_values
from tests.procs import kvcache_daemon

IDLE_S = 2
WAIT_S = 30.0  # how long a silent client may take to be closed on a loaded machine


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
               end: bytes) -> bytes:
    writer.write(line)
    return await reader.readuntil(end)


def test_only_the_client_idle_for_longer_than_the_timeout_is_closed() -> None:
    async def main() -> None:
        clock = ManualClock()
        server = KvcacheServer(Settings(idle_timeout=IDLE_S), clock)
        await server.start(["127.0.0.1"], 0)
        busy = await asyncio.open_connection("127.0.0.1", server.port)
        idle = await asyncio.open_connection("127.0.0.1", server.port)
        await _ask(*busy, b"version\r\n", b"\r\n")
        await _ask(*idle, b"version\r\n", b"\r\n")
        clock.advance(IDLE_S * 1000)
        server.maintain_once()  # idle for exactly the timeout: not more
        await _ask(*busy, b"version\r\n", b"\r\n")
        clock.advance(1000)
        server.maintain_once()
        assert await idle[0].read() == b""
        stats = await _ask(*busy, b"stats\r\n", b"END\r\n")
        assert b"STAT idle_kicks 1\r\n" in stats
        settings = await _ask(*busy, b"stats settings\r\n", b"END\r\n")
        assert b"STAT idle_timeout 2\r\n" in settings
        for _, writer in (busy, idle):
            writer.close()
        await server.close()

    asyncio.run(main())


def test_without_the_option_nobody_is_closed_and_idle_kicks_is_not_shown() -> None:
    async def main() -> None:
        clock = ManualClock()
        server = KvcacheServer(Settings(), clock)
        await server.start(["127.0.0.1"], 0)
        client = await asyncio.open_connection("127.0.0.1", server.port)
        clock.advance(3600 * 1000)
        server.maintain_once()
        stats = await _ask(*client, b"stats\r\n", b"END\r\n")
        assert b"idle_kicks" not in stats
        client[1].close()
        await server.close()

    asyncio.run(main())


@pytest.mark.parametrize(("options", "expected"), [
    ([], 0), (["idle_timeout=5"], 5), (["modern,idle_timeout=7"], 7),
    (["idle_timeout=1", "idle_timeout=3"], 3),
])
def test_the_option_is_read_from_o(options: list[str], expected: int) -> None:
    argv = ["serve", *(arg for option in options for arg in ("-o", option))]
    settings, _ = settings_from_args(build_parser().parse_args(argv))
    assert settings.idle_timeout == expected


@pytest.mark.parametrize("setting", ["", "soon", "-1", "2.5", "\u00b2", "\u0663"])
def test_a_setting_that_is_not_whole_ascii_seconds_is_refused(setting: str) -> None:
    argv = ["serve", "-o", f"idle_timeout={setting}"]
    with pytest.raises(ConfigError, match="expected whole seconds"):
        settings_from_args(build_parser().parse_args(argv))


def _closed_by_server(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=WAIT_S) as sock:
        return sock.recv(1) == b""  # blocks until the server closes (or the timeout)


@pytest.mark.skipif(reference_missing() is not None, reason=reference_missing() or "")
def test_same_as_memcached(tmp_path) -> None:
    flags = ["-m", "64", "-t", "1", "-U", "0", "-o", "idle_timeout=1"]
    real = Memcached(tmp_path, flags).start()
    ours = kvcache_daemon(tmp_path, extra=flags).start()
    try:
        for host, port in ((real.host, real.port), (ours.host, ours.port)):
            assert _closed_by_server(host, port)
        deadline = time.monotonic() + WAIT_S
        names = []
        for host, port in ((real.host, real.port), (ours.host, ours.port)):
            stats = request(host, port, b"stats\r\n")
            while stat_values(stats)["idle_kicks"] == "0" and time.monotonic() < deadline:
                time.sleep(0.05)
                stats = request(host, port, b"stats\r\n")
            assert stat_values(stats)["idle_kicks"] == "1"
            names.append(stat_names(stats))
        assert names[0] == names[1]
    finally:
        real.stop()
        assert ours.stop() == 0, ours.log()
