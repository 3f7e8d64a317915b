"""Micro-benchmark: ketama lookups, compiled native._ketama versus the pure twin, side by side.

Run from the repository root: `.venv/bin/python bench/micro_ketama.py`.

Workloads, over 10,000 distinct keys of 8 to 40 bytes (typical cache keys, one md5 block):
- lookup3 / lookup20: `Continuum.lookup(key)` on a pool of 3 or 20 servers (480 or 3,200
  points), one call per key;
- many20: `Continuum.lookup_many(keys)`, the multi-get path, 20 servers;
- ring20: `kvcache.ring.Ring.get_server(key)` end to end (str key encoded, address returned);
- long20: `lookup` with 200-byte keys (md5 of 4 blocks).
The `md5` row is the floor a hashlib-based lookup cannot beat: `hashlib.md5(key).digest()`
alone, per key. Prints lookups/s per implementation and the native/pure ratio; best of
--repeat runs of about --seconds each. Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvcache.ring as ring_module  # noqa: E402
from native import ketama_pure  # noqa: E402

KEYS = 10_000


def make_keys(seed: int, low: int, high: int) -> list[bytes]:
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789:_"
    return [bytes(rng.choices(alphabet, k=rng.randint(low, high))) for _ in range(KEYS)]


def servers(size: int) -> list[str]:
    return [f"10.0.{i // 200}.{i % 200 + 1}:{11211 + i}" for i in range(size)]


def continuum(impl: ModuleType, size: int) -> object:
    names = [
        ketama_pure.server_name(f"10.0.{i // 200}.{i % 200 + 1}", 11211 + i) for i in range(size)
    ]
    return impl.Continuum(*ketama_pure.build(names, [1] * size))


def rate(run: Callable[[], None], per_run: int, seconds: float) -> float:
    """Keys per second of calling `run` (which does `per_run` lookups) for about `seconds`."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        run()
        count += per_run
        now = time.perf_counter()
    return count / (now - start)


def workloads(impl: ModuleType) -> dict[str, Callable[[], None]]:
    short, long = make_keys(1, 8, 40), make_keys(2, 200, 200)
    c3, c20 = continuum(impl, 3), continuum(impl, 20)
    ring_module.Continuum = impl.Continuum  # type: ignore[misc] - the bench picks the twin
    ring = ring_module.Ring(servers(20))
    text_keys = [k.decode() for k in short]
    get3, get20, many20, get_server = c3.lookup, c20.lookup, c20.lookup_many, ring.get_server  # type: ignore[attr-defined]

    def lookup3() -> None:
        for k in short:
            get3(k)

    def lookup20() -> None:
        for k in short:
            get20(k)

    def batch20() -> None:
        many20(short)

    def ring20() -> None:
        for k in text_keys:
            get_server(k)

    def long20() -> None:
        for k in long:
            get20(k)

    return {
        "lookup3": lookup3,
        "lookup20": lookup20,
        "many20": batch20,
        "ring20": ring20,
        "long20": long20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    impls: dict[str, ModuleType] = {"pure": ketama_pure}
    try:
        impls["native"] = importlib.import_module("native._ketama")
    except ImportError as exc:
        print(f"native   not available: {exc}")
    md5, short = hashlib.md5, make_keys(1, 8, 40)

    def md5_only() -> None:
        for k in short:
            md5(k).digest()

    floor = max(rate(md5_only, KEYS, args.seconds) for _ in range(args.repeat))
    print(f"{'workload':<10} {'impl':<7} {'lookups/s':>13} {'ns/lookup':>10}")
    print(f"{'md5':<10} {'hashlib':<7} {floor:>13,.0f} {1e9 / floor:>10,.0f}")
    results: dict[str, dict[str, float]] = {}
    for name, impl in impls.items():
        for workload, run in workloads(impl).items():
            best = max(rate(run, KEYS, args.seconds) for _ in range(args.repeat))
            results.setdefault(workload, {})[name] = best
    for workload, rates in results.items():
        for name, value in rates.items():
            print(f"{workload:<10} {name:<7} {value:>13,.0f} {1e9 / value:>10,.0f}")
        if len(rates) == 2:
            print(f"{workload:<10} ratio   native/pure = {rates['native'] / rates['pure']:.1f}x")


if __name__ == "__main__":
    main()
