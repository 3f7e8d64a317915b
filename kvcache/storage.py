"""The cache itself, sans I/O: expiry, flush, CAS, segmented LRUs, memory accounting.

Two twins keep the same rules behind one interface (the public methods of `Storage`, and
the attributes of `Item` on what it hands out): native._kvstore (over native._kvlru and
native._kvarena), a Cython hash table over arena memory, and kvcache.storage_pure (over
kvcache.lru_pure), the pure-Python reference that documents the rules. INFRA_PURE=1 forces
the pure one; IMPLEMENTATION says which one was loaded. The server and the command handlers
import from here and never know which twin runs.
"""

from __future__ import annotations

from kvcache.items import Delta, Item, Mode, Outcome, item_cost
from kvcache.storage_pure import ITEM_UPDATE_INTERVAL_S, REALTIME_MAXDELTA
from native import load

_impl = load("native._kvstore", "kvcache.storage_pure")

IMPLEMENTATION: str = "pure" if _impl.__name__ == "kvcache.storage_pure" else "native"

Storage = _impl.Storage

__all__ = ["IMPLEMENTATION", "ITEM_UPDATE_INTERVAL_S", "REALTIME_MAXDELTA", "Delta", "Item",
           "Mode", "Outcome", "Storage", "item_cost"]
