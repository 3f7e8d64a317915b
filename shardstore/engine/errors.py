"""The engine's errors: one base class, corruption on open, and the fatal storage failure."""

from __future__ import annotations

import os

from core.storage import FatalStorageError

__all__ = ["CorruptStore", "EngineError", "StorageFailed"]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class CorruptStore(EngineError):
    """A bad record in the middle of a segment (or a bad snapshot piece): refuse to start.

    `path` and `offset` (byte offset of the bad frame's header) locate it.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: corrupt frame at byte offset {offset}: {reason}")


class StorageFailed(EngineError, FatalStorageError):
    """A write, fsync, rename or unlink failed: the engine refuses every later write.

    Never retried (after a failed fsync the kernel may have dropped the dirty pages); the
    owner must exit. It is also a core.storage.FatalStorageError, so daemons that already
    treat that as fatal need nothing new. The OSError is chained.
    """
