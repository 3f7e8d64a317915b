"""Micro-benchmark: RequestParser.feed, compiled versus pure twin, side by side.

Run from the repository root: `.venv/bin/python bench/micro_resp.py`.

Each workload is what one socket read hands a RESP daemon (`cmds = parser.feed(data)`):
- single: one `*1\\r\\n$4\\r\\nNEXT\\r\\n` per feed;
- pipeline16 / pipeline100: 16 or 100 of them in one feed;
- set3: one `SET key:000123 <32-byte value>` multibulk per feed;
- inline: `NEXT 10\\r\\n` per feed (netcat style);
- split: a pipeline of 16 cut in the middle of a command, fed as two reads (the tail path).
Prints feeds/s and commands/s per implementation and the native/pure ratio. Best of
--repeat runs of about --seconds each. Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NEXT = b"*1\r\n$4\r\nNEXT\r\n"
SET3 = b"*3\r\n$3\r\nSET\r\n$10\r\nkey:000123\r\n$32\r\n" + b"v" * 32 + b"\r\n"
PIPE16 = NEXT * 16

WORKLOADS: list[tuple[str, list[bytes], int]] = [
    # name, the reads of one round, commands per round
    ("single", [NEXT], 1),
    ("pipeline16", [PIPE16], 16),
    ("pipeline100", [NEXT * 100], 100),
    ("set3", [SET3], 1),
    ("inline", [b"NEXT 10\r\n"], 1),
    ("split", [PIPE16[:100], PIPE16[100:]], 16),
]


def bench(impl: ModuleType, reads: list[bytes], commands: int, seconds: float) -> float:
    """Rounds per second of feeding `reads` to one parser (checks the command count)."""
    parser = impl.RequestParser()
    feed = parser.feed
    got = sum(len(feed(data)) for data in reads)
    if got != commands or parser.buffered or parser.error is not None:
        raise RuntimeError(f"{impl.__name__}: {got} commands, expected {commands}")
    batch = 1000
    rounds = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    if len(reads) == 1:
        data = reads[0]
        while now < deadline:
            for _ in range(batch):
                feed(data)
            rounds += batch
            now = time.perf_counter()
    else:
        while now < deadline:
            for _ in range(batch):
                for data in reads:
                    feed(data)
            rounds += batch
            now = time.perf_counter()
    return rounds / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    impls: dict[str, ModuleType] = {}
    for name, module in [("pure", "native.resp_pure"), ("native", "native._resp")]:
        try:
            impls[name] = importlib.import_module(module)
        except ImportError as exc:
            print(f"{name:<8} not available: {exc}")
    print(f"{'workload':<12} {'impl':<7} {'feeds/s':>13} {'commands/s':>13} {'ns/feed':>9}")
    for workload, reads, commands in WORKLOADS:
        rates: dict[str, float] = {}
        for name, impl in impls.items():
            rate = max(bench(impl, reads, commands, args.seconds) for _ in range(args.repeat))
            rates[name] = rate
            print(
                f"{workload:<12} {name:<7} {rate * len(reads):>13,.0f}"
                f" {rate * commands:>13,.0f} {1e9 / (rate * len(reads)):>9,.0f}"
            )
        if len(rates) == 2:
            print(f"{workload:<12} ratio   native/pure = {rates['native'] / rates['pure']:.1f}x")


if __name__ == "__main__":
    main()
