"""A client's write lease: one renewal per client for all the files it is writing.

Strategy (an HDFS client's lease renewer): the master leader deletes a file still being
written whose writer has been silent for `--abandoned-write-ms` (dfs/chunk_placement.py).
A writer that is alive but slow (its producer paused, a long computation between two
writes) must keep its file, and only a vanished one may lose it. So a client with files
open for writing runs one daemon thread that sends FS.RENEWLEASE with the temporary names
of all of them, one call per period, the period being a third of the abandoned-write time
the masters answer (within [MIN_EVERY_S, MAX_EVERY_S]; FIRST_EVERY_S until they answer).

The thread has its own master link (a MasterLink serves one thread), starts with the first
writer, and ends once no writer is open or the client is closed. A writer leaves by
marking its `WriteLease` ended: at close, and when it is dropped unclosed (abandoned). That
is one attribute store, no lock and no I/O, so a finalizer may do it on any thread; a
dropped writer is therefore no longer renewed and the master reaps its file. A renewal that
fails is logged and tried again a period later; it never reaches the writer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final

from dfs.client_master import DfsError

__all__ = ["LeaseRenewer", "WriteLease"]

log = logging.getLogger("dfs.client")

FIRST_EVERY_S: Final = 1.0  # the period before the masters said their abandoned-write time
MIN_EVERY_S: Final = 0.1
MAX_EVERY_S: Final = 60.0  # HDFS renews every 30 s of its 60 s soft limit
PERIODS_PER_LIMIT: Final = 3  # renewals per abandoned-write time
RENEW_COMMAND: Final = "FS.RENEWLEASE"


class WriteLease:
    """One open writer's place in its client's lease: `path` (its temporary name) is renewed
    until `end()`."""

    __slots__ = ("path", "open")

    def __init__(self, path: str) -> None:
        self.path = path
        self.open = True

    def end(self) -> None:
        """Stop renewing this file (no lock, no I/O: safe from a finalizer)."""
        self.open = False


class LeaseRenewer:
    """The lease of one client (see the module header). `link()` makes the master link the
    renewing thread uses (a `MasterLink`-like object with `call` and `close`)."""

    def __init__(self, link: Callable[[], Any]) -> None:
        self._make_link = link
        self._lock = threading.Lock()
        self._leases: list[WriteLease] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        self.every_s = FIRST_EVERY_S
        self.renewals = 0  # FS.RENEWLEASE calls answered (for tests and stats)

    def add(self, path: str) -> WriteLease:
        """Renew `path` from now on, until the returned lease is ended."""
        lease = WriteLease(path)
        with self._lock:
            self._closed = False  # (a client used again after close renews again)
            self._leases.append(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dfs-lease",
                                                daemon=True)
                self._thread.start()
        return lease

    def close(self) -> None:
        """Stop renewing (the thread ends at its next wake-up, which is now); a writer
        opened afterwards starts it again."""
        with self._lock:
            self._closed = True
        self._wake.set()

    def _open_paths(self) -> list[str]:
        """The paths to renew; forgets ended leases; ends the thread when none is left."""
        with self._lock:
            self._leases = [lease for lease in self._leases if lease.open]
            if self._closed or not self._leases:
                self._thread = None
                return []
            return [lease.path for lease in self._leases]

    def _run(self) -> None:
        link = self._make_link()
        try:
            while paths := self._open_paths():
                self._renew(link, paths)
                self._wake.wait(self.every_s)
                self._wake.clear()
        finally:
            link.close()

    def _renew(self, link: Any, paths: list[str]) -> None:
        try:
            _renewed, limit_ms = link.call(RENEW_COMMAND, *paths)
        except (DfsError, ValueError, TypeError) as exc:
            log.warning("write lease not renewed (%d file(s)): %s", len(paths), exc)
            return
        self.renewals += 1
        every = int(limit_ms) / 1000 / PERIODS_PER_LIMIT
        self.every_s = min(MAX_EVERY_S, max(MIN_EVERY_S, every))
