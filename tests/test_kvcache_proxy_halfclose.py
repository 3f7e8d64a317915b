"""Half-close through the proxy (issue 14): a client that sends its requests and then its FIN
(`shutdown(SHUT_WR)`, `nc -q1`) reads every reply before the connection closes.

The expected bytes are the peer's: every conversation is also held with memcached (its own
binary, when installed) and with one kvcache server, and the proxy must answer byte for byte
as they do. Real processes throughout: two kvcache backends on 127.0.0.2-3, a proxy in front
of them (`--replicas 1`, the hot path where one backend answers straight into the client's
slot) and one with `--replicas 2` (the path where replies are futures: read failover, writes
to every copy, multi-get merges, the CAS barrier). Nothing is timed: each client reads until
the peer closes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvcache.ring import Ring
from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon, kvcache_daemon

HOSTS = ("127.0.0.2", "127.0.0.3")
READ_TIMEOUT_S = 20.0
MEMCACHED = shutil.which("memcached")
NC = shutil.which("nc")
MANY = 700  # more requests in one pipeline than the proxy lets wait per client (256)


class Peers:
    """The servers a conversation is held with, by name: `proxy`, `proxy_r2`, `kvcache`,
    and `memcached` when it is installed."""

    def __init__(self, tmp: Path) -> None:
        self.daemons: list[Daemon] = []
        self.nodes = [self._start(kvcache_daemon(tmp, host=host)) for host in HOSTS]
        self.ring = Ring([(n.host, n.port, 1) for n in self.nodes])
        servers = ",".join(n.address for n in self.nodes)
        self.addresses: dict[str, tuple[str, int]] = {"kvcache": ("127.0.0.2",
                                                                  self.nodes[0].port)}
        for name, extra in (("proxy", []), ("proxy_r2", ["--replicas", "2"])):
            port = find_free_port()
            argv = ["kvcache", "proxy", "-l", "127.0.0.1", "-p", str(port), "--servers",
                    servers, "--timeout", str(READ_TIMEOUT_S), *extra]
            self._start(Daemon(argv, "127.0.0.1", port, tmp / f"{name}.log"))
            self.addresses[name] = ("127.0.0.1", port)
        if MEMCACHED is not None:
            port = find_free_port()
            argv = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
            if os.geteuid() == 0:  # memcached will not run as root unless told to
                argv += ["-u", "root"]
            self.memcached = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
            wait_for_tcp_port("127.0.0.1", port, timeout=20, proc=self.memcached)
            self.addresses["memcached"] = ("127.0.0.1", port)

    def _start(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon.start())
        return daemon

    def spread_keys(self, prefix: str, count: int) -> list[bytes]:
        """`count` keys alternating between the two backends' shares of the ring."""
        homes: dict[str, list[bytes]] = {n.address: [] for n in self.nodes}
        i = 0
        while min(len(keys) for keys in homes.values()) < (count + 1) // 2:
            key = f"{prefix}:{i}"
            homes[self.ring.get_server(key)].append(key.encode())
            i += 1
        first, second = homes.values()
        mixed = [k for pair in zip(first, second, strict=False) for k in pair]
        return mixed[:count]

    def close(self) -> None:
        if MEMCACHED is not None:
            self.memcached.terminate()
            self.memcached.wait(timeout=10)
        for daemon in reversed(self.daemons):
            assert daemon.stop() == 0, daemon.log()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    peers = Peers(tmp_path_factory.mktemp("halfclose"))
    try:
        yield peers
    finally:
        peers.close()


