"""idgen's data directory: identity file and high-water-mark log.

    <dir>/LOCK        flock held while a daemon runs (core.storage.DataDirLock)
    <dir>/idgen.json  {"format": 1, "worker_id": N, "epoch_ms": E}, written once, atomically
    <dir>/hwm.log     RecordLog of msgpack [mark_ms, reserve_ms]: each a durable high-water
                      mark (absolute ms) and how far ahead of the clock it was reserved

The identity is never changed silently: opening a directory with another worker id or epoch
is refused. The log only grows by appends; it is compacted to its newest record once it
holds COMPACT_AFTER records.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack

from core.storage import DataDirLock, RecordLog, atomic_write, read_file

IDENTITY_FILE = "idgen.json"
HWM_LOG = "hwm.log"
FORMAT = 1
COMPACT_AFTER = 10_000
# A record is at most 19 bytes of msgpack. A tight limit makes a damaged length field in
# the middle of the log read as corruption, not as a torn tail that would drop later marks.
MAX_RECORD_BYTES = 32


class IdentityMismatch(Exception):
    """The options disagree with what the data directory recorded."""


class IdgenStore:
    """The opened, locked data directory of one idgen daemon."""

    def __init__(self, data_dir: str | Path, worker_id: int | None, epoch_ms: int | None,
                 default_epoch_ms: int) -> None:
        self.path = Path(data_dir)
        self.lock = DataDirLock.acquire(self.path)
        try:
            self.worker_id, self.epoch_ms = self._identity(worker_id, epoch_ms, default_epoch_ms)
            self.log, records = RecordLog.open(
                self.path / HWM_LOG, max_record_bytes=MAX_RECORD_BYTES
            )
        except BaseException:
            self.lock.release()
            raise
        marks = [tuple(msgpack.unpackb(r)) for r in records]
        newest = max(marks) if marks else None
        self.hwm_ms: int | None = newest[0] if newest else None
        # How far ahead the newest mark was reserved: a restart may wait that long.
        self.hwm_reserve_ms: int = newest[1] if newest else 0

    def _identity(
        self, worker_id: int | None, epoch_ms: int | None, default_epoch_ms: int
    ) -> tuple[int, int]:
        raw = read_file(self.path / IDENTITY_FILE)
        if raw is None:
            if worker_id is None:
                raise IdentityMismatch(f"{self.path} is new: --worker-id is required")
            epoch = default_epoch_ms if epoch_ms is None else epoch_ms
            record = {"format": FORMAT, "worker_id": worker_id, "epoch_ms": epoch}
            atomic_write(self.path / IDENTITY_FILE, json.dumps(record).encode() + b"\n")
            return worker_id, epoch
        recorded = json.loads(raw)
        if worker_id is not None and worker_id != recorded["worker_id"]:
            raise IdentityMismatch(
                f"{self.path} belongs to worker id {recorded['worker_id']}, not {worker_id}; "
                "a worker id is never changed on a data directory"
            )
        if epoch_ms is not None and epoch_ms != recorded["epoch_ms"]:
            raise IdentityMismatch(
                f"{self.path} was created with epoch {recorded['epoch_ms']} ms, not {epoch_ms}; "
                "changing the epoch could reissue ids"
            )
        return recorded["worker_id"], recorded["epoch_ms"]

    def record_hwm(self, hwm_ms: int, reserve_ms: int) -> None:
        """Durably record a new high-water mark (fsynced before returning)."""
        payload = msgpack.packb([hwm_ms, reserve_ms])
        if self.log.count >= COMPACT_AFTER:
            self.log.rewrite([payload])
        else:
            self.log.append(payload)
        self.hwm_ms = hwm_ms
        self.hwm_reserve_ms = reserve_ms

    def close(self) -> None:
        self.log.close()
        self.lock.release()
