"""What compaction and snapshots see of the engine: a Protocol, so they need not import it.

Engine (engine.py) satisfies it; compaction.py and snapshot.py take an `EngineHost`, and
engine.py imports them, never the other way round.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from shardstore.engine.errors import StorageFailed
from shardstore.engine.files import FileLayer
from shardstore.engine.keydir import Keydir
from shardstore.engine.segments import Segment

__all__ = ["CompactorThread", "EngineFactory", "EngineHost"]


class CompactorThread(Protocol):
    """A running background compaction: its thread and the event that asks it to stop."""

    stop: threading.Event
    thread: threading.Thread


class EngineHost(Protocol):
    """The engine's state and the few steps compaction and snapshots call back into."""

    directory: Path
    gen: int
    layer: FileLayer
    lock: threading.RLock
    segments: dict[int, Segment]
    keydir: Keydir
    fsync_mode: str
    max_segment_bytes: int
    compact_dead_ratio: float
    compact_min_dead_bytes: int
    compact_floor: int
    background_compaction: bool
    compaction_mutex: threading.Lock
    compactor: CompactorThread | None
    counters: dict[str, int]

    @property
    def closed(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    def fail(self, failure: StorageFailed) -> None: ...

    def seal_active(self) -> None: ...

    def allocate_segment_id(self) -> int: ...

    def write(self, batch: Sequence[tuple[bytes, bytes | None, int]],
              applied_index: int | None = None) -> None: ...

    def close(self) -> None: ...


class EngineFactory(Protocol):
    """The Engine class as snapshot restore uses it."""

    def open_generation(self, directory: Path, gen: int, layer: FileLayer,
                        **options: object) -> EngineHost: ...