def half_close(address: tuple[str, int], chunks: list[bytes]) -> bytes:
    """Send `chunks` (one sendall each), shutdown(SHUT_WR), read until the peer closes."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_S) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        got = []
        while data := sock.recv(1 << 16):
            got.append(data)
    return _normalized(b"".join(got))


def _normalized(reply: bytes) -> bytes:
    """The version line names the program; everything else must be the same bytes."""
    lines = reply.split(b"\r\n")
    return b"\r\n".join(b"VERSION *" if line.startswith(b"VERSION ") else line
                        for line in lines)


def _commands(keys: list[bytes]) -> list[bytes]:
    """One request of every kind the proxy forwards or answers (no CAS tokens, no stats:
    those differ between servers by design), on `keys` spread over both backends."""
    a, b, c, d, e, f, never = keys[:7]
    return [
        b"set %s 0 0 1\r\n1\r\n" % a,
        b"get %s\r\n" % a,
        b"add %s 5 0 2\r\nbb\r\n" % b,
        b"add %s 5 0 2\r\nxx\r\n" % b,
        b"replace %s 0 0 1\r\n2\r\n" % a,
        b"append %s 0 0 2\r\n34\r\n" % a,
        b"prepend %s 0 0 1\r\n0\r\n" % a,
        b"get %s %s %s %s\r\n" % (a, b, never, a),  # both backends, a repeat, a miss
        b"set %s 0 0 2\r\n10\r\n" % c,
        b"incr %s 5\r\n" % c,
        b"decr %s 3\r\n" % c,
        b"incr %s 1\r\n" % d,
        b"touch %s 100\r\n" % b,
        b"gat 100 %s %s\r\n" % (a, c),
        b"cas %s 0 0 1 1\r\nz\r\n" % d,
        b"delete %s\r\n" % c,
        b"delete %s\r\n" % c,
        b"set %s 0 0 1 noreply\r\nq\r\n" % e,
        b"get %s\r\n" % e,
        b"ms %s 2 T0 F7\r\nhi\r\n" % f,
        b"mg %s v f s k\r\n" % f,
        b"mg %s v q\r\n" % d,
        b"ma %s N0 J13 D2 v\r\n" % d,
        b"md %s q\r\n" % d,
        b"mn\r\n",
        b"get %s\r\n" % (b"k" * 251),
        b"bogus command\r\n",
        b"verbosity 1\r\n",
        b"version\r\n",
    ]


# Each conversation's keys are fresh per peer, so one peer's writes never show in another's
# replies through the shared backends; the replies are compared with the keys renamed.
def _renamed(reply: bytes, keys: list[bytes]) -> bytes:
    """`reply` with each of `keys` written K<its index> (longest first: `p:2` is in `p:23`)."""
    for i, key in sorted(enumerate(keys), key=lambda pair: -len(pair[1])):
        reply = reply.replace(key, b"K%d" % i)
    return reply


def _chunks(commands: list[bytes], chunking: str) -> list[bytes]:
    """The requests in one write, one write each, or cut every 7 bytes (inside requests)."""
    if chunking == "one":
        return [b"".join(commands)]
    if chunking == "each":
        return commands
    whole = b"".join(commands)
    return [whole[i:i + 7] for i in range(0, len(whole), 7)]


def _held(peers: Peers, case: str, peer: str, chunking: str) -> bytes:
    keys = peers.spread_keys(f"{case}-{peer}", 8)
    reply = half_close(peers.addresses[peer], _chunks(_commands(keys), chunking))
    return _renamed(reply, keys)


def _peer_names(peers: Peers) -> list[str]:
    return [name for name in ("proxy", "proxy_r2", "kvcache", "memcached")
            if name in peers.addresses]


@pytest.mark.parametrize("chunking", ["one", "each", "cut"])
def test_every_command_answered_before_the_close(peers: Peers, chunking: str) -> None:
    """Each kind of request, pipelined in one write, one write each, or cut every 7 bytes,
    then the FIN: every reply comes back, the same bytes as memcached's."""
    replies = {name: _held(peers, f"all-{chunking}", name, chunking)
               for name in _peer_names(peers)}
    reference = replies.get("memcached", replies["kvcache"])
    assert reference.count(b"\r\n") > 30 and reference.endswith(b"VERSION *\r\n")
    for name, reply in replies.items():
        assert reply == reference, name


