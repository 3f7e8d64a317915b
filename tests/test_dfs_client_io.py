"""dfs.client's file objects against a fake master link (no processes): a close whose
FS.COMPLETE or FS.RENAME was applied by a first try whose reply was lost (the failover core
sends it again, and the retry is refused) still succeeds, while a real refusal is raised;
and `open` takes only "rb" and "wb". A writer dropped unclosed abandons its file with no
network I/O (the garbage collector must never commit, nor wait on masters); and a master call
whose every master hangs ends at its deadline, each attempt bounded by the time left. A
client's lease renewer sends one FS.RENEWLEASE per period for all its open writers, and stops
renewing a writer that closed or was dropped.
"""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dfs.client import DfsClient
from dfs.client_io import ChunkWriter, WriteFile
from dfs.client_lease import LeaseRenewer
from dfs.client_master import AsyncMasterLink, DfsError, DfsUnavailable, MasterLink


class FakeMaster:
    """Answers as the masters would after a lost reply: the replies are scripted."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[Any, ...]] = []

    def call(self, *args: Any) -> Any:
        self.calls.append(args)
        reply = self.replies.get(args[0])
        if isinstance(reply, Exception):
            raise reply
        return reply


def writer(master: FakeMaster) -> ChunkWriter:
    return ChunkWriter(master, "/d/f", 1024, 5.0)  # type: ignore[arg-type]


def test_retries_refused_because_the_first_try_took_effect_are_success() -> None:
    master = FakeMaster({
        "FS.CREATE": DfsError("already exists '/d/f.1234abcd._COPYING_'"),
        "FS.COMPLETE": DfsError("file '/d/f.x._COPYING_' is complete: its chunks cannot change"),
        "FS.RENAME": DfsError("no such file or directory '/d/f.x._COPYING_'"),
        "FS.STAT": DfsError("no such file or directory '/d/f.x._COPYING_'"),
        "FS.LOCATE": [0, 1, []],
    })
    w = writer(master)
    w.close()
    assert [c[0] for c in master.calls] == ["FS.CREATE", "FS.COMPLETE", "FS.RENAME",
                                            "FS.STAT", "FS.LOCATE"]
    assert w.closed


def test_a_real_refusal_is_raised() -> None:
    master = FakeMaster({"FS.RENAME": DfsError("no such file or directory '/d'"),
                         "FS.STAT": {"type": "file"}})  # the temporary file is still there
    with pytest.raises(DfsError, match="no such file"):
        writer(master).close()
    with pytest.raises(DfsError, match="permission denied"):
        writer(FakeMaster({"FS.CREATE": DfsError("permission denied")}))


def test_open_takes_rb_and_wb_only() -> None:
    with DfsClient("127.0.0.1:1") as fs, pytest.raises(ValueError, match="'rb' or 'wb'"):
        fs.open("/x", "r+")


class NoNetwork:
    """Stands in for the master link and the sockets; records (and refuses) every use."""

    def __init__(self) -> None:
        self.used: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.used.append(args)
        raise OSError("network I/O from a finalizer")


@pytest.mark.parametrize("buffered", [True, False])
def test_a_writer_dropped_unclosed_abandons_without_network_io(
        monkeypatch: pytest.MonkeyPatch, buffered: bool) -> None:
    master = FakeMaster({})
    raw = writer(master)
    file: Any = WriteFile(raw, 4096) if buffered else raw
    file.write(b"x" * 100)  # buffered, below a chunk: nothing sent yet
    file.cycle = file  # only the collector can free it, as with the drill's lost writers
    network = NoNetwork()
    monkeypatch.setattr(socket, "create_connection", network)
    monkeypatch.setattr(master, "call", network)
    del file, raw
    gc.collect()
    assert network.used == []  # no FS.COMPLETE, no FS.RENAME: the file never appears


@pytest.fixture
def hanging_masters() -> Iterator[list[str]]:
    """Three listening sockets that never accept: a connect completes, no reply ever comes
    (a stopped master)."""
    socks = [socket.create_server(("127.0.0.1", 0), backlog=8) for _ in range(3)]
    try:
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def _attempt_timeouts(error: DfsUnavailable) -> list[float]:
    return [float(m) for e in error.errors.values()
            for m in re.findall(r"within ([0-9.]+)s", str(e))]


def test_a_call_to_hanging_masters_ends_at_its_deadline(hanging_masters: list[str]) -> None:
    link = MasterLink(hanging_masters, timeout_s=60.0, deadline_s=1.0)
    with pytest.raises(DfsUnavailable) as info:
        link.call("FS.STAT", "/")
    link.close()
    timeouts = _attempt_timeouts(info.value)
    assert timeouts and all(t <= 1.0 for t in timeouts), info.value  # not 60 s per master


def test_an_async_call_to_hanging_masters_ends_at_its_deadline(
        hanging_masters: list[str]) -> None:
    async def go() -> DfsUnavailable:
        link = AsyncMasterLink(hanging_masters, timeout_s=60.0, deadline_s=1.0)
        try:
            await link.call("FS.STAT", "/")
        except DfsUnavailable as error:
            return error
        finally:
            await link.close()
        raise AssertionError("a hanging master answered")

    timeouts = _attempt_timeouts(asyncio.run(go()))
    assert timeouts and all(t <= 1.0 for t in timeouts)


class FakeLeaseLink:
    """The renewing thread's master link: records each FS.RENEWLEASE's paths."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.closed = threading.Event()

    def call(self, *args: Any) -> Any:
        assert args[0] == "FS.RENEWLEASE"
        self.calls.append(sorted(args[1:]))
        return [len(args) - 1, 300]  # an abandoned-write time of 0.3 s: renew every 0.1 s

    def close(self) -> None:
        self.closed.set()


def _until(probe: Any, what: str) -> None:
    end = time.monotonic() + 60  # (only detects a hang)
    while not probe():
        assert time.monotonic() < end, f"hang: {what}"
        time.sleep(0.01)


def test_one_renewal_per_client_for_its_open_writers_only() -> None:
    link = FakeLeaseLink()
    renewer = LeaseRenewer(lambda: link)
    a, b = renewer.add("/a._COPYING_"), renewer.add("/b._COPYING_")
    _until(lambda: ["/a._COPYING_", "/b._COPYING_"] in link.calls, "both in one call")
    a.end()  # what a close or a dropped writer does
    seen = len(link.calls)
    _until(lambda: link.calls[seen:] and link.calls[-1] == ["/b._COPYING_"], "b alone")
    b.end()
    link.closed.wait(60)  # no writer left: the thread ends and closes its link
    assert link.closed.is_set() and renewer.every_s == 0.1
    assert all(len(call) >= 1 for call in link.calls)


def test_a_writer_s_lease_ends_at_close_and_when_dropped() -> None:
    link = FakeLeaseLink()
    renewer = LeaseRenewer(lambda: link)
    master = FakeMaster({"FS.STAT": DfsError("no such file"), "FS.LOCATE": [0, 1, []]})
    closed = ChunkWriter(master, "/d/f", 1024, 5.0, renewer)  # type: ignore[arg-type]
    dropped = ChunkWriter(master, "/d/g", 1024, 5.0, renewer)  # type: ignore[arg-type]
    leases = list(renewer._leases)
    closed.close()
    del dropped
    gc.collect()
    assert [lease.open for lease in leases] == [False, False]
    renewer.close()
