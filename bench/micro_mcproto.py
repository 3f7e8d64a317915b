"""Micro-benchmark: the memcached RequestParser, compiled versus pure twin, side by side.

Run from the repository root: `.venv/bin/python bench/micro_mcproto.py`.

Each workload is what one socket read hands kvcache (`feed(data)`, then `next_request()`
until it returns None):
- get: `get <32-byte key>` (memcaslap's get);
- set: `set <32-byte key> 0 0 100` and its 100-byte block (memcaslap's set);
- get50: one `get` of 50 keys (memcaslap --division=50);
- pipeline16: 16 gets in one read;
- split_set: the set cut in the middle of its block, fed as two reads.
Prints requests/s per implementation and the native/pure ratio, best of --repeat runs of
about --seconds each. Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = b"k" * 32
GET = b"get " + KEY + b"\r\n"
SET = b"set " + KEY + b" 0 0 100\r\n" + b"v" * 100 + b"\r\n"
GET50 = b"get " + b" ".join(b"%032d" % i for i in range(50)) + b"\r\n"

WORKLOADS: list[tuple[str, list[bytes], int]] = [
    # name, the reads of one round, requests per round
    ("get", [GET], 1),
    ("set", [SET], 1),
    ("get50", [GET50], 1),
    ("pipeline16", [GET * 16], 16),
    ("split_set", [SET[:80], SET[80:]], 1),
]


def bench(impl: ModuleType, reads: list[bytes], requests: int, seconds: float) -> float:
    """Requests per second parsed from `reads` by one parser (checks the request count)."""
    parser = impl.RequestParser(1024 * 1024)
    feed = parser.feed
    next_request = parser.next_request

    def one_round() -> int:
        got = 0
        for data in reads:
            feed(data)
            while next_request() is not None:
                got += 1
        return got

    if one_round() != requests or parser.buffered():
        raise RuntimeError(f"{impl.__name__}: wrong request count for {reads[0][:20]!r}")
    rounds = 0
    start = now = time.perf_counter()
    while now < start + seconds:
        for _ in range(1000):
            one_round()
        rounds += 1000
        now = time.perf_counter()
    return rounds * requests / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    impls: dict[str, ModuleType] = {}
    for name, module in [("pure", "kvcache.mcproto_pure"), ("native", "kvcache._mcproto")]:
        try:
            impls[name] = importlib.import_module(module)
        except ImportError as exc:
            print(f"{name:<8} not available: {exc}")
    print(f"{'workload':<12}" + "".join(f"{name + ' req/s':>16}" for name in impls) + "   ratio")
    for workload, reads, requests in WORKLOADS:
        rates = {name: max(bench(impl, reads, requests, args.seconds)
                           for _ in range(args.repeat)) for name, impl in impls.items()}
        ratio = rates["native"] / rates["pure"] if len(rates) == 2 else float("nan")
        print(f"{workload:<12}" + "".join(f"{rate:>16,.0f}" for rate in rates.values())
              + f"   {ratio:5.2f}x")


if __name__ == "__main__":
    main()
