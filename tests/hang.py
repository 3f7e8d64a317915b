"""Hang a server process for sure: SIGSTOP, then wait until every one of its threads stopped.

`kill(pid, SIGSTOP)` returns before the process has stopped. The kernel wakes one thread to
take the signal and only that thread, once it runs, stops the others; under load that can
be a while, and meanwhile another thread (a memcached worker) keeps answering requests. A
drill that sends SIGSTOP and at once expects a hang would race that window, so the fault
drills wait on the condition itself: every task of the process is in state T in /proc.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

STOP_WAIT_S = 20.0  # a hang detector, not a timing assumption
POLL_S = 0.005
ESTABLISHED = "01"  # a TCP state in /proc/net/tcp


def _stopped(pid: int) -> bool:
    """Whether every thread of `pid` is in a stop state (T, or t when traced)."""
    tasks = Path(f"/proc/{pid}/task")
    states = []
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that just exited
            continue
        states.append(stat[stat.rindex(")") + 2])  # the field after "(comm)"
    return bool(states) and all(state in "Tt" for state in states)


def stop_for_sure(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP `proc` and return once none of its threads can run any more."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + STOP_WAIT_S
    while not _stopped(proc.pid):
        assert proc.poll() is None, "the process exited instead of stopping"
        assert time.monotonic() < deadline, f"pid {proc.pid} did not stop"
        time.sleep(POLL_S)


def send(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum`; a SIGSTOP returns only once the process has stopped."""
    if signum == signal.SIGSTOP:
        stop_for_sure(proc)
    else:
        proc.send_signal(signum)


def unread_bytes(host: str, port: int) -> int:
    """Bytes waiting, unread, on the established TCP connections to `host:port` (IPv4): with
    the server stopped, a request that has reached it shows here (/proc/net/tcp rx_queue)."""
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == ESTABLISHED:
            total += int(fields[4].split(":")[1], 16)
    return total
