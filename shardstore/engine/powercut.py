"""A file layer that can cut the power: what was not fsynced is lost (for crash tests).

Strategy: `PowerCutFiles` wraps real files. An append goes to a per-file buffer in memory;
`fsync` writes the buffer to the real file and fsyncs it. Reads see the real bytes followed
by the buffer, as a page cache would. `power_cut()` drops every buffer (optionally keeping
a prefix of each, as a disk that wrote part of its cache out before the power went), so the
files then hold exactly what was fsynced, plus at most a torn tail. `arm(n)` makes the n-th
mutating operation from now cut the power instead of running, and raise `PowerCut`; an
append that triggers the cut first lands in the buffer, so a torn prefix may include it.
`fail_fsync` makes every later fsync raise EIO.

Directory entries are simulated too: a creation, rename or unlink not yet followed by
`fsync_dir` of its directory is undone by a cut (the adversarial choice: a real file system
may or may not have kept it). An unlinked file is parked under a hidden name until then.
Not thread-safe: use it with background compaction off.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.storage import atomic_write

__all__ = ["PowerCut", "PowerCutFiles"]

DATA_FILE_MODE = 0o600
PARKED_PREFIX = ".powercut-unlinked-"

TornKeep = Callable[[Path, int], int]  # (path, unsynced bytes) -> how many of them survive
DirKeep = Callable[[int], int]  # unsynced directory changes -> how many (a prefix) survive
CREATE = "create"
RENAME = "rename"
UNLINK = "unlink"


def _undo(kind: str, path: Path, other: Path) -> None:
    """Revert one directory change the power cut lost (a rename or an unlink moves back)."""
    if kind == CREATE:
        path.unlink(missing_ok=True)
    else:
        os.rename(other, path)


class PowerCut(Exception):
    """Raised by the operation an armed layer cut the power at."""


@dataclass
class _Pending:
    """The unsynced appends of one file, kept by path so a reopened handle finds them."""

    data: bytearray = field(default_factory=bytearray)


class _Handle:
    __slots__ = ("path", "fd", "pending")

    def __init__(self, path: Path, fd: int, pending: _Pending) -> None:
        self.path = path
        self.fd = fd
        self.pending = pending


class PowerCutFiles:
    """The file layer of the module header. `ops` counts mutating operations so far."""

    def __init__(self) -> None:
        self._pending: dict[Path, _Pending] = {}
        self._open: list[_Handle] = []
        self._countdown: int | None = None
        self._torn_keep: TornKeep | None = None
        self.ops = 0
        self.fail_fsync = False
        self.cut = False
        self._dir_keep: DirKeep | None = None
        # directory changes since their directory's last fsync, in order:
        # (CREATE, path, path) / (RENAME, src, dst) / (UNLINK, path, parked copy)
        self._dir_ops: list[tuple[str, Path, Path]] = []

    # -- the power -----------------------------------------------------------------------------

    def arm(self, after_ops: int, torn_keep: TornKeep | None = None,
            dir_keep: DirKeep | None = None) -> None:
        """Cut the power at the `after_ops`-th mutating operation from now (0 = the next),
        with `torn_keep` and `dir_keep` as `power_cut` takes them."""
        self._countdown = after_ops
        self._torn_keep = torn_keep
        self._dir_keep = dir_keep

    def power_cut(self, torn_keep: TornKeep | None = None,
                  dir_keep: DirKeep | None = None) -> None:
        """Drop every unsynced byte (keeping `torn_keep(path, n)` of a file's n, if given),
        undo the directory changes not yet made durable (keeping the first `dir_keep(n)` of
        the n, as a journaling file system keeps a prefix) and close every file. The layer
        refuses all later operations; open a new one."""
        for path, pending in self._pending.items():
            keep = torn_keep(path, len(pending.data)) if torn_keep and pending.data else 0
            if keep and path.exists():
                with open(path, "ab") as f:
                    f.write(pending.data[:keep])
            pending.data.clear()
        for handle in self._open:
            os.close(handle.fd)
        self._open.clear()
        keep = dir_keep(len(self._dir_ops)) if dir_keep and self._dir_ops else 0
        for kind, _path, other in self._dir_ops[:keep]:
            if kind == UNLINK:
                os.unlink(other)
        for kind, path, other in reversed(self._dir_ops[keep:]):
            _undo(kind, path, other)
        self._dir_ops.clear()
        self.cut = True

    def _tick(self, handle: _Handle | None = None, data: bytes = b"") -> None:
        if self.cut:
            raise PowerCut("the power is off")
        self.ops += 1
        if self._countdown is None:
            return
        if self._countdown > 0:
            self._countdown -= 1
            return
        if handle is not None:
            handle.pending.data += data
        self.power_cut(self._torn_keep, self._dir_keep)
        raise PowerCut(f"power cut at operation {self.ops}")

    # -- the file layer ------------------------------------------------------------------------

    def open(self, path: Path, *, create: bool) -> _Handle:
        if self.cut:
            raise PowerCut("the power is off")
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        fd = os.open(path, flags, DATA_FILE_MODE)
        if create:
            self._dir_ops.append((CREATE, path, path))
        handle = _Handle(path, fd, self._pending.setdefault(path, _Pending()))
        self._open.append(handle)
        return handle

    def append(self, handle: _Handle, data: bytes) -> None:
        self._tick(handle, data)
        handle.pending.data += data

    def pread(self, handle: _Handle, length: int, offset: int) -> bytes:
        real = os.fstat(handle.fd).st_size
        head = os.pread(handle.fd, max(0, min(length, real - offset)), offset) \
            if offset < real else b""
        rest = length - len(head)
        start = max(0, offset - real)
        return head + bytes(handle.pending.data[start:start + rest])

    def size(self, handle: _Handle) -> int:
        return os.fstat(handle.fd).st_size + len(handle.pending.data)

    def fsync(self, handle: _Handle) -> None:
        self._tick()
        if self.fail_fsync:
            raise OSError(errno.EIO, "fsync failed (injected)")
        os.write(handle.fd, handle.pending.data)
        handle.pending.data.clear()
        os.fsync(handle.fd)

    def truncate(self, handle: _Handle, length: int) -> None:
        self._tick()
        os.write(handle.fd, handle.pending.data)
        handle.pending.data.clear()
        os.ftruncate(handle.fd, length)
        os.fsync(handle.fd)

    def close(self, handle: _Handle) -> None:
        if handle in self._open:
            self._open.remove(handle)
            os.close(handle.fd)

    def listdir(self, directory: Path) -> list[str]:
        return os.listdir(directory)

    def rename(self, src: Path, dst: Path) -> None:
        self._tick()
        os.rename(src, dst)
        self._dir_ops.append((RENAME, src, dst))
        self._pending[dst] = self._pending.pop(src, _Pending())
        for handle in self._open:
            if handle.path == src:
                handle.path = dst

    def unlink(self, path: Path) -> None:
        self._tick()
        parked = path.with_name(f"{PARKED_PREFIX}{self.ops}-{path.name}")
        os.rename(path, parked)
        self._dir_ops.append((UNLINK, path, parked))
        self._pending.pop(path, None)

    def fsync_dir(self, directory: Path) -> None:
        """Every creation, rename and unlink in `directory` so far becomes durable."""
        self._tick()
        for kind, path, other in self._dir_ops:
            if kind == UNLINK and path.parent == directory:
                os.unlink(other)
        self._dir_ops = [op for op in self._dir_ops if op[1].parent != directory]

    def read_small(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write_small(self, path: Path, data: bytes) -> None:
        self._tick()
        atomic_write(path, data)
