"""The cache itself, sans I/O: expiry, flush, CAS, segmented LRUs, memory accounting.

Two twins keep the same rules behind one interface (the public methods of `Storage`, and
the attributes of `Item` on what it hands out): kvcache._kvstore (over kvcache._kvlru and
kvcache._kvarena), a Cython hash table over arena memory, and kvcache.storage_pure (over
kvcache.lru_pure), the pure-Python reference that documents the rules. kvcache/twins.py
chooses (INFRA_PURE=1 forces the pure one); IMPLEMENTATION says which one was loaded. The
server and the command handlers import from here and never know which twin runs.
"""

from __future__ import annotations

from kvcache.items import Delta, Item, Mode, Outcome, item_cost
from kvcache.storage_pure import ITEM_UPDATE_INTERVAL_S, REALTIME_MAXDELTA
from kvcache.twins import implementation
from kvcache.twins import kvstore as _impl

IMPLEMENTATION: str = implementation(_impl)

Storage = _impl.Storage

__all__ = ["IMPLEMENTATION", "ITEM_UPDATE_INTERVAL_S", "REALTIME_MAXDELTA", "Delta", "Item",
           "Mode", "Outcome", "Storage", "item_cost"]
