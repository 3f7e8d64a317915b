"""kvcache's compiled hot paths and their pure-Python twins, chosen here and only here.

Two pairs, each a Cython module beside the pure-Python reference whose rules it compiles:
- `mcproto`: the request parser and the fast lane, kvcache._mcproto or kvcache.mcproto_pure
  (tests/test_kvcache_mcproto.py and tests/test_kvcache_lane.py prove them equal); each
  calls its own pipeline lane, kvcache._mcpipe or kvcache.mcpipe_pure
  (tests/test_kvcache_pipe.py), so that pair follows this one;
- `kvstore`: the storage, kvcache._kvstore (over kvcache._kvlru and kvcache._kvarena, which
  it cimports) or kvcache.storage_pure (tests/test_kvcache_storage_twins.py).
The choice follows the rule of every twin in the project (native.load): INFRA_PURE=1 forces
the pure ones; an extension that was not built falls back to its twin with a RuntimeWarning.
kvcache/protocol.py and kvcache/storage.py hand the chosen modules' classes to the rest of
kvcache, which never knows which twin runs.
"""

from __future__ import annotations

from types import ModuleType

from native import load

mcproto = load("kvcache._mcproto", "kvcache.mcproto_pure")
kvstore = load("kvcache._kvstore", "kvcache.storage_pure")


def implementation(module: ModuleType) -> str:
    """Which twin `module` is: "pure" (the reference) or "native" (compiled)."""
    return "pure" if module.__name__.endswith("_pure") else "native"


__all__ = ["implementation", "kvstore", "mcproto"]
