"""Micro-benchmark: the shardstore storage engine's writes, reads, scans, compaction, reopen.

Run from the repository root: `.venv/bin/python bench/micro_engine.py [--keys N]`.

Workloads, in a fresh temporary directory (on the file system of $TMPDIR):
- write-no / write-always: single-entry `write` calls of a 100-byte value, fsync "no" and
  "always" (one fsync per call: the rate is the disk's fsync rate);
- batch64-always: 64 entries per `write`, fsync "always" (group commit: entries/s);
- get: random `get` of a written key (one pread each);
- scan100: `scan(start, limit=100)` from random keys (rows/s);
- compact: `compact()` after every key was overwritten twice (MB of segments/s);
- reopen: `Engine.open` rebuilding the keydir (keys/s).
Prints one line per workload. Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardstore.engine import Engine  # noqa: E402

VALUE_BYTES = 100
BATCH_ENTRIES = 64
SCAN_ROWS = 100
ALWAYS_WRITES = 300  # single fsynced writes: bounded by the disk, kept short


def key_of(i: int) -> bytes:
    return b"user:%010d" % i


def timed(label: str, count: int, unit: str, run: Callable[[], None]) -> None:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    print(f"{label:16} {count / elapsed:14,.0f} {unit}/s   ({count:,} in {elapsed:.2f} s)")


def bench(directory: Path, keys: int, rng: random.Random) -> None:
    value = b"v" * VALUE_BYTES
    engine = Engine.open(directory, fsync="no", background_compaction=False)
    timed("write-no", keys, "writes",
          lambda: [engine.write([(key_of(i), value, 0)]) for i in range(keys)])
    engine.close()

    engine = Engine.open(directory, fsync="always", background_compaction=False)
    timed("write-always", ALWAYS_WRITES, "writes",
          lambda: [engine.write([(key_of(i), value, 0)]) for i in range(ALWAYS_WRITES)])
    batches = [[(key_of(i + j), value, 0) for j in range(BATCH_ENTRIES)]
               for i in range(0, keys, BATCH_ENTRIES)]
    timed("batch64-always", len(batches) * BATCH_ENTRIES, "entries",
          lambda: [engine.write(batch) for batch in batches])

    picks = [key_of(rng.randrange(keys)) for _ in range(keys)]
    timed("get", len(picks), "gets", lambda: [engine.get(k) for k in picks])
    starts = picks[: max(1, keys // SCAN_ROWS)]
    timed("scan100", len(starts) * SCAN_ROWS, "rows",
          lambda: [engine.scan(k, limit=SCAN_ROWS) for k in starts])

    for batch in batches:
        engine.write(batch)
    size = engine.stats["live_bytes"] + engine.stats["dead_bytes"]
    timed("compact", max(1, size // 1_000_000), "MB", engine.compact)
    engine.close()

    holder: list[Engine] = []
    timed("reopen", keys, "keys",
          lambda: holder.append(Engine.open(directory, background_compaction=False)))
    holder[0].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="micro-engine-"))
    try:
        bench(directory, args.keys, random.Random(args.seed))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
