"""The dfs drill's create/rename storm, shared by its kill round (tests/faults/dfs_drill.py)
and its partition round (tests/faults/dfs_partition.py).

Strategy: each writer creates small files of random bytes under /ns and renames files of
its own whose every operation so far was acknowledged, recording each operation (process
the writer's name, f create or rename, value the file's sha256); any exception leaves the
outcome unknown (info). Files acknowledged at their place are kept in the round's `acked`
map. The round object only needs `seed`, `recorder`, `lock`, `acked` and `client()`.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Any

from dfs.client import DfsClient
from tests.faults import dfs_checks as checks
from tests.faults.history import Operation, Recorder


def digest(data: bytes) -> str:
    """The sha256 of `data`, hex: the name a file's bytes go by in the history."""
    return hashlib.sha256(data).hexdigest()


def storm_writer(r: Any, process: str, stop: threading.Event) -> None:
    """Create small files and rename acknowledged ones under /ns until `stop`, recording
    each operation as `process` (which also seeds the bytes)."""
    rng = random.Random(f"{r.seed}-{process}")
    live: list[str] = []  # this writer's files whose every operation was acknowledged
    with r.client() as fs:
        for i in range(1 << 30):
            if stop.is_set():
                return
            if live and rng.random() < 0.4:
                _rename(r, fs, process, live, f"/ns/r{process}-{i}", rng)
            else:
                _create(r, fs, process, live, f"/ns/c{process}-{i}",
                        rng.randbytes(rng.randrange(1, 2048)))


def _create(r: Any, fs: DfsClient, process: str, live: list[str], path: str,
            data: bytes) -> None:
    op = r.recorder.invoke(process, checks.CREATE_F, path, digest(data))
    try:
        fs.write_bytes(path, data)
    except Exception as error:  # noqa: BLE001 - any failure leaves the outcome unknown
        op.info(repr(error))
        return
    op.ok()
    live.append(path)
    with r.lock:
        r.acked[path] = digest(data)


def _rename(r: Any, fs: DfsClient, process: str, live: list[str], dst: str,
            rng: random.Random) -> None:
    src = live.pop(rng.randrange(len(live)))
    with r.lock:
        data = r.acked.pop(src)
    op = r.recorder.invoke(process, checks.RENAME_F, (src, dst), data)
    try:
        fs.rename(src, dst)
    except Exception as error:  # noqa: BLE001 - any failure leaves the outcome unknown
        op.info(repr(error))
        return
    op.ok()
    live.append(dst)
    with r.lock:
        r.acked[dst] = data


def storm_ops(recorder: Recorder, prefix: str) -> list[Operation]:
    """The creates and renames of the storm writers named `prefix<n>`."""
    return [op for op in recorder.history().operations()
            if op.f in (checks.CREATE_F, checks.RENAME_F)
            and str(op.process).startswith(prefix) and str(op.process)[len(prefix):].isdigit()]
