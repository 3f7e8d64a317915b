"""Raw memcached conversations for the kvcache tests: a real memcached to compare with, a
blocking byte-level conversation, and the masking that makes two servers' replies
comparable.

Nothing here imports kvcache: the tests judge its bytes independently.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import find_free_port, wait_for_tcp_port

# Hang detector for every socket read; never a timing assertion.
HANG_TIMEOUT_S = 10.0
# Sent after every case; its reply (a meta miss echoing a key and an opaque) cannot be
# mistaken for the reply to anything a case sends.
SENTINEL = b"mg __end_of_case__ k Oend\r\n"
SENTINEL_REPLY = b"EN k__end_of_case__ Oend\r\n"
MEMCACHED = shutil.which("memcached")
MEMCCAPABLE = shutil.which("memccapable")
REFERENCE_VERSION = "1.6.18"  # the memcached kvcache answers as, byte for byte


def memcached_version() -> str | None:
    """The installed memcached's version ("1.6.18"), or None if there is none."""
    if MEMCACHED is None:
        return None
    out = subprocess.run([MEMCACHED, "-V"], capture_output=True, text=True, timeout=10)
    words = out.stdout.split()
    return words[1] if len(words) > 1 else None


def reference_missing() -> str | None:
    """Why a byte-for-byte comparison cannot run here, or None if it can."""
    version = memcached_version()
    if version is None:
        return "memcached is not installed"
    if version != REFERENCE_VERSION:
        return f"memcached {version} installed; kvcache answers as {REFERENCE_VERSION}"
    return None


class Memcached:
    """The real memcached binary on a free loopback port."""

    def __init__(self, tmp: Path, flags: list[str], host: str = "127.0.0.1") -> None:
        assert MEMCACHED is not None
        self.host = host
        self.port = find_free_port(host)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.argv = [MEMCACHED, "-p", str(self.port), "-l", host, *user, *flags]
        self.log_path = tmp / f"memcached-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Memcached:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        wait_for_tcp_port(self.host, self.port, timeout=20, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def converse(
    host: str, port: int, data: bytes, *, sentinel: bool = True, chunks: int = 1
) -> tuple[bytes, bool]:
    """Send `data` (then SENTINEL when `sentinel`) on a new connection; read the replies up
    to the sentinel's, or to the server closing. Returns (replies without the MN, closed?)."""
    with socket.create_connection((host, port), timeout=HANG_TIMEOUT_S) as sock:
        payload = data + (SENTINEL if sentinel else b"")
        step = max(1, len(payload) // chunks)
        try:
            for start in range(0, len(payload), step):
                sock.sendall(payload[start:start + step])
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
            if sentinel and out.endswith(SENTINEL_REPLY):
                return out[: -len(SENTINEL_REPLY)], False


def request(host: str, port: int, data: bytes) -> bytes:
    """The replies to `data` (which must not close the connection)."""
    out, closed = converse(host, port, data)
    assert not closed, f"connection closed after {out[-200:]!r}"
    return out


_META_LINE = re.compile(rb"^(HD|VA|EN|NS|EX|NF)( .*)?$")
_VALUE_CAS = re.compile(rb"^(VALUE \S+ \d+ \d+) (\d+)$")
_ME_LINE = re.compile(rb"^ME (\S+) exp=(-?\d+) la=(\d+) cas=(\d+) (fetch=\S+ cls=\d+ size=\d+)$")


class Masker:
    """Makes replies comparable across servers: each distinct CAS becomes <C1>, <C2>... in
    order of appearance (equal CAS stay equal), remaining TTLs and idle times become <T>."""

    def __init__(self) -> None:
        self.cas: dict[bytes, bytes] = {}

    def _cas(self, value: bytes) -> bytes:
        return self.cas.setdefault(value, b"<C%d>" % (len(self.cas) + 1))

    def line(self, line: bytes) -> bytes:
        match = _VALUE_CAS.match(line)
        if match:
            return match.group(1) + b" " + self._cas(match.group(2))
        match = _ME_LINE.match(line)
        if match:
            exp = match.group(2) if match.group(2) == b"-1" else b"<T>"
            return b"ME %s exp=%s la=<T> cas=%s %s" % (
                match.group(1), exp, self._cas(match.group(4)), match.group(5))
        match = _META_LINE.match(line)
        if match and match.group(2):
            words = []
            for word in match.group(2).split(b" ")[1:]:
                if word[:1] == b"c" and word[1:].isdigit():
                    word = b"c" + self._cas(word[1:])
                elif word[:1] in (b"t", b"l") and word[1:].isdigit():
                    word = word[:1] + b"<T>"
                words.append(word)
            return b" ".join([match.group(1), *words])
        return line

    def reply(self, data: bytes) -> bytes:
        return b"\r\n".join(self.line(line) for line in data.split(b"\r\n"))


def masked(data: bytes) -> bytes:
    return Masker().reply(data)


def stat_names(data: bytes) -> list[str]:
    """The names of a `stats` reply, in order (per-class prefixes kept)."""
    return [line.split(b" ")[1].decode() for line in data.split(b"\r\n")
            if line.startswith(b"STAT ")]


def stat_values(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.split(b"\r\n"):
        if line.startswith(b"STAT "):
            _, name, value = line.decode().split(" ", 2)
            out[name] = value
    return out
