"""Network namespaces for the fault harness: create, enter, list, and clean up.

Strategy: every namespace the harness makes is named `<PREFIX><pid>x<serial>-<role>`, so a
name says which process owns it. `ip netns add` creates them; a thread enters one with the
`setns(2)` system call (through ctypes: Python 3.11 has no `os.setns`) and leaves it again in
a `finally`, so a socket created or a child process forked inside `in_netns(...)` belongs to
that namespace for good while the rest of the test process stays in the host's network.
`remove_stale()` deletes namespaces whose owning process is gone (a crashed or killed run),
killing whatever still runs inside them first. Nothing here touches the host's own links.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator

PREFIX = "fharn"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IP_TIMEOUT_S = 20.0
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)x\d+-")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """An `ip`/`nft` command or a namespace switch failed; the message names the command."""


def run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a system command, return its stdout; raise NetnsError with its stderr on failure."""
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def name_prefix(serial: int) -> str:
    """The name prefix of one harness instance of this process: unique per process and serial."""
    return f"{PREFIX}{os.getpid()}x{serial}-"


def add(name: str) -> None:
    """Create the namespace `name` and bring its loopback up."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Kill every process left in `name`, then delete it (its links go with it). Idempotent."""
    kill_all_in(name)
    run(["ip", "netns", "delete", name], check=False)


def kill_all_in(name: str) -> None:
    """SIGKILL every process that lives in the namespace `name` (resumed first if stopped)."""
    for pid in pids_in(name):
        if pid == os.getpid():
            continue  # the test process itself, while a thread of it is inside
        for signum in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def pids_in(name: str) -> list[int]:
    """Process ids living in the namespace `name` (empty when it does not exist)."""
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def listed() -> list[str]:
    """Names of all namespaces `ip netns list` shows."""
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ours(prefix: str = PREFIX) -> list[str]:
    """Namespaces whose name starts with `prefix`."""
    return [name for name in listed() if name.startswith(prefix)]


def _owner_alive(name: str) -> bool:
    match = _NAME_RE.match(name)
    if match is None:
        return True  # not ours to judge
    return os.path.exists(f"/proc/{match.group(1)}")


def remove_stale() -> list[str]:
    """Delete harness namespaces whose owning process has exited; return their names."""
    stale = [name for name in ours() if not _owner_alive(name)]
    for name in stale:
        delete(name)
    return stale


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name`, then switch back.

    Sockets created and processes started inside the block stay in `name` afterwards. Only
    the calling thread moves; keep the block short and free of awaits.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def enter(name: str) -> None:
    """Move this thread into namespace `name` for good (for worker threads of one host)."""
    target = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        _setns(target)
    finally:
        os.close(target)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (one exact reason), or None when they can."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    probe = f"{PREFIX}{os.getpid()}x0-probe"
    try:
        add(probe)
        with in_netns(probe):
            pass
        run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
    except (NetnsError, OSError) as exc:
        return f"cannot create or enter a network namespace: {exc}"
    finally:
        run(["ip", "netns", "delete", probe], check=False)
    return None