@pytest.mark.parametrize("index", range(len(_commands([b"x"] * 7))))
def test_a_single_request_then_the_fin(peers: Peers, index: int) -> None:
    """One request alone on a connection, then the FIN (the reply, not `b''`)."""
    replies = {}
    for name in _peer_names(peers):
        real = peers.spread_keys(f"one{index}-{name}", 8)
        reply = half_close(peers.addresses[name], [_commands(real)[index]])
        replies[name] = _renamed(reply, real)
    reference = replies.get("memcached", replies["kvcache"])
    for name, reply in replies.items():
        assert reply == reference, name


def test_a_long_pipeline_past_the_inflight_bound(peers: Peers) -> None:
    """More requests than the proxy lets wait per client, multi-gets over both backends
    among them, all in one write before the FIN: every reply, in order, as memcached's."""
    replies = {}
    for name in _peer_names(peers):
        keys = peers.spread_keys(f"long-{name}", 8)
        # every key set first: no miss, which `--replicas 2` asks of the next replica later
        sent = [b"set %s 0 0 1\r\n-\r\n" % key for key in keys]
        for i in range(MANY):
            key = keys[i % len(keys)]
            sent.append(b"set %s 0 0 %d\r\n%d\r\n" % (key, len(b"%d" % i), i))
            if i % 3 == 0:
                sent.append(b"get %s %s %s\r\n" % (keys[(i + 1) % len(keys)], key,
                                                   keys[(i + 5) % len(keys)]))
        reply = _renamed(half_close(peers.addresses[name], [b"".join(sent)]), keys)
        assert reply.count(b"STORED\r\n") == MANY + len(keys), name
        assert reply.count(b"END\r\n") == len(range(0, MANY, 3)), name
        replies[name] = reply
    reference = replies.get("memcached", replies["kvcache"])
    for name, reply in replies.items():
        assert reply == reference, name


def test_trailing_partial_request_is_dropped(peers: Peers) -> None:
    """A request cut by the FIN is not answered; the ones before it are."""
    replies = {}
    for name in _peer_names(peers):
        key = peers.spread_keys(f"partial-{name}", 1)[0]
        chunks = [b"set %s 0 0 1\r\n1\r\nget %s\r\nset %s 0 0 5\r\n12" % (key, key, key)]
        replies[name] = half_close(peers.addresses[name], chunks).replace(key, b"K")
    reference = replies.get("memcached", replies["kvcache"])
    assert reference == b"STORED\r\nVALUE K 0 1\r\n1\r\nEND\r\n"
    for name, reply in replies.items():
        assert reply == reference, name


def test_quit_in_a_pipeline_before_the_fin(peers: Peers) -> None:
    """`quit` still ends the conversation where it stands, FIN or not."""
    for name in _peer_names(peers):
        key = peers.spread_keys(f"quit-{name}", 1)[0]
        chunks = [b"set %s 0 0 1\r\n1\r\nquit\r\nget %s\r\n" % (key, key)]
        assert half_close(peers.addresses[name], chunks) == b"STORED\r\n", name


@pytest.mark.skipif(NC is None, reason="nc (netcat) is not installed")
def test_netcat_one_liner(peers: Peers) -> None:
    """`printf 'set a 0 0 1\\r\\n1\\r\\nget a\\r\\n' | nc -q1 HOST PORT`, the line `make run`
    suggests, prints the same four lines through the proxy as memcached does."""
    expected = b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
    for name in _peer_names(peers):
        host, port = peers.addresses[name]
        done = subprocess.run([NC, "-q1", host, str(port)],
                              input=b"set a 0 0 1\r\n1\r\nget a\r\n", capture_output=True,
                              timeout=READ_TIMEOUT_S, check=False)
        assert done.stdout == expected, (name, done.stdout, done.stderr)
